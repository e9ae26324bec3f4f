"""A body intake found framed (CRLF only, no line starting with a dot) goes on the wire after DATA as it
is, without the delivery side's line-end check and dot-stuffing; anything else is framed as before. The
danger is a body wrongly called framed: a line holding a single dot would end DATA early at the next hop
(the rest of the message read as commands). These tests send such bodies end to end."""

from __future__ import annotations

import asyncio
import smtplib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.delivery.attempt import Delivery
from relay.envelope import NewMessage
from relay.framing import is_framed
from relay.intake.data import check_and_clean, content_framed
from relay.intake.headers import prepare_message
from tests.peers.relaybox_proc import RelayboxProcess
from tests.test_handoff import _true, env, wait_for  # noqa: F401 - env is a fixture
from tests.test_pipelining import Sink as PipeSink
from tests.test_pipelining import session as pipe_session

pytestmark = pytest.mark.component


def test_small_pieces():
    assert is_framed(b"")
    assert is_framed(b"DKIM-Signature: v=1;\r\n\tb=abc\r\n")
    assert not is_framed(b"X: a\r\n.\r\n")          # a line that is a lone dot
    assert not is_framed(b".X: a\r\n")               # a line starting with a dot
    assert not is_framed(b"X: a\nY: b\r\n")          # a bare LF
    assert not is_framed(b"X: a\rY: b\r\n")          # a bare CR
    assert not is_framed(b"X: a\r\n\r")              # no final CRLF
    assert not is_framed(b"X: a")


@pytest.mark.parametrize("raw, framed", [
    (b"Subject: a\r\n\r\nline\r\n", True),
    (b"Subject: a\r\n\r\n..hidden\r\n", False),       # un-stuffed: ".hidden" must be stuffed again
    (b"..Subject: a\r\n\r\nx\r\n", False),             # the first line too
    (b"Subject: a\r\n\r\nx\r.y\r\n", False),           # bare CR repaired: "\r\n.y" now starts a line
    (b"Subject: a\r\n\r\nx\n.y\r\n", False),           # bare LF repaired
    (b"Subject: a\r\n\r\nx\r\n\0.y\r\n", False),       # NUL stripped: ".y" now starts a line
])
def test_intake_knows_what_it_did_not_change(raw, framed):
    content, err = check_and_clean(raw, bare_lf="normalize", max_line=998, nul="strip")
    assert err is None and content is not None
    assert content_framed(raw, content) is framed
    if not framed:      # every one of these needs framing work on the wire, which is why it is not framed
        assert not is_framed(content) or content != raw


def test_the_fields_intake_adds_keep_or_lose_it():
    content = b"Subject: a\r\n\r\nbody\r\n"
    kw = dict(hostname="relay.test", helo="client.test", client_ip="192.0.2.1", tls=False, auth=False,
              rcpts=["b@dst.test"])
    assert prepare_message(content, framed=True, **kw).framed
    assert not prepare_message(content, framed=False, **kw).framed
    assert not prepare_message(b"Subject: a\n\nbody\n", framed=True, **kw).framed   # LF-only block


def as_dumped(message: bytes) -> bytes:
    """A message as smtp-sink -d writes it after its own fields: LF line ends and one more LF."""
    return message.replace(b"\r\n", b"\n") + b"\n"


def dumped(dump: bytes) -> bytes:
    return dump.split(b"(UTC)\n", 1)[1]          # after the Received field smtp-sink puts in front


async def test_the_wire_gets_the_same_message_either_way():
    """Against Postfix's smtp-sink, which announces PIPELINING (the pipelined exchange sends the body)."""
    body = b"Subject: s\r\n\r\nfirst\r\nsecond\r\n"
    cases = [(b"", True), (b"X-Added: 1\r\n", True), (b".X-Bad: 1\r\n", True), (b"", False)]
    with PipeSink() as sink:
        for prefix, framed in cases:
            s = await pipe_session(sink)
            tx = await s.send("a@src.test", ["b@dst.test"], body, prefix=prefix, framed=framed)
            await s.close()
            assert tx.results == {"b@dst.test": None}
        # a body without its final CRLF is never sent as it is (it would run into the terminator)
        s = await pipe_session(sink)
        tx = await s.send("a@src.test", ["b@dst.test"], b"Subject: s\r\n\r\nno end", framed=True)
        await s.close()
        assert tx.results == {"b@dst.test": None}
        got = [dumped(d) for d in sink.dumps()]
    want = [as_dumped(prefix + body) for prefix, _ in cases]
    assert sorted(got) == sorted([*want, as_dumped(b"Subject: s\r\n\r\nno end\r\n")])   # dump order: random


