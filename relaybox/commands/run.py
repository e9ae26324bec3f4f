"""``relaybox run`` and ``relaybox check-config``."""

from __future__ import annotations

import logging
import sys

from relay.configtypes import ConfigError


def _setup_logging(level: str, fmt: str) -> None:
    # aiosmtpd logs every command at INFO ("mail.log"); our own accept/reject lines say what matters
    logging.getLogger("mail.log").setLevel(logging.DEBUG if level.lower() == "debug" else logging.WARNING)
    try:
        from relaybox.logs import setup_logging
    except ImportError:
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    setup_logging(level, fmt)


def cmd_run(args) -> int:
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
    try:
        return run(settings)
    except Exception as exc:  # noqa: BLE001 - turn start-up failures into one clear line
        if type(exc).__name__ in ("LockError", "SchemaTooNew", "SecretKeyError"):
            print(f"relaybox: {exc}", file=sys.stderr)
            return 1
        raise


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
    p.set_defaults(func=cmd_run)
    c = sub.add_parser("check-config", help="validate a config file; prints problems and exits 2")
    c.add_argument("file", nargs="?", default=None)
    c.set_defaults(func=cmd_check)
