"""``relaybox routes list|show|add|edit|remove|test``: smarthost routes in the store, beside a running
relaybox (it follows a change within a second).

``add`` and ``edit`` run the full SMTP test before saving and print its result; the route is saved either
way unless ``--strict`` (then a failed test saves nothing, exit 1); ``--no-test`` skips it. Passwords come
from stdin (``--password-stdin``), never from the command line, and are never printed. Routes of the
config file (``[[routes]]``, source ``config``) are changed there, not here.

``test`` runs connect, EHLO, STARTTLS (or implicit TLS), AUTH, MAIL FROM, RCPT TO, RSET, QUIT (``--send``:
a real test message instead of RSET) and ends with ``Connection succeeded`` or ``Connection failed at
<STEP>: <the server's words>``. Exit codes: 0 success, 1 test failed, 2 unknown route or bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from relay.configtypes import ConfigError


def _helo(args: Any) -> tuple[str, float]:
    try:
        from relaybox.settings import load

        rc = load(args.config).relay
        return rc.delivery.helo_name or rc.smtp.hostname, min(float(rc.delivery.connect_timeout), 30.0)
    except (ConfigError, OSError):
        import socket

        return socket.getfqdn(), 30.0


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z" if ts else "never"


def _line(v: dict[str, Any]) -> str:
    if "host" not in v:
        return f"{v['name']}: unusable: {v.get('unusable')}"
    match = ", ".join([*v["from_addresses"], *(f"@{d}" for d in v["from_domains"]),
                       *(f"user:{u}" for u in v["auth_users"]), *(f"net:{n}" for n in v["client_networks"])])
    st = v["status"]
    flag = " (default)" if v["default"] else ""
    user = f" user={v['username']}" if v.get("username") else ""
    verify = "on" if v["tls_verify"] else "off"
    return (f"{v['name']}{flag}: {v['host']}:{v['port']} tls={v['tls']} verify={verify}{user}"
            f" from: {match or '-'} [{v['source']}] state={st['state']} delivered={st['delivered']}"
            f" deferred={st['deferred']} failed={st['failed']} last_success={_when(st['last_success_at'])}"
            + (f" last_error={st['last_error']!r}" if st.get("last_error") else ""))


def _config_routes(args: Any) -> list[Any]:
    """The config file's routes (what the store holds once relaybox has started with this config)."""
    from relaybox.settings import load

    try:
        return list(load(args.config).relay.routes)
    except (ConfigError, OSError):
        return []


def _stored(args: Any, store: Any) -> list[Any]:
    """The store's routes, plus config routes not seeded yet (relaybox has not started with them)."""
    from relay.delivery.route_book import stored_routes

    have = asyncio.run(store.routes.list())
    names = {s.name for s in have}
    extra = [s for s in stored_routes(_config_routes(args)) if s.name not in names]
    return sorted([*have, *extra], key=lambda s: s.name)


def _views(args: Any, store: Any) -> list[dict[str, Any]]:
    from admin_api.routes_routes import present
    from relay.delivery.route_book import RouteStatus
    from relay.delivery.routes import route_from_settings

    status = RouteStatus()
    out = []
    for s in _stored(args, store):
        try:
            v = present(route_from_settings(s.settings))
        except (TypeError, ValueError) as exc:
            v = {"name": s.name, "unusable": str(exc)}
        st = status.view(s)
        out.append({**v, "source": s.source, "created_at": s.created_at, "updated_at": s.updated_at,
                    "status": st})
    return out


def cmd_list(args) -> int:
    from relaybox.commands._common import store_session

    with store_session(args) as store:
        views = _views(args, store)
    if args.json:
        print(json.dumps(views))
    elif not views:
        print("no routes: all mail goes directly to the recipients' MX hosts")
    for v in views if not args.json else []:
        print(_line(v))
    return 0


def cmd_show(args) -> int:
    from relaybox.commands._common import store_session

    with store_session(args) as store:
        views = [v for v in _views(args, store) if v["name"] == args.name]
    if not views:
        print(f"error: no route named {args.name!r}", file=sys.stderr)
        return 2
    v = views[0]
    if args.json:
        print(json.dumps(v))
        return 0
    for k, val in v.items():
        if k == "status":
            for sk, sv in val.items():
                print(f"status.{sk}: {_when(sv) if sk.endswith('_at') else sv}")
        elif k not in ("created_at", "updated_at"):
            print(f"{k}: {', '.join(val) if isinstance(val, list) else val}")
    return 0


