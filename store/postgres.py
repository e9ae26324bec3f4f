"""PostgreSQL storage: the same interface as ``store.sqlite.Database`` (writer thread with group commit,
reader connections in threads, versioned migrations), so every aggregate runs unchanged on both backends.

Driver: psycopg 3, synchronous connections. The aggregates are synchronous ``fn(conn)`` jobs run by one
writer thread in one transaction per batch, its statements pipelined (``PgDatabase._run_batch``); a
psycopg sync connection fits that model as it is, so the same aggregate code serves both backends.
asyncpg would have meant rewriting every aggregate as a coroutine.

``conn`` as the aggregates see it is a ``PgConnection``: ``execute(sql, params)`` with SQLite's ``?``
placeholders (translated to ``%s``; a literal ``%`` becomes ``%%``; values bound client-side, so
PostgreSQL types them from their context as SQLite would: ``? IS NULL`` with None works; blobs bound
server-side, in binary), rows that
answer both ``row["col"]`` and ``row[0]`` (and ``keys()``, like ``sqlite3.Row``), cursors with
``rowcount``, ``fetchone``, ``fetchall`` and iteration, ``executemany``. SQL that only one engine
understands sits behind ``dialect(conn)`` in the aggregate (``"sqlite"`` or ``"postgresql"``).

Durability: ``await db.write(fn)`` returns after the batch's COMMIT returned, i.e. after PostgreSQL flushed
its WAL (``synchronous_commit`` as the server has it: keep the default ``on`` in production).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import threading
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, TypeVar

import psycopg
from psycopg.adapt import Dumper, Loader

from store.sqlite import GroupCommitWriter, SchemaTooNew, StorageError, _Job, migrations

if TYPE_CHECKING:
    from store.secrets import SecretBox

log = logging.getLogger("store.postgres")

T = TypeVar("T")
# pg_advisory_xact_lock key held by each write batch (see PgDatabase._run_batch)
_WRITE_LOCK = 0x72626F7877726974       # "rboxwrit"
# pg_advisory_lock key held while migrating: several nodes starting at once migrate one after the other
_MIGRATION_LOCK = 0x72656C6179626F78     # "relaybox"
DEFAULT_KEY_FILE = "var/relaybox.db.key"   # the default SQLite database's key: switching keeps the key


def dialect(conn: Any) -> str:
    """``"postgresql"`` for a ``PgConnection``, ``"sqlite"`` for a ``sqlite3.Connection``."""
    return str(getattr(conn, "dialect", "sqlite"))


def is_url(path_or_url: str) -> bool:
    return str(path_or_url).startswith(("postgresql://", "postgres://"))


def redact(text: str) -> str:
    """A driver's error text without a password that a connection string in it might carry."""
    text = re.sub(r"password\s*=\s*\S+", "password=***", text)
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """SQLite's ``?`` placeholders as psycopg's ``%s`` (not inside quoted literals or identifiers); every
    literal ``%`` doubled, as psycopg reads ``%`` everywhere in a query that has parameters."""
    out: list[str] = []
    quote = ""
    for ch in sql:
        if ch == "%":
            out.append("%%")
        elif quote:
            out.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        else:
            out.append(ch)
    return "".join(out)


class PgRow(tuple[Any, ...]):
    """A result row readable by position and by column name, like ``sqlite3.Row``."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> "PgRow":
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self._index[key.lower()])
            except KeyError:
                raise IndexError(f"no such column: {key}") from None
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], PgRow]:
    index: dict[str, int] = {}
    for i, col in enumerate(cursor.description or ()):
        index.setdefault(col.name.lower(), i)      # the first of two equal names, as sqlite3.Row
    return lambda values: PgRow(values, index)


class _NumberLoader(Loader):
    """NUMERIC (what SUM() of integers gives) as int when whole, else float: what SQLite returns."""

    def load(self, data: Any) -> Any:
        d = Decimal(bytes(data).decode())
        return int(d) if d == d.to_integral_value() else float(d)


class _BoolDumper(Dumper):
    """Python bools as integers: the schema keeps SQLite's 0/1 INTEGER flags."""

    oid = 20  # int8

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


