"""The delivery engine end to end inside one process: real SQLite spool, real dnsmasq for MX, aiosmtpd sinks
with injected faults, the scheduler in burst mode, a controllable clock for retries and expiry."""

import asyncio
import json

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import REGISTRY

from relay.bounces import verp
from relay.config import (
    BouncesConfig,
    DeliveryConfig,
    DKIMConfig,
    DKIMKeyConfig,
    RelayConfig,
    RouteConfig,
    SMTPConfig,
)
from relay.delivery.dkim import dns_record
from relay.delivery.scheduler import Scheduler
from relay.envelope import NewMessage
from relay.spool.spool import Spool
from store import Store
from tests.peers.sink import Sink

pytestmark = pytest.mark.integration

T0 = 1_800_000_000.0
ZONE = {
    "dst.test": {"MX": [(10, "mx.dst.test")]},
    "src.test": {"MX": [(10, "mx.dst.test")]},
    "mx.dst.test": {"A": ["127.0.0.1"]},
    "null.test": {"MX": [(0, ".")]},
    "slow.test": {"MX": [(10, "mx.slow.test")]},
    "mx.slow.test": {"A": ["127.0.0.2"]},
    "two.test": {"MX": [(10, "busy.two.test"), (20, "mx.dst.test")]},
    "busy.two.test": {"A": ["127.0.0.3"]},
}


# dns_server (serving ZONE), sink and clock: tests/conftest.py
@pytest.fixture
def env(tmp_path, dns_server, sink, clock):
    clock.t = T0
    db = Store(str(tmp_path / "spool.db"), clock=clock).open()
    spool = Spool(db)

    def make(**kw):
        delivery = dict(mx_port=sink.port, nameservers=["127.0.0.1"], dns_port=dns_server.port, dns_timeout=2,
                        retry_jitter=0.0, connect_timeout=3, command_timeout=5, poll_interval=0.05)
        delivery.update(kw.pop("delivery", {}))
        cfg = RelayConfig(smtp=SMTPConfig(hostname="relay.test"), delivery=DeliveryConfig(**delivery), **kw)
        return Scheduler(spool, cfg, clock=clock, rng=lambda: 0.5)

    yield spool, clock, make
    db.close()


def body(frm="Alice <alice@src.test>", subject="hello"):
    return (f"From: {frm}\r\nTo: someone@dst.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <m1@src.test>\r\n\r\nHello there.\r\n").encode()


async def enqueue(spool, rcpts, sender="alice@src.test", frm="Alice <alice@src.test>", **kw):
    return await spool.enqueue(NewMessage(sender=sender, recipients=rcpts, body=body(frm), from_header=frm,
                                          **kw))


async def recipients(spool, qid):
    return {r["address"]: r for r in await spool.store.db.read(lambda c: [dict(x) for x in c.execute(
        "SELECT * FROM recipients WHERE message_id=? ORDER BY id", (qid,))])}


async def attempts(spool, qid):
    return await spool.store.db.read(lambda c: [dict(x) for x in c.execute(
        "SELECT * FROM attempts WHERE message_id=? ORDER BY id", (qid,))])


