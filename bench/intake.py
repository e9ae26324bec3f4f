"""Intake benchmark: durable relaybox vs a no-op aiosmtpd server (the ceiling), same load, same run.

Load: Postfix's smtp-source, 20 parallel sessions reusing their connections, N messages of 1 KB and 100 KB.
relaybox runs with delivery disabled, so the figure is pure intake: parse, policy, durable group commit.
``--workers 1,2`` runs relaybox once per worker count (``[process] workers``; 1 = the single process).

    .venv/bin/python bench/intake.py [--messages 20000] [--sessions 20] [--workers 1,2]
"""

from __future__ import annotations

import argparse

from _common import NoopServer, TempRelaybox, drive


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
            with TempRelaybox({"process": {"workers": n}}) as relay:
                ours = drive(relay.smtp_port, args.messages, size, args.sessions)
            print(f"{size:>8} {ceiling:>20.0f} {n:>8} {ours:>15.0f} {ours / ceiling:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
