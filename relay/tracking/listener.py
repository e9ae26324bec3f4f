"""The tracking listener: its own host:port (never the admin API's), the same tiny GIF for every request.

    listener = TrackingListener(config.tracking, store.tracking)
    await listener.start()          # listener.bound -> [(host, port)]
    await listener.stop()           # pending opens are written first

``GET /o/<token>.gif`` (any path, any method, in fact) is answered with the same 43-byte transparent GIF,
status 200, ``Cache-Control: no-store``, whatever the token: a forged, altered or expired token, an unknown
path and a real open look the same from outside, and the answer is sent before anything is looked up or
written (the open goes to a bounded queue that a background task writes in batches), so not even the time
taken tells them apart. ``GET /c/<token>`` with a valid click token is the one exception: a 302 to the URL
signed into it (only URLs that were in the message: the token's MAC covers the URL), else the GIF too.
Each client address has a token bucket (``rate``/``burst``); beyond it nothing is recorded or redirected
and the GIF is still the answer. Behind a reverse proxy listed in ``trusted_proxies`` the client is the
last X-Forwarded-For address that is not itself a trusted proxy. Tokens never reach a log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Callable

from aiohttp import web

from relay.config import TrackingConfig
from relay.tasks import cancel_and_wait
from relay.tracking import machine, tokens
from relay.tracking.metrics import DROPPED, RECORDED, REQUESTS
from store.tracking import Hit, TrackingStore

log = logging.getLogger("relay.tracking")

# the smallest transparent 1x1 GIF89a: 43 bytes
GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
       b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
HEADERS = {"Content-Type": "image/gif",
           "Cache-Control": "no-store, no-cache, must-revalidate, private, max-age=0",
           "Pragma": "no-cache", "Expires": "0", "Server": "relaybox", "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer"}
QUEUE_MAX = 10_000
BATCH = 200
BUCKETS_MAX = 50_000


class RateLimiter:
    """A token bucket per client address (``rate`` per second, ``burst`` at once), least recently seen
    addresses forgotten beyond ``BUCKETS_MAX``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str) -> bool:
        now = self.clock()
        tokens_left, at = self.buckets.pop(key, (self.burst, now))
        tokens_left = min(self.burst, tokens_left + (now - at) * self.rate)
        allowed = tokens_left >= 1.0
        self.buckets[key] = (tokens_left - 1.0 if allowed else tokens_left, now)
        while len(self.buckets) > BUCKETS_MAX:
            self.buckets.popitem(last=False)
        return allowed


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class TrackingListener:
    def __init__(self, config: TrackingConfig, store: TrackingStore, *,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.store = store
        self.clock = clock
        self.keys = tokens.load_keys(config)
        self.machine_nets = machine.networks(config.machine_networks)
        self.proxies = machine.networks(config.trusted_proxies)
        self.limiter = RateLimiter(config.rate, config.burst)
        self.queue: asyncio.Queue[Hit] = asyncio.Queue(QUEUE_MAX)
        self.bound: list[tuple[str, int]] = []
        self._runner: web.AppRunner | None = None
        self._writer: asyncio.Task[None] | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = _host_port(self.config.listen)
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        self.bound = [(str(a[0]), int(a[1])) for a in self._runner.addresses] or [(host, port)]
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        log.info("tracking listener on %s (public %s)", self.config.listen, self.config.base_url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        try:
            await asyncio.wait_for(self.idle(), 10.0)
        except asyncio.TimeoutError:
            log.warning("tracking: %d hits not written at stop", self.queue.qsize())
        await cancel_and_wait(self._writer)
        self._writer = None

    def reload(self, config: TrackingConfig) -> None:
        """SIGHUP: keys (a rotated secret_file), machine rules, proxies, limits and window; the socket stays
        (``listen`` changes with a restart). Raises ValueError (keeping everything) on an unreadable key."""
        keys = tokens.load_keys(config)
        self.keys = keys
        self.machine_nets = machine.networks(config.machine_networks)
        self.proxies = machine.networks(config.trusted_proxies)
        self.limiter.rate, self.limiter.burst = config.rate, float(config.burst)
        self.config = config

    # ---- requests -----------------------------------------------------------------------------------
    def client_ip(self, request: web.BaseRequest) -> str:
        peer = request.remote or ""
        if not self.proxies or not machine.in_networks(peer, self.proxies):
            return peer
        chain = [a.strip() for a in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",")]
        for addr in reversed([a for a in chain if a]):
            if not machine.in_networks(addr, self.proxies):
                return addr
        return peer

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        kind = "open" if path.startswith("/o/") else "click" if path.startswith("/c/") else "other"
        if kind == "other":
            REQUESTS.labels(kind, "ignored").inc()
            return self.gif()
        ip = self.client_ip(request)
        if not self.limiter.allow(ip):
            REQUESTS.labels(kind, "limited").inc()
            return self.gif()
        tok = path[3:]
        if kind == "open":
            target = tokens.open_target(tok[:-4] if tok.endswith(".gif") else tok, self.keys)
        else:
            target = tokens.click_target(tok, self.keys)
        if target is None:
            REQUESTS.labels(kind, "invalid").inc()
            return self.gif()
        ua = request.headers.get("User-Agent", "")[:300]
        hit = Hit(kind, target.queue_id, target.recipient_id, self.clock(), ua,
                  machine.classify(ua, ip, self.machine_nets), target.url)
        try:
            self.queue.put_nowait(hit)
            REQUESTS.labels(kind, "accepted").inc()
        except asyncio.QueueFull:
            DROPPED.inc()
            REQUESTS.labels(kind, "dropped").inc()
        if kind == "click" and target.url:
            return web.Response(status=302, headers={"Location": target.url, "Cache-Control": "no-store",
                                                     "Server": "relaybox", "Referrer-Policy": "no-referrer"})
        return self.gif()

    @staticmethod
    def gif() -> web.Response:
        return web.Response(body=GIF, headers=HEADERS)

    # ---- writing ------------------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        while True:
            first = await self.queue.get()
            batch = [first]
            while len(batch) < BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def _write(self, batch: list[Hit]) -> None:
        try:
            results = await self.store.record(batch, machine_window=float(self.config.machine_window))
        except Exception:  # noqa: BLE001 - tracking must never take anything else down
            log.exception("recording %d tracking hits failed", len(batch))
            return
        for r in results:
            if not r.recorded:
                RECORDED.labels(r.hit.kind, "unknown").inc()
            else:
                RECORDED.labels(r.hit.kind, "machine" if r.machine else "human").inc()

    async def idle(self) -> None:
        """Wait until every queued hit has been written (at stop, and in tests)."""
        await self.queue.join()
