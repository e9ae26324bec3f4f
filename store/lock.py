"""One relaybox process per database: an exclusive ``flock`` on ``<db>.lock``, held for the process life.

``acquire(db_path)`` returns a ``DatabaseLock``; a second process (or a second acquire in the same process)
gets ``LockError`` naming the PID that holds the lock. The kernel drops a flock when its holder exits, even
on SIGKILL, so a stale ``.lock`` file never blocks a restart; the PID written in it is only informative.

Offline tools that rewrite the database (``relaybox restore``) take the same lock; tools that only read or
add rows through SQLite (``relaybox backup``, ``allowlist add``) do not need it: SQLite's own locking keeps
them consistent with a running relaybox.
"""

from __future__ import annotations

import errno
import fcntl
import os


class LockError(Exception):
    """The database is in use by another relaybox process."""

    def __init__(self, message: str, pid: int | None = None):
        super().__init__(message)
        self.pid = pid


def lock_path(db_path: str) -> str:
    return f"{db_path}.lock"


def _read_pid(fd: int) -> int | None:
    try:
        raw = os.pread(fd, 64, 0).decode("ascii", "replace").split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None


class DatabaseLock:
    """An acquired lock. ``release()`` (idempotent) or process exit frees it."""

    def __init__(self, path: str, fd: int):
        self.path = path
        self.fd: int | None = fd

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            # empty the pid first so nobody reads a stale pid between our unlock and our close
            os.ftruncate(fd, 0)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> "DatabaseLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # pragma: no cover - safety net; callers release explicitly
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass


def acquire(db_path: str, *, purpose: str = "relaybox") -> DatabaseLock:
    """Take the database lock or raise ``LockError`` saying who holds it."""
    path = lock_path(str(db_path))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        pid = _read_pid(fd)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        who = f"process {pid}" if pid else "another process"
        raise LockError(
            f"database {db_path} is already in use by {who} (lock file {path}); "
            f"stop that relaybox first or give this one its own storage.path",
            pid=pid,
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n{purpose}\n".encode(), 0)
    return DatabaseLock(path, fd)


def holder(db_path: str) -> int | None | bool:
    """Who holds the lock: a PID, ``True`` (held, PID unknown) or ``None`` (free). Does not keep it."""
    path = lock_path(str(db_path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_pid(fd) or True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
