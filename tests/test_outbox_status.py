"""Outbox and Sent as users see them (store.history, the API, the console), the pending/sending texts, and
the substring search of the message list through the trigram indexes of migration 0013 (both backends)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time

import pytest

import store.history as history
from relay.envelope import NewMessage
from relay.spool.spool import RecipientResult
from store.history import MessageFilter, parse_message_statuses
from store.states import status_summary
from tests.admin_support import TOKEN, running

pytestmark = pytest.mark.component


def _msg(rcpts, subject="hello", sender="app@org.test") -> NewMessage:
    body = f"From: {sender}\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
    return NewMessage(sender=sender, recipients=list(rcpts), body=body, subject=subject, from_header=sender,
                      client_ip="127.0.0.1")


async def _finish(spool, results: dict[str, str]) -> None:
    """Claim everything due and end each recipient (by address) as asked; the rest go back untouched."""
    claims = await spool.claim("test", limit=1000)
    done, back = [], []
    for c in claims:
        for r in c.recipients:
            st = results.get(r.address)
            if st is None:
                back.append(r.id)
            elif st == "deferred":
                done.append(RecipientResult(r.id, st, 451, "4.4.1", "later",
                                            next_attempt_at=time.time() + 600))
            else:
                code = {"delivered": 250, "bounced": 550, "failed": None}[st]
                done.append(RecipientResult(r.id, st, code, None, st,
                                            reason="expired" if st == "failed" else None))
    await spool.complete(done)
    if back:
        await spool.release_claims(back, time.time())


def test_status_summary_texts():
    assert status_summary({"delivered": 3}) == "delivered"
    assert status_summary({"bounced": 1, "delivered": 2}) == "2 delivered, 1 bounced"
    assert status_summary({"cancelled": 1, "queued": 2, "sending": 1}) == "2 queued, 1 sending, 1 cancelled"
    assert status_summary({}) == "no recipients"
    assert parse_message_statuses("sent") == ((), True)
    assert parse_message_statuses("bounced,sent") == (("bounced",), True)
    assert parse_message_statuses(["outbox"])[0] == ("scheduled", "queued", "sending", "deferred", "failed",
                                                     "bounced")
    with pytest.raises(ValueError):
        parse_message_statuses("sent,nonsense")


@pytest.fixture
async def live(tmp_path):
    async with running(tmp_path) as (app, api):
        yield app, api


async def test_outbox_and_sent_partition_the_messages(live):
    app, api = live
    spool = app.spool
    ids = {}
    for name, rcpts in (("all_delivered", ["a1@x.test", "a2@x.test"]),
                        ("mixed", ["m1@x.test", "m2@x.test", "m3@x.test"]),
                        ("queued", ["q1@x.test"]), ("failed", ["f1@x.test"]),
                        ("bounced", ["b1@x.test"]), ("deferred", ["d1@x.test"]),
                        ("delivered_and_cancelled", ["c1@x.test", "c2@x.test"]),
                        ("cancelled", ["z1@x.test"])):
        ids[name] = await spool.enqueue(_msg(rcpts, subject=name))
        await asyncio.sleep(0.002)
    sched = await spool.enqueue(NewMessage("app@org.test", ["s1@x.test"], b"Subject: s\r\n\r\nx\r\n",
                                           subject="scheduled", send_at=time.time() + 3600))
    ids["scheduled"] = sched
    await _finish(spool, {"a1@x.test": "delivered", "a2@x.test": "delivered", "m1@x.test": "delivered",
                          "m2@x.test": "delivered", "m3@x.test": "bounced", "f1@x.test": "failed",
                          "b1@x.test": "bounced", "d1@x.test": "deferred", "c1@x.test": "delivered",
                          "c2@x.test": "deferred"})
    dc = ids["delivered_and_cancelled"]
    c2 = next(r.id for r in await app.store.messages.recipients(dc) if r.address == "c2@x.test")
    assert await spool.cancel(dc, [c2]) == 1
    assert await spool.cancel(ids["cancelled"]) == 1

    async def box(status: str) -> dict[str, dict]:
        st, body = await api.call("GET", "/api/v1/messages", params={"status": status, "limit": "100"})
        assert st == 200, body
        return {m["subject"]: m for m in body["items"]}

    outbox, sent = await box("outbox"), await box("sent")
    assert set(sent) == {"all_delivered", "delivered_and_cancelled"}
    assert set(outbox) == {"mixed", "queued", "failed", "bounced", "deferred", "scheduled"}
    assert not set(outbox) & set(sent)
    m = outbox["mixed"]
    assert (m["status_summary"], m["box"], m["recipient_status"]) == ("2 delivered, 1 bounced", "outbox",
                                                                      {"delivered": 2, "bounced": 1})
    assert sent["all_delivered"]["status_summary"] == "delivered" and sent["all_delivered"]["box"] == "sent"
    assert sent["delivered_and_cancelled"]["status_summary"] == "1 delivered, 1 cancelled"
    assert outbox["queued"]["pending"] == 1 and outbox["queued"]["sending"] == 0
    st, one = await api.call("GET", f"/api/v1/messages/{ids['mixed']}")
    assert one["status_summary"] == "2 delivered, 1 bounced" and one["box"] == "outbox"
    # a status inside the Outbox, and Sent combined with a status
    assert set(await box("bounced")) == {"mixed", "bounced"}
    assert set(await box("sent,failed")) == {"all_delivered", "delivered_and_cancelled", "failed"}
    st, page = await api.call("GET", "/api/v1/messages", params={"limit": "100"})
    assert {m["subject"]: m["box"] for m in page["items"]}["cancelled"] is None
    # dry-run counts of a bulk action agree with the lists
    st, dry = await api.call("POST", "/api/v1/bulk/messages/hold", json={"filter": {"status": "sent"},
                                                                          "dry_run": True})
    assert st == 200 and dry["matched"] == 2

    # the console shows the same split, with the explained status
    html_out, html_sent = await _console(api, "/ui/outbox"), await _console(api, "/ui/sent")
    for subject in outbox:
        assert f">{subject}<" in html_out and f">{subject}<" not in html_sent
    for subject in sent:
        assert f">{subject}<" in html_sent and f">{subject}<" not in html_out
    assert "2 delivered, 1 bounced" in html_out

    # an asynchronous bounce after delivery moves a message from Sent to the Outbox
    rcpts = await app.store.messages.recipients(ids["all_delivered"])
    a1 = next(r for r in rcpts if r.address == "a1@x.test")
    await spool.mark_bounced(a1.id, 550, "5.1.1", "no such user", "unknown-user")
    assert "all_delivered" not in await box("sent")
    assert (await box("outbox"))["all_delivered"]["status_summary"] == "1 delivered, 1 bounced"


async def _console(api, path: str) -> str:
    """A signed-in console page (the sign-in form's CSRF token, then the session cookie)."""
    import aiohttp

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(api.base + "/ui/login") as r:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await r.text())
        assert csrf
        form = {"csrf": csrf.group(1), "token": TOKEN.split(":", 1)[1]}
        async with s.post(api.base + "/ui/login", data=form, allow_redirects=False) as r:
            assert r.status in (302, 303), r.status
        async with s.get(api.base + path) as r:
            assert r.status == 200 and r.url.path == path, (path, r.url)
            return await r.text()