# several writers (worker processes, nodes) on one database: the losing transaction of a deadlock (on the
# queue counters' rows, say) is run again whole instead of failing its jobs
_CONFLICTS = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
BATCH_TRIES = 4


_BLOBS = (bytes, bytearray, memoryview)


class _Synced:
    """A cursor of a write job, whose statements go out pipelined (``PgDatabase._try_batch``): its
    ``rowcount`` waits for the results first (fetches do that by themselves)."""

    pipeline: Any = None

    @property
    def rowcount(self) -> int:
        p = self.pipeline
        if p is not None and self.connection.info.pipeline_status:   # type: ignore[attr-defined]
            p.sync()
        return super().rowcount                                         # type: ignore[misc, no-any-return]


class _ClientCursor(_Synced, psycopg.ClientCursor[PgRow]):
    pass


class _BoundCursor(_Synced, psycopg.Cursor[PgRow]):
    pass


class PgConnection:
    """What the aggregates get as ``conn``: a psycopg connection speaking the store's SQLite-style API."""

    dialect = "postgresql"

    def __init__(self, raw: psycopg.Connection[Any]):
        self.raw = raw
        self.conflicted = False     # a statement lost a deadlock / serialization conflict with another writer
        self.pipeline: psycopg.Pipeline | None = None   # during a write job: its statements' pipeline

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        # parameters always passed (even empty): psycopg then reads placeholders and %% the same way
        values = tuple(params)
        try:
            if any(type(v) in _BLOBS for v in values):
                # a blob (a message body) as a bound parameter in binary: as a literal it would go as
                # hex text twice its size, for the server to parse (store micro at 100 KB: 1.5x the writes).
                # The statements with blobs write them into typed columns, where None is typed too.
                cur: _Synced = _BoundCursor(self.raw, row_factory=_row_factory)
                cur.pipeline = self.pipeline
                return cur.execute(translate(sql), values)   # type: ignore[attr-defined]
            return self._cursor().execute(translate(sql), values)
        except _CONFLICTS:
            self.conflicted = True
            raise

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Any:
        params = [tuple(p) for p in seq]
        if len(params) == 1:      # psycopg pipelines executemany: for one row, twice the cost of execute
            return self.execute(sql, params[0])
        cur = self._cursor()
        try:
            cur.executemany(translate(sql), params)
        except _CONFLICTS:
            self.conflicted = True
            raise
        return cur

    def _cursor(self) -> _ClientCursor:
        # client-side binding: values go in as literals PostgreSQL types from their context, as SQLite
        # does (server-side parameters fail on "? IS NULL" with None: no type to infer)
        cur = _ClientCursor(self.raw, row_factory=_row_factory)
        cur.pipeline = self.pipeline
        return cur

    def script(self, sql: str) -> None:
        """Run a script of several statements as it is (no parameters, no translation)."""
        self.raw.execute(sql.encode())


def connect(url: str, *, readonly: bool = False) -> psycopg.Connection[Any]:
    raw: psycopg.Connection[Any] = psycopg.connect(url, autocommit=not readonly,
                                                   application_name="relaybox")
    raw.adapters.register_loader("numeric", _NumberLoader)
    raw.adapters.register_dumper(bool, _BoolDumper)
    if readonly:
        # each read is one transaction on one snapshot (what a SQLite WAL reader sees), never writing
        raw.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        raw.commit()
    return raw


def migrate(conn: PgConnection) -> int:
    """Apply every migration's ``PG_SQL`` not yet recorded in ``schema_migrations``, in version order, each
    in its own transaction, under an advisory lock; returns the highest applied version. Refuses a database
    written by a newer relaybox."""
    raw = conn.raw
    all_migrations = migrations()
    latest = all_migrations[-1][0] if all_migrations else 0
    raw.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
    try:
        raw.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                    " name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
        applied = {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations")}
        current = max(applied, default=0)
        if current > latest:
            raise SchemaTooNew(f"database schema version {current} is newer than this relaybox ({latest});"
                               " refusing to downgrade")
        for version, name, mod in all_migrations:
            if version in applied:
                continue
            pg_sql = getattr(mod, "PG_SQL", None)
            if pg_sql is None and getattr(mod, "SQL", None):
                pg_sql = pg_ddl(name, mod.SQL)
            log.info("applying migration %s", name)
            with raw.transaction():
                if pg_sql:
                    conn.script(pg_sql)
                pg_apply = getattr(mod, "pg_apply", None)
                if pg_apply is not None:
                    pg_apply(conn)
                conn.execute("INSERT INTO schema_migrations(version, name, applied_at) VALUES (?,?,?)",
                             (version, name, time.time()))
            current = max(version, current)
        return current
    finally:
        raw.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))


