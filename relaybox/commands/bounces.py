"""``relaybox bounces parse|list`` and ``relaybox suppressions list|add|remove|export``.

``bounces parse FILE...`` runs the parser offline (no database) and prints one JSON line per file:
``{"file", "category", "recipients": [{"address", "action", "status", "replycode", "diagnostic", "reason",
"kind"}]}``. The other commands work on the database file (``--db``, default ``storage.path`` of the
config), offline or beside a running relaybox (SQLite WAL).
"""

from __future__ import annotations

import csv
import json
import sys
import time

from relay.configtypes import parse_duration
from relaybox.commands._common import attempt, removed, run
from relaybox.commands._common import table as _table
from store import suppressions

_FIELDS = ("address", "action", "status", "replycode", "diagnostic", "reason", "kind")


def cmd_parse(args) -> int:
    from relay.bounces import parse

    failed = 0
    for name in args.files:
        try:
            with open(name, "rb") as fh:
                raw = fh.read(args.max_bytes)
        except OSError as exc:
            print(f"error: {name}: {exc.strerror or exc}", file=sys.stderr)
            failed += 1
            print(json.dumps({"file": name, "category": "unknown", "recipients": []}))
            continue
        p = parse(raw)
        rcpts = [{k: getattr(r, k) for k in _FIELDS} for r in p.recipients]
        print(json.dumps({"file": name, "category": p.category, "recipients": rcpts}, ensure_ascii=False))
    return 1 if failed else 0


def cmd_bounces_list(args) -> int:
    flt = {"address": args.address} if args.address else {}
    found = run(args, lambda s: s.bounces.list(flt, limit=args.limit))
    rows = [{k: v for k, v in b.as_dict().items() if k != "raw"} for b in found]
    if args.json:
        print(json.dumps(rows, default=str))
    else:
        _table(rows, ["id", "at", "address", "category", "reason", "kind", "status", "source", "effect",
                      "message_id"])
    return 0


def cmd_list(args) -> int:
    found = run(args, lambda s: s.bounces.suppressions(include_expired=args.all, search=args.search,
                                                       limit=args.limit))
    rows = [e.as_dict() for e in found]
    if args.json:
        print(json.dumps(rows))
    else:
        _table(rows, ["address", "reason", "kind", "source", "created_at", "expires_at", "note"])
    return 0


def cmd_add(args) -> int:
    try:
        expires = parse_duration(args.expires) if args.expires else 0.0
    except ValueError:
        print(f'error: --expires: expected a duration like "30d", got {args.expires!r}', file=sys.stderr)
        return 2
    now = time.time()
    until_at = (now + expires) if expires else None
    entry, rc = attempt(args, lambda s: s.bounces.suppress(
        args.address, args.reason, "manual", "cli", note=args.note, expires_at=until_at))
    if rc or entry is None:
        return rc or 2
    until = "never expires" if entry.expires_at is None else \
        "until " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(entry.expires_at))
    print(f"suppressed {entry.address} ({entry.reason}, {until})")
    return 0


def cmd_remove(args) -> int:
    ok = run(args, lambda s: s.bounces.unsuppress(args.address))
    return removed(ok, f"removed {suppressions.normalize(args.address)}",
                   f"{args.address} is not on the suppression list")


def cmd_export(args) -> int:
    rows = [e.as_dict() for e in run(args, lambda s: s.bounces.export_suppressions())]
    if args.format == "jsonl":
        for r in rows:
            print(json.dumps(r))
        return 0
    w = csv.DictWriter(sys.stdout, fieldnames=list(suppressions.COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return 0


def _db_args(p, json_flag: bool = True) -> None:
    p.add_argument("--db", default=None, help="database file (default: storage.path of the config)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable output")


def register(sub) -> None:
    b = sub.add_parser("bounces", help="parse delivery reports offline; list recorded bounces")
    bsub = b.add_subparsers(dest="sub", required=True)
    p = bsub.add_parser("parse", help="print one JSON line per file: category and per-recipient results")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--max-bytes", type=int, default=25_000_000, help="read at most this much of each file")
    p.set_defaults(func=cmd_parse)
    p = bsub.add_parser("list", help="recorded bounces, newest first")
    p.add_argument("--address", default=None)
    p.add_argument("--limit", type=int, default=50)
    _db_args(p)
    p.set_defaults(func=cmd_bounces_list)

    s = sub.add_parser("suppressions", help="addresses relaybox will not deliver to")
    ssub = s.add_subparsers(dest="sub", required=True)
    p = ssub.add_parser("list")
    p.add_argument("--search", default=None, help="substring of the address or reason")
    p.add_argument("--all", action="store_true", help="include expired entries")
    p.add_argument("--limit", type=int, default=1000)
    _db_args(p)
    p.set_defaults(func=cmd_list)
    p = ssub.add_parser("add")
    p.add_argument("address")
    p.add_argument("--reason", default="manual")
    p.add_argument("--expires", default=None, help='e.g. "30d"; default: never')
    p.add_argument("--note", default=None)
    _db_args(p, json_flag=False)
    p.set_defaults(func=cmd_add)
    p = ssub.add_parser("remove")
    p.add_argument("address")
    _db_args(p, json_flag=False)
    p.set_defaults(func=cmd_remove)
    p = ssub.add_parser("export", help="all active entries (CSV with a header, or JSON lines)")
    p.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    _db_args(p, json_flag=False)
    p.set_defaults(func=cmd_export)
