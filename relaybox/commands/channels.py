"""``relaybox channels list|show|add|remove|validate``, ``relaybox campaigns list|add|remove`` and
``relaybox quarantine list|retry|drop`` — on the database (offline, or beside a running relaybox: it
picks channel changes up within seconds). Secrets are stored, never printed.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Awaitable, Callable, TypeVar

from poller import channels
from poller.config import CampaignConfig, ChannelConfig, FilterConfig
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


def cmd_list(args) -> int:
    rows = _run(args, channels.list_channels)
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    _out(args, [{**r, "server": f"{r['protocol']}://{r['host']}:{r['port'] or 'default'}",
                 "error": (r.get("last_error") or "")[:60]} for r in rows],
         ["name", "server", "user", "folder", "default_campaign", "enabled", "fetched", "routed",
          "quarantined", "error"])
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


def cmd_add(args) -> int:
    data = {k: v for k, v in vars(args).items() if k in ChannelConfig.__dataclass_fields__ and v is not None}
    data.pop("filters", None)
    if args.password_stdin:
        data["password"] = sys.stdin.readline().rstrip("\n")
    try:
        ch = build(ChannelConfig, data, "channel")
        ch = channels.normalize(ch)
        ch = dataclasses.replace(ch, filters=[_parse_filter(f) for f in args.filter or []])
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _, rc = _change(args, lambda inbound: channels.save_channel(inbound, ch), (channels.ChannelError,))
    if not rc:
        print(f"channel {ch.name} saved")
    return rc


def cmd_remove(args) -> int:
    ok, rc = _change(args, lambda inbound: inbound.delete_channel(args.name))
    return rc or removed(bool(ok), f"removed {args.name}", f"no channel {args.name}")


def cmd_validate(args) -> int:
    from poller.runner import PollerService, validate_channel

    async def check(store: Store) -> tuple[bool, str]:
        import aiohttp

        ch = await channels.get_channel(store.inbound, args.name)
        if ch is None:
            return False, f"no such channel: {args.name}"
        svc = PollerService(store, None)
        svc.http = aiohttp.ClientSession()
        try:
            return await validate_channel(ch, svc, svc.pcfg.timeout)
        finally:
            await svc.http.close()

    ok, text = run(args, check)
    print(text)
    return 0 if ok else 1


def cmd_campaigns_list(args) -> int:
    rows = _run(args, channels.list_campaigns)
    _out(args, [{**r, "target": r.get("url") or r.get("path") or r.get("forward_to") or "(default maildir)"}
                for r in rows], ["name", "kind", "target"])
    return 0


def cmd_campaigns_add(args) -> int:
    data = {k: v for k, v in vars(args).items() if k in CampaignConfig.__dataclass_fields__ and v is not None}
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
    p = csub.add_parser("list")
    _db_arg(p)
    p.set_defaults(func=cmd_list)
    for name, fn in (("show", cmd_show), ("remove", cmd_remove), ("validate", cmd_validate)):
        p = csub.add_parser(name)
        p.add_argument("name")
        _db_arg(p)
        p.set_defaults(func=fn)
    p = csub.add_parser("add", help="add or update a channel (validated on save)")
    p.add_argument("name")
    for opt in ("host", "user", "address", "protocol", "tls", "server_name", "auth", "folder", "after",
                "storage_folder", "default_campaign", "purpose", "ca_file", "oauth2_token_url",
                "oauth2_client_id", "oauth2_scope"):
        p.add_argument(f"--{opt.replace('_', '-')}", dest=opt, default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--poll-interval", dest="poll_interval", default=None)
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--filter", action="append", help="FIELD:OP:VALUE=>CAMPAIGN, in order (repeatable)")
    p.add_argument("--disabled", dest="enabled", action="store_false", default=None)
    _db_arg(p)
    p.set_defaults(func=cmd_add)

    cp = sub.add_parser("campaigns", help="where routed inbound messages go")
    cpsub = cp.add_subparsers(dest="sub", required=True)
    p = cpsub.add_parser("list")
    _db_arg(p)
    p.set_defaults(func=cmd_campaigns_list)
    p = cpsub.add_parser("add")
    p.add_argument("name")
    for opt in ("kind", "path", "url", "forward_to", "sender"):
        p.add_argument(f"--{opt.replace('_', '-')}", dest=opt, default=None)
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