async def test_multi_recipient_mixed_outcomes_with_transcript_and_dsn(env, sink):
    spool, clock, make = env
    sink.faults.rcpt = {"gone@dst.test": "550 5.1.1 <gone@dst.test>: user unknown",
                        "later@dst.test": "451 4.3.0 try later"}
    qid = await enqueue(spool, ["ok@dst.test", "gone@dst.test", "later@dst.test", "x@null.test",
                                "y@does-not-exist.test"])
    sched = make()
    await sched.run_burst()
    rs = await recipients(spool, qid)
    got = {a: (r["status"], r["last_enhanced"], r["reason"]) for a, r in rs.items()}
    assert got == {"ok@dst.test": ("delivered", "2.0.0", None),
                   "gone@dst.test": ("bounced", "5.1.1", "userunknown"),
                   "later@dst.test": ("deferred", "4.3.0", None),
                   "x@null.test": ("failed", "5.1.10", "nullmx"),
                   "y@does-not-exist.test": ("bounced", "5.1.2", "hostunknown")}
    assert rs["later@dst.test"]["next_attempt_at"] == pytest.approx(T0 + 300)
    assert rs["ok@dst.test"]["last_code"] == 250 and rs["ok@dst.test"]["route"] == "mx"
    # one SMTP transaction for the three dst.test recipients, with its transcript
    rows = [a for a in await attempts(spool, qid) if a["host"] == "mx.dst.test"]
    assert len(rows) == 1 and rows[0]["ip"] == "127.0.0.1" and rows[0]["tls"] == 1
    lines = [e["line"] for e in json.loads(rows[0]["transcript"])]
    assert "RCPT TO:<gone@dst.test>" in lines and "550 5.1.1 <gone@dst.test>: user unknown" in lines
    assert "STARTTLS" in lines and not any("Hello there" in x for x in lines)
    # one DSN to the sender listing the bounced and failed recipients, delivered in the same burst
    dsns = [m for m in sink.messages if m.sender == ""]
    assert len(dsns) == 1 and dsns[0].rcpts == ["alice@src.test"]
    report = dsns[0].data.decode()
    assert "multipart/report; report-type=delivery-status" in report
    for needle in ("Final-Recipient: rfc822; gone@dst.test", "Status: 5.1.1",
                   "Diagnostic-Code: smtp; 550 5.1.1", "Final-Recipient: rfc822; x@null.test",
                   "Status: 5.1.10",
                   "Final-Recipient: rfc822; y@does-not-exist.test", "Remote-MTA: dns; mx.dst.test"):
        assert needle in report, needle
    assert "ok@dst.test" not in report.split("message/delivery-status")[1].split("text/rfc822-headers")[0]
    nx = [a for a in await attempts(spool, qid) if a["host"] is None and "does-not-exist" in a["transcript"]]
    assert len(nx) == 1 and "550 5.1.2" in nx[0]["transcript"] and nx[0]["result"] == "bounced"
    # the deferred recipient is retried once its time comes
    sink.faults.rcpt = {}
    clock.t = T0 + 301
    await sched.run_burst()
    assert (await recipients(spool, qid))["later@dst.test"]["status"] == "delivered"
    assert sorted(sink.recipients()) == ["alice@src.test", "later@dst.test", "ok@dst.test"]


async def test_greylisting_wait_is_honoured(env, sink):
    spool, clock, make = env
    sink.faults.greylist = 120
    qid = await enqueue(spool, ["g@dst.test"])
    sched = make()
    await sched.run_burst()
    r = (await recipients(spool, qid))["g@dst.test"]
    assert r["status"] == "deferred" and r["next_attempt_at"] == pytest.approx(T0 + 125)
    clock.t = T0 + 126
    await sched.run_burst()
    assert (await recipients(spool, qid))["g@dst.test"]["status"] == "delivered"


async def test_expiry_on_every_path(env, sink):
    spool, clock, make = env
    never = await enqueue(spool, ["never@dst.test"])       # held: never attempted within its lifetime
    await spool.hold(never)
    sink.faults.mail = "421 4.3.2 busy"
    tried = await enqueue(spool, ["tried@dst.test"])
    sched = make(delivery={"max_lifetime": 600, "dsn": False})
    clock.t = T0 + 400
    await sched.run_burst()
    r = (await recipients(spool, tried))["tried@dst.test"]
    assert r["status"] == "deferred" and r["next_attempt_at"] == pytest.approx(T0 + 599)   # pulled in
    clock.t = T0 + 599
    await sched.run_burst()
    r = (await recipients(spool, tried))["tried@dst.test"]
    assert (r["status"], r["reason"], r["last_enhanced"]) == ("failed", "expired", "4.4.7")
    assert "421 4.3.2 busy" in r["last_text"]
    await spool.release(never)
    clock.t = T0 + 600
    await sched.run_burst()
    r = (await recipients(spool, never))["never@dst.test"]
    assert (r["status"], r["reason"], r["attempts"]) == ("failed", "expired", 0)
    assert await attempts(spool, never) == [] and sink.messages == []


