"""Scheduled sending (docs/scheduling.md): the X-Relaybox-Send-At header at intake, the API's schedule and
send-now (single and bulk), the events they write, and the CLI's ``queue schedule`` / ``queue send-now``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from relay.envelope import NewMessage
from relay.intake.headers import HeaderError, parse_send_at, prepare_message, rfc3339
from tests.admin_support import running

pytestmark = pytest.mark.component


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _msg(rcpts=("a@example.test",), subject="hello", **kw) -> NewMessage:
    body = f"From: app@org.test\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
    return NewMessage(sender="app@org.test", recipients=list(rcpts), body=body, subject=subject,
                      from_header="app@org.test", client_ip="127.0.0.1", **kw)


@pytest.fixture
async def live(tmp_path):
    async with running(tmp_path) as (app, api):
        yield app, api


async def _rcpts(app, qid):
    return [(r.status, r.next_attempt_at) for r in await app.store.messages.recipients(qid)]


# ---- the header ---------------------------------------------------------------------------------------
def test_send_at_values_rfc3339_and_rfc5322():
    assert parse_send_at("2030-01-01T00:00:00Z") == 1893456000.0
    assert parse_send_at("2030-01-01T01:00:00+01:00") == 1893456000.0
    assert parse_send_at("Tue, 1 Jan 2030 00:00:00 +0000") == 1893456000.0
    assert rfc3339("2030-01-01T00:00:00.250Z") == 1893456000.25
    for bad in ("2030-01-01T00:00:00", "tomorrow", "2030-02-30T00:00:00Z", "", "1893456000"):
        with pytest.raises((ValueError, HeaderError)):
            rfc3339(bad)
    with pytest.raises(HeaderError, match="no time zone"):
        parse_send_at("2030-01-01T00:00:00")
    with pytest.raises(HeaderError, match="cannot parse"):
        parse_send_at("next monday")


def test_the_header_is_stripped_and_only_the_time_kept():
    raw = (b"From: a@b.test\r\nX-Relaybox-Send-At: 2030-01-01T00:00:00Z\r\nSubject: s\r\n"
           b"x-relaybox-send-at: 2031-01-01T00:00:00Z\r\n\r\nX-Relaybox-Send-At: body line stays\r\n")
    p = prepare_message(raw, hostname="relay.test", helo="c.test", client_ip="127.0.0.1", tls=False,
                        auth=False, rcpts=["r@x.test"], now=1700000000.0)
    head, _, body = p.body.partition(b"\r\n\r\n")
    assert b"send-at" not in head.lower()
    assert body == b"X-Relaybox-Send-At: body line stays\r\n"
    assert p.send_at == parse_send_at("2031-01-01T00:00:00Z")     # the last one counts


async def test_intake_schedules_a_future_time_sends_a_past_one_and_refuses_a_bad_one(live):
    app, api = live
    future = _rfc3339(time.time() + 3600)

    code, text = await asyncio.to_thread(_send_raw, app.smtp_port, f"X-Relaybox-Send-At: {future}")
    assert code == 250, text
    qid = text.decode().rsplit(" ", 1)[-1]
    m = await app.store.messages.get(qid)
    assert m is not None and m.send_at == rfc3339(future)
    assert await _rcpts(app, qid) == [("scheduled", rfc3339(future))]
    assert b"X-Relaybox-Send-At" not in (await app.spool.body(qid) or b"")
    assert await app.spool.claim("w") == []                       # not due

    code, text = await asyncio.to_thread(_send_raw, app.smtp_port, "X-Relaybox-Send-At: 2001-01-01T00:00:00Z")
    assert code == 250
    past = text.decode().rsplit(" ", 1)[-1]
    assert [s for s, _ in await _rcpts(app, past)] == ["queued"]   # a time that passed: due at once

    code, text = await asyncio.to_thread(_send_raw, app.smtp_port, "X-Relaybox-Send-At: soon please")
    assert code == 550 and text.startswith(b"5.6.0 X-Relaybox-Send-At: cannot parse 'soon please'"), text
    st, page = await api.call("GET", "/api/v1/messages", params={"limit": "100"})
    assert len(page["items"]) == 2                                 # nothing stored for the refused one


def _send_raw(port: int, header: str) -> tuple[int, bytes]:
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo("client.test")
        s.mail("app@org.test")
        s.rcpt("r@x.test")
        return s.data(f"From: app@org.test\r\n{header}\r\nSubject: sched\r\n\r\nhi\r\n".encode())


# ---- the API ------------------------------------------------------------------------------------------
async def test_schedule_reschedule_and_send_now_through_the_api(live):
    app, api = live
    qid = await app.spool.enqueue(_msg(rcpts=["a@x.test", "b@y.test"]))
    at = time.time() + 7200
    st, body = await api.call("POST", f"/api/v1/messages/{qid}/schedule", json={"at": _rfc3339(at)})
    assert st == 200 and body == {"id": qid, "action": "schedule", "affected": 2, "at": _rfc3339(at)}
    assert await _rcpts(app, qid) == [("scheduled", int(at)), ("scheduled", int(at))]
    assert (await app.store.messages.get(qid)).send_at == int(at)
    assert await app.spool.claim("w") == []
    st, m = await api.call("GET", f"/api/v1/messages/{qid}")
    assert m["status"] == "scheduled" and m["status_summary"] == "scheduled" and m["box"] == "outbox"
    assert m["send_at"] == _rfc3339(at)
    ev = [e for e in m["events"] if e["reason"] == "rescheduled"]
    assert len(ev) == 2 and ev[0]["actor"] == "admin:admin" and ev[0]["status"] == "scheduled"
    assert ev[0]["details"]["new"] == int(at) and ev[0]["details"]["previous"] == "queued"
    assert abs(ev[0]["details"]["old"] - time.time()) < 60

    later = at + 86400               # reschedule: the old time is the first schedule's
    st, body = await api.call("POST", f"/api/v1/messages/{qid}/schedule", json={"at": _rfc3339(later)})
    assert st == 200 and body["affected"] == 2
    st, m = await api.call("GET", f"/api/v1/messages/{qid}")
    ev = [e for e in m["events"] if e["reason"] == "rescheduled"][-1]
    assert (ev["details"]["old"], ev["details"]["new"], ev["details"]["previous"]) == (int(at), int(later),
                                                                                        "scheduled")

    before = time.time()
    st, body = await api.call("POST", f"/api/v1/messages/{qid}/send-now")
    assert st == 200 and body == {"id": qid, "action": "send-now", "affected": 2}
    rc = await _rcpts(app, qid)
    assert [s for s, _ in rc] == ["queued", "queued"] and all(before - 1 <= t <= time.time() for _, t in rc)
    assert (await app.store.messages.get(qid)).send_at <= time.time()   # lifetime counts from now
    st, m = await api.call("GET", f"/api/v1/messages/{qid}")
    ev = [e for e in m["events"] if e["reason"] == "send-now"]
    assert len(ev) == 2 and ev[0]["details"]["old"] == int(later) and ev[0]["status"] == "queued"
    assert len(await app.spool.claim("w")) == 1                    # due now


async def test_schedule_and_send_now_refusals(live):
    app, api = live
    qid = await app.spool.enqueue(_msg())
    url = f"/api/v1/messages/{qid}/schedule"
    for body, words in (({"at": "2030-01-01T00:00:00"}, "not an RFC 3339"),
                        ({"at": "2001-01-01T00:00:00Z"}, "is in the past; send-now"),
                        ({"at": 1893456000}, "expected an RFC 3339"),
                        ({}, "expected an RFC 3339"),
                        ({"at": "2030-01-01T00:00:00Z", "when": 1}, "unknown keys ['when']")):
        st, err = await api.call("POST", url, json=body)
        assert st == 400 and err["error"]["code"] == "bad_request" and words in err["error"]["message"], err
    st, err = await api.call("POST", url, data=b"{not json")
    assert st == 400 and set(err["error"]) == {"code", "message"}
    st, err = await api.call("POST", "/api/v1/messages/NOSUCHID/schedule",
                             json={"at": _rfc3339(time.time() + 60)})
    assert st == 404
    st, err = await api.call("POST", "/api/v1/messages/NOSUCHID/send-now")
    assert st == 404
    assert await app.spool.retry_now(qid) == 1

    # in an attempt now: not cancellable, not deletable, not reschedulable -- one text for all
    [claim] = await app.spool.claim("w")
    for method, path, body in (("POST", url, {"at": _rfc3339(time.time() + 60)}),
                               ("POST", f"/api/v1/messages/{qid}/send-now", None),
                               ("POST", f"/api/v1/messages/{qid}/cancel", None),
                               ("DELETE", f"/api/v1/messages/{qid}", None)):
        st, err = await api.call(method, path, json=body)
        assert st == 409 and err["error"]["message"] == (
            f"{qid}: it is being delivered now; wait for the attempt to end"), (path, err)
    from relay.spool.spool import RecipientResult
    await app.spool.complete([RecipientResult(claim.recipients[0].id, "delivered", 250)])
    # final: nothing pending
    st, err = await api.call("POST", url, json={"at": _rfc3339(time.time() + 60)})
    assert st == 409 and err["error"]["message"] == (
        f"{qid}: no pending recipient (scheduled, queued or deferred) to schedule")
    st, err = await api.call("POST", f"/api/v1/messages/{qid}/send-now")
    assert st == 409 and "no pending recipient" in err["error"]["message"]
    # documented in the OpenAPI document
    st, doc = await api.call("GET", "/api/v1/openapi.json")
    assert st == 200
    sched = doc["paths"]["/api/v1/messages/{id}/schedule"]["post"]
    assert set(sched["responses"]) >= {"200", "400", "404", "409"}
    assert {"/api/v1/bulk/messages/schedule", "/api/v1/messages/{id}/send-now"} <= set(doc["paths"])


async def test_deferred_recipients_can_be_scheduled_and_sent_now(live):
    app, api = live
    qid = await app.spool.enqueue(_msg(rcpts=["a@x.test", "b@y.test"]))
    [claim] = await app.spool.claim("w")
    a, b = (r.id for r in claim.recipients)
    from relay.spool.spool import RecipientResult
    await app.spool.complete([RecipientResult(a, "delivered", 250),
                              RecipientResult(b, "deferred", 451, next_attempt_at=time.time() + 3000)])
    at = time.time() + 600
    st, body = await api.call("POST", f"/api/v1/messages/{qid}/schedule", json={"at": _rfc3339(at)})
    assert st == 200 and body["affected"] == 1                      # the delivered one stays
    assert await _rcpts(app, qid) == [("delivered", pytest.approx(time.time(), abs=60)),
                                      ("scheduled", int(at))]
    st, body = await api.call("POST", f"/api/v1/messages/{qid}/send-now")
    assert st == 200 and body["affected"] == 1
    assert [s for s, _ in await _rcpts(app, qid)] == ["delivered", "queued"]


async def test_bulk_schedule_by_filter(live):
    app, api = live
    ids = [await app.spool.enqueue(_msg(rcpts=[f"u{i}@{'bulk' if i < 3 else 'other'}.test"]))
           for i in range(5)]
    at = time.time() + 3600
    st, res = await api.call("POST", "/api/v1/bulk/messages/schedule",
                             json={"filter": {"domain": "bulk.test"}, "at": _rfc3339(at)})
    assert st == 200 and (res["matched"], res["affected"], res["state"]) == (3, 3, "done"), res
    for i, qid in enumerate(ids):
        assert [s for s, _ in await _rcpts(app, qid)] == (["scheduled"] if i < 3 else ["queued"])
    st, err = await api.call("POST", "/api/v1/bulk/messages/schedule",
                             json={"filter": {"domain": "bulk.test"}, "at": "tomorrow"})
    assert st == 422 and "RFC 3339" in err["error"]["message"]
    st, res = await api.call("POST", "/api/v1/bulk/messages/send-now",
                             json={"filter": {"domain": "bulk.test"}})
    assert st == 200 and res["affected"] == 3
    for qid in ids:
        assert [s for s, _ in await _rcpts(app, qid)] == ["queued"]


# ---- the CLI ------------------------------------------------------------------------------------------
def _cli(db: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relaybox.cli", "--config", "/nonexistent.toml", "queue",
                           *args, "--db", db, "--offline"], capture_output=True, text=True, timeout=60)


async def test_cli_schedule_and_send_now_offline(tmp_path):
    from relay.spool.spool import Spool
    from store import Store

    db = str(tmp_path / "cli.db")
    s = Store(db).open()
    qid = await Spool(s).enqueue(_msg())
    s.close()
    at = _rfc3339(time.time() + 3600)
    r = await asyncio.to_thread(_cli, db, "schedule", qid, "--at", at)
    assert r.returncode == 0 and r.stdout.strip() == f"{qid}: schedule for {at} (1 affected)", r.stderr
    r = await asyncio.to_thread(_cli, db, "show", qid, "--json")
    shown = json.loads(r.stdout)
    assert shown["status"] == "scheduled" and shown["send_at"] == at
    ev = shown["events"][-1]
    assert (ev["actor"], ev["reason"], ev["status"]) == ("cli", "rescheduled", "scheduled")
    r = await asyncio.to_thread(_cli, db, "list")
    assert f"scheduled for {at}" in r.stdout
    r = await asyncio.to_thread(_cli, db, "schedule", qid, "--at", "2001-01-01T00:00:00Z")
    assert r.returncode == 2 and "is in the past" in r.stderr
    r = await asyncio.to_thread(_cli, db, "send-now", qid)
    assert r.returncode == 0 and r.stdout.strip() == f"{qid}: send-now (1 affected)", r.stderr
    r = await asyncio.to_thread(_cli, db, "show", qid, "--json")
    assert json.loads(r.stdout)["status"] == "queued"
    r = await asyncio.to_thread(_cli, db, "cancel", qid)
    assert r.returncode == 0
    r = await asyncio.to_thread(_cli, db, "send-now", qid)
    assert r.returncode == 1
    assert "no pending recipient (scheduled, queued or deferred) to send now" in r.stderr


async def test_console_schedule_form(live):
    import re

    import aiohttp

    from tests.admin_support import TOKEN

    app, api = live
    qid = await app.spool.enqueue(_msg())
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(api.base + "/ui/login") as r:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await r.text())
        assert csrf
        form = {"csrf": csrf.group(1), "token": TOKEN.split(":", 1)[1]}
        async with s.post(api.base + "/ui/login", data=form, allow_redirects=False) as r:
            assert r.status in (302, 303)

        async def page() -> str:
            async with s.get(f"{api.base}/ui/messages/{qid}") as r:
                assert r.status == 200
                return await r.text()

        html = await page()
        assert 'id="schedule"' in html and 'id="action-send-now"' in html
        token = re.search(r'name="csrf" value="([^"]+)"', html)
        assert token
        at = _rfc3339(time.time() + 900)
        async with s.post(f"{api.base}/ui/messages/{qid}/schedule",
                          data={"csrf": token.group(1), "at": at}) as r:
            assert r.status == 200 and "schedule: done (1 changed)." in await r.text()
        assert await _rcpts(app, qid) == [("scheduled", rfc3339(at))]
        async with s.post(f"{api.base}/ui/messages/{qid}/schedule",
                          data={"csrf": token.group(1), "at": "next week"}) as r:
            assert "schedule: at: &#39;next week&#39; is not an RFC 3339" in await r.text()
        assert await _rcpts(app, qid) == [("scheduled", rfc3339(at))]
