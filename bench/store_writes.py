"""The store's write path, SQLite against PostgreSQL, in one run: a message's life in the store as the relay
writes it (``enqueue_claimed`` at intake, ``complete`` with its attempt after delivery), C at a time.

No SMTP and no delivery: what one process's writer gets through, and the client CPU it costs. PostgreSQL is
a private server (initdb + pg_ctl in a temp dir) with fsync and synchronous commits on; SQLite is the
embedded default, on the same disk. Reps interleave the two (this VM's speed drifts between minutes), and
each PostgreSQL rep is printed against the SQLite rep beside it.

    .venv/bin/python bench/store_writes.py [--messages 3000] [--concurrency 20] [--size 1024] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time

from e2e_postfix import DurablePostgres

from store import Store
from store.records import AttemptLog, NewMessage, RecipientResult


def body(size: int) -> bytes:
    head = b"From: <app@src.test>\r\nTo: <rcpt@dst.test>\r\nSubject: bench\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def life_cycles(store: Store, n: int, concurrency: int, size: int) -> tuple[float, float]:
    """(msg/s, client CPU us per message) for ``n`` messages through enqueue_claimed + complete."""
    data, left = body(size), [n]

    async def session() -> None:
        while left[0] > 0:
            left[0] -= 1
            msg = NewMessage("app@src.test", ["rcpt@dst.test"], data, from_header="<app@src.test>",
                             subject="bench")
            got = await store.messages.enqueue_claimed(msg, "bench:1", 300.0)
            assert got is not None
            rid = got[0].recipients[0].id
            now = time.time()
            await store.messages.complete(
                [RecipientResult(rid, "delivered", 250, "2.0.0", "ok", route="sink")],
                attempt=AttemptLog(msg.queue_id, now, now, "delivered", route="sink", host="127.0.0.1",
                                   ip="127.0.0.1", recipients=(rid,),
                                   transcript=({"at": now, "dir": ">", "line": "MAIL FROM:<app@src.test>"},)))

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(session() for _ in range(concurrency)))
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6


def run_one(target: str, key: str, args: argparse.Namespace) -> tuple[float, float]:
    store = Store(target, key_file=key).open()
    try:
        return asyncio.run(life_cycles(store, args.messages, args.concurrency, args.size))
    finally:
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-store-writes-")
    pg = DurablePostgres().start()
    rows: dict[str, list[tuple[float, float]]] = {"SQLite": [], "PostgreSQL": []}
    try:
        for rep in range(1, args.reps + 1):
            order = ["SQLite", "PostgreSQL"] if rep % 2 else ["PostgreSQL", "SQLite"]
            for name in order:
                key = os.path.join(work, f"{name}-{rep}.key")
                target = pg.create_database() if name == "PostgreSQL" else os.path.join(work, f"s{rep}.db")
                rate, cpu = run_one(target, key, args)
                if name == "PostgreSQL":
                    pg.drop_database(target)
                rows[name].append((rate, cpu))
                print(f"rep {rep} | {name:10s} | {args.messages} x {args.size} B | {rate:7.0f} msg/s |"
                      f" client CPU {cpu:6.0f} us/msg", flush=True)
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    sq, pq = rows["SQLite"], rows["PostgreSQL"]
    med = {k: statistics.median(r for r, _ in v) for k, v in rows.items()}
    paired = [p[0] / s[0] for p, s in zip(pq, sq, strict=True)]
    print(f"\nmedians: SQLite {med['SQLite']:.0f} msg/s, PostgreSQL {med['PostgreSQL']:.0f} msg/s;"
          f" PostgreSQL / SQLite {med['PostgreSQL'] / med['SQLite']:.2f}x"
          f" (per rep {', '.join(f'{x:.2f}x' for x in paired)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
