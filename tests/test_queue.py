"""Component tests of the spool on a real SQLite file, including restarts on the same file."""

import asyncio
import hashlib

import pytest

from relay.envelope import NewMessage, Status
from relay.spool.spool import AttemptLog, QueueError, RecipientResult, Spool
from store import Store
from store.sqlite import Database, StorageError

pytestmark = pytest.mark.component


@pytest.fixture
def dbpath(tmp_path):
    return str(tmp_path / "spool.db")


def msg(n=0, rcpts=("a@x.test", "b@y.test"), **kw):
    return NewMessage(sender="app@org.test", recipients=list(rcpts),
                      body=f"Subject: {n}\r\n\r\nbody {n}\r\n".encode(), **kw)


async def statuses(db, qid):
    rows = await db.db.read(lambda c: c.execute(
        "SELECT address, status, reason, attempts FROM recipients WHERE message_id=? ORDER BY id",
        (qid,)).fetchall())
    return [(r["address"], r["status"], r["reason"]) for r in rows]


async def test_enqueue_is_durable_and_survives_reopen(dbpath):
    db = Store(dbpath).open()
    spool = Spool(db)
    m = msg(1)
    qid = await spool.enqueue(m)
    db.close()
    db2 = Store(dbpath).open()
    body = await Spool(db2).body(qid)
    assert hashlib.sha256(body).digest() == hashlib.sha256(m.body).digest()
    assert await statuses(db2, qid) == [("a@x.test", "queued", None), ("b@y.test", "queued", None)]
    db2.close()


async def test_group_commit_batches_concurrent_writers(dbpath):
    db = Store(dbpath).open()
    spool = Spool(db)
    ids = await asyncio.gather(*(spool.enqueue(msg(i)) for i in range(200)))
    assert len(set(ids)) == 200
    assert db.db.jobs == 200
    assert db.db.batches < 200  # several messages shared one commit (one fsync)
    db.close()


