"""Tracking in one process on a real SQLite file: the store's records and events, retention, the listener
over HTTP on loopback (the same GIF whatever the token, the rate limit, click redirects), and the whole App:
SMTP in, per-recipient tracked bodies at an aiosmtpd sink, pixel loads -> opened flag, webhook, metric, API.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import aiohttp
import pytest
from aiohttp import web

from admin_api.webhooks import verify
from relay.config import TrackingConfig
from relay.envelope import NewMessage
from relay.spool.spool import RecipientResult, Spool
from relay.tracking import tokens
from relay.tracking.listener import GIF, TrackingListener
from store.history import MessageFilter
from store.tracking import Hit
from tests.admin_support import running
from tests.peers.ports import free_port
from tests.peers.sink import Sink

pytestmark = pytest.mark.component

SECRET = "tracking-secret-0123456789"
HOOK_SECRET = "whsec-tracking-0123456789"
HUMAN_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.0"
HTML_MAIL = ("From: News <news@src.test>\r\nTo: a@dst.test, b@dst.test\r\nSubject: offers\r\n"
             "Message-ID: <offers-1@src.test>\r\nX-Relaybox-Track: opens, clicks\r\nMIME-Version: 1.0\r\n"
             "Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n"
             "--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nOffers: https://shop.test/deal\r\n"
             "--b1\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n"
             "<html><body><p>Offers: <a href=\"https://shop.test/deal?x=1\">deal</a></p></body></html>\r\n"
             "--b1--\r\n").encode()
TEXT_MAIL = ("From: News <news@src.test>\r\nTo: a@dst.test\r\nSubject: plain\r\n"
             "Message-ID: <plain-1@src.test>\r\n\r\nJust text,  with  spaces \r\nand https://shop.test/deal\r\n").encode()


async def delivered_message(spool: Spool, rcpts: list[str]) -> tuple[str, dict[str, int]]:
    qid = await spool.enqueue(NewMessage("news@src.test", rcpts, HTML_MAIL, from_header="news@src.test"))
    claims = await spool.claim("t", limit=10)
    ids = {r.address: r.id for r in claims[0].recipients}
    await spool.complete([RecipientResult(rid, "delivered", 250, "2.0.0", "ok") for rid in ids.values()])
    return qid, ids


async def _events(store, qid, status):
    return [e for e in (await store.history.show(qid)).events if e.status == status]


# ---- the store ----------------------------------------------------------------------------------------
async def test_opens_machine_then_human_one_event_each(store, clock):
    spool = Spool(store)
    qid, ids = await delivered_message(spool, ["a@dst.test", "b@dst.test"])
    a = ids["a@dst.test"]
    t0 = clock.t
    rec = await store.tracking.record([Hit("open", qid, a, t0 + 2, HUMAN_UA)], machine_window=10)
    assert rec[0].recorded and rec[0].machine and rec[0].reason == "prefetch" and rec[0].event == "opened"
    rec = await store.tracking.record([Hit("open", qid, a, t0 + 60, "Mozilla/5.0", "apple-mpp")],
                                      machine_window=10)
    assert rec[0].machine and rec[0].event is None                   # still machine: no new event
    assert (await store.tracking.opens(qid))[a].flag == "opened (machine)"
    rec = await store.tracking.record([Hit("open", qid, a, t0 + 3600, HUMAN_UA),
                                       Hit("open", qid, a, t0 + 7200, HUMAN_UA)], machine_window=10)
    assert [r.event for r in rec] == ["opened", None]                # the first human open, once
    o = (await store.tracking.opens(qid))[a]
    assert (o.flag, o.opens, o.human_opens, o.machine_opens) == ("opened", 4, 2, 2)
    assert (o.first_at, o.human_first_at, o.last_at) == (t0 + 2, t0 + 3600, t0 + 7200)
    assert o.last_user_agent == HUMAN_UA and o.last_reason == "apple-mpp"
    evs = await _events(store, qid, "opened")
    assert [(e.recipient_id, e.reason, e.actor, e.details["machine"]) for e in evs] == [
        (a, "opened (machine)", "tracking", True), (a, "opened", "tracking", False)]
    assert evs[0].details == {"machine": True, "first": True, "reason": "prefetch"}
    assert await store.tracking.flags([qid, "NOPE"]) == {qid: {"opened": 1, "opened_machine": 0}}
    assert ids["b@dst.test"] not in await store.tracking.opens(qid)
    # a token for a recipient of another message (or none) records nothing
    rec = await store.tracking.record([Hit("open", "0" * 16, a, t0, HUMAN_UA),
                                       Hit("open", qid, 999_999, t0, HUMAN_UA)])
    assert [r.recorded for r in rec] == [False, False]


async def test_clicks_counted_per_url_with_one_event_each(store, clock):
    spool = Spool(store)
    qid, ids = await delivered_message(spool, ["a@dst.test"])
    a = ids["a@dst.test"]
    hits = [Hit("click", qid, a, clock.t + 100, HUMAN_UA, None, "https://shop.test/x"),
            Hit("click", qid, a, clock.t + 200, HUMAN_UA, None, "https://shop.test/x"),
            Hit("click", qid, a, clock.t + 300, "curl/8", "bot-agent", "https://shop.test/y")]
    rec = await store.tracking.record(hits)
    assert [r.event for r in rec] == ["clicked", None, "clicked"]
    clicks = {c.url: c for c in await store.tracking.clicks(qid)}
    assert (clicks["https://shop.test/x"].clicks, clicks["https://shop.test/y"].machine_clicks) == (2, 1)
    assert (await store.tracking.opens(qid)) == {}                    # a click is not an open


async def test_retention_and_delete_remove_tracking_data(store, clock):
    spool = Spool(store)
    old, ids = await delivered_message(spool, ["a@dst.test"])
    await store.tracking.record([Hit("open", old, ids["a@dst.test"], clock.t + 50, HUMAN_UA),
                                 Hit("click", old, ids["a@dst.test"], clock.t + 60, HUMAN_UA, None, "https://x.test/")])
    clock.t += 95 * 86400
    new, new_ids = await delivered_message(spool, ["b@dst.test"])
    await store.tracking.record([Hit("open", new, new_ids["b@dst.test"], clock.t + 50, HUMAN_UA)])
    while await spool.prune(30, 90, batch=500):
        pass
    assert await store.tracking.opens(old) == {} and await store.tracking.clicks(old) == []
    assert list(await store.tracking.opens(new)) == [new_ids["b@dst.test"]]     # the recent one stays
    assert await spool.delete(new)
    assert await store.tracking.opens(new) == {}
    rows = await store.db.read(lambda c: c.execute(
        "SELECT (SELECT COUNT(*) FROM tracking_opens) + (SELECT COUNT(*) FROM tracking_clicks)"
    ).fetchone()[0])
    assert rows == 0


# ---- the listener over HTTP ----------------------------------------------------------------------------
@pytest.fixture
async def listener(store):
    cfg = TrackingConfig(enabled=True, listen=f"127.0.0.1:{free_port()}", base_url="https://t.test",
                         secret=SECRET, machine_window=0, rate=0.001, burst=5)
    lst = TrackingListener(cfg, store.tracking)
    await lst.start()
    yield lst
    await lst.stop()


def _same(resp: aiohttp.ClientResponse, body: bytes) -> tuple:
    return resp.status, body, {k: v for k, v in resp.headers.items() if k.lower() != "date"}


async def test_every_request_gets_the_same_gif_and_forgeries_record_nothing(store, listener):
    spool = Spool(store)
    qid, ids = await delivered_message(spool, ["a@dst.test"])
    key = SECRET.encode()
    good = tokens.open_token(qid, ids["a@dst.test"], key)
    forged = tokens.open_token(qid, ids["a@dst.test"], b"not-the-secret-0123456789")
    other_rcpt = tokens.open_token(qid, ids["a@dst.test"] + 1, key)
    altered = good[:-3] + ("AAA" if good[-3:] != "AAA" else "BBB")
    base = f"http://127.0.0.1:{listener.bound[0][1]}"
    answers = []
    async with aiohttp.ClientSession(headers={"User-Agent": HUMAN_UA}) as http:
        for path in (f"/o/{forged}.gif", f"/o/{altered}.gif", f"/o/{other_rcpt}.gif", "/", "/admin",
                     f"/c/{good}", f"/o/{good}.gif"):
            async with http.get(base + path, allow_redirects=False) as resp:
                answers.append(_same(resp, await resp.read()))
        async with http.head(base + f"/o/{good}.gif") as resp:
            head = resp.status
        await listener.idle()
        assert head == 200
        assert all(a == answers[0] for a in answers), answers        # nothing tells a real token apart
        status, body, headers = answers[0]
        assert status == 200 and body == GIF and headers["Content-Type"] == "image/gif"
        assert "no-store" in headers["Cache-Control"] and headers["Server"] == "relaybox"
        opens = await store.tracking.opens(qid)
        assert list(opens) == [ids["a@dst.test"]]
        assert opens[ids["a@dst.test"]].opens == 1 and opens[ids["a@dst.test"]].flag == "opened"
        # burst 5 (rate ~0), "/" and "/admin" not counted: the HEAD and this one are over the limit
        async with http.get(base + f"/o/{good}.gif") as resp:
            assert _same(resp, await resp.read()) == answers[0]
        await listener.idle()
        assert (await store.tracking.opens(qid))[ids["a@dst.test"]].opens == 1


async def test_click_redirects_only_to_the_signed_url(store, tmp_path):
    spool = Spool(store)
    qid, ids = await delivered_message(spool, ["a@dst.test"])
    cfg = TrackingConfig(enabled=True, listen=f"127.0.0.1:{free_port()}", base_url="https://t.test",
                         secret=SECRET, trusted_proxies=["127.0.0.1/32"], machine_window=0)
    lst = TrackingListener(cfg, store.tracking)
    await lst.start()
    try:
        tok = tokens.click_token(qid, ids["a@dst.test"], "https://shop.test/deal?x=1", SECRET.encode())
        evil = tokens.click_token(qid, ids["a@dst.test"], "https://evil.test/", b"not-the-secret-0123456789")
        base = f"http://127.0.0.1:{lst.bound[0][1]}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/c/{tok}", allow_redirects=False,
                                headers={"User-Agent": HUMAN_UA, "X-Forwarded-For": "17.1.2.3"}) as resp:
                assert resp.status == 302 and resp.headers["Location"] == "https://shop.test/deal?x=1"
            async with http.get(f"{base}/c/{evil}", allow_redirects=False) as resp:
                assert resp.status == 200 and await resp.read() == GIF and "Location" not in resp.headers
            async with http.get(f"{base}/c/{tok}?u=https://evil.test/", allow_redirects=False,
                                headers={"User-Agent": HUMAN_UA}) as resp:
                assert resp.headers["Location"] == "https://shop.test/deal?x=1"   # the query is no use
        await lst.idle()
    finally:
        await lst.stop()
    [click] = await store.tracking.clicks(qid)
    assert click.url == "https://shop.test/deal?x=1" and click.clicks == 2
    assert click.machine_clicks == 1                # the forwarded client was in Apple's network


# ---- the App: SMTP in, sink, pixel, flag, webhook, metric, API -----------------------------------------
class Receiver:
    def __init__(self):
        self.port = free_port()
        self.events: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        assert verify(HOOK_SECRET, request.headers["X-Relaybox-Timestamp"], body,
                      request.headers["X-Relaybox-Signature"])
        self.events.append(json.loads(body))
        return web.Response(status=204)

    async def __aenter__(self):
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()


async def _until(pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred():
            return True
        await asyncio.sleep(0.05)
    return False


async def _qid(app, subject: str) -> str:
    page = await app.store.history.list_messages(MessageFilter(subject=subject))
    return page.items[0].message.id


def _send(port: int, rcpts: list[str], data: bytes) -> None:
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.sendmail("news@src.test", rcpts, data)


async def test_app_tracks_html_per_recipient_and_reports_the_open(tmp_path):
    sink = await Sink().start()
    track_port = free_port()
    route = {"name": "sink", "host": "127.0.0.1", "port": sink.port, "tls": "none", "default": True}
    try:
        async with Receiver() as rx, running(
                tmp_path, scheduler=True, routes=[route],
                delivery={"poll_interval": 0.05},
                tracking={"enabled": True, "listen": f"127.0.0.1:{track_port}",
                          "base_url": f"http://127.0.0.1:{track_port}/", "secret": SECRET, "clicks": True,
                          "machine_window": "1s"},
                webhooks=[{"name": "crm", "url": f"http://127.0.0.1:{rx.port}/hook", "secret": HOOK_SECRET,
                           "events": ["opened", "clicked"], "retry": ["0.2s"]}]) as (app, api):
            app.admin.webhooks.poll_interval = 0.1
            await asyncio.to_thread(_send, app.smtp_port, ["a@dst.test", "b@dst.test"], HTML_MAIL)
            await asyncio.to_thread(_send, app.smtp_port, ["a@dst.test"], TEXT_MAIL)

            async def arrived():
                return len(sink.messages) == 3
            assert await _until(arrived), sink.messages
            html_msgs = [m for m in sink.messages if b"Subject: offers" in m.data]
            text_msg = next(m for m in sink.messages if b"Subject: plain" in m.data)
            # text-only: byte for byte the message as spooled (intake's trace headers and Date included)
            assert text_msg.data == await app.spool.body(await _qid(app, "plain"))
            assert text_msg.data.endswith(TEXT_MAIL.split(b"\r\n\r\n", 1)[1])
            # VERP off, still one transaction per recipient: each body names its own recipient
            assert sorted(tuple(m.rcpts) for m in html_msgs) == [("a@dst.test",), ("b@dst.test",)]
            pixels = {}
            for m in html_msgs:
                assert b"X-Relaybox-Track" not in m.data
                before, _, after = m.data.partition(b"Content-Type: text/html; charset=us-ascii\r\n\r\n")
                assert b"Offers: https://shop.test/deal\r\n" in before            # text part as it was
                url = re.search(rb'<img src="(http://127\.0\.0\.1:\d+/o/[\w-]+\.gif)"', after).group(1)
                assert re.search(rb'href="http://127\.0\.0\.1:\d+/c/[A-Za-z0-9_-]+"', after)
                pixels[m.rcpts[0]] = url.decode()
            assert pixels["a@dst.test"] != pixels["b@dst.test"]
            qid = await _qid(app, "offers")

            async with aiohttp.ClientSession() as http:
                async with http.get(pixels["a@dst.test"], headers={"User-Agent": HUMAN_UA}) as resp:
                    assert resp.status == 200 and await resp.read() == GIF
                await app.tracking.idle()
                st, msg = await api.call("GET", f"/api/v1/messages/{qid}")
                by_addr = {r["address"]: r for r in msg["recipients"]}
                assert by_addr["a@dst.test"]["opened"] == "opened (machine)"   # within a second of delivery
                assert by_addr["b@dst.test"]["opened"] is None and by_addr["b@dst.test"]["opens"] is None
                await asyncio.sleep(1.1)
                async with http.get(pixels["a@dst.test"], headers={"User-Agent": HUMAN_UA}) as resp:
                    assert await resp.read() == GIF
                link = re.search(rb'href="(http://[^"]+/c/[^"]+)"', html_msgs[0].data).group(1).decode()
                async with http.get(link, allow_redirects=False, headers={"User-Agent": HUMAN_UA}) as resp:
                    assert resp.status == 302 and resp.headers["Location"] == "https://shop.test/deal?x=1"
                await app.tracking.idle()

            st, msg = await api.call("GET", f"/api/v1/messages/{qid}")
            a = next(r for r in msg["recipients"] if r["address"] == "a@dst.test")
            assert a["opened"] == "opened" and a["opens"]["count"] == 2 and a["opens"]["machine_count"] == 1
            assert a["opens"]["first_at"].endswith("Z") or "T" in a["opens"]["first_at"]
            assert [c["url"] for c in next(r for r in msg["recipients"]
                                            if r["address"] == html_msgs[0].rcpts[0])["clicks"]] == [
                "https://shop.test/deal?x=1"]
            st, page = await api.call("GET", "/api/v1/messages", params={"subject": "offers"})
            assert page["items"][0]["opened"] == {"opened": 1, "opened_machine": 0}

            async def hooked():
                return len(rx.events) >= 3
            assert await _until(hooked), rx.events
            kinds = [(e["type"], e["recipient"], e["reason"]) for e in rx.events]
            assert kinds[:2] == [("opened", "a@dst.test", "opened (machine)"),
                                 ("opened", "a@dst.test", "opened")]
            assert ("clicked", html_msgs[0].rcpts[0], None) in kinds
            assert rx.events[0]["details"]["machine"] is True and rx.events[1]["details"]["machine"] is False
            st, metrics = await api.call("GET", "/metrics")
            text = metrics.decode()
            assert 'relaybox_tracking_opens_total{kind="machine"} ' in text
            assert 'relaybox_tracking_opens_total{kind="human"} ' in text
            assert 'relaybox_tracking_requests_total{kind="open",result="accepted"}' in text
            assert app.tracking.bound == [("127.0.0.1", track_port)]        # its own socket
            assert (await api.call("GET", "/api/v1/messages"))[0] == 200   # the admin API is elsewhere
    finally:
        await sink.stop()


async def test_sighup_follows_a_rotated_secret_and_the_enabled_switch(tmp_path):
    import dataclasses

    key_file = tmp_path / "tracking.key"
    key_file.write_text("first-key-0123456789abc\n")
    port = free_port()
    tracking = {"enabled": True, "listen": f"127.0.0.1:{port}", "base_url": f"http://127.0.0.1:{port}",
                "secret_file": str(key_file), "routes": ["mx"]}
    async with running(tmp_path, tracking=tracking) as (app, api):
        cfg = app.settings.relay.tracking
        assert app.tracking.keys == [b"first-key-0123456789abc"]
        key_file.write_text("second-key-0123456789abc\nfirst-key-0123456789abc\n")   # rotate: prepend
        assert await app._reload_tracking(cfg)                          # same config, new file content
        assert app.tracking.keys == [b"second-key-0123456789abc", b"first-key-0123456789abc"]
        key_file.write_text("")
        assert not await app._reload_tracking(cfg)                      # an empty file: keep the old keys
        assert len(app.tracking.keys) == 2
        assert await app._reload_tracking(dataclasses.replace(cfg, enabled=False))
        assert app.tracking is None
        key_file.write_text("second-key-0123456789abc\n")
        assert await app._reload_tracking(cfg) and app.tracking.bound == [("127.0.0.1", port)]
