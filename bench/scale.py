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
import contextlib
import os
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import bench._scale_live as live  # noqa: E402
from relay.envelope import NewMessage  # noqa: E402
from store import Store  # noqa: E402
from store.history import MessageFilter  # noqa: E402

PAD = b"x" * 900 + b"\r\n"


def msg(i: int) -> NewMessage:
    """The i-th message: 1 KB, one recipient of 5,000 over 200 domains, and a Message-ID of its own
    (random, as mailers make them: the header index gets the random inserts real mail gives it)."""
    mid = f"{uuid.uuid4().hex}@org.test"
    body = (f"From: app@org.test\r\nTo: r@d.test\r\nSubject: scale\r\nMessage-ID: <{mid}>\r\n\r\n"
            .encode() + PAD)
    return NewMessage("app@org.test", [f"r{i % 5000}@d{i % 200}.test"], body, from_header="app@org.test",
                      subject="scale", message_id_header=f"<{mid}>")


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


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def enqueue_rates(store: Store, ref: Store, done: int, ref_done: int,
                        samples: int) -> dict[str, list[float]]:
    """``samples`` enqueue samples (5,000 messages each) on the queue and on the reference store (a fresh
    file: the rate at 0), interleaved ABBA so the load of the machine falls on both alike. Besides the rate,
    the CPU time of this process per message (writer thread included), which other processes' load on the
    machine disturbs far less."""
    out: dict[str, list[float]] = {"queue": [], "ref": [], "queue_cpu": [], "ref_cpu": []}
    at = {"queue": done, "ref": ref_done}
    for k in range(samples):
        for key in (("queue", "ref") if k % 2 == 0 else ("ref", "queue")):
            c0 = cpu()
            out[key].append(await fill(store if key == "queue" else ref, at[key], 5000))
            out[key + "_cpu"].append((cpu() - c0) * 1e6 / 5000)
            at[key] += 5000
    return out


