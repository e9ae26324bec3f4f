"""SQLite storage: connection setup, versioned migrations, and the single writer with group commit.

Durability contract: ``await db.write(fn)`` returns only after the transaction that ran ``fn`` has been
committed with ``synchronous=FULL`` in WAL mode, i.e. after the WAL fsync. Concurrent writers are batched:
the writer thread takes every job waiting in its queue, runs them in one transaction, commits once (one
fsync), then resolves all the futures. A job that raises gets its exception and leaves nothing behind: the
batch is rolled back and run again with a SAVEPOINT per job, so the others still commit; a failed COMMIT
fails every job of the batch (no one gets a 250).

Reads run on a small pool of reader threads, each with its own connection (WAL lets them see the last
committed state while the writer works). The event loop never blocks on SQLite.
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib
import logging
import os
import pkgutil
import queue
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from store.secrets import SecretBox

log = logging.getLogger("store.sqlite")

T = TypeVar("T")
_STOP = object()

# An upper bound on jobs per transaction: keeps a batch's latency bounded under extreme load.
MAX_BATCH = 512
# Commit delay of the inline writer (PostgreSQL's commit_delay/commit_siblings, for the same reason): under
# load (the last batch had more than one job) a flush that finds fewer than GATHER jobs waits up to
# COMMIT_DELAY seconds for more before it begins, or until GATHER are there. A commit costs about the same
# however many jobs it carries (one fsync, a few dozen WAL pages, the cross-process write lock, a thread
# hand-off), and the sessions waiting for it are idle meanwhile anyway. Measured with bench/e2e_postfix.py
# (1 KB, 20 sessions, two workers): a little more per commit (10.4 -> 10.7 jobs), and far fewer flushes
# that find the other worker holding the write lock and wait for it in a thread (77% -> 61%): CPU per
# message -3..4%, throughput +3..7% (100 KB: -6..11% CPU). A lone job (light load) never waits.
COMMIT_DELAY = 0.002
GATHER = 8


class StorageError(Exception):
    """The database could not durably store or read something."""


class SchemaTooNew(StorageError):
    """The database was written by a newer relaybox; refusing to downgrade."""


def _connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    fresh = not readonly and (not os.path.exists(path) or os.path.getsize(path) == 0)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.row_factory = sqlite3.Row
    if fresh:       # before anything is written (WAL included): free pages can be given back later
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    if readonly:
        conn.execute("PRAGMA query_only=ON")
    return conn


def _compact(conn: sqlite3.Connection, pages: int) -> int:
    before = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2:
        # executescript steps the pragma to the end (execute() frees one page per call); no transaction is
        # open here (a raw job runs between batches)
        conn.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return before - int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def _private_files(path: str) -> None:
    """The database and its -wal/-shm files are 0600 (SQLite gives the -wal/-shm files the database
    file's mode, so creating that one 0600 first is enough for new files; existing ones are fixed);
    a directory we create is 0700. An existing directory is left as it is (it may be shared)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, mode=0o700, exist_ok=True)
    if not os.path.exists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            if os.stat(path + suffix).st_mode & 0o077:
                os.chmod(path + suffix, 0o600)
        except FileNotFoundError:
            pass


