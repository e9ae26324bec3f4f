"""One classification path for delivery failures: a synchronous 5xx, an expiry, a suppressed or invalid
address each give a bounce record of source ``delivery`` (reason, hard/soft, status, diagnostic, remote MTA,
the attempt it came from) in the write of the results, suppression by the configured rules, and one log
line per delivery result. In-process: a real SQLite spool, an aiosmtpd sink reached through a default
route (no DNS), a settable clock."""

import asyncio
import json
import logging

import pytest

from relay.bounces.record import delivery_failure
from relay.config import BouncesConfig, DeliveryConfig, RelayConfig, RouteConfig, SMTPConfig
from relay.delivery.scheduler import Scheduler
from relay.envelope import NewMessage
from relay.spool.spool import Spool
from store import Store

pytestmark = pytest.mark.component

T0 = 1_800_000_000.0
BODY = (b"From: Alice <alice@src.test>\r\nTo: x@dst.test\r\nSubject: hi\r\nMessage-ID: <c1@src.test>\r\n"
        b"\r\nHi.\r\n")


@pytest.fixture
def env(tmp_path, sink, clock):
    clock.t = T0
    db = Store(str(tmp_path / "spool.db"), clock=clock).open()
    spool = Spool(db)

    def make(**kw):
        delivery = dict(retry_jitter=0.0, connect_timeout=3, command_timeout=5, poll_interval=0.05, dsn=False)
        delivery.update(kw.pop("delivery", {}))
        route = RouteConfig(name="hub", host="127.0.0.1", port=sink.port, tls="starttls", tls_verify=False,
                            default=True)
        cfg = RelayConfig(smtp=SMTPConfig(hostname="relay.test"), delivery=DeliveryConfig(**delivery),
                          routes=[route], **kw)
        return Scheduler(spool, cfg, clock=clock, rng=lambda: 0.5)

    yield spool, clock, make
    db.close()


async def enqueue(spool, rcpts):
    return await spool.enqueue(NewMessage(sender="alice@src.test", recipients=rcpts, body=BODY,
                                          from_header="Alice <alice@src.test>"))


async def rows(spool, sql, *args):
    return await spool.store.db.read(lambda c: [dict(x) for x in c.execute(sql, args)])


async def test_user_unknown_at_delivery_is_a_hard_bounce_that_suppresses(env, sink, caplog, capsys):
    spool, clock, make = env
    sink.faults.rcpt = {"gone@dst.test":
                        "550 5.1.1 <gone@dst.test>: Recipient address rejected: User unknown"}
    qid = await enqueue(spool, ["ok@dst.test", "gone@dst.test"])
    caplog.set_level(logging.INFO, logger="relay.delivery.scheduler")
    await make(delivery={"log_results": "all"}).run_burst()
    rs = {r["address"]: r for r in await rows(spool, "SELECT * FROM recipients WHERE message_id=?", qid)}
    assert (rs["gone@dst.test"]["status"], rs["gone@dst.test"]["reason"]) == ("bounced", "userunknown")
    assert rs["ok@dst.test"]["status"] == "delivered"
    [b] = await spool.store.bounces.list({"source": "delivery"})
    from relaybox.cli import main
    assert await asyncio.to_thread(main, ["bounces", "list", "--json", "--db", spool.store.path]) == 0
    [listed] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (listed["id"], listed["source"], listed["reason"]) == (b.id, "delivery", "userunknown")
    [attempt] = await rows(spool, "SELECT * FROM attempts WHERE message_id=?", qid)
    assert (b.address, b.category, b.reason, b.kind, b.status, b.replycode) == \
        ("gone@dst.test", "bounce", "userunknown", "hard", "5.1.1", "550")
    assert "User unknown" in b.diagnostic and b.remote_mta == "127.0.0.1"
    assert (b.message_id, b.recipient_id, b.correlation) == (qid, rs["gone@dst.test"]["id"], "delivery")
    assert b.attempt_id == attempt["id"] and b.effect == "suppressed"
    entry = await spool.store.bounces.suppression("GONE@dst.test")
    assert entry is not None and (entry.kind, entry.reason, entry.bounce_id) == ("hard", "userunknown", b.id)
    assert entry.expires_at == pytest.approx(T0 + 30 * 86400)
    # one maillog-like line per result
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("result ")]
    assert len(lines) == 2
    gone = next(x for x in lines if "status=bounced" in x)
    assert f"queue_id={qid}" in gone and "to_domain=dst.test" in gone and "relay=127.0.0.1[127.0.0.1]" in gone
    assert "tls=yes" in gone and "5.1.1" in gone and "delay=" in gone and "reason=userunknown" in gone

    # the next message to the address is failed 'suppressed' without an attempt
    before = len(sink.messages)
    clock.t += 60
    q2 = await enqueue(spool, ["gone@dst.test"])
    await make().run_burst()
    [r2] = await rows(spool, "SELECT * FROM recipients WHERE message_id=?", q2)
    assert (r2["status"], r2["reason"], r2["attempts"]) == ("failed", "suppressed", 0)
    assert len(sink.messages) == before and not await rows(spool, "SELECT * FROM attempts WHERE message_id=?",
                                                          q2)
    [b2] = await spool.store.bounces.list({"message_id": q2})
    assert (b2.reason, b2.effect, b2.source, b2.attempt_id) == ("suppressed", "recorded", "delivery", None)
    again = await spool.store.bounces.suppression("gone@dst.test")
    assert again.expires_at == entry.expires_at and again.bounce_id == b.id    # not extended by the refusal