async def test_sending_is_not_cancellable_nor_deletable_with_one_text(live):
    app, api = live
    qid = await app.spool.enqueue(_msg(["a@x.test", "b@x.test"]))
    [claim] = await app.spool.claim("w")
    text = f"{qid}: it is being delivered now; wait for the attempt to end"
    st, err = await api.call("POST", f"/api/v1/messages/{qid}/cancel")
    assert st == 409 and err["error"] == {"code": "conflict", "message": text}
    st, err = await api.call("DELETE", f"/api/v1/messages/{qid}")
    assert st == 409 and err["error"] == {"code": "conflict", "message": text}
    st, m = await api.call("GET", f"/api/v1/messages/{qid}")
    assert m["status_summary"] == "sending" and m["sending"] == 2 and m["pending"] == 0
    # a bulk cancel reports it as an error with the same words, not as "unchanged"
    st, res = await api.call("POST", "/api/v1/bulk/messages/cancel", json={"filter": {"ids": [qid]}})
    assert st == 200 and res["error_count"] == 1 and res["errors"][0]["message"] == text
    await app.spool.complete([RecipientResult(claim.recipients[0].id, "delivered", 250),
                              RecipientResult(claim.recipients[1].id, "deferred", 451,
                                              next_attempt_at=time.time() + 60)])
    st, res = await api.call("POST", f"/api/v1/messages/{qid}/cancel")
    assert st == 200 and res["affected"] == 1                       # the deferred one was pending again
    st, err = await api.call("POST", f"/api/v1/messages/{qid}/cancel")
    assert st == 409 and err["error"]["message"] == (
        f"{qid}: no pending recipient (scheduled, queued or deferred) to cancel")
    st, res = await api.call("DELETE", f"/api/v1/messages/{qid}")
    assert st == 200


