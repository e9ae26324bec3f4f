"""Intake benchmark: durable relaybox vs a no-op aiosmtpd server (the ceiling), same load, same run.

Load: Postfix's smtp-source, 20 parallel sessions reusing their connections, N messages of 1 KB and 100 KB.
relaybox runs with delivery disabled, so the figure is pure intake: parse, policy, durable group commit.
``--workers 1,2`` runs relaybox once per worker count (``[process] workers``; 1 = the single process).

    .venv/bin/python bench/intake.py [--messages 20000] [--sessions 20] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time

from _common import NoopServer, drive

from tests.peers.ports import free_port
from tests.peers.relaybox_proc import RelayboxProcess


@contextlib.contextmanager
def relaybox(workers: int):
    """relaybox with delivery off and ``workers`` processes, ready when every worker is (the supervisor
    says so), not when the first one greets."""
    work = tempfile.mkdtemp(prefix="relaybox-bench-intake-")
    relay = RelayboxProcess(work, {"delivery": {"enabled": False}, "process": {"workers": workers},
                                   "admin": {"listen": f"127.0.0.1:{free_port()}"}})
    try:
        relay.start(timeout=180)
        deadline = time.monotonic() + 180
        while workers > 1 and "relaybox started: supervisor" not in relay.log():
            if time.monotonic() > deadline or relay.proc.poll() is not None:
                raise RuntimeError(f"relaybox workers did not start: {relay.log()}")
            time.sleep(0.05)
        yield relay
    finally:
        relay.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--sizes", default="1024,102400")
    ap.add_argument("--workers", default="1", help="worker counts to compare, e.g. 1,2 (run --workers)")
    args = ap.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    print(f"intake: {args.messages} messages per run, {args.sessions} sessions (smtp-source -d)")
    print(f"{'size':>8} {'noop aiosmtpd msg/s':>20} {'workers':>8} {'relaybox msg/s':>15} {'ratio':>6}")
    for size in (int(s) for s in args.sizes.split(",")):
        with NoopServer() as noop:
            ceiling = drive(noop.port, args.messages, size, args.sessions)
        for n in counts:
            with relaybox(n) as relay:
                ours = drive(relay.smtp_port, args.messages, size, args.sessions)
            print(f"{size:>8} {ceiling:>20.0f} {n:>8} {ours:>15.0f} {ours / ceiling:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
