"""Online backup cost: how long `relaybox backup` takes on a spool of a given size, and what it does to the
commit latency of mail being accepted at the same time.

    .venv/bin/python bench/backup.py [--messages 20000] [--size 4096] [--writers 4]

Builds a spool of N messages (bodies of SIZE bytes, 2 recipients each) in a temp dir with the real Spool, then
measures: the backup alone (MB/s), and a backup while WRITERS threads enqueue messages continuously (each
enqueue is a group-committed, fsynced write): enqueue latency p50/p99/max before and during the backup.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from relay.envelope import NewMessage  # noqa: E402
from relay.spool.spool import Spool  # noqa: E402
from store import Store  # noqa: E402
from store.backup import backup  # noqa: E402


def _msg(i: int, size: int) -> NewMessage:
    head = f"Subject: bench {i}\r\nFrom: app@example.test\r\n\r\n".encode()
    return NewMessage(sender="app@example.test", recipients=[f"a{i}@example.test", f"b{i}@example.org"],
                      body=head + b"x" * max(0, size - len(head) - 2) + b"\r\n")


async def fill(store: Store, n: int, size: int) -> None:
    spool = Spool(store)
    batch = 500
    for start in range(0, n, batch):
        await asyncio.gather(*(spool.enqueue(_msg(i, size)) for i in range(start, min(n, start + batch))))


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000 if values else 0.0


class Load:
    """WRITERS coroutines enqueueing in a loop of their own; records each enqueue's latency."""

    def __init__(self, store: Store, writers: int, size: int):
        self.store, self.writers, self.size = store, writers, size
        self.lat: list[tuple[float, float]] = []   # (start time, seconds)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _one(self, w: int) -> None:
        spool = Spool(self.store)
        i = 0
        while not self.stop.is_set():
            t0 = time.perf_counter()
            await spool.enqueue(_msg(10_000_000 + w * 1_000_000 + i, self.size))
            self.lat.append((t0, time.perf_counter() - t0))
            i += 1

    async def _main(self) -> None:
        await asyncio.gather(*(self._one(w) for w in range(self.writers)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--writers", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="relaybox-bench-") as tmp:
        path = os.path.join(tmp, "relaybox.db")
        store = Store(path).open()
        t0 = time.perf_counter()
        asyncio.run(fill(store, args.messages, args.size))
        print(f"spool: {args.messages} messages x {args.size} B in {time.perf_counter() - t0:.1f} s, "
              f"file {os.path.getsize(path) / 1e6:.1f} MB")
        info = backup(path, os.path.join(tmp, "quiet.db"))
        mb = info.bytes / 1e6
        speed = mb / max(info.seconds, 1e-6)
        print(f"backup, no load: {mb:.1f} MB in {info.seconds:.2f} s ({speed:.0f} MB/s,"
              f" incl. integrity_check and fsync)")
        load = Load(store, args.writers, args.size)
        load.thread.start()
        time.sleep(2.0)
        b0 = time.perf_counter()
        info = backup(path, os.path.join(tmp, "busy.db"))
        b1 = time.perf_counter()
        time.sleep(1.0)
        load.stop.set()
        load.thread.join(30)
        store.close()
        before = [d for t, d in load.lat if t < b0]
        during = [d for t, d in load.lat if b0 <= t < b1]
        print(f"backup under load ({args.writers} writers): {info.bytes / 1e6:.1f} MB "
              f"in {info.seconds:.2f} s")
        for name, vals in (("enqueue before backup", before), ("enqueue during backup", during)):
            rate = len(vals) / (b1 - b0) if name.endswith("during backup") else len(vals) / 2.0
            print(f"  {name}: n={len(vals)} ({rate:.0f}/s) p50={pct(vals, 0.5):.1f} ms "
                  f"p99={pct(vals, 0.99):.1f} ms max={max(vals, default=0) * 1000:.1f} ms"
                  + (f" mean={statistics.mean(vals) * 1000:.1f} ms" if vals else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
