"""relaybox as the MX of its VERP bounce domain: reports from anyone are parsed and recorded, never
relayed."""

import smtplib
import sqlite3

import pytest

from relay.bounces import verp
from relay.config import BouncesConfig
from tests.peers.relaybox_proc import RelayboxProcess

pytestmark = pytest.mark.integration

SECRET = "a-long-verp-secret-for-tests"


def dsn_for(original_rcpt: str, verp_addr: str) -> bytes:
    return (
        f"From: MAILER-DAEMON@mx.example.test\r\nTo: {verp_addr}\r\nSubject: Undelivered Mail\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n"  # noqa: E501 - one SMTP payload per line
        "--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry, the address does not exist.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.test\r\n\r\n"
        f"Final-Recipient: rfc822; {original_rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <" + original_rcpt + ">: Recipient address rejected: User unknown\r\n"  # noqa: E501 - one SMTP payload per line
        "--B--\r\n").encode()


def test_verp_bounce_over_smtp_marks_recipient_and_suppresses(tmp_path):
    relay = RelayboxProcess(str(tmp_path), {
        "delivery": {"enabled": False},
        "bounces": {"domain": "bounce.relay.test", "secret": SECRET},
    }).start()
    try:
        s = smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=10)
        s.sendmail("app@org.test", ["gone@example.test", "ok@example.test"], b"Subject: hello\r\n\r\nx\r\n")
        s.quit()
        with sqlite3.connect(relay.db_path) as c:
            qid, rid = c.execute("SELECT message_id, id FROM recipients WHERE address='gone@example.test'"
                                 ).fetchone()
        addr = verp.return_path(BouncesConfig(domain="bounce.relay.test", secret=SECRET), qid, rid)

        # the remote MTA is not allow-listed: reports to valid VERP addresses are accepted anyway
        b = smtplib.SMTP("127.0.0.1", relay.smtp_port, source_address=("127.0.0.9", 0), timeout=10)
        b.ehlo("mx.example.test")
        assert b.docmd("MAIL FROM:<>")[0] == 250
        assert b.docmd("RCPT TO:<nobody@bounce.relay.test>") == (550, b"5.1.1 No such bounce address")
        forged = addr.replace(addr.split("+")[1][:4], "AAAA")
        assert b.docmd(f"RCPT TO:<{forged}>")[0] == 550
        assert b.docmd("RCPT TO:<victim@example.test>") == (550, b"5.7.1 Relay access denied")
        assert b.docmd(f"RCPT TO:<{addr}>") == (250, b"2.1.5 Ok")
        assert b.docmd("DATA")[0] == 354
        b.send(dsn_for("gone@example.test", addr) + b".\r\n")
        assert b.getreply() == (250, b"2.0.0 Ok: report recorded")
        b.quit()

        with sqlite3.connect(relay.db_path) as c:
            status = dict(c.execute("SELECT address, status FROM recipients WHERE message_id=?",
                                    (qid,)).fetchall())
            assert status == {"gone@example.test": "bounced", "ok@example.test": "queued"}
            assert c.execute("SELECT COUNT(*) FROM suppressions WHERE address='gone@example.test'"
                             ).fetchone()[0] == 1
            # the report itself was not queued for relaying
            assert c.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1
    finally:
        assert relay.stop() == 0
