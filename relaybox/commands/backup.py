"""``relaybox backup PATH``, ``relaybox restore PATH`` and ``relaybox vacuum``.

Backup takes a consistent snapshot of the database while relaybox keeps writing (WAL readers do not block
the writer) and writes it atomically: ``PATH`` is either absent or a complete, self-contained, checked
backup. Restore refuses while a relaybox holds the database lock, verifies the backup before touching
anything, and keeps the current database as ``<db>.pre-restore-<UTC time>``. Migrations bring an older
backup up to date at the next ``relaybox run``. The work is done by ``store.backup``.
"""

from __future__ import annotations

import sys

from relaybox.commands._common import db_path
from store import StorageError
from store.backup import backup, restore, vacuum


def cmd_backup(args) -> int:
    try:
        info = backup(db_path(args), args.path)
    except (StorageError, OSError) as exc:
        print(f"backup failed: {exc}", file=sys.stderr)
        return 1
    print(f"backup written to {info.path} ({info.bytes} bytes, schema version {info.schema_version}, "
          f"{info.seconds} s)")
    return 0


def cmd_restore(args) -> int:
    path = db_path(args)
    try:
        info = restore(args.path, path)
    except (StorageError, OSError) as exc:
        print(f"restore refused: {exc}", file=sys.stderr)
        return 1
    print(f"restored {args.path} into {path} (schema version {info.schema_version})")
    if info.previous:
        print(f"the previous database was saved as {info.previous}")
    return 0


def cmd_vacuum(args) -> int:
    path = db_path(args)
    try:
        info = vacuum(path)
    except (StorageError, OSError) as exc:
        print(f"vacuum refused: {exc}", file=sys.stderr)
        return 1
    print(f"vacuumed {path}: {info.bytes_before / 1e6:.1f} MB -> {info.bytes_after / 1e6:.1f} MB in "
          f"{info.seconds} s" + ("" if info.incremental_before else
                                 "; it now gives freed space back by itself (auto_vacuum=incremental)"))
    return 0


def register(sub) -> None:
    b = sub.add_parser("backup", help="consistent copy of the database (safe while relaybox runs)")
    b.add_argument("path", help="backup file to create (or a directory: relaybox-<UTC time>.db inside)")
    b.add_argument("--db", default=None, help="database file (default: storage.path of the config)")
    b.set_defaults(func=cmd_backup)
    r = sub.add_parser("restore", help="replace the database with a backup (relaybox must be stopped)")
    r.add_argument("path", help="backup file written by `relaybox backup`")
    r.add_argument("--db", default=None, help="database file (default: storage.path of the config)")
    r.set_defaults(func=cmd_restore)
    v = sub.add_parser("vacuum", help="rewrite the database compactly (relaybox must be stopped); a database "
                                      "from an older relaybox then gives freed space back by itself")
    v.add_argument("--db", default=None, help="database file (default: storage.path of the config)")
    v.set_defaults(func=cmd_vacuum)
