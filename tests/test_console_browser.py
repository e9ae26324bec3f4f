"""The admin console in a real headless Chromium (Debian chromium + chromium-driver, driven by Selenium)
against a relaybox subprocess with mail sent to it over SMTP: sign in, the message in the Outbox (its
hostile subject shown as text), open it, hold and cancel it, bulk-cancel ticked messages, a CSRF-less POST
refused, sign out, and a read-only session that sees no write controls and whose writes are refused.
A screenshot of every page is kept under the test's tmp_path (``screens/``)."""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import subprocess
import time

import pytest

from tests.peers.ports import free_port
from tests.peers.postfix_sink import PostfixSink
from tests.peers.relaybox_proc import RelayboxProcess

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TOKEN = "ops:console-admin-token-0123456789"
RO_TOKEN = "viewer:console-readonly-token-0123456789"
XSS = "<script>alert(1)</script>"


def chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):        # a missing peer fails (CI installs it), never skips
        assert os.path.exists(path), f"{path} missing: .ci/install-peers.sh installs chromium chromium-driver"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")),
                            options=opts)


def send(port: int, subject: str, rcpt: str) -> None:
    msg = (f"From: Shop <news@src.test>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{int(time.time() * 1e6)}@src.test>\r\n"
           "X-Relaybox-Send-At: 2099-01-01T00:00:00Z\r\n\r\nHello from the console test.\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.sendmail("news@src.test", [rcpt], msg.encode())


class Page:
    def __init__(self, driver, base: str, shots):
        from selenium.webdriver.common.by import By

        self.d, self.base, self.shots, self.By = driver, base, shots, By

    def go(self, path: str) -> None:
        self.d.get(self.base + path)

    def el(self, css: str):
        return self.d.find_element(self.By.CSS_SELECTOR, css)

    def els(self, css: str):
        return self.d.find_elements(self.By.CSS_SELECTOR, css)

    def text(self) -> str:
        return self.el("body").text

    def shot(self, name: str) -> None:
        self.shots.mkdir(exist_ok=True)
        self.d.save_screenshot(str(self.shots / f"{name}.png"))

    def sign_in(self, secret: str) -> None:
        self.go("/")
        assert self.d.current_url.endswith("/ui/login"), self.d.current_url
        self.el("#token").send_keys(secret)
        self.submit("#signin")
        self.wait_url("/ui/dashboard")

    def submit(self, css_or_element, accept_confirm: bool = False) -> None:
        """Click something that loads a page and wait until the old document is gone (a click does not
        always wait for the navigation it starts). The old document is marked with a window property; a
        new document does not have it. Element staleness is not used: during a navigation Chromium may
        answer "node does not belong to the document" instead of "stale", which Selenium does not map."""
        from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
        from selenium.webdriver.support import expected_conditions as EC
        from selenium.webdriver.support.ui import WebDriverWait

        self.ready()
        self.d.execute_script("window.__rbOldDocument = true;")
        for attempt in range(3):        # the page may still be replacing itself: find the element again
            try:
                (self.el(css_or_element) if isinstance(css_or_element, str) else css_or_element).click()
                break
            except (StaleElementReferenceException, WebDriverException) as exc:
                detached = "stale" in str(exc).lower() or "does not belong to the document" in str(exc)
                if attempt == 2 or not isinstance(css_or_element, str) or not detached:
                    raise
                self.ready()
                self.d.execute_script("window.__rbOldDocument = true;")
        if accept_confirm:
            WebDriverWait(self.d, 10).until(EC.alert_is_present())
            self.d.switch_to.alert.accept()
        WebDriverWait(self.d, 20).until(self._new_document_loaded)

    @staticmethod
    def _new_document_loaded(d) -> bool:
        from selenium.common.exceptions import WebDriverException

        try:
            return bool(d.execute_script(
                "return window.__rbOldDocument !== true && document.readyState === 'complete';"))
        except WebDriverException:      # between documents: no execution context yet
            return False

    def wait_url(self, ending: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.d, 20).until(lambda d: d.current_url.endswith(ending))
        self.ready()

    def ready(self) -> None:
        """The current document has finished loading (the URL changes before the new DOM is in place)."""
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.d, 20).until(
            lambda d: d.execute_script("return document.readyState") == "complete")

    def post_status(self, path: str, data: str) -> int:
        """A POST from the page's own origin (with its session cookie), as a forged form would send it."""
        return self.d.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {method: 'POST', credentials: 'same-origin', redirect: 'manual',"
            " headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: arguments[1]})"
            ".then(r => done(r.status)).catch(e => done(String(e)));", path, data)

    def no_alert(self) -> None:
        from selenium.common.exceptions import NoAlertPresentException

        with pytest.raises(NoAlertPresentException):
            _ = self.d.switch_to.alert.text


