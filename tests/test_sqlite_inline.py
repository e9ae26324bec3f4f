"""SQLite's inline writes (store.sqlite.Database.write(..., inline=True)): small hot-path jobs run in the
caller's event loop, COMMIT in a thread; they group-commit, fail alone, and never interleave with a batch
of the writer thread on the one write connection."""

import asyncio
import threading
import time

import pytest

from store.errors import StorageError
from store.sqlite import Database

pytestmark = pytest.mark.component


@pytest.fixture
def db(tmp_path):
    d = Database(str(tmp_path / "t.db")).open()
    d.write_sync(lambda c: c.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)"))
    yield d
    d.close()


def insert(k: int, v: str = "x"):
    return lambda c: c.execute("INSERT INTO t(k, v) VALUES (?, ?)", (k, v)).lastrowid


async def test_inline_jobs_of_one_loop_turn_share_commits_and_are_durable(db, tmp_path):
    before = db.batches
    got = await asyncio.gather(*(db.write(insert(i), inline=True) for i in range(300)))
    assert got == list(range(300))
    assert 1 <= db.batches - before < 30             # grouped: far fewer commits than jobs
    db.close()
    again = Database(str(tmp_path / "t.db")).open()
    try:
        assert again.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 300
    finally:
        again.close()


async def test_a_failing_inline_job_is_rolled_back_alone(db):
    def bad(c):
        c.execute("INSERT INTO t(k, v) VALUES (1000, 'half')")
        raise ValueError("job failed halfway")

    res = await asyncio.gather(db.write(insert(1), inline=True), db.write(bad, inline=True),
                               db.write(insert(2), inline=True), return_exceptions=True)
    assert res[0] == 1 and res[2] == 2 and isinstance(res[1], ValueError)
    keys = await db.read(lambda c: [r[0] for r in c.execute("SELECT k FROM t ORDER BY k")])
    assert keys == [1, 2]


async def test_a_failing_job_of_a_writer_thread_batch_is_rolled_back_alone(db):
    """Batches run without savepoints until a job raises; then the batch runs again with one per job: the
    jobs before the failing one run twice (a second INSERT of the same key would raise if the first
    had not been rolled back) and every other job still commits once."""
    def bad(c):
        c.execute("INSERT INTO t(k, v) VALUES (1000, 'half')")
        raise ValueError("job failed halfway")

    gate = threading.Event()
    before = db.batches
    blocker = asyncio.ensure_future(db.write(lambda c: gate.wait(5)))      # holds the writer thread
    await asyncio.sleep(0.05)
    jobs = [db.write(insert(k)) for k in (11, 12)] + [db.write(bad)] + [db.write(insert(k)) for k in (13, 14)]
    futs = [asyncio.ensure_future(j) for j in jobs]
    await asyncio.sleep(0.05)                         # all five queued: they make one batch
    gate.set()
    await blocker
    res = await asyncio.gather(*futs, return_exceptions=True)
    assert res[:2] == [11, 12] and res[3:] == [13, 14] and isinstance(res[2], ValueError)
    assert db.batches - before == 2                   # the blocker's commit and the five jobs' one
    keys = await db.read(lambda c: [r[0] for r in c.execute("SELECT k FROM t ORDER BY k")])
    assert keys == [11, 12, 13, 14]


async def test_a_failed_commit_fails_every_inline_job_of_the_batch(db):
    db.fail_commits = OSError("disk full")
    res = await asyncio.gather(*(db.write(insert(i), inline=True) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, StorageError) and "disk full" in str(r) for r in res)
    db.fail_commits = None
    assert await db.write(insert(7), inline=True) == 7
    assert await db.read(lambda c: [r[0] for r in c.execute("SELECT k FROM t")]) == [7]


async def test_inline_jobs_wait_for_a_batch_of_the_writer_thread(db):
    order: list[str] = []
    started = threading.Event()

    def slow(c):
        started.set()
        order.append("thread-start")
        time.sleep(0.3)
        c.execute("INSERT INTO t(k, v) VALUES (1, 'thread')")
        order.append("thread-end")

    thread_job = asyncio.ensure_future(db.write(slow))          # the writer thread's path
    await asyncio.get_running_loop().run_in_executor(None, started.wait)

    def inline(c):
        order.append("inline")
        return c.execute("SELECT v FROM t WHERE k=1").fetchone()

    row = await db.write(inline, inline=True)
    await thread_job
    assert order == ["thread-start", "thread-end", "inline"]   # never inside the thread's transaction
    assert row[0] == "thread"


async def test_a_closed_database_refuses_inline_jobs(tmp_path):
    d = Database(str(tmp_path / "c.db")).open()
    d.close()
    with pytest.raises(StorageError):
        await d.write(insert(1), inline=True)



async def test_commit_delay_a_lone_job_never_waits(db):
    """Light load (the last batch had one job): a flush begins at once, whatever the commit delay."""
    db.commit_delay = 30.0
    for k in range(3):                               # one session writing one job at a time
        t0 = time.monotonic()
        await asyncio.wait_for(db.write(insert(k), inline=True), 10)
        assert time.monotonic() - t0 < 5.0


async def test_commit_delay_under_load_gathers_jobs_into_one_commit_until_enough_are_there(db):
    from store.sqlite import GATHER

    db.commit_delay = 30.0
    await asyncio.gather(db.write(insert(0), inline=True), db.write(insert(1), inline=True))   # a load
    before = db.batches
    first = asyncio.ensure_future(db.write(insert(2), inline=True))
    await asyncio.sleep(0.3)
    assert not first.done()                          # waits for company instead of committing alone
    rest = [db.write(insert(k), inline=True) for k in range(3, 2 + GATHER)]
    await asyncio.wait_for(asyncio.gather(first, *rest), 10)     # the GATHER-th job ends the wait at once
    assert db.batches - before == 1                  # ... and all of them shared one commit
    keys = await db.read(lambda c: [r[0] for r in c.execute("SELECT k FROM t ORDER BY k")])
    assert keys == list(range(2 + GATHER))


async def test_commit_delay_is_bounded(db):
    db.commit_delay = 0.2
    await asyncio.gather(db.write(insert(0), inline=True), db.write(insert(1), inline=True))
    t0 = time.monotonic()
    await asyncio.wait_for(db.write(insert(2), inline=True), 10)   # alone after a load: waits the delay
    assert 0.15 <= time.monotonic() - t0 < 5.0
