"""relaybox's own SMTP server protocol (relay/intake/protocol.py), byte-exact over raw sockets: pipelined
commands answered in order, a message split in any number of writes, STARTTLS command injection, overlong
lines, unknown commands, AUTH challenges across writes, a client that never reads its replies.

In-process listener on a real store, like tests/test_security_intake.py (whose client and fixture it uses).
"""

from __future__ import annotations

import asyncio
import base64
import ssl

import pytest

from tests.peers.certs import make_cert
from tests.test_security_intake import Client, bodies, relay  # noqa: F401 - the fixture is used by name

pytestmark = pytest.mark.component


async def test_pipelined_commands_are_answered_in_order_and_one_message_per_data(relay):  # noqa: F811
    port, db = await relay(reject_unauth_pipelining=False)
    c = await Client.connect(port)
    assert c.banner.startswith("220 relay.test ESMTP")
    c.w.write(b"EHLO client.test\r\nMAIL FROM:<a@org.test>\r\nRCPT TO:<b@example.test>\r\n"
              b"RCPT TO:<c@example.test>\r\nNOOP\r\n")
    ehlo = await c.reply()
    assert ehlo.splitlines()[-1] == "250 HELP" and "250-ENHANCEDSTATUSCODES" in ehlo
    assert [await c.reply() for _ in range(4)] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok",
                                                   "250 2.0.0 OK"]
    assert (await c.cmd("DATA")).startswith("354")
    body = b"Subject: split\r\n\r\n" + b"".join(b"line %d\r\n" % i for i in range(200)) + b".\r\n"
    for i in range(0, len(body), 7):           # the terminator, too, arrives split across writes
        c.w.write(body[i:i + 7])
        await c.w.drain()
    assert (await c.reply()).startswith("250 2.0.0 Ok: queued as ")
    # the next transaction pipelined right after the terminator of this one
    c.w.write(b"MAIL FROM:<a@org.test>\r\nRCPT TO:<d@example.test>\r\n")
    assert [await c.reply() for _ in range(2)] == ["250 2.1.0 Ok", "250 2.1.5 Ok"]
    assert (await c.cmd("DATA")).startswith("354")
    c.w.write(b"Subject: two\r\n\r\nx\r\n.\r\nQUIT\r\n")
    assert (await c.reply()).startswith("250 2.0.0 Ok: queued as ")
    assert await c.reply() == "221 2.0.0 Bye"
    assert await c.closed()
    stored = await bodies(db)
    assert len(stored) == 2 and stored[0].endswith(b"line 199\r\n")


async def test_commands_pipelined_after_starttls_are_discarded(relay, tmp_path):  # noqa: F811
    """The STARTTLS injection (CVE-2011-0411 class): a plaintext command sent in the same write as STARTTLS
    must not be answered inside the TLS session; and the session starts over after the handshake."""
    cert, key = make_cert(str(tmp_path / "tls"))
    from relay.config import TLSConfig
    port, _ = await relay(tls=TLSConfig(cert_file=cert, key_file=key))
    c = await Client.connect(port)
    await c.cmd("EHLO client.test")
    c.w.write(b"STARTTLS\r\nNOOP injected\r\n")
    await c.w.drain()
    assert await c.reply() == "220 2.0.0 Ready to start TLS"
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    await c.w.start_tls(ctx)
    # the injected NOOP was dropped (its 250 would come first), and the session needs a new EHLO first
    assert (await c.cmd("MAIL FROM:<a@org.test>")).startswith("503 5.5.1")
    ehlo = await c.cmd("EHLO client.test")
    assert "STARTTLS" not in ehlo and "250-AUTH LOGIN PLAIN" in ehlo
    assert await c.cmd("MAIL FROM:<a@org.test>") == "250 2.1.0 Ok"
    c.close()


async def test_overlong_lines_unknown_commands_and_bad_syntax(relay):  # noqa: F811
    port, _ = await relay()
    c = await Client.connect(port)
    await c.cmd("EHLO client.test")
    assert (await c.cmd("NOOP " + "x" * 600)).startswith("500 5.5.2 Command line too long")
    c.w.write(b"NOOP " + b"y" * 50_000 + b"\r\n")       # longer than any buffer limit: dropped, answered once
    assert (await c.reply()).startswith("500 5.5.2 Command line too long")
    assert await c.cmd("NOOP") == "250 2.0.0 OK"          # the session goes on
    assert (await c.cmd("")).startswith("500 5.5.2")
    assert (await c.cmd("RCPT TO:<b@example.test>")).startswith("503 5.5.1 Error: need MAIL")
    for _ in range(4):
        assert (await c.cmd("XYZZY")).startswith('500 5.5.1 Error: command "XYZZY" not recognized')
    assert (await c.cmd("XYZZY")).startswith("502 5.5.1 Too many unrecognized commands")
    assert await c.closed()


async def test_auth_login_with_challenges_split_across_writes(relay):  # noqa: F811
    port, _ = await relay()
    c = await Client.connect(port)
    await c.cmd("EHLO client.test")
    assert (await c.cmd("AUTH LOGIN")).startswith("334 ")
    user = base64.b64encode(b"app") + b"\r\n"
    c.w.write(user[:2])
    await c.w.drain()
    await asyncio.sleep(0.05)
    c.w.write(user[2:])
    assert await c.reply() == "334 " + base64.b64encode(b"Password\0").decode()
    assert (await c.cmd(base64.b64encode(b"right-password"))).startswith("235 2.7.0")
    assert (await c.cmd("AUTH PLAIN AGFwcAB4")).startswith("503 5.5.1 Already authenticated")
    # AUTH inside a transaction is refused (RFC 4954 4)
    c2 = await Client.connect(port)
    await c2.cmd("EHLO client.test")
    await c2.cmd("MAIL FROM:<a@org.test>")
    assert (await c2.cmd("AUTH LOGIN")).startswith("503 5.5.1")
    assert (await c2.cmd("AUTH PLAIN")).startswith("503 5.5.1")
    c2.close()
    c.close()


async def test_a_client_that_never_reads_is_paused_not_buffered_without_bound(relay):  # noqa: F811
    """Thousands of pipelined commands from a client that reads nothing: the server stops reading when its
    replies are not taken (flow control), the session stays usable once the client reads again."""
    port, _ = await relay()
    c = await Client.connect(port)
    await c.cmd("EHLO client.test")
    n = 20_000
    c.w.write(b"NOOP\r\n" * n)
    await asyncio.sleep(0.5)
    got = 0
    while got < n:
        line = await asyncio.wait_for(c.r.readline(), 10)
        assert line == b"250 2.0.0 OK\r\n"
        got += 1
    assert await c.cmd("QUIT") == "221 2.0.0 Bye"
