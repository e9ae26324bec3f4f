"""Suppression list and bounce effects on a real SQLite database (store.sqlite.Database in tmp_path)."""

from __future__ import annotations

import json

import pytest

from relay.bounces import parse, suppression, verp
from relay.bounces import record as bounce_handler
from relay.config import BouncesConfig
from relay.envelope import NewMessage
from relay.spool.spool import Spool
from store.sqlite import Database

SECRET = "suppression-test-secret-0123"
CFG = BouncesConfig(domain="bounce.relay.example", secret=SECRET)
DAY = 86400.0
T0 = 1_800_000_000.0


@pytest.fixture
def db(tmp_path):
    d = Database(str(tmp_path / "store.sqlite")).open()
    yield d
    d.close()


async def _enqueue(db, rcpts=("bob@example.net", "carol@example.com")) -> tuple[str, dict[str, int]]:
    spool = Spool(db)
    qid = await spool.enqueue(NewMessage(sender="app@relay.example", recipients=list(rcpts),
                                         body=b"Subject: hi\r\nMessage-ID: <m1@relay.example>\r\n\r\nhi\r\n",
                                         message_id_header="<m1@relay.example>"))
    rows = await db.read(lambda c: c.execute("SELECT id, address FROM recipients WHERE message_id=?",
                                             (qid,)).fetchall())
    ids = {r["address"]: r["id"] for r in rows}
    await db.write(lambda c: c.execute("UPDATE recipients SET status='delivered' WHERE message_id=?", (qid,)))
    return qid, ids


def _dsn(rcpt: str, status="5.1.1", action="failed", diag="550 5.1.1 <{r}>: user unknown",
         headers="") -> bytes:
    return f"""From: MAILER-DAEMON@mx.example.net
To: bounces@bounce.relay.example
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

The mail system could not deliver your message.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; {rcpt}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {diag.format(r=rcpt)}

--B
Content-Type: text/rfc822-headers

From: app@relay.example
To: {rcpt}
Subject: hi{headers}

--B--
""".encode()


def _recipient(db, rid):
    return db.read_sync(lambda c: dict(c.execute("SELECT * FROM recipients WHERE id=?", (rid,)).fetchone()))


def _events(db, rid):
    return db.read_sync(lambda c: [dict(r) for r in c.execute(
        "SELECT * FROM events WHERE recipient_id=? AND actor='bounce' ORDER BY id", (rid,))])


# ---- the list itself ----------------------------------------------------------------------------------
def test_add_remove_list_search_export_and_expiry(db):
    w = db.write_sync
    w(lambda c: suppression.add(c, " <Bob@Example.NET> ", "userunknown", "hard", "bounce", now=T0,
                                expires_at=T0 + 30 * DAY))
    w(lambda c: suppression.add(c, "eve@example.org", "feedback", "complaint", "complaint", now=T0 + 1))
    w(lambda c: suppression.add(c, "old@example.org", "manual", "manual", "cli", now=T0, expires_at=T0 + 10))
    r = db.read_sync
    assert r(lambda c: suppression.is_suppressed(c, "BOB@example.net", now=T0 + DAY))
    assert not r(lambda c: suppression.is_suppressed(c, "bob@example.net", now=T0 + 31 * DAY))
    assert not r(lambda c: suppression.is_suppressed(c, "old@example.org", now=T0 + 11))
    assert r(lambda c: suppression.is_suppressed(c, "eve@example.org", now=T0 + 3650 * DAY))
    listed = r(lambda c: suppression.list_entries(c, now=T0 + 100))
    assert [e["address"] for e in listed] == ["eve@example.org", "bob@example.net"]
    found = r(lambda c: suppression.search(c, "EXAMPLE.NET", now=T0))
    assert [e["address"] for e in found] == ["bob@example.net"]
    assert [e["address"] for e in r(lambda c: suppression.search(c, "%", now=T0))] == []
    assert [e["address"] for e in r(lambda c: suppression.export(c, now=T0 + 100))] == [
        "bob@example.net", "eve@example.org"]
    # never weakened: a 30-day hard bounce does not shorten a permanent complaint entry
    w(lambda c: suppression.add(c, "eve@example.org", "userunknown", "hard", "bounce", now=T0 + 2,
                                expires_at=T0 + 30 * DAY))
    assert r(lambda c: suppression.get(c, "eve@example.org", now=T0))["expires_at"] is None
    assert w(lambda c: suppression.remove(c, "Bob@example.net"))
    assert not w(lambda c: suppression.remove(c, "bob@example.net"))
    with pytest.raises(ValueError):
        w(lambda c: suppression.add(c, "not-an-address", "manual", "manual", "cli"))


