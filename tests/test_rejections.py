"""The intake rejection log: refusals at SMTP time noted without I/O, written in batches, folded when they
flood, searchable through the store, the API and the CLI, pruned by age and row count."""

import asyncio
import json
import logging
import smtplib

import pytest
from prometheus_client import REGISTRY

from relay.config import SMTPConfig
from relay.intake.listener import Listener
from relay.intake.policy import Policy
from relay.intake.rejections import RejectionLog, bounded, reason_of
from relay.spool.spool import Spool
from store import Store
from store.rejections import NewRejection
from tests.peers.ports import free_port

pytestmark = pytest.mark.component

T0 = 1_800_000_000.0


def test_fields_are_bounded_and_escaped():
    assert bounded("a\r\nb\x00c") == "a\\r\\nb\\x00c"
    assert len(bounded("x" * 5000)) == 256 and bounded("x" * 5000).endswith("...")
    assert bounded(None) == ""


@pytest.mark.parametrize("code,enh,text,cmd,want", [
    (550, "5.7.1", "Relay access denied", "RCPT", "relay_denied"),
    (501, "5.1.3", "Bad recipient address syntax: a list", "RCPT", "bad_recipient"),
    (501, "5.1.7", "Bad sender address syntax", "MAIL", "bad_sender"),
    (552, "5.3.4", "Message size exceeds fixed maximum message size", "MAIL", "too_big"),
    (535, "5.7.8", "Authentication credentials invalid", "AUTH", "auth_failed"),
    (501, "5.5.4", "Syntax: RCPT TO:<address>", "RCPT", "syntax"),
    (452, "4.3.1", "Insufficient system storage", "MAIL", "storage"),
    (550, "5.6.0", "Message contains NUL characters", "DATA", "content"),
])
def test_reasons(code, enh, text, cmd, want):
    assert reason_of(code, enh, text, cmd) == want


@pytest.fixture
def db(tmp_path, clock):
    clock.t = T0
    s = Store(str(tmp_path / "r.db"), clock=clock).open()
    yield s
    s.close()


async def test_store_folds_a_flood_filters_and_prunes(db, clock):
    r = db.rejections
    flood = [NewRejection(T0 + i, "192.0.2.9", 550, "relay_denied", sender="spam@x.test",
                          recipient=f"v{i}@y.test", command="RCPT", enhanced="5.7.1",
                          text="Relay access denied")
             for i in range(50)]
    assert await r.add(flood) == 1                          # one row, count 50, first recipient kept
    [row] = await r.list({})
    assert (row.count, row.first_at, row.last_at, row.recipient) == (50, T0, T0 + 49, "v0@y.test")
    await r.add([NewRejection(T0 + 61, "192.0.2.9", 550, "relay_denied", sender="spam@x.test")])
    await r.add([NewRejection(T0 + 62, "198.51.100.1", 501, "bad_recipient", sender="App@Org.test",
                              recipient="a@x.test,b@x.test", command="RCPT", enhanced="5.1.3")])
    assert len(await r.list({})) == 3                       # a new minute is a new row
    assert [x.reason for x in await r.list({"sender": "app@org"})] == ["bad_recipient"]
    assert [x.client_ip for x in await r.list({"recipient": ",B@x"})] == ["198.51.100.1"]
    assert len(await r.list({"client": "192.0.2.9"})) == 2
    assert len(await r.list({"reason": "relay_denied"}, since=T0 + 60)) == 1
    assert len(await r.list({"sender": "%"})) == 0           # LIKE wildcards are literal
    with pytest.raises(ValueError):
        await r.list({"nope": "x"})
    assert await r.prune(keep=1e9, max_rows=2) == 1          # the oldest beyond the cap
    clock.t = T0 + 86400
    assert await r.prune(keep=3600, max_rows=100) == 2       # then by age
    assert await r.list({}) == []


async def test_buffer_is_bounded_and_never_does_io_in_note(db, clock):
    logged = RejectionLog(db.rejections, SMTPConfig(rejection_log_buffer=2), clock=clock)
    dropped = REGISTRY.get_sample_value("relaybox_smtp_rejections_dropped_total") or 0
    for i in range(100):                                    # one client, one reason: folded in memory
        logged.note(client_ip="192.0.2.1", reply="550 5.7.1 Relay access denied", command="RCPT",
                    sender="a@b.test", recipient=f"<x{i}@y.test>")
    logged.note(client_ip="192.0.2.2", reply="501 5.1.3 Bad recipient", command="RCPT")
    logged.note(client_ip="192.0.2.3", reply="501 5.1.3 Bad recipient", command="RCPT")   # buffer full
    assert logged.pending() == 2
    assert REGISTRY.get_sample_value("relaybox_smtp_rejections_dropped_total") == dropped + 1
    assert await db.rejections.list({}) == []               # nothing written by note()
    assert await logged.flush() == 2
    rows = {r.client_ip: r for r in await db.rejections.list({})}
    assert rows["192.0.2.1"].count == 100 and rows["192.0.2.1"].recipient == "<x0@y.test>"
    assert logged.pending() == 0


