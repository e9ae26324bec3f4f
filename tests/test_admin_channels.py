"""Channels, campaigns, filters and quarantine through the admin API, with the real poller and a real
Dovecot."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.admin_support import running
from tests.peers.dovecot import Dovecot
from tests.peers.ports import free_port

pytestmark = pytest.mark.integration

USER, PASSWORD = "support@org.test", "imap-secret-Qw31"


@pytest.fixture(scope="module")
def dovecot():
    d = Dovecot({USER: PASSWORD}).start()
    yield d
    d.stop()


def channel(dovecot, **kw):
    return {"name": "support", "host": "127.0.0.1", "port": dovecot.imap_port, "tls": "starttls",
            "verify": False, "user": USER, "password": PASSWORD, "default_campaign": "desk", "enabled": False,
            **kw}


async def test_channels_campaigns_filters_and_validate(tmp_path, dovecot):
    async with running(tmp_path) as (app, api):
        assert app.poller is not None
        st, body = await api.call("POST", "/api/v1/campaigns", json={"name": "desk", "kind": "maildir",
                                                                     "path": str(tmp_path / "desk")})
        assert st == 201 and body["kind"] == "maildir"
        assert (await api.call("POST", "/api/v1/campaigns", json={"name": "desk"}))[0] == 409
        st, body = await api.call("POST", "/api/v1/campaigns", json={"name": "crm", "kind": "webhook"})
        assert st == 422 and "url" in body["error"]["message"]
        st, body = await api.call("POST", "/api/v1/campaigns", json={"name": "crm", "kind": "webhook",
                                                                     "url": "http://127.0.0.1:9/x",
                                                                     "secret": "campaign-secret-Zz"})
        assert st == 201 and body["secret"] == "***"

        # activation needs a default campaign; the storage folder must differ from the source
        st, body = await api.call("POST", "/api/v1/channels", json=channel(dovecot, default_campaign="",
                                                                           enabled=True))
        assert st == 422 and "default campaign" in body["error"]["message"]
        st, body = await api.call("POST", "/api/v1/channels", json=channel(dovecot, after="move",
                                                                           storage_folder="INBOX"))
        assert st == 422 and "differ" in body["error"]["message"]
        st, body = await api.call("POST", "/api/v1/channels", json=channel(dovecot, colour="red"))
        assert st == 422 and "colour" in body["error"]["message"]
        st, body = await api.call("POST", "/api/v1/channels", json=channel(dovecot))
        assert st == 201 and body["password"] == "***" and body["state"] == "inactive"
        assert (await api.call("POST", "/api/v1/channels", json=channel(dovecot)))[0] == 409

        st, v = await api.call("POST", "/api/v1/channels/support/validate")
        assert st == 200 and v["ok"] and v["result"] == "Connection succeeded", v
        # the redacted view round-trips without losing the stored password
        st, shown = await api.call("GET", "/api/v1/channels/support")
        st, body = await api.call("PUT", "/api/v1/channels/support", json={**shown, "folder": "INBOX"})
        assert st == 200, body
        assert (await api.call("POST", "/api/v1/channels/support/validate"))[1]["ok"]
        # a wrong password: validation answers with the server's own words
        st, _ = await api.call("PUT", "/api/v1/channels/support", json={"password": "wrong"})
        st, v = await api.call("POST", "/api/v1/channels/support/validate")
        assert st == 200 and not v["ok"] and "uthentication failed" in v["result"], v
        await api.call("PUT", "/api/v1/channels/support", json={"password": PASSWORD})
        assert (await api.call("POST", "/api/v1/channels/nope/validate"))[0] == 404
        st, body = await api.call("PUT", "/api/v1/channels/support", json={"name": "other"})
        assert st == 422

        # ordered filters
        items = [{"field": "subject", "op": "contains", "value": "invoice", "campaign": "crm"},
                 {"field": "sender", "op": "equals", "value": "vip@example.test", "campaign": "desk"}]
        st, body = await api.call("PUT", "/api/v1/channels/support/filters", json={"items": items})
        assert st == 200 and body["items"] == items
        assert (await api.call("GET", "/api/v1/channels/support/filters"))[1]["items"] == items
        st, body = await api.call("PUT", "/api/v1/channels/support/filters",
                                  json={"items": [{**items[0], "op": "like"}]})
        assert st == 422
        st, body = await api.call("PUT", "/api/v1/channels/support/filters",
                                  json={"items": [{**items[0], "campaign": "nowhere"}]})
        assert st == 422 and "unknown campaign" in body["error"]["message"]
        st, body = await api.call("DELETE", "/api/v1/campaigns/crm")
        assert st == 409                       # still used by a filter

        st, body = await api.call("POST", "/api/v1/channels/support/enable")
        assert st == 200 and body["enabled"]
        st, body = await api.call("GET", "/api/v1/channels")
        text = str(body)
        assert PASSWORD not in text and "campaign-secret-Zz" not in text
        assert PASSWORD not in str(await api.call("GET", "/api/v1/campaigns"))
        assert (await api.call("POST", "/api/v1/channels/support/disable"))[1]["enabled"] is False
        assert (await api.call("DELETE", "/api/v1/channels/support"))[0] == 200
        assert (await api.call("GET", "/api/v1/channels/support"))[0] == 404
        assert (await api.call("DELETE", "/api/v1/campaigns/crm"))[0] == 200


async def test_quarantine_inspect_retry_drop(tmp_path, dovecot):
    user, pw = "poison@org.test", "imap-secret-Pp77"
    dovecot.add_user(user, pw)
    dovecot.append(user, pw, b"From: a@example.test\r\nSubject: cannot deliver\r\n"
                             b"Message-ID: <q1@example.test>"
                             b"\r\n\r\nbody\r\n")
    extra = {
        "poller": {"max_tries": 1},
        "campaigns": [{"name": "dead", "kind": "webhook", "url": f"http://127.0.0.1:{free_port()}/x",
                       "timeout": "2s"}],
        "channels": [{"name": "box", "host": "127.0.0.1", "port": dovecot.imap_port, "tls": "none",
                      "user": user, "password": pw, "default_campaign": "dead", "idle": False,
                      "poll_interval": "1s"}],
    }
    async with running(tmp_path, **extra) as (app, api):
        deadline = time.monotonic() + 15
        items: list = []
        while time.monotonic() < deadline and not items:
            items = (await api.call("GET", "/api/v1/quarantine"))[1]["items"]
            await asyncio.sleep(0.2)
        assert len(items) == 1, items
        q = items[0]
        assert q["channel"] == "box" and q["message_id"] == "<q1@example.test>" and q["last_error"]
        st, one = await api.call("GET", f"/api/v1/quarantine/{q['id']}")
        assert st == 200 and ["Subject", "cannot deliver"] in one["headers"]
        st, raw = await api.call("GET", f"/api/v1/quarantine/{q['id']}/raw")
        assert st == 200 and raw.startswith(b"From: a@example.test")
        st, ch = await api.call("GET", "/api/v1/channels/box")
        assert ch["quarantined"] == 1 and ch["fetched"] >= 1 and ch["password"] == "***"
        st, body = await api.call("GET", "/metrics")
        assert 'relaybox_poller_quarantined_messages_total{channel="box"}' in body.decode()
        st, body = await api.call("POST", f"/api/v1/quarantine/{q['id']}/retry")
        assert st == 200 and body["status"] == "received"
        # the retry fails again (max_tries 1) and the message is back in quarantine, not lost
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st, one = await api.call("GET", f"/api/v1/quarantine/{q['id']}")
            if st == 200:
                break
            await asyncio.sleep(0.2)
        assert st == 200
        assert (await api.call("DELETE", f"/api/v1/quarantine/{q['id']}"))[0] == 200
        assert (await api.call("GET", f"/api/v1/quarantine/{q['id']}"))[0] == 404
        assert (await api.call("POST", "/api/v1/quarantine/999999/retry"))[0] == 404
        assert (await api.call("GET", "/api/v1/quarantine/x1"))[0] == 404


async def test_save_validates_state_search_and_identifiers(tmp_path, dovecot):
    async with running(tmp_path) as (app, api):
        assert (await api.call("POST", "/api/v1/campaigns", json={"name": "desk"}))[0] == 201
        st, body = await api.call("POST", "/api/v1/campaigns", json={"name": "../../etc", "kind": "maildir"})
        assert st == 400 and "not an identifier" in body["error"]["message"]
        assert (await api.call("GET", "/api/v1/campaigns/..%2F..%2Fetc"))[0] == 404

        dovecot.clear_penalty()
        st, body = await api.call("POST", "/api/v1/channels", json=channel(dovecot, password="wrong",
                                                                           enabled=True))
        assert st == 422, body
        assert body["error"]["message"].startswith("Connection failed: login failed: NO")
        assert "saved only as inactive" in body["error"]["message"]
        assert (await api.call("GET", "/api/v1/channels/support"))[0] == 404        # not saved

        st, body = await api.call("POST", "/api/v1/channels", json=channel(dovecot, password="wrong",
                                                                           sync_all_folders=True))
        assert st == 201 and body["validation"]["ok"] is False
        assert body["validation"]["result"].startswith("Connection failed: ")
        assert body["state"] == "inactive" and body["status"]["up"] is False
        assert body["last_error"] == body["validation"]["result"] and body["sync_all_folders"] is True
        st, body = await api.call("POST", "/api/v1/channels/support/enable")
        assert st == 422 and body["error"]["message"].startswith("Connection failed: "), body
        st, body = await api.call("PUT", "/api/v1/channels/support", json={"password": PASSWORD})
        assert st == 200 and body["validation"]["result"] == "Connection succeeded"
        assert body["last_error"] is None and body["state"] == "inactive"
        st, body = await api.call("POST", "/api/v1/channels/support/enable")
        assert st == 200 and body["state"] == "active" and body["validation"]["ok"]

        st, body = await api.call("POST", "/api/v1/channels", json=channel(
            dovecot, name="sales", short_name="s1", address="sales@org.test", default_campaign="desk"))
        assert st == 201 and body["short_name"] == "s1"
        names = {}
        for query in ("state=active", "state=inactive", "name=S1", "address=sales@", "campaign=desk",
                      "q=127.0.0.1", "campaign=nope"):
            st, body = await api.call("GET", f"/api/v1/channels?{query}")
            assert st == 200
            names[query] = [c["name"] for c in body["items"]]
        assert names == {"state=active": ["support"], "state=inactive": ["sales"], "name=S1": ["sales"],
                         "address=sales@": ["sales"], "campaign=desk": ["sales", "support"],
                         "q=127.0.0.1": ["sales", "support"], "campaign=nope": []}
        assert (await api.call("GET", "/api/v1/channels?state=up"))[0] == 400

        st, doc = await api.call("GET", "/api/v1/openapi.json")
        props = doc["paths"]["/api/v1/channels"]["post"]["requestBody"]["content"]["application/json"][
            "schema"]["properties"]
        for f in ("sync_all_folders", "recipient_only", "short_name", "first_sync", "server_name", "verify",
                  "oauth2_client_secret", "idle", "purpose"):
            assert f in props, f
        st, v = await api.call("POST", "/api/v1/channels/sales/validate")
        assert st == 200 and v["ok"] and v["result"] == "Connection succeeded"
