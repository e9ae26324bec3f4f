"""Event webhooks against a real HTTP receiver: signatures, once-per-message deferred, retries, give-up,
status."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import web

from admin_api.webhooks import verify
from relay.envelope import NewMessage
from relay.spool.spool import RecipientResult
from tests.admin_support import running
from tests.peers.ports import free_port

pytestmark = pytest.mark.component

SECRET = "whsec-test-0123456789"


class Receiver:
    def __init__(self, fail_first: int = 0):
        self.port = free_port()
        self.fail_first = fail_first
        self.calls = 0
        self.events: list[dict] = []
        self.bad_signatures = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        body = await request.read()
        if not verify(SECRET, request.headers["X-Relaybox-Timestamp"], body,
                      request.headers["X-Relaybox-Signature"]):
            self.bad_signatures += 1
            return web.Response(status=400)
        if self.calls <= self.fail_first:
            return web.Response(status=503)
        ev = json.loads(body)
        assert request.headers["X-Relaybox-Event"] == ev["type"]
        assert request.headers["Idempotency-Key"] == ev["id"]
        self.events.append(ev)
        return web.Response(status=204)

    async def start(self):
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self):
        await self.runner.cleanup()


async def _wait(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await cond():
            return True
        await asyncio.sleep(0.1)
    return False


async def test_signed_events_retries_and_endpoint_status(tmp_path):
    rx = await Receiver(fail_first=2).start()
    dead = free_port()
    hooks = [
        {"name": "crm", "url": f"http://user:pw@127.0.0.1:{rx.port}/hook?key=abc", "secret": SECRET,
         "retry": ["0.2s"]},
        {"name": "down", "url": f"http://127.0.0.1:{dead}/hook", "secret": SECRET, "retry": ["0.2s"],
         "max_age": "1s", "events": ["delivered"], "timeout": "1s"},
    ]
    try:
        async with running(tmp_path, webhooks=hooks) as (app, api):
            app.admin.webhooks.poll_interval = 0.1
            body = b"From: a@org.test\r\nSubject: hi\r\nMessage-ID: <w1@org.test>\r\n\r\nx\r\n"
            qid = await app.spool.enqueue(NewMessage("a@org.test", ["ok@x.test", "slow@x.test",
                                                                    "bad@x.test", "gone@x.test"], body,
                                                     subject="hi", message_id_header="<w1@org.test>"))
            claims = await app.spool.claim("t", limit=10)
            r = {x.address: x.id for x in claims[0].recipients}
            later = time.time() + 3600
            await app.spool.complete([
                RecipientResult(r["ok@x.test"], "delivered", 250, "2.0.0", "queued as X"),
                RecipientResult(r["slow@x.test"], "deferred", 451, "4.7.1", "greylisted",
                                next_attempt_at=time.time()),
                RecipientResult(r["bad@x.test"], "bounced", 550, "5.1.1", "no such user"),
                RecipientResult(r["gone@x.test"], "failed", None, "4.4.7", "expired", reason="expired")])
            await app.spool.claim("t", limit=10)          # the deferred one again: a second deferral
            await app.spool.complete([RecipientResult(r["slow@x.test"], "deferred", 451, "4.7.1",
                                                      "greylisted again", next_attempt_at=later)])
            await app.spool.cancel(qid)                   # slow@ -> cancelled

            async def all_in():
                return len(rx.events) >= 5
            assert await _wait(all_in), rx.events
            await asyncio.sleep(0.5)                      # nothing more arrives (one deferred per message)
            kinds = sorted((e["type"], e["recipient"]) for e in rx.events)
            assert kinds == [("bounced", "bad@x.test"), ("cancelled", "slow@x.test"), ("deferred",
                                                                                       "slow@x.test"),
                             ("delivered", "ok@x.test"), ("failed", "gone@x.test")]
            assert rx.bad_signatures == 0 and rx.calls == 5 + 2          # two 503s were retried
            assert next(e for e in rx.events if e["type"] == "failed")["reason"] == "expired"
            bounced = next(e for e in rx.events if e["type"] == "bounced")
            assert bounced["message"] == {"id": qid, "message_id": "<w1@org.test>", "sender": "a@org.test",
                                          "from": None, "subject": "hi"}
            assert bounced["details"]["enhanced"] == "5.1.1"

            async def gave_up():
                st, body = await api.call("GET", "/api/v1/webhooks")
                return next(h for h in body["items"] if h["name"] == "down")["failed"] == 1
            assert await _wait(gave_up)
            st, body = await api.call("GET", "/api/v1/webhooks")
            crm, down = sorted(body["items"], key=lambda h: h["name"])
            assert crm["state"] == "ok" and crm["delivered"] == 5 and crm["pending"] == 0
            assert crm["url"] == f"http://127.0.0.1:{rx.port}/hook"          # no user:pw, no query
            assert down["state"] == "failing" and down["consecutive_failures"] >= 2 and down["last_error"]
            assert SECRET not in json.dumps(body) and "pw@" not in json.dumps(body)
            st, d = await api.call("GET", "/api/v1/webhooks/down/deliveries", params={"state": "failed"})
            assert st == 200 and d["items"][0]["event_type"] == "delivered" and d["items"][0]["attempts"] >= 2
            assert (await api.call("GET", "/api/v1/webhooks/nope/deliveries"))[0] == 404
            st, metrics = await api.call("GET", "/metrics")
            text = metrics.decode()
            assert 'relaybox_webhook_deliveries_total{endpoint="down",result="failed"} 1.0' in text
            assert 'relaybox_webhook_pending_events{endpoint="crm"} 0.0' in text
    finally:
        await rx.stop()


async def test_outbox_survives_a_restart(tmp_path):
    """Events that happen while the receiver is away are delivered after a restart of relaybox."""
    rx = Receiver()
    hooks = [{"name": "crm", "url": f"http://127.0.0.1:{rx.port}/hook", "secret": SECRET, "retry": ["0.2s"],
              "events": ["cancelled"]}]
    async with running(tmp_path, webhooks=hooks) as (app, api):
        qid = await app.spool.enqueue(NewMessage("a@org.test", ["c@x.test"], b"Subject: c\r\n\r\nx\r\n"))
        await app.spool.cancel(qid)
        await asyncio.sleep(0.8)                       # receiver down: the POST fails, stays pending
    await rx.start()
    try:
        async with running(tmp_path, webhooks=hooks) as (app, api):
            app.admin.webhooks.poll_interval = 0.1

            async def got():
                return len(rx.events) == 1
            assert await _wait(got)
            assert rx.events[0]["message"]["id"] == qid and rx.events[0]["type"] == "cancelled"
    finally:
        await rx.stop()