async def measure(store: Store, level: int, queued: int) -> dict[str, float]:
    size = store.size_bytes()
    return {
        "level": level,
        "gauges": await timed(store.stats.queue_stats), "old_gauges": old_gauges(store.path),
        "summary": await timed(lambda: store.history.summary(top=50)),
        "list_status": await timed(lambda: store.history.list_messages(MessageFilter(status=("queued",)),
                                                                        limit=50)),
        "list_rcpt": await timed(lambda: store.history.list_messages(MessageFilter(recipient="r4999@"),
                                                                      limit=50)),
        "bytes_per_msg": size / queued - len(msg(0).body),
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


def verdict(ratio: float) -> str:
    return "within 20%" if ratio >= 0.8 else "NOT within 20%"


def smtp_rates(path: str, ref_path: str, messages: int,
               samples: int) -> tuple[list[float], list[float], float]:
    """SMTP intake (smtp-source -> relaybox) on the queue and on the reference file, interleaved ABBA."""
    big: list[float] = []
    small: list[float] = []
    rss = 0.0
    for k in range(samples):
        order = ((path, big), (ref_path, small)) if k % 2 == 0 else ((ref_path, small), (path, big))
        for p, out in order:
            rate, peak = live.smtp_intake(p, messages)
            out.append(rate)
            rss = max(rss, peak) if p == path else rss
    return big, small, rss


class Run:
    """One bench run: the queue (``scale.db``) and, per level, a fresh reference file (the rate at 0)."""

    def __init__(self, work: str, args: argparse.Namespace):
        self.work, self.args = work, args
        self.path = os.path.join(work, "scale.db")
        self.store = Store(self.path).open()
        self.done = 0            # messages in the queue
        self.ref_path = ""
        self.ref_done = 0

    def new_ref(self) -> Store:
        self.drop_ref()
        self.ref_path = os.path.join(self.work, "ref.db")
        self.ref_done = 0
        return Store(self.ref_path).open()

    def drop_ref(self) -> None:
        if self.ref_path:
            for suffix in ("", "-wal", "-shm", ".key", ".lock", ".wlock"):
                with contextlib.suppress(OSError):
                    os.unlink(self.ref_path + suffix)

    async def level(self, level: int) -> None:
        args = self.args
        if level > self.done:
            await (bulk_fill if args.bulk_fill else fill)(self.store, self.done, level - self.done)
            self.done = level
        ref = self.new_ref()
        rates = await enqueue_rates(self.store, ref, self.done, 0, args.samples)
        big, small = rates["queue"], rates["ref"]
        self.done += 5000 * args.samples
        self.ref_done = 5000 * args.samples
        r = await measure(self.store, level, self.done)
        ratio = median(big) / median(small) if small else 0.0
        print(f"{level:>9,} {median(big):>10,.0f} {median(small):>9,.0f} {ratio:>6.2f} {r['gauges']:>11.1f}"
              f" {r['old_gauges']:>11.1f} {r['summary']:>11.1f} {r['list_status']:>8.1f}"
              f" {r['list_rcpt']:>8.1f} {r['bytes_per_msg']:>11,.0f} {r['rss_mb']:>7.0f}", flush=True)
        print(f"   enqueue samples/s: queue {' '.join(f'{x:,.0f}' for x in big)};"
              f" at 0 {' '.join(f'{x:,.0f}' for x in small)}; {verdict(ratio)}; CPU us/msg: queue"
              f" {median(rates['queue_cpu']):.0f}, at 0 {median(rates['ref_cpu']):.0f}", flush=True)
        if args.search:
            found = await searches(self.store)
            print("   search ms (rows): " + "  ".join(f"{k} {ms:.1f} ({n})"
                                                  for k, (ms, n) in found.items()), flush=True)
        if args.smtp:
            await self.smtp(level, ref)
        ref.close()

    async def smtp(self, level: int, ref: Store) -> None:
        self.store.close()
        ref.close()
        big, small, rss = smtp_rates(self.path, self.ref_path, self.args.smtp, self.args.samples)
        self.done += self.args.smtp * self.args.samples
        ratio = median(big) / median(small) if small else 0.0
        print(f"   SMTP intake (smtp-source 20 sessions -> relaybox, 1 KB, {self.args.smtp:,} per sample):"
              f" queue {median(big):,.0f}/s, at 0 {median(small):,.0f}/s, ratio {ratio:.2f}"
              f" ({verdict(ratio)});"
              f" samples {' '.join(f'{x:,.0f}' for x in big)} vs {' '.join(f'{x:,.0f}' for x in small)};"
              f" relaybox RSS {rss:.0f} MB", flush=True)
        self.store = Store(self.path).open()

    async def drain(self) -> None:
        """The drain rate from the queue vs from a small queue (``--drain-ref`` messages), both to one
        Postfix smtp-sink, and the kill -9 test on the queue's drain."""
        args = self.args
        ref = self.new_ref()
        await bulk_fill(ref, 0, args.drain_ref)
        ref.close()
        self.store.close()
        small = live.drain(self.ref_path, args.drain, args.connections, crash=False)
        big = live.drain(self.path, args.drain, args.connections, crash=True)
        ratio = big.rate / small.rate if small.rate else 0.0
        print(f"drain to smtp-sink over {args.connections} connections, {args.drain:.0f} s: from"
              f" {self.done:,} queued {big.rate:,.0f} msg/s ({big.delivered:,}), from {args.drain_ref:,}"
              f" queued {small.rate:,.0f} msg/s ({small.delivered:,}): ratio {ratio:.2f};"
              f" relaybox RSS {big.rss_mb:.0f} MB (small queue {small.rss_mb:.0f} MB)", flush=True)
        print(f"kill -9 during that drain: {big.duplicates} duplicate(s) at the sink ({big.received:,}"
              f" transactions received) with {big.connections} connections open, {big.in_flight_at_kill}"
              f" recipients in 'sending' at the kill; bound: at most one per open connection"
              f" [{'held' if 0 <= big.duplicates <= big.connections else 'NOT held'}]", flush=True)
        self.store = Store(self.path).open()


async def main(args: argparse.Namespace) -> None:
    levels = [int(x) for x in args.levels.split(",")]
    work = tempfile.mkdtemp(prefix="scale-", dir=args.tmp)
    run = Run(work, args)
    print(f"scale: 1 KB messages, one recipient, 200 domains, random Message-IDs; store on {work};"
          f" enqueue: median of {args.samples} samples of 5,000 (200 per commit), interleaved with a fresh"
          f" file (the rate at 0)")
    print(f"{'queued':>9} {'enqueue/s':>10} {'at 0 /s':>9} {'ratio':>6} {'metrics ms':>11} {'(old scan)':>11}"
          f" {'summary ms':>11} {'list ms':>8} {'by rcpt':>8} {'meta B/msg':>11} {'RSS MB':>7}")
    try:
        for level in levels:
            await run.level(level)
        if args.drain:
            await run.drain()
    finally:
        run.store.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="0,250000,500000,1000000")
    ap.add_argument("--search", action="store_true", help="also time substring searches of the list")
    ap.add_argument("--bulk-fill", action="store_true",
                    help="fill between levels 5,000 messages per write (same rows; rate still measured)")
    ap.add_argument("--samples", type=int, default=3, help="enqueue (and SMTP) samples per level and file")
    ap.add_argument("--smtp", type=int, default=0, metavar="N",
                    help="also SMTP intake: smtp-source N messages into relaybox on the file, per sample")
    ap.add_argument("--drain", type=float, default=0.0, metavar="SECONDS",
                    help="after the last level: drain to a Postfix smtp-sink for SECONDS, then kill -9")
    ap.add_argument("--drain-ref", type=int, default=30000, help="messages of the small queue drained")
    ap.add_argument("--connections", type=int, default=20, help="delivery connections for --drain")
    ap.add_argument("--tmp", default="/tmp", help="where the temporary store goes (needs ~2.1 GB per 1M)")
    asyncio.run(main(ap.parse_args()))
