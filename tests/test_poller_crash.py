"""kill -9 of a real relaybox while it fetches and posts webhooks: nothing lost, nothing duplicated at a
target that honours the idempotency key; mail that arrived while relaybox was down is backfilled."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from aiohttp import web

from tests.peers.dovecot import Dovecot
from tests.peers.ports import free_port
from tests.peers.relaybox_proc import RelayboxProcess

pytestmark = pytest.mark.integration

USER = "desk@org.test"


class SlowReceiver(threading.Thread):
    """Webhook target in its own thread and loop; 30 ms per request so kills land mid-POST."""

    def __init__(self):
        super().__init__(daemon=True)
        self.port = free_port()
        self.by_key: dict[str, str] = {}
        self.posts = 0
        self.ready = threading.Event()
        self.lock = threading.Lock()

    async def handle(self, request):
        body = await request.read()
        await asyncio.sleep(0.03)
        with self.lock:
            self.posts += 1
            self.by_key.setdefault(request.headers["Idempotency-Key"], json.loads(body)["subject"])
        return web.Response(status=200)

    def run(self):
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self.ready.set()
        loop.run_forever()


def ticket(i: int) -> bytes:
    return f"Subject: ticket {i}\r\nMessage-ID: <t{i}@c.test>\r\n\r\nbody {i}\r\n".encode()


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_kill_9_mid_fetch_and_webhook(tmp_path):
    dc = Dovecot(users={USER: "pw"}).start()
    rec = SlowReceiver()
    rec.start()
    rec.ready.wait(5)
    try:
        for i in range(40):
            dc.append(USER, "pw", ticket(i))
        relay = RelayboxProcess(str(tmp_path), {
            "delivery": {"enabled": False},
            "poller": {"fetch_batch": 5, "retry_first": 0.5, "parallel_deliveries": 4},
            "[[campaigns]]": [{"name": "desk", "kind": "webhook", "url": f"http://127.0.0.1:{rec.port}/hook"}],
            "[[channels]]": [{"name": "desk", "host": "127.0.0.1", "port": dc.imap_port, "tls": "none",
                              "user": USER, "password": "pw", "address": USER, "default_campaign": "desk",
                              "poll_interval": "1s"}],
        })
        relay.start()
        wait_for(lambda: len(rec.by_key) >= 8, 30, "no webhook before the first kill")
        relay.kill()                                   # mid-stream: some fetched, some posted
        first_kill = len(rec.by_key)
        for i in range(40, 50):                        # arrives while relaybox is down
            dc.append(USER, "pw", ticket(i))
        relay.start()
        wait_for(lambda: len(rec.by_key) >= first_kill + 10, 30, "no progress after restart")
        relay.kill()
        relay.start()
        wait_for(lambda: len(rec.by_key) >= 50, 60, f"only {len(rec.by_key)} of 50 delivered: {relay.log()}")
        wait_for(lambda: dc.uids(USER, "pw", criteria="UNSEEN") == [], 20, "messages left unseen")
        assert relay.stop() == 0
        subjects = sorted(rec.by_key.values(), key=lambda s: int(s.split()[1]))
        assert subjects == [f"ticket {i}" for i in range(50)]      # every message once per key, none lost
        # redeliveries carry the same key; only POSTs in flight at a kill (4 at most) can repeat
        assert rec.posts - len(rec.by_key) <= 2 * 4
    finally:
        dc.stop()
