"""Channels as admins expect them, against a real Dovecot: validation on save, state, SNI, \\Seen before
MOVE, the first-sync policy, backoff reset after a success (in the IDLE loop), IDLE ended cleanly when a
channel is disabled, and the CLI (validation answers, list with state, search, --json, identifiers)."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import subprocess
import sys
import time

import pytest

from poller import channels
from poller.config import CampaignConfig, ChannelConfig
from poller.fetcher import run_once
from poller.imap import IMAPSession, MailboxError
from poller.runner import PollerService
from poller.validate import NotValidated, save_validated
from relaybox.settings import parse
from store import Store
from tests.peers.dovecot import Dovecot
from tests.peers.ports import free_port

pytestmark = pytest.mark.integration

_users = itertools.count(1)


@pytest.fixture(scope="module")
def dovecot():
    d = Dovecot(users={f"box{i}@org.test": "pw" for i in range(1, 20)}).start()
    yield d
    d.stop()


@pytest.fixture
def mailbox(dovecot):
    return f"box{next(_users)}@org.test"


@pytest.fixture
async def st(tmp_path):
    s = Store(str(tmp_path / "c.db")).open()
    await channels.save_campaign(s.inbound, CampaignConfig("support"))
    yield s
    s.close()


def msg(subject: str) -> bytes:
    return (f"From: a@cust.test\r\nTo: x@org.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}.{time.time_ns()}@c>\r\n\r\nhi\r\n").encode()


def channel(dovecot, user, **kw) -> ChannelConfig:
    base = dict(name="ch", host="127.0.0.1", port=dovecot.imap_port, tls="starttls", server_name="localhost",
                ca_file=dovecot.cert, user=user, password="pw", address=user, default_campaign="support",
                poll_interval=1)
    base.update(kw)
    return ChannelConfig(**base)


def service(st: Store, tmp_path, **poller) -> PollerService:
    poller.setdefault("enabled", False)
    return PollerService(st, parse({"poller": {"maildir_root": str(tmp_path / "maildir"), **poller}}))


async def test_saving_validates_and_a_failing_channel_is_saved_only_inactive(dovecot, mailbox, st):
    dovecot.clear_penalty()
    with pytest.raises(NotValidated) as exc:
        await save_validated(st.inbound, channel(dovecot, mailbox, password="wrong"), 10)
    assert str(exc.value).startswith("Connection failed: login failed: NO [AUTHENTICATIONFAILED]")
    assert "saved only as inactive" in str(exc.value)
    assert await st.inbound.channel("ch") is None                      # nothing saved

    v = await save_validated(st.inbound, channel(dovecot, mailbox, password="wrong", enabled=False), 10)
    assert not v.ok and v.text.startswith("Connection failed: ")
    [view] = await channels.list_channels(st.inbound)
    assert view["state"] == "inactive" and view["last_error"] == v.text   # the channel says so

    dovecot.create(mailbox, "pw", "Processed")
    with pytest.raises(NotValidated, match="storage folder 'Nope' does not exist on the server"):
        await save_validated(st.inbound, channel(dovecot, mailbox, after="move", storage_folder="Nope"), 10)
    moving = channel(dovecot, mailbox, after="move", storage_folder="Processed")
    v = await save_validated(st.inbound, moving, 10)
    assert (v.ok, v.text) == (True, "Connection succeeded")
    [view] = await channels.list_channels(st.inbound)
    assert view["state"] == "active" and view["last_error"] is None and view["short_name"] == "ch"
    with pytest.raises(channels.ChannelError, match="not an identifier"):
        await save_validated(st.inbound, channel(dovecot, mailbox, name="../x"), 10)


async def test_sni_and_certificate_checked_against_server_name_with_implicit_tls(dovecot, mailbox, st):
    good = channel(dovecot, mailbox, tls="implicit", port=dovecot.imaps_port, server_name="localhost")
    assert (await save_validated(st.inbound, good, 10)).ok
    # the certificate also names 127.0.0.1 (the host connected to): only a check against server_name fails
    spoof = channel(dovecot, mailbox, name="spoof", tls="implicit", port=dovecot.imaps_port,
                    server_name="mail.example.net")
    with pytest.raises(NotValidated, match="(?i)certificate"):
        await save_validated(st.inbound, spoof, 10)


async def test_move_marks_seen_first_and_first_sync_policies(dovecot, mailbox, st, tmp_path):
    dovecot.create(mailbox, "pw", "Processed")
    dovecot.append(mailbox, "pw", msg("read already"), flags="\\Seen", date=time.time() - 40 * 86400)
    dovecot.append(mailbox, "pw", msg("old unread"), date=time.time() - 40 * 86400)
    dovecot.append(mailbox, "pw", msg("new unread"))
    svc = service(st, tmp_path)
    await svc.start()
    try:
        unseen = channel(dovecot, mailbox, name="unseen", first_sync="unseen", after="move",
                         storage_folder="Processed")
        await channels.save_channel(st.inbound, unseen)
        res = await run_once(st.inbound, unseen, svc.pcfg, svc.deliver, svc.connect, time.time())
        assert res.delivered == 2, res                     # the message read already is left alone
        assert len(dovecot.uids(mailbox, "pw", folder="Processed")) == 2
        assert dovecot.uids(mailbox, "pw", folder="Processed", criteria="UNSEEN") == []   # read when moved
        dovecot.append(mailbox, "pw", msg("later, read by a person"), flags="\\Seen")
        res = await run_once(st.inbound, unseen, svc.pcfg, svc.deliver, svc.connect, time.time())
        assert res.delivered == 1                          # after the first sync: all new mail

        dovecot.create(mailbox, "pw", "Archive")
        dovecot.append(mailbox, "pw", msg("archived long ago"), folder="Archive",
                       date=time.time() - 40 * 86400)
        dovecot.append(mailbox, "pw", msg("archived today"), folder="Archive", flags="\\Seen")
        since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
        recent = channel(dovecot, mailbox, name="recent", first_sync=f"since:{since}", folder="Archive",
                         after="seen")
        await channels.save_channel(st.inbound, recent)
        res = await run_once(st.inbound, recent, svc.pcfg, svc.deliver, svc.connect, time.time())
        assert res.delivered == 1                          # by internal date, read or not
        with pytest.raises(channels.ChannelError, match="first_sync"):
            await channels.save_channel(st.inbound, channel(dovecot, mailbox, name="p", protocol="pop3",
                                                            first_sync="unseen"))
    finally:
        await svc.stop()


class Proxy:
    """A TCP relay to Dovecot that the test can cut (all open connections) to make a session fail."""

    def __init__(self, port: int):
        self.target = port
        self.port = free_port()
        self.writers: list[asyncio.StreamWriter] = []
        self.hold = False

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        self.writers += [w, uw]

        async def pipe(a: asyncio.StreamReader, b: asyncio.StreamWriter) -> None:
            try:
                while data := await a.read(65536):
                    if self.hold and b is uw:           # the server never sees what the client sends now
                        continue
                    b.write(data)
                    await b.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                b.close()
        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    def cut(self) -> None:
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        self.server.close()


def retries(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "retry in" in r.getMessage()]


async def test_backoff_resets_after_a_successful_poll_in_the_idle_loop(dovecot, mailbox, st, tmp_path,
                                                                       caplog):
    caplog.set_level(logging.WARNING, logger="poller")
    proxy = Proxy(dovecot.imap_port)
    await proxy.start()
    ch = channel(dovecot, mailbox, port=proxy.port, tls="none", password="wrong", poll_interval=30)
    await channels.save_channel(st.inbound, ch)
    svc = service(st, tmp_path, enabled=True)
    dovecot.clear_penalty()
    await svc.start()
    try:
        deadline = time.monotonic() + 10
        while not retries(caplog) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert retries(caplog)[0].endswith("(retry in 5 s)")
        await channels.save_channel(st.inbound, channel(dovecot, mailbox, port=proxy.port, tls="none",
                                                        poll_interval=30))
        deadline = time.monotonic() + 20
        while not svc.state["ch"].get("idle") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert svc.status()[0]["up"] and svc.state["ch"]["idle"]
        proxy.cut()                                           # an outage after a success
        deadline = time.monotonic() + 20                      # its own time (the suite loads the machine)
        while len(retries(caplog)) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert retries(caplog)[1].endswith("(retry in 5 s)"), retries(caplog)     # not 10 s
    finally:
        await svc.stop()
        await proxy.close()


async def test_a_command_pending_when_the_connection_drops_fails_at_once(dovecot, mailbox):
    """aioimaplib leaves a command waiting when its connection drops; the session must not wait out its
    60 s timeout (the channel would sit silent for a minute: seen once in CI, the IDLE loop's SELECT)."""
    proxy = Proxy(dovecot.imap_port)
    await proxy.start()
    session = IMAPSession("127.0.0.1", proxy.port, tls="none", timeout=60)
    try:
        dovecot.clear_penalty()
        await session.connect()
        await session.login(mailbox, "pw")
        proxy.hold = True                                     # SELECT goes out, no answer comes back
        pending = asyncio.ensure_future(session.select("INBOX"))
        await asyncio.sleep(0.3)
        assert not pending.done()
        proxy.cut()
        done, _ = await asyncio.wait({pending}, timeout=5)
        assert done, "the pending SELECT still waits after the connection dropped"
        with pytest.raises(MailboxError, match="connection lost"):
            pending.result()
    finally:
        await session.logout()
        await proxy.close()


async def test_disabling_an_idling_channel_ends_its_session_cleanly(dovecot, mailbox, st, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    await channels.save_channel(st.inbound, channel(dovecot, mailbox, poll_interval=30))
    svc = service(st, tmp_path, enabled=True)
    await svc.start()
    try:
        deadline = time.monotonic() + 10
        while not svc.state.get("ch", {}).get("idle") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert svc.state["ch"]["idle"]
        ch = await channels.get_channel(st.inbound, "ch")
        await channels.save_channel(st.inbound, ch.__class__(**{**ch.__dict__, "enabled": False}))
        await svc.sync_tasks()
        assert "ch" not in svc.tasks and svc.status() == []
        [view] = await channels.list_channels(st.inbound)
        assert view["state"] == "inactive"
        await asyncio.sleep(0.3)
        gc.collect()
        await asyncio.sleep(0.1)
        assert not [r for r in caplog.records if "destroyed but it is pending" in r.getMessage()]
    finally:
        await svc.stop()


def test_cli_validates_on_save_lists_state_and_searches(dovecot, mailbox, tmp_path):
    def cli(*args, stdin=None):
        return subprocess.run([sys.executable, "-m", "relaybox.cli", *args, "--db", str(tmp_path / "c.db")],
                              capture_output=True, text=True, input=stdin, timeout=60)

    assert cli("campaigns", "add", "support").returncode == 0
    bad = cli("campaigns", "add", "../../etc")
    assert bad.returncode == 2 and "not an identifier" in bad.stderr
    common = ["--host", "127.0.0.1", "--port", str(dovecot.imap_port), "--tls", "none", "--user", mailbox,
              "--address", mailbox, "--default-campaign", "support", "--password-stdin"]
    dovecot.clear_penalty()
    out = cli("channels", "add", "desk", *common, stdin="wrong\n")
    assert out.returncode == 2 and "error: Connection failed: login failed" in out.stderr, out
    assert "saved only as inactive" in out.stderr
    out = cli("channels", "add", "desk", *common, "--disabled", "--sync-all-folders", "--recipient-only",
              stdin="wrong\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("Connection failed: ")
    assert out.stdout.splitlines()[1] == "channel desk saved (inactive)"
    out = cli("channels", "add", "sales", *common, "--short-name", "s1", stdin="pw\n")
    assert out.returncode == 0 and out.stdout.splitlines() == ["Connection succeeded",
                                                               "channel sales saved (active)"], out
    rows = {r["name"]: r for r in json.loads(cli("channels", "list", "--json").stdout)}
    assert rows["desk"]["sync_all_folders"] and rows["desk"]["recipient_only"]
    assert (rows["desk"]["state"], rows["sales"]["state"]) == ("inactive", "active")
    table = cli("channels", "list").stdout
    assert "STATE" in table and "LAST_POLL" in table and "LAST_SUCCESS" in table
    assert [r["name"] for r in json.loads(cli("channels", "list", "--state", "active", "--json").stdout)] == [
        "sales"]
    assert [r["name"] for r in json.loads(cli("channels", "list", "--name", "s1", "--json").stdout)] == [
        "sales"]
    assert len(json.loads(cli("channels", "list", "--campaign", "support", "--json").stdout)) == 2
    v = cli("channels", "validate", "sales", "--json")
    assert v.returncode == 0 and json.loads(v.stdout)["result"] == "Connection succeeded"
    v = cli("channels", "validate", "desk", "--json")
    assert v.returncode == 1 and json.loads(v.stdout)["result"].startswith("Connection failed: ")
