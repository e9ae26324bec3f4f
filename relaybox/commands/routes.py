"""``relaybox routes list`` and ``relaybox routes test NAME``: the "SMTP test" admins expect.

``test`` connects to the route's smarthost, says EHLO, does STARTTLS (or implicit TLS) and AUTH as
configured, then QUIT; it prints the transcript (credentials never shown) and either ``OK`` or the server's
exact reply. Exit code 0 on success, 1 on failure, 2 for an unknown route or a bad config.
"""

from __future__ import annotations

import asyncio
import sys

from relay.configtypes import ConfigError


def _settings(args):
    from relaybox.settings import load

    return load(args.config)


def cmd_list(args) -> int:
    try:
        relay = _settings(args).relay
    except ConfigError as exc:
        print("\n".join(f"config error: {p}" for p in exc.problems), file=sys.stderr)
        return 2
    if not relay.routes:
        print("no routes: all mail goes directly to the recipients' MX hosts")
        return 0
    for r in relay.routes:
        match = ", ".join([*r.from_addresses, *(f"@{d}" for d in r.from_domains)]) or "-"
        flag = " (default)" if r.default else ""
        user = f" user={r.username}" if r.username else ""
        print(f"{r.name}{flag}: {r.host}:{r.port} tls={r.tls} verify={'on' if r.tls_verify else 'off'}"
              f"{user} from: {match}")
    return 0


def cmd_test(args) -> int:
    try:
        relay = _settings(args).relay
    except ConfigError as exc:
        print("\n".join(f"config error: {p}" for p in exc.problems), file=sys.stderr)
        return 2
    route = next((r for r in relay.routes if r.name == args.name), None)
    if route is None:
        names = ", ".join(r.name for r in relay.routes) or "none configured"
        print(f"error: no route named {args.name!r} (routes: {names})", file=sys.stderr)
        return 2
    helo = relay.delivery.helo_name or relay.smtp.hostname
    from relay.delivery.routes import smtp_test

    ok, summary, transcript = asyncio.run(smtp_test(route, helo, args.timeout))
    if not args.quiet:
        for e in transcript:
            print(f"{e['dir']}: {e['line']}")
    print(summary if ok else f"FAILED: {summary}")
    return 0 if ok else 1


def register(sub) -> None:
    p = sub.add_parser("routes", help="smarthost routes")
    rsub = p.add_subparsers(dest="routes_command", metavar="ACTION")
    ls = rsub.add_parser("list", help="list configured routes")
    ls.set_defaults(func=cmd_list)
    t = rsub.add_parser("test", help="connect, EHLO, STARTTLS, AUTH against a route and report")
    t.add_argument("name")
    t.add_argument("--timeout", type=float, default=30.0)
    t.add_argument("--quiet", "-q", action="store_true", help="only the result line")
    t.set_defaults(func=cmd_test)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
