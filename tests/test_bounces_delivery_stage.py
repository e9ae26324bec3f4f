"""Our own synchronous failures are classified by the SMTP command the refusal answered: the scheduler hands
the attempt's transcript to ``relay.bounces.record.delivery_failure``, which reads the stage of the reply
from it. The same words ("550 User unknown") are an unknown address at RCPT (hard, suppressed), a content
refusal at DATA (``filtered``, soft) and a refusal of our sender at MAIL (``rejected``, soft). In-process:
a real SQLite spool and an aiosmtpd sink on loopback reached through a default route (no DNS)."""

import pytest

from relay.bounces.record import delivery_failure, stage_in_transcript
from relay.config import DeliveryConfig, RelayConfig, RouteConfig, SMTPConfig
from relay.delivery.scheduler import Scheduler
from relay.envelope import NewMessage
from relay.spool.spool import Spool
from store import Store

pytestmark = pytest.mark.component

T0 = 1_800_000_000.0
BODY = b"From: a@src.test\r\nTo: x@dst.test\r\nSubject: s\r\nMessage-ID: <st1@src.test>\r\n\r\nHi.\r\n"


@pytest.fixture
def env(tmp_path, sink, clock):
    clock.t = T0
    db = Store(str(tmp_path / "spool.db"), clock=clock).open()
    spool = Spool(db)
    route = RouteConfig(name="hub", host="127.0.0.1", port=sink.port, tls="starttls", tls_verify=False,
                        default=True)
    cfg = RelayConfig(smtp=SMTPConfig(hostname="relay.test"),
                      delivery=DeliveryConfig(retry_jitter=0.0, connect_timeout=3, command_timeout=5,
                                              poll_interval=0.05, dsn=False),
                      routes=[route])
    yield spool, Scheduler(spool, cfg, clock=clock, rng=lambda: 0.5)
    db.close()


async def _deliver(spool, scheduler, rcpts):
    qid = await spool.enqueue(NewMessage(sender="a@src.test", recipients=rcpts, body=BODY,
                                         from_header="a@src.test"))
    await scheduler.run_burst()
    return {b.address: b for b in await spool.store.bounces.list({"source": "delivery"})}, qid


async def test_user_unknown_at_rcpt_is_hard_and_suppresses(env, sink):
    spool, scheduler = env
    sink.faults.rcpt = {"gone@dst.test": "550 User unknown"}
    bounces, _ = await _deliver(spool, scheduler, ["gone@dst.test", "ok@dst.test"])
    b = bounces["gone@dst.test"]
    assert (b.reason, b.kind, b.effect) == ("userunknown", "hard", "suppressed")
    assert await spool.store.bounces.suppression("gone@dst.test") is not None
    assert len(sink.messages) == 1 and sink.messages[0].rcpts == ["ok@dst.test"]


async def test_user_unknown_at_data_is_a_content_refusal_and_does_not_suppress(env, sink):
    spool, scheduler = env
    sink.faults.data = "550 5.0.0 User unknown"
    bounces, _ = await _deliver(spool, scheduler, ["u1@dst.test", "u2@dst.test"])
    assert {a: (b.reason, b.kind) for a, b in bounces.items()} == \
        {"u1@dst.test": ("filtered", "soft"), "u2@dst.test": ("filtered", "soft")}
    for address in bounces:
        assert await spool.store.bounces.suppression(address) is None


async def test_a_refusal_at_mail_from_is_about_the_sender_not_the_recipient(env, sink):
    spool, scheduler = env
    sink.faults.mail = "550 User unknown"
    bounces, qid = await _deliver(spool, scheduler, ["r@dst.test"])
    b = bounces["r@dst.test"]
    assert (b.reason, b.kind) == ("rejected", "soft")
    assert await spool.store.bounces.suppression("r@dst.test") is None
    rows = await spool.store.db.read(lambda c: [dict(x) for x in c.execute(
        "SELECT status, reason FROM recipients WHERE message_id=?", (qid,))])
    assert rows == [{"status": "bounced", "reason": "rejected"}]


def test_stage_read_from_a_transcript():
    tr = [{"dir": "C", "line": "connect mx [192.0.2.1]:25"}, {"dir": "S", "line": "220 hi"},
          {"dir": "C", "line": "EHLO relay.test"}, {"dir": "S", "line": "250 ok"},
          {"dir": "C", "line": "MAIL FROM:<a@src.test> SIZE=10"}, {"dir": "S", "line": "250 2.1.0 OK"},
          {"dir": "C", "line": "RCPT TO:<x@dst.test>"}, {"dir": "S", "line": "550 5.1.1 no"},
          {"dir": "C", "line": "RCPT TO:<y@dst.test>"}, {"dir": "S", "line": "250 OK"},
          {"dir": "C", "line": "DATA"}, {"dir": "C", "line": "<10 octets>"},
          {"dir": "S", "line": "554-5.7.1 rejected"}, {"dir": "S", "line": "554 5.7.1 spam"}]
    assert stage_in_transcript(tr, "X@dst.test", 550) == "rcpt"
    assert stage_in_transcript(tr, "y@dst.test", 554) == "data"
    assert stage_in_transcript(tr, "y@dst.test", 550) is None      # another recipient's refusal
    assert stage_in_transcript([], "y@dst.test", 550) is None
    # refused at RCPT, then the DATA of the others failed with the same code: still the RCPT refusal
    both = [*tr[:12], {"dir": "S", "line": "550 5.7.1 spam"}]
    assert stage_in_transcript(both, "x@dst.test", 550) == "rcpt"
    assert stage_in_transcript(both, "y@dst.test", 550) == "data"
    # the next host starts over
    again = [*both, {"dir": "C", "line": "connect mx2 [192.0.2.2]:25"}, {"dir": "S", "line": "550 go away"}]
    assert stage_in_transcript(again, "x@dst.test", 550) == "greeting"
    # an explicit stage wins; none known keeps the words' own reading
    assert delivery_failure("q", 1, "y@dst.test", 550, None, "User unknown",
                            stage="data").report.lines[0].reason == "filtered"
    assert delivery_failure("q", 1, "y@dst.test", 550, None, "User unknown").report.lines[0].reason == \
        "userunknown"