async def test_cancel_and_resend(env, sink):
    spool, clock, make = env
    qid = await enqueue(spool, ["c@dst.test"])
    assert await spool.cancel(qid) == 1
    sched = make()
    await sched.run_burst()
    assert (await recipients(spool, qid))["c@dst.test"]["status"] == "cancelled" and sink.messages == []
    assert await spool.resend(qid) == 1
    await sched.run_burst()
    assert (await recipients(spool, qid))["c@dst.test"]["status"] == "delivered"
    assert await spool.resend(qid) == 1
    await sched.run_burst()
    assert sink.recipients() == ["c@dst.test", "c@dst.test"]


async def test_no_dsn_to_null_sender_and_dsn_switch(env, sink):
    spool, clock, make = env
    sink.faults.rcpt = {"gone@dst.test": "550 5.1.1 unknown"}
    await enqueue(spool, ["gone@dst.test"], sender="")
    await enqueue(spool, ["gone@dst.test"], sender="bob@src.test")
    await make(delivery={"dsn": False}).run_burst()
    assert sink.messages == []
    await enqueue(spool, ["gone@dst.test"], sender="")
    await make().run_burst()
    assert sink.messages == []


async def test_smarthost_route_by_from_with_auth_and_dkim(env, sink, tmp_path):
    spool, clock, make = env
    hub = await Sink(tls=True, users={"relay-user": "hub-secret"}).start()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "src.key"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    routes = [RouteConfig(name="hub", host="127.0.0.1", port=hub.port, tls="starttls", tls_verify=False,
                          username="relay-user", password="hub-secret", from_domains=["src.test"])]
    dk = DKIMConfig(enabled=True, domains={"src.test": DKIMKeyConfig("s1", str(key_file))})
    sched = make(routes=routes, dkim=dk)
    via_hub = await enqueue(spool, ["a@dst.test", "b@dst.test"])
    direct = await enqueue(spool, ["c@dst.test"], sender="x@other.test", frm="X <x@other.test>")
    await sched.run_burst()
    assert [m.rcpts for m in hub.messages] == [["a@dst.test", "b@dst.test"]]
    assert hub.messages[0].auth_user == "relay-user" and hub.messages[0].tls
    assert [m.rcpts for m in sink.messages] == [["c@dst.test"]]
    signed = hub.messages[0].data
    assert signed.startswith(b"DKIM-Signature:") and signed.endswith(body())
    txt = dns_record(key).encode()
    assert dkimpy.verify(signed, dnsfunc=lambda name, timeout=5: txt)
    assert b"DKIM-Signature" not in sink.messages[0].data          # no key for other.test
    r = (await recipients(spool, via_hub))["a@dst.test"]
    assert r["route"] == "hub" and r["status"] == "delivered"
    att = (await attempts(spool, via_hub))[0]
    assert att["route"] == "hub" and "hub-secret" not in att["transcript"]
    assert (await recipients(spool, direct))["c@dst.test"]["route"] == "mx"
    await hub.stop()


async def test_dead_destination_is_parked_and_probed_once_per_interval(env, sink):
    spool, clock, make = env
    for i in range(6):
        await enqueue(spool, [f"r{i}@dst.test"])
    await make(delivery={"per_destination": 1, "messages_per_connection": 4}).run_burst()
    assert len(sink.messages) == 6 and sink.connections == 2      # 4 + 2 messages on two connections
    await sink.stop()
    qids = [await enqueue(spool, [f"d{i}@dst.test"]) for i in range(5)]
    sched = make(delivery={"per_destination": 1})
    await sched.run_burst()
    # the first transaction finds nobody: the destination is parked; the others wait without an attempt
    tried = [q for q in qids if await attempts(spool, q)]
    assert len(tried) == 1
    r = next(iter((await recipients(spool, tried[0])).values()))
    assert r["status"] == "deferred" and r["last_enhanced"] == "4.4.1"
    [failed] = await attempts(spool, tried[0])      # a connect failure still names where it went
    assert (failed["host"], failed["ip"], failed["result"]) == ("mx.dst.test", "127.0.0.1", "deferred")
    assert REGISTRY.get_sample_value("relaybox_delivery_destinations_down") == 1
    [down] = sched.destinations.status()
    assert down.key == "mx:dst.test" and down.failures == 1 and down.next_probe == pytest.approx(T0 + 30)
    waiting = [q for q in qids if q not in tried]
    for q in waiting:           # handed back until the probe: no result, no event, no attempt
        r = next(iter((await recipients(spool, q)).values()))
        assert (r["status"], r["attempts"], r["next_attempt_at"]) == ("queued", 0, pytest.approx(T0 + 30))
        assert r["last_text"].startswith("waiting: mx:dst.test unreachable since") and r["last_code"] == 421
    def count_events(c):
        return c.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    events_before = await spool.store.db.read(count_events)
    for q in qids:
        await spool.retry_now(q)          # an admin's "retry now" does not hammer a dead destination
    await sched.run_burst()
    assert sum([len(await attempts(spool, q)) for q in qids]) == 1
    events_after = await spool.store.db.read(count_events)
    assert events_after == events_before + 5      # the five "retry-now" events, nothing per claim
    # at the probe time exactly one transaction goes; it fails: parked again for a longer interval
    clock.t = T0 + 31
    await sched.run_burst()
    assert sum([len(await attempts(spool, q)) for q in qids]) == 2
    [down] = sched.destinations.status()
    assert down.failures == 2 and down.next_probe == pytest.approx(T0 + 31 + 60)
    assert REGISTRY.get_sample_value("relaybox_delivery_in_flight_recipients") == 0
    assert REGISTRY.get_sample_value("relaybox_delivery_transactions_active") == 0
    assert REGISTRY.get_sample_value("relaybox_delivery_transaction_seconds_count", {"kind": "mx"}) >= 4