def migrations() -> list[tuple[int, str, Any]]:
    """All migrations found in ``store.migrations`` as (version, name, module), sorted by version.

    Each module is named ``mNNNN_description`` and defines ``SQL`` (a script) and/or ``apply(conn)``.
    """
    import store.migrations as pkg

    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("m") or "_" not in info.name:
            continue
        num = info.name[1:].split("_", 1)[0]
        if not num.isdigit():
            continue
        mod = importlib.import_module(f"store.migrations.{info.name}")
        found.append((int(num), info.name, mod))
    found.sort(key=lambda t: t[0])
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration not yet recorded in ``schema_migrations``, in version order; returns the
    resulting ``user_version`` (the highest applied). Refuses to run on a database written by a newer
    relaybox (a higher ``user_version`` than any migration we know): no downgrades.

    Applied migrations are tracked one by one, not only by the highest number, so a migration merged with
    a lower number than one already applied (parallel development) still runs."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    all_migrations = migrations()
    latest = all_migrations[-1][0] if all_migrations else 0
    if current > latest:
        raise SchemaTooNew(
            f"database schema version {current} is newer than this relaybox ({latest}); refusing to downgrade"
        )
    fresh_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE name='schema_migrations'").fetchone() is None
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                 " name TEXT NOT NULL, applied_at REAL NOT NULL)")
    if fresh_table and current:
        # a database from before per-migration tracking: everything up to user_version was applied
        conn.executemany("INSERT OR IGNORE INTO schema_migrations(version, name, applied_at) VALUES (?,?,?)",
                         [(v, n, time.time()) for v, n, _ in all_migrations if v <= current])
    applied = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
    for version, name, mod in all_migrations:
        if version in applied:
            continue
        log.info("applying migration %s", name)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if getattr(mod, "SQL", None):
                for stmt in _split_sql(mod.SQL):
                    conn.execute(stmt)
            if hasattr(mod, "apply"):
                mod.apply(conn)
            conn.execute("INSERT INTO schema_migrations(version, name, applied_at) VALUES (?,?,?)",
                         (version, name, time.time()))
            conn.execute(f"PRAGMA user_version={max(version, current)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        current = max(version, current)
    return int(current)


def _split_sql(script: str) -> list[str]:
    stmts, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                stmts.append(buf.strip())
            buf = ""
    if buf.strip():
        stmts.append(buf.strip())
    return stmts


def take_batch(jobs: "queue.SimpleQueue[Any]", first: Any, stop: object) -> tuple[list[Any], Any, bool]:
    """The jobs of one group commit: ``first`` and whatever waits behind it (at most MAX_BATCH), up to a
    maintenance job (returned to run after the batch) or the ``stop`` marker (returned as True)."""
    batch = [first]
    while len(batch) < MAX_BATCH:
        try:
            nxt = jobs.get_nowait()
        except queue.Empty:
            break
        if nxt is stop:
            return batch, None, True
        if nxt.raw:
            return batch, nxt, False
        batch.append(nxt)
    return batch, None, False


class _Job:
    __slots__ = ("fn", "future", "loop", "raw")

    def __init__(self, fn: Callable[[Any], Any], future: Any,
                 loop: asyncio.AbstractEventLoop | None, raw: bool = False):
        self.fn = fn
        self.future = future
        self.loop = loop
        self.raw = raw          # run alone, outside a transaction (maintenance: vacuum, checkpoint)


def _wake(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


def _settle_now(job: "_Job", ok: bool, value: Any) -> None:
    """Hand an inline job's outcome to its waiter (in the job's own loop thread)."""
    if not job.future.done():
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)


class GroupCommitWriter:
    """What both engines share: the queue of write jobs, the single writer thread that runs them in group
    commits (``take_batch``), maintenance jobs between batches, reader threads, and handing each job's
    outcome back to its waiter. An engine sets the attributes in its ``__init__`` and provides
    ``_run_batch(batch)`` (one transaction; a failing job rolled back alone) and ``_maintenance_conn()``."""

    _queue: "queue.SimpleQueue[Any]"
    _writer: threading.Thread | None
    _readers: ThreadPoolExecutor
    _rconns: list[Any]
    _rlock: threading.Lock

    def __init__(self, readers: int, name: str):
        self._queue = queue.SimpleQueue()
        self._writer = None
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix=f"{name}-read")
        self._local = threading.local()
        self._rconns = []
        self._rlock = threading.Lock()
        # the write connection: one batch at a time, whether the writer thread or an event loop runs it
        self._conn_lock = threading.Lock()
        self._thread_waiting = 0           # the writer thread waits for the connection
        self._name = name
        self.batches = 0  # commits done (observability, tests)
        self.jobs = 0
        self.last_error: str | None = None
        # test hook: when set, the writer raises this at commit time (simulates a full disk / I/O error)
        self.fail_commits: Exception | None = None

    def _start_writer(self) -> None:
        self._writer = threading.Thread(target=self._run_writer, name=f"{self._name}-writer", daemon=True)
        self._writer.start()

    def _stop_threads(self) -> None:
        """The writer finishes what is queued, then readers stop and their connections close."""
        if self._writer is not None:
            self._queue.put(_STOP)
            self._writer.join(timeout=30)
            self._writer = None
        self._readers.shutdown(wait=True)
        with self._rlock:
            for c in self._rconns:
                c.close()
            self._rconns.clear()

    # ---- writes ----------------------------------------------------------------------------------
    async def write(self, fn: Callable[[Any], T], *, inline: bool = False) -> T:
        """Run ``fn(conn)`` in the writer thread; return its result once durably committed. ``inline``: a
        small job of the hot path (a few indexed statements), which an engine may run in the caller's
        event loop instead (``Database``); the thread writer ignores it."""
        if self._writer is None:
            raise StorageError("database is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, fut, loop))
        return await fut

    def write_sync(self, fn: Callable[[Any], T]) -> T:
        """Blocking variant for CLI/offline tools (not for use inside the event loop)."""
        if self._writer is None:
            raise StorageError("database is closed")
        done = threading.Event()
        box: dict[str, Any] = {}
        self._queue.put(_Job(fn, (done, box), None))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box.get("result")  # type: ignore[return-value]

    async def _maintenance(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(conn)`` alone between write batches, outside any transaction (vacuum, checkpoint)."""
        if self._writer is None:
            raise StorageError("database is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, fut, loop, raw=True))
        return await fut

    def _run_writer(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            self._thread_waiting += 1      # inline batches let this one in before their next
            with self._conn_lock:
                self._thread_waiting -= 1
                stop_after = self._writer_step(first)
            if stop_after:
                return

    def _writer_step(self, first: "_Job") -> bool:
        if first.raw:
            self._run_raw(first)
            return False
        self._lock_writes()         # jobs arriving while another process writes join this batch
        try:
            batch, raw, stop_after = take_batch(self._queue, first, _STOP)
            self._run_batch(batch)
        finally:
            self._unlock_writes()
        if raw is not None:
            self._run_raw(raw)
        return stop_after

    def _lock_writes(self) -> None:
        """Before a batch: wait for the other writers of this database (several processes); a no-op here."""

    def _unlock_writes(self) -> None:
        """After a batch."""

    def _run_batch(self, batch: list["_Job"]) -> None:  # pragma: no cover - every engine has one
        raise NotImplementedError

    def _maintenance_conn(self) -> Any:  # pragma: no cover - every engine has one
        raise NotImplementedError

    def _run_raw(self, job: "_Job") -> None:
        try:
            self._resolve(job, True, job.fn(self._maintenance_conn()))
        except Exception as exc:  # noqa: BLE001 - delivered to the waiting coroutine
            self._resolve(job, False, StorageError(f"maintenance failed: {exc}"))

    @staticmethod
    def _resolve(job: "_Job", ok: bool, value: Any) -> None:
        if job.loop is None:
            done, box = job.future
            box["result" if ok else "error"] = value
            done.set()
            return

        def _set(fut: asyncio.Future[Any] = job.future) -> None:
            if fut.done():
                return
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

        try:
            job.loop.call_soon_threadsafe(_set)
        except RuntimeError:  # loop closed: nobody is waiting any more
            pass


class Database(GroupCommitWriter):
    """One SQLite file: a writer thread with group commit plus reader threads."""

    def __init__(self, path: str, *, readers: int = 4, key_file: str | None = None):
        self.path = str(path)
        self.key_file = key_file or (self.path + ".key")
        self.secrets: SecretBox | None = None      # set by open(): encryption of secret settings
        super().__init__(readers, "db")
        self._wconn: sqlite3.Connection | None = None
        self._wlock: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None      # the loop inline jobs run in
        self._pending: list[_Job] = []
        self._flusher: asyncio.Task[None] | None = None
        self.commit_delay = COMMIT_DELAY          # 0: every flush begins at once
        self._last_batch = 0                      # jobs in the last inline batch (is there a load?)
        self._gathering: asyncio.Future[None] | None = None
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-commit")

    # ---- lifecycle -------------------------------------------------------------------------------
    def open(self) -> "Database":
        _private_files(self.path)
        self._wconn = _connect(self.path)
        migrate(self._wconn)
        _private_files(self.path)                 # -wal / -shm exist now
        from store.secrets import CHECK_KEY, SecretBox

        marker = self._wconn.execute("SELECT 1 FROM kv WHERE key=?", (CHECK_KEY,)).fetchone()
        self.secrets = SecretBox.from_key_file(self.key_file, create=marker is None)
        self.secrets.check(self._wconn)
        if marker is None:                        # first open with encryption: secrets stored in clear
            self.secrets.reseal(self._wconn)
        self._start_writer()
        return self

    # Several processes writing one file (relaybox run --workers): SQLite's busy handler polls for the write
    # lock with sleeps growing to 100 ms, so a writer waits long after the lock is free and group commit
    # loses its batches. A flock on <db>.wlock around each batch hands the file over at once (the kernel
    # wakes the waiter), and what queued meanwhile is committed in the waiter's next batch.
    def _lock_writes(self) -> None:
        if self._wlock is None:
            self._wlock = os.open(self.path + ".wlock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._wlock, fcntl.LOCK_EX)

    def _unlock_writes(self) -> None:
        if self._wlock is not None:
            fcntl.flock(self._wlock, fcntl.LOCK_UN)

    def close(self) -> None:
        for job in self._pending:           # inline jobs nobody will run any more
            _settle_now(job, False, StorageError("database is closed"))
        self._pending.clear()
        self._stop_threads()
        self._committer.shutdown(wait=True)
        if self._wconn is not None:
            try:
                self._wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._wconn.close()
            self._wconn = None
        if self._wlock is not None:
            os.close(self._wlock)
            self._wlock = None

    # ---- writes ----------------------------------------------------------------------------------
    def _maintenance_conn(self) -> sqlite3.Connection:
        assert self._wconn is not None
        return self._wconn

    async def compact(self, pages: int = 2000) -> int:
        """Give space back between write batches: up to ``pages`` free pages returned to the filesystem
        (incremental vacuum, on databases created with it) and the WAL truncated. Returns the pages freed."""
        return await self._maintenance(lambda conn: _compact(conn, pages))

    def _run_batch(self, batch: list[_Job]) -> None:
        """The writer thread's batch: the jobs, then COMMIT, each outcome handed to its waiter."""
        results = self._execute(batch)
        if results is not None:
            err = self._commit(len(batch))
            self._settle(results, err, self._resolve)

    def _execute(self, batch: list[_Job]) -> list[tuple[_Job, bool, Any]] | None:
        """BEGIN and every job, optimistically without savepoints (a SAVEPOINT + RELEASE per job cost ~15%
        of the hot path's store CPU, and a statement journal for pages an earlier job of the batch had
        changed). When a job raises, the transaction is rolled back and the batch runs again with a
        SAVEPOINT per job, the failing job left out with its exception: it is not run twice, the jobs after
        it run once, the jobs before it run again (as in a PostgreSQL batch rerun after a conflict: a job
        is a function of the database it is given). A batch of one job is not rerun. None when the
        transaction could not begin (every job is told)."""
        conn = self._maintenance_conn()
        if not self._begin(conn, batch):
            return None
        results: list[tuple[_Job, bool, Any]] = []
        for job in batch:
            try:
                results.append((job, True, job.fn(conn)))
            except BaseException as exc:  # noqa: BLE001 - delivered to the waiting coroutine
                failed = (job, exc)
                break
        else:
            return results
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        if not self._begin(conn, batch):     # (for one job: an empty transaction for the COMMIT to come)
            return None
        if len(batch) == 1:
            return [(failed[0], False, failed[1])]
        return self._execute_isolated(conn, batch, failed)

    def _begin(self, conn: sqlite3.Connection, batch: list[_Job]) -> bool:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return True
        except sqlite3.Error as exc:
            err = StorageError(f"cannot begin transaction: {exc}")
            self.last_error = str(err)
            for job in batch:
                self._resolve(job, False, err)
            return False

    @staticmethod
    def _execute_isolated(conn: sqlite3.Connection, batch: list[_Job],
                          failed: tuple[_Job, BaseException]) -> list[tuple[_Job, bool, Any]]:
        """Every job in a SAVEPOINT of its own, ``failed`` not run again: a failing job is rolled back alone
        and gets its exception."""
        results: list[tuple[_Job, bool, Any]] = []
        for i, job in enumerate(batch):
            if job is failed[0]:
                results.append((job, False, failed[1]))
                continue
            sp = f"j{i}"
            conn.execute(f"SAVEPOINT {sp}")
            try:
                res = job.fn(conn)
                conn.execute(f"RELEASE {sp}")
                results.append((job, True, res))
            except BaseException as exc:  # noqa: BLE001 - delivered to the waiting coroutine
                try:
                    conn.execute(f"ROLLBACK TO {sp}")
                    conn.execute(f"RELEASE {sp}")
                except sqlite3.Error:
                    pass
                results.append((job, False, exc))
        return results

    def _commit(self, jobs: int) -> StorageError | None:
        """COMMIT (the fsync); on failure ROLLBACK and the error every job of the batch gets."""
        conn = self._maintenance_conn()
        try:
            if self.fail_commits is not None:
                raise sqlite3.OperationalError(str(self.fail_commits))
            conn.execute("COMMIT")
            self.last_error = None
        except sqlite3.Error as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            err = StorageError(f"commit failed: {exc}")
            self.last_error = str(err)
            log.error("database commit failed for a batch of %d: %s", jobs, exc)
            return err
        self.batches += 1
        self.jobs += jobs
        return None

    @staticmethod
    def _settle(results: list[tuple[_Job, bool, Any]], err: StorageError | None,
                resolve: Callable[[_Job, bool, Any], None]) -> None:
        for job, ok, res in results:
            if err is not None:
                resolve(job, False, err)
            else:
                resolve(job, ok, res)

    # ---- writes in the event loop (inline jobs) ----------------------------------------------------
    # A busy event loop holds the GIL almost all the time, and every statement the writer thread runs
    # releases and re-takes it: under load a job of a few indexed statements took ~7x its CPU time in
    # the writer thread, while this process (and, with workers, every process) held the write lock. So
    # the hot path's small jobs (enqueue, claims, results) run in the loop itself, where the GIL is
    # already held: BEGIN and the jobs in the loop thread, COMMIT (the fsync, GIL released) in a thread
    # while the loop goes on and the next batch gathers. Big jobs (bulk operations, retention,
    # maintenance) stay on the writer thread; the connection lock keeps the two apart.
    async def write(self, fn: Callable[[Any], T], *, inline: bool = False) -> T:
        if not inline or self._writer is None:
            return await super().write(fn)
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:        # another loop (a test's, a tool's): the thread writer
            return await super().write(fn)
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Job(fn, fut, loop))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        elif self._gathering is not None and len(self._pending) >= GATHER:
            _wake(self._gathering)            # enough to share a commit: the flush waits no longer
        return await fut

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                await self._gather(loop)
                await self._acquire(loop)
                try:
                    batch = self._pending[:MAX_BATCH]
                    del self._pending[:MAX_BATCH]
                    self._last_batch = len(batch)
                    results = self._execute(batch)
                    if results is not None:
                        done = self._committer.submit(self._commit_and_release, len(batch))
                        try:
                            err = await asyncio.wrap_future(done, loop=loop)
                        except asyncio.CancelledError:      # the loop is ending: the COMMIT still must
                            self._settle(results, done.result(), _settle_now)   # end before unlocking
                            raise
                        self._settle(results, err, _settle_now)
                finally:
                    self._unlock_writes()
                    self._conn_lock.release()
        finally:
            self._flusher = None

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """The commit delay (COMMIT_DELAY): under load, wait a moment for more jobs to share the commit."""
        if self.commit_delay <= 0 or self._last_batch < 2 or len(self._pending) >= GATHER:
            return
        fut = self._gathering = loop.create_future()
        timer = loop.call_later(self.commit_delay, _wake, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._gathering = None

    def _commit_and_release(self, jobs: int) -> StorageError | None:
        """COMMIT, then at once the cross-process write lock, in the committer thread: another worker's
        batch need not wait until this loop has heard of the commit (measured under load: ~1 ms per
        batch, during which the lock was held for nothing). The connection lock stays with the flusher
        until it settles the batch, so nothing else of this process writes meanwhile; the flusher's own
        unlock afterwards is a no-op."""
        try:
            return self._commit(jobs)
        finally:
            self._unlock_writes()

    async def _acquire(self, loop: asyncio.AbstractEventLoop) -> None:
        """The connection (free unless the writer thread runs a batch) and the cross-process write lock,
        without blocking the loop."""
        # a waiting writer-thread batch goes first: a steady stream of inline jobs never starves it
        while self._thread_waiting or not self._conn_lock.acquire(blocking=False):
            await asyncio.sleep(0.001)
        try:
            if self._wlock is None:
                self._wlock = os.open(self.path + ".wlock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(self._wlock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:         # another process writes: wait for it in a thread
                await loop.run_in_executor(self._committer, fcntl.flock, self._wlock, fcntl.LOCK_EX)
        except BaseException:
            self._conn_lock.release()
            raise

    # ---- reads -----------------------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, readonly=True)
            self._local.conn = conn
            with self._rlock:
                self._rconns.append(conn)
        return conn

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on a reader connection in a thread; returns its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: fn(self._reader()))

    def read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self._readers.submit(lambda: fn(self._reader())).result()

    # ---- helpers ---------------------------------------------------------------------------------
    async def check_writable(self) -> bool:
        """Readiness probe: a tiny durable write round-trip."""
        try:
            await asyncio.wait_for(
                self.write(lambda c: c.execute("UPDATE kv SET value=? WHERE key='ping'",
                                               (str(time.time()),))),
                timeout=5,
            )
            return True
        except Exception:  # noqa: BLE001
            return False

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(self.path + suffix)
            except OSError:
                pass
        return total
