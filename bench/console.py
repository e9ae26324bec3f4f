"""Console page times with a large queue, on the embedded default (SQLite).

Fills a store with N queued messages (1 KB, one recipient each, 200 destination domains: bench/scale.py's
shape, through ``store.messages.enqueue``), then starts relaybox on that file in this process (delivery
off, so the queue stays as it is), signs in to the console over HTTP and times whole GETs on loopback of

- Dashboard (``/ui/dashboard``): queue counts, held, oldest, suppressions, channels, last failures;
- Outbox (``/ui/outbox``): the first page, newest first, 50 messages;
- Outbox searched by recipient substring (``/ui/outbox?recipient=...``): one that matches every 5,000th
  message and one that matches none (the whole queue looked at), and the second page (cursor);
- Message (``/ui/messages/{id}``) of the oldest queued message (recipients, events, preview).

Each page is fetched ``--reps`` times after one warm-up; the best and the median are printed (the time is
the whole request: aiohttp server, store reads, Jinja2 render, the client's read on the same loop). The
goal: under 300 ms each at 1,000,000 queued.

    .venv/bin/python bench/console.py                       # 1,000,000 queued
    .venv/bin/python bench/console.py --messages 100000     # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import aiohttp  # noqa: E402

from relay.envelope import NewMessage  # noqa: E402
from relaybox.app import App  # noqa: E402
from relaybox.settings import parse  # noqa: E402
from store import Store  # noqa: E402

BODY = b"From: app@org.test\r\nTo: r@d.test\r\nSubject: scale\r\n\r\n" + b"x" * 960 + b"\r\n"
TOKEN = "bench:console-bench-token-0123456789"
GOAL_MS = 300.0


def msg(i: int) -> NewMessage:
    return NewMessage("app@org.test", [f"r{i % 5000}@d{i % 200}.test"], BODY, from_header="app@org.test",
                      subject=f"scale {i}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fill(path: str, count: int) -> float:
    store = Store(path).open()
    try:
        t0 = time.perf_counter()
        for base in range(0, count, 500):
            batch = range(base, min(base + 500, count))
            await asyncio.gather(*(store.messages.enqueue(msg(i)) for i in batch))
            if base and base % 100_000 == 0:
                print(f"  {base:,} queued ({base / (time.perf_counter() - t0):,.0f}/s)", flush=True)
        return count / (time.perf_counter() - t0)
    finally:
        store.close()


async def timed_get(client: aiohttp.ClientSession, url: str, reps: int) -> tuple[float, float, int, int]:
    async def once() -> tuple[float, int, int]:
        t0 = time.perf_counter()
        async with client.get(url, allow_redirects=False) as r:
            body = await r.read()
        return (time.perf_counter() - t0) * 1000, r.status, len(body)

    await once()                                     # warm-up: page cache, template compile
    runs = [await once() for _ in range(reps)]
    times = [t for t, _, _ in runs]
    return min(times), statistics.median(times), runs[-1][1], runs[-1][2]


async def measure(path: str, reps: int) -> list[tuple[str, float, float, int, int]]:
    smtp_port, admin_port = free_port(), free_port()
    settings = parse({
        "smtp": {"listen": [f"127.0.0.1:{smtp_port}"], "hostname": "relay.test"},
        "storage": {"path": path, "min_free": 0.0},
        "delivery": {"enabled": False},
        "admin": {"listen": f"127.0.0.1:{admin_port}", "tokens": [TOKEN]},
    })
    app = App(settings)
    await app.start()
    base = f"http://127.0.0.1:{admin_port}"
    out = []
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as c:
            async with c.get(base + "/ui/login") as r:
                csrf = re.search(r'name="csrf" value="([^"]+)"', await r.text()).group(1)   # type: ignore[union-attr]
            async with c.post(base + "/ui/login", data={"csrf": csrf, "token": TOKEN.split(":", 1)[1]},
                              allow_redirects=False) as r:
                assert r.status == 303, r.status
            async with c.get(base + "/ui/outbox") as r:
                page = await r.text()
            nxt = re.search(r'id="next-page" href="\?([^"]+)"', page)
            oldest = (await app.store.history.list_messages(_oldest_filter(), limit=1)).items
            qid = oldest[0].message.id if oldest else ""
            pages = [("Dashboard", "/ui/dashboard"), ("Outbox", "/ui/outbox"),
                     ("Outbox, 2nd page", "/ui/outbox?" + nxt.group(1).replace("&amp;", "&") if nxt else ""),
                     ("Outbox by recipient", "/ui/outbox?recipient=r4999%40d199"),
                     ("Outbox, no match", "/ui/outbox?recipient=nobody%40nowhere"),
                     ("Message", f"/ui/messages/{qid}")]
            for name, url in pages:
                if url:
                    out.append((name, *await timed_get(c, base + url, reps)))
    finally:
        await app.stop(timeout=5)
    return out


def _oldest_filter():
    from store.history import MessageFilter
    return MessageFilter(status=("queued",))


async def main(n: int, reps: int, keep: str | None) -> None:
    work = keep or tempfile.mkdtemp(prefix="relaybox-console-")
    path = os.path.join(work, "console.db")
    try:
        if not os.path.exists(path):
            print(f"console: filling {n:,} queued messages into {path}", flush=True)
            rate = await fill(path, n)
            print(f"  filled at {rate:,.0f} messages/s; {os.path.getsize(path) / 1e9:.2f} GB", flush=True)
        else:
            print(f"console: reusing {path}")
        rows = await measure(path, reps)
        print(f"{'page':<22} {'best ms':>8} {'median ms':>10} {'status':>7} {'bytes':>8}"
              f"  goal < {GOAL_MS:.0f} ms")
        for name, best, med, status, size in rows:
            verdict = "ok" if med < GOAL_MS else "SLOW"
            print(f"{name:<22} {best:>8.1f} {med:>10.1f} {status:>7} {size:>8,}  {verdict}")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--keep", help="a directory to keep (and reuse) the filled database in")
    args = ap.parse_args()
    asyncio.run(main(args.messages, args.reps, args.keep))
