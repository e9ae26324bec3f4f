"""Outgoing DSNs (relay/notices/dsn.py) are well-formed RFC 3464 reports: checked with the stdlib MIME
parser and
with relaybox's own inbound bounce parser (relay/bounces, written independently)."""

import email
from dataclasses import replace

import pytest

from relay.bounces.parser import parse
from relay.notices import dsn
from store.records import Message

pytestmark = pytest.mark.unit

MSG = Message(id="06H0EJTDD1ETHACP", sender="alice@src.test", created_at=1_800_000_000.0, size=0,
              body_sha256="")
ORIGINAL = (b"From: Alice <alice@src.test>\r\nTo: bob@dst.test\r\nSubject: hi\r\n"
            b"Message-ID: <orig-1@src.test>\r\n\r\nsecret body text\r\n")
FAILED = [dsn.FailedRecipient("bob@dst.test", "bounced", "5.1.1", 550, "<bob@dst.test>: user unknown",
                              "mx.dst.test"),
          dsn.FailedRecipient("x@null.test", "failed", "5.1.10", 556, "null MX", None, "nullmx"),
          dsn.FailedRecipient("late@dst.test", "failed", "4.4.7", None, "delivery time expired after 5 days",
                              None, "expired")]


def test_failure_report_structure():
    raw = dsn.build(MSG, FAILED, ORIGINAL, reporting_mta="relay.test", now=1_800_000_100.0)
    m = email.message_from_bytes(raw)
    assert m.get_content_type() == "multipart/report" and m.get_param("report-type") == "delivery-status"
    assert m["To"] == "<alice@src.test>" and m["Auto-Submitted"] == "auto-replied"
    parts = [p.get_content_type() for p in m.walk()][1:]
    assert parts[0] == "text/plain" and "message/delivery-status" in parts
    assert parts[-1] == "text/rfc822-headers"
    assert b"secret body text" not in raw                 # headers of the original only
    assert b"Message-ID: <orig-1@src.test>" in raw
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")


def test_our_bounce_parser_understands_our_reports():
    raw = dsn.build(MSG, FAILED, ORIGINAL, reporting_mta="relay.test", now=1_800_000_100.0)
    p = parse(raw)
    assert p.category == "bounce", p
    got = {r.address: (r.action, r.status) for r in p.recipients}
    assert got["bob@dst.test"] == ("failed", "5.1.1")
    assert got["x@null.test"] == ("failed", "5.1.10")
    assert got["late@dst.test"] == ("failed", "4.4.7")
    assert p.original_message_id.strip("<>") == "orig-1@src.test"


def test_delay_report_and_who_gets_reports():
    raw = dsn.build(MSG, FAILED[:1], ORIGINAL, reporting_mta="relay.test", action="delayed")
    assert b"Action: delayed" in raw and b"Subject: Delayed Mail (still being retried)" in raw
    assert dsn.new_message(replace(MSG, sender=""), FAILED, ORIGINAL, reporting_mta="relay.test") is None
    assert dsn.new_message(replace(MSG, sender="MAILER-DAEMON@x.test"), FAILED, None,
                           reporting_mta="relay.test") is None
    new = dsn.new_message(MSG, FAILED, None, reporting_mta="relay.test")
    assert new.sender == "" and new.recipients == ["alice@src.test"]
    assert b"no longer retained" in new.body