async def test_results_that_cannot_be_written_wait_and_land_without_a_repeat(env, sink, monkeypatch):
    import relay.delivery.scheduler as scheduler_mod
    from store import StorageError

    monkeypatch.setattr(scheduler_mod, "RECORD_RETRIES", (0.01, 0.01))
    spool, clock, make = env
    qid = await enqueue(spool, ["full@dst.test"])
    sched = make()
    db = spool.store.db
    original = sched._record
    failing = {"on": True}

    async def record_while_full(*a, **kw):
        if failing["on"]:
            raise StorageError("commit failed: database or disk is full")
        return await original(*a, **kw)

    monkeypatch.setattr(sched, "_record", record_while_full)
    await sched.run_burst(max_seconds=5)
    assert len(sink.messages) == 1                         # delivered once; its result could not be written
    assert sched.stats.get("delivered", 0) == 0 and len(sched._unrecorded) == 1
    r = next(iter((await recipients(spool, qid)).values()))
    assert r["status"] == "sending"
    failing["on"] = False                                  # space is back
    await sched.run_burst(max_seconds=5)
    r = next(iter((await recipients(spool, qid)).values()))
    assert r["status"] == "delivered" and r["leased_until"] is None
    assert len(sink.messages) == 1 and not sched._unrecorded    # written, never sent again
    assert db.last_error is None


async def test_verp_return_path_per_recipient(env, sink):
    spool, clock, make = env
    bounces = BouncesConfig(domain="bounce.test", secret="0123456789abcdef-secret")
    qid = await enqueue(spool, ["a@dst.test", "b@dst.test"])
    await make(bounces=bounces).run_burst()
    assert sorted(m.rcpts[0] for m in sink.messages) == ["a@dst.test", "b@dst.test"]
    rs = await recipients(spool, qid)
    for m in sink.messages:
        assert m.sender.startswith("bounces+") and m.sender.endswith("@bounce.test")
        target = verp.decode(m.sender, secrets=verp.load_secrets(bounces), domain="bounce.test")
        assert (target.queue_id, target.recipient_id) == (qid, rs[m.rcpts[0]]["id"])
    assert sink.connections == 1 and all(r["status"] == "delivered" for r in rs.values())


async def test_suppressed_recipient_fails_without_attempt(env, sink):
    spool, clock, make = env
    await spool.store.bounces.suppress("Blocked@dst.test", "hard bounce", "hard", "test",
                                       expires_at=T0 + 86400)
    qid = await enqueue(spool, ["blocked@dst.test", "fine@dst.test"])
    await make(delivery={"dsn": False}).run_burst()
    rs = await recipients(spool, qid)
    assert (rs["blocked@dst.test"]["status"], rs["blocked@dst.test"]["reason"],
            rs["blocked@dst.test"]["attempts"]) == ("failed", "suppressed", 0)
    assert rs["fine@dst.test"]["status"] == "delivered" and sink.recipients() == ["fine@dst.test"]


