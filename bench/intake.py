"""Intake benchmark: durable relaybox vs a no-op aiosmtpd server (the ceiling), same load, same run.

Load: Postfix's smtp-source, 20 parallel sessions reusing their connections, N messages of 1 KB and 100 KB.
relaybox runs with delivery disabled, so the figure is pure intake: parse, policy, durable group commit.

    .venv/bin/python bench/intake.py [--messages 20000] [--sessions 20]
"""

from __future__ import annotations

import argparse

from _common import NoopServer, TempRelaybox, drive


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--sizes", default="1024,102400")
    args = ap.parse_args()
    print(f"intake: {args.messages} messages per run, {args.sessions} sessions (smtp-source -d)")
    print(f"{'size':>8} {'noop aiosmtpd msg/s':>20} {'relaybox msg/s':>15} {'ratio':>6}")
    for size in (int(s) for s in args.sizes.split(",")):
        with NoopServer() as noop:
            ceiling = drive(noop.port, args.messages, size, args.sessions)
        with TempRelaybox() as relay:
            ours = drive(relay.smtp_port, args.messages, size, args.sessions)
        print(f"{size:>8} {ceiling:>20.0f} {ours:>15.0f} {ours / ceiling:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
