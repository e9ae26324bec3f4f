"""Cost of relaybox's log handler (redaction + formatting) per line, against plain logging.

    .venv/bin/python bench/logs.py [--lines 50000]

Logs the intake's "accepted" line (with a queue id) into an in-memory stream: stock logging.basicConfig,
then relaybox.logs text and JSON (20 registered secrets). Prints lines/s and microseconds per line.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from relaybox import logs  # noqa: E402


def run(n: int, with_extra: bool) -> float:
    log = logging.getLogger("relay.intake.listener")
    extra = {"queue_id": "06H0EKKTV7MJ5HH0"} if with_extra else None
    t0 = time.perf_counter()
    for _ in range(n):
        log.info("accepted queue_id=%s client=%s sender=<%s> rcpts=%d size=%d", "06H0EKKTV7MJ5HH0",
                 "10.0.0.5", "app@example.test", 2, 4096, extra=extra)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=50000)
    n = ap.parse_args().lines
    logs.register_secrets([f"secret-value-{i:04d}" for i in range(20)])
    logging.basicConfig(stream=io.StringIO(), level="INFO", force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = [("logging.basicConfig (no redaction)", run(n, False))]
    for fmt in ("text", "json"):
        logs.setup_logging("info", fmt, stream=io.StringIO())
        results.append((f"relaybox.logs {fmt}", run(n, True)))
    for name, seconds in results:
        print(f"{name:38s} {n / seconds:9.0f} lines/s  {seconds / n * 1e6:6.1f} us/line")
    return 0


if __name__ == "__main__":
    sys.exit(main())