def _settings(args, old: dict[str, Any] | None) -> dict[str, Any]:
    data: dict[str, Any] = dict(old or {})
    data.pop("name", None)
    for key in ("host", "port", "tls", "username", "sender"):
        if getattr(args, key, None) is not None:
            data[key] = getattr(args, key)
    for key in ("tls_verify", "allow_plaintext_auth", "default"):
        if getattr(args, key, None) is not None:
            data[key] = getattr(args, key)
    for key in ("from_addresses", "from_domains", "auth_users", "client_networks"):
        if getattr(args, key, None) is not None:
            data[key] = [x for x in getattr(args, key) if x]      # "" (given once) empties the list
    if args.password_stdin:
        data["password"] = sys.stdin.readline().rstrip("\r\n")
    if data.get("port") == 0:
        data.pop("port")
    return data


def _save(args, new: bool) -> int:
    from relay.config import RouteConfig
    from relay.configtypes import build
    from relay.delivery.route_check import check_route
    from relay.delivery.routes import route_settings
    from relaybox.commands._common import store_session
    from store import StorageError
    from store.errors import Conflict
    from store.routes import StoredRoute

    with store_session(args) as store:
        old = asyncio.run(store.routes.get(args.name))
        if new and old is not None:
            print(f"error: route {args.name} exists (relaybox routes edit {args.name} changes it)",
                  file=sys.stderr)
            return 2
        if not new and old is None:
            print(f"error: no route named {args.name!r}", file=sys.stderr)
            return 2
        if old is not None and old.source == "config":
            print(f"error: route {args.name} is defined in the config file ([[routes]]): change it there",
                  file=sys.stderr)
            return 2
        data = _settings(args, dict(old.settings) if old is not None else None)
        try:
            route = build(RouteConfig, {**data, "name": args.name}, f"routes.{args.name}")
        except ConfigError as exc:
            print("\n".join(f"error: {p}" for p in exc.problems), file=sys.stderr)
            return 2
        failed = False
        if not args.no_test:
            helo, timeout = _helo(args)
            try:
                result = asyncio.run(check_route(route, helo, rcpt=args.rcpt, sender=args.test_sender,
                                                 timeout=timeout, refresh_tokens=store.kv))
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(result.summary)
            failed = not result.ok
            if failed and args.strict:
                print(f"not saved (--strict): route {args.name}", file=sys.stderr)
                return 1
        settings = route_settings(route)
        if "port" not in data:
            settings["port"] = 0
        try:
            call = store.routes.create if new else store.routes.replace
            asyncio.run(call(StoredRoute(args.name, settings)))
        except (Conflict, StorageError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(f"route {args.name} {'added' if new else 'saved'}" + (" (its test failed)" if failed else ""))
    return 0


def cmd_add(args) -> int:
    return _save(args, new=True)


def cmd_edit(args) -> int:
    return _save(args, new=False)


def cmd_remove(args) -> int:
    from relaybox.commands._common import store_session
    from store.errors import Conflict

    with store_session(args) as store:
        try:
            removed = asyncio.run(store.routes.delete(args.name))
        except Conflict as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if not removed:
        print(f"error: no route named {args.name!r}", file=sys.stderr)
        return 2
    print(f"route {args.name} removed")
    return 0


def cmd_test(args) -> int:
    from relay.delivery.route_check import check_route
    from relay.delivery.routes import route_from_settings
    from relaybox.commands._common import store_session

    try:
        with store_session(args) as store:
            routes = _stored(args, store)
            stored = next((s for s in routes if s.name == args.name), None)
            if stored is None:
                names = ", ".join(s.name for s in routes) or "none"
                print(f"error: no route named {args.name!r} (routes: {names})", file=sys.stderr)
                return 2
            route = route_from_settings(stored.settings)
            helo, timeout = _helo(args)
            result = asyncio.run(check_route(route, helo, sender=args.sender, rcpt=args.rcpt, send=args.send,
                                             timeout=args.timeout or timeout, refresh_tokens=store.kv))
    except ConfigError as exc:
        print("\n".join(f"config error: {p}" for p in exc.problems), file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0 if result.ok else 1
    print(f"route {route.name}: {route.host} port {route.port} ({route.tls}), MAIL FROM:<{result.sender}>"
          f" RCPT TO:<{result.rcpt}>")
    if not args.quiet:
        for e in result.transcript:
            print(f"{e['dir']}: {e['line']}")
    print(result.summary)
    return 0 if result.ok else 1


def _flag(p: argparse.ArgumentParser, name: str, dest: str, help: str) -> None:
    p.add_argument(f"--{name}", dest=dest, action="store_const", const=True, default=None, help=help)
    p.add_argument(f"--no-{name}", dest=dest, action="store_const", const=False, help=argparse.SUPPRESS)


def _route_options(p: argparse.ArgumentParser, new: bool) -> None:
    p.add_argument("name", help="a slug: a-z, 0-9, - and _")
    p.add_argument("--host", required=new)
    p.add_argument("--port", type=int, default=None,
                   help="default by --tls: none 25, starttls 587, implicit 465")
    p.add_argument("--tls", choices=("none", "starttls", "implicit"), default=None)
    _flag(p, "tls-verify", "tls_verify", "verify the server's certificate (default on; --no-tls-verify)")
    p.add_argument("--username", default=None)
    p.add_argument("--password-stdin", action="store_true", help="read the AUTH password from stdin")
    _flag(p, "allow-plaintext-auth", "allow_plaintext_auth", "AUTH without TLS (--no-... to undo)")
    for opt, dest, what in (("from-address", "from_addresses", "a From address"),
                            ("from-domain", "from_domains", "a From domain"),
                            ("auth-user", "auth_users", "an SMTP AUTH user"),
                            ("client-network", "client_networks", "a client network (CIDR)")):
        p.add_argument(f"--{opt}", dest=dest, action="append", default=None,
                       help=f"{what} whose mail takes this route (repeat; replaces the list; '' empties it)")
    _flag(p, "default", "default", "the route of mail no other route takes (--no-default to undo)")
    p.add_argument("--sender", default=None, help="the route's MAIL FROM for tests")
    p.add_argument("--rcpt", default=None, help="RCPT TO of the test on save (default: the sender)")
    p.add_argument("--test-sender", default=None, help="MAIL FROM of the test on save")
    p.add_argument("--no-test", action="store_true", help="save without the SMTP test")
    p.add_argument("--strict", action="store_true", help="save only if the SMTP test succeeds")


def _db(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    p.add_argument("--db", default=None, help="database file or URL (default: storage of the config)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable output")


def register(sub) -> None:
    p = sub.add_parser("routes", help="smarthost routes")
    rsub = p.add_subparsers(dest="routes_command", metavar="ACTION")
    ls = rsub.add_parser("list", help="routes with their status")
    _db(ls)
    ls.set_defaults(func=cmd_list)
    sh = rsub.add_parser("show", help="one route with its status")
    sh.add_argument("name")
    _db(sh)
    sh.set_defaults(func=cmd_show)
    for action, fn, new in (("add", cmd_add, True), ("edit", cmd_edit, False)):
        a = rsub.add_parser(action, help=f"{action} a route (tested before it is saved)")
        _route_options(a, new)
        _db(a, json_flag=False)
        a.set_defaults(func=fn)
    rm = rsub.add_parser("remove", help="remove a route")
    rm.add_argument("name")
    _db(rm, json_flag=False)
    rm.set_defaults(func=cmd_remove)
    t = rsub.add_parser("test", help="full SMTP test: EHLO, STARTTLS, AUTH, MAIL FROM, RCPT TO, RSET")
    t.add_argument("name")
    t.add_argument("--rcpt", default=None, help="RCPT TO (default: the sender)")
    t.add_argument("--sender", default=None,
                   help="MAIL FROM (default: the route's sender or first From address)")
    t.add_argument("--send", action="store_true", help="send a real test message instead of RSET")
    t.add_argument("--timeout", type=float, default=None)
    t.add_argument("--quiet", "-q", action="store_true", help="only the result line")
    _db(t)
    t.set_defaults(func=cmd_test)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