async def test_intake_refusals_are_logged_and_listed(tmp_path, db, clock, capsys):
    port = free_port()
    clock.t = T0
    listener = Listener(SMTPConfig(listen=[f"127.0.0.1:{port}"], max_message_size=1000), Spool(db), Policy())
    await listener.start()
    before = REGISTRY.get_sample_value("relaybox_smtp_rejections_logged_total",
                                       {"reason": "relay_denied"}) or 0

    def session():
        s = smtplib.SMTP("127.0.0.1", port, timeout=10)
        s.ehlo("client.test")
        out = [s.docmd("MAIL FROM:<app@org.test>"),
               s.docmd("RCPT TO:<a@x.test,b@x.test>"),
               s.docmd("RCPT TO:<someone@far.test>\x01"),
               s.docmd("RCPT TO:<someone@far.test>"),
               s.docmd("RSET"),
               s.docmd("MAIL FROM:<big@org.test> SIZE=5000")]
        s.quit()
        return out

    try:
        replies = await asyncio.to_thread(session)
        assert [c for c, _ in replies] == [250, 501, 501, 550, 250, 552]
        assert listener.state.rejections.pending() >= 3     # buffered, not yet written
    finally:
        await listener.drain(timeout=1)                     # flushes the buffer
    rows = await db.rejections.list({})
    got = {(r.reason, r.code, r.enhanced, r.command, r.sender, r.recipient, r.client_ip) for r in rows}
    assert ("relay_denied", 550, "5.7.1", "RCPT", "app@org.test", "<someone@far.test>", "127.0.0.1") in got
    assert ("too_big", 552, "5.3.4", "MAIL", "<big@org.test> SIZE=5000", "", "127.0.0.1") in got
    [bad] = [r for r in rows if r.reason == "bad_recipient"]
    assert bad.recipient == "<a@x.test,b@x.test>" and bad.count == 1
    [syn] = [r for r in rows if r.reason == "syntax"] or [None]
    assert syn is None or "\\x01" in syn.recipient
    assert REGISTRY.get_sample_value("relaybox_smtp_rejections_logged_total",
                                     {"reason": "relay_denied"}) == before + 1

    # the CLI on the same file
    from relaybox.cli import main
    assert await asyncio.to_thread(main, ["rejections", "list", "--json", "--reason", "relay_denied",
                                          "--db", db.path]) == 0
    [one] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert one["client_ip"] == "127.0.0.1" and one["text"] == "Relay access denied"
    assert await asyncio.to_thread(main, ["rejections", "list", "--sender", "big@", "--db", db.path]) == 0
    assert "too_big" in capsys.readouterr().out


async def test_api_lists_what_the_running_intake_refused(tmp_path):
    from tests.admin_support import running, smtp_send

    async with running(tmp_path) as (app, api):
        code, _ = await asyncio.to_thread(smtp_send, app.smtp_port, "app@org.test", ["far@away.test"],
                                          source="127.0.0.2")
        assert code == 550

        def address_list():
            with smtplib.SMTP("127.0.0.1", app.smtp_port, timeout=10) as s:
                s.ehlo("client.test")
                s.docmd("MAIL FROM:<app@org.test>")
                return s.docmd("RCPT TO:<a@x.test,b@x.test>")[0]

        assert await asyncio.to_thread(address_list) == 501
        for _ in range(50):                                   # written about a second later
            st, body = await api.call("GET", "/api/v1/rejections")
            if len(body["items"]) >= 2:
                break
            await asyncio.sleep(0.1)
        assert st == 200 and len(body["items"]) == 2
        st, body = await api.call("GET", "/api/v1/rejections", params={"client": "127.0.0.2"})
        [r] = body["items"]
        assert (r["reason"], r["code"], r["enhanced"], r["sender"], r["recipient"], r["count"]) == \
            ("relay_denied", 550, "5.7.1", "app@org.test", "<far@away.test>", 1)
        assert r["last_at"].endswith("Z") or "T" in r["last_at"]
        st, body = await api.call("GET", "/api/v1/rejections", params={"recipient": ",b@x", "limit": "1"})
        assert [x["reason"] for x in body["items"]] == ["bad_recipient"] and body["next_cursor"] is None
        st, body = await api.call("GET", "/api/v1/rejections", params={"sender": "APP@", "limit": "1"})
        assert len(body["items"]) == 1 and body["next_cursor"]
        st, more = await api.call("GET", "/api/v1/rejections", params={"sender": "app@", "limit": "1",
                                                                       "cursor": body["next_cursor"]})
        assert len(more["items"]) == 1 and more["items"][0]["id"] < body["items"][0]["id"]


