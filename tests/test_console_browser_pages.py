"""The console's configuration pages in a real headless Chromium (Selenium, the Page helper of
tests/test_console_browser.py) against a relaybox subprocess: campaigns, a channel's filter rules,
quarantine, routes (the SMTP test against a real Postfix smtp-sink), allowlist, SMTP users, DKIM and
webhooks. One write on each page, each checked through the API; the read-only session sees every page
without a write control. A screenshot of every page at 1280 px and of some at 390 px is kept under the
test's tmp_path (``screens/``)."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from poller import channels
from poller.config import CampaignConfig, ChannelConfig
from store import Store
from store.inbound import Fetched
from tests.peers.ports import free_port
from tests.peers.postfix_sink import PostfixSink
from tests.peers.relaybox_proc import RelayboxProcess
from tests.test_console_browser import RO_TOKEN, TOKEN, XSS, Page, chromium

pytestmark = pytest.mark.integration

SECRET, RO_SECRET = TOKEN.split(":", 1)[1], RO_TOKEN.split(":", 1)[1]
PAGES = ("/ui/campaigns", "/ui/quarantine", "/ui/channels/box/filters", "/ui/routes", "/ui/allowlist",
         "/ui/users", "/ui/dkim", "/ui/webhooks")


def _seed(db_path: str, desk: str) -> None:
    """Before relaybox starts: a campaign, a disabled channel using it, a quarantined message."""
    async def run() -> None:
        store = Store(db_path).open()
        try:
            desk_campaign = CampaignConfig(name="desk", kind="maildir", path=desk)
            await channels.save_campaign(store.inbound, desk_campaign)
            await channels.save_channel(store.inbound, ChannelConfig(
                name="box", host="127.0.0.1", user="u", password="pw", enabled=False,
                default_campaign="desk"))
            raw = f"From: x@y.test\r\nSubject: {XSS}\r\nMessage-ID: <q1@y.test>\r\n\r\nbody\r\n".encode()
            await store.inbound.store_fetched("box", "INBOX", 1, [Fetched("7", raw, skip="parse error: no",
                                                                          message_id="<q1@y.test>")])
        finally:
            store.close()
    asyncio.run(run())


def _api(rb: RelayboxProcess, path: str):
    req = urllib.request.Request(f"http://127.0.0.1:{rb.admin_port}{path}",
                                 headers={"Authorization": f"Bearer {SECRET}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _rules(rb: RelayboxProcess) -> list[str]:
    return [f["value"] for f in _api(rb, "/api/v1/channels/box/filters")["items"]]


def test_configuration_pages_in_headless_chromium(tmp_path):
    from selenium.webdriver.support.ui import Select

    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "org.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    sink = PostfixSink().start()
    rb = RelayboxProcess(str(tmp_path / "rb"), {
        "admin": {"tokens": [TOKEN], "readonly_tokens": [RO_TOKEN]},
        "delivery": {"connect_timeout": "3s"},
        "[[routes]]": [{"name": "sink", "host": "127.0.0.1", "port": sink.port, "tls": "none",
                        "from_domains": ["org.test"]},
                       {"name": "nowhere", "host": "127.0.0.1", "port": free_port(), "tls": "none"}],
        "dkim": {"enabled": True, "default_domain": "org.test"},
        'dkim.domains."org.test"': {"selector": "s1", "key_file": str(tmp_path / "org.key")},
        "[[webhooks]]": [{"name": "crm", "url": f"http://127.0.0.1:{free_port()}/hook",
                          "secret": "hook-Xy71"}],
    })
    _seed(rb.db_path, str(tmp_path / "desk"))
    rb.start(timeout=60)                  # a loaded CI machine: the first start compiles a lot
    driver = None
    try:
        driver = chromium(tmp_path)
        p = Page(driver, f"http://127.0.0.1:{rb.admin_port}", tmp_path / "screens")
        p.sign_in(SECRET)
        nav = [a.get_attribute("href").rsplit("/ui/", 1)[1] for a in p.els("header nav a")]
        for key_ in ("campaigns", "quarantine", "routes", "allowlist", "users", "dkim", "webhooks"):
            assert key_ in nav, nav

        # campaigns: add one with every field of its kind
        p.go("/ui/campaigns")
        p.submit("#new-campaign")
        p.el("#f-name").send_keys("crm-hook")
        Select(p.el("#f-kind")).select_by_value("webhook")
        p.el("#f-url").send_keys("https://crm.test/in")
        p.el("#f-secret").send_keys("campaign-secret-Qw1")
        p.el("#f-timeout").clear()
        p.el("#f-timeout").send_keys("9s")
        Select(p.el("#f-attachments")).select_by_value("none")
        p.shot("campaign-form")
        p.submit("#campaign-save")
        p.wait_url("/ui/campaigns")
        assert "campaign crm-hook: saved" in p.text() and "campaign-secret-Qw1" not in driver.page_source
        c = _api(rb, "/api/v1/campaigns/crm-hook")
        assert (c["kind"], c["url"], c["timeout"], c["attachments"]) == \
            ("webhook", "https://crm.test/in", 9.0, "none")
        p.shot("campaigns")

        # the channel's filter rules: add one, then a second at position 1 (order kept)
        p.go("/ui/channels")
        p.submit("#filters-box")
        for value, position in (("invoice", None), ("urgent", "1")):
            p.el("#nf-value").send_keys(value)
            Select(p.el("#nf-campaign")).select_by_visible_text("crm-hook")
            if position:
                p.el("#nf-position").clear()
                p.el("#nf-position").send_keys(position)
            p.submit("#add-rule")
            assert "added" in p.text(), p.text()
        assert _rules(rb) == ["urgent", "invoice"]
        p.submit("#down-1")
        assert _rules(rb) == ["invoice", "urgent"]
        p.shot("channel-filters")

        # quarantine: the hostile subject shown as text, then dropped (asks first)
        p.go("/ui/quarantine")
        p.no_alert()
        p.shot("quarantine")
        p.submit("#quarantine a[id^='q-']")
        assert XSS in p.el("#headers").text
        p.no_alert()
        p.shot("quarantine-item")
        p.submit("#action-drop", accept_confirm=True)
        assert "dropped" in p.text() and _api(rb, "/api/v1/quarantine")["items"] == []

        # routes: the test button against a real Postfix smtp-sink, and against a closed port
        p.go("/ui/routes")
        p.submit("#test-sink")
        assert p.el("#test-words").text == "Connection succeeded", p.text()
        assert "EHLO" in p.el("#test-transcript").text
        p.shot("routes-test-ok")
        p.submit("#test-nowhere")
        assert p.el("#test-words").text.startswith("Connection failed at CONNECT: "), p.text()
        p.shot("routes-test-failed")
        # a route added in the console (saved, and tested on save) and removed again
        p.submit("#new-route")
        p.el("#f-route_name").send_keys("shop")
        p.el("#f-host").send_keys("127.0.0.1")
        p.el("#f-port").send_keys(str(sink.port))
        Select(p.el("#f-tls")).select_by_value("none")
        p.el("#f-from_domains").send_keys("shop.org.test")
        p.shot("route-form")
        p.submit("#route-save")
        p.wait_url("/ui/routes")
        assert "route shop: saved; Connection succeeded" in p.text(), p.text()
        assert _api(rb, "/api/v1/routes/shop")["from_domains"] == ["shop.org.test"]
        p.shot("routes")
        p.submit("#delete-shop", accept_confirm=True)
        assert "route shop: deleted" in p.text()

        # allowlist: add a network with a note
        p.go("/ui/allowlist")
        p.el("#al-cidr").send_keys("10.42.0.0/16")
        p.el("#al-note").send_keys(XSS)
        p.submit("#al-add")
        assert "10.42.0.0/16 may relay now" in p.text() and XSS in p.el("#allowlist").text
        p.no_alert()
        assert any(e["cidr"] == "10.42.0.0/16" for e in _api(rb, "/api/v1/allowlist")["items"])
        p.shot("allowlist")

        # SMTP users: add one, then reset its password; never shown
        p.go("/ui/users")
        p.el("#u-name").send_keys("app1")
        p.el("#u-password").send_keys("first-password-Jx9")
        p.submit("#u-add")
        assert "SMTP user app1 added" in p.text() and "first-password-Jx9" not in driver.page_source
        p.el("#pw-1").send_keys("second-password-Lk2")
        p.submit("#reset-1")
        assert "app1: password reset" in p.text() and "second-password-Lk2" not in driver.page_source
        assert [u["username"] for u in _api(rb, "/api/v1/smtp-users")["items"]] == ["app1"]
        p.shot("users")
        added = p.el("#users time")                     # shown in the browser's time zone by console.js
        assert added.get_attribute("title").endswith("Z") and not added.text.endswith("Z"), added.text

        # DKIM: the record to publish; webhooks: retry pending now
        p.go("/ui/dkim")
        assert "s1._domainkey.org.test" in p.text() and "v=DKIM1" in p.el("#txt-1").text
        p.shot("dkim")
        p.go("/ui/webhooks")
        p.submit("#retry-crm")
        assert "crm: " in p.text() and "retried now" in p.text()
        p.shot("webhooks")

        driver.set_window_size(390, 844)
        for path in ("/ui/routes", "/ui/users", "/ui/channels/box/filters", "/ui/dkim"):
            p.go(path)
            width = driver.execute_script("return document.documentElement.scrollWidth")
            assert width <= 400, (path, width)              # no page wider than the phone
            p.shot(path[4:].replace("/", "-") + "-390px")
        driver.set_window_size(1280, 900)
        p.submit("#signout")
        p.wait_url("/ui/login")

        # read-only: every page, no write control, a write refused
        p.sign_in(RO_SECRET)
        for path in PAGES:
            p.go(path)
            assert p.el("h1").text, path
            forms = [f.get_attribute("action") for f in p.els("main form[method=post]")]
            assert forms == [], (path, forms)
        p.shot("users-read-only")
        csrf = p.el("input[name=csrf]").get_attribute("value")
        assert p.post_status("/ui/allowlist/add", f"csrf={csrf}&cidr=10.43.0.0/16") == 403
        assert not any(e["cidr"] == "10.43.0.0/16" for e in _api(rb, "/api/v1/allowlist")["items"])
    finally:
        if driver is not None:
            driver.quit()
        assert rb.stop() == 0, rb.log()
        sink.stop()