async def test_failed_commit_reports_error_and_stores_nothing(dbpath):
    db = Store(dbpath).open()
    spool = Spool(db)
    db.db.fail_commits = OSError("disk full")
    with pytest.raises(StorageError):
        await spool.enqueue(msg(1))
    db.db.fail_commits = None
    n = await db.db.read(lambda c: c.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    assert n == 0
    db.close()


async def test_claim_complete_defer_fail_cycle(dbpath, clock):
    db = Store(dbpath, clock=clock).open()
    spool = Spool(db)
    qid = await spool.enqueue(msg(1, rcpts=("a@x.test", "b@y.test", "c@z.test")))
    claims = await spool.claim("w1", limit=10, lease=60)
    assert len(claims) == 1 and len(claims[0].recipients) == 3
    assert await spool.claim("w2") == []  # leased: nobody else gets them
    a, b, c = (r.id for r in claims[0].recipients)
    await spool.complete([
        RecipientResult(a, Status.DELIVERED, 250, "2.0.0", "ok"),
        RecipientResult(b, Status.DEFERRED, 451, "4.7.1", "greylisted", next_attempt_at=clock.t + 300),
        RecipientResult(c, Status.BOUNCED, 550, "5.1.1", "no such user"),
    ], attempt=AttemptLog(qid, clock.t, clock.t, "mixed", host="mx.x.test", transcript=({"dir": "S",
                                                                                         "line": "220 hi"},)))
    assert await statuses(db, qid) == [("a@x.test", "delivered", None), ("b@y.test", "deferred", None),
                                       ("c@z.test", "bounced", None)]
    assert await spool.claim("w1") == []          # not due yet
    clock.t += 301
    again = await spool.claim("w1")
    assert [r.id for r in again[0].recipients] == [b]
    await spool.fail([b], "expired", text="gave up")
    assert (await statuses(db, qid))[1] == ("b@y.test", "failed", "expired")
    events = await db.db.read(lambda cn: [r["status"] for r in cn.execute(
        "SELECT status FROM events WHERE recipient_id=? ORDER BY id", (b,))])
    assert events == ["queued", "deferred", "failed"]
    attempts = await db.db.read(lambda cn: cn.execute("SELECT COUNT(*) FROM attempts").fetchone()[0])
    assert attempts == 1
    db.close()


async def test_expired_lease_is_reclaimed_while_running(dbpath, clock):
    db = Store(dbpath, clock=clock).open()
    spool = Spool(db)
    await spool.enqueue(msg(1, rcpts=("a@x.test",)))
    assert len(await spool.claim("w1", lease=60)) == 1
    clock.t += 61
    assert len(await spool.claim("w2", lease=60)) == 1
    db.close()


async def test_cancel_only_before_sending_and_resend(dbpath, clock):
    db = Store(dbpath, clock=clock).open()
    spool = Spool(db)
    qid = await spool.enqueue(msg(1, rcpts=("a@x.test", "b@y.test")))
    claims = await spool.claim("w1", limit=1)
    sending = claims[0].recipients[0].id
    assert await spool.cancel(qid) == 1           # only the one not being sent
    st = await statuses(db, qid)
    assert st[0][1] == "sending" and st[1][1] == "cancelled"
    await spool.complete([RecipientResult(sending, Status.DELIVERED, 250)])
    assert await spool.resend(qid) == 2           # both final -> new chain
    assert [s for _, s, _ in await statuses(db, qid)] == ["queued", "queued"]
    with pytest.raises(QueueError):
        await spool.cancel("NOSUCHID")
    db.close()


async def test_hold_release_and_scheduled(dbpath, clock):
    db = Store(dbpath, clock=clock).open()
    spool = Spool(db)
    q1 = await spool.enqueue(msg(1, rcpts=("a@x.test",)))
    q2 = await spool.enqueue(msg(2, rcpts=("b@x.test",), send_at=clock.t + 3600))
    assert (await statuses(db, q2))[0][1] == "scheduled"
    assert await spool.hold(q1)
    assert await spool.claim("w") == []
    assert await spool.release(q1)
    first = await spool.claim("w")
    assert len(first) == 1
    await spool.complete([RecipientResult(first[0].recipients[0].id, Status.DELIVERED, 250)])
    clock.t += 3601
    c = await spool.claim("w")
    assert c[0].message.id == q2
    db.close()


async def test_recover_requeues_and_poison_limit(dbpath, clock):
    for crash in range(3):
        db = Store(dbpath, clock=clock, poison_limit=3).open()
        spool = Spool(db)
        stats = await spool.recover()
        if crash == 0:
            qid = await spool.enqueue(msg(1, rcpts=("a@x.test",)))
        else:
            assert stats == {"requeued": 1, "poisoned": 0}
        assert len(await spool.claim("w")) == 1
        db.close()  # "crash": never completes
    db = Store(dbpath, clock=clock, poison_limit=3).open()
    spool = Spool(db)
    assert await spool.recover() == {"requeued": 0, "poisoned": 1}
    assert await statuses(db, qid) == [("a@x.test", "failed", "poison")]
    db.close()


def test_migrations_are_tracked_and_downgrade_is_refused(dbpath):
    import sqlite3

    from store.sqlite import SchemaTooNew, migrations

    db = Database(dbpath).open()
    db.close()
    conn = sqlite3.connect(dbpath)
    known = [v for v, _, _ in migrations()]
    assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")] == known
    # a migration "forgotten" (merged with a lower number than one applied) runs at the next start
    conn.execute("DELETE FROM schema_migrations WHERE version=3")
    conn.execute("DROP TABLE bounces")
    conn.execute("DROP TABLE suppressions")
    conn.commit()
    Database(dbpath).open().close()
    assert conn.execute("SELECT COUNT(*) FROM suppressions").fetchone()[0] == 0
    conn.execute(f"PRAGMA user_version={known[-1] + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaTooNew):
        Database(dbpath).open()
