"""New mail straight from intake to the local scheduler (Spool.handoff): one durable write stores the
message already leased to the scheduler, which delivers it without a claim round or a body read; with a
backlog in the queue, new mail waits its turn; a crash leaves nothing behind that recovery does not return."""

import asyncio

import pytest

from relay.config import DeliveryConfig, RelayConfig, RouteConfig, SMTPConfig
from relay.delivery.scheduler import Scheduler
from relay.envelope import NewMessage
from relay.spool.spool import Spool
from store import Store

pytestmark = pytest.mark.integration


def new(i: int, rcpt: str = "bob@dst.test", **kw) -> NewMessage:
    body = (f"From: a@src.test\r\nTo: {rcpt}\r\nSubject: n{i}\r\nMessage-ID: <n{i}@src.test>\r\n\r\nhi\r\n")
    return NewMessage("a@src.test", [rcpt], body.encode(), from_header="a@src.test", subject=f"n{i}", **kw)


async def rows(spool: Spool, qid: str) -> list[dict]:
    return await spool.store.db.read(lambda c: [dict(r) for r in c.execute(
        "SELECT status, lease_owner, attempts FROM recipients WHERE message_id=? ORDER BY id", (qid,))])


@pytest.fixture
async def env(tmp_path, sink):
    db = Store(str(tmp_path / "spool.db")).open()
    spool = Spool(db)
    cfg = RelayConfig(smtp=SMTPConfig(hostname="relay.test"), delivery=DeliveryConfig(
        poll_interval=0.05, connect_timeout=3, command_timeout=5, retry_jitter=0.0),
        routes=[RouteConfig(name="sink", host="127.0.0.1", port=sink.port, tls="none", default=True)])
    sched = Scheduler(spool, cfg, owner="node:1")
    yield spool, sched, sink
    await sched.stop()
    db.close()


async def wait_for(pred, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await pred():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_new_mail_is_stored_leased_and_delivered_without_a_claim(env):
    spool, sched, sink = env
    spool.handoff = sched
    await sched.start()
    await wait_for(lambda: _true(sched.handoff_lease() is not None))     # first round: the queue is empty
    claims = []
    real_claim = spool.claim

    async def counting_claim(*a, **kw):
        got = await real_claim(*a, **kw)
        claims.extend(got)
        return got

    spool.claim = counting_claim           # type: ignore[method-assign]
    qid = await spool.enqueue(new(1))
    assert (await rows(spool, qid))[0]["status"] in ("sending", "delivered")
    await wait_for(lambda: _true(len(sink.messages) == 1))
    await wait_for(lambda: _rows_are(spool, qid, [("delivered", None, 1)]))
    assert claims == []                    # it never went through a claim round
    events = await spool.store.history.events(message_id=qid)
    assert [e.status for e in events] == ["queued", "delivered"]


async def test_with_a_backlog_new_mail_waits_in_the_queue(env):
    spool, sched, _sink = env
    spool.handoff = sched
    old = await spool.enqueue(new(1))          # the scheduler is not running: queued, no lease
    assert await rows(spool, old) == [{"status": "queued", "lease_owner": None, "attempts": 0}]
    assert sched.handoff_lease() is None       # not started
    sched._loop_task = asyncio.get_running_loop().create_future()   # running, but its last round
    sched._queue_empty = False                                      # claimed something
    assert sched.handoff_lease() is None
    sched._loop_task = None


async def test_scheduled_and_held_mail_are_not_leased(env):
    spool, sched, _sink = env
    sched._loop_task = asyncio.get_running_loop().create_future()
    sched._queue_empty = True
    taken = []
    sched.take = lambda claim, body, suppressed, framed=False: taken.append(claim)  # type: ignore[method-assign]
    spool.handoff = sched
    later = await spool.enqueue(new(1, send_at=4_000_000_000.0))
    held = await spool.enqueue(new(2, held=True))
    now = await spool.enqueue(new(3))
    sched._loop_task = None
    assert (await rows(spool, later))[0]["status"] == "scheduled"
    assert (await rows(spool, held))[0]["lease_owner"] is None
    assert await rows(spool, now) == [{"status": "sending", "lease_owner": "node:1", "attempts": 0}]
    assert [c.message.id for c in taken] == [now]


async def test_a_crash_after_the_handoff_is_recovered_and_counts_for_poison(tmp_path):
    db = Store(str(tmp_path / "c.db"), poison_limit=2).open()
    spool = Spool(db)
    got = await db.messages.enqueue_claimed(new(1), "dead:1", 300.0)
    assert got is not None
    qid = got[0].message.id
    db.close()                                  # the process "died" with the lease held
    for expected in ({"requeued": 1, "poisoned": 0}, {"requeued": 0, "poisoned": 1}):
        db = Store(str(tmp_path / "c.db"), poison_limit=2).open()
        spool = Spool(db)
        assert await spool.recover() == expected
        if expected["requeued"]:
            assert await spool.claim("dead:2")      # interrupted a second time
        db.close()
    db = Store(str(tmp_path / "c.db")).open()
    row = await db.db.read(lambda c: c.execute(
        "SELECT status, reason FROM recipients WHERE message_id=?", (qid,)).fetchone())
    assert tuple(row) == ("failed", "poison")
    db.close()


async def test_suppressed_recipients_of_handed_over_mail_are_not_sent(env):
    spool, sched, sink = env
    await spool.store.bounces.suppress("gone@dst.test", "userunknown", "hard", "test")
    spool.handoff = sched
    await sched.start()
    await wait_for(lambda: _true(sched.handoff_lease() is not None))
    qid = await spool.enqueue(new(1, rcpt="gone@dst.test"))
    await wait_for(lambda: _rows_are(spool, qid, [("failed", None, 0)]))
    await asyncio.sleep(0.2)
    assert [m for m in sink.messages if "gone@dst.test" in m.rcpts] == []   # only the DSN to a@src.test


async def _true(v: bool) -> bool:
    return v


async def _rows_are(spool: Spool, qid: str, want: list[tuple]) -> bool:
    return [(r["status"], r["lease_owner"], r["attempts"]) for r in await rows(spool, qid)] == want