# ---- search (both store backends) --------------------------------------------------------------------
async def _ids(s, **kw) -> list[str]:
    page = await s.history.list_messages(MessageFilter(**kw), limit=1000)
    return sorted(m.message.id for m in page.items)


async def test_substring_search_through_the_index(open_store, monkeypatch):
    s = open_store()
    ids = []
    for i in range(40):
        rcpts = [f"user{i}@Dom{i % 4}.Test"] + ([f"second{i}@other.test"] if i % 10 == 0 else [])
        ids.append(await s.messages.enqueue(_msg(rcpts, subject=f"Invoice #{i} 100%_off",
                                                  sender=f"billing{i % 3}@Org.test")))
    assert await _ids(s, recipient="user17@") == [ids[17]]
    assert await _ids(s, recipient="USER17@dom1.TEST") == [ids[17]]          # case-insensitive
    assert await _ids(s, recipient="second") == sorted(ids[::10])              # any recipient
    assert await _ids(s, recipient="@dom2.") == sorted(ids[2::4])
    assert await _ids(s, recipient="r3") == sorted([ids[3], *ids[30:40]])     # short: distinct values
    assert await _ids(s, subject="#7") == [ids[7]]
    assert await _ids(s, recipient="Q") == []
    assert await _ids(s, recipient="nobody") == []
    assert await _ids(s, sender="BILLING2@") == sorted(ids[2::3])
    assert await _ids(s, subject="#7 ") == [ids[7]]
    assert await _ids(s, subject="100%_off") == sorted(ids)                   # % and _ are literal
    assert await _ids(s, subject="100%_of", recipient="user1") == sorted([ids[1], *ids[10:20]])
    assert await _ids(s, subject='"quoted"') == []                            # no FTS syntax leaks
    assert await _ids(s, subject="x%y") == []
    # terms whose every trigram is common walk the list instead, with the same answer
    monkeypatch.setattr(history, "SPARSE", 1)
    monkeypatch.setattr(history, "VALUES", 0)
    assert await _ids(s, recipient="user17@") == [ids[17]]
    assert await _ids(s, recipient="@dom2.") == sorted(ids[2::4])
    assert await _ids(s, recipient="r3") == sorted([ids[3], *ids[30:40]])
    monkeypatch.setattr(history, "SPARSE", 2000)
    monkeypatch.setattr(history, "VALUES", 500)
    monkeypatch.setattr(history, "ROWS", 1)                     # found, but "common": the walk checks IN
    assert await _ids(s, recipient="@dom2.") == sorted(ids[2::4])
    assert await _ids(s, sender="billing1") == sorted(ids[1::3])
    monkeypatch.undo()
    # retention / delete: the index forgets a message with it (no ghost rows on either backend)
    await s.messages.delete(ids[17])
    assert await _ids(s, recipient="user17@") == []
    assert await _ids(s, sender="billing2@") == sorted(set(ids[2::3]) - {ids[17]})
    assert await s.history.count_matching(MessageFilter(recipient="@dom1.")) == 9
    # reopening (migrations recorded) keeps it
    s.close()
    s = open_store()
    new = await s.messages.enqueue(_msg(["late@dom9.test"], subject="after restart"))
    assert await _ids(s, recipient="late@dom9") == [new]
    assert await _ids(s, subject="AFTER rest") == [new]


