"""The console pages of campaigns, quarantine, channel filters, routes, allowlist, SMTP users, DKIM,
webhooks and the CSV exports (admin_api/ui/pages_*.py), over HTTP against a real relaybox App: every page
renders for an admin and a read-only session, the read-only one sees no write controls and its POSTs are
refused, a POST without the CSRF token is refused and changes nothing, hostile input is escaped, and each
write does what the matching API call does (checked through the API)."""

from __future__ import annotations

import csv
import io
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from poller import channels
from poller.config import ChannelConfig
from relay.bounces import record as bounce_handler
from relay.delivery import dkim
from relay.intake import policy
from store.inbound import Fetched
from tests.admin_support import running
from tests.peers.ports import free_port
from tests.peers.sink import Sink
from tests.test_console import RO_SECRET, SECRET, Browser, _csrf

pytestmark = pytest.mark.component

XSS = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
ROUTE_PW = "route-password-Zq81"
HOOK_SECRET = "hook-secret-Xy71"
PAGES = (
    "/ui/campaigns",
    "/ui/campaigns/new",
    "/ui/campaigns/desk/edit",
    "/ui/quarantine",
    "/ui/channels/box/filters",
    "/ui/routes",
    "/ui/routes/new",
    "/ui/allowlist",
    "/ui/users",
    "/ui/dkim",
    "/ui/webhooks",
    "/ui/webhooks/crm",
)
NAV = (
    "/ui/campaigns",
    "/ui/quarantine",
    "/ui/routes",
    "/ui/allowlist",
    "/ui/users",
    "/ui/dkim",
    "/ui/webhooks",
    "/ui/dashboard",
    "/ui/outbox",
    "/ui/channels",
)


def _dsn(address: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example.test\r\nTo: app@org.test\r\nSubject: Undelivered\r\n"
        f"Message-ID: <dsn-{address}>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nCould not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.test\r\n\r\n"
        f"Final-Recipient: rfc822; {address}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{address}>: User unknown\r\n\r\n--B--\r\n"
    ).encode()


async def _prepare(app, tmp_path) -> int:
    """A campaign, a channel using it, a quarantined message with a hostile subject; returns its id."""
    inbound = app.store.inbound
    from admin_api import routes_campaigns

    await routes_campaigns.create(
        inbound, {"name": "desk", "kind": "maildir", "path": str(tmp_path / "desk")}
    )
    await channels.save_channel(
        inbound,
        ChannelConfig(
            name="box", host="127.0.0.1", user="u", password="pw", enabled=False, default_campaign="desk"
        ),
    )
    raw = f"From: x@y.test\r\nSubject: {XSS}\r\nMessage-ID: <q1@y.test>\r\n\r\nbody {XSS}\r\n".encode()
    await inbound.store_fetched(
        "box",
        "INBOX",
        1,
        [Fetched("7", raw, skip=f"parse error {XSS}", message_id="<q1@y.test>")],
        last_uid=7,
    )
    [q] = await inbound.quarantine()
    return q.id


