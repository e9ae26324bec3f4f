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


async def test_a_server_gone_silent_times_the_read_out_and_a_later_reply_is_read_in_time():
    """read_response's own timer (no asyncio.wait_for): a reply that does not come raises aiosmtplib's
    SMTPReadTimeoutError after the timeout, not before and not much after; one that comes is returned."""
    import asyncio
    import time

    import aiosmtplib

    silent = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 quiet.test ESMTP\r\n")
        while line := await reader.readline():
            if line.upper().startswith((b"EHLO", b"HELO")):
                writer.write(b"250-quiet.test\r\n250 PIPELINING\r\n")
            elif line.upper().startswith(b"NOOP"):
                await asyncio.sleep(0.2)                    # slow, but within the timeout
                writer.write(b"250 2.0.0 Ok\r\n")
            elif silent.is_set():
                continue                                    # never answers again
            else:
                writer.write(b"250 2.1.0 Ok\r\n")
                silent.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=5, use_tls=False, start_tls=False)
    try:
        await client.connect()
        await client.ehlo()
        assert (await client.execute_command(b"NOOP", timeout=1.0)).code == 250
        assert (await client.execute_command(b"MAIL FROM:<a@src.test>", timeout=1.0)).code == 250
        started = time.monotonic()
        with pytest.raises(aiosmtplib.SMTPReadTimeoutError):
            await client.execute_command(b"RCPT TO:<b@dst.test>", timeout=0.5)
        assert 0.45 <= time.monotonic() - started < 2.0
    finally:
        client.close()
        server.close()
        await server.wait_closed()
