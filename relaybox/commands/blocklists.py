"""``relaybox blocklists``: are the relay's sending addresses on a DNSBL? One check now, from the config.

Asks every zone of ``[dnsbl]`` about every sending address (``dnsbl.sending_ips``, and with ``dnsbl.learn``
the source address toward each route and the default route, when public) through the configured resolvers,
the same way the running relay's checker does, and prints one line per pair (``--json``: the pairs as JSON).
``--zone`` / ``--ip`` check other zones or addresses than the configured ones (also with [dnsbl] off).
Exit code 0 when nothing is listed, 1 when a pair is listed, 2 for a config error or nothing to check.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time

from relay.configtypes import ConfigError

COLUMNS = ("status", "ip", "zone", "codes", "routes", "text")


def _relay(args):
    from relaybox.settings import load

    relay = load(args.config).relay
    cfg = relay.dnsbl
    zones, ips = args.zone or list(cfg.zones), args.ip or list(cfg.sending_ips)
    try:
        new = dataclasses.replace(cfg, enabled=True, zones=zones, sending_ips=ips,
                                  learn=cfg.learn and not args.ip)
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None
    return dataclasses.replace(relay, dnsbl=new)


def _line(d: dict) -> str:
    status = d["status"].upper() if d["listed"] else d["status"]
    codes = ",".join(d["codes"]) or "-"
    routes = ",".join(d["routes"]) or "-"
    return f"{status:8} {d['ip']:40} {d['zone']:28} {codes:12} {routes:14} {d['text']}".rstrip()


def cmd_check(args) -> int:
    from relay.dnsbl import DnsblChecker

    try:
        relay = _relay(args)
    except ConfigError as exc:
        print("\n".join(f"config error: {p}" for p in exc.problems), file=sys.stderr)
        return 2
    listings = asyncio.run(DnsblChecker(relay).check_now())
    if not listings:
        print("nothing to check: no sending address configured (dnsbl.sending_ips) or learned (only public "
              "addresses count)", file=sys.stderr)
        return 2
    rows = [s.as_dict() for s in listings]
    if args.json:
        for r in rows:
            r["checked_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.pop("last_checked")))
            r.pop("since")
        print(json.dumps(rows, ensure_ascii=False))
    else:
        print(_line({"status": "STATUS", "ip": "IP", "zone": "ZONE", "codes": ["CODES"], "routes": ["ROUTES"],
                     "text": "TEXT", "listed": False}))
        for r in rows:
            print(_line(r))
    return 1 if any(s.listed for s in listings) else 0


def register(sub) -> None:
    p = sub.add_parser("blocklists", help="check the sending addresses against the DNSBL zones now")
    p.add_argument("--zone", action="append", default=[],
                   help="a zone to ask (repeatable; default the [dnsbl] zones)")
    p.add_argument("--ip", action="append", default=[], help="an address to check (repeatable; default the "
                                                              "configured and learned ones)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_check)
