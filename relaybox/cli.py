"""The ``relaybox`` command. Subcommands live in ``relaybox/commands/<name>.py``; each module defines
``register(subparsers)`` which adds its parser(s) and sets ``func=callable(args) -> int`` as default."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


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