async def test_soft_bounces_suppress_only_after_the_limit_within_the_window(db):
    qid, ids = await _enqueue(db)
    soft = parse(_dsn("carol@example.com", status="5.2.2", diag="552 5.2.2 mailbox full"))
    assert soft.recipients[0].kind == "soft"
    target = verp.VerpTarget(qid, ids["carol@example.com"])

    def bounce_at(t):
        return db.write_sync(lambda c: bounce_handler.record_bounce(
            c, parse(_dsn("carol@example.com", status="5.2.2", diag="552 5.2.2 mailbox full")),
            source="smtp", target=target, now=t, settings=CFG))

    bounce_at(T0 - 8 * DAY)                   # outside the 7-day window: does not count
    for i in range(4):
        out = bounce_at(T0 + i)
        assert out.rows[0]["effect"] in ("bounced+counted", "counted")
    assert not db.read_sync(lambda c: suppression.is_suppressed(c, "carol@example.com", now=T0 + 5))
    out = bounce_at(T0 + 5)
    assert out.rows[0]["effect"].endswith("suppressed")
    entry = db.read_sync(lambda c: suppression.get(c, "carol@example.com", now=T0 + 6))
    assert entry["kind"] == "soft" and entry["reason"] == "mailboxfull"


# ---- effects of a bounce ------------------------------------------------------------------------------
async def test_verp_bounce_marks_delivered_recipient_bounced_and_suppresses(db, tmp_path):
    qid, ids = await _enqueue(db)
    rid = ids["bob@example.net"]
    rp = verp.return_path(CFG, qid, rid)
    out = await bounce_handler.process(db, CFG, _dsn("bob@example.net"), source="smtp", rcpt=rp)
    assert out.category == "bounce" and out.correlation == "verp"
    assert out.rows[0]["effect"] == "bounced+suppressed"
    rec = _recipient(db, rid)
    assert (rec["status"], rec["reason"], rec["last_enhanced"], rec["last_code"]) == (
        "bounced", "userunknown", "5.1.1", 550)
    ev = _events(db, rid)
    assert len(ev) == 1 and ev[0]["status"] == "bounced" and ev[0]["reason"] == "userunknown"
    details = json.loads(ev[0]["details"])
    assert details["status"] == "5.1.1" and "user unknown" in details["diagnostic"]
    assert details["previous"] == "delivered"
    # the other recipient is untouched
    assert _recipient(db, ids["carol@example.com"])["status"] == "delivered"
    # the same report again (re-fetched): no second event
    await bounce_handler.process(db, CFG, _dsn("bob@example.net"), source="smtp", rcpt=rp)
    assert len(_events(db, rid)) == 1
    # durable: a restart on the same file sees the suppression (30 days) and the bounce rows
    db.close()
    db2 = Database(str(tmp_path / "store.sqlite")).open()
    try:
        entry = db2.read_sync(lambda c: suppression.get(c, "bob@example.net"))
        assert entry["kind"] == "hard"
        assert entry["expires_at"] - entry["created_at"] == pytest.approx(30 * DAY)
        rows = db2.read_sync(lambda c: c.execute("SELECT * FROM bounces WHERE recipient_id=?",
                                                 (rid,)).fetchall())
        assert len(rows) == 2 and rows[0]["correlation"] == "verp" and rows[0]["source"] == "smtp"
    finally:
        db2.close()
        db.open()


async def test_forged_verp_token_has_no_effect(db):
    qid, ids = await _enqueue(db)
    rid = ids["bob@example.net"]
    forged = verp.encode(qid, rid, secret="attacker-guessed-secret-1", domain=CFG.domain)
    assert bounce_handler.resolve_target(CFG, b"", forged) is None
    out = await bounce_handler.process(db, CFG, _dsn("bob@example.net"), source="smtp", rcpt=forged)
    assert out.correlation == "" and out.rows[0]["effect"] == "uncorrelated"
    assert _recipient(db, rid)["status"] == "delivered"
    assert _events(db, rid) == []
    assert not db.read_sync(lambda c: suppression.is_suppressed(c, "bob@example.net"))
    # a report naming our queue id but an address that is not its recipient changes nothing either
    out = await bounce_handler.process(db, CFG, _dsn("victim@example.org", headers=f"\nX-Relaybox-ID: {qid}"),
                                       source="channel")
    assert out.rows[0]["effect"] == "uncorrelated"
    assert not db.read_sync(lambda c: suppression.is_suppressed(c, "victim@example.org"))


async def test_header_correlation_without_verp(db):
    qid, ids = await _enqueue(db)
    sink = bounce_handler.make_sink(db, type("R", (), {"bounces": BouncesConfig()})())
    out = await sink(_dsn("carol@example.com", headers=f"\nX-Relaybox-ID: {qid}"), raw_ref="imap:bounces/17")
    assert out.correlation == "relaybox-id"
    assert _recipient(db, ids["carol@example.com"])["status"] == "bounced"
    out = await sink(_dsn("bob@example.net", headers="\nMessage-ID: <m1@relay.example>"))
    assert out.correlation == "message-id"
    assert _recipient(db, ids["bob@example.net"])["status"] == "bounced"
    ref = db.read_sync(lambda c: c.execute("SELECT raw_ref, source FROM bounces ORDER BY id LIMIT 1")
                       .fetchone())
    assert tuple(ref) == ("imap:bounces/17", "channel")


