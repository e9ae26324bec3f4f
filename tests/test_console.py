"""The admin web console (admin_api/ui, docs/console.md) through aiohttp's client against a real relaybox
App: sign-in and the session cookie, CSRF, read-only sessions, escaping, the security headers, and that
the console and the API do not open each other."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from admin_api.app import AUTH_KEY
from admin_api.ui import session as ui_session
from store.history import MessageFilter
from tests.admin_support import RO_TOKEN, TOKEN, running, smtp_send

pytestmark = pytest.mark.component

SECRET, RO_SECRET = TOKEN.split(":", 1)[1], RO_TOKEN.split(":", 1)[1]
XSS = "<script>alert(1)</script>"


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html[:2000]
    return m.group(1)


class Browser:
    """A cookie-keeping client (unsafe=True: the admin listener is an IP address)."""

    def __init__(self, base: str):
        self.base = base
        self.s = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def get(self, path: str, **kw):
        async with self.s.get(self.base + path, allow_redirects=kw.pop("allow_redirects", True), **kw) as r:
            return r, await r.text()

    async def post(self, path: str, data: dict, **kw):
        async with self.s.post(self.base + path, data=data, allow_redirects=kw.pop("allow_redirects", True),
                               **kw) as r:
            return r, await r.text()

    async def sign_in(self, secret: str):
        _, html = await self.get("/ui/login")
        return await self.post("/ui/login", {"csrf": _csrf(html), "token": secret}, allow_redirects=False)

    async def close(self):
        await self.s.close()


async def _send(app, subject: str, rcpt: str = "ann@dst.test") -> str:
    code, msg = await asyncio.to_thread(smtp_send, app.smtp_port, "src@src.test", [rcpt], subject)
    assert code == 250, msg
    page = await app.store.history.list_messages(MessageFilter(), limit=1)
    return page.items[0].message.id


@pytest.fixture
async def live(tmp_path):
    async with running(tmp_path) as (app, api):
        b = Browser(api.base)
        try:
            yield app, api, b
        finally:
            await b.close()


async def test_root_redirects_and_pages_need_a_session(live):
    app, api, b = live
    r, _ = await b.get("/", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/ui/"
    r, html = await b.get("/ui/outbox")
    assert r.url.path == "/ui/login" and "Sign in" in html
    # a bearer token does not open the console ...
    r, _ = await b.get("/ui/outbox", headers={"Authorization": f"Bearer {SECRET}"})
    assert r.url.path == "/ui/login"
    # ... and the API's own auth is unchanged
    st, body = await api.call("GET", "/api/v1/messages", token=None)
    assert st == 401 and body["error"]["code"] == "unauthorized"
    r, _ = await b.get("/ui/nowhere")
    assert r.status == 404 and r.headers["Content-Type"].startswith("text/html")


async def test_sign_in_cookie_headers_and_sign_out(live):
    app, api, b = live
    r, html = await b.sign_in("not-a-token-at-all")
    assert r.status == 401 and "not valid" in html
    r, _ = await b.sign_in(SECRET)
    assert r.status == 303 and r.headers["Location"] == "/ui/dashboard"
    cookie = next(v for k, v in r.headers.items() if k == "Set-Cookie" and v.startswith(ui_session.COOKIE))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie            # plain HTTP on loopback; under TLS request.secure sets it
    assert SECRET not in cookie
    r, html = await b.get("/ui/dashboard")
    assert r.status == 200 and "Queue (recipients)" in html and SECRET not in html
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert "<script>" not in html and r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Cache-Control"] == "no-store"
    # the session cookie does not open the API
    async with b.s.get(api.base + "/api/v1/messages") as resp:
        assert resp.status == 401
    r, panel = await b.get("/ui/dashboard/panel")
    assert r.status == 200 and "Oldest waiting message" in panel and "<html" not in panel
    r, _ = await b.post("/ui/logout", {"csrf": _csrf(html)}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/ui/login"
    r, _ = await b.get("/ui/dashboard")
    assert r.url.path == "/ui/login"


async def test_sign_in_without_its_csrf_token_is_refused(live):
    app, api, b = live
    r, html = await b.post("/ui/login", {"token": SECRET}, allow_redirects=False)
    assert r.status == 403 and "CSRF" in html


async def test_hostile_subject_is_escaped_and_actions_need_csrf(live):
    app, api, b = live
    qid = await _send(app, XSS)
    await b.sign_in(SECRET)
    r, html = await b.get("/ui/outbox")
    assert qid in html and XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    r, page = await b.get(f"/ui/messages/{qid}")
    assert r.status == 200 and XSS not in page and "&lt;script&gt;" in page and "ann@dst.test" in page
    assert 'id="preview"' in page and "hi" in page
    # no CSRF token: refused, nothing changed
    r, _ = await b.post(f"/ui/messages/{qid}/hold", {}, allow_redirects=False)
    assert r.status == 403
    r, _ = await b.post(f"/ui/messages/{qid}/hold", {"csrf": "forged"}, allow_redirects=False)
    assert r.status == 403
    st, m = await api.call("GET", f"/api/v1/messages/{qid}")
    assert m["held"] is False
    r, page = await b.post(f"/ui/messages/{qid}/hold", {"csrf": _csrf(page)})
    assert r.status == 200 and "hold: done" in page and 'id="held"' in page
    st, m = await api.call("GET", f"/api/v1/messages/{qid}")
    assert m["held"] is True
    assert any(e["actor"] == "admin:admin" and e["status"] == "held" for e in m["events"])
    # an action that does not apply says why (the API's 409 text)
    r, page = await b.post(f"/ui/messages/{qid}/resend", {"csrf": _csrf(page)})
    assert "nothing to resend" in page
    async with b.s.get(f"{api.base}/ui/messages/{qid}/eml") as resp:
        assert resp.status == 200 and resp.content_type == "message/rfc822"
        assert b"Subject: " + XSS.encode() in await resp.read()


async def test_bulk_cancel_of_ticked_messages_and_filters(live):
    app, api, b = live
    a = await _send(app, "first", "ann@dst.test")
    c = await _send(app, "second", "bob@other.test")
    await b.sign_in(SECRET)
    r, html = await b.get("/ui/outbox", params={"recipient": "bob@"})
    assert c in html and a not in html
    r, html = await b.get("/ui/outbox", params={"id": a})
    assert a in html and c not in html
    r, html = await b.post("/ui/messages/bulk", {"csrf": _csrf(html), "action": "cancel", "id": [a, c],
                                                 "back": "/ui/outbox"})
    assert "cancel: 2 changed, 0 unchanged, 0 errors" in html
    for qid in (a, c):
        st, m = await api.call("GET", f"/api/v1/messages/{qid}")
        assert m["recipients"][0]["status"] == "cancelled"
    r, html = await b.get("/ui/sent")
    assert a not in html


async def test_read_only_session_sees_no_write_controls_and_cannot_write(live):
    app, api, b = live
    qid = await _send(app, "ro")
    await app.store.bounces.suppress("gone@dst.test", "manual", "manual", "api")
    r, _ = await b.sign_in(RO_SECRET)
    assert r.status == 303
    r, html = await b.get("/ui/outbox")
    assert qid in html and "(read-only)" in html
    assert 'class="tick"' not in html and "bulk-apply" not in html and 'name="csrf" value' in html
    r, page = await b.get(f"/ui/messages/{qid}")
    assert 'id="actions"' not in page and "action-cancel" not in page
    r, sup = await b.get("/ui/suppressions")
    assert "gone@dst.test" in sup and "Remove" not in sup
    csrf = _csrf(page)               # the sign-out form's: a valid token of this session
    for path, data in ((f"/ui/messages/{qid}/cancel", {}),
                       ("/ui/messages/bulk", {"action": "hold", "id": qid}),
                       ("/ui/suppressions/remove", {"address": "gone@dst.test"})):
        r, text = await b.post(path, {"csrf": csrf, **data}, allow_redirects=False)
        assert r.status == 403 and "read-only" in text, path
    st, m = await api.call("GET", f"/api/v1/messages/{qid}")
    assert m["recipients"][0]["status"] == "queued" and m["held"] is False
    assert await app.store.bounces.suppression("gone@dst.test") is not None


async def test_suppressions_remove_bounces_and_channels_pages(live):
    app, api, b = live
    await app.store.bounces.suppress("gone@dst.test", "manual", "manual", "api", note=XSS)
    await b.sign_in(SECRET)
    r, html = await b.get("/ui/suppressions", params={"search": "gone"})
    assert "gone@dst.test" in html and XSS not in html
    async with b.s.get(api.base + "/ui/suppressions.csv") as resp:
        assert resp.status == 200 and resp.content_type == "text/csv"
        assert "gone@dst.test" in await resp.text()
    r, html = await b.post("/ui/suppressions/remove", {"csrf": _csrf(html), "address": "gone@dst.test"})
    assert "removed from the suppression list" in html
    assert await app.store.bounces.suppression("gone@dst.test") is None
    for path, title in (("/ui/bounces", "No bounces match."), ("/ui/channels", "No channels match."),
                        ("/ui/sent", "No messages match.")):
        r, html = await b.get(path)
        assert r.status == 200 and title in html, path
    r, _ = await b.get("/ui/outbox", params={"cursor": "garbage!"})
    assert r.status == 400


async def test_session_expires_and_ends_with_its_token(live, monkeypatch):
    app, api, b = live
    await b.sign_in(SECRET)
    r, _ = await b.get("/ui/dashboard")
    assert r.url.path == "/ui/dashboard"
    monkeypatch.setattr(ui_session, "IDLE", -1.0)
    r, _ = await b.get("/ui/dashboard")
    assert r.url.path == "/ui/login"
    monkeypatch.undo()
    await b.sign_in(SECRET)
    auth = app.admin.runner.app[AUTH_KEY]
    auth.tokens = [t for t in auth.tokens if t.secret != SECRET.encode()]
    r, _ = await b.get("/ui/dashboard")
    assert r.url.path == "/ui/login"


async def test_static_assets_and_unknown_ones(live):
    app, api, b = live
    r, css = await b.get("/ui/static/console.css")
    assert r.status == 200 and r.content_type == "text/css" and "http" not in css.replace("https", "")
    r, js = await b.get("/ui/static/console.js")
    assert r.status == 200 and r.content_type == "text/javascript"
    r, _ = await b.get("/ui/static/..%2fviews.py")
    assert r.status == 404


async def test_bulk_by_search_shows_the_dry_run_count_then_runs(live):
    app, api, b = live
    held = [await _send(app, f"news {n}", f"r{n}@bulk.test") for n in range(3)]
    other = await _send(app, "other", "x@elsewhere.test")
    await b.sign_in(SECRET)
    r, html = await b.get("/ui/outbox", params={"recipient": "@bulk.test"})
    form = {"csrf": _csrf(html), "action": "hold", "kind": "outbox", "scope": "matching",
            "f_recipient": "@bulk.test", "back": "/ui/outbox?recipient=%40bulk.test"}
    assert 'name="f_recipient" value="@bulk.test"' in html
    r, confirm = await b.post("/ui/messages/bulk", form)
    assert r.status == 200 and re.search(r'id="matched">3<', confirm) and "Hold 3 messages" in confirm
    for qid in held + [other]:                        # the dry run changed nothing
        assert (await api.call("GET", f"/api/v1/messages/{qid}"))[1]["held"] is False
    r, html = await b.post("/ui/messages/bulk", {**form, "confirm": "1"})
    assert r.url.path == "/ui/outbox" and "hold: 3 changed, 0 unchanged, 0 errors" in html
    for qid in held:
        assert (await api.call("GET", f"/api/v1/messages/{qid}"))[1]["held"] is True
    assert (await api.call("GET", f"/api/v1/messages/{other}"))[1]["held"] is False


async def test_a_searched_queue_id_is_not_a_ticked_one_and_slow_jobs_get_a_page(live, monkeypatch):
    from admin_api.ui import views

    app, api, b = live
    a = await _send(app, "a")
    c = await _send(app, "c")
    await b.sign_in(SECRET)
    r, html = await b.get("/ui/outbox", params={"id": a})
    assert f'name="f_id" value="{a}"' in html
    monkeypatch.setattr(views, "WAIT", 0.0)           # every job "takes longer": its progress page
    r, page = await b.post("/ui/messages/bulk", {"csrf": _csrf(html), "action": "hold", "kind": "outbox",
                                                 "scope": "ticked", "id": c, "f_id": a})
    assert r.url.path.startswith("/ui/jobs/") and 'id="job-state"' in page
    job_path = r.url.path
    for _ in range(100):                              # the page refreshes its panel until the job ends
        r, panel = await b.get(job_path + "/panel")
        if 'id="job-state">running<' not in panel:
            break
        await asyncio.sleep(0.05)
    assert 'id="job-state">done<' in panel and "1 changed" in panel
    assert (await api.call("GET", f"/api/v1/messages/{c}"))[1]["held"] is True
    assert (await api.call("GET", f"/api/v1/messages/{a}"))[1]["held"] is False
    r, _ = await b.get("/ui/jobs/nope")
    assert r.status == 404


async def test_channel_validate_enable_disable_show_the_servers_words(live, tmp_path):
    from tests.peers.ports import free_port

    app, api, b = live
    st, _ = await api.call("POST", "/api/v1/campaigns", json={"name": "desk", "kind": "maildir",
                                                              "path": str(tmp_path / "desk")})
    assert st == 201
    st, body = await api.call("POST", "/api/v1/channels", json={
        "name": "support", "host": "127.0.0.1", "port": free_port(), "tls": "none", "user": "u",
        "password": "channel-pass-Zz9", "default_campaign": "desk", "enabled": False})
    assert st == 201, body
    await b.sign_in(SECRET)
    r, html = await b.get("/ui/channels", params={"q": "supp"})
    assert "support" in html and "inactive" in html and "channel-pass-Zz9" not in html
    assert 'id="validate-support"' in html and 'id="enable-support"' in html
    r, html = await b.post("/ui/channels/support/validate", {"csrf": _csrf(html)})
    assert r.url.path == "/ui/channels" and "support: Connection failed:" in html
    r, html = await b.post("/ui/channels/support/enable", {"csrf": _csrf(html)})
    assert "Connection failed:" in html            # an active channel is saved only when it connects
    assert (await api.call("GET", "/api/v1/channels/support"))[1]["enabled"] is False
    r, html = await b.post("/ui/channels/nope/validate", {"csrf": _csrf(html)})
    assert r.status == 404
    r, html = await b.get("/ui/channels", params={"state": "active"})
    assert "No channels match." in html


async def test_cross_origin_post_is_refused_and_failed_sign_in_is_slow(live, monkeypatch):
    from admin_api.ui import views

    app, api, b = live
    qid = await _send(app, "origin")
    await b.sign_in(SECRET)
    r, page = await b.get(f"/ui/messages/{qid}")
    r, text = await b.post(f"/ui/messages/{qid}/hold", {"csrf": _csrf(page)},
                           headers={"Origin": "http://evil.test"}, allow_redirects=False)
    assert r.status == 403
    assert (await api.call("GET", f"/api/v1/messages/{qid}"))[1]["held"] is False
    r, _ = await b.post(f"/ui/messages/{qid}/hold", {"csrf": _csrf(page)}, headers={"Origin": api.base},
                        allow_redirects=False)
    assert r.status == 303
    monkeypatch.setattr(views, "FAILED_SIGN_IN_DELAY", 0.3)
    t0 = asyncio.get_running_loop().time()
    r, _ = await b.sign_in("wrong-token-0123456789")
    assert r.status == 401 and asyncio.get_running_loop().time() - t0 >= 0.3


async def test_channel_add_with_the_servers_refusal_then_edit_and_delete(live, tmp_path):
    from tests.peers.ports import free_port

    app, api, b = live
    assert (await api.call("POST", "/api/v1/campaigns", json={"name": "desk", "kind": "maildir",
                                                              "path": str(tmp_path / "desk")}))[0] == 201
    await b.sign_in(SECRET)
    r, html = await b.get("/ui/channels/new")
    assert r.status == 200 and 'name="oauth2_client_secret"' in html and 'name="filters"' not in html
    dead = free_port()
    form = {"csrf": _csrf(html), "name": "support", "host": "127.0.0.1", "port": str(dead), "tls": "none",
            "user": "u", "password": "channel-pass-Zz9", "default_campaign": "desk", "enabled": "true",
            "protocol": "imap", "auth": "password", "after": "seen", "purpose": "campaigns",
            "poll_interval": "60", "folder": "INBOX", "first_sync": "all", "subject": XSS}
    r, html = await b.post("/ui/channels/new", form)
    assert r.status == 422 and "Connection failed:" in html and 'value="127.0.0.1"' in html
    assert "channel-pass-Zz9" not in html                 # a secret is never drawn back into the form
    assert (await api.call("GET", "/api/v1/channels/support"))[0] == 404      # not saved
    r, html = await b.post("/ui/channels/new", {**form, "enabled": "", "short_name": XSS})
    assert r.status == 422 and XSS not in html and "&lt;script&gt;" in html   # the API's refusal, escaped
    r, html = await b.post("/ui/channels/new", {k: v for k, v in form.items() if k != "enabled"})
    assert r.url.path == "/ui/channels" and "support: saved" in html, html[-3000:]
    st, ch = await api.call("GET", "/api/v1/channels/support")
    assert st == 200 and ch["enabled"] is False and ch["port"] == dead
    r, html = await b.get("/ui/channels/support/edit")
    assert 'value="u"' in html and "channel-pass-Zz9" not in html and 'placeholder="unchanged"' in html
    edit = {**{k: v for k, v in form.items() if k not in ("enabled", "password")}, "csrf": _csrf(html),
            "user": "someone", "password": ""}
    r, html = await b.post("/ui/channels/support/edit", edit)
    assert "support: saved" in html
    st, ch = await api.call("GET", "/api/v1/channels/support")
    assert ch["user"] == "someone"
    stored = await app.store.inbound.channel("support")
    assert stored is not None                              # the empty password field kept the secret
    from poller import channels as pch
    assert (await pch.get_channel(app.store.inbound, "support")).password == "channel-pass-Zz9"
    r, html = await b.post("/ui/channels/support/delete", {"csrf": _csrf(html)})
    assert "support: deleted" in html
    assert (await api.call("GET", "/api/v1/channels/support"))[0] == 404


async def test_read_only_session_has_no_channel_form(live):
    app, api, b = live
    await b.sign_in(RO_SECRET)
    r, html = await b.get("/ui/channels")
    assert "new-channel" not in html
    r, html = await b.get("/ui/channels/new")
    assert r.status == 403
    r, html = await b.post("/ui/channels/new", {"csrf": "x", "name": "x"})
    assert r.status == 403


def test_back_stays_on_the_console():
    from admin_api.ui.views import back

    assert back("/ui/outbox?recipient=a%40b").location == "/ui/outbox?recipient=a%40b"
    for bad in ("https://evil.test/", "//evil.test/ui/", "/ui/\\\\evil.test", "/ui/x\r\nSet-Cookie: a=b",
                "/api/v1/messages"):
        assert back(bad).location == "/ui/dashboard", bad


async def test_session_cookie_is_secure_under_tls(tmp_path):
    import ssl

    from tests.peers.certs import make_cert

    cert, key = make_cert(str(tmp_path / "tls"))
    async with running(tmp_path, admin={"tls_cert_file": cert, "tls_key_file": key}) as (app, api):
        base = api.base.replace("http://", "https://")
        ctx = ssl.create_default_context(cafile=cert)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                         connector=aiohttp.TCPConnector(ssl=ctx)) as s:
            async with s.get(base + "/ui/login") as r:
                html = await r.text()
                assert "Secure" in r.headers["Set-Cookie"]
            async with s.post(base + "/ui/login", data={"csrf": _csrf(html), "token": SECRET},
                              allow_redirects=False) as r:
                assert r.status == 303
                cookie = next(v for k, v in r.headers.items()
                              if k == "Set-Cookie" and v.startswith(ui_session.COOKIE))
                assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
            async with s.get(base + "/ui/dashboard") as r:
                assert r.status == 200 and r.url.path == "/ui/dashboard"


async def test_message_page_shows_the_opened_tick_per_recipient(live):
    import time

    from store.tracking import Hit

    app, api, b = live
    qid = await _send(app, "tracked")
    [r] = await app.store.messages.recipients(qid)
    await b.sign_in(SECRET)
    _, page = await b.get(f"/ui/messages/{qid}")
    assert "&#10003;" not in page and "✓" not in page                 # not opened yet
    ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Thunderbird/115.0"
    await app.store.tracking.record([Hit("open", qid, r.id, time.time() + 60, ua)], machine_window=10)
    _, page = await b.get(f"/ui/messages/{qid}")
    assert "&#10003; opened" in page and "opened (machine)" not in page and "not 100%" in page
