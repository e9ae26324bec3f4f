"""``relaybox allowlist list|add|remove`` and ``relaybox users list|add|remove|hash``.

These work on the database file directly (offline or beside a running relaybox: SQLite WAL allows it, and
the running process picks the change up within seconds). The admin API offers the same operations.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import sys

from relay import policy


def open_db(args):
    from relay.db import Database
    from relaybox.settings import load

    path = getattr(args, "db", None)
    if not path:
        path = load(args.config).relay.storage.path
    return Database(path).open()


@contextlib.contextmanager
def db_session(args):
    """The database for one CLI command, closed (WAL checkpointed) however the command ends."""
    db = open_db(args)
    try:
        yield db
    finally:
        db.close()


def _out(args, rows, cols) -> None:
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=None, default=str))
        return
    def cell(r, c):
        v = r.get(c)
        return "" if v is None else str(v)

    widths = [max(len(c), *(len(cell(r, c)) for r in rows)) if rows else len(c) for c in cols]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(cell(r, c).ljust(w) for c, w in zip(cols, widths)))


def cmd_list(args) -> int:
    with db_session(args) as db:
        _out(args, db.read_sync(policy.allowlist_list), ["cidr", "note", "source"])
    return 0


def cmd_add(args) -> int:
    try:
        policy.parse_cidr(args.cidr)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with db_session(args) as db:
        net = db.write_sync(lambda c: policy.allowlist_add(c, args.cidr, args.note, "cli"))
    print(f"added {net}")
    return 0


def cmd_remove(args) -> int:
    db = open_db(args)
    try:
        ok = db.write_sync(lambda c: policy.allowlist_remove(c, args.cidr))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()
    if not ok:
        print(f"error: {args.cidr} is not on the allowlist", file=sys.stderr)
        return 1
    print(f"removed {args.cidr}")
    return 0


def cmd_users_list(args) -> int:
    with db_session(args) as db:
        _out(args, db.read_sync(policy.user_list), ["username", "note", "source"])
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
    db = open_db(args)
    try:
        db.write_sync(lambda c: policy.user_set(c, args.username, hashed, args.note, "cli"))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()
    print(f"user {args.username} saved")
    return 0


def cmd_users_remove(args) -> int:
    with db_session(args) as db:
        ok = db.write_sync(lambda c: policy.user_remove(c, args.username))
    print(f"removed {args.username}" if ok else f"error: no user {args.username}",
          file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


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
