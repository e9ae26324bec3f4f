"""Hostile SMTP input at intake, one test per class: EHLO/HELO names, the Received field, invalid UTF-8 in
MAIL/RCPT, address literals, NUL in DATA, pipelining before 354, AUTH abuse, per-address connection rate.

In-process listener on a real store, raw sockets (the probes are byte-exact: no client library would send
them)."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from relay.config import SMTPConfig
from relay.intake.auth import AuthThrottle
from relay.intake.headers import prepare_message
from relay.intake.listener import Listener
from relay.intake.policy import Policy, hash_password
from relay.spool.spool import Spool
from store import Store
from tests.peers.ports import free_port

pytestmark = pytest.mark.component

PW_HASH = hash_password("right-password")


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.r, self.w = reader, writer

    @classmethod
    async def connect(cls, port: int, source: str = "127.0.0.1") -> "Client":
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        c = cls(r, w)
        c.banner = await c.reply()
        return c

    async def reply(self, timeout: float = 10) -> str:
        lines = []
        while True:
            line = await asyncio.wait_for(self.r.readline(), timeout)
            if not line:
                lines.append("<eof>")
                break
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                break
        return "\n".join(lines)

    async def cmd(self, raw: bytes | str, timeout: float = 10) -> str:
        self.w.write((raw.encode() if isinstance(raw, str) else raw) + b"\r\n")
        await self.w.drain()
        return await self.reply(timeout)

    async def closed(self, timeout: float = 5) -> bool:
        try:
            return await asyncio.wait_for(self.r.read(1), timeout) == b""
        except ConnectionError:
            return True

    def close(self) -> None:
        self.w.close()


@pytest.fixture
async def relay(tmp_path):
    started: list[tuple[Listener, Store]] = []

    async def start(**smtp) -> tuple[int, Store]:
        db = Store(str(tmp_path / f"s{len(started)}.db")).open()
        policy = Policy()
        policy.set_snapshot(["127.0.0.1/32"], {"app": PW_HASH})
        port = free_port()
        cfg = SMTPConfig(listen=[f"127.0.0.1:{port}"], hostname="relay.test", require_tls_for_auth=False,
                         **smtp)
        listener = Listener(cfg, Spool(db), policy)
        await listener.start()
        started.append((listener, db))
        return port, db

    yield start
    for listener, db in started:
        await listener.drain(1)
        db.close()


async def bodies(db: Store) -> list[bytes]:
    return await db.db.read(lambda c: [bytes(r[0]) for r in c.execute("SELECT data FROM bodies")])


# ---- EHLO / HELO and the Received field ------------------------------------------------------------
HOSTILE_NAMES = [
    b"probe.example\rX-Injected-Helo: tok",
    b"probe.example\r\tfolded",
    b"pro\x00be.example",
    b"x) by evil.example (Postfix) with ESMTP id 1;",
    b"a b",
    b"evil.example;",
    b"[999.1.1.1]",
    b"[IPv6:nope]",
    b"\xff\xfe.example",
    b"exa\xc3\xa9mple.com",
]


@pytest.mark.parametrize("verb", ["EHLO", "HELO"])
async def test_helo_must_be_a_domain_or_address_literal(relay, verb):
    port, db = await relay()
    c = await Client.connect(port)
    for name in HOSTILE_NAMES:
        assert (await c.cmd(verb.encode() + b" " + name)).startswith("501 5.5.2"), name
    assert (await c.cmd("MAIL FROM:<a@org.test>")).startswith("503")        # no name was taken
    for good in ("client.test", "localhost", "my_host.example.", "[127.0.0.1]", "[IPv6:::1]"):
        assert (await c.cmd(f"{verb} {good}")).startswith("250"), good
    c.close()


def test_received_is_rendered_from_validated_parts_only():
    content = b"Subject: x\r\n\r\nbody\r\n"
    for helo, ip, rcpt in [("probe.example\rX-Injected: tok", "127.0.0.1", "a@b.test"),
                           ("x) by evil.example (Postfix)", "1.2.3.4\r\nX-Evil: 1", "a@b.test"),
                           ("ok.example", "::1", '"a\r\nX-Evil: 1"@b.test'),
                           ("ok.example", "::1", '"a>;by evil"@b.test')]:
        p = prepare_message(content, hostname="relay.test", helo=helo, client_ip=ip, tls=False, auth=False,
                            rcpts=[rcpt])
        head = p.body.split(b"\r\n\r\n", 1)[0]
        received = head.split(b"\r\nX-Relaybox-ID:", 1)[0]
        assert b"X-Inj" not in head and b"X-Evil" not in head and b"evil" not in received, head
        assert b"\r" not in received.replace(b"\r\n\t", b"")        # one field, folded only by us
    ok = prepare_message(content, hostname="relay.test", helo="[10.0.0.1]", client_ip="10.0.0.1", tls=True,
                         auth=True, rcpts=["a@b.test"])
    assert ok.body.startswith(b"Received: from [10.0.0.1] ([10.0.0.1])\r\n\tby relay.test (relaybox) with"
                              b" ESMTPSA id ")
    assert b"\tfor <a@b.test>;" in ok.body


# ---- MAIL / RCPT arguments --------------------------------------------------------------------------
async def test_invalid_utf8_and_bad_literals_get_a_clear_5xx(relay):
    port, db = await relay()
    c = await Client.connect(port)
    await c.cmd("EHLO client.test")
    assert (await c.cmd(b"MAIL FROM:<\xff\xfe\xc3(@example.org> SMTPUTF8")).startswith("501 5.5.2")
    assert (await c.cmd(b"MAIL FROM:<a@example.org> SMTPUTF8 X=\xff")).startswith("501 5.5.2")
    assert (await c.cmd("MAIL FROM:<a@[300.1.1.1]>")).startswith("501 5.1.7")
    assert (await c.cmd("MAIL FROM:<a@example.org>")).startswith("250")
    assert (await c.cmd(b"RCPT TO:<\xc3(@example.org>")).startswith("501 5.5.2")
    for literal in ("[999.1.1.1]", "[1.2.3]", "[IPv6:zz::1]", "[IPv6:fe80::1%eth0]", "[tag:stuff]",
                    "[01.2.3.4]"):
        assert (await c.cmd(f"RCPT TO:<x@{literal}>")).startswith("501 5.1.3"), literal
    assert (await c.cmd("RCPT TO:<x@[192.0.2.1]>")).startswith("250")
    assert (await c.cmd("RCPT TO:<x@[IPv6:2001:db8::1]>")).startswith("250")
    assert (await c.cmd("NOOP")).startswith("250")                            # the session goes on
    c.close()


# ---- NUL in DATA ------------------------------------------------------------------------------------
async def _send(c: Client, body: bytes) -> str:
    assert (await c.cmd("MAIL FROM:<a@org.test>")).startswith("250")
    assert (await c.cmd("RCPT TO:<b@example.test>")).startswith("250")
    assert (await c.cmd("DATA")).startswith("354")
    c.w.write(body)
    return await c.reply()


async def test_nul_rejected_by_default_and_stripped_when_configured(relay):
    port, db = await relay()
    c = await Client.connect(port)
    await c.cmd("EHLO client.test")
    assert (await _send(c, b"Subject: a\r\n\r\nnul\x00here\r\n.\r\n")).startswith("550 5.6.0")
    # CRLF NUL . CRLF: a next hop that drops NULs before framing would end DATA there
    assert (await _send(c, b"Subject: b\r\n\r\none\r\n\x00.\r\nMAIL FROM:<x@y>\r\n.\r\n")).startswith("550")
    assert (await c.cmd("NOOP")).startswith("250")
    assert await bodies(db) == []

    port2, db2 = await relay(nul="strip")
    c2 = await Client.connect(port2)
    await c2.cmd("EHLO client.test")
    reply = await _send(c2, b"Subject: b\r\n\r\none\r\n\x00.\r\nstill one message\r\n.\r\n")
    assert reply.startswith("250")
    [stored] = await bodies(db2)
    assert b"\x00" not in stored and stored.endswith(b"one\r\n.\r\nstill one message\r\n")
    c.close()
    c2.close()


# ---- pipelining before 354 --------------------------------------------------------------------------
async def test_data_sent_before_354_is_refused_and_the_session_closed(relay):
    port, db = await relay()
    c = await Client.connect(port)
    await c.cmd("EHLO client.test")
    await c.cmd("MAIL FROM:<a@org.test>")
    await c.cmd("RCPT TO:<b@example.test>")
    c.w.write(b"DATA\r\nSubject: early\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert (await c.reply()).startswith("554 5.5.0")
    assert await c.closed()
    assert await bodies(db) == []

    port2, db2 = await relay(reject_unauth_pipelining=False)        # the setting turns it off
    c2 = await Client.connect(port2)
    await c2.cmd("EHLO client.test")
    await c2.cmd("MAIL FROM:<a@org.test>")
    await c2.cmd("RCPT TO:<b@example.test>")
    c2.w.write(b"DATA\r\nSubject: early\r\n\r\nbody\r\n.\r\n")
    assert (await c2.reply()).startswith("354") and (await c2.reply()).startswith("250")
    c2.close()


# ---- AUTH abuse -------------------------------------------------------------------------------------
def plain(user: str, pw: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{pw}".encode()).decode()


def test_throttle_delay_grows_then_locks_out_and_success_clears():
    now = [1000.0]
    t = AuthThrottle(delay=1, delay_cap=8, window=60, lockout_after=5, lockout=300, clock=lambda: now[0])
    assert [t.failed("10.0.0.1", f"u{i}") for i in range(4)] == [1, 2, 4, 8]   # per address, any user
    assert not t.locked("10.0.0.1")
    assert t.failed("10.0.0.1", "u9") == 8 and t.locked("10.0.0.1") == 300
    assert t.locked("10.0.0.2", "u9") == 0
    for i in range(5):                                      # per user, from many addresses
        t.failed(f"10.1.0.{i}", "victim")
    assert t.locked("10.9.9.9", "victim") == 300 and t.locked("10.9.9.9", "VICTIM") == 300
    now[0] += 301
    assert not t.locked("10.0.0.1") and not t.locked("10.9.9.9", "victim")
    t.failed("10.0.0.3", "w")
    t.succeeded("10.0.0.3", "w")
    assert t.failed("10.0.0.3", "w") == 1                    # counting starts again after a success
    now[0] += 61
    assert t.failed("10.0.0.1", "x") == 1                    # old failures leave the window


async def test_auth_failures_are_delayed_disconnected_and_locked_out(relay):
    port, db = await relay(auth_failure_delay=0.2, auth_failure_delay_cap=1, auth_lockout_after=5,
                           auth_max_failures_per_session=3)
    c = await Client.connect(port)
    await c.cmd("EHLO client.test")
    t0 = time.monotonic()
    assert (await c.cmd(plain("app", "wrong1"))).startswith("535 5.7.8")
    assert (await c.cmd(plain("APP", "wrong2"))).startswith("535 5.7.8")     # user names: any case
    assert (await c.cmd(plain("app", "wrong3"))).startswith("535 5.7.8")
    assert (await c.reply()).startswith("421 4.7.0")
    assert await c.closed()
    assert time.monotonic() - t0 >= 0.2 + 0.4 + 0.8 - 0.05           # 0.2, doubling per failure
    c = await Client.connect(port)
    await c.cmd("EHLO client.test")
    assert (await c.cmd(plain("app", "wrong4"))).startswith("535")
    assert (await c.cmd(plain("app", "wrong5"))).startswith("535")
    # locked out now: even the right password is not checked
    assert (await c.cmd(plain("app", "right-password"))).startswith("454 4.7.0")
    assert (await c.reply()).startswith("421 4.7.0")
    assert await c.closed()
    # another address is not locked, but the user is
    c = await Client.connect(port, source="127.0.0.2")
    await c.cmd("EHLO client.test")
    assert (await c.cmd(plain("app", "right-password"))).startswith("454 4.7.0")
    assert (await c.cmd(plain("other", "x"))).startswith("535")
    c.close()


async def test_right_password_works_and_hashing_stays_off_the_loop(relay):
    port, db = await relay(auth_failure_delay=0.01, auth_failure_delay_cap=0.01, auth_lockout_after=1000,
                           auth_max_failures_per_session=1000)
    c = await Client.connect(port, source="127.0.0.3")
    await c.cmd("EHLO client.test")
    assert (await c.cmd(plain("app", "right-password"))).startswith("235")

    async def brute(n: int) -> None:
        b = await Client.connect(port)
        await b.cmd("EHLO b.test")
        for i in range(n):
            await b.cmd(plain("ghost" if i % 2 else "app", f"guess{i}"))
        b.close()

    probe = await Client.connect(port, source="127.0.0.4")
    await probe.cmd("EHLO probe.test")
    task = asyncio.gather(*(brute(4) for _ in range(6)))
    worst = 0.0
    while not task.done():
        t0 = time.perf_counter()
        assert (await probe.cmd("NOOP")).startswith("250")
        worst = max(worst, time.perf_counter() - t0)
        await asyncio.sleep(0.01)
    await task
    assert worst < 0.05, worst                   # each scrypt run takes ~50 ms: none ran on the loop
    c.close()
    probe.close()


def test_unknown_user_costs_one_hash_like_a_known_one(monkeypatch):
    from relay.intake import policy as policy_mod

    calls = []
    real = policy_mod.verify_password
    monkeypatch.setattr(policy_mod, "verify_password", lambda pw, h: calls.append(h) or real(pw, h))
    monkeypatch.setattr(policy_mod, "hash_password", lambda *a, **k: pytest.fail("no hashing per attempt"))
    p = Policy()
    p.set_snapshot([], {"app": PW_HASH})
    policy_mod._dummy_hash()                     # made once per process (not per attempt)
    calls.clear()
    assert not p.check_login("ghost", "x") and len(calls) == 1
    assert not p.check_login("app", "x") and len(calls) == 2
    assert calls[0].split("$")[:4] == calls[1].split("$")[:4]     # same scrypt parameters


# ---- connections per address ------------------------------------------------------------------------
async def test_connection_rate_per_address_with_allowlist_exempt(relay):
    port, db = await relay(max_connection_rate_per_ip=3)
    for _ in range(3):
        c = await Client.connect(port, source="127.0.0.9")          # not allow-listed
        assert c.banner.startswith("220")
        c.close()
    c = await Client.connect(port, source="127.0.0.9")
    assert c.banner.startswith("421 4.7.0")
    for _ in range(5):                                               # 127.0.0.1 is on the allowlist
        c = await Client.connect(port)
        assert c.banner.startswith("220")
        c.close()


def test_defaults_are_lower_than_before():
    cfg = SMTPConfig()
    assert cfg.max_sessions_per_ip == 20 and cfg.max_connection_rate_per_ip > 0
    assert cfg.nul == "reject" and cfg.reject_unauth_pipelining