@pytest.fixture
async def live(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "org.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    sink = await Sink().start()
    extra = {
        "routes": [
            {"name": "sink", "host": "127.0.0.1", "port": sink.port, "tls": "none"},
            {
                "name": "closed",
                "host": "127.0.0.1",
                "port": free_port(),
                "tls": "none",
                "username": "relay@org.test",
                "password": ROUTE_PW,
                "allow_plaintext_auth": True,
            },
        ],
        "delivery": {"connect_timeout": "3s"},
        "dkim": {
            "enabled": True,
            "default_domain": "org.test",
            "domains": {"org.test": {"selector": "s1", "key_file": str(tmp_path / "org.key")}},
        },
        "webhooks": [
            {
                "name": "crm",
                "url": f"http://user:pw@127.0.0.1:{free_port()}/hook?key=abc",
                "secret": HOOK_SECRET,
            }
        ],
    }
    try:
        async with running(tmp_path, **extra) as (app, api):
            app.dkim_public = dkim.dns_record(key)  # the test's own copy of what the page shows
            qid = await _prepare(app, tmp_path)
            admin, ro = Browser(api.base), Browser(api.base)
            try:
                await admin.sign_in(SECRET)
                await ro.sign_in(RO_SECRET)
                yield app, api, admin, ro, qid
            finally:
                await admin.close()
                await ro.close()
    finally:
        await sink.stop()


def _post_forms(html: str) -> list[str]:
    return [a for a in re.findall(r'<form method="post" action="([^"]+)"', html) if a != "/ui/logout"]


async def test_every_page_renders_for_admin_and_read_only(live):
    app, api, admin, ro, qid = live
    for path in (*PAGES, f"/ui/quarantine/{qid}"):
        r, html = await admin.get(path)
        assert r.status == 200 and r.url.path == path, (path, r.status, html[:500])
        assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
        for link in NAV:  # every page in the navigation, on every page
            assert f'href="{link}"' in html, (path, link)
        assert ROUTE_PW not in html and HOOK_SECRET not in html and "scrypt$" not in html
        if path not in ("/ui/dkim", "/ui/webhooks/crm", "/ui/quarantine"):
            assert _post_forms(html), path  # the admin has write controls on the page
    for path in (p for p in PAGES if not p.endswith(("/new", "/edit"))):
        r, html = await ro.get(path)
        assert r.status == 200, (path, r.status)
        assert _post_forms(html) == [], (path, _post_forms(html))  # no write controls at all
        assert "Add a campaign" not in html and 'id="new-campaign"' not in html
    for path in ("/ui/campaigns/new", "/ui/campaigns/desk/edit", "/ui/routes/new"):
        r, _ = await ro.get(path)
        assert r.status == 403
    r, html = await ro.get(f"/ui/quarantine/{qid}")
    assert r.status == 200 and _post_forms(html) == []
    r, html = await admin.get("/ui/dkim")
    assert app.dkim_public in html and "s1._domainkey.org.test" in html and "ed25519-sha256" in html
    r, html = await admin.get("/ui/webhooks")
    assert "http://127.0.0.1:" in html and "user:pw" not in html and "key=abc" not in html
    r, _ = await admin.get("/ui/webhooks/nope")
    assert r.status == 404
    r, _ = await admin.get("/ui/quarantine/999999")
    assert r.status == 404


WRITES = [
    ("/ui/campaigns/new", {"name": "c2", "kind": "maildir"}),
    ("/ui/campaigns/desk/edit", {"kind": "maildir"}),
    ("/ui/campaigns/desk/delete", {}),
    ("/ui/quarantine/{qid}/drop", {}),
    ("/ui/quarantine/{qid}/retry", {}),
    ("/ui/channels/box/filters", {"op_kind": "add", "field": "subject", "value": "x", "campaign": "desk"}),
    ("/ui/routes/sink/test", {}),
    ("/ui/routes/new", {"route_name": "r9", "host": "127.0.0.1", "tls": "none"}),
    ("/ui/routes/sink/delete", {}),
    ("/ui/allowlist/add", {"cidr": "10.9.0.0/16"}),
    ("/ui/allowlist/remove", {"cidr": "127.0.0.1/32"}),
    ("/ui/users/add", {"username": "u9", "password": "password-123"}),
    ("/ui/users/password", {"username": "u9", "password": "password-123"}),
    ("/ui/users/remove", {"username": "u9"}),
    ("/ui/webhooks/crm/retry", {}),
]


async def _state(app) -> tuple:
    inbound = app.store.inbound
    ch = await channels.get_channel(inbound, "box")
    return (
        tuple(c["name"] for c in await channels.list_campaigns(inbound)),
        tuple(q.id for q in await inbound.quarantine()),
        ch.filters if ch else None,
        tuple(e.cidr for e in await app.store.access.list_allowlist()),
        tuple((u.username, u.note) for u in await app.store.access.list_users()),
        tuple((r.name, tuple(sorted(r.settings.items(), key=str))) for r in await app.store.routes.list()),
    )


async def test_read_only_and_csrf_less_posts_are_refused_and_change_nothing(live):
    app, api, admin, ro, qid = live
    before = await _state(app)
    _, html = await ro.get("/ui/allowlist")
    ro_csrf = _csrf(html)
    for path, data in WRITES:
        path = path.format(qid=qid)
        r, page = await ro.post(path, {**data, "csrf": ro_csrf}, allow_redirects=False)
        assert r.status == 403 and "read-only" in page, (path, r.status)
        r, page = await admin.post(path, data, allow_redirects=False)
        assert r.status == 403 and "CSRF" in page, (path, r.status)
        r, page = await admin.post(path, {**data, "csrf": "forged"}, allow_redirects=False)
        assert r.status == 403, path
        assert "Traceback" not in page
    assert await _state(app) == before


async def test_campaign_add_edit_delete_through_the_api_steps(live):
    app, api, admin, ro, qid = live
    _, html = await admin.get("/ui/campaigns/new")
    form = {
        "csrf": _csrf(html),
        "name": "hook1",
        "kind": "webhook",
        "url": "https://crm.test/in",
        "secret": "campaign-secret-1",
        "timeout": "7s",
        "attachments": "none",
        "path": "",
        "forward_to": "",
        "sender": "",
    }
    r, html = await admin.post("/ui/campaigns/new", form)
    assert (
        r.url.path == "/ui/campaigns"
        and "campaign hook1: saved" in html
        and "campaign-secret-1" not in html
    )
    st, c = await api.call("GET", "/api/v1/campaigns/hook1")
    assert (c["kind"], c["url"], c["timeout"], c["attachments"], c["secret"]) == (
        "webhook",
        "https://crm.test/in",
        7.0,
        "none",
        "***",
    )
    # the edit form never draws the secret back; an empty secret keeps it
    r, html = await admin.get("/ui/campaigns/hook1/edit")
    assert (
        "campaign-secret-1" not in html and 'value="https://crm.test/in"' in html and 'value="7s"' in html
    )
    r, html = await admin.post(
        "/ui/campaigns/hook1/edit",
        {**form, "csrf": _csrf(html), "secret": "", "url": "https://crm.test/v2"},
    )
    assert "campaign hook1: saved" in html
    stored = await channels.get_campaign(app.store.inbound, "hook1")
    assert stored.url == "https://crm.test/v2" and stored.secret == "campaign-secret-1"
    # the API's refusals, in the API's words, with what was typed (never the secret)
    r, html = await admin.post("/ui/campaigns/new", {**form, "csrf": _csrf(html), "name": "hook1"})
    assert r.status == 409 and "hook1 exists" in html and "campaign-secret-1" not in html
    r, html = await admin.post(
        "/ui/campaigns/new", {**form, "csrf": _csrf(html), "name": "h2", "kind": "smtp"}
    )
    assert r.status == 422 and "forward_to" in html and 'value="h2"' in html
    r, html = await admin.post("/ui/campaigns/new", {**form, "csrf": _csrf(html), "name": "../etc"})
    assert r.status == 400 and (await api.call("GET", "/api/v1/campaigns/..%2Fetc"))[0] == 404
    # a campaign a channel uses is not deleted (409 in words); an unused one is
    r, html = await admin.post("/ui/campaigns/desk/delete", {"csrf": _csrf(html)})
    assert r.url.path == "/ui/campaigns" and "campaign desk:" in html and "deleted" not in html
    assert (await api.call("GET", "/api/v1/campaigns/desk"))[0] == 200
    r, html = await admin.post("/ui/campaigns/hook1/delete", {"csrf": _csrf(html)})
    assert (
        "campaign hook1: deleted" in html and (await api.call("GET", "/api/v1/campaigns/hook1"))[0] == 404
    )
    # hostile text in a campaign's settings is shown as text, in the list and in the form
    r, html = await admin.post(
        "/ui/campaigns/new",
        {**form, "csrf": _csrf(html), "name": "fwd", "kind": "smtp", "forward_to": f"a{XSS}@b.test"},
    )
    assert "campaign fwd: saved" in html and XSS not in html and ESCAPED in html
    r, html = await admin.get("/ui/campaigns/fwd/edit")
    assert XSS not in html and ESCAPED in html


async def test_quarantine_is_shown_safely_then_retried_and_dropped(live):
    app, api, admin, ro, qid = live
    r, html = await admin.get("/ui/quarantine")
    assert f'href="/ui/quarantine/{qid}"' in html and XSS not in html and ESCAPED in html
    r, html = await admin.get(f"/ui/quarantine/{qid}")
    assert XSS not in html and html.count(ESCAPED) >= 3  # error, Subject field, body preview: text only
    r, eml = await admin.get(f"/ui/quarantine/{qid}/eml")
    assert r.headers["Content-Disposition"] == f'attachment; filename="inbound-{qid}.eml"' and XSS in eml
    r, html = await admin.post(f"/ui/quarantine/{qid}/retry", {"csrf": _csrf(html)})
    assert f"message {qid}: back to" in html and await app.store.inbound.quarantined(qid) is None
    assert (await app.store.inbound.get(qid)).status == "received"
    # a second one is dropped for good
    await app.store.inbound.store_fetched(
        "box", "INBOX", 1, [Fetched("8", b"Subject: x\r\n\r\ny", skip="bad")]
    )
    [q] = await app.store.inbound.quarantine()
    r, html = await admin.post(f"/ui/quarantine/{q.id}/drop", {"csrf": _csrf(html)})
    assert (
        f"message {q.id}: dropped" in html
        and (await api.call("GET", f"/api/v1/quarantine/{q.id}"))[0] == 404
    )
    r, html = await admin.post(f"/ui/quarantine/{q.id}/drop", {"csrf": _csrf(html)})
    assert r.status == 404


async def _filters(api) -> list[tuple[str, str]]:
    st, body = await api.call("GET", "/api/v1/channels/box/filters")
    return [(f["field"], f["value"]) for f in body["items"]]


async def test_filter_editor_keeps_order_add_move_remove(live):
    app, api, admin, ro, qid = live
    for value, position in (("a", ""), ("b", ""), ("first", "1")):
        _, html = await admin.get("/ui/channels/box/filters")
        version = re.search(r'name="version" value="([^"]+)"', html).group(1)
        r, html = await admin.post(
            "/ui/channels/box/filters",
            {
                "csrf": _csrf(html),
                "version": version,
                "op_kind": "add",
                "field": "subject",
                "op": "contains",
                "value": value,
                "campaign": "desk",
                "position": position,
            },
        )
        assert "added" in html, html[:3000]
    assert await _filters(api) == [("subject", "first"), ("subject", "a"), ("subject", "b")]

    async def edit(kind: str, index: int, **extra):
        _, page = await admin.get("/ui/channels/box/filters")
        version = re.search(r'name="version" value="([^"]+)"', page).group(1)
        return await admin.post(
            "/ui/channels/box/filters",
            {"csrf": _csrf(page), "version": version, "op_kind": kind, "index": str(index), **extra},
        )

    await edit("down", 0)
    assert await _filters(api) == [("subject", "a"), ("subject", "first"), ("subject", "b")]
    await edit("up", 2)
    assert await _filters(api) == [("subject", "a"), ("subject", "b"), ("subject", "first")]
    r, html = await edit("up", 0)
    assert "cannot move up" in html
    await edit("remove", 1)
    assert await _filters(api) == [("subject", "a"), ("subject", "first")]
    r, html = await edit(
        "add", 0, field="header", header="List-Id", op="equals", value=XSS, campaign="desk"
    )
    assert ("header:List-Id", XSS) in await _filters(api) and XSS not in html and ESCAPED in html
    r, html = await edit("add", 0, field="subject", op="contains", value="x", campaign="nowhere")
    assert "nowhere" in html and len(await _filters(api)) == 3  # the API's refusal, nothing saved
    # a change posted against an older page is refused: someone else changed the order meanwhile
    _, page = await admin.get("/ui/channels/box/filters")
    old_version = re.search(r'name="version" value="([^"]+)"', page).group(1)
    await edit("down", 0)
    r, html = await admin.post(
        "/ui/channels/box/filters",
        {"csrf": _csrf(page), "version": old_version, "op_kind": "remove", "index": "0"},
    )
    assert "changed since this page was loaded" in html and len(await _filters(api)) == 3


async def test_allowlist_and_smtp_users(live):
    app, api, admin, ro, qid = live
    _, html = await admin.get("/ui/allowlist")
    r, html = await admin.post(
        "/ui/allowlist/add", {"csrf": _csrf(html), "cidr": "10.20.0.0/16", "note": XSS}
    )
    assert "10.20.0.0/16 may relay now" in html and XSS not in html and ESCAPED in html
    assert app.policy.ip_allowed("10.20.3.4")  # the intake's policy was refreshed at once
    st, body = await api.call("GET", "/api/v1/allowlist")
    assert {"cidr": "10.20.0.0/16", "note": XSS} in [
        {k: e[k] for k in ("cidr", "note")} for e in body["items"]
    ]
    r, html = await admin.post("/ui/allowlist/add", {"csrf": _csrf(html), "cidr": "10.20.0.0/16"})
    assert r.status == 409 and "already on the allowlist" in html
    r, html = await admin.post(
        "/ui/allowlist/add", {"csrf": _csrf(html), "cidr": "10.300.0.0/16", "note": "n1"}
    )
    assert r.status == 422 and "cidr:" in html and 'value="10.300.0.0/16"' in html and 'value="n1"' in html
    r, html = await admin.post("/ui/allowlist/remove", {"csrf": _csrf(html), "cidr": "10.20.0.0/16"})
    assert "10.20.0.0/16 removed" in html and not app.policy.ip_allowed("10.20.3.4")
    assert "10.20.0.0/16" not in str((await api.call("GET", "/api/v1/allowlist"))[1])

    password, second = "first-password-Jx9", "second-password-Lk2"
    r, html = await admin.post(
        "/ui/users/add", {"csrf": _csrf(html), "username": "app7", "password": password, "note": XSS}
    )
    assert "SMTP user app7 added" in html and password not in html and XSS not in html and ESCAPED in html
    assert policy.verify_password(password, (await app.store.access.snapshot()).users["app7"])
    assert app.policy.check_login("app7", password)
    r, html = await admin.post(
        "/ui/users/add", {"csrf": _csrf(html), "username": "app7", "password": second}
    )
    assert r.status == 409 and "Reset password" in html
    r, html = await admin.post(
        "/ui/users/add", {"csrf": _csrf(html), "username": "app8", "password": "short"}
    )
    assert r.status == 422 and "at least 8" in html and 'value="app8"' in html and "short" not in html
    hash_before = (await app.store.access.snapshot()).users["app7"]
    r, html = await admin.post(
        "/ui/users/password", {"csrf": _csrf(html), "username": "app7", "password": second}
    )
    assert "app7: password reset" in html and second not in html
    after = (await app.store.access.snapshot()).users["app7"]
    assert after != hash_before and policy.verify_password(second, after)
    assert app.policy.check_login("app7", second) and not app.policy.check_login("app7", password)
    assert [u.note for u in await app.store.access.list_users() if u.username == "app7"] == [XSS]  # kept
    r, html = await admin.post("/ui/users/remove", {"csrf": _csrf(html), "username": "app7"})
    assert "SMTP user app7 removed" in html and "app7" not in str(
        (await api.call("GET", "/api/v1/smtp-users"))[1]
    )


async def test_route_test_button_against_a_sink_and_a_closed_port(live):
    app, api, admin, ro, qid = live
    _, html = await admin.get("/ui/routes")
    assert 'id="test-sink"' in html and "unknown" in html
    assert 'id="edit-sink"' not in html  # a route of the config file is changed there
    r, html = await admin.post("/ui/routes/sink/test", {"csrf": _csrf(html)})
    assert r.status == 200 and re.search(r'id="test-words">Connection succeeded<', html), html[:3000]
    assert 'id="test-transcript"' in html and "EHLO" in html and "RCPT TO" in html
    r, html = await admin.post("/ui/routes/closed/test", {"csrf": _csrf(html)})
    words = re.search(r'id="test-words">([^<]+)<', html).group(1)
    assert words.startswith("Connection failed at CONNECT: ") and ROUTE_PW not in html, words
    r, html = await admin.post("/ui/routes/nope/test", {"csrf": _csrf(html)})
    assert r.status == 404
    r, html = await admin.get("/ui/routes/sink/edit")
    assert r.status == 409 and "config file" in html


async def test_route_add_edit_delete_through_the_api_steps(live):
    app, api, admin, ro, qid = live
    sink_port = next(
        r["port"] for r in (await api.call("GET", "/api/v1/routes"))[1]["items"] if r["name"] == "sink"
    )
    secret = "relay-pass-Vb27"
    _, html = await admin.get("/ui/routes/new")
    form = {
        "csrf": _csrf(html),
        "route_name": "m365",
        "host": "127.0.0.1",
        "port": str(sink_port),
        "tls": "none",
        "username": "relay@org.test",
        "password": secret,
        "allow_plaintext_auth": "true",
        "from_domains": "billing.org.test, shop.org.test",
        "from_addresses": "",
        "auth_users": "",
        "client_networks": "",
        "sender": "",
        "tls_verify": "true",
    }
    r, html = await admin.post("/ui/routes/new", form)
    # saved either way, the test's words in the flash (the in-process sink offers no AUTH: it fails there)
    assert r.url.path == "/ui/routes" and "route m365: saved; Connection " in html and secret not in html
    st, v = await api.call("GET", "/api/v1/routes/m365")
    assert (
        v["password_set"]
        and v["from_domains"] == ["billing.org.test", "shop.org.test"]
        and v["source"] == "api"
    )
    assert secret in str((await app.store.routes.get("m365")).settings.values())
    # the edit form never draws a secret back; an empty one keeps it
    r, html = await admin.get("/ui/routes/m365/edit")
    assert secret not in html and 'value="billing.org.test, shop.org.test"' in html and "unchanged" in html
    r, html = await admin.post(
        "/ui/routes/m365/edit",
        {**form, "csrf": _csrf(html), "password": "", "username": "", "allow_plaintext_auth": ""},
    )
    assert "route m365: saved; Connection succeeded" in html, html[:2000]
    assert (await app.store.routes.get("m365")).settings.get("password") == secret
    # the API's refusals in its words, what was typed kept (never the secret)
    r, html = await admin.post(
        "/ui/routes/new", {**form, "csrf": _csrf(html), "route_name": "bad", "tls": "bogus"}
    )
    assert r.status == 422 and "tls" in html and 'value="bad"' in html and secret not in html
    r, html = await admin.post("/ui/routes/new", {**form, "csrf": _csrf(html)})
    assert r.status == 409 and "m365 exists" in html
    r, html = await admin.post("/ui/routes/m365/delete", {"csrf": _csrf(html)})
    assert "route m365: deleted" in html and (await api.call("GET", "/api/v1/routes/m365"))[0] == 404
    r, html = await admin.post("/ui/routes/sink/delete", {"csrf": _csrf(html)})  # the config file's: refused
    assert "route sink: route sink is defined in the config file" in html
    assert (await api.call("GET", "/api/v1/routes/sink"))[0] == 200


async def test_webhook_retry_pending_now(live):
    app, api, admin, ro, qid = live
    _, html = await admin.get("/ui/webhooks")
    assert "crm" in html and ("unknown" in html or "failing" in html)
    r, html = await admin.post("/ui/webhooks/crm/retry", {"csrf": _csrf(html)})
    assert r.url.path == "/ui/webhooks" and "crm: 0 pending deliveries retried now" in html


async def test_csv_exports_follow_the_current_search(live):
    app, api, admin, ro, qid = live
    for a in ("gone@example.test", "=cmd|calc@example.test", "other@example.test"):
        await bounce_handler.process(
            app.store.bounces, app.settings.relay.bounces, _dsn(a), source="channel"
        )
    await app.store.bounces.suppress("manual@example.test", "manual", "manual", "api", note=XSS)
    r, html = await admin.get("/ui/bounces?address=gone@example.test")
    assert 'href="/ui/bounces.csv?address=gone%40example.test"' in html
    r, text = await admin.get("/ui/bounces.csv?address=gone@example.test")
    assert r.headers["Content-Disposition"] == 'attachment; filename="bounces.csv"'
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["address"] for row in rows] == ["gone@example.test"] and rows[0]["reason"] == "userunknown"
    r, text = await admin.get("/ui/bounces.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 3 and "'=cmd|calc@example.test" in [row["address"] for row in rows]  # not a formula
    r, text = await ro.get("/ui/suppressions.csv?search=manual")  # reading is allowed read-only
    rows = list(csv.DictReader(io.StringIO(text)))
    assert r.status == 200 and [(row["address"], row["note"]) for row in rows] == [
        ("manual@example.test", XSS)
    ]
    r, text = await admin.get("/ui/suppressions.csv")  # no search: every active entry
    every = [e.address for e in await app.store.bounces.export_suppressions()]
    assert [row["address"] for row in csv.DictReader(io.StringIO(text))] == every and len(every) >= 1
