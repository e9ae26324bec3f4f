"""Event webhooks: the ``events`` table is the durable outbox; each endpoint POSTs signed JSON with retries.

Flow: the outbox (``store.outbox``) reads events after the endpoint's cursor, turns the interesting ones into
deliveries (payload fixed at that moment by ``payload``) and moves the cursor, in one transaction.
``deliver_due`` POSTs due rows; a 2xx marks them delivered, anything else schedules the next attempt from
the endpoint's ``retry`` list (default 1, 5, 15, 60 minutes, then hourly) until ``max_age`` (24 h) after the
event, when the row becomes ``failed``. ``deferred`` is sent once per message, not on every retry.
``opened`` (tracking, docs/tracking.md) comes at a recipient's first open and again at its first human one
after machine opens: ``reason`` is "opened" or "opened (machine)", ``details.machine`` the same as a bool;
``clicked`` at the first click of each link (``details.url``).

Signature (see docs/webhooks.md): ``X-Relaybox-Timestamp: <unix seconds>`` and
``X-Relaybox-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import Any, Callable

import aiohttp

from admin_api.config import WebhookConfig
from admin_api.metrics import WEBHOOK_DELIVERIES
from relay.tasks import cancel_and_wait
from store.outbox import BATCH, EndpointState, OutboxEvent, PendingDelivery, WebhookOutbox

log = logging.getLogger("admin_api.webhooks")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, tolerance: float = 300,
           now: float | None = None) -> bool:
    """What a receiver does (also used by the tests): constant-time compare and a freshness window."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def payload(item: OutboxEvent) -> str:
    """The JSON body POSTed for one event (fixed when the event is queued)."""
    ev, m = item.event, item.message
    return json.dumps({
        "id": f"evt_{ev.id}", "type": ev.status, "timestamp": ev.at,
        "message": {"id": ev.message_id, "message_id": m.message_id if m else None,
                    "sender": m.sender if m else None, "from": m.from_header if m else None,
                    "subject": m.subject if m else None},
        "recipient": item.recipient, "reason": ev.reason, "actor": ev.actor,
        "details": dict(ev.details or {}),
    })


def next_delay(hook: WebhookConfig, attempts: int) -> float:
    return float(hook.retry[min(attempts - 1, len(hook.retry) - 1)])


class Dispatcher:
    def __init__(self, outbox: WebhookOutbox, hooks: list[WebhookConfig], *, poll_interval: float = 0.5,
                 batch: int = 50, leader: Callable[[], bool] | None = None):
        self.outbox = outbox
        self.hooks = {h.name: h for h in hooks}
        self.poll_interval = poll_interval
        self.batch = batch
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        self._cursors: dict[str, int] = {}
        # several nodes on one database: only the leader dispatches (relaybox/cluster.py is_leader)
        self.leader = leader

    async def _materialize(self, hook: WebhookConfig) -> None:
        self._cursors[hook.name] = await self.outbox.materialize(hook.name, hook.events, payload, batch=BATCH)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(headers={"User-Agent": "relaybox-webhooks/1"})
        for hook in self.hooks.values() if self.leader is None or self.leader() else ():
            await self._materialize(hook)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                if self.leader is None or self.leader():
                    await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop must survive a bad row or a database hiccup
                log.exception("webhook dispatcher round failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except asyncio.TimeoutError:
                pass

    async def run_once(self) -> int:
        top = await self.outbox.latest_event_id()
        for hook in self.hooks.values():
            if self._cursors.get(hook.name, -1) < top:   # a write only when there are new events
                await self._materialize(hook)
        sent = await asyncio.gather(*(self.deliver_due(h) for h in self.hooks.values()))
        return sum(sent)

    async def deliver_due(self, hook: WebhookConfig) -> int:
        rows = await self.outbox.due(hook.name, self.batch, now=time.time())
        done = 0
        for row in rows:
            status, error = await self._post(hook, row)
            nxt = await self._record(hook, row, status, error)
            done += 1
            if error is not None:
                # the endpoint is failing: the rest waits with this one instead of each costing a timeout
                failed = await self.outbox.postpone(hook.name, nxt, float(hook.max_age))
                if failed:
                    WEBHOOK_DELIVERIES.labels(hook.name, "failed").inc(failed)
                break
        return done

    async def _post(self, hook: WebhookConfig, row: PendingDelivery) -> tuple[int | None, str | None]:
        assert self._session is not None
        body = row.payload.encode()
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-Relaybox-Timestamp": ts,
                   "X-Relaybox-Signature": sign(hook.secret, ts, body), "X-Relaybox-Event": row.event_type,
                   "X-Relaybox-Delivery": str(row.id), "Idempotency-Key": f"evt_{row.event_id}"}
        try:
            async with self._session.post(hook.url, data=body, headers=headers, allow_redirects=False,
                                          timeout=aiohttp.ClientTimeout(total=float(hook.timeout))) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return resp.status, None
                return resp.status, f"HTTP {resp.status}"
        except asyncio.TimeoutError:
            return None, f"timeout after {float(hook.timeout):g}s"
        except aiohttp.ClientError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:300]

    async def _record(self, hook: WebhookConfig, row: PendingDelivery, status: int | None,
                      error: str | None) -> float:
        """Store one POST's outcome; returns the row's next attempt time (now when delivered)."""
        now = time.time()
        attempts = row.attempts + 1
        if error is None:
            await self.outbox.delivered(hook.name, row.id, attempts=attempts, status=status)
            WEBHOOK_DELIVERIES.labels(hook.name, "delivered").inc()
            return now
        nxt = now + next_delay(hook, attempts)
        give_up = nxt - row.created_at > float(hook.max_age)
        await self.outbox.attempt_failed(hook.name, row.id, attempts=attempts, status=status, error=error,
                                         next_attempt_at=nxt, give_up=give_up)
        WEBHOOK_DELIVERIES.labels(hook.name, "failed" if give_up else "retry").inc()
        if give_up:
            log.warning("webhook %s: gave up on event %s after %d attempts: %s", hook.name, row.event_id,
                        attempts, error)
        return nxt


async def endpoint_status(outbox: WebhookOutbox, hooks: list[WebhookConfig]) -> list[dict[str, Any]]:
    """Each configured endpoint with where it stands (the URL without credentials or query)."""
    states = {s.name: s for s in await outbox.endpoint_states([h.name for h in hooks])}
    out = []
    for h in hooks:
        st = states.get(h.name) or EndpointState(h.name)
        failures = st.consecutive_failures
        out.append({
            "name": h.name, "url": redact_url(h.url), "events": list(h.events), "enabled": h.enabled,
            "state": "unknown" if not st.last_success_at and not failures else
                     ("failing" if failures else "ok"),
            "cursor": st.cursor, "last_success_at": st.last_success_at,
            "last_failure_at": st.last_failure_at, "last_error": st.last_error,
            "consecutive_failures": failures, "pending": st.pending,
            "delivered": st.delivered, "failed": st.failed,
        })
    return out


def redact_url(url: str) -> str:
    """Drop user:password@ and the query string (either may carry a secret)."""
    from urllib.parse import urlsplit, urlunsplit

    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return urlunsplit((p.scheme, host, p.path, "", ""))
