"""``relaybox allowlist list|add|remove`` and ``relaybox users list|add|remove|hash``.

These work on the store directly (offline or beside a running relaybox: SQLite WAL allows it, and the
running process picks the change up within seconds). The admin API offers the same operations.
"""

from __future__ import annotations

import getpass
import sys

from relay.intake import policy
from relaybox.commands._common import attempt, out, removed, run


def cmd_list(args) -> int:
    entries = run(args, lambda store: store.access.list_allowlist())
    out(args, [e.as_dict() for e in entries], ["cidr", "note", "source"])
    return 0


def cmd_add(args) -> int:
    try:
        policy.parse_cidr(args.cidr)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    entry, rc = attempt(args, lambda store: store.access.add_allowlist(args.cidr, args.note, "cli"))
    if entry is not None:
        print(f"added {entry.cidr}")
    return rc


def cmd_remove(args) -> int:
    ok, rc = attempt(args, lambda store: store.access.remove_allowlist(args.cidr))
    return rc or removed(bool(ok), f"removed {args.cidr}", f"{args.cidr} is not on the allowlist")


def cmd_users_list(args) -> int:
    users = run(args, lambda store: store.access.list_users())
    out(args, [u.as_dict() for u in users], ["username", "note", "source"])
    return 0


def _password(args) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return getpass.getpass("password: ")


def cmd_users_add(args) -> int:
    pw = _password(args)
    if not pw:
        print("error: empty password", file=sys.stderr)
        return 2
    hashed = policy.hash_password(pw)
    _, rc = attempt(args, lambda store: store.access.set_user(args.username, hashed, args.note, "cli"))
    if not rc:
        print(f"user {args.username} saved")
    return rc


def cmd_users_remove(args) -> int:
    ok, rc = attempt(args, lambda store: store.access.remove_user(args.username))
    return rc or removed(bool(ok), f"removed {args.username}", f"no user {args.username}")


def cmd_users_hash(args) -> int:
    print(policy.hash_password(_password(args)))
    return 0


def _common(p) -> None:
    p.add_argument("--db", default=None, help="database file (default: storage.path of the config)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def register(sub) -> None:
    a = sub.add_parser("allowlist", help="IP networks allowed to relay without AUTH")
    asub = a.add_subparsers(dest="sub", required=True)
    p = asub.add_parser("list")
    _common(p)
    p.set_defaults(func=cmd_list)
    p = asub.add_parser("add")
    p.add_argument("cidr")
    p.add_argument("--note", default=None)
    _common(p)
    p.set_defaults(func=cmd_add)
    p = asub.add_parser("remove")
    p.add_argument("cidr")
    _common(p)
    p.set_defaults(func=cmd_remove)

    u = sub.add_parser("users", help="SMTP AUTH users (passwords stored as scrypt hashes)")
    usub = u.add_subparsers(dest="sub", required=True)
    p = usub.add_parser("list")
    _common(p)
    p.set_defaults(func=cmd_users_list)
    for name, fn in (("add", cmd_users_add), ("hash", cmd_users_hash)):
        p = usub.add_parser(name)
        if name == "add":
            p.add_argument("username")
            p.add_argument("--note", default=None)
        p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
        _common(p)
        p.set_defaults(func=fn)
    p = usub.add_parser("remove")
    p.add_argument("username")
    _common(p)
    p.set_defaults(func=cmd_users_remove)