async def test_slow_destination_does_not_starve_others_and_per_domain_limit_holds(env, sink):
    spool, clock, make = env
    slow = await Sink(host="127.0.0.2", port=sink.port).start()
    slow.faults.data_delay = 0.5
    slow_ids = [await enqueue(spool, [f"s{i}@slow.test"]) for i in range(8)]
    fast_ids = [await enqueue(spool, [f"f{i}@dst.test"]) for i in range(5)]
    sched = make(delivery={"per_domain": {"slow.test": 2}})
    await sched.start()
    try:
        async def all_status(ids, status):
            for q in ids:
                if next(iter((await recipients(spool, q)).values()))["status"] != status:
                    return False
            return True

        for _ in range(100):
            if await all_status(fast_ids, "delivered"):
                break
            await asyncio.sleep(0.05)
        assert await all_status(fast_ids, "delivered")
        assert len(slow.messages) < 8               # the fast destination did not wait for the slow one
        for _ in range(200):
            if await all_status(slow_ids, "delivered"):
                break
            await asyncio.sleep(0.05)
        assert await all_status(slow_ids, "delivered")
        assert slow.max_active <= 2                  # per-domain override of the connection limit
    finally:
        await sched.stop(5)
        await slow.stop()


async def test_delay_notice_once_per_message_when_enabled(env, sink):
    spool, clock, make = env
    sink.faults.rcpt = {"slowbox@dst.test": "451 4.2.1 mailbox busy"}
    qid = await enqueue(spool, ["slowbox@dst.test"])
    sched = make(delivery={"delay_notice": True, "delay_notice_after": 600})
    await sched.run_burst()                                  # first failure: not late yet
    assert [m for m in sink.messages if m.sender == ""] == []
    for t in (T0 + 700, T0 + 1400, T0 + 3000):               # late: one notice, then never again
        clock.t = t
        await spool.retry_now(qid)
        await sched.run_burst()
    notices = [m for m in sink.messages if m.sender == ""]
    assert len(notices) == 1 and notices[0].rcpts == ["alice@src.test"]
    text = notices[0].data.decode()
    assert "Subject: Delayed Mail (still being retried)" in text and "Action: delayed" in text
    assert "Status: 4.2.1" in text
    assert (await recipients(spool, qid))["slowbox@dst.test"]["status"] == "deferred"


async def test_graceful_stop_hands_unfinished_work_back(env, sink):
    spool, clock, make = env
    sink.faults.data_delay = 3.0
    qid = await enqueue(spool, ["wait@dst.test"])
    sched = make()
    await sched.start()
    for _ in range(100):
        if any(c[0] == "RCPT" for c in sink.commands):
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    await sched.stop(timeout=0.2)                # DATA still waiting: cancelled and released
    r = (await recipients(spool, qid))["wait@dst.test"]
    assert (r["status"], r["attempts"], r["leased_until"]) == ("queued", 0, None)
    crash = await spool.store.db.read(lambda c: c.execute("SELECT crash_count FROM messages").fetchone()[0])
    assert crash == 0                            # a clean stop is not a crash (poison accounting)
    sink.faults.data_delay = 0
    await make().run_burst()
    assert (await recipients(spool, qid))["wait@dst.test"]["status"] == "delivered"


async def test_next_mx_after_a_4xx_greeting_and_the_transcript_shows_both(env, sink):
    spool, clock, make = env
    busy = await Sink(host="127.0.0.3", port=sink.port).start()
    busy.faults.greeting = "421 4.3.2 Too many connections, try another MX"
    qid = await enqueue(spool, ["x@two.test"])
    await make().run_burst()
    await busy.stop()
    assert (await recipients(spool, qid))["x@two.test"]["status"] == "delivered"
    att = (await attempts(spool, qid))[0]
    assert att["host"] == "mx.dst.test"
    lines = [e["line"] for e in json.loads(att["transcript"])]
    assert lines[0].startswith("connect busy.two.test [127.0.0.3]")
    assert "421 4.3.2 Too many connections, try another MX" in lines
    assert any(x.startswith("connect mx.dst.test [127.0.0.1]") for x in lines)
