"""Open tracking end to end with real peers: relaybox as a process delivers a tracked HTML message through
dnsmasq MX records to Postfix's smtp-sink with DKIM on; Perl Mail::DKIM (and dkimpy) verify what arrived;
headless Chromium (Debian chromium + chromium-driver, driven by Selenium) loads the delivered HTML and the
open is recorded (HeadlessChrome: "opened (machine)"; then with a mail client's user agent after the
machine window: "opened"); an altered token records nothing; a text-only message arrives unchanged."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import time
import urllib.request

import dkim as dkimpy
import pytest

from relay import rfc5322
from tests.peers.dnsmasq import DnsmasqServer
from tests.peers.ports import free_port
from tests.peers.postfix_sink import PostfixSink
from tests.peers.relaybox_proc import RelayboxProcess
from tests.test_dkim import perl_verify

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SECRET = "e2e-tracking-secret-0123456789"
TOKEN = "e2e:e2e-admin-token-0123456789"
HUMAN_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.0"
HTML = ("From: Shop <news@src.test>\r\nTo: ann@dst.test, bob@dst.test\r\nSubject: tracked\r\n"
        "Message-ID: <tracked-1@src.test>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/alternative; boundary=\"alt-1\"\r\n\r\n"
        "--alt-1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "Hello, this is the text part.\r\n"
        "--alt-1\r\nContent-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        "<!doctype html><html><head><meta charset=3D\"utf-8\"><title>offer</title></head>\r\n"
        "<body><h1 id=3D\"h\">Caf=C3=A9 offers</h1><p>Hello.</p></body></html>\r\n"
        "--alt-1--\r\n").encode()
TEXT = ("From: Shop <news@src.test>\r\nTo: ann@dst.test\r\nSubject: plain\r\n"
        "Message-ID: <plain-1@src.test>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\n"
        "Only  text,\ttabs and  spaces. \r\n\r\n").encode()


@pytest.fixture
def keyfile(tmp_path):
    subprocess.run([sys.executable, "-m", "relaybox.cli", "dkim", "keygen", "src.test", "trk", "--dir",
                    str(tmp_path)], cwd=ROOT, check=True, capture_output=True)
    from cryptography.hazmat.primitives import serialization

    from relay.delivery.dkim import dns_record

    path = tmp_path / "src.test.trk.key"
    return str(path), dns_record(serialization.load_pem_private_key(path.read_bytes(), None))


def wait_for(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    return None


def query(db: str, sql: str, *args):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def delivered_messages(sink: PostfixSink) -> list[tuple[bytes, bytes]]:
    """(RCPT line, the message as it arrived, CRLF) for each dump: what smtp-sink received starts at its own
    Received field; everything after it is relaybox's message."""
    out = []
    for d in sink.dumps():
        rcpt = re.search(rb"X-Rcpt-Args: <([^>]+)>", d).group(1)
        message = b"Received: from" + d.split(b"\nReceived: from", 1)[1]
        out.append((rcpt, message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")))
    return out


def chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        assert os.path.exists(path), f"{path} missing: .ci/install-peers.sh installs chromium chromium-driver"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")),
                            options=opts)


def api(port: int, path: str):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {TOKEN.split(':', 1)[1]}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_tracked_html_through_relaybox_opened_by_headless_chromium(tmp_path, keyfile):
    zone = {"dst.test": {"MX": [(10, "mx.dst.test")]}, "mx.dst.test": {"A": ["127.0.0.1"]},
            "trk._domainkey.src.test": {"TXT": [keyfile[1]]}}
    track_port = free_port()
    sink = PostfixSink().start()
    with DnsmasqServer(zone) as dns:
        relay = RelayboxProcess(str(tmp_path / "relay"), {
            "delivery": {"mx_port": sink.port, "nameservers": ["127.0.0.1"], "dns_port": dns.port,
                         "poll_interval": 0.1, "connect_timeout": 5, "command_timeout": 10},
            "dkim": {"enabled": True},
            'dkim.domains."src.test"': {"selector": "trk", "key_file": keyfile[0]},
            "tracking": {"enabled": True, "listen": f"127.0.0.1:{track_port}",
                         "base_url": f"http://127.0.0.1:{track_port}", "secret": SECRET,
                         "sender_domains": ["src.test"], "machine_window": "1s"},
            "admin": {"tokens": [TOKEN]},
        }).start()
        driver = None
        try:
            with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=10) as c:
                c.sendmail("news@src.test", ["ann@dst.test", "bob@dst.test"], HTML)
                c.sendmail("news@src.test", ["ann@dst.test"], TEXT)
            assert wait_for(lambda: len(sink.dumps()) == 3), relay.log()
            arrived = delivered_messages(sink)
            qid = {s: q for q, s in query(relay.db_path, "SELECT id, subject FROM messages")}
            delivered_at = wait_for(lambda: query(
                relay.db_path, "SELECT MAX(at) FROM events WHERE status='delivered'")[0][0])

            # every message verifies with independent verifiers: the pixel was in the body before signing
            for rcpt, msg in arrived:
                assert b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=src.test; s=trk;" in msg
                rc, text = perl_verify(dns.port, msg)
                assert rc == 0 and text.startswith("pass"), (rcpt, text)
                assert dkimpy.verify(msg, dnsfunc=lambda name, timeout=5: keyfile[1].encode())

            # text-only: what was spooled, byte for byte, after the signature
            [(_, plain)] = [(r, m) for r, m in arrived if b"Subject: plain" in m]
            [[spooled]] = query(relay.db_path, "SELECT data FROM bodies WHERE message_id=?", qid["plain"])
            assert plain.endswith(bytes(spooled) + b"\r\n")          # smtp-sink's dump ends with a line break
            added = plain[:-len(spooled) - 2]
            assert [name for name, _ in rfc5322.fields(added)] == ["received", "dkim-signature"]

            tracked = {r.decode(): m for r, m in arrived if b"Subject: tracked" in m}
            assert set(tracked) == {"ann@dst.test", "bob@dst.test"}      # one transaction per recipient
            parsed = email.message_from_bytes(tracked["ann@dst.test"], policy=email.policy.compat32)
            text_part, html_part = [p for p in parsed.walk() if not p.is_multipart()]
            assert text_part.get_payload(decode=True) == b"Hello, this is the text part."
            doc = html_part.get_payload(decode=True)
            assert "Caf\u00e9 offers".encode() in doc and b"X-Relaybox-Track" not in tracked["ann@dst.test"]
            pixel = re.search(rb'<img src="(http://127\.0\.0\.1:\d+/o/([\w-]+)\.gif)"', doc)
            assert pixel, doc
            page = tmp_path / "ann.html"
            page.write_bytes(doc)

            # an altered token: the same GIF, nothing recorded
            tok = pixel.group(2).decode()
            bad = tok[:-2] + ("AA" if tok[-2:] != "AA" else "BB")
            wait_for(lambda: _reachable(track_port), 10)
            with urllib.request.urlopen(f"http://127.0.0.1:{track_port}/o/{bad}.gif", timeout=5) as r:
                assert r.status == 200 and len(r.read()) == 43
            time.sleep(0.3)
            assert query(relay.db_path, "SELECT COUNT(*) FROM tracking_opens") == [(0,)]

            # headless Chromium opens the delivered HTML: the pixel is fetched, the open recorded
            driver = chromium(tmp_path)
            driver.get(page.as_uri())
            assert driver.find_element("id", "h").text == "Caf\u00e9 offers"
            opened = wait_for(lambda: query(relay.db_path, "SELECT r.address, t.opens, t.human_opens,"
                                            " t.last_reason FROM tracking_opens t JOIN recipients r"
                                            " ON r.id = t.recipient_id"), 20)
            assert opened == [("ann@dst.test", 1, 0, opened[0][3])], opened
            assert opened[0][3] in ("bot-agent", "prefetch")           # HeadlessChrome, or within 1 s
            # later, with a mail client's user agent: a human open
            time.sleep(max(0.0, delivered_at + 1.2 - time.time()))
            driver.execute_cdp_cmd("Network.setUserAgentOverride", {"userAgent": HUMAN_UA})
            driver.get(page.as_uri())
            assert wait_for(lambda: query(relay.db_path, "SELECT human_opens FROM tracking_opens")
                            == [(1,)], 20), relay.log()
            detail = api(relay.admin_port, f"/api/v1/messages/{qid['tracked']}")
            flags = {r["address"]: r["opened"] for r in detail["recipients"]}
            assert flags == {"ann@dst.test": "opened", "bob@dst.test": None}
            ann = next(r for r in detail["recipients"] if r["address"] == "ann@dst.test")
            assert ann["opens"]["count"] == 2 and ann["opens"]["last_user_agent"] == HUMAN_UA
            events = query(relay.db_path, "SELECT reason FROM events WHERE status='opened' ORDER BY id")
            assert events == [("opened (machine)",), ("opened",)]
        finally:
            if driver is not None:
                driver.quit()
            relay.stop()
    sink.stop()


def _reachable(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
