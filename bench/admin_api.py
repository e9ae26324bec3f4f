"""Admin API over a large queue: list/filter latency, full pagination, qshape summary, /metrics scrape, bulk
hold by filter. In-process App (scheduler stopped) on a temporary database.

    .venv/bin/python bench/admin_api.py [--messages 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from relay.envelope import NewMessage  # noqa: E402
from tests.admin_support import running  # noqa: E402


async def timed(api, method, path, n=20, **kw):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        st, body = await api.call(method, path, **kw)
        times.append(time.perf_counter() - t)
        assert st == 200, (path, st, body)
    return statistics.median(times) * 1000, body


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        async with running(Path(d)) as (app, api):
            t = time.perf_counter()
            body = b"From: app@org.test\r\nSubject: s\r\n\r\n" + b"x" * 1000 + b"\r\n"
            for start in range(0, n, 500):
                await asyncio.gather(*(app.spool.enqueue(NewMessage(
                    "app@org.test", [f"u{i}@d{i % 20}.test"], body, subject=f"invoice {i}" if i % 10 == 0
                    else "news")) for i in range(start, min(n, start + 500))))
            print(f"setup: {n} messages enqueued in {time.perf_counter() - t:.1f}s")
            ms, _ = await timed(api, "GET", "/api/v1/messages", params={"limit": "50"})
            print(f"GET /api/v1/messages?limit=50 (newest page): median {ms:.1f} ms")
            ms, _ = await timed(api, "GET", "/api/v1/messages", params={"limit": "50", "domain": "d7.test"})
            print(f"  filtered by recipient domain: median {ms:.1f} ms")
            ms, _ = await timed(api, "GET", "/api/v1/messages", n=5,
                                params={"limit": "50", "subject": "invoice 1999"})
            print(f"  filtered by subject substring (full scan): median {ms:.1f} ms")
            t, cursor, seen = time.perf_counter(), None, 0
            while True:
                st, page = await api.call("GET", "/api/v1/messages",
                                          params={"limit": "1000", **({"cursor": cursor} if cursor else {})})
                seen += len(page["items"])
                cursor = page["next_cursor"]
                if not cursor:
                    break
            print(f"full pagination, 1000 per page: {seen} messages in {time.perf_counter() - t:.2f}s")
            ms, _ = await timed(api, "GET", "/api/v1/queue/summary", n=5)
            print(f"GET /api/v1/queue/summary (qshape over {n}): median {ms:.0f} ms")
            ms, _ = await timed(api, "GET", "/metrics", n=5)
            print(f"GET /metrics: median {ms:.0f} ms")
            t = time.perf_counter()
            st, res = await api.call("POST", "/api/v1/bulk/messages/hold",
                                     json={"filter": {"domain": "d3.test"}})
            dt = time.perf_counter() - t
            n = res["affected"]
            print(f"bulk hold by domain: {n} messages in {dt:.2f}s ({n / dt:.0f}/s)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    asyncio.run(main(ap.parse_args().messages))