async def test_delayed_report_changes_nothing(db):
    qid, ids = await _enqueue(db)
    rid = ids["bob@example.net"]
    raw = _dsn("bob@example.net", status="4.4.1", action="delayed", diag="421 4.4.1 connection timed out")
    out = await bounce_handler.process(db, CFG, raw, source="smtp", rcpt=verp.return_path(CFG, qid, rid))
    assert out.rows[0]["effect"] == "delayed"
    assert _recipient(db, rid)["status"] == "delivered"


async def test_complaint_suppresses_forever_with_event(db):
    qid, ids = await _enqueue(db)
    rid = ids["carol@example.com"]
    raw = f"""From: fbl@isp.example
To: abuse@relay.example
Subject: complaint
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="F"

--F
Content-Type: text/plain

An abuse report.
--F
Content-Type: message/feedback-report

Feedback-Type: abuse
Version: 1
Original-Rcpt-To: carol@example.com

--F
Content-Type: message/rfc822

From: app@relay.example
To: carol@example.com
X-Relaybox-ID: {qid}

hi
--F--
""".encode()
    out = await bounce_handler.process(db, CFG, raw, source="channel")
    assert out.category == "feedback" and out.rows[0]["effect"] == "suppressed"
    entry = db.read_sync(lambda c: suppression.get(c, "carol@example.com", now=T0 + 3650 * DAY))
    assert entry["kind"] == "complaint" and entry["expires_at"] is None
    assert _recipient(db, rid)["status"] == "delivered"
    assert [e["status"] for e in _events(db, rid)] == ["complained"]


async def test_junk_is_kept_unparsed_with_reason(db):
    junk = b"\x00\x01 binary junk \xff" * 100
    out = await bounce_handler.process(db, CFG, junk, source="channel", raw_ref="pop3:42")
    assert out.category == "unknown" and out.rows[0]["effect"] == "unparsed"
    row = db.read_sync(lambda c: c.execute("SELECT * FROM bounces").fetchone())
    assert row["unparsed"] and row["raw"] == junk and row["raw_ref"] == "pop3:42"


async def test_synchronous_rejection_at_delivery_counts_for_suppression(db):
    qid, ids = await _enqueue(db)
    rid = ids["bob@example.net"]
    parsed = bounce_handler.from_reply("bob@example.net", 550, "5.1.1",
                                       "5.1.1 <bob@example.net>: no such user")
    assert (parsed.recipients[0].reason, parsed.recipients[0].kind) == ("userunknown", "hard")
    out = db.write_sync(lambda c: bounce_handler.record_bounce(
        c, parsed, source="delivery", target=verp.VerpTarget(qid, rid), settings=CFG))
    assert out.correlation == "delivery" and out.rows[0]["effect"] == "suppressed"
    assert _recipient(db, rid)["status"] == "delivered"      # the spool records delivery results itself
    assert db.read_sync(lambda c: suppression.is_suppressed(c, "bob@example.net"))


# ---- CLI -------------------------------------------------------------------------------------------------
def test_suppressions_cli_round_trip(tmp_path, capsys):
    from relaybox.cli import main

    path = str(tmp_path / "cli.db")
    assert main(["suppressions", "add", "Dan@Example.com", "--expires", "30d", "--note", "asked",
                 "--db", path]) == 0
    assert main(["suppressions", "add", "x@example.com", "--expires", "soon", "--db", path]) == 2
    assert main(["suppressions", "list", "--json", "--db", path]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    entries = json.loads(out)
    assert [e["address"] for e in entries] == ["dan@example.com"] and entries[0]["note"] == "asked"
    assert main(["suppressions", "export", "--format", "jsonl", "--db", path]) == 0
    assert json.loads(capsys.readouterr().out.strip())["address"] == "dan@example.com"
    assert main(["suppressions", "remove", "dan@example.com", "--db", path]) == 0
    assert main(["suppressions", "remove", "dan@example.com", "--db", path]) == 1
    capsys.readouterr()
    assert main(["suppressions", "export", "--db", path]) == 0
    header = "address,reason,kind,source,created_at,expires_at,note,bounce_id"
    assert capsys.readouterr().out.strip() == header


def test_for_bounce_domain():
    assert bounce_handler.for_bounce_domain(CFG, "<bounces+abc@Bounce.Relay.Example>")
    assert not bounce_handler.for_bounce_domain(CFG, "bob@example.net")
    assert not bounce_handler.for_bounce_domain(BouncesConfig(), "bounces+abc@bounce.relay.example")
