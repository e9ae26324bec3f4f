"""Backup and restore of the whole store, consistent while relaybox keeps writing.

``backup(path, dest)`` takes a consistent snapshot of the database (including what is still in the
write-ahead log) while writers go on: with SQLite, the online backup API in a single step, i.e. one read
transaction. The copy is written to ``dest.tmp``, made self-contained (no WAL), checked for integrity,
fsynced and renamed into place, so ``dest`` is either absent or a complete backup.

``restore(backup_path, path)`` refuses while a relaybox holds the database lock, verifies the backup
(integrity, schema not newer than this relaybox, a relaybox schema at all) before touching anything, keeps
the current database as ``<path>.pre-restore-<UTC time>`` (itself a backup), then copies the backup into
the database (so the target's WAL and shared-memory files stay coherent). Migrations bring an older backup
up to date when the store is next opened.

Every failure is a ``BackupError`` (a ``StorageError``); OSError passes through for file-system trouble.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from dataclasses import dataclass

from store import lock as dblock
from store.sqlite import StorageError, migrations

__all__ = ["BackupError", "BackupInfo", "RestoreInfo", "VacuumInfo", "backup", "restore", "vacuum",
           "verify_backup"]


class BackupError(StorageError):
    pass


@dataclass(frozen=True)
class BackupInfo:
    path: str
    bytes: int
    schema_version: int
    seconds: float


@dataclass(frozen=True)
class RestoreInfo:
    schema_version: int
    previous: str | None       # where the replaced database was saved (None if there was none)


def _utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check(conn: sqlite3.Connection, what: str) -> int:
    """The integrity check must say ok; returns the schema version."""
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        if rows != ["ok"]:
            shown = "; ".join(str(r) for r in rows[:5])
            raise BackupError(f"{what}: integrity_check failed: {shown}")
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{what}: not a usable SQLite database: {exc}") from None


def _target(dest: str) -> str:
    if dest.endswith(os.sep):
        os.makedirs(dest, exist_ok=True)
    if os.path.isdir(dest):
        dest = os.path.join(dest, f"relaybox-{_utc_stamp()}.db")
    if os.path.exists(dest):
        raise BackupError(f"{dest} already exists; refusing to overwrite a backup")
    return dest


def _copy(db_path: str, tmp: str) -> int:
    """The online copy into ``tmp``, switched to a rollback journal and checked; returns the schema
    version."""
    src = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30.0)
    try:
        src.execute("PRAGMA busy_timeout=30000")
        dst = sqlite3.connect(tmp, isolation_level=None)
        try:
            src.backup(dst)                    # pages=-1: the whole file in one read transaction
            dst.execute("PRAGMA journal_mode=DELETE")
            return _check(dst, f"backup {tmp}")
        finally:
            dst.close()
    finally:
        src.close()


def backup(db_path: str, dest: str) -> BackupInfo:
    """Write a consistent copy of the database at ``db_path`` to ``dest`` (a file to create, or a directory:
    ``relaybox-<UTC time>.db`` inside it)."""
    if not os.path.exists(db_path):
        raise BackupError(f"database {db_path} does not exist")
    dest = _target(dest)
    tmp = dest + ".tmp"
    for leftover in (tmp, tmp + "-journal"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    started = time.monotonic()
    try:
        version = _copy(db_path, tmp)
    except sqlite3.Error as exc:
        _remove(tmp)
        raise BackupError(f"backup of {db_path} failed: {exc}") from None
    except BaseException:
        _remove(tmp)
        raise
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest)
    return BackupInfo(path=dest, bytes=os.path.getsize(dest), schema_version=version,
                      seconds=round(time.monotonic() - started, 3))


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


def verify_backup(path: str) -> int:
    """Check a backup file; returns its schema version or raises BackupError."""
    if not os.path.isfile(path):
        raise BackupError(f"backup {path} does not exist")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BackupError(f"backup {path}: cannot be opened: {exc}") from None
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


def _copy_into(backup_path: str, db_path: str) -> None:
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


def restore(backup_path: str, db_path: str) -> RestoreInfo:
    """Replace the database at ``db_path`` with the backup at ``backup_path`` (no relaybox may run on it)."""
    version = verify_backup(backup_path)
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
        try:
            _copy_into(backup_path, db_path)
        except sqlite3.Error as exc:
            raise BackupError(f"restore into {db_path} failed: {exc}") from None
    return RestoreInfo(schema_version=version, previous=previous)


@dataclass(frozen=True)
class VacuumInfo:
    bytes_before: int
    bytes_after: int
    incremental_before: bool     # the database could already give space back (auto_vacuum=INCREMENTAL)
    seconds: float


def _file_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p))


def vacuum(db_path: str) -> VacuumInfo:
    """Rewrite the database compactly, offline (no relaybox may run on it), and switch a database made by
    an older relaybox (auto_vacuum=NONE: freed pages were never given back) to incremental auto-vacuum, so
    the retention loop's ``compact`` gives space back from then on. VACUUM writes a full copy before
    replacing the file: refused unless the file system has room for it."""
    if not os.path.exists(db_path):
        raise BackupError(f"no database at {db_path}")
    try:
        held = dblock.acquire(db_path, purpose="relaybox vacuum")
    except dblock.LockError as exc:
        who = f"pid {exc.pid}" if exc.pid else "another process"
        raise BackupError(f"relaybox ({who}) is running on {db_path}; stop it before vacuuming") from None
    with held:
        before = _file_bytes(db_path)
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(db_path))).free
        if free < 2 * before:
            raise BackupError(f"vacuum needs about {2 * before / 1e6:.0f} MB free beside {db_path}; "
                              f"{free / 1e6:.0f} MB are")
        started = time.monotonic()
        conn = sqlite3.connect(db_path, isolation_level=None)
        try:
            incremental = int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")     # takes effect with the VACUUM below
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            _check(conn, f"vacuumed database {db_path}")
        except sqlite3.Error as exc:
            raise BackupError(f"vacuum of {db_path} failed: {exc}") from None
        finally:
            conn.close()
        _fsync_dir(db_path)
    return VacuumInfo(bytes_before=before, bytes_after=_file_bytes(db_path),
                      incremental_before=incremental, seconds=round(time.monotonic() - started, 2))
