"""The DATA framing that relay/delivery/aiosmtplib_seam.py puts into aiosmtplib gives aiosmtplib's own
results for every body: random bodies over an alphabet rich in CR, LF and dots, hostile edge cases, and a
real session through it (dot-stuffed on the wire, unstuffed by the receiver)."""

import random

import aiosmtplib.protocol as protocol
import pytest

from relay.delivery import aiosmtplib_seam, transport  # noqa: F401 - transport installs the seam
from tests.peers.sink import Sink

pytestmark = pytest.mark.component

ORIGINAL = aiosmtplib_seam._original_normalize
PERIODS = aiosmtplib_seam._ORIGINAL_PERIOD_REGEX

EDGES = [b"", b".", b"..", b"\r", b"\n", b"\r\n", b".\r\n", b"\r\n.", b"\r\n.\r\n", b"a\rb", b"a\nb",
         b"\n.\n.", b"\r\r\n", b"\r\n\n", b".\r.\n.", b"x" * 100_000 + b"\r\n.", b"\r\n\x00.\r\n"]


def framed_by_aiosmtplib(body: bytes) -> bytes:
    return PERIODS.sub(b"..", ORIGINAL(body))


def framed_by_seam(body: bytes) -> bytes:
    return protocol.PERIOD_REGEX.sub(b"..", protocol.normalize_message_line_endings(body))


def test_installed_in_aiosmtplib():
    assert protocol.normalize_message_line_endings is aiosmtplib_seam.normalize_message_line_endings
    assert isinstance(protocol.PERIOD_REGEX, aiosmtplib_seam._LineStartDots)


@pytest.mark.parametrize("body", EDGES)
def test_edge_cases_frame_as_aiosmtplib_does(body):
    assert framed_by_seam(body) == framed_by_aiosmtplib(body)


def test_random_bodies_frame_as_aiosmtplib_does():
    rng = random.Random(20261202)
    alphabet = [b"\r", b"\n", b"\r\n", b".", b"a", b" ", b"\x00", "é".encode()]
    for _ in range(5000):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        assert framed_by_seam(body) == framed_by_aiosmtplib(body), body


def test_other_calls_reach_the_real_pattern():
    assert protocol.PERIOD_REGEX.sub(b"!", b".a\n.b") == PERIODS.sub(b"!", b".a\n.b")
    assert protocol.PERIOD_REGEX.pattern == PERIODS.pattern
    assert protocol.PERIOD_REGEX.findall(b".a\n.b") == PERIODS.findall(b".a\n.b")


async def test_a_session_through_the_seam_delivers_the_body_unchanged():
    sink = await Sink().start()
    body = b"Subject: dots\r\n\r\n.starts with a dot\r\n..two\r\n.\r\nend\r\n" + (b"y" * 900 + b"\r\n") * 60
    try:
        session = await transport.open_session([transport.Candidate("localhost", "127.0.0.1", sink.port)],
                                               helo="relay.test", tls=transport.TLSPolicy("none"))
        t = await session.send("a@src.test", ["b@dst.test"], body)
        await session.close()
        assert t.results == {"b@dst.test": None}
        assert sink.messages[0].data == body
    finally:
        await sink.stop()
