"""SMTP intake against a real relaybox subprocess: EHLO, policy, address syntax, limits, smuggling."""

from __future__ import annotations

import shutil
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import sys
import time

import pytest

from tests.peers.certs import make_cert
from tests.peers.relaybox_proc import RelayboxProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    d = tmp_path_factory.mktemp("intake")
    cert, key = make_cert(str(d / "tls"))
    p = RelayboxProcess(str(d), {
        "smtp": {"max_recipients": 5, "max_message_size": "200KB", "idle_timeout": "3s",
                 "max_sessions_per_ip": 8},
        "smtp.tls": {"cert_file": cert, "key_file": key},
        "[[smtp.users]]": [{"username": "app1", "password": "s3cret-pw"}],
    }).start()
    yield p
    assert p.stop() == 0


def client(relay, source="127.0.0.1") -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", relay.smtp_port, source_address=(source, 0), timeout=10)
    s.ehlo("client.test")
    return s


def stored(relay, qid):
    with sqlite3.connect(relay.db_path) as c:
        row = c.execute("SELECT data FROM bodies WHERE message_id=?", (qid,)).fetchone()
        rcpts = c.execute("SELECT address, status FROM recipients WHERE message_id=?", (qid,)).fetchall()
    return (bytes(row[0]) if row else None), rcpts


def send_raw(s: smtplib.SMTP, payload: bytes):
    code, msg = s.docmd("DATA")
    assert code == 354
    s.send(payload)
    return s.getreply()


def qid_of(reply: bytes) -> str:
    text = reply.decode()
    assert text.startswith("2.0.0 Ok: queued as "), text
    return text.rsplit(" ", 1)[1]


def test_ehlo_extensions_and_auth_only_after_starttls(relay):
    s = client(relay)
    assert s.has_extn("size") and s.esmtp_features["size"] == "200000"
    for ext in ("8bitmime", "smtputf8", "enhancedstatuscodes", "starttls"):
        assert s.has_extn(ext), ext
    assert not s.has_extn("auth")
    s.starttls(context=ssl._create_unverified_context())
    s.ehlo("client.test")
    assert set(s.esmtp_features["auth"].split()) == {"LOGIN", "PLAIN"}
    s.quit()


def test_accepts_and_stores_before_250(relay):
    s = client(relay)
    body = b"From: app@org.test\r\nDate: Mon, 23 Nov 2026 07:00:00 +0000\r\nSubject: hello\r\nMessage-ID: <m1@org.test>\r\n\r\nline one\r\n..dot\r\n"  # noqa: E501 - one SMTP payload per line
    s.mail("app@org.test")
    s.rcpt("a@example.test")
    s.rcpt("b@example.test")
    code, reply = send_raw(s, body + b".\r\n")
    assert code == 250
    data, rcpts = stored(relay, qid_of(reply))
    assert data.endswith(body.replace(b"..dot", b".dot"))
    assert b"Received: from client.test ([127.0.0.1])" in data and b"X-Relaybox-ID: " in data
    assert sorted(rcpts) == [("a@example.test", "queued"), ("b@example.test", "queued")] or \
        all(st in ("queued", "sending", "deferred") for _, st in rcpts)
    s.quit()


@pytest.mark.parametrize("rcpt", [
    "<a@x.com;b@y.com>", "<a@x.com,b@y.com>", "<a@>", "<a>", "<a b@x.com>", "<@x.com>",
    "<" + "l" * 65 + "@x.com>", "<a@" + "d" * 64 + ".com>", "<a@x..com>",
])
def test_bad_recipient_syntax(relay, rcpt):
    s = client(relay)
    s.mail("app@org.test")
    code, msg = s.docmd("RCPT TO:" + rcpt)
    assert (code, msg.split(b":")[0]) == (501, b"5.1.3 Bad recipient address syntax"), (rcpt, code, msg)
    s.quit()


def test_bad_sender_and_null_sender(relay):
    s = client(relay)
    code, msg = s.docmd("MAIL FROM:<a@x.com;b@y.com>")
    assert code == 501 and msg.startswith(b"5.1.7")
    code, msg = s.docmd("MAIL FROM:<>")
    assert (code, msg) == (250, b"2.1.0 Ok")
    assert s.docmd("RCPT TO:<a@example.test>")[0] == 250
    code, reply = send_raw(s, b"Subject: dsn\r\n\r\nx\r\n.\r\n")
    assert code == 250
    s.quit()


def test_too_many_recipients(relay):
    s = client(relay)
    s.mail("app@org.test")
    for i in range(5):
        assert s.rcpt(f"r{i}@example.test")[0] == 250
    assert s.rcpt("r5@example.test") == (452, b"4.5.3 Error: too many recipients")
    s.quit()


def test_oversize_rejected_after_drain_and_session_continues(relay):
    s = client(relay)
    assert s.docmd("MAIL FROM:<app@org.test> SIZE=300000") == (
        552, b"5.3.4 Message size exceeds fixed maximum message size")
    s.mail("app@org.test")
    s.rcpt("a@example.test")
    big = b"Subject: big\r\n\r\n" + (b"x" * 500 + b"\r\n") * 600
    assert send_raw(s, big + b".\r\n") == (552, b"5.3.4 Message size exceeds fixed maximum message size")
    assert s.noop()[0] == 250          # the session is still in sync after the drain
    s.quit()


def test_line_too_long(relay):
    s = client(relay)
    s.mail("app@org.test")
    s.rcpt("a@example.test")
    code, msg = send_raw(s, b"Subject: long\r\n\r\n" + b"y" * 999 + b"\r\n.\r\n")
    assert code == 500 and msg.startswith(b"5.5.2")
    s.quit()