async def test_rejections_and_delivery_bounces_on_every_backend(open_store, clock):
    """The same SQL on SQLite and PostgreSQL: folding, substring search, pruning, and the one write of a
    delivery result with its bounce record (store.bounces.complete_delivery)."""
    from relay.bounces.record import delivery_failure
    from relay.envelope import NewMessage as Msg
    from store.records import AttemptLog, RecipientResult

    clock.t = T0
    s = open_store()
    await s.rejections.add([NewRejection(T0 + i, "192.0.2.1", 550, "relay_denied", sender="a_b@x.test",
                                         recipient="<c@d.test>") for i in range(3)])
    await s.rejections.add([NewRejection(T0 + 1, "192.0.2.1", 550, "relay_denied", sender="a_b@x.test")])
    [row] = await s.rejections.list({"sender": "A_B@"})
    assert (row.count, row.last_at) == (4, T0 + 2)
    assert await s.rejections.list({"sender": "a%b"}) == []
    assert await s.rejections.prune(keep=10, max_rows=0) == 1

    qid = await s.messages.enqueue(Msg(sender="app@src.test", recipients=["gone@dst.test"], body=b"x\r\n"))
    [claim] = await s.messages.claim("t", limit=10, lease=60)
    rid = claim.recipients[0].id
    f = delivery_failure(qid, rid, "gone@dst.test", 550, "5.1.1", "user unknown", None, "mx.dst.test")
    att = AttemptLog(qid, T0, T0 + 1, "bounced", host="mx.dst.test", ip="192.0.2.9", tls=True,
                     recipients=(rid,),
                     transcript=({"at": T0, "dir": "S", "line": "550 5.1.1 user unknown"},))
    [rec] = await s.bounces.complete_delivery([RecipientResult(rid, "bounced", 550, "5.1.1", "user unknown",
                                                               reason="userunknown")],
                                              attempt=att, failures=[f])
    assert rec.effects[0].effect == "suppressed"
    [b] = await s.bounces.list({"source": "delivery"})
    assert b.attempt_id is not None and (b.reason, b.kind, b.remote_mta) == ("userunknown", "hard",
                                                                             "mx.dst.test")
    assert await s.bounces.is_suppressed("gone@dst.test")


async def test_a_store_that_refuses_writes_costs_one_log_line_and_never_an_exception(caplog):
    from store import StorageError

    class Refusing:
        clock = staticmethod(lambda: T0)
        ok = False

        async def add(self, items):
            if not self.ok:
                raise StorageError("commit failed: database or disk is full")
            return len(items)

        async def prune(self, **kw):
            return 0

    caplog.set_level(logging.INFO, logger="relay.intake.rejections")
    store = Refusing()
    logged = RejectionLog(store, SMTPConfig())
    for _ in range(3):
        logged.note(client_ip="192.0.2.1", reply="550 5.7.1 Relay access denied", command="RCPT")
        await logged._once()
    warnings = [r for r in caplog.records if "could not write" in r.getMessage()]
    assert len(warnings) == 1 and logged.pending() == 0
    store.ok = True
    logged.note(client_ip="192.0.2.1", reply="550 5.7.1 Relay access denied", command="RCPT")
    await logged._once()
    assert any("writing again" in r.getMessage() for r in caplog.records)


async def test_auth_failures_are_logged_with_the_login_tried(db, clock):
    import base64

    port = free_port()
    cfg = SMTPConfig(listen=[f"127.0.0.1:{port}"], require_tls_for_auth=False, auth_failure_delay=0)
    listener = Listener(cfg, Spool(db), Policy())
    await listener.start()

    def session():
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo("client.test")
            blob = base64.b64encode(b"\0mallory\0guess").decode()
            return s.docmd("AUTH", f"PLAIN {blob}")[0]

    try:
        assert await asyncio.to_thread(session) == 535
    finally:
        await listener.drain(timeout=1)
    [r] = await db.rejections.list({"reason": "auth_failed"})
    assert (r.command, r.auth_user, r.code, r.client_ip) == ("AUTH", "mallory", 535, "127.0.0.1")
