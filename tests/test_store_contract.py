"""The store's contract: what every backend must do, exercised through the typed interface only.

No SQL and no backend detail here: the same tests run against each backend in ``STORE_BACKENDS`` of
``tests/conftest.py`` (SQLite today; the PostgreSQL backend adds itself there and must pass unchanged).
``open_store()`` reopens the same database, so restarts are part of the contract.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from store import Store
from store.bounces import Report, ReportLine
from store.messages import QueueError
from store.records import AttemptLog, Claim, Message, NewMessage, Recipient, RecipientResult
from store.states import IllegalTransition
from store.suppressions import Rules

pytestmark = pytest.mark.component

def new(n: int = 0, rcpts=("a@x.test", "b@y.test"), **kw) -> NewMessage:
    return NewMessage(sender="app@org.test", recipients=list(rcpts),
                      body=f"Subject: {n}\r\n\r\nbody\r\n".encode(),
                      subject=str(n), message_id_header=f"<m{n}@org.test>", **kw)


async def statuses(s: Store, qid: str) -> list[tuple[str, str]]:
    return [(r.address, r.status) for r in await s.messages.recipients(qid)]


async def test_enqueue_returns_records_and_survives_a_restart(open_store, clock):
    s = open_store()
    m = new(1)
    qid = await s.messages.enqueue(m)
    assert qid == m.queue_id
    msg = await s.messages.get(qid)
    assert isinstance(msg, Message) and (msg.sender, msg.subject, msg.size, msg.held) == (
        "app@org.test", "1", len(m.body), False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.sender = "x"  # type: ignore[misc]
    s.close()
    s2 = open_store()
    assert await s2.messages.body(qid) == m.body
    assert await statuses(s2, qid) == [("a@x.test", "queued"), ("b@y.test", "queued")]
    assert await s2.messages.get("NOSUCHID") is None


async def test_concurrent_enqueues_share_commits(open_store):
    s = open_store()
    ids = await asyncio.gather(*(s.messages.enqueue(new(i)) for i in range(100)))
    assert len(set(ids)) == 100
    assert all(await asyncio.gather(*(s.messages.exists(q) for q in ids)))


async def test_claim_leases_complete_records_results_and_attempts(open_store, clock):
    s = open_store()
    qid = await s.messages.enqueue(new(2, rcpts=("a@x.test", "b@y.test", "c@z.test")))
    claims = await s.messages.claim("w1", limit=10, lease=60)
    assert len(claims) == 1 and isinstance(claims[0], Claim)
    rcpts = claims[0].recipients
    assert all(isinstance(r, Recipient) and r.status == "sending" and r.lease_owner == "w1" for r in rcpts)
    assert await s.messages.claim("w2") == []                   # leased: nobody else gets them
    a, b, c = (r.id for r in rcpts)
    await s.messages.complete([
        RecipientResult(a, "delivered", 250, "2.0.0", "ok", route="mx"),
        RecipientResult(b, "deferred", 451, "4.7.1", "greylisted", next_attempt_at=clock.t + 300),
        RecipientResult(c, "bounced", 550, "5.1.1", "no such user"),
    ], attempt=AttemptLog(qid, clock.t, clock.t, "mixed", host="mx.x.test", ip="127.0.0.1", tls=True,
                          transcript=({"dir": "S", "line": "220 hi"},)))
    assert await statuses(s, qid) == [("a@x.test", "delivered"), ("b@y.test", "deferred"),
                                      ("c@z.test", "bounced")]
    got = {r.address: r for r in await s.messages.recipients(qid)}
    assert (got["a@x.test"].last_code, got["a@x.test"].route, got["a@x.test"].attempts) == (250, "mx", 1)
    assert got["b@y.test"].next_attempt_at == pytest.approx(clock.t + 300)
    assert await s.messages.claim("w1") == []                   # not due yet
    clock.t += 301
    again = await s.messages.claim("w1")
    assert [r.id for r in again[0].recipients] == [b]
    with pytest.raises(ValueError):
        await s.messages.complete([RecipientResult(b, "deferred", 451)])   # deferred needs a time


async def test_expired_lease_is_claimed_again_and_release_hands_back(open_store, clock):
    s = open_store()
    qid = await s.messages.enqueue(new(3, rcpts=("a@x.test",)))
    [first] = await s.messages.claim("w1", lease=60)
    clock.t += 61
    [second] = await s.messages.claim("w2", lease=60)
    assert second.recipients[0].lease_owner == "w2"
    assert await s.messages.release([second.recipients[0].id], clock.t + 10) == 1
    assert await statuses(s, qid) == [("a@x.test", "queued")]
    assert await s.messages.claim("w3") == []                   # released for later
    clock.t += 10
    assert len(await s.messages.claim("w3")) == 1


async def test_claims_and_releases_of_many_recipients_in_one_write(open_store, clock):
    s = open_store()
    qids = [await s.messages.enqueue(new(40 + i, rcpts=("a@x.test", "b@y.test"))) for i in range(3)]
    claims = await s.messages.claim("w1", limit=5, lease=60)
    assert [c.message.id for c in claims] == qids             # oldest first, each message once
    assert [len(c.recipients) for c in claims] == [2, 2, 1]
    assert claims[1].message.subject == "41" and claims[1].message.sender == "app@org.test"
    assert all(r.status == "sending" and r.lease_owner == "w1" for c in claims for r in c.recipients)
    ids = [r.id for c in claims for r in c.recipients]
    await s.messages.complete([RecipientResult(ids[0], "delivered", 250)])
    # a duplicate id and one that already ended are ignored; the rest go back with the reason kept
    assert await s.messages.release(ids + [ids[1]], clock.t + 30, (421, "4.7.0", "busy")) == 3
    assert await statuses(s, qids[0]) == [("a@x.test", "delivered"), ("b@y.test", "queued")]
    assert await statuses(s, qids[2]) == [("a@x.test", "queued"), ("b@y.test", "queued")]
    back = [r for r in await s.messages.recipients(qids[1])]
    assert {(r.last_code, r.last_text, r.lease_owner) for r in back} == {(421, "busy", None)}
    [never] = await s.messages.claim("w2")                      # only the one never claimed: the
    assert [r.address for r in never.recipients] == ["b@y.test"]   # others were handed back for later
    clock.t += 30
    assert sum(len(c.recipients) for c in await s.messages.claim("w2")) == 4


async def test_a_result_after_the_recipient_ended_elsewhere_changes_nothing(open_store, clock):
    s = open_store()
    qid = await s.messages.enqueue(new(4, rcpts=("a@x.test",)))
    [c1] = await s.messages.claim("w1", lease=60)
    rid = c1.recipients[0].id
    await s.messages.complete([RecipientResult(rid, "delivered", 250)])
    await s.messages.complete([RecipientResult(rid, "deferred", 451, next_attempt_at=clock.t + 60)])
    assert await statuses(s, qid) == [("a@x.test", "delivered")]


async def test_admin_moves_follow_the_state_machine(open_store, clock):
    s = open_store()
    qid = await s.messages.enqueue(new(5, rcpts=("a@x.test", "b@y.test")))
    [claim] = await s.messages.claim("w")
    a, b = (r.id for r in claim.recipients)
    assert await s.messages.cancel(qid) == 0                    # sending: cancel refused
    with pytest.raises(QueueError):
        await s.messages.delete(qid)                            # being delivered
    await s.messages.complete([RecipientResult(a, "delivered", 250),
                               RecipientResult(b, "deferred", 451, next_attempt_at=clock.t + 600)])
    assert await s.messages.retry_now(qid) == 1
    assert await s.messages.cancel(qid) == 1
    assert await statuses(s, qid) == [("a@x.test", "delivered"), ("b@y.test", "cancelled")]
    assert await s.messages.resend(qid, [a]) == 1
    assert await statuses(s, qid) == [("a@x.test", "queued"), ("b@y.test", "cancelled")]
    assert await s.messages.set_held(qid, True) is True
    assert await s.messages.set_held(qid, True) is False
    assert await s.messages.claim("w") == []                    # held
    assert await s.messages.set_held(qid, False) is True
    assert len(await s.messages.claim("w")) == 1
    with pytest.raises(QueueError):
        await s.messages.cancel("NOSUCHMESSAGE01")


async def test_asynchronous_bounce_after_delivery_and_not_after_cancel(open_store):
    s = open_store()
    qid = await s.messages.enqueue(new(6, rcpts=("a@x.test", "b@y.test")))
    [claim] = await s.messages.claim("w")
    a, b = (r.id for r in claim.recipients)
    await s.messages.complete([RecipientResult(a, "delivered", 250)])
    await s.messages.release([b], 0)
    await s.messages.cancel(qid, [b])
    assert await s.messages.mark_bounced(a, 550, "5.1.1", "gone", "userunknown") is True
    assert await s.messages.mark_bounced(b, 550, "5.1.1", "gone", "userunknown") is False
    assert await statuses(s, qid) == [("a@x.test", "bounced"), ("b@y.test", "cancelled")]


async def test_recover_requeues_leases_and_fails_poison(open_store, clock):
    s = open_store()
    qid = await s.messages.enqueue(new(7, rcpts=("a@x.test",)))
    for _ in range(3):                                          # three crashes mid-delivery
        clock.t += 400
        assert len(await s.messages.claim("w", lease=300)) == 1
        s.close()
        s = open_store()
        stats = await s.messages.recover()
    assert stats == {"requeued": 0, "poisoned": 1}
    assert await statuses(s, qid) == [("a@x.test", "failed")]
    qid2 = await s.messages.enqueue(new(8, rcpts=("b@y.test",)))
    await s.messages.claim("w")
    assert await s.messages.recover() == {"requeued": 1, "poisoned": 0}
    assert await statuses(s, qid2) == [("b@y.test", "queued")]


async def test_delay_notice_marker_is_once_per_message(open_store):
    s = open_store()
    assert await s.messages.mark_delay_notice("Q1") is True
    assert await s.messages.mark_delay_notice("Q1") is False
    assert await s.messages.mark_delay_notice("Q2") is True


async def test_prune_removes_finished_messages_in_batches(open_store, clock):
    s = open_store()
    done = await s.messages.enqueue(new(9, rcpts=("a@x.test",)))
    live = await s.messages.enqueue(new(10, rcpts=("b@y.test",)))
    [c1, c2] = await s.messages.claim("w", limit=10)
    by_qid = {c.message.id: c for c in (c1, c2)}
    await s.messages.complete([RecipientResult(by_qid[done].recipients[0].id, "delivered", 250)])
    clock.t += 40 * 86400
    assert await s.messages.prune(body_days=7, meta_days=30) > 0
    assert await s.messages.get(done) is None and await s.messages.get(live) is not None
    assert await s.messages.prune(body_days=7, meta_days=30) == 0


async def test_space_is_given_back_after_retention(open_store, clock):
    s = open_store()
    big = b"Subject: big\r\n\r\n" + b"x" * 200_000 + b"\r\n"
    ids = [await s.messages.enqueue(NewMessage("app@org.test", ["a@x.test"], big)) for _ in range(40)]
    for c in await s.messages.claim("w", limit=100):
        await s.messages.complete([RecipientResult(r.id, "delivered", 250) for r in c.recipients])
    full = s.size_bytes()
    clock.t += 100 * 86400
    while await s.messages.prune(body_days=1, meta_days=30):
        pass
    freed = 0
    while n := await s.compact(2000):
        freed += n
    assert all([await s.messages.get(q) is None for q in ids])
    assert freed > 0 and s.size_bytes() < full / 2, (full, s.size_bytes())


async def test_enqueue_once_is_idempotent_by_queue_id(open_store):
    s = open_store()
    m = new(11)
    assert await s.messages.enqueue_once(m, "poller") == (m.queue_id, True)
    assert await s.messages.enqueue_once(m, "poller") == (m.queue_id, False)
    assert len(await s.messages.recipients(m.queue_id)) == 2


async def test_illegal_transition_rolls_back_only_that_write(open_store, monkeypatch):
    s = open_store()
    qid = await s.messages.enqueue(new(12, rcpts=("a@x.test",)))
    import store.messages as sm

    real = sm.transition

    def refuse(current, new_status):
        if new_status == "sending":
            raise IllegalTransition(current, new_status)
        return real(current, new_status)

    monkeypatch.setattr(sm, "transition", refuse)
    with pytest.raises(IllegalTransition):
        await s.messages.claim("w")
    monkeypatch.setattr(sm, "transition", real)
    assert await statuses(s, qid) == [("a@x.test", "queued")]   # nothing half-claimed
    assert len(await s.messages.claim("w")) == 1


async def test_queue_counters_follow_every_write_and_oldest_is_the_first_waiting(open_store, clock):
    s = open_store()
    ids = [await s.messages.enqueue(new(20 + i, rcpts=("a@x.test", "b@y.test"))) for i in range(4)]
    clock.t += 10
    later = await s.messages.enqueue(new(30, rcpts=("c@z.test",), send_at=clock.t + 3600))   # scheduled
    claims = await s.messages.claim("w", limit=3)
    first = claims[0].recipients[0].id
    await s.messages.complete([RecipientResult(first, "delivered", 250)])
    await s.messages.cancel(ids[3])
    clock.t += 40 * 86400
    await s.messages.complete([RecipientResult(r.id, "bounced", 550) for c in claims for r in c.recipients
                               if r.id != first])
    await s.messages.set_held(ids[2], True)
    await s.messages.prune(body_days=1, meta_days=30)         # ids[3] (all cancelled) goes, cascading
    expected: dict[str, int] = {}
    for qid in [*ids, later]:
        for r in await s.messages.recipients(qid):
            expected[r.status] = expected.get(r.status, 0) + 1
    stats = await s.stats.queue_stats()
    assert {k: v for k, v in stats.counts.items() if v} == expected
    assert stats.held_messages == 1
    waiting = []
    for q in ids:
        if any(r.status in ("queued", "deferred", "sending") for r in await s.messages.recipients(q)):
            waiting.append(q)
    waiting.sort()
    created = (await s.messages.get(waiting[0])).created_at
    assert stats.oldest_age == pytest.approx(clock.t - created)
    shape = await s.history.summary(top=50)                     # the qshape counters (m0011)
    active = {k: v for k, v in expected.items() if k in ("scheduled", "queued", "deferred", "sending")}
    assert shape.total.total == sum(active.values())
    by_domain: dict[str, int] = {}
    for qid in [*ids, later]:
        for r in await s.messages.recipients(qid):
            if r.status in active:
                by_domain[r.domain] = by_domain.get(r.domain, 0) + 1
    assert {row.domain: row.total for row in shape.rows} == by_domain
    s.close()
    s2 = open_store()                                            # the counters are stored, not rebuilt
    assert (await s2.stats.queue_stats()).counts == stats.counts


# ---- bounces and suppressions ----------------------------------------------------------------------------
async def test_bounce_report_correlates_marks_and_suppresses(open_store, clock):
    s = open_store()
    qid = await s.messages.enqueue(new(13, rcpts=("a@x.test", "b@y.test")))
    [claim] = await s.messages.claim("w")
    ids = {r.address: r.id for r in claim.recipients}
    await s.messages.complete([RecipientResult(i, "delivered", 250) for i in ids.values()])
    report = Report("bounce", (ReportLine("a@x.test", "failed", "5.1.1", "550", "user unknown", "mx.x.test",
                                          "userunknown", "hard"),), original_message_id="<m13@org.test>")
    out = await s.bounces.record(report, source="channel", rules=Rules(hard_for=30 * 86400))
    assert out.correlation == "message-id" and [e.effect for e in out.effects] == ["bounced+suppressed"]
    assert await statuses(s, qid) == [("a@x.test", "bounced"), ("b@y.test", "delivered")]
    entry = await s.bounces.suppression("A@X.test")
    assert entry is not None and entry.kind == "hard"
    assert entry.expires_at == pytest.approx(clock.t + 30 * 86400)
    # the same report again: recorded, but no second transition
    again = await s.bounces.record(report, source="channel")
    assert [e.effect for e in again.effects] == ["suppressed"]
    rows = await s.bounces.list({"address": "a@x.test"})
    assert len(rows) == 2 and rows[0].id > rows[1].id and rows[0].message_id == qid
    assert (await s.bounces.get(rows[0].id)).category == "bounce"
    # a VERP target names the recipient even when the report's address differs (forwarding)
    fwd = Report("bounce", (ReportLine("forwarded@z.test", "failed", "5.2.2", "552", "mailbox full", "",
                                       "mailboxfull", "soft"),))
    out = await s.bounces.record(fwd, source="smtp", target=(qid, ids["b@y.test"]))
    assert out.correlation == "verp" and out.effects[0].address == "b@y.test"


async def test_uncorrelated_and_unparsed_reports_change_nothing(open_store):
    s = open_store()
    out = await s.bounces.record(Report("bounce", (ReportLine("who@x.test", "failed", "5.1.1"),)),
                                 source="channel")
    assert out.correlation == "" and out.effects[0].effect == "uncorrelated"
    junk = await s.bounces.record(Report("unknown", problem="not a report"), source="channel",
                                  raw=b"\x00junk", raw_ref="pop3:1")
    assert junk.effects[0].effect == "unparsed"
    row = await s.bounces.get(junk.effects[0].id)
    assert row.raw == b"\x00junk" and row.unparsed == "not a report" and row.raw_ref == "pop3:1"
    assert not await s.bounces.is_suppressed("who@x.test")
    with pytest.raises(ValueError):
        await s.bounces.list({"raw": "x"})


async def test_suppressions_are_never_weakened_and_expire(open_store, clock):
    s = open_store()
    b = s.bounces
    await b.suppress("eve@x.test", "feedback", "complaint", "complaint")            # forever
    await b.suppress("eve@x.test", "userunknown", "hard", "bounce", expires_at=clock.t + 10)
    assert (await b.suppression("eve@x.test")).expires_at is None
    await b.suppress("tmp@x.test", "manual", "manual", "api", expires_at=clock.t + 10, note="n")
    assert [e.address for e in await b.export_suppressions()] == ["eve@x.test", "tmp@x.test"]
    clock.t += 11
    assert not await b.is_suppressed("tmp@x.test")
    assert [e.address for e in await b.suppressions(include_expired=True, search="TMP")] == ["tmp@x.test"]
    assert await b.purge_expired() == 1
    assert await b.unsuppress("eve@x.test") and not await b.unsuppress("eve@x.test")
    with pytest.raises(ValueError):
        await b.suppress("not an address", "manual", "manual", "api")


async def test_a_failing_write_among_concurrent_ones_fails_alone_and_runs_once(open_store):
    """Writes waiting together share a commit; one that fails after writing keeps nothing of its own,
    costs the others nothing, and its function is not run again (a check it calls is seen once)."""
    from store.messages import insert_message

    s = open_store()
    runs: dict[int, int] = {}
    msgs = [new(100 + i, rcpts=("a@x.test",)) for i in range(40)]

    def job(i: int):
        def fn(conn):
            runs[i] = runs.get(i, 0) + 1
            insert_message(conn, msgs[i], 1.0, "test")      # written, then refused below for every 3rd
            if i % 3 == 0:
                raise ValueError(f"refused {i}")
            return i
        return fn

    out = await asyncio.gather(*(s.db.write(job(i)) for i in range(40)), return_exceptions=True)
    for i, res in enumerate(out):
        if i % 3 == 0:
            assert isinstance(res, ValueError) and str(res) == f"refused {i}"
            assert runs[i] == 1 and not await s.messages.exists(msgs[i].queue_id)
        else:
            assert res == i and await s.messages.exists(msgs[i].queue_id)
    # the counters the triggers keep count the kept messages only (the failed ones' rows were undone)
    assert (await s.stats.queue_stats()).counts.get("queued") == 26
    assert (await s.history.summary(top=5)).total.total == 26


async def test_a_write_failing_in_the_database_among_concurrent_ones_fails_alone(open_store):
    """A statement refused by the database itself (a duplicate key), in writes sharing a commit: that
    write gets a Conflict, the writes before and after it are kept, whoever's statement it was."""
    from store.errors import Conflict, guarded
    from store.messages import insert_message

    s = open_store()
    taken = new(200, rcpts=("a@x.test",))
    await s.messages.enqueue(taken)
    msgs = [new(201 + i, rcpts=("a@x.test",)) for i in range(30)]
    for i in range(0, 30, 7):
        msgs[i] = dataclasses.replace(msgs[i], queue_id=taken.queue_id)     # refused: the id exists

    def job(i: int):
        @guarded
        def fn(conn):
            insert_message(conn, msgs[i], 1.0, "test")
            return i
        return fn

    out = await asyncio.gather(*(s.db.write(job(i)) for i in range(30)), return_exceptions=True)
    for i, res in enumerate(out):
        if i % 7 == 0:
            assert isinstance(res, Conflict)
        else:
            assert res == i and await s.messages.exists(msgs[i].queue_id)
    assert (await s.stats.queue_stats()).counts.get("queued") == 1 + 30 - 5
    assert [r.address for r in await s.messages.recipients(taken.queue_id)] == ["a@x.test"]
