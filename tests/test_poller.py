"""The inbound poller against a real Dovecot (IMAP, IMAPS, STARTTLS, POP3) on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import logging
import time

import pytest
from aiohttp import web

from poller import channels
from poller.config import CampaignConfig, ChannelConfig, FilterConfig
from poller.fetcher import run_once
from poller.runner import PollerService
from relay.spool.spool import Spool
from relaybox.settings import parse
from store import Store
from store.inbound import Fetched
from tests.peers.dovecot import Dovecot
from tests.peers.ports import free_port

pytestmark = pytest.mark.integration

_users = itertools.count(1)


@pytest.fixture(scope="module")
def dovecot():
    d = Dovecot(users={f"user{i}@org.test": "pw" for i in range(1, 40)}).start()
    yield d
    d.stop()


@pytest.fixture
def mailbox(dovecot):
    return f"user{next(_users)}@org.test"      # a fresh, pre-created mailbox per test


@pytest.fixture
async def env(tmp_path):
    st = Store(str(tmp_path / "p.db")).open()
    yield st, tmp_path
    st.close()


def msg(subject: str, to: str = "support@org.test", body: str = "hello", frm: str = "Carol <carol@cust.test>",
        mid: str | None = None) -> bytes:
    mid = mid or f"<{subject.replace(' ', '.')}.{time.time_ns()}@cust.test>"
    return (f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n\r\n{body}\r\n").encode()


def channel(dovecot, user, **kw) -> ChannelConfig:
    base = dict(name=kw.pop("name", "ch"), host="127.0.0.1", port=dovecot.imap_port, tls="starttls",
                server_name="localhost", ca_file=dovecot.cert, user=user, password="pw", address=user,
                default_campaign="support", poll_interval=1)
    base.update(kw)
    return ChannelConfig(**base)


def service(st: Store, tmp_path, **poller) -> PollerService:
    """A service whose channel loops run only when enabled=True (tests drive run_once themselves)."""
    poller.setdefault("enabled", False)
    settings = parse({"poller": {"maildir_root": str(tmp_path / "maildir"), "retry_first": 0.0, **poller}})
    return PollerService(st, settings, spool=Spool(st))


async def setup(st: Store, tmp_path, ch: ChannelConfig, extra_campaigns=()) -> None:
    camps = [CampaignConfig("support"), CampaignConfig("billing"), *extra_campaigns]
    await channels.seed(st.inbound, camps, [ch])


def maildir(tmp_path, campaign) -> list[bytes]:
    d = tmp_path / "maildir" / campaign / "new"
    if not d.exists():
        return []
    return [p.read_bytes() for p in sorted(d.iterdir())]


async def test_filters_route_and_seen_mail_is_still_fetched(dovecot, mailbox, env):
    st, tmp = env
    dovecot.append(mailbox, "pw", msg("Invoice 42"))
    dovecot.append(mailbox, "pw", msg("already read by a person"), flags="\\Seen")
    dovecot.append(mailbox, "pw", msg("help please"))
    ch = channel(dovecot, mailbox, filters=[FilterConfig("subject", "INVOICE", "billing")])
    await setup(st, tmp, ch)
    svc = service(st, tmp)
    await svc.start()
    try:
        res = await run_once(st.inbound, ch, svc.pcfg, svc.deliver, svc.connect, time.time())
        assert (res.fetched, res.delivered) == (3, 3)
        assert [b"Invoice 42" in m for m in maildir(tmp, "billing")] == [True]
        assert len(maildir(tmp, "support")) == 2
        assert dovecot.uids(mailbox, "pw", criteria="UNSEEN") == []      # marked \Seen after delivery
        again = await run_once(st.inbound, ch, svc.pcfg, svc.deliver, svc.connect, time.time())
        assert (again.fetched, again.delivered) == (0, 0)
    finally:
        await svc.stop()


async def test_move_to_storage_folder_and_validation(dovecot, mailbox, env):
    st, tmp = env
    dovecot.create(mailbox, "pw", "Processed")
    dovecot.append(mailbox, "pw", msg("move me"))
    ch = channel(dovecot, mailbox, after="move", storage_folder="Processed", tls="implicit",
                 port=dovecot.imaps_port)
    await setup(st, tmp, ch)
    svc = service(st, tmp)
    await svc.start()
    try:
        v = await svc.validate("ch")
        assert (v.ok, v.text, v.detail) == (True, "Connection succeeded",
                                            "logged in to 127.0.0.1 and selected INBOX")
        res = await run_once(st.inbound, ch, svc.pcfg, svc.deliver, svc.connect, time.time())
        assert res.delivered == 1
        assert dovecot.uids(mailbox, "pw") == [] and len(dovecot.uids(mailbox, "pw", folder="Processed")) == 1

        missing = channel(dovecot, mailbox, name="ch2", after="move", storage_folder="Nope")
        await channels.save_channel(st.inbound, missing)
        v = await svc.validate("ch2")
        assert not v.ok and v.text == "Connection failed: storage folder 'Nope' does not exist on the server"
        bad = channel(dovecot, mailbox, name="ch3", password="wrong")
        await channels.save_channel(st.inbound, bad)
        dovecot.clear_penalty()
        v = await svc.validate("ch3")
        assert not v.ok and v.text.startswith("Connection failed: ")
        assert "[AUTHENTICATIONFAILED] Authentication failed." in v.text
        with pytest.raises(channels.ChannelError, match="storage_folder must differ"):
            await channels.save_channel(
                st.inbound, channel(dovecot, mailbox, name="x", after="move", storage_folder="INBOX"))
        with pytest.raises(channels.ChannelError, match="activation needs a default campaign"):
            await channels.save_channel(st.inbound, channel(dovecot, mailbox, name="y", default_campaign=""))
        listed = await channels.list_channels(st.inbound)
        assert all(c["password"] == "***" for c in listed) and "wrong" not in json.dumps(listed)
    finally:
        await svc.stop()


async def test_uidvalidity_change_resyncs_without_duplicates(dovecot, mailbox, env):
    st, tmp = env
    dovecot.create(mailbox, "pw", "Support")
    first = [msg("one", mid="<one@x>"), msg("two", mid="<two@x>")]
    for m in first:
        dovecot.append(mailbox, "pw", m, folder="Support")
    ch = channel(dovecot, mailbox, folder="Support")
    await setup(st, tmp, ch)
    svc = service(st, tmp)
    await svc.start()
    try:
        res = await run_once(st.inbound, ch, svc.pcfg, svc.deliver, svc.connect, time.time())
        assert res.delivered == 2
        m = dovecot.imap(mailbox, "pw")
        m.delete("Support")
        m.create("Support")
        m.logout()
        for raw in first + [msg("three", mid="<three@x>")]:
            dovecot.append(mailbox, "pw", raw, folder="Support")
        res = await run_once(st.inbound, ch, svc.pcfg, svc.deliver, svc.connect, time.time())
        assert res.delivered == 1
        got = maildir(tmp, "support")
        assert len(got) == 3 and sum(b"Subject: three" in g for g in got) == 1
    finally:
        await svc.stop()


async def test_recipient_only_and_sync_all_folders(dovecot, mailbox, env):
    st, tmp = env
    dovecot.create(mailbox, "pw", "Sales")
    dovecot.create(mailbox, "pw", "Trash")
    dovecot.append(mailbox, "pw", msg("for us", to=mailbox))
    dovecot.append(mailbox, "pw", msg("for someone else", to="other@org.test"))
    dovecot.append(mailbox, "pw", msg("in sales", to=mailbox), folder="Sales")
    dovecot.append(mailbox, "pw", msg("in trash", to=mailbox), folder="Trash")
    ch = channel(dovecot, mailbox, recipient_only=True, sync_all_folders=True)
    await setup(st, tmp, ch)
    svc = service(st, tmp)
    await svc.start()
    try:
        res = await run_once(st.inbound, ch, svc.pcfg, svc.deliver, svc.connect, time.time())
        subjects = sorted(g.split(b"Subject: ")[1].split(b"\r\n")[0] for g in maildir(tmp, "support"))
        assert subjects == [b"for us", b"in sales"] and res.skipped == 1
    finally:
        await svc.stop()


async def test_pop3_deletes_only_after_campaign_accepted(dovecot, mailbox, env):
    st, tmp = env
    dovecot.append(mailbox, "pw", msg("pop one"))
    dovecot.append(mailbox, "pw", msg("pop two"))
    dovecot.append(mailbox, "pw", msg("pop too big", body="y" * 20_000))
    ch = channel(dovecot, mailbox, protocol="pop3", port=dovecot.pop3_port, tls="starttls", after="delete")
    await setup(st, tmp, ch)
    svc = service(st, tmp, max_message_size=10_000)
    await svc.start()
    try:
        res = await run_once(st.inbound, ch, svc.pcfg, svc.deliver, svc.connect, time.time())
        assert res.delivered == 2 and len(maildir(tmp, "support")) == 2
        assert len(dovecot.uids(mailbox, "pw")) == 1                 # the oversized one stays on the server
        q = await st.inbound.quarantine()
        assert len(q) == 1 and "not fetched" in q[0].last_error
        again = await run_once(st.inbound, ch, svc.pcfg, svc.deliver, svc.connect, time.time())
        assert (again.fetched, again.delivered) == (0, 0)
    finally:
        await svc.stop()


async def test_poison_message_is_quarantined_and_the_rest_flows(dovecot, mailbox, env):
    st, tmp = env
    dovecot.append(mailbox, "pw", b"this is not a mail message at all\r\n")
    dovecot.append(mailbox, "pw", msg("after the poison"))
    ch = channel(dovecot, mailbox)
    await setup(st, tmp, ch)
    svc = service(st, tmp)
    await svc.start()
    try:
        res = await run_once(st.inbound, ch, svc.pcfg, svc.deliver, svc.connect, time.time())
        assert res.delivered == 1 and b"after the poison" in maildir(tmp, "support")[0]
        q = await st.inbound.quarantine()
        assert len(q) == 1 and q[0].last_error.startswith("unparsable")
        # never refetched: the next poll fetches nothing
        assert (await run_once(st.inbound, ch, svc.pcfg, svc.deliver, svc.connect, time.time())).fetched == 0
    finally:
        await svc.stop()


async def test_oversized_message_is_quarantined_unfetched_and_uidvalidity_crash_safe(dovecot, mailbox, env):
    st, tmp = env
    dovecot.append(mailbox, "pw", msg("big", body="x" * 20_000))
    dovecot.append(mailbox, "pw", msg("small"))
    ch = channel(dovecot, mailbox)
    await setup(st, tmp, ch)
    svc = service(st, tmp, max_message_size=10_000)
    await svc.start()
    try:
        res = await run_once(st.inbound, ch, svc.pcfg, svc.deliver, svc.connect, time.time())
        assert res.delivered == 1 and b"Subject: small" in maildir(tmp, "support")[0]
        q = await st.inbound.quarantine()
        assert len(q) == 1 and "larger than poller.max_message_size (10000); not fetched" in q[0].last_error
        assert not q[0].has_raw and await st.inbound.raw(q[0].id) is None
        # a resync interrupted after its first batch (the checkpoint already carries the new UIDVALIDITY)
        # still drops the rest of the old messages as duplicates
        cp = await st.inbound.checkpoint("ch", "INBOX")
        await st.inbound.set_checkpoint("ch", "INBOX", cp.uidvalidity, 0)
        # fault injection below the store's interface: the stored messages came under an older UIDVALIDITY
        await st.db.write(lambda c: c.execute("UPDATE inbound SET uidvalidity=uidvalidity-1"))
        res = await run_once(st.inbound, ch, svc.pcfg, svc.deliver, svc.connect, time.time())
        assert res.delivered == 0 and len(maildir(tmp, "support")) == 1
    finally:
        await svc.stop()


async def test_one_failing_channel_never_stops_the_others(dovecot, mailbox, env):
    """Three channels in one running service: a dead port, a certificate that does not match, and a good
    one over STARTTLS. The good one delivers (Dovecot's log shows its login went over TLS); the others
    record their errors and keep retrying."""
    st, tmp = env
    good = channel(dovecot, mailbox, name="good", idle=False)
    dead = channel(dovecot, mailbox, name="dead", port=free_port(), idle=False)
    spoof = channel(dovecot, mailbox, name="spoof", server_name="mail.example.net", idle=False)
    camps = [CampaignConfig("support")]
    await channels.seed(st.inbound, camps, [good, dead, spoof])
    svc = service(st, tmp, enabled=True)
    await svc.start()
    try:
        dovecot.append(mailbox, "pw", msg("still flowing"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not maildir(tmp, "support"):
            await asyncio.sleep(0.1)
        assert b"Subject: still flowing" in maildir(tmp, "support")[0]
        while time.monotonic() < deadline and not all(
                r["last_error"] for r in await channels.list_channels(st.inbound) if r["name"] != "good"):
            await asyncio.sleep(0.1)
        rows = {r["name"]: r for r in await channels.list_channels(st.inbound)}
        assert rows["good"]["last_error"] is None and rows["good"]["routed"] == 1
        assert "cannot connect" in rows["dead"]["last_error"]
        assert "certificate" in rows["spoof"]["last_error"].lower()
        status = {s["name"]: s for s in svc.status()}
        assert status["good"]["up"] and not status["dead"]["up"] and not status["spoof"]["up"]
        assert all(s["running"] for s in status.values())            # failing channels keep retrying
        logins = [ln for ln in dovecot.log().splitlines() if f"Login: user=<{mailbox}>" in ln]
        assert any(ln.rstrip().endswith("TLS") or ", TLS," in ln for ln in logins), logins
    finally:
        await svc.stop()


async def test_bounce_channel_hands_messages_to_the_bounce_sink(dovecot, mailbox, env):
    st, tmp = env
    got: list[tuple[bytes, str]] = []
    fail = {"left": 1}

    async def sink(raw: bytes, *, raw_ref: str | None = None):
        if fail["left"]:
            fail["left"] -= 1
            raise RuntimeError("bounce parser unavailable")
        got.append((raw, raw_ref))

    dovecot.append(mailbox, "pw", msg("Undelivered Mail Returned to Sender", frm="MAILER-DAEMON@org.test"))
    ch = channel(dovecot, mailbox, purpose="bounces", default_campaign="")
    await channels.seed(st.inbound, [], [ch])
    settings = parse({"poller": {"enabled": False, "retry_first": 0.0, "maildir_root": str(tmp / "m")}})
    svc = PollerService(st, settings, bounce_sink=sink)
    await svc.start()
    try:
        first = await run_once(st.inbound, ch, svc.pcfg, svc.deliver, svc.connect, time.time())
        assert first.delivered == 0 and dovecot.uids(mailbox, "pw", criteria="UNSEEN") != []   # not yet
        again = await run_once(st.inbound, ch, svc.pcfg, svc.deliver, svc.connect, time.time())
        assert again.delivered == 1 and len(got) == 1
        raw, ref = got[0]
        assert b"Undelivered Mail" in raw and ref.startswith("inbound:")
        assert dovecot.uids(mailbox, "pw", criteria="UNSEEN") == []
    finally:
        await svc.stop()


class Receiver:
    """A webhook target that dedupes by Idempotency-Key (as targets are asked to) and can fail on purpose."""

    def __init__(self, secret: str, fail_first: int = 0):
        self.secret = secret
        self.fail_first = fail_first
        self.calls = 0
        self.keys: dict[str, dict] = {}
        self.bad_signatures = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls += 1
        ts = request.headers["X-Relaybox-Timestamp"]
        mac = hmac.new(self.secret.encode(), ts.encode() + b"." + body, hashlib.sha256)
        want = "sha256=" + mac.hexdigest()
        if not hmac.compare_digest(want, request.headers.get("X-Relaybox-Signature", "")):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.calls <= self.fail_first:
            return web.Response(status=503, text="busy")
        self.keys.setdefault(request.headers["Idempotency-Key"], json.loads(body))
        return web.Response(status=202)

    async def start(self) -> int:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        return port


async def test_webhook_retries_signed_idempotent_and_idle_is_fast(dovecot, mailbox, env, caplog):
    caplog.set_level(logging.WARNING, logger="poller")
    st, tmp = env
    rec = Receiver("hook-secret", fail_first=2)
    port = await rec.start()
    hook = CampaignConfig("helpdesk", kind="webhook", url=f"http://127.0.0.1:{port}/hook",
                          secret="hook-secret")
    ch = channel(dovecot, mailbox, default_campaign="helpdesk", poll_interval=30)
    await setup(st, tmp, ch, [hook])
    svc = service(st, tmp, enabled=True)
    await svc.start()
    try:
        await asyncio.sleep(1.0)                           # the channel is connected and IDLE
        t0 = time.monotonic()
        await asyncio.to_thread(dovecot.append, mailbox, "pw",
                                msg("printer on fire", body="see attachment"))
        while not rec.keys and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.05)
        latency = time.monotonic() - t0
        assert rec.keys, "webhook never accepted the message"
        print(f"IDLE + webhook latency {latency:.2f}s")
        assert latency < 5, f"IDLE latency {latency:.1f}s"          # includes two 503 retries
        doc = next(iter(rec.keys.values()))
        assert doc["subject"] == "printer on fire" and doc["from"] == "carol@cust.test"
        assert doc["channel"] == "ch" and doc["campaign"] == "helpdesk" and "see attachment" in doc["text"]
        assert rec.bad_signatures == 0 and rec.calls == 3
        failed = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
        assert len(failed) == 2 and all("answered 503: busy" in m for m in failed), failed   # the reply
    finally:
        await svc.stop()
        await rec.runner.cleanup()


async def test_smtp_campaign_forwards_through_the_relay_queue(dovecot, mailbox, env):
    st, tmp = env
    dovecot.append(mailbox, "pw", msg("forward me"))
    fwd = CampaignConfig("desk", kind="smtp", forward_to="desk@helpdesk.test")
    ch = channel(dovecot, mailbox, default_campaign="desk")
    await setup(st, tmp, ch, [fwd])
    svc = service(st, tmp)
    await svc.start()
    try:
        await run_once(st.inbound, ch, svc.pcfg, svc.deliver, svc.connect, time.time())
        [row] = await st.inbound.messages()
        assert row.status == "done" and row.result.startswith("queued as ")
        qid = row.result.removeprefix("queued as ")
        assert (await st.messages.get(qid)).sender == mailbox
        assert [r.address for r in await st.messages.recipients(qid)] == ["desk@helpdesk.test"]
        # a redelivery after a crash between the enqueue and the recording of the acceptance finds the
        # message already queued (same queue id) instead of queueing a copy
        raw = msg("forward me again")
        [iid] = await st.inbound.store_fetched("ch", "INBOX", 1, [Fetched("999", raw)])
        first = await svc.deliver(ch, iid, raw)
        again = await svc.deliver(ch, iid, raw)
        assert first is not None and again is not None and first.delivery.result == again.delivery.result
        qid2 = again.delivery.result.removeprefix("queued as ")
        assert qid2 != qid and len(await st.messages.recipients(qid2)) == 1
    finally:
        await svc.stop()


def test_cli_channels_add_list_validate(dovecot, mailbox, tmp_path):
    import subprocess
    import sys

    def cli(*args, stdin=None):
        return subprocess.run([sys.executable, "-m", "relaybox.cli", *args, "--db", str(tmp_path / "c.db")],
                              capture_output=True, text=True, input=stdin, timeout=60)

    assert cli("campaigns", "add", "support").returncode == 0
    out = cli("channels", "add", "desk", "--host", "127.0.0.1 ", "--port", str(dovecot.imap_port), "--tls",
              "none", "--user", f" {mailbox}", "--default-campaign", "support", "--password-stdin",
              "--filter", "subject:contains:invoice=>support", stdin="pw\n")
    assert out.returncode == 0, out.stderr
    listed = cli("channels", "list", "--json")
    first = json.loads(listed.stdout)[0]
    assert first["user"] == mailbox and "pw" not in first["password"]
    ok = cli("channels", "validate", "desk")
    assert (ok.returncode, ok.stdout.strip()) == (0, "Connection succeeded")
    bad = cli("channels", "add", "x", "--host", "h", "--user", "u", "--default-campaign", "nope")
    assert bad.returncode == 2 and "unknown default campaign 'nope'" in bad.stderr