_SQLITE_ONLY = re.compile(r"\b(TRIGGER|PRAGMA|INDEXED\s+BY|INSERT\s+OR|REPLACE\s+INTO|AUTOINCREMENT"
                          r"|WITHOUT\s+ROWID|VIRTUAL|sqlite_\w+)\b", re.IGNORECASE)


def pg_ddl(name: str, sql: str) -> str:
    """PostgreSQL DDL for a migration that has only SQLite's ``SQL`` (migrations written in parallel):
    plain CREATE TABLE / ALTER TABLE / CREATE INDEX scripts translate mechanically (``id INTEGER PRIMARY
    KEY`` -> a BIGINT identity, REAL -> DOUBLE PRECISION, INTEGER -> BIGINT, BLOB -> BYTEA). Anything
    else (triggers, PRAGMAs, ...) needs a ``PG_SQL`` written by hand in the module."""
    found = _SQLITE_ONLY.search(sql)
    if found:
        raise RuntimeError(f"migration {name} needs PG_SQL (PostgreSQL DDL): its SQL uses {found.group(0)}")
    out = re.sub(r"\bid(\s+)INTEGER PRIMARY KEY",
                 lambda m: f"id{m.group(1)}BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", sql)
    out = re.sub(r"\bREAL\b", "DOUBLE PRECISION", out)
    out = re.sub(r"\bINTEGER\b", "BIGINT", out)
    return re.sub(r"\bBLOB\b", "BYTEA", out)


_TABLES_SIZE = ("SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm')")


def _compact(conn: PgConnection) -> int:
    """VACUUM the store's tables (outside a transaction): dead rows' space is reused and trailing empty
    pages, the TOAST tables' included, go back to the filesystem. Returns the 8 KiB pages given back."""
    before = int(conn.execute(_TABLES_SIZE).fetchone()[0])
    tables = [r[0] for r in conn.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n"
                                         " ON n.oid = c.relnamespace WHERE n.nspname = current_schema()"
                                         " AND c.relkind = 'r' ORDER BY c.relname")]
    for t in tables:
        conn.raw.execute(f'VACUUM "{t}"'.encode())
    after = int(conn.execute(_TABLES_SIZE).fetchone()[0])
    return max(0, before - after) // 8192


# (jobs, tries left, one pipeline per job) of a batch to run again
_Retry = tuple[list[_Job], int, bool]


class _JobFailed(Exception):
    """A job raised something of its own (not a database error) in a batch's shared pipeline."""

    def __init__(self, index: int, error: BaseException):
        super().__init__(index)
        self.index, self.error = index, error