async def test_a_handed_off_framed_body_is_sent_framed_and_others_not(env, monkeypatch):  # noqa: F811
    spool, sched, sink = env                 # tests/test_handoff.py's scheduler on a Sink
    seen: dict[str, bool] = {}
    real = Delivery.deliver

    async def recording(self, message, recipients, body, route=None, *, framed=False):
        seen[message.id] = framed
        return await real(self, message, recipients, body, route, framed=framed)

    monkeypatch.setattr(Delivery, "deliver", recording)
    spool.handoff = sched
    await sched.start()
    await wait_for(lambda: _true(sched.handoff_lease() is not None))     # first round: the queue is empty
    body = b"Subject: s\r\n\r\nx\r\n"
    a = await spool.enqueue(NewMessage("a@src.test", ["b@dst.test"], body, framed=True))
    b = await spool.enqueue(NewMessage("a@src.test", ["b@dst.test"], body))
    await wait_for(lambda: _true(len(sink.messages) >= 2))
    assert seen == {a: True, b: False}
    assert [m.data for m in sink.messages] == [body, body]


DOTTED = (b"From: a@src.test\r\nTo: b@dst.test\r\nSubject: dots\r\n\r\n"
          b"before\r\n.\r\n..\r\n.leading\r\nQUIT\r\n.\r\nafter\r\n")
PLAIN = b"From: a@src.test\r\nTo: b@dst.test\r\nSubject: plain\r\n\r\nno dots here\r\n"


@pytest.mark.parametrize("dkim", [False, True])
async def test_bodies_with_and_without_dots_arrive_whole_through_relaybox(tmp_path, dkim):
    """The real intake (which un-stuffs) hands the message to delivery (which must stuff it again, or
    send it as it is when nothing needed stuffing), with and without a DKIM field put in front; the next
    hop is Postfix's smtp-sink (PIPELINING: the exchange that sends framed bodies as they are)."""
    with PipeSink() as sink:
        sections: dict = {"[[routes]]": [{"name": "sink", "host": "127.0.0.1", "port": sink.port,
                                           "tls": "none", "default": True}],
                          "delivery": {"poll_interval": 0.1}}
        if dkim:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            (tmp_path / "src.key").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            sections["dkim"] = {"enabled": True}
            sections['dkim.domains."src.test"'] = {"selector": "t", "key_file": str(tmp_path / "src.key")}
        relay = RelayboxProcess(str(tmp_path / "rb"), sections).start()
        try:
            def send(*bodies: bytes) -> None:
                with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=10) as c:
                    for body in bodies:
                        c.sendmail("a@src.test", ["b@dst.test"], body)   # smtplib dot-stuffs on the wire

            async def delivered(n: int) -> list[bytes]:
                for _ in range(250):
                    if len(got := sink.dumps()) >= n:
                        return got
                    await asyncio.sleep(0.02)
                return sink.dumps()

            # once the first is delivered the queue is empty: the next ones are handed off from intake
            await asyncio.to_thread(send, PLAIN)
            await delivered(1)
            await asyncio.to_thread(send, DOTTED, PLAIN)
            await delivered(3)
            await asyncio.sleep(0.3)              # anything more (a message split in two) would show
            dumps = sink.dumps()
        finally:
            relay.stop()
    assert len(dumps) == 3, dumps
    dots = [d for d in dumps if b"Subject: dots" in d]
    assert len(dots) == 1 and dots[0].endswith(as_dumped(DOTTED.split(b"\r\n\r\n", 1)[1]))
    assert all(d.endswith(as_dumped(PLAIN.split(b"\r\n\r\n", 1)[1])) for d in dumps if d not in dots)
    assert all((b"DKIM-Signature:" in d) is dkim for d in dumps)