async def test_the_index_is_there_on_each_backend_and_counts_exactly(open_store):
    s = open_store()
    ids = [await s.messages.enqueue(_msg([f"a{i % 3}@x.test", "same@x.test"], subject=f"subj{i % 2}",
                                         sender=f"f{i % 4}@y.test")) for i in range(12)]
    for qid in ids[:5]:
        await s.messages.delete(qid)
    db = s.db

    def check(conn):
        if not isinstance(conn, sqlite3.Connection):
            conn.execute("SET LOCAL enable_seqscan = off")     # a tiny table: show that the index can serve
            plan = " ".join(str(r[0]) for r in conn.execute(
                "EXPLAIN SELECT id FROM recipients WHERE address ILIKE ? ESCAPE '\\'", ("%A1@x%",)))
            assert "recipients_address_trgm" in plan, plan
            return {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes")}
        for kind, sql in (("addresses", "SELECT address, COUNT(*) FROM recipients GROUP BY address"),
                          ("senders", "SELECT sender, COUNT(*) FROM messages GROUP BY sender"),
                          ("subjects", "SELECT subject, COUNT(*) FROM messages GROUP BY subject")):
            kept = sorted(tuple(r) for r in conn.execute(f"SELECT value, n FROM search_{kind}"))
            assert kept == sorted(tuple(r) for r in conn.execute(sql)), kind
            hits = conn.execute(f"SELECT COUNT(*) FROM search_{kind}_fts WHERE search_{kind}_fts MATCH ?",
                                ('"x.t" OR "y.t" OR "ubj"',)).fetchone()[0]
            assert hits == len(kept), kind        # one index row per distinct value, none left behind
        return None

    found = await db.read(check)
    if found is not None:
        assert {"recipients_address_trgm", "messages_sender_trgm", "messages_subject_trgm"} <= found, found


async def test_the_migration_indexes_messages_stored_before_it(tmp_path):
    """A database from before 0013: its messages are counted and indexed when the migration runs."""
    from store import Store

    path = str(tmp_path / "old.db")
    s = Store(path).open()
    ids = [await s.messages.enqueue(_msg([f"old{i}@past.test", "x@past.test"], subject=f"legacy {i % 2}"))
           for i in range(6)]
    s.close()
    with sqlite3.connect(path) as c:           # back to the schema before migration 0013
        for trigger in ("recipients_addresses_in", "recipients_addresses_out", "messages_senders_in",
                        "messages_senders_out", "messages_subjects_in", "messages_subjects_out"):
            c.execute(f"DROP TRIGGER {trigger}")
        c.execute("DROP INDEX messages_subject")
        for t in ("search_addresses", "search_senders", "search_subjects"):
            c.execute(f"DROP TABLE {t}_fts")
            c.execute(f"DROP TABLE {t}")
        c.execute("DROP INDEX recipients_addr_block")                 # and before 0015, which follows it
        c.execute("CREATE INDEX recipients_addr ON recipients(address)")
        c.execute("DELETE FROM schema_migrations WHERE version IN (13, 15)")
    s = Store(path).open()
    try:
        assert await _ids(s, recipient="old3@") == [ids[3]]
        assert await _ids(s, subject="legacy 1") == sorted(ids[1::2])
        assert await _ids(s, recipient="x@past") == sorted(ids)
        n = await s.db.read(lambda c: dict(c.execute("SELECT value, n FROM search_addresses").fetchall()))
        assert n["x@past.test"] == 6 and n["old0@past.test"] == 1
    finally:
        s.close()
