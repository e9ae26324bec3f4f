"""The SMTP client session against the aiosmtpd sink with injected faults (real sockets on loopback)."""

import pytest

from relay.delivery.transport import Candidate, ConnectionPool, TLSPolicy, open_session
from relay.errors import DeliveryError
from tests.peers.ports import free_port
from tests.peers.sink import Sink

pytestmark = pytest.mark.component

BODY = b"From: a@src.test\r\nTo: b@dst.test\r\nSubject: t\r\n\r\nhello\r\n.leading dot\r\n"


def cand(s):
    return Candidate("localhost", "127.0.0.1", s.port)


def lines(tr):
    return [f"{e['dir']}: {e['line']}" for e in tr]


async def test_delivers_with_opportunistic_starttls_and_keeps_a_transcript(sink):
    session = await open_session([cand(sink)], helo="relay.test")
    t = await session.send("a@src.test", ["b@dst.test", "c@dst.test"], BODY)
    await session.close()
    assert t.results == {"b@dst.test": None, "c@dst.test": None}
    assert t.tls and sink.messages[0].tls
    assert sink.messages[0].rcpts == ["b@dst.test", "c@dst.test"]
    assert sink.messages[0].data.replace(b"\r\n", b"\n") == BODY.replace(b"\r\n", b"\n")
    text = lines(t.transcript)
    assert text[0].startswith("C: connect localhost [127.0.0.1]")
    assert any(line.startswith("S: 220") for line in text)
    assert "C: STARTTLS" in text
    assert "C: MAIL FROM:<a@src.test> SIZE=%d" % len(BODY) in text
    assert "C: RCPT TO:<c@dst.test>" in text
    assert text[-1] == "S: 250 2.0.0 OK queued"
    assert not any("hello" in line for line in text), "the body never goes into the transcript"


async def test_per_recipient_results_mixed(sink):
    sink.faults.rcpt = {"gone@dst.test": "550 5.1.1 no such user", "full@dst.test": "452 4.2.2 mailbox full",
                        "quota@dst.test": "552 5.2.2 over quota"}
    session = await open_session([cand(sink)], helo="relay.test")
    t = await session.send("a@src.test", ["ok@dst.test", "gone@dst.test", "full@dst.test", "quota@dst.test"],
                           BODY)
    r = t.results
    assert r["ok@dst.test"] is None
    assert (r["gone@dst.test"].code, r["gone@dst.test"].enhanced, r["gone@dst.test"].status) == \
        (550, "5.1.1", "bounced")
    assert r["full@dst.test"].status == "deferred"
    assert r["quota@dst.test"].status == "deferred"    # 552 at RCPT is temporary
    assert sink.messages[0].rcpts == ["ok@dst.test"]
    await session.close()


@pytest.mark.parametrize("stage,reply,status", [("mail", "451 4.3.0 try later", "deferred"),
                                                ("mail", "553 5.7.1 sender rejected", "bounced"),
                                                ("data", "554 5.7.1 spam", "bounced"),
                                                ("data", "451 4.3.0 local error", "deferred")])
async def test_errors_at_mail_and_data_apply_to_all_recipients(sink, stage, reply, status):
    setattr(sink.faults, stage, reply)
    session = await open_session([cand(sink)], helo="relay.test")
    t = await session.send("a@src.test", ["x@dst.test", "y@dst.test"], BODY)
    code = int(reply[:3])
    assert {a: (e.code, e.status) for a, e in t.results.items()} == {
        "x@dst.test": (code, status), "y@dst.test": (code, status)}
    # the session survives a rejected transaction and can carry the next one
    setattr(sink.faults, stage, None)
    t2 = await session.send("a@src.test", ["z@dst.test"], BODY)
    assert t2.results == {"z@dst.test": None} and t2.reused
    await session.close()


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data"])
async def test_dropped_connection_is_temporary(sink, stage):
    sink.faults.drop_at = stage
    session = await open_session([cand(sink)], helo="relay.test")
    t = await session.send("a@src.test", ["x@dst.test"], BODY)
    err = t.results["x@dst.test"]
    assert isinstance(err, DeliveryError) and err.temporary and err.status == "deferred"
    assert not session.is_open
    await session.close()


async def test_next_host_after_refused_connection_and_4xx_greeting(sink):
    busy = await Sink().start()
    busy.faults.greeting = "421 4.3.2 too busy"
    tr = []
    dead = Candidate("dead.test", "127.0.0.1", free_port())
    session = await open_session([dead, Candidate("busy.test", "127.0.0.1", busy.port), cand(sink)],
                                 helo="relay.test", transcript=tr)
    assert session.candidate.port == sink.port
    text = lines(tr)
    assert any("dead.test" in line for line in text)
    assert "S: 421 4.3.2 too busy" in text
    await session.close()
    await busy.stop()


