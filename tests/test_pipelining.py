"""Outbound PIPELINING (RFC 2920) against Postfix's smtp-sink, a real receiver that announces it: MAIL,
every RCPT and DATA leave in one write and their replies are read in order (also when they arrive
together), refusals at each stage are classified as in the sequential exchange, a disconnect breaks the
session, and a server without PIPELINING gets the sequential exchange."""

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from relay.delivery import transport
from relay.delivery.transport import Candidate, TLSPolicy, open_session
from tests.peers.ports import free_port

pytestmark = pytest.mark.integration

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
BODY = b"From: a@src.test\r\nTo: b@dst.test\r\nSubject: p\r\n\r\n.leading dot\r\nbody\r\n"


class Sink:
    """smtp-sink with extra options (-f: hard-reject commands, -r: soft-reject, -q: hang up, -p: no
    PIPELINING), dumping each transaction to a file."""

    def __init__(self, *opts: str):
        self.opts, self.port = list(opts), free_port()
        self.dir = ""

    def __enter__(self) -> "Sink":
        self.dir = os.path.join("/tmp", f"pipe-sink-{self.port}")
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o777)
        self.proc = subprocess.Popen([SMTP_SINK, "-u", "nobody", "-d", f"{self.dir}/%M%S.", *self.opts,
                                      f"127.0.0.1:{self.port}", "16"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("smtp-sink did not start")

    def dumps(self) -> list[bytes]:
        time.sleep(0.1)
        out = []
        for name in sorted(os.listdir(self.dir)):
            with open(os.path.join(self.dir, name), "rb") as fh:
                out.append(fh.read())
        return out

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


async def session(sink: Sink) -> transport.Session:
    return await open_session([Candidate("sink.test", "127.0.0.1", sink.port)], helo="relay.test",
                              tls=TLSPolicy("none"), command_timeout=5)


def count_writes(s: transport.Session) -> list[bytes]:
    """Every write the session's protocol makes from now on."""
    proto = s.smtp.protocol
    writes: list[bytes] = []
    real = proto.write

    def write(data: bytes) -> None:
        writes.append(bytes(data))
        real(data)

    proto.write = write
    return writes


def sent(tx: transport.Transaction) -> list[str]:
    return [ln["line"] for ln in tx.transcript if ln["dir"] == "C"]


async def test_one_write_for_mail_rcpts_and_data_then_the_body():
    with Sink() as sink:
        s = await session(sink)
        try:
            assert isinstance(s.smtp.protocol, transport.aiosmtplib_seam.PipeliningProtocol)
            rcpts = ["b@dst.test", "c@dst.test", "d@dst.test"]
            writes = count_writes(s)
            tx = await s.send("a@src.test", rcpts, BODY)
            assert writes == [b"MAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\nRCPT TO:<c@dst.test>\r\n"
                              b"RCPT TO:<d@dst.test>\r\nDATA\r\n", BODY.replace(b"\n.", b"\n..") + b".\r\n"]
            assert tx.results == {r: None for r in rcpts}
            assert sent(tx)[-6:] == ["MAIL FROM:<a@src.test>", "RCPT TO:<b@dst.test>",
                                     "RCPT TO:<c@dst.test>", "RCPT TO:<d@dst.test>", "DATA",
                                     f"<{len(BODY)} octets>"]
            assert tx.reply is not None and tx.reply[0] == 250
            tx2 = await s.send("a@src.test", ["e@dst.test"], BODY)       # the session goes on
            assert tx2.results == {"e@dst.test": None} and tx2.reused
        finally:
            await s.close()
        dumps = sink.dumps()
        assert len(dumps) == 2
        assert b"\n..leading dot\n" not in dumps[0] and b"\n.leading dot\n" in dumps[0]   # un-stuffed there


@pytest.mark.parametrize("opt, stage, temporary", [("-f", "rcpt", False), ("-r", "rcpt", True),
                                                   ("-f", "mail", False), ("-r", "mail", True),
                                                   ("-f", "data", False), ("-r", "data", True)])
async def test_refusals_at_each_stage(opt, stage, temporary):
    with Sink(opt, stage) as sink:
        s = await session(sink)
        try:
            tx = await s.send("a@src.test", ["b@dst.test", "c@dst.test"], BODY)
            for err in tx.results.values():
                assert err is not None and err.stage == stage and err.temporary is temporary
                assert str(err.code)[0] == ("4" if temporary else "5")
            assert s.is_open                                  # RSET, and the session is reusable
            assert sent(tx)[-1] == "RSET"
        finally:
            await s.close()
        assert sink.dumps() == []                            # nothing was accepted


async def test_a_hang_up_in_the_group_breaks_the_session_and_defers():
    with Sink("-q", "rcpt") as sink:
        s = await session(sink)
        try:
            tx = await s.send("a@src.test", ["b@dst.test"], BODY)
            err = tx.results["b@dst.test"]
            assert err is not None and err.temporary
            assert not s.is_open
        finally:
            await s.close()


async def test_a_server_without_pipelining_gets_one_command_at_a_time():
    with Sink("-p") as sink:
        s = await session(sink)
        try:
            assert not s.smtp.supports_extension("pipelining")
            writes = count_writes(s)
            tx = await s.send("a@src.test", ["b@dst.test", "c@dst.test"], BODY)
            assert tx.results == {"b@dst.test": None, "c@dst.test": None}
            assert [w.split(b" ")[0].rstrip() for w in writes[:4]] == [b"MAIL", b"RCPT", b"RCPT", b"DATA"]
            assert len(writes) == 5                          # four commands and the body
        finally:
            await s.close()
        assert len(sink.dumps()) == 1
