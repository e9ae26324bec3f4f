"""``relaybox backup PATH`` and ``relaybox restore PATH``.

Backup uses SQLite's online backup API in a single step: the copy is one read transaction, i.e. a
consistent snapshot of the database (including what is still in the WAL), taken while relaybox keeps
writing (WAL readers do not block the writer). The copy is written to ``PATH.tmp``, switched to a
self-contained rollback-journal file, checked with ``PRAGMA integrity_check``, fsynced and renamed into
place, so ``PATH`` is either absent or a complete backup.

Restore refuses while a relaybox holds the database lock, verifies the backup (integrity_check, schema not
newer than this relaybox) before touching anything, keeps the current database as
``<db>.pre-restore-<UTC time>`` (itself an online backup), then copies the backup into the database with
the same API (so the WAL and shared-memory files of the target stay coherent). Migrations bring an older
backup up to date at the next ``relaybox run``.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time

from store import lock as dblock
from store.sqlite import migrations


class BackupError(Exception):
    pass


def _db_path(args) -> str:
    if getattr(args, "db", None):
        return args.db
    from relaybox.settings import load

    return load(args.config).relay.storage.path


def _utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check(conn: sqlite3.Connection, what: str) -> int:
    """integrity_check must say ok; returns the schema version (PRAGMA user_version)."""
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{what}: not a usable SQLite database: {exc}") from None
    if rows != ["ok"]:
        shown = "; ".join(str(r) for r in rows[:5])
        raise BackupError(f"{what}: integrity_check failed: {shown}")
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def backup(db_path: str, dest: str) -> dict:
    """Write a consistent copy of ``db_path`` to ``dest``; returns {path, bytes, schema_version, seconds}."""
    if not os.path.exists(db_path):
        raise BackupError(f"database {db_path} does not exist")
    if dest.endswith(os.sep):
        os.makedirs(dest, exist_ok=True)
    if os.path.isdir(dest):
        dest = os.path.join(dest, f"relaybox-{_utc_stamp()}.db")
    if os.path.exists(dest):
        raise BackupError(f"{dest} already exists; refusing to overwrite a backup")
    tmp = dest + ".tmp"
    for leftover in (tmp, tmp + "-journal"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    started = time.monotonic()
    src = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30.0)
    try:
        src.execute("PRAGMA busy_timeout=30000")
        dst = sqlite3.connect(tmp, isolation_level=None)
        try:
            src.backup(dst)                    # pages=-1: the whole file in one read transaction
            dst.execute("PRAGMA journal_mode=DELETE")
            version = _check(dst, f"backup {tmp}")
        finally:
            dst.close()
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        src.close()
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest)
    return {"path": dest, "bytes": os.path.getsize(dest), "schema_version": version,
            "seconds": round(time.monotonic() - started, 3)}


def verify(path: str) -> int:
    """Check a backup file; returns its schema version or raises BackupError."""
    if not os.path.isfile(path):
        raise BackupError(f"backup {path} does not exist")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        version = _check(conn, f"backup {path}")
    finally:
        conn.close()
    known = migrations()
    latest = known[-1][0] if known else 0
    if version > latest:
        raise BackupError(f"backup {path} has schema version {version}, newer than this relaybox "
                          f"({latest}); restore it with the relaybox version that wrote it")
    if version == 0:
        raise BackupError(f"backup {path} is not a relaybox database (schema version 0)")
    return version


def restore(backup_path: str, db_path: str) -> dict:
    """Replace ``db_path`` with ``backup_path``; returns {schema_version, previous}."""
    version = verify(backup_path)
    try:
        held = dblock.acquire(db_path, purpose="relaybox restore")
    except dblock.LockError as exc:
        who = f"pid {exc.pid}" if exc.pid else "another process"
        raise BackupError(f"relaybox ({who}) is running on {db_path}; stop it before restoring") from None
    with held:
        previous = None
        if os.path.exists(db_path):
            previous = f"{db_path}.pre-restore-{_utc_stamp()}"
            backup(db_path, previous)
        src = sqlite3.connect(f"file:{backup_path}?mode=ro", uri=True)
        dst = sqlite3.connect(db_path, isolation_level=None, timeout=30.0)
        try:
            dst.execute("PRAGMA journal_mode=WAL")
            src.backup(dst)
            dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            _check(dst, f"restored database {db_path}")
        finally:
            dst.close()
            src.close()
    return {"schema_version": version, "previous": previous}


def cmd_backup(args) -> int:
    try:
        info = backup(_db_path(args), args.path)
    except (BackupError, sqlite3.Error, OSError) as exc:
        print(f"backup failed: {exc}", file=sys.stderr)
        return 1
    print(f"backup written to {info['path']} ({info['bytes']} bytes, schema version "
          f"{info['schema_version']}, {info['seconds']} s)")
    return 0


def cmd_restore(args) -> int:
    db_path = _db_path(args)
    try:
        info = restore(args.path, db_path)
    except (BackupError, sqlite3.Error, OSError) as exc:
        print(f"restore refused: {exc}", file=sys.stderr)
        return 1
    print(f"restored {args.path} into {db_path} (schema version {info['schema_version']})")
    if info["previous"]:
        print(f"the previous database was saved as {info['previous']}")
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