def _caused_by(exc: BaseException, types: type[BaseException] | tuple[type[BaseException], ...]) -> bool:
    """``exc`` is one of ``types``, or was raised while handling one (``store.errors.guarded`` turns a
    driver error into a StorageError and keeps the driver's as its context)."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, types):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _is_conflict(exc: BaseException) -> bool:
    """A lost deadlock or serialization conflict, also when it surfaced wrapped."""
    return _caused_by(exc, _CONFLICTS)


def _store_error(exc: BaseException) -> BaseException:
    """What a failed job's caller gets: above the store nobody knows the driver, so a psycopg error
    becomes a StorageError (its text redacted); anything else as it was raised."""
    if isinstance(exc, psycopg.Error):
        err = StorageError(f"database error: {redact(str(exc))}")
        err.__cause__ = exc
        return err
    return exc


class PgDatabase(GroupCommitWriter):
    """One PostgreSQL database: a writer thread with group commit plus a pool of reader connections."""

    dialect = "postgresql"

    def __init__(self, url: str, *, readers: int = 4, key_file: str | None = None):
        self.path = self.url = str(url)
        self.key_file = key_file or DEFAULT_KEY_FILE
        self.secrets: SecretBox | None = None
        super().__init__(readers, "pg")
        self._wconn: PgConnection | None = None
        self._size: tuple[float, int] = (0.0, 0)
        self.reruns = 0             # batches run again because one of their jobs failed

    # ---- lifecycle -------------------------------------------------------------------------------
    def open(self) -> "PgDatabase":
        try:
            self._wconn = PgConnection(connect(self.url))
            migrate(self._wconn)
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL: {exc}") from exc
        from store.secrets import CHECK_KEY, SecretBox

        conn = self._wconn
        with conn.raw.transaction():
            marker = conn.execute("SELECT 1 FROM kv WHERE key=?", (CHECK_KEY,)).fetchone()
            self.secrets = SecretBox.from_key_file(self.key_file, create=marker is None)
            box_conn: Any = conn           # SecretBox speaks the aggregates' conn API; PgConnection has it
            self.secrets.check(box_conn)
            if marker is None:
                self.secrets.reseal(box_conn)
        self._start_writer()
        return self

    def close(self) -> None:
        self._stop_threads()
        if self._wconn is not None:
            self._wconn.raw.close()
            self._wconn = None

    # ---- writes ----------------------------------------------------------------------------------
    async def compact(self, pages: int = 2000) -> int:
        """Give space back between write batches (VACUUM of the store's tables; ``pages`` is SQLite's
        incremental step and has no PostgreSQL counterpart). Returns the pages given back."""
        freed = await self._maintenance(_compact)
        self._size = (0.0, 0)          # the cached size is stale now
        return freed

    def _maintenance_conn(self) -> PgConnection:
        return self._writer_conn()

    def _writer_conn(self) -> PgConnection:
        """The writer's connection, connected again when the server dropped it."""
        if self._wconn is None or self._wconn.raw.closed or self._wconn.raw.broken:
            if self._wconn is not None:
                self._wconn.raw.close()
            self._wconn = PgConnection(connect(self.url))
        return self._wconn

    def _fail_batch(self, batch: Sequence[_Job], err: StorageError) -> None:
        self.last_error = str(err)
        for job in batch:
            self._resolve(job, False, err)

    def _run_batch(self, batch: list[_Job], tries: int = BATCH_TRIES) -> None:
        """One transaction for the batch, its statements pipelined (a round trip only where a job fetches
        a result, and one at the end), without a savepoint per job. When a job fails, nothing of the
        batch is kept; that job's failure goes to its caller (as if its savepoint had been rolled back)
        and the other jobs run again without it. A database error found at a pipeline's end (or at a
        fetch: an earlier job's statement may have failed) says nothing of whose it was: the batch runs
        again with one pipeline per job, which does. Jobs are re-runnable (a lost deadlock runs them
        all again too); one that failed by itself is not run again, so a check it calls runs once."""
        again: _Retry | None = (batch, tries, False)
        while again is not None and again[0]:
            again = self._try_batch(*again)

    def _try_batch(self, batch: list[_Job], tries: int, per_job: bool) -> "_Retry | None":
        """Run and commit ``batch``; None when every job got its result, else the jobs to run again."""
        try:
            conn = self._writer_conn()
            # one write transaction at a time across every process on this database (workers, nodes), as
            # SQLite's single writer: two batches updating the same counter rows (queue counts, qshape
            # slots, search values) in different orders deadlocked on every busy run; group commit keeps
            # the throughput (a batch carries every job waiting). Released by COMMIT / ROLLBACK. Sent with
            # the BEGIN in one round trip (no parameters: the simple query protocol).
            conn.raw.execute(f"BEGIN; SELECT pg_advisory_xact_lock({_WRITE_LOCK})")
            conn.conflicted = False
        except psycopg.Error as exc:
            self._fail_batch(batch, StorageError(f"cannot begin transaction: {exc}"))
            return None
        try:
            results, retry = (self._each_job if per_job else self._all_jobs)(conn, batch, tries)
            conn.pipeline = None
            if retry is not None:
                return retry
            if conn.raw.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                # a job went on after a failed statement (COMMIT would answer ROLLBACK, not an error)
                self._rollback(conn)
                if conn.conflicted and tries > 1:
                    return batch, tries - 1, per_job
                raise psycopg.OperationalError("a job ignored a failed statement: its transaction aborted")
            if self.fail_commits is not None:
                raise psycopg.OperationalError(str(self.fail_commits))
            conn.raw.execute("COMMIT")
            self.last_error = None
        except psycopg.Error as exc:
            self._rollback(conn)
            log.error("database commit failed for a batch of %d: %s", len(batch), exc)
            self._fail_batch(batch, StorageError(f"commit failed: {exc}"))
            return None
        self.batches += 1
        self.jobs += len(batch)
        for job, res in results:
            self._resolve(job, True, res)
        return None

    def _all_jobs(self, conn: PgConnection, batch: list[_Job],
                  tries: int) -> tuple[list[tuple[_Job, Any]], "_Retry | None"]:
        """Every job in one pipeline: (results, None), or what to run again after a failure."""
        results: list[tuple[_Job, Any]] = []
        try:
            with conn.raw.pipeline() as conn.pipeline:
                for i, job in enumerate(batch):
                    try:
                        results.append((job, job.fn(conn)))
                    except BaseException as exc:  # noqa: BLE001 - delivered to the waiting coroutine
                        if _caused_by(exc, psycopg.Error):
                            raise                  # perhaps an earlier job's statement: found out below
                        raise _JobFailed(i, exc) from exc
        except _JobFailed as failed:               # the job's own failure (a check, a ValueError...)
            return [], self._failed(conn, batch, failed.index, failed.error, tries)
        except BaseException as exc:  # noqa: BLE001 - a database error: whose is not known
            self._rollback(conn)
            self.reruns += 1
            if _is_conflict(exc) and tries > 1:
                time.sleep(0.005 * (BATCH_TRIES - tries + 1))
                return [], (batch, tries - 1, False)
            return [], (batch, tries, True)
        return results, None

    def _each_job(self, conn: PgConnection, batch: list[_Job],
                  tries: int) -> tuple[list[tuple[_Job, Any]], "_Retry | None"]:
        """A pipeline per job: its end raises the job's first failure, so it is that job's alone."""
        results: list[tuple[_Job, Any]] = []
        for i, job in enumerate(batch):
            try:
                with conn.raw.pipeline() as conn.pipeline:
                    res = job.fn(conn)
                results.append((job, res))
            except BaseException as exc:  # noqa: BLE001 - delivered to the waiting coroutine
                return [], self._failed(conn, batch, i, exc, tries)
        return results, None

    def _failed(self, conn: PgConnection, batch: list[_Job], i: int, exc: BaseException,
                tries: int) -> "_Retry":
        """Job ``i`` failed: nothing of the batch is kept; its failure goes to its caller (a lost deadlock
        instead runs the whole batch again) and the others run again without it."""
        conn.pipeline = None
        self._rollback(conn)
        self.reruns += 1
        if (conn.conflicted or _is_conflict(exc)) and tries > 1:
            time.sleep(0.005 * (BATCH_TRIES - tries + 1))
            return batch, tries - 1, True
        self._resolve(batch[i], False, _store_error(exc))     # it ran once: its writes are undone
        return batch[:i] + batch[i + 1:], tries, True

    @staticmethod
    def _rollback(conn: PgConnection) -> None:
        try:
            conn.raw.execute("ROLLBACK")
        except psycopg.Error:
            pass                 # a broken connection: the server has dropped the transaction already

    # ---- reads -----------------------------------------------------------------------------------
    def _reader(self) -> PgConnection:
        conn: PgConnection | None = getattr(self._local, "conn", None)
        if conn is not None and (conn.raw.closed or conn.raw.broken):
            conn.raw.close()
            conn = None
        if conn is None:
            raw = connect(self.url, readonly=True)
            conn = PgConnection(raw)
            self._local.conn = conn
            with self._rlock:
                self._rconns.append(raw)
        return conn

    def _run_read(self, fn: Callable[[Any], T]) -> T:
        """``fn(conn)`` on this thread's reader. A connection found broken by the read (the server restarted
        since its last use) is replaced and the read, which changes nothing, runs once more on it."""
        for again in (True, False):
            try:
                conn = self._reader()
            except psycopg.Error as exc:
                raise StorageError(f"PostgreSQL: {exc}") from exc
            try:
                return fn(conn)
            except (psycopg.OperationalError, StorageError):
                if not (again and (conn.raw.broken or conn.raw.closed)):
                    raise
                log.info("a reader connection was lost (server restarted?); reading on a new one")
            finally:
                try:
                    conn.raw.rollback()          # read only: end the snapshot
                except psycopg.Error:
                    pass
        raise AssertionError("unreachable")

    async def read(self, fn: Callable[[Any], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._run_read, fn)

    def read_sync(self, fn: Callable[[Any], T]) -> T:
        return self._readers.submit(self._run_read, fn).result()

    # ---- helpers ---------------------------------------------------------------------------------
    async def check_writable(self) -> bool:
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
        """What the store's tables take on the server, indexes and TOAST included (the catalogs of the
        database are not relaybox's); cached for 5 s: it is asked on every scrape."""
        at, size = self._size
        if at and time.monotonic() - at < 5:
            return size
        try:
            size = int(self.read_sync(lambda c: c.execute(_TABLES_SIZE).fetchone()[0]))
        except Exception:  # noqa: BLE001 - a figure for metrics; the old one stays
            return size
        self._size = (time.monotonic(), size)
        return size

    def listen(self, channels: Sequence[str], deliver: Callable[[str, str], None]) -> "Notifications":
        """A started ``Notifications`` on its own connection to this database (stop it when done)."""
        return Notifications(self.url, channels, deliver).start()


# ---- LISTEN / NOTIFY: wake-ups between nodes ------------------------------------------------------------
# channels notified by migration 0014's triggers: new messages, changed allowlist/users/channels/...
QUEUE_CHANNEL = "relaybox_queue"
CONFIG_CHANNEL = "relaybox_config"
RECONNECTED = "*"          # the channel name handed to ``deliver`` after each (re)connection


class Notifications:
    """A dedicated LISTEN connection in its own thread (``conn.notifies()``), never one of the writer's or
    readers'. ``deliver(channel, payload)`` is called in that thread for every notification, and once with
    channel ``RECONNECTED`` after each successful (re)connection: what was notified while the connection was
    down is lost, so the receiver refreshes everything then. The connection comes back by itself when the
    server went away (0.2 s doubling to 5 s between tries); ``connected`` and ``last_error`` tell the state.
    TCP keepalives detect a server that vanished without closing the socket."""

    def __init__(self, url: str, channels: Sequence[str], deliver: Callable[[str, str], None]):
        self.url = url
        self.channels = tuple(channels)
        self.deliver = deliver
        self.connected = False
        self.last_error: str | None = None
        self.received = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None

    def start(self) -> "Notifications":
        self._thread = threading.Thread(target=self._run, name="pg-listen", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _connect(self) -> psycopg.Connection[Any]:
        raw: psycopg.Connection[Any] = psycopg.connect(
            self.url, autocommit=True, application_name="relaybox-listen", connect_timeout=5,
            keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
        for ch in self.channels:
            raw.execute(f'LISTEN "{ch}"'.encode())
        return raw

    def _run(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            try:
                self._conn = self._connect()
            except psycopg.Error as exc:
                self._down(exc)
                self._stop.wait(delay)
                delay = min(5.0, delay * 2)
                continue
            delay = 0.2
            if not self.connected:
                log.info("listening for notifications of other nodes (%s)", ", ".join(self.channels))
            self.connected, self.last_error = True, None
            try:
                self.deliver(RECONNECTED, "")
                self._listen(self._conn)
            except psycopg.Error as exc:
                self._down(exc)
            finally:
                self._conn.close()
                self._conn = None

    def _listen(self, raw: psycopg.Connection[Any]) -> None:
        while not self._stop.is_set():
            for note in raw.notifies(timeout=0.5):
                self.received += 1
                self.deliver(note.channel, note.payload)
            if raw.broken or raw.closed:
                raise psycopg.OperationalError("listening connection lost")

    def _down(self, exc: Exception) -> None:
        if self.connected or self.last_error is None:
            log.warning("notifications from other nodes unavailable (reconnecting): %s", exc)
        self.connected, self.last_error = False, str(exc)
