"""The ``relaybox`` command. Subcommands live in ``relaybox/commands/<name>.py``; each module defines
``register(subparsers)`` which adds its parser(s) and sets ``func=callable(args) -> int`` as default."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys


def pin_metric_pid() -> None:
    """In a worker process (``PROMETHEUS_MULTIPROC_DIR`` set by the supervisor), prometheus_client's
    multiprocess values ask the kernel for the pid on every inc()/set()/observe() to notice a fork: about
    20 getpid() syscalls per relayed message (~0.5% of a worker's CPU, measured). relaybox never forks a
    running process (workers are fresh interpreters), so the pid is read once, and again only in a forked
    child. Must run before any metric exists: a value made with the default class would map the same
    per-pid file twice."""
    from prometheus_client import values

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") or getattr(values.ValueClass, "pinned_pid", False):
        return
    pid = [os.getpid()]
    os.register_at_fork(after_in_child=lambda: pid.__setitem__(0, os.getpid()))
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: pid[0])
    values.ValueClass.pinned_pid = True


def build_parser() -> argparse.ArgumentParser:
    import relaybox.commands as pkg

    parser = argparse.ArgumentParser(prog="relaybox", description="Self-hosted mail relay and mailbox poller")
    parser.add_argument("--config", "-c", default=None,
                        help="config file (default: $RELAYBOX_CONFIG or conf/relaybox.toml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        mod = importlib.import_module(f"relaybox.commands.{info.name}")
        if hasattr(mod, "register"):
            mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    pin_metric_pid()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
