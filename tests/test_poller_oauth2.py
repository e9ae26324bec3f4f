"""XOAUTH2 for real: Dovecot's oauth2 passdb introspects every token at the tests' own authorisation server
(tests/peers/oauth2.py), which rotates refresh tokens as Microsoft 365 does."""

from __future__ import annotations

import json
import time

import pytest

from poller import channels, oauth2
from poller.config import CampaignConfig, ChannelConfig
from poller.fetcher import run_once
from poller.runner import PollerService
from relaybox.settings import parse
from store import Store
from tests.peers.dovecot import Dovecot
from tests.peers.oauth2 import TokenServer

pytestmark = pytest.mark.integration

USER = "shared@org.test"


@pytest.fixture(scope="module")
def peers():
    ts = TokenServer("cid-123", "s3cret", USER, refresh_token="rt-initial").begin()
    dc = Dovecot(users={USER: "password-not-used"}, oauth2_introspection_url=ts.introspection_url).start()
    yield ts, dc
    dc.stop()
    ts.close()


def msg(subject: str) -> bytes:
    return (f"From: a@cust.test\r\nTo: {USER}\r\nSubject: {subject}\r\nMessage-ID: <{time.time_ns()}@c>\r\n"
            "\r\nx\r\n").encode()


def delivered(tmp_path) -> list[str]:
    d = tmp_path / "maildir" / "desk" / "new"
    return sorted(p.read_bytes().split(b"Subject: ")[1].split(b"\r\n")[0].decode() for p in d.iterdir()) \
        if d.exists() else []


async def test_xoauth2_refresh_rotation_imap_and_client_credentials_pop3(peers, tmp_path):
    ts, dc = peers
    oauth2._cache.clear()
    st = Store(str(tmp_path / "o.db")).open()
    svc = PollerService(st, parse({"poller": {"enabled": False, "maildir_root": str(tmp_path / "maildir")}}))
    # pasted with stray spaces, as admins do: trimmed on save, or the provider says "unknown client"
    imap = ChannelConfig(name="o365", host="127.0.0.1", port=dc.imap_port, tls="starttls",
                         server_name="localhost", ca_file=dc.cert, user=USER, auth="oauth2",
                         oauth2_token_url=ts.token_url + " ",
                         oauth2_client_id=" cid-123 ", oauth2_client_secret="s3cret\t",
                         oauth2_refresh_token="rt-initial ", default_campaign="desk")
    pop = ChannelConfig(name="pop", protocol="pop3", host="127.0.0.1", port=dc.pop3_port, tls="starttls",
                        server_name="localhost", ca_file=dc.cert, user=USER, auth="oauth2",
                        oauth2_token_url=ts.token_url, oauth2_client_id="cid-123",
                        oauth2_client_secret="s3cret",
                        default_campaign="desk", after="seen")
    await channels.seed(st.inbound, [CampaignConfig("desk")], [imap, pop])
    await svc.start()

    async def poll(ch: ChannelConfig):
        return await run_once(st.inbound, ch, svc.pcfg, svc.deliver, svc.connect, time.time())

    try:
        imap = await channels.get_channel(st.inbound, "o365")
        assert (imap.oauth2_client_id, imap.oauth2_client_secret) == ("cid-123", "s3cret")

        dc.append(USER, "password-not-used", msg("first"))
        assert (await poll(imap)).delivered == 1
        assert ts.grants == ["refresh_token"] and ts.introspections >= 1
        stored = await st.inbound.oauth_refresh("o365")
        assert stored == ts.refresh_token != "rt-initial"          # the rotated token is kept ...

        oauth2._cache.clear()                                      # ... and used after a restart: the
        ts.revoke_all()                                            # configured one is dead by now
        dc.append(USER, "password-not-used", msg("second"))
        assert (await poll(imap)).delivered == 1
        assert ts.grants == ["refresh_token", "refresh_token"] and not ts.errors

        # a token the server no longer accepts: Validate shows Dovecot's own words, and the next
        # attempt fetches a fresh token instead of reusing the cached one
        ts.revoke_all()
        dc.clear_penalty()
        v = await svc.validate("o365")
        assert not v.ok and "[AUTHENTICATIONFAILED] Authentication failed." in v.text, v
        dc.clear_penalty()
        v = await svc.validate("o365")
        assert (v.ok, v.text) == (True, "Connection succeeded")
        assert await st.inbound.oauth_refresh("o365") == ts.refresh_token     # a rotation while validating

        # POP3 + STLS with the client-credentials grant (no refresh token configured)
        dc.append(USER, "password-not-used", msg("third"))
        pop = await channels.get_channel(st.inbound, "pop")
        res = await poll(pop)
        assert res.delivered == 3 and ts.grants[-1] == "client_credentials"   # POP3 sees the whole mailbox
        assert delivered(tmp_path) == ["first", "first", "second", "second", "third"]

        # a wrong client secret: the token endpoint's own error reaches the admin
        bad = ChannelConfig(**{**imap.__dict__, "name": "bad", "oauth2_client_secret": "nope",
                               "oauth2_refresh_token": ""})
        await channels.save_channel(st.inbound, bad)
        v = await svc.validate("bad")
        want = "Connection failed: token endpoint refused: AADSTS700016: unknown client 'cid-123'"
        assert not v.ok and v.text == want

        listed = json.dumps(await channels.list_channels(st.inbound))
        for secret in ("s3cret", "rt-initial", ts.refresh_token):
            assert secret not in listed
    finally:
        await svc.stop()
        st.close()
