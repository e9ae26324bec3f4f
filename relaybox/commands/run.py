"""``relaybox run`` and ``relaybox check-config``."""

from __future__ import annotations

import argparse
import logging
import sys

from relay.configtypes import ConfigError


def _setup_logging(level: str, fmt: str) -> None:
    # the SMTP dialogue is logged by "relay.intake.smtp" at debug only; accept/reject lines say what matters
    try:
        from relaybox.logs import setup_logging
    except ImportError:
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    setup_logging(level, fmt)


def cmd_run(args) -> int:
    if args.worker_slot is not None:      # a worker: the supervisor may stop it while it still imports
        from relaybox.lifecycle import keep_early_stop_signals

        keep_early_stop_signals()
    from relaybox.app import run
    from relaybox.settings import load

    try:
        settings = load(args.config_file or args.config)
    except ConfigError as exc:
        for p in exc.problems:
            print(f"config error: {p}", file=sys.stderr)
        return 2
    from relaybox.checks import problems

    found = problems(settings)
    for p in found:
        print(f"config error: {p}", file=sys.stderr)
    if found:
        return 2
    _setup_logging(args.log_level or settings.log.level, args.log_format or settings.log.format)
    from relaybox.logs import register_settings_secrets

    register_settings_secrets(settings)   # every password/secret/token of the config is masked in logs
    from relaybox import workers

    count = workers.worker_count(args.workers, settings.section("process"))
    try:
        if args.worker_slot is not None:          # started by a supervisor (relaybox/workers.py)
            return workers.run_worker(settings, args.worker_slot, count)
        if count > 1:
            return workers.run_supervisor(settings, count, _passthrough(args))
        return run(settings)                      # --workers 1: one process, as always
    except Exception as exc:  # noqa: BLE001 - turn start-up failures into one clear line
        if type(exc).__name__ in ("LockError", "SchemaTooNew", "SecretKeyError"):
            print(f"relaybox: {exc}", file=sys.stderr)
            return 1
        raise


def _passthrough(args) -> list[str]:
    """The options of ``relaybox run`` that the workers get too."""
    out = []
    if args.log_level:
        out += ["--log-level", args.log_level]
    if args.log_format:
        out += ["--log-format", args.log_format]
    return out


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of processes, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n


def cmd_check(args) -> int:
    from relaybox.checks import problems
    from relaybox.settings import load

    path = args.file or args.config
    try:
        settings = load(path)
    except ConfigError as exc:
        for p in exc.problems:
            print(p)
        return 2
    found = problems(settings)
    for p in found:
        print(p)
    if found:
        return 2
    print(f"{path or 'config'}: ok")
    return 0


def register(sub) -> None:
    p = sub.add_parser("run", help="run relaybox (SMTP intake, delivery, poller, admin API)")
    p.add_argument("--config", dest="config_file", default=None, help="config file")
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default=None, choices=["text", "json"])
    p.add_argument("--workers", type=_count, default=None, metavar="N",
                   help="worker processes (default: [process] workers, else one per core; 1 = one process)")
    p.add_argument("--worker-slot", type=int, default=None, help=argparse.SUPPRESS)   # set by the supervisor
    p.set_defaults(func=cmd_run)
    c = sub.add_parser("check-config", help="validate a config file; prints problems and exits 2")
    c.add_argument("file", nargs="?", default=None)
    c.set_defaults(func=cmd_check)