@pytest.mark.parametrize("payload", [
    b"Subject: s\r\n\r\nTesting\n.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nsmuggled\r\n.\r\n",  # noqa: E501 - one SMTP payload per line
    b"Subject: s\r\n\r\nTesting\r\n.\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nsmuggled\r\n.\r\n",  # noqa: E501 - one SMTP payload per line
    b"Subject: s\r\n\r\nTesting\r.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nsmuggled\r\n.\r\n",  # noqa: E501 - one SMTP payload per line
])
def test_smuggling_never_makes_two_messages(relay, payload):
    s = client(relay)
    s.mail("app@org.test")
    s.rcpt("a@example.test")
    code, reply = send_raw(s, payload)
    assert code == 250
    data, _ = stored(relay, qid_of(reply))
    assert b"smuggled" in data and b"MAIL FROM:<evil@x.test>" in data
    assert data.count(b"\n") == data.count(b"\r\n") and data.count(b"\r") == data.count(b"\r\n")
    assert s.noop()[0] == 250     # the server is still in command mode of the same session
    with sqlite3.connect(relay.db_path) as c:
        assert c.execute("SELECT COUNT(*) FROM messages WHERE sender='evil@x.test'").fetchone()[0] == 0
    s.quit()


def test_relay_denied_then_allowlisted_at_run_time(relay):
    s = client(relay, source="127.0.0.2")
    s.mail("app@org.test")
    assert s.rcpt("a@example.test") == (550, b"5.7.1 Relay access denied")
    s.quit()
    subprocess.run([sys.executable, "-m", "relaybox.cli", "allowlist", "add", "127.0.0.2/32", "--db",
                    relay.db_path, "--note", "test app"], check=True, capture_output=True)
    deadline = time.monotonic() + 10
    while True:
        s = client(relay, source="127.0.0.2")
        s.mail("app@org.test")
        code = s.rcpt("a@example.test")[0]
        if code == 250 or time.monotonic() > deadline:
            break
        s.quit()
        time.sleep(0.5)
    assert code == 250
    s.quit()
    subprocess.run([sys.executable, "-m", "relaybox.cli", "allowlist", "remove", "127.0.0.2/32", "--db",
                    relay.db_path], check=True, capture_output=True)


def test_auth_after_starttls_lets_unlisted_client_relay(relay):
    s = client(relay, source="127.0.0.3")
    code, _ = s.docmd("AUTH PLAIN AGFwcDEAczNjcmV0LXB3")
    assert code == 538 or code == 503 or code == 502        # not before TLS
    s.starttls(context=ssl._create_unverified_context())
    s.ehlo("client.test")
    with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
        s.login("app1", "wrong")
    assert exc.value.smtp_code == 535
    s.login("app1", "s3cret-pw")
    s.mail("app@org.test")
    assert s.rcpt("a@example.test")[0] == 250
    code, reply = send_raw(s, b"Subject: authed\r\n\r\nx\r\n.\r\n")
    assert code == 250
    with sqlite3.connect(relay.db_path) as c:
        assert c.execute("SELECT auth_user FROM messages WHERE id=?",
                         (qid_of(reply),)).fetchone()[0] == "app1"
    s.quit()
    assert "s3cret-pw" not in relay.log()


def test_scheduled_sending_and_bad_send_at(relay):
    s = client(relay)
    s.mail("app@org.test")
    s.rcpt("a@example.test")
    code, reply = send_raw(s, b"X-Relaybox-Send-At: 2099-01-01T09:00:00Z\r\nSubject: later\r\n\r\nx\r\n.\r\n")
    data, rcpts = stored(relay, qid_of(reply))
    assert rcpts == [("a@example.test", "scheduled")]
    assert b"X-Relaybox-Send-At" not in data
    s.mail("app@org.test")
    s.rcpt("a@example.test")
    code, msg = send_raw(s, b"X-Relaybox-Send-At: next tuesday\r\nSubject: bad\r\n\r\nx\r\n.\r\n")
    assert code == 550 and msg.startswith(b"5.6.0 X-Relaybox-Send-At")
    s.quit()


def test_idle_timeout_421(relay):
    sock = socket.create_connection(("127.0.0.1", relay.smtp_port))
    sock.settimeout(10)
    assert sock.recv(200).startswith(b"220")
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(200)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"421 4.4.2")
    sock.close()


def test_per_ip_session_limit(relay):
    socks = []
    try:
        for _ in range(8):
            sk = socket.create_connection(("127.0.0.1", relay.smtp_port), source_address=("127.0.0.4", 0))
            sk.settimeout(5)
            assert sk.recv(200).startswith(b"220")
            socks.append(sk)
        extra = socket.create_connection(("127.0.0.1", relay.smtp_port), source_address=("127.0.0.4", 0))
        extra.settimeout(5)
        assert extra.recv(200).startswith(b"421 4.3.2")
        extra.close()
    finally:
        for sk in socks:
            sk.close()


def test_swaks_sends_through_relaybox(relay):
    swaks = shutil.which("swaks")
    assert swaks, "swaks (Debian package) is required"
    out = subprocess.run([swaks, "--server", f"127.0.0.1:{relay.smtp_port}", "--from", "app@org.test",
                          "--to", "swaks@example.test", "--header", "Subject: swaks", "--body", "hi"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "<-  250 2.0.0 Ok: queued as " in out.stdout


def test_low_disk_refuses_at_mail_from(tmp_path):
    p = RelayboxProcess(str(tmp_path), {"storage": {"min_free": 0.9999}}).start()
    try:
        s = client(p)
        assert s.docmd("MAIL FROM:<app@org.test>") == (452, b"4.3.1 Insufficient system storage")
        s.quit()
    finally:
        assert p.stop() == 0
