"""Bounces and suppressions through the admin API, fed by the real bounce processing
(relay.bounces.record)."""

from __future__ import annotations

import pytest

from relay.bounces import record as bounce_handler
from relay.envelope import NewMessage
from relay.spool.spool import RecipientResult
from tests.admin_support import running

pytestmark = pytest.mark.component

DSN = (
    "From: MAILER-DAEMON@mx.example.test\r\n"
    "To: app@org.test\r\n"
    "Subject: Undelivered Mail Returned to Sender\r\n"
    "Message-ID: <dsn-1@mx.example.test>\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
    "\r\n"
    "--B\r\n"
    "Content-Type: text/plain\r\n\r\n"
    "Your message could not be delivered.\r\n"
    "--B\r\n"
    "Content-Type: message/delivery-status\r\n\r\n"
    "Reporting-MTA: dns; mx.example.test\r\n\r\n"
    "Final-Recipient: rfc822; gone@example.test\r\n"
    "Action: failed\r\n"
    "Status: 5.1.1\r\n"
    "Diagnostic-Code: smtp; 550 5.1.1 <gone@example.test>: Recipient address rejected: User unknown\r\n"
    "\r\n"
    "--B\r\n"
    "Content-Type: text/rfc822-headers\r\n\r\n"
    "From: app@org.test\r\n"
    "To: gone@example.test\r\n"
    "Subject: invoice\r\n"
    "Message-ID: <inv-7@org.test>\r\n"
    "\r\n"
    "--B--\r\n"
).encode()


async def test_bounces_and_suppressions(tmp_path):
    async with running(tmp_path) as (app, api):
        qid = await app.spool.enqueue(NewMessage(
            "app@org.test", ["gone@example.test"], b"Subject: invoice\r\nMessage-ID: <inv-7@org.test>\r\n\r\nx\r\n",  # noqa: E501 - one SMTP payload per line
            subject="invoice", message_id_header="<inv-7@org.test>"))
        [claim] = await app.spool.claim("t")
        await app.spool.complete([RecipientResult(claim.recipients[0].id, "delivered", 250, "2.0.0", "ok")])
        st, before = await api.call("GET", "/metrics")
        out = await bounce_handler.process(app.store.bounces, app.settings.relay.bounces, DSN,
                                           source="channel")
        assert out.effects and out.effects[0].message_id == qid

        st, body = await api.call("GET", "/api/v1/bounces")
        assert st == 200 and len(body["items"]) == 1
        b = body["items"][0]
        assert (b["address"], b["reason"], b["kind"], b["status"]) == ("gone@example.test", "userunknown",
                                                                       "hard",
                                                                        "5.1.1")
        assert b["message"] == f"/api/v1/messages/{qid}" and "raw" not in b
        st, one = await api.call("GET", f"/api/v1/bounces/{b['id']}")
        assert st == 200 and "User unknown" in one["diagnostic"]
        assert (await api.call("GET", "/api/v1/bounces/999999"))[0] == 404
        assert (await api.call("GET", "/api/v1/bounces/abc"))[0] == 404
        assert (await api.call("GET", "/api/v1/bounces", params={"kind": "soft"}))[1]["items"] == []
        assert len((await api.call("GET", "/api/v1/bounces",
                                   params={"address": "GONE@example.test"}))[1]["items"]) == 1
        st, m = await api.call("GET", f"/api/v1/messages/{qid}")
        assert m["status"] == "bounced" and m["events"][-1]["actor"] == "bounce"

        # the hard bounce suppressed the address
        st, body = await api.call("GET", "/api/v1/suppressions")
        assert [e["address"] for e in body["items"]] == ["gone@example.test"]
        assert body["items"][0]["kind"] == "hard" and body["items"][0]["expires_at"]
        st, e = await api.call("GET", "/api/v1/suppressions/gone@example.test")
        assert st == 200 and e["reason"] == "userunknown"
        # manual entries, search, pagination, export, removal
        for i in range(3):
            st, e = await api.call("POST", "/api/v1/suppressions", json={"address": f"Opt{i}@Out.test",
                                                                         "note": "asked to stop"})
            assert st == 201 and e["address"] == f"opt{i}@out.test" and e["kind"] == "manual"
        st, e = await api.call("POST", "/api/v1/suppressions", json={"address": "not-an-address"})
        assert st == 422
        st, e = await api.call("POST", "/api/v1/suppressions", json={"address": "x@y.test", "days": -1})
        assert st == 422
        st, body = await api.call("GET", "/api/v1/suppressions", params={"search": "out.test", "limit": "2"})
        assert len(body["items"]) == 2 and body["next_cursor"]
        st, rest = await api.call("GET", "/api/v1/suppressions", params={"search": "out.test", "limit": "2",
                                                                         "cursor": body["next_cursor"]})
        assert len(rest["items"]) == 1 and rest["next_cursor"] is None
        assert {e["address"] for e in body["items"] + rest["items"]} == {f"opt{i}@out.test" for i in range(3)}
        st, exp = await api.call("GET", "/api/v1/export/suppressions")
        assert len(exp["items"]) == 4
        st, csv_bytes = await api.call("GET", "/api/v1/export/suppressions.csv")
        lines = csv_bytes.decode().splitlines()
        assert lines[0].startswith("address,reason,kind") and len(lines) == 5
        assert (await api.call("DELETE", "/api/v1/suppressions/opt0@out.test"))[0] == 200
        assert (await api.call("DELETE", "/api/v1/suppressions/opt0@out.test"))[0] == 404
        assert (await api.call("GET", "/api/v1/suppressions/opt0@out.test"))[0] == 404

        st, after = await api.call("GET", "/metrics")
        text = after.decode()
        assert 'relaybox_suppressions{kind="manual"} 2.0' in text
        assert 'relaybox_suppressions{kind="hard"} 1.0' in text
        line = 'relaybox_bounces_total{category="bounce",kind="hard",reason="userunknown"}'
        count = lambda t: float(next((x.split()[-1] for x in t.splitlines() if x.startswith(line)), 0))  # noqa: E731
        assert count(text) - count(before.decode()) == 1
        assert "gone@example.test" not in text
