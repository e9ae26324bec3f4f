"""``relaybox rejections list``: what the SMTP intake refused ("outgoing traffic errors"), newest first.

Works on the database file (``--db``, default ``storage.path`` of the config), offline or beside a running
relaybox (rows are written about a second after the refusal). Filters: ``--sender`` and ``--recipient``
(substring, case-insensitive), ``--client`` (exact address), ``--reason`` (relay_denied, bad_recipient,
bad_sender, syntax, too_big, auth_failed, ...), ``--since`` (a duration ago: 1h, 2d).
"""

from __future__ import annotations

import json
import sys
import time

from relay.configtypes import parse_duration
from relaybox.commands._common import run
from relaybox.commands._common import table as _table

COLUMNS = ["last_at", "count", "client_ip", "auth_user", "sender", "recipient", "code", "enhanced", "reason",
           "text"]


def cmd_list(args) -> int:
    flt = {k: v for k, v in (("sender", args.sender), ("recipient", args.recipient), ("client", args.client),
                             ("reason", args.reason)) if v}
    since = None
    if args.since:
        try:
            since = time.time() - float(parse_duration(args.since))
        except ValueError as exc:
            print(f"error: --since: {exc}", file=sys.stderr)
            return 2
    found = run(args, lambda s: s.rejections.list(flt, since=since, limit=args.limit))
    rows = [r.as_dict() for r in found]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    for r in rows:
        r["last_at"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["last_at"]))
    _table(rows, COLUMNS)
    return 0


def register(sub) -> None:
    r = sub.add_parser("rejections", help="transactions and recipients refused at SMTP time")
    rsub = r.add_subparsers(dest="sub", required=True)
    p = rsub.add_parser("list", help="refusals, newest first (a flood is one row with a count)")
    p.add_argument("--sender", default=None, help="substring of MAIL FROM")
    p.add_argument("--recipient", default=None, help="substring of the RCPT TO argument as typed")
    p.add_argument("--client", default=None, help="client IP address (exact)")
    p.add_argument("--reason", default=None, help="e.g. relay_denied, bad_recipient, auth_failed")
    p.add_argument("--since", default=None, help="only refusals within this long (e.g. 1h, 2d)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--db", default=None, help="database file (default: storage.path of the config)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)
