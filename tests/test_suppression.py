"""Suppression list and bounce effects on a real SQLite database (a store.Store in tmp_path)."""

from __future__ import annotations

import json

import pytest

from relay.bounces import parse, verp
from relay.bounces import record as bounce_handler
from relay.config import BouncesConfig
from relay.envelope import NewMessage
from relay.spool.spool import RecipientResult, Spool
from store import Store
from store import suppressions as supp

pytestmark = pytest.mark.component

SECRET = "suppression-test-secret-0123"
CFG = BouncesConfig(domain="bounce.relay.example", secret=SECRET)
DAY = 86400.0
T0 = 1_800_000_000.0


@pytest.fixture
def clock(clock):
    """The conftest clock, started at T0."""
    clock.t = T0
    return clock


@pytest.fixture
def db(tmp_path, clock):
    s = Store(str(tmp_path / "relay.db"), clock=clock).open()
    yield s
    s.close()


async def _enqueue(db, rcpts=("bob@example.net", "carol@example.com")) -> tuple[str, dict[str, int]]:
    """A message whose recipients were delivered (claimed and completed through the spool)."""
    spool = Spool(db)
    qid = await spool.enqueue(NewMessage(sender="app@relay.example", recipients=list(rcpts),
                                         body=b"Subject: hi\r\nMessage-ID: <m1@relay.example>\r\n\r\nhi\r\n",
                                         message_id_header="<m1@relay.example>"))
    [claim] = await spool.claim("test", limit=10)
    await spool.complete([RecipientResult(r.id, "delivered", 250, "2.0.0", "ok") for r in claim.recipients])
    return qid, {r.address: r.id for r in claim.recipients}


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
    return db.db.read_sync(lambda c: dict(c.execute("SELECT * FROM recipients WHERE id=?",
                                                    (rid,)).fetchone()))


def _events(db, rid):
    return db.db.read_sync(lambda c: [dict(r) for r in c.execute(
        "SELECT * FROM events WHERE recipient_id=? AND actor='bounce' ORDER BY id", (rid,))])


def _suppressed(db, address, at=None):
    if at is not None:
        db.clock.t = at
    return db.db.read_sync(lambda c: supp.is_suppressed(c, address, db.clock()))


# ---- the list itself ----------------------------------------------------------------------------------
async def test_add_remove_list_search_export_and_expiry(db, clock):
    b = db.bounces
    await b.suppress(" <Bob@Example.NET> ", "userunknown", "hard", "bounce", expires_at=T0 + 30 * DAY)
    clock.t = T0 + 1
    await b.suppress("eve@example.org", "feedback", "complaint", "complaint")
    clock.t = T0
    await b.suppress("old@example.org", "manual", "manual", "cli", expires_at=T0 + 10)
    assert _suppressed(db, "BOB@example.net", T0 + DAY)
    assert not _suppressed(db, "bob@example.net", T0 + 31 * DAY)
    assert not _suppressed(db, "old@example.org", T0 + 11)
    assert _suppressed(db, "eve@example.org", T0 + 3650 * DAY)
    clock.t = T0 + 100
    assert [e.address for e in await b.suppressions()] == ["eve@example.org", "bob@example.net"]
    clock.t = T0
    assert [e.address for e in await b.suppressions(search="EXAMPLE.NET")] == ["bob@example.net"]
    assert [e.address for e in await b.suppressions(search="%")] == []
    clock.t = T0 + 100
    assert [e.address for e in await b.export_suppressions()] == ["bob@example.net", "eve@example.org"]
    # never weakened: a 30-day hard bounce does not shorten a permanent complaint entry
    clock.t = T0 + 2
    await b.suppress("eve@example.org", "userunknown", "hard", "bounce", expires_at=T0 + 30 * DAY)
    clock.t = T0
    assert (await b.suppression("eve@example.org")).expires_at is None
    assert await b.unsuppress("Bob@example.net")
    assert not await b.unsuppress("bob@example.net")
    with pytest.raises(ValueError):
        await b.suppress("not-an-address", "manual", "manual", "cli")


async def test_soft_bounces_suppress_only_after_the_limit_within_the_window(db):
    qid, ids = await _enqueue(db)
    soft = parse(_dsn("carol@example.com", status="5.2.2", diag="552 5.2.2 mailbox full"))
    assert soft.recipients[0].kind == "soft"
    target = verp.VerpTarget(qid, ids["carol@example.com"])

    async def bounce_at(t):
        return await db.bounces.record(
            bounce_handler.report_of(parse(_dsn("carol@example.com", status="5.2.2",
                                                diag="552 5.2.2 mailbox full"))),
            source="smtp", target=(target.queue_id,
                                   target.recipient_id), now=t, rules=bounce_handler.rules_of(CFG))

    await bounce_at(T0 - 8 * DAY)             # outside the 7-day window: does not count
    for i in range(4):
        out = await bounce_at(T0 + i)
        assert out.effects[0].effect in ("bounced+counted", "counted")
    assert not _suppressed(db, "carol@example.com", T0 + 5)
    out = await bounce_at(T0 + 5)
    assert out.effects[0].effect.endswith("suppressed")
    db.clock.t = T0 + 6
    entry = await db.bounces.suppression("carol@example.com")
    assert entry.kind == "soft" and entry.reason == "mailboxfull"


