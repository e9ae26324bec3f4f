"""``relaybox channels list|show|add|remove|validate``, ``relaybox campaigns list|add|remove`` and
``relaybox quarantine list|retry|drop`` — on the database (offline, or beside a running relaybox: it
picks channel changes up within seconds). Secrets are stored, never printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Awaitable, Callable, TypeVar

from poller import channels
from poller.config import CampaignConfig, ChannelConfig, FilterConfig, PollerConfig
from poller.validate import Validation, save_validated, validate_stored
from relay.configtypes import ConfigError, build
from relaybox.commands._common import attempt, removed, run
from relaybox.commands._common import out as _out
from store import Store
from store.inbound import CampaignInUse, InboundStore

T = TypeVar("T")


def _db_arg(p) -> None:
    p.add_argument("--db", default=None, help="database file (default: storage.path of the config)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _run(args, job: Callable[[InboundStore], Awaitable[T]]) -> T:
    """One async job on the inbound store, in a store session of its own (``_common.run``)."""
    return run(args, lambda store: job(store.inbound))


def _change(args, job: Callable[[InboundStore], Awaitable[T]],
            errors: tuple[type[Exception], ...] = ()) -> tuple[T | None, int]:
    """``_run`` for a change: a refusal (``errors``, a bad value, a storage failure) is printed as
    ``error: ...`` and gives (None, 2)."""
    return attempt(args, lambda store: job(store.inbound), (*errors, ValueError))


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "never"


def cmd_list(args) -> int:
    search = {k: getattr(args, k, None) for k in ("name", "address", "campaign", "state", "q")}
    rows = _run(args, lambda inbound: channels.list_channels(inbound, **search))
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    _out(args, [{**r, "server": f"{r['protocol']}://{r['host']}:{r['port'] or 'default'}",
                 "last_poll": _when(r.get("last_poll_at")), "last_success": _when(r.get("last_success_at")),
                 "error": (r.get("last_error") or "")[:60]} for r in rows],
         ["name", "state", "server", "user", "folder", "default_campaign", "last_poll", "last_success",
          "fetched", "routed", "quarantined", "error"])
    return 0


def cmd_show(args) -> int:
    ch = _run(args, lambda inbound: channels.get_channel(inbound, args.name))
    if ch is None:
        print(f"error: no channel {args.name}", file=sys.stderr)
        return 1
    print(json.dumps(channels.redacted(ch), indent=2, default=str))
    return 0


def _parse_filter(text: str) -> FilterConfig:
    # FIELD:OP:VALUE=>CAMPAIGN   e.g.  subject:contains:invoice=>billing
    try:
        left, campaign = text.rsplit("=>", 1)
        field, op, value = left.split(":", 2) if not left.startswith("header:") else \
            (":".join(left.split(":", 2)[:2]), *left.split(":", 3)[2:])
        return FilterConfig(field=field, op=op, value=value, campaign=campaign)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"filter {text!r}: expected FIELD:OP:VALUE=>CAMPAIGN ({exc})") from None


def _pcfg(args) -> PollerConfig:
    """The ``[poller]`` settings of the config file (its timeout bounds a validation), else the defaults."""
    if getattr(args, "db", None) and not getattr(args, "config", None):
        return PollerConfig()
    try:
        from relaybox.settings import load

        return load(args.config).section("poller") or PollerConfig()
    except (ConfigError, OSError):
        return PollerConfig()


def _print_validation(args, v: Validation, saved: str | None = None) -> None:
    if args.json:
        print(json.dumps({**v.as_dict(), **({"saved": saved} if saved else {})}))
    else:
        print(v.text)
        if saved:
            print(saved)


def cmd_add(args) -> int:
    data = {k: v for k, v in vars(args).items() if k in ChannelConfig.__dataclass_fields__ and v is not None}
    data.pop("filters", None)
    for flag, key in (("password_stdin", "password"), ("oauth2_client_secret_stdin", "oauth2_client_secret"),
                      ("oauth2_refresh_token_stdin", "oauth2_refresh_token")):
        if getattr(args, flag, False):
            data[key] = sys.stdin.readline().rstrip("\n")
    try:
        ch = build(ChannelConfig, data, "channel")
        ch = channels.normalize(ch)
        ch = dataclasses.replace(ch, filters=[_parse_filter(f) for f in args.filter or []])
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    timeout = float(_pcfg(args).timeout)
    v, rc = _change(args, lambda inbound: save_validated(inbound, ch, timeout),
                    (channels.ChannelError,))
    if v is not None:
        state = "active" if ch.enabled else "inactive"
        _print_validation(args, v, f"channel {ch.name} saved ({state})")
    return rc


def cmd_remove(args) -> int:
    ok, rc = _change(args, lambda inbound: inbound.delete_channel(args.name))
    return rc or removed(bool(ok), f"removed {args.name}", f"no channel {args.name}")


def cmd_validate(args) -> int:
    timeout = float(_pcfg(args).timeout)

    async def check(store: Store) -> Validation:
        return await validate_stored(store.inbound, args.name, timeout)

    v = run(args, check)
    _print_validation(args, v)
    return 0 if v.ok else 1


def cmd_campaigns_list(args) -> int:
    rows = _run(args, channels.list_campaigns)
    _out(args, [{**r, "target": r.get("url") or r.get("path") or r.get("forward_to") or "(default maildir)"}
                for r in rows], ["name", "kind", "target"])
    return 0


def cmd_campaigns_add(args) -> int:
    data = {k: v for k, v in vars(args).items() if k in CampaignConfig.__dataclass_fields__ and v is not None}
    if args.secret_stdin:
        data["secret"] = sys.stdin.readline().rstrip("\n")
    try:
        camp = build(CampaignConfig, data, "campaign")
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _, rc = _change(args, lambda inbound: channels.save_campaign(inbound, camp))
    if not rc:
        print(f"campaign {camp.name} saved")
    return rc


def cmd_campaigns_remove(args) -> int:
    ok, rc = _change(args, lambda inbound: inbound.delete_campaign(args.name), (CampaignInUse,))
    return 1 if rc else removed(bool(ok), f"removed {args.name}", f"no campaign {args.name}")


def cmd_quarantine(args) -> int:
    if args.action == "list":
        items = _run(args, lambda inbound: inbound.quarantine(channel=args.channel))
        _out(args, [q.as_dict() for q in items],
             ["id", "channel", "uid", "message_id", "tries", "last_error"])
        return 0
    if args.id is None:
        print(f"error: quarantine {args.action} needs the id of a quarantined message", file=sys.stderr)
        return 2

    async def act(inbound: InboundStore) -> bool:
        if args.action == "retry":
            return await inbound.retry_quarantined(args.id)
        return await inbound.drop_quarantined(args.id)

    ok, rc = _change(args, act)
    if rc:
        return rc
    print(f"{args.action} {args.id}: {'done' if ok else 'not in quarantine (or not retryable)'}")
    return 0 if ok else 1


def register(sub) -> None:
    ch = sub.add_parser("channels", help="inbound mailboxes polled by relaybox")
    csub = ch.add_subparsers(dest="sub", required=True)
    p = csub.add_parser("list", help="channels with state, last poll and last success; search with filters")
    p.add_argument("--name", default=None, help="substring of the name or short name")
    p.add_argument("--address", default=None, help="substring of the address or user")
    p.add_argument("--campaign", default=None, help="the default campaign or one a filter names")
    p.add_argument("--state", default=None, choices=channels.STATES)
    p.add_argument("-q", "--search", dest="q", default=None, help="substring of name, address, user or host")
    _db_arg(p)
    p.set_defaults(func=cmd_list)
    for name, fn in (("show", cmd_show), ("remove", cmd_remove), ("validate", cmd_validate)):
        p = csub.add_parser(name)
        p.add_argument("name")
        _db_arg(p)
        p.set_defaults(func=fn)
    p = csub.add_parser("add", help="add or update a channel, validated on save: an active channel is saved"
                                    " only when the connection succeeds (else save it with --disabled)")
    p.add_argument("name")
    for opt in ("host", "user", "address", "short_name", "protocol", "tls", "server_name", "auth", "folder",
                "after", "storage_folder", "default_campaign", "purpose", "ca_file", "first_sync",
                "oauth2_token_url", "oauth2_client_id", "oauth2_scope"):
        p.add_argument(f"--{opt.replace('_', '-')}", dest=opt, default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--poll-interval", dest="poll_interval", default=None)
    for flag, dest, text in (("sync-all-folders", "sync_all_folders", "every folder but storage/trash/sent"),
                             ("recipient-only", "recipient_only", "only mail that names --address"),
                             ("verify", "verify", "verify the server certificate (default)"),
                             ("idle", "idle", "IMAP IDLE when offered (default)")):
        p.add_argument(f"--{flag}", dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text)
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--oauth2-client-secret-stdin", action="store_true",
                   help="read the OAuth2 client secret from stdin (a line after the password, if both)")
    p.add_argument("--oauth2-refresh-token-stdin", action="store_true",
                   help="read the OAuth2 refresh token from stdin (the next line)")
    p.add_argument("--filter", action="append", help="FIELD:OP:VALUE=>CAMPAIGN, in order (repeatable)")
    p.add_argument("--disabled", dest="enabled", action="store_false", default=None)
    _db_arg(p)
    p.set_defaults(func=cmd_add)

    cp = sub.add_parser("campaigns", help="where routed inbound messages go")
    cpsub = cp.add_subparsers(dest="sub", required=True)
    p = cpsub.add_parser("list")
    _db_arg(p)
    p.set_defaults(func=cmd_campaigns_list)
    p = cpsub.add_parser("add", help="add or update a campaign (the name is an identifier)")
    p.add_argument("name")
    for opt in ("kind", "path", "url", "forward_to", "sender", "timeout", "attachments"):
        p.add_argument(f"--{opt.replace('_', '-')}", dest=opt, default=None)
    p.add_argument("--secret-stdin", action="store_true", help="read the webhook's HMAC secret from stdin")
    _db_arg(p)
    p.set_defaults(func=cmd_campaigns_add)
    p = cpsub.add_parser("remove")
    p.add_argument("name")
    _db_arg(p)
    p.set_defaults(func=cmd_campaigns_remove)

    q = sub.add_parser("quarantine", help="inbound messages that could not be delivered to a campaign")
    q.add_argument("action", choices=["list", "retry", "drop"])
    q.add_argument("id", nargs="?", type=int)
    q.add_argument("--channel", default=None)
    _db_arg(q)
    q.set_defaults(func=cmd_quarantine)