def _qid_of(page: Page, subject: str) -> str:
    for row in page.els("#messages tbody tr"):
        if row.find_element(page.By.CSS_SELECTOR, "td.subject").text == subject:
            return row.find_element(page.By.CSS_SELECTOR, "a.qid").text
    raise AssertionError(f"{subject!r} not in the outbox: {page.text()}")


def test_console_in_headless_chromium(tmp_path):
    rb = RelayboxProcess(str(tmp_path / "rb"), {
        "smtp": {"allowlist": ["127.0.0.1/32"]},
        "admin": {"tokens": [TOKEN], "readonly_tokens": [RO_TOKEN]},
    }).start()
    driver = None
    try:
        for subject, rcpt in ((XSS, "ann@dst.test"), ("second", "bob@dst.test"), ("third", "cy@dst.test")):
            send(rb.smtp_port, subject, rcpt)
        driver = chromium(tmp_path)
        driver.set_script_timeout(10)
        p = Page(driver, f"http://127.0.0.1:{rb.admin_port}", tmp_path / "screens")
        p.go("/ui/outbox")
        assert driver.current_url.endswith("/ui/login")
        p.shot("login")
        p.sign_in(TOKEN.split(":", 1)[1])
        assert "Queue (recipients)" in p.text() and "ops" in p.el("#who").text
        p.shot("dashboard")

        p.go("/ui/outbox")
        p.no_alert()                               # the subject did not run as a script ...
        qid = _qid_of(p, XSS)                      # ... it is shown as text
        p.shot("outbox")
        p.submit("#messages a.qid[href$='" + qid + "']")
        assert p.el("#qid").text == qid and p.el("#subject").text == XSS
        assert "ann@dst.test" in p.el("#recipients").text and "Hello from the console test." in p.el(
            "#preview").text
        p.no_alert()
        p.submit("#action-hold")
        assert "hold: done" in p.text() and p.el("#held").text == "held"
        p.submit("#action-cancel")
        assert "cancel: done (1 changed)" in p.text()
        assert "cancelled" in p.el("#recipients").text
        p.shot("message")

        # bulk: tick two messages, cancel them (the Apply button asks for confirmation)
        p.go("/ui/outbox")
        for subject in ("second", "third"):
            p.el(f"input.tick[value='{_qid_of(p, subject)}']").click()
        from selenium.webdriver.support.ui import Select

        Select(p.el("#bulk-action")).select_by_value("cancel")
        p.submit("#bulk-apply", accept_confirm=True)
        assert "cancel: 2 changed, 0 unchanged, 0 errors" in p.text()

        # a POST without the CSRF token (or with a wrong one) is refused even with the session cookie
        assert p.post_status(f"/ui/messages/{qid}/release", "") == 403
        assert p.post_status(f"/ui/messages/{qid}/release", "csrf=forged") == 403
        p.go(f"/ui/messages/{qid}")
        assert p.el("#held").text == "held"

        for path in ("/ui/sent", "/ui/bounces", "/ui/suppressions", "/ui/channels", "/ui/channels/new"):
            p.go(path)
            assert p.el("h1").text, path
            p.shot(path[4:].replace("/", "-"))
        driver.set_window_size(390, 844)
        p.go("/ui/outbox")
        p.shot("outbox-390px")
        driver.set_window_size(1280, 900)

        p.submit("#signout")
        p.wait_url("/ui/login")
        p.go("/ui/outbox")
        assert driver.current_url.endswith("/ui/login")

        # read-only: no write controls, and its writes are refused by the server anyway
        p.sign_in(RO_TOKEN.split(":", 1)[1])
        assert "(read-only)" in p.el("#who").text
        p.go("/ui/outbox")
        assert not p.els("input.tick") and not p.els("#bulk-apply")
        p.go(f"/ui/messages/{qid}")
        assert not p.els("#actions") and not p.els("#action-release")
        p.shot("message-read-only")
        csrf = p.el("input[name=csrf]").get_attribute("value")
        assert p.post_status(f"/ui/messages/{qid}/release", f"csrf={csrf}") == 403
        p.go(f"/ui/messages/{qid}")
        assert p.el("#held").text == "held"
    finally:
        if driver is not None:
            driver.quit()
        assert rb.stop() == 0, rb.log()