async def test_all_hosts_fail_raises_the_last_error():
    with pytest.raises(DeliveryError) as ei:
        await open_session([Candidate("dead.test", "127.0.0.1", free_port())], helo="relay.test",
                           connect_timeout=2)
    assert ei.value.temporary and ei.value.enhanced == "4.4.1"


async def test_crlf_injection_never_reaches_the_wire(sink):
    session = await open_session([cand(sink)], helo="relay.test")
    evil = "x@dst.test>\r\nRCPT TO:<victim@elsewhere.test"
    t = await session.send("a@src.test", [evil, "ok@dst.test"], BODY)
    assert t.results[evil].status == "failed" and t.results[evil].reason == "invalid"
    assert t.results["ok@dst.test"] is None
    assert [c[1] for c in sink.commands if c[0] == "RCPT"] == ["ok@dst.test"]
    t = await session.send("a@src.test\r\nRSET", ["ok@dst.test"], BODY)
    assert t.results["ok@dst.test"].status == "failed"
    await session.close()


async def test_route_with_required_starttls_and_auth_keeps_secrets_out():
    s = await Sink(tls=True, users={"user1": "s3cret-pw"}).start()
    tr = []
    session = await open_session([cand(s)], helo="relay.test", tls=TLSPolicy("starttls", verify=False),
                                 username="user1", password="s3cret-pw", transcript=tr)
    t = await session.send("a@src.test", ["x@dst.test"], BODY)
    assert t.results == {"x@dst.test": None} and s.messages[0].auth_user == "user1"
    blob = repr(t.transcript) + repr(tr)
    assert "s3cret" not in blob and "user1" not in blob and "dXNlcjE" not in blob
    assert any(e["line"].startswith("235") for e in t.transcript)
    await session.close()
    with pytest.raises(DeliveryError) as ei:
        await open_session([cand(s)], helo="relay.test", tls=TLSPolicy("starttls", verify=True),
                           username="user1",
                           password="wrong")   # verify on: self-signed cert fails first
    assert ei.value.enhanced == "4.7.5"
    with pytest.raises(DeliveryError) as ei:
        await open_session([cand(s)], helo="relay.test", tls=TLSPolicy("starttls", verify=False),
                           username="user1", password="wrong")
    assert ei.value.code == 535 and ei.value.stage == "auth" and "wrong" not in str(ei.value)
    await s.stop()


async def test_starttls_required_but_not_offered():
    s = await Sink(tls=False).start()
    with pytest.raises(DeliveryError) as ei:
        await open_session([cand(s)], helo="relay.test", tls=TLSPolicy("starttls", verify=False))
    assert ei.value.enhanced == "4.7.4"
    await s.stop()


async def test_implicit_tls():
    s = await Sink(implicit_tls=True).start()
    session = await open_session([cand(s)], helo="relay.test", tls=TLSPolicy("implicit", verify=False))
    t = await session.send("a@src.test", ["x@dst.test"], BODY)
    assert t.results == {"x@dst.test": None} and t.tls and s.messages[0].tls
    await session.close()
    with pytest.raises(DeliveryError) as ei:               # verification on: the self-signed cert fails
        await open_session([cand(s)], helo="relay.test", tls=TLSPolicy("implicit", verify=True))
    assert ei.value.enhanced == "4.7.5"
    with pytest.raises(DeliveryError) as ei:
        await open_session([Candidate("localhost", "127.0.0.1", free_port())], helo="relay.test",
                           tls=TLSPolicy("implicit", verify=False))
    assert ei.value.enhanced == "4.4.1"
    await s.stop()


async def test_pool_reuses_a_connection_up_to_the_limit(sink):
    pool = ConnectionPool(max_messages=3, idle_timeout=30)
    for i in range(7):
        session = pool.take("k") or await open_session([cand(sink)], helo="relay.test")
        t = await session.send("a@src.test", [f"r{i}@dst.test"], BODY)
        assert t.results[f"r{i}@dst.test"] is None
        await pool.give_back("k", session)
    await pool.close_all()
    assert len(sink.messages) == 7 and sink.connections == 3


async def test_opportunistic_starttls_falls_back_to_plaintext_when_the_handshake_fails():
    s = await Sink(tls=True, broken_tls=True).start()
    tr = []
    session = await open_session([cand(s)], helo="relay.test", transcript=tr)
    t = await session.send("a@src.test", ["x@dst.test"], BODY)
    assert t.results == {"x@dst.test": None} and not t.tls and not s.messages[0].tls
    text = lines(tr)
    assert text.count("C: STARTTLS") == 1 and sum(1 for x in text if x.startswith("C: connect")) == 2
    assert any("TLS handshake failed" in x or "TLS failure" in x for x in text), text
    await session.close()
    with pytest.raises(DeliveryError) as ei:      # a route that requires TLS does not fall back
        await open_session([cand(s)], helo="relay.test", tls=TLSPolicy("starttls", verify=False))
    assert ei.value.enhanced == "4.7.5"
    await s.stop()