async def test_blocklist_rejection_is_reason_blocked_and_soft(env, sink):
    spool, clock, make = env
    sink.faults.rcpt = {"x@dst.test": "554 5.7.1 Service unavailable; Client host [192.0.2.7] blocked using"
                                      " zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.7"}
    qid = await enqueue(spool, ["x@dst.test"])
    await make().run_burst()
    [r] = await rows(spool, "SELECT * FROM recipients WHERE message_id=?", qid)
    assert (r["status"], r["reason"]) == ("bounced", "blocked")
    [b] = await spool.store.bounces.list({"message_id": qid})
    assert (b.reason, b.kind, b.status, b.effect) == ("blocked", "soft", "5.7.1", "counted")
    assert "zen.spamhaus.org" in b.diagnostic
    assert await spool.store.bounces.suppression("x@dst.test") is None


async def test_soft_rejections_suppress_after_the_configured_limit(env, sink):
    spool, clock, make = env
    sink.faults.rcpt = {"full@dst.test": "550 5.7.1 Message rejected as spam"}
    bounces = BouncesConfig(soft_limit=2)
    for _ in range(2):
        await enqueue(spool, ["full@dst.test"])
        await make(bounces=bounces).run_burst()
        clock.t += 10
    got = await spool.store.bounces.list({"address": "full@dst.test"})
    assert [b.effect for b in got] == ["suppressed", "counted"]
    assert {b.reason for b in got} == {"spamdetected"}
    assert (await spool.store.bounces.suppression("full@dst.test")).kind == "soft"


async def test_expiry_and_invalid_address_are_recorded_without_suppressing(env, sink):
    spool, clock, make = env
    q1 = await enqueue(spool, ["late@dst.test"])
    clock.t = T0 + 6 * 86400
    q2 = await enqueue(spool, ["a@dst.test,b@dst.test"])
    await make().run_burst()
    [late] = await spool.store.bounces.list({"message_id": q1})
    assert (late.reason, late.kind, late.status, late.effect) == ("expired", "soft", "4.4.7", "counted")
    [bad] = await spool.store.bounces.list({"message_id": q2})
    assert (bad.reason, bad.effect) == ("syntaxerror", "recorded")
    assert not sink.messages and await spool.store.bounces.suppression("late@dst.test") is None


async def test_a_result_for_a_recipient_that_already_ended_records_no_bounce(env, sink):
    spool, clock, make = env
    from store.records import RecipientResult

    qid = await enqueue(spool, ["x@dst.test"])
    [rid] = [r["id"] for r in await rows(spool, "SELECT id FROM recipients WHERE message_id=?", qid)]
    await spool.cancel(qid, actor="admin")
    f = delivery_failure(qid, rid, "x@dst.test", 550, "5.1.1", "user unknown")
    out = await spool.store.bounces.complete_delivery([RecipientResult(rid, "bounced", 550, "5.1.1", "x")],
                                                      attempt=None, failures=[f])
    assert out == [] and await spool.store.bounces.list({}) == []


def test_delivery_failure_vocabulary():
    f = delivery_failure("Q", 1, "A@B.test", 550, "5.1.1", "5.1.1 user unknown", None, "mx.b.test")
    line = f.report.lines[0]
    assert (line.address, line.reason, line.kind, line.remote_mta, f.counts) == \
        ("a@b.test", "userunknown", "hard", "mx.b.test", True)
    assert delivery_failure("Q", 1, "a@b.test", None, "5.7.1", "on the list", "suppressed").counts is False
    e = delivery_failure("Q", 1, "a@b.test", None, "4.4.7", "delivery time expired after 5 days", "expired")
    assert (e.report.lines[0].reason, e.counts) == ("expired", True)
    assert json.dumps(f.report.lines[0].__dict__)


async def test_queue_show_prints_attempts_with_transcripts(env, sink, capsys):
    from relaybox.cli import main

    spool, clock, make = env
    sink.faults.rcpt = {"gone@dst.test": "550 5.1.1 <gone@dst.test>: user unknown"}
    qid = await enqueue(spool, ["gone@dst.test"])
    await make().run_burst()
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["queue", "show", qid, "--offline", "--db", spool.store.path]) == 0
    out = capsys.readouterr().out
    assert "attempt 1: " in out and "host=127.0.0.1[127.0.0.1] tls=yes" in out
    assert "  > RCPT TO:<gone@dst.test>" in out and "  < 550 5.1.1 <gone@dst.test>: user unknown" in out


async def test_one_log_line_per_result_by_default_and_failures_only_on_request(env, sink, caplog):
    spool, clock, make = env
    sink.faults.rcpt = {"later@dst.test": "451 4.3.0 try later"}
    qid = await enqueue(spool, ["ok@dst.test", "later@dst.test"])
    caplog.set_level(logging.INFO, logger="relay.delivery.scheduler")
    await make().run_burst()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("result ")]
    assert len(lines) == 2 and all(f"queue_id={qid}" in x for x in lines)       # like Postfix's maillog
    kinds = {("status=delivered" in x, "status=deferred" in x) for x in lines}
    assert kinds == {(True, False), (False, True)}
    assert any("4.3.0 try later" in x for x in lines)
    caplog.clear()
    clock.t += 3600
    await make(delivery={"log_results": "failures"}).run_burst()     # the retry defers again: logged
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("result ")]
    assert len(lines) == 1 and "status=deferred" in lines[0]
    caplog.clear()
    clock.t += 7200
    await make(delivery={"log_results": "none"}).run_burst()
    assert not [r for r in caplog.records if r.getMessage().startswith("result ")]