class RejectingSink:
    """Postfix's smtp-sink answering every RCPT with a hard 5xx (``-f RCPT``): a real receiving MTA that
    bounces."""

    def __init__(self, port: int):
        self.port = port
        self.proc = None

    def start(self) -> "RejectingSink":
        sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        assert os.path.exists(sink), "smtp-sink missing (Debian postfix; see .ci/install-peers.sh)"
        self.proc = subprocess.Popen([sink, "-u", "nobody", "-f", "RCPT", f"127.0.0.1:{self.port}", "64"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("smtp-sink did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def _wait_for(pred, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    return None


def test_bounced_message_found_by_recipient_transcript_resent_and_delivered(tmp_path):
    port = free_port()
    rejecting = RejectingSink(port).start()
    sink = None
    rb = RelayboxProcess(str(tmp_path / "rb"), {
        "smtp": {"allowlist": ["127.0.0.1/32"]},
        "admin": {"tokens": [TOKEN]},
        "delivery": {"dsn": False, "poll_interval": "0.2s", "retry_first": "1s"},
        "[[routes]]": [{"name": "sink", "host": "127.0.0.1", "port": port, "tls": "none", "default": True}],
    }).start()
    driver = None
    try:
        with smtplib.SMTP("127.0.0.1", rb.smtp_port, timeout=10) as s:
            s.sendmail("news@src.test", ["gone@dst.test"],
                       b"From: news@src.test\r\nTo: gone@dst.test\r\nSubject: will bounce\r\n"
                       b"Message-ID: <bounce-1@src.test>\r\n\r\nBody.\r\n")
        driver = chromium(tmp_path)
        p = Page(driver, f"http://127.0.0.1:{rb.admin_port}", tmp_path / "screens")
        p.sign_in(TOKEN.split(":", 1)[1])
        # the dashboard refreshes itself (a fetch every 10 s, allowed by the CSP's connect-src 'self')
        assert _wait_for(lambda: p.el("#dashboard").get_attribute("data-refreshed"), 20), "no refresh"

        def bounced_row():
            p.go("/ui/outbox?recipient=gone%40dst&status=bounced")
            return p.els("#messages a.qid")
        rows = _wait_for(bounced_row, 30)
        assert rows, rb.log()
        qid = rows[0].text
        p.submit(rows[0])
        p.wait_url(qid)
        assert "bounced" in p.el("#recipients").text
        transcript = p.el("details.attempt pre.transcript").text
        assert "RCPT TO:<gone@dst.test>" in transcript and "5.3.0" in transcript, transcript
        p.shot("message-bounced")

        rejecting.stop()
        sink = PostfixSink(port=port).start()          # the destination takes mail again
        p.submit("#action-resend")
        assert "resend: done" in p.text()

        def delivered():
            p.go(f"/ui/messages/{qid}")
            return "delivered" in p.el("#recipients").text
        assert _wait_for(delivered, 30), rb.log()
        p.go("/ui/sent?recipient=gone%40dst")
        assert p.els(f"#messages a.qid[href$='{qid}']")
        p.shot("sent-after-resend")
        assert _wait_for(lambda: sink.dumps(), 10)
    finally:
        if driver is not None:
            driver.quit()
        rejecting.stop()
        if sink is not None:
            sink.stop()
        assert rb.stop() == 0, rb.log()


def test_channel_added_against_dovecot_wrong_password_then_fixed(tmp_path):
    import json
    import urllib.request

    from selenium.webdriver.support.ui import Select

    from tests.peers.dovecot import Dovecot

    user, password = "support@org.test", "imap-secret-Qw31"
    dovecot = Dovecot({user: password}).start()
    rb = RelayboxProcess(str(tmp_path / "rb"), {"admin": {"tokens": [TOKEN]}}).start()
    driver = None
    try:
        req = urllib.request.Request(
            f"http://127.0.0.1:{rb.admin_port}/api/v1/campaigns", method="POST",
            data=json.dumps({"name": "desk", "kind": "maildir", "path": str(tmp_path / "desk")}).encode(),
            headers={"Authorization": f"Bearer {TOKEN.split(':', 1)[1]}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 201
        driver = chromium(tmp_path)
        p = Page(driver, f"http://127.0.0.1:{rb.admin_port}", tmp_path / "screens")
        p.sign_in(TOKEN.split(":", 1)[1])
        p.go("/ui/channels")
        p.submit("#new-channel")
        p.wait_url("/ui/channels/new")
        for name, value in (("name", "support"), ("host", "127.0.0.1"), ("user", user),
                            ("password", "wrong-password"), ("default_campaign", "desk")):
            p.el(f"#f-{name}").send_keys(value)
        port = p.el("#f-port")
        port.clear()
        port.send_keys(str(dovecot.imap_port))
        Select(p.el("#f-tls")).select_by_value("starttls")
        p.el("#f-verify").click()                      # the peer's certificate is self-signed
        assert p.el("#f-enabled").is_selected()
        p.submit("#channel-save")
        error = p.el("#form-error").text
        assert error.startswith("Connection failed:"), error
        p.shot("channel-wrong-password")
        assert p.el("#f-host").get_attribute("value") == "127.0.0.1"     # what was typed stays
        assert p.el("#f-password").get_attribute("value") == ""          # but never a secret
        p.el("#f-password").send_keys(password)
        p.submit("#channel-save")
        p.wait_url("/ui/channels")
        assert "support: saved; Connection succeeded" in p.text(), p.text()
        assert "active" in p.el("#channels").text
        p.shot("channels-after-save")
    finally:
        if driver is not None:
            driver.quit()
        assert rb.stop() == 0, rb.log()
        dovecot.stop()
