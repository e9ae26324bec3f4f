"""The queue at scale, on the embedded default (SQLite): what a queue of N messages costs.

At each level (messages queued, 1 KB, one recipient each, spread over 200 destination domains) it prints:
the store's enqueue rate for the next 5,000 messages (group-committed, 200 at a time: the durable part of
intake), the latency of the /metrics gauges (``store.stats.queue_stats``) with, as the reference measured in
the same run on the same file, the scan those gauges did before the counters (``COUNT(*) GROUP BY status``
+ the oldest-message join), ``queue summary`` (``store.history.summary``), one page of the message list
filtered by status and by recipient, database bytes per queued message beyond the body, and the RSS.

``--search`` adds a second table: one page (50) of the list by substring, through the trigram indexes of
migration 0013 where they apply: a rare recipient (``r4999@``: 1 in 5,000 messages), one matching nothing,
a common one (``@d1.test``: 1 in 200, every trigram common: the newest-first walk), a 2-character term
(no trigram: the walk), the sender and the subject (every message matches), and a term that never
matches although each of its trigrams does (``r4999@d0.``: r4999 always goes to d199; the rarest trigram's
candidates are checked and none is left).

    .venv/bin/python bench/scale.py                       # levels 0, 250k, 500k, 1M
    .venv/bin/python bench/scale.py --levels 0,100000     # quicker
    .venv/bin/python bench/scale.py --levels 0,1000000 --search --bulk-fill
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import sqlite3
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from relay.envelope import NewMessage  # noqa: E402
from store import Store  # noqa: E402
from store.history import MessageFilter  # noqa: E402

BODY = b"From: app@org.test\r\nTo: r@d.test\r\nSubject: scale\r\n\r\n" + b"x" * 960 + b"\r\n"


def msg(i: int) -> NewMessage:
    return NewMessage("app@org.test", [f"r{i % 5000}@d{i % 200}.test"], BODY, from_header="app@org.test",
                      subject="scale")


async def fill(store: Store, start: int, count: int) -> float:
    t0 = time.perf_counter()
    for base in range(start, start + count, 200):
        await asyncio.gather(*(store.messages.enqueue(msg(i)) for i in range(base, min(base + 200,
                                                                                  start + count))))
    return count / (time.perf_counter() - t0)


async def bulk_fill(store: Store, start: int, count: int) -> float:
    """The levels between measurements through the store's own insert (the same rows, triggers and
    indexes as enqueue), 5,000 messages per write: minutes instead of an hour for 1M on a busy machine.
    The enqueue rate printed is always measured with ``fill``."""
    from store.messages import insert_message

    t0 = time.perf_counter()
    for base in range(start, start + count, 5000):
        batch = [msg(i) for i in range(base, min(base + 5000, start + count))]
        now = time.time()

        def _do(conn, batch=batch, now=now) -> None:
            for m in batch:
                insert_message(conn, m, now, "bench")
        await store.db.write(_do)
    return count / (time.perf_counter() - t0)


async def timed(coro_fn, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        await coro_fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def old_gauges(path: str) -> float:
    """The reference: the scan /metrics did before the counters, on the same file."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as c:
        t0 = time.perf_counter()
        c.execute("SELECT status, COUNT(*) FROM recipients GROUP BY status").fetchall()
        c.execute("SELECT MIN(m.created_at) FROM recipients r JOIN messages m ON m.id = r.message_id"
                  " WHERE r.status IN ('queued','deferred','sending')").fetchone()
        return (time.perf_counter() - t0) * 1000


async def measure(store: Store, level: int) -> dict[str, float]:
    rate = await fill(store, level, 5000)
    size = store.size_bytes()
    queued = level + 5000
    return {
        "level": level, "enqueue": rate,
        "gauges": await timed(store.stats.queue_stats), "old_gauges": old_gauges(store.path),
        "summary": await timed(lambda: store.history.summary(top=50)),
        "list_status": await timed(lambda: store.history.list_messages(MessageFilter(status=("queued",)),
                                                                        limit=50)),
        "list_rcpt": await timed(lambda: store.history.list_messages(MessageFilter(recipient="r4999@"),
                                                                      limit=50)),
        "bytes_per_msg": size / queued - len(BODY),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


SEARCHES = (("rcpt rare", {"recipient": "r4999@"}), ("rcpt none", {"recipient": "nobody@nowhere"}),
            ("rcpt common", {"recipient": "@d1.test"}), ("rcpt 2 chars", {"recipient": "r4"}),
            ("sender", {"sender": "app@org"}), ("subject", {"subject": "scale"}),
            ("rcpt checked", {"recipient": "r4999@d0."}))


async def searches(store: Store) -> dict[str, tuple[float, int]]:
    out = {}
    for name, kw in SEARCHES:
        f = MessageFilter(**kw)
        page = await store.history.list_messages(f, limit=50)
        out[name] = (await timed(lambda f=f: store.history.list_messages(f, limit=50)), len(page.items))
    return out


async def main(levels: list[int], search: bool, bulk: bool) -> None:
    work = tempfile.mkdtemp(prefix="relaybox-scale-")
    store = Store(os.path.join(work, "scale.db")).open()
    print(f"scale: 1 KB messages, one recipient, 200 domains; store on {work}")
    print(f"{'queued':>9} {'enqueue/s':>10} {'metrics ms':>11} {'(old scan)':>11} {'summary ms':>11}"
          f" {'list ms':>8} {'by rcpt':>8} {'meta B/msg':>11} {'RSS MB':>7}")
    done = 0
    try:
        for level in levels:
            if level > done:
                await (bulk_fill if bulk else fill)(store, done, level - done)
            r = await measure(store, level)
            done = level + 5000
            print(f"{r['level']:>9,} {r['enqueue']:>10,.0f} {r['gauges']:>11.1f} {r['old_gauges']:>11.1f}"
                  f" {r['summary']:>11.1f} {r['list_status']:>8.1f} {r['list_rcpt']:>8.1f}"
                  f" {r['bytes_per_msg']:>11,.0f} {r['rss_mb']:>7.0f}", flush=True)
            if search:
                found = await searches(store)
                print("   search ms (rows): " + "  ".join(f"{k} {ms:.1f} ({n})"
                                                      for k, (ms, n) in found.items()), flush=True)
    finally:
        store.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="0,250000,500000,1000000")
    ap.add_argument("--search", action="store_true", help="also time substring searches of the list")
    ap.add_argument("--bulk-fill", action="store_true",
                    help="fill between levels 5,000 messages per write (same rows; rate still measured)")
    args = ap.parse_args()
    asyncio.run(main([int(x) for x in args.levels.split(",")], args.search, args.bulk_fill))