# ---- effects of a bounce ------------------------------------------------------------------------------
async def test_verp_bounce_marks_delivered_recipient_bounced_and_suppresses(db, tmp_path):
    qid, ids = await _enqueue(db)
    rid = ids["bob@example.net"]
    rp = verp.return_path(CFG, qid, rid)
    out = await bounce_handler.process(db.bounces, CFG, _dsn("bob@example.net"), source="smtp", rcpt=rp)
    assert out.category == "bounce" and out.correlation == "verp"
    assert out.effects[0].effect == "bounced+suppressed"
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
    await bounce_handler.process(db.bounces, CFG, _dsn("bob@example.net"), source="smtp", rcpt=rp)
    assert len(_events(db, rid)) == 1
    # durable: a restart on the same file sees the suppression (30 days) and the bounce rows
    db.close()
    db2 = Store(str(tmp_path / "relay.db"), clock=db.clock).open()
    try:
        entry = await db2.bounces.suppression("bob@example.net")
        assert entry.kind == "hard"
        assert entry.expires_at - entry.created_at == pytest.approx(30 * DAY)
        rows = [b for b in await db2.bounces.list({}) if b.recipient_id == rid]
        assert len(rows) == 2 and rows[-1].correlation == "verp" and rows[-1].source == "smtp"
    finally:
        db2.close()
        db.open()


async def test_forged_verp_token_has_no_effect(db):
    qid, ids = await _enqueue(db)
    rid = ids["bob@example.net"]
    forged = verp.encode(qid, rid, secret="attacker-guessed-secret-1", domain=CFG.domain)
    assert bounce_handler.resolve_target(CFG, b"", forged) is None
    out = await bounce_handler.process(db.bounces, CFG, _dsn("bob@example.net"), source="smtp", rcpt=forged)
    assert out.correlation == "" and out.effects[0].effect == "uncorrelated"
    assert _recipient(db, rid)["status"] == "delivered"
    assert _events(db, rid) == []
    assert not _suppressed(db, "bob@example.net")
    # a report naming our queue id but an address that is not its recipient changes nothing either
    out = await bounce_handler.process(db.bounces, CFG, _dsn("victim@example.org",
                                                             headers=f"\nX-Relaybox-ID: {qid}"),
                                       source="channel")
    assert out.effects[0].effect == "uncorrelated"
    assert not _suppressed(db, "victim@example.org")


async def test_header_correlation_without_verp(db):
    qid, ids = await _enqueue(db)
    sink = bounce_handler.make_sink(db.bounces, type("R", (), {"bounces": BouncesConfig()})())
    out = await sink(_dsn("carol@example.com", headers=f"\nX-Relaybox-ID: {qid}"), raw_ref="imap:bounces/17")
    assert out.correlation == "relaybox-id"
    assert _recipient(db, ids["carol@example.com"])["status"] == "bounced"
    out = await sink(_dsn("bob@example.net", headers="\nMessage-ID: <m1@relay.example>"))
    assert out.correlation == "message-id"
    assert _recipient(db, ids["bob@example.net"])["status"] == "bounced"
    first = (await db.bounces.list({}))[-1]
    assert (first.raw_ref, first.source) == ("imap:bounces/17", "channel")


async def test_delayed_report_changes_nothing(db):
    qid, ids = await _enqueue(db)
    rid = ids["bob@example.net"]
    raw = _dsn("bob@example.net", status="4.4.1", action="delayed", diag="421 4.4.1 connection timed out")
    out = await bounce_handler.process(db.bounces, CFG, raw, source="smtp", rcpt=verp.return_path(CFG, qid,
                                                                                                  rid))
    assert out.effects[0].effect == "delayed"
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
    out = await bounce_handler.process(db.bounces, CFG, raw, source="channel")
    assert out.category == "feedback" and out.effects[0].effect == "suppressed"
    db.clock.t = T0 + 3650 * DAY
    entry = await db.bounces.suppression("carol@example.com")
    assert entry.kind == "complaint" and entry.expires_at is None
    assert _recipient(db, rid)["status"] == "delivered"
    assert [e["status"] for e in _events(db, rid)] == ["complained"]


async def test_junk_is_kept_unparsed_with_reason(db):
    junk = b"\x00\x01 binary junk \xff" * 100
    out = await bounce_handler.process(db.bounces, CFG, junk, source="channel", raw_ref="pop3:42")
    assert out.category == "unknown" and out.effects[0].effect == "unparsed"
    [row] = await db.bounces.list({})
    assert row.unparsed and row.raw == junk and row.raw_ref == "pop3:42"


async def test_synchronous_rejection_at_delivery_counts_for_suppression(db):
    qid, ids = await _enqueue(db)
    rid = ids["bob@example.net"]
    parsed = bounce_handler.from_reply("bob@example.net", 550, "5.1.1",
                                       "5.1.1 <bob@example.net>: no such user")
    assert (parsed.recipients[0].reason, parsed.recipients[0].kind) == ("userunknown", "hard")
    out = await db.bounces.record(bounce_handler.report_of(parsed), source="delivery", target=(qid, rid),
                                  rules=bounce_handler.rules_of(CFG))
    assert out.correlation == "delivery" and out.effects[0].effect == "suppressed"
    assert _recipient(db, rid)["status"] == "delivered"      # the spool records delivery results itself
    assert _suppressed(db, "bob@example.net")


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
