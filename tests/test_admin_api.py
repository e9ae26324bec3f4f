"""Admin HTTP API through a real running App (SMTP listener, spool, policy, admin server on loopback)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from admin_api.app import AUTH_KEY
from relay.envelope import NewMessage
from relay.spool.spool import AttemptLog, RecipientResult
from tests.admin_support import RO_TOKEN, running, smtp_send

pytestmark = pytest.mark.component


@pytest.fixture
async def live(tmp_path):
    async with running(tmp_path) as (app, api):
        yield app, api


def _msg(sender="app@org.test", rcpts=("a@example.test",), subject="hello", **kw) -> NewMessage:
    body = (f"From: {sender}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@org.test>\r\n"
            "\r\nbody\r\n").encode()
    return NewMessage(sender=sender, recipients=list(rcpts), body=body, subject=subject, from_header=sender,
                      client_ip="127.0.0.1", **kw)


async def _deliver(app, qid, status="delivered", code=250, transcript=None):
    """Play the delivery engine's part through the spool's own API: claim, then record a result."""
    claims = await app.spool.claim("test", limit=1000)
    results, attempt = [], None
    for c in claims:
        for r in c.recipients:
            if c.message.id == qid:
                results.append(RecipientResult(r.id, status, code, "2.0.0", "ok", route="sink"))
            else:   # hand the others back untouched
                results.append(RecipientResult(r.id, "deferred", 451, "4.3.0", "later",
                                               next_attempt_at=r.next_attempt_at))
    if transcript:
        now = time.time()
        attempt = AttemptLog(qid, now, now, status, route="sink", host="127.0.0.1",
                             transcript=tuple(transcript))
    await app.spool.complete(results, attempt=attempt)


async def test_auth_tokens_and_health(live):
    app, api = live
    assert await api.call("GET", "/healthz", token=None) == (200, {"status": "ok"})
    st, body = await api.call("GET", "/api/v1/messages", token=None)
    assert st == 401 and body["error"]["code"] == "unauthorized"
    st, body = await api.call("GET", "/api/v1/messages", token="full-access-token-0123456789x")
    assert st == 401
    st, _ = await api.call("GET", "/api/v1/messages", headers={"Authorization": "Basic Zm9vOmJhcg=="},
                           token=None)
    assert st == 401
    ro = RO_TOKEN.split(":", 1)[1]
    assert (await api.call("GET", "/api/v1/messages", token=ro))[0] == 200
    st, body = await api.call("POST", "/api/v1/allowlist", json={"cidr": "10.0.0.0/8"}, token=ro)
    assert st == 403 and body["error"]["code"] == "forbidden"
    st, body = await api.call("GET", "/readyz")
    assert st == 200 and body["ready"] and all(body["checks"].values())
    assert (await api.call("GET", "/readyz", token=None))[0] == 401
    # the token never appears in any answer
    st, doc = await api.call("GET", "/api/v1/openapi.json")
    assert api.token not in str(doc)


async def test_bad_input_gives_exact_codes(live):
    app, api = live
    st, body = await api.call("POST", "/api/v1/allowlist", data=b"{not json",
                              headers={"Content-Type": "application/json"})
    assert st == 400 and body["error"]["code"] == "bad_json"
    st, body = await api.call("POST", "/api/v1/allowlist", json=[1, 2])
    assert st == 400
    st, body = await api.call("POST", "/api/v1/allowlist", json={"cidr": "300.1.1.1/8"})
    assert st == 422 and "cidr" in body["error"]["message"]
    st, body = await api.call("POST", "/api/v1/allowlist", json={"cidr": 12})
    assert st == 422
    st, body = await api.call("POST", "/api/v1/allowlist", data=b"{" + b" " * 30000 + b"}",
                              headers={"Content-Type": "application/json"})
    assert st == 413 and body["error"]["code"] == "too_large"
    st, body = await api.call("GET", "/api/v1/messages/NOSUCHID")
    assert st == 404 and body["error"]["code"] == "not_found"
    st, body = await api.call("POST", "/api/v1/messages/NOSUCHID/cancel")
    assert st == 404
    st, body = await api.call("DELETE", "/api/v1/messages/NOSUCHID")
    assert st == 404
    st, body = await api.call("GET", "/api/v1/nothing-here")
    assert st == 404 and body["error"]["code"] == "not_found"
    st, body = await api.call("PUT", "/api/v1/messages")
    assert st == 405 and body["error"]["code"] == "method_not_allowed"
    for q in ({"limit": "abc"}, {"limit": "0"}, {"status": "bogus"}, {"cursor": "!!!"},
              {"since": "yesterday"},
              {"order": "sideways"}, {"held": "maybe"}):
        st, body = await api.call("GET", "/api/v1/messages", params=q)
        assert st == 400, (q, body)
        assert set(body["error"]) == {"code", "message"}
    st, body = await api.call("POST", "/api/v1/bulk/messages/cancel", json={"filter": {"status": 5}})
    assert st == 422
    st, body = await api.call("POST", "/api/v1/bulk/messages/cancel", json={"filter": {"colour": "red"}})
    assert st == 422


async def test_pagination_and_filters(live):
    app, api = live
    ids = []
    for i in range(7):
        ids.append(await app.spool.enqueue(_msg(subject=f"invoice {i}" if i % 2 else f"news {i}",
                                                rcpts=[f"u{i}@{'example' if i < 4 else 'other'}.test"])))
        await asyncio.sleep(0.002)   # queue ids sort by millisecond
    seen, cursor = [], None
    for expect in (3, 3, 1):
        st, body = await api.call("GET", "/api/v1/messages", params={"limit": "3", **({"cursor": cursor}
                                                                                        if cursor else {})})
        assert st == 200 and len(body["items"]) == expect
        seen += [m["id"] for m in body["items"]]
        cursor = body["next_cursor"]
    assert cursor is None
    assert seen == list(reversed(ids))          # newest first, no duplicates, nothing skipped
    st, body = await api.call("GET", "/api/v1/messages", params={"order": "asc", "limit": "100"})
    assert [m["id"] for m in body["items"]] == ids
    # a cursor of one order is refused for the other
    st, body = await api.call("GET", "/api/v1/messages", params={"limit": "2"})
    st, _ = await api.call("GET", "/api/v1/messages", params={"order": "asc", "cursor": body["next_cursor"]})
    assert st == 400

    async def q(**params):
        st, body = await api.call("GET", "/api/v1/messages", params=params)
        assert st == 200, body
        return sorted(m["id"] for m in body["items"])

    assert await q(subject="INVOICE") == sorted(ids[1::2])
    assert await q(domain="other.test") == sorted(ids[4:])
    assert await q(recipient="u3@") == [ids[3]]
    assert await q(sender="org.test") == sorted(ids)
    assert await q(client_ip="10.9.9.9") == []
    await _deliver(app, ids[0])
    assert await q(status="sent") == [ids[0]]
    assert await q(status="outbox") == sorted(ids[1:])
    assert await q(status="deferred,delivered") == sorted(ids)   # _deliver deferred the others
    await app.spool.hold(ids[5])
    assert await q(held="true") == [ids[5]]
    st, body = await api.call("GET", "/api/v1/messages", params={"held": "false", "limit": "1000"})
    assert ids[5] not in [m["id"] for m in body["items"]] and len(body["items"]) == 6
    st, body = await api.call("GET", "/api/v1/messages", params={"until": "2000-01-01T00:00:00Z"})
    assert body["items"] == []


async def test_message_actions_and_conflicts(live):
    app, api = live
    qid = await app.spool.enqueue(_msg(rcpts=["a@example.test", "b@example.test"]))
    other = await app.spool.enqueue(_msg(subject="second"))
    # show: headers, recipients, events; body download
    st, m = await api.call("GET", f"/api/v1/messages/{qid}")
    assert st == 200 and m["status"] == "queued" and len(m["recipients"]) == 2
    assert ["Subject", "hello"] in m["headers"] and m["body_available"]
    assert [e["status"] for e in m["events"]] == ["queued", "queued"]
    st, raw = await api.call("GET", f"/api/v1/messages/{qid}/body")
    assert st == 200 and raw.startswith(b"From: app@org.test\r\n")

    # hold/release are idempotent; retry of a queued message means "now"
    assert (await api.call("POST", f"/api/v1/messages/{qid}/hold"))[1]["affected"] == 1
    assert (await api.call("POST", f"/api/v1/messages/{qid}/hold"))[1]["affected"] == 0
    assert (await api.call("POST", f"/api/v1/messages/{qid}/release"))[1]["affected"] == 1
    # cancel one recipient, then the rest; a second cancel has nothing left: 409
    rid_b = m["recipients"][1]["id"]
    st, body = await api.call("POST", f"/api/v1/messages/{qid}/cancel", json={"recipients": [rid_b]})
    assert (st, body["affected"]) == (200, 1)
    st, body = await api.call("POST", f"/api/v1/messages/{qid}/cancel")
    assert (st, body["affected"]) == (200, 1)
    st, body = await api.call("POST", f"/api/v1/messages/{qid}/cancel")
    assert st == 409 and body["error"]["code"] == "conflict"
    st, body = await api.call("POST", f"/api/v1/messages/{qid}/retry")
    assert st == 409
    st, body = await api.call("POST", f"/api/v1/messages/{qid}/cancel", json={"recipients": ["x"]})
    assert st == 422
    # events name the token that acted
    st, m = await api.call("GET", f"/api/v1/messages/{qid}")
    assert m["status"] == "cancelled"
    assert {e["actor"] for e in m["events"] if e["status"] == "cancelled"} == {"admin:admin"}

    # a delivered message cannot be cancelled, can be resent; AUTH lines never show in transcripts
    await _deliver(app, other, transcript=[{"dir": "c", "line": "AUTH PLAIN AGFwcDEAczNjcmV0"},
                                           {"dir": "s", "line": "235 2.7.0 ok"}])
    st, body = await api.call("POST", f"/api/v1/messages/{other}/cancel")
    assert st == 409
    st, m = await api.call("GET", f"/api/v1/messages/{other}")
    assert m["status"] == "delivered" and len(m["attempts"]) == 1
    assert "AGFwcDEAczNjcmV0" not in str(m) and m["attempts"][0]["transcript"][1]["line"] == "235 2.7.0 ok"
    st, body = await api.call("POST", f"/api/v1/messages/{other}/resend")
    assert (st, body["affected"]) == (200, 1)
    st, m = await api.call("GET", f"/api/v1/messages/{other}")
    assert m["status"] == "queued" and m["events"][-1]["reason"] == "resend"
    st, body = await api.call("POST", f"/api/v1/messages/{other}/resend")
    assert st == 409

    # delete: refused while sending, fine otherwise
    await app.spool.claim("worker", limit=10)
    st, body = await api.call("DELETE", f"/api/v1/messages/{other}")
    assert st == 409
    st, body = await api.call("DELETE", f"/api/v1/messages/{qid}")
    assert st == 200
    assert (await api.call("GET", f"/api/v1/messages/{qid}"))[0] == 404
    assert (await api.call("GET", f"/api/v1/messages/{qid}/body"))[0] == 404


async def test_bulk_actions_by_filter(live):
    app, api = live
    mine = [await app.spool.enqueue(_msg(rcpts=[f"x{i}@slow.test"])) for i in range(5)]
    others = [await app.spool.enqueue(_msg(rcpts=[f"y{i}@fast.test"])) for i in range(3)]
    st, body = await api.call("POST", "/api/v1/bulk/messages/cancel", json={"filter": {}})
    assert st == 422          # an empty filter must be explicit
    st, body = await api.call("POST", "/api/v1/bulk/messages/hold",
                              json={"filter": {"domain": "slow.test"}, "dry_run": True})
    assert st == 200 and body["matched"] == 5 and body["affected"] == 0
    assert sorted(body["ids"]) == sorted(mine)
    st, body = await api.call("POST", "/api/v1/bulk/messages/hold", json={"filter": {"domain": "slow.test"}})
    assert (body["matched"], body["affected"]) == (5, 5)
    st, body = await api.call("GET", "/api/v1/messages", params={"held": "true"})
    assert sorted(m["id"] for m in body["items"]) == sorted(mine)
    await app.spool.cancel(mine[0])
    st, body = await api.call("POST", "/api/v1/bulk/messages/cancel",
                              json={"filter": {"domain": "slow.test", "status": ["queued", "cancelled"]}})
    assert (body["matched"], body["affected"], body["unchanged"]) == (5, 4, 1)
    st, body = await api.call("POST", "/api/v1/bulk/messages/delete", json={"filter": {"ids": mine[:2]}})
    assert body["affected"] == 2
    st, body = await api.call("POST", "/api/v1/bulk/messages/retry", json={"all": True})
    assert body["matched"] == 6 and body["affected"] == 3 and body["unchanged"] == 3
    st, s = await api.call("GET", "/api/v1/queue/summary")
    assert s["counts"]["queued"] == 3 and s["counts"]["cancelled"] == 3 and s["held_messages"] == 3
    assert [r["domain"] for r in s["rows"]] == ["fast.test"] and s["total"]["total"] == 3
    assert s["total"]["counts"][0] == 3 and s["buckets"][0] == "0-5m"
    assert len(others) == 3


async def test_allowlist_change_applies_to_smtp_without_restart(live):
    app, api = live
    code, msg = await asyncio.to_thread(smtp_send, app.smtp_port, "a@org.test", ["r@example.test"],
                                        source="127.0.0.2")
    assert code == 550 and msg.startswith(b"5.7.1"), (code, msg)
    st, body = await api.call("POST", "/api/v1/allowlist", json={"cidr": "127.0.0.2/32", "note": "app host"})
    assert st == 201 and body["cidr"] == "127.0.0.2/32" and body["source"] == "api"
    st, body = await api.call("POST", "/api/v1/allowlist", json={"cidr": "127.0.0.2"})
    assert st == 409
    code, msg = await asyncio.to_thread(smtp_send, app.smtp_port, "a@org.test", ["r@example.test"],
                                        source="127.0.0.2")
    assert code == 250, msg
    st, body = await api.call("GET", "/api/v1/allowlist")
    assert {e["cidr"] for e in body["items"]} == {"127.0.0.1/32", "127.0.0.2/32"}
    st, body = await api.call("DELETE", "/api/v1/allowlist/127.0.0.2%2F32")
    assert st == 200
    st, body = await api.call("DELETE", "/api/v1/allowlist/127.0.0.2/32")
    assert st == 404
    code, _ = await asyncio.to_thread(smtp_send, app.smtp_port, "a@org.test", ["r@example.test"],
                                      source="127.0.0.2")
    assert code == 550


async def test_smtp_users_never_show_hashes(live, caplog):
    app, api = live
    caplog.set_level("INFO", logger="admin_api.audit")
    st, body = await api.call("POST", "/api/v1/smtp-users", json={"username": "app1", "password": "short"})
    assert st == 422
    st, body = await api.call("POST", "/api/v1/smtp-users", json={"username": "app1",
                                                                  "password": "long-secret-1",
                                                                  "note": "billing"})
    assert st == 201 and "password" not in body
    st, body = await api.call("GET", "/api/v1/smtp-users")
    assert body["items"][0]["username"] == "app1"
    assert "scrypt" not in str(body) and "long-secret" not in str(body)
    assert app.policy.check_login("app1", "long-secret-1")
    assert (await api.call("DELETE", "/api/v1/smtp-users/app1"))[0] == 200
    assert (await api.call("DELETE", "/api/v1/smtp-users/app1"))[0] == 404
    assert not app.policy.check_login("app1", "long-secret-1")
    audit = [r.getMessage() for r in caplog.records if r.name == "admin_api.audit"]
    assert "admin:admin POST /api/v1/smtp-users -> 201" in audit
    assert "admin:admin DELETE /api/v1/smtp-users/app1 -> 200" in audit
    assert not any("long-secret" in line for line in audit)


async def test_openapi_lists_every_served_route(live):
    app, api = live
    st, doc = await api.call("GET", "/api/v1/openapi.json")
    assert st == 200 and doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = set()
    for route in app.admin.runner.app.router.routes():
        info = route.resource.get_info()
        path = info.get("path") or info.get("formatter")
        served.add((route.method, path.replace("{cidr:.+}", "{cidr}")))
    assert served == documented
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
            if path != "/healthz":
                assert "401" in op["responses"], (method, path)
    # every documented operation answers something other than 404/405 for its own method
    for method, path in sorted(documented):
        params = doc["paths"][path][method.lower()].get("parameters", [])
        if "{" in path or method != "GET" or any(p["required"] for p in params):
            continue
        st, _ = await api.call(method, path)
        assert st in (200, 503), (method, path, st)


async def test_token_file_rotation_without_restart(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# admins\nops:first-secret-0123456789\nviewer:viewer-secret-0123456789 ro\n")
    async with running(tmp_path, admin={"tokens": [], "readonly_tokens": [],
                                        "token_file": str(tokens)}) as (app, api):
        app.admin.runner.app[AUTH_KEY].recheck = 0.0
        assert (await api.call("GET", "/api/v1/messages", token="first-secret-0123456789"))[0] == 200
        st, _ = await api.call("POST", "/api/v1/allowlist", json={"cidr": "10.1.0.0/16"},
                               token="viewer-secret-0123456789")
        assert st == 403
        tokens.write_text("ops:second-secret-0123456789\n")
        os.utime(tokens, (time.time() + 5, time.time() + 5))
        assert (await api.call("GET", "/api/v1/messages", token="first-secret-0123456789"))[0] == 401
        assert (await api.call("GET", "/api/v1/messages", token="second-secret-0123456789"))[0] == 200
        st, body = await api.call("POST", "/api/v1/messages/NOPE/hold", token="second-secret-0123456789")
        assert st == 404


async def test_readyz_reports_each_failing_check(tmp_path):
    async with running(tmp_path, storage={"min_free": 0.9999}) as (app, api):
        st, body = await api.call("GET", "/readyz")
        assert st == 503 and not body["ready"]
        assert body["checks"] == {"database_writable": True, "listeners_bound": True,
                                  "disk_above_floor": False}
        app.disk.min_free = 0.0
        app.disk._at = 0.0                          # re-read free space now
        assert (await api.call("GET", "/readyz"))[0] == 200
        app.store.db.fail_commits = OSError("disk I/O error")  # the storage layer's fault hook: no commits
        st, body = await api.call("GET", "/readyz")
        assert st == 503 and body["checks"]["database_writable"] is False
        app.store.db.fail_commits = None
        assert (await api.call("GET", "/healthz", token=None))[0] == 200
