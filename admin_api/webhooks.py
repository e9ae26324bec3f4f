"""Event webhooks: the ``events`` table is the durable outbox; each endpoint POSTs signed JSON with retries.

Flow: ``materialize`` reads events after the endpoint's cursor, turns the interesting ones into
``webhook_deliveries`` rows (payload fixed at that moment) and moves the cursor, in one transaction.
``deliver_due`` POSTs due rows; a 2xx marks them delivered, anything else schedules the next attempt from
the endpoint's ``retry`` list (default 1, 5, 15, 60 minutes, then hourly) until ``max_age`` (24 h) after the
event, when the row becomes ``failed``. ``deferred`` is sent once per message, not on every retry.

Signature (see docs/webhooks.md): ``X-Relaybox-Timestamp: <unix seconds>`` and
``X-Relaybox-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import sqlite3
import time
from typing import Any

import aiohttp

from admin_api.config import WebhookConfig
from admin_api.metrics import WEBHOOK_DELIVERIES
from relay.tasks import cancel_and_wait
from store.sqlite import Database

log = logging.getLogger("admin_api.webhooks")

BATCH = 500


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


def _payload(conn: sqlite3.Connection, ev: sqlite3.Row) -> dict:
    m = conn.execute("SELECT id, message_id, sender, subject, from_header FROM messages WHERE id=?",
                     (ev["message_id"],)).fetchone()
    rcpt = None
    if ev["recipient_id"] is not None:
        r = conn.execute("SELECT address FROM recipients WHERE id=?", (ev["recipient_id"],)).fetchone()
        rcpt = r["address"] if r else None
    try:
        details = json.loads(ev["details"]) if ev["details"] else {}
    except ValueError:
        details = {}
    return {
        "id": f"evt_{ev['id']}", "type": ev["status"], "timestamp": ev["at"],
        "message": {"id": ev["message_id"], "message_id": m["message_id"] if m else None,
                    "sender": m["sender"] if m else None, "from": m["from_header"] if m else None,
                    "subject": m["subject"] if m else None},
        "recipient": rcpt, "reason": ev["reason"], "actor": ev["actor"], "details": details,
    }


def materialize(conn: sqlite3.Connection, hook: WebhookConfig, now: float) -> int:
    """Queue deliveries for new events of one endpoint; returns the endpoint's new cursor."""
    row = conn.execute("SELECT cursor FROM webhook_endpoints WHERE name=?", (hook.name,)).fetchone()
    if row is None:   # a new endpoint starts at the present: no replay of history
        top = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
        conn.execute("INSERT INTO webhook_endpoints(name, cursor, created_at) VALUES (?,?,?)",
                     (hook.name, top, now))
        return top
    cursor = row["cursor"]
    events = conn.execute("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (cursor, BATCH)).fetchall()
    if not events:
        return cursor
    wanted = set(hook.events)
    queued = 0  # noqa: SIM113
    for ev in events:
        if ev["status"] not in wanted:
            continue
        if ev["status"] == "deferred" and conn.execute(
                "SELECT 1 FROM webhook_deliveries WHERE endpoint=? AND message_id=?"
                " AND event_type='deferred'",
                (hook.name, ev["message_id"])).fetchone():
            continue
        conn.execute(
            "INSERT OR IGNORE INTO webhook_deliveries(endpoint, event_id, event_type, message_id, payload,"
            " state, next_attempt_at, created_at, updated_at) VALUES (?,?,?,?,?,'pending',?,?,?)",
            (hook.name, ev["id"], ev["status"], ev["message_id"], json.dumps(_payload(conn, ev)), now,
             ev["at"], now))
        queued += 1
    conn.execute("UPDATE webhook_endpoints SET cursor=? WHERE name=?", (events[-1]["id"], hook.name))
    return events[-1]["id"]


def next_delay(hook: WebhookConfig, attempts: int) -> float:
    return float(hook.retry[min(attempts - 1, len(hook.retry) - 1)])


class Dispatcher:
    def __init__(self, db: Database, hooks: list[WebhookConfig], *, poll_interval: float = 0.5,
                 batch: int = 50):
        self.db = db
        self.hooks = {h.name: h for h in hooks}
        self.poll_interval = poll_interval
        self.batch = batch
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        self._cursors: dict[str, int] = {}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(headers={"User-Agent": "relaybox-webhooks/1"})
        now = time.time()
        for hook in self.hooks.values():
            self._cursors[hook.name] = await self.db.write(lambda c, h=hook: materialize(c, h, now))
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
        now = time.time()
        top = await self.db.read(lambda c: c.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
        for hook in self.hooks.values():
            if self._cursors.get(hook.name, -1) < top:   # a write only when there are new events
                self._cursors[hook.name] = await self.db.write(lambda c, h=hook: materialize(c, h, now))
        sent = await asyncio.gather(*(self.deliver_due(h) for h in self.hooks.values()))
        return sum(sent)

    async def deliver_due(self, hook: WebhookConfig) -> int:
        now = time.time()
        rows = await self.db.read(lambda c: [dict(r) for r in c.execute(
            "SELECT id, event_id, event_type, payload, attempts, created_at FROM webhook_deliveries"
            " WHERE endpoint=? AND state='pending' AND next_attempt_at <= ? ORDER BY id LIMIT ?",
            (hook.name, now, self.batch))])
        done = 0
        for row in rows:
            status, error = await self._post(hook, row)
            nxt = await self.db.write(lambda c, r=row, s=status, e=error: self._record(c, hook, r, s, e))
            done += 1
            if error is not None:
                # the endpoint is failing: the rest waits with this one instead of each costing a timeout
                await self.db.write(lambda c, t=nxt: self._postpone(c, hook, t))
                break
        return done

    def _postpone(self, conn: sqlite3.Connection, hook: WebhookConfig, until: float) -> None:
        now = time.time()
        conn.execute("UPDATE webhook_deliveries SET next_attempt_at=?, updated_at=? WHERE endpoint=?"
                     " AND state='pending' AND next_attempt_at < ?", (until, now, hook.name, until))
        n = conn.execute("UPDATE webhook_deliveries SET state='failed', last_error=COALESCE(last_error, '')"
                         " || ' (expired after max_age)', updated_at=? WHERE endpoint=? AND state='pending'"
                         " AND created_at < ?", (now, hook.name, now - float(hook.max_age))).rowcount
        if n:
            conn.execute("UPDATE webhook_endpoints SET failed=failed+? WHERE name=?", (n, hook.name))
            WEBHOOK_DELIVERIES.labels(hook.name, "failed").inc(n)

    async def _post(self, hook: WebhookConfig, row: dict) -> tuple[int | None, str | None]:
        assert self._session is not None
        body = row["payload"].encode()
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-Relaybox-Timestamp": ts,
                   "X-Relaybox-Signature": sign(hook.secret, ts, body), "X-Relaybox-Event": row["event_type"],
                   "X-Relaybox-Delivery": str(row["id"]), "Idempotency-Key": f"evt_{row['event_id']}"}
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

    def _record(self, conn: sqlite3.Connection, hook: WebhookConfig, row: dict, status: int | None,
                error: str | None) -> float:
        """Store one POST's outcome; returns the row's next attempt time (now when delivered)."""
        now = time.time()
        attempts = row["attempts"] + 1
        if error is None:
            conn.execute("UPDATE webhook_deliveries SET state='delivered', attempts=?, last_status=?,"
                         " last_error=NULL, updated_at=? WHERE id=?", (attempts, status, now, row["id"]))
            conn.execute("UPDATE webhook_endpoints SET last_success_at=?, consecutive_failures=0,"
                         " delivered=delivered+1 WHERE name=?", (now, hook.name))
            WEBHOOK_DELIVERIES.labels(hook.name, "delivered").inc()
            return now
        nxt = now + next_delay(hook, attempts)
        give_up = nxt - row["created_at"] > float(hook.max_age)
        conn.execute("UPDATE webhook_deliveries SET state=?, attempts=?, next_attempt_at=?, last_status=?,"
                     " last_error=?, updated_at=? WHERE id=?",
                     ("failed" if give_up else "pending", attempts, nxt, status, error, now, row["id"]))
        conn.execute("UPDATE webhook_endpoints SET last_failure_at=?, last_error=?,"
                     " consecutive_failures=consecutive_failures+1, failed=failed+? WHERE name=?",
                     (now, error, 1 if give_up else 0, hook.name))
        WEBHOOK_DELIVERIES.labels(hook.name, "failed" if give_up else "retry").inc()
        if give_up:
            log.warning("webhook %s: gave up on event %s after %d attempts: %s", hook.name, row["event_id"],
                        attempts, error)
        return nxt


def endpoint_status(conn: sqlite3.Connection, hooks: list[WebhookConfig]) -> list[dict[str, Any]]:
    out = []
    for h in hooks:
        row = conn.execute("SELECT * FROM webhook_endpoints WHERE name=?", (h.name,)).fetchone()
        counts = {r[0]: r[1] for r in conn.execute(
            "SELECT state, COUNT(*) FROM webhook_deliveries WHERE endpoint=? GROUP BY state", (h.name,))}
        d = dict(row) if row else {}
        failures = d.get("consecutive_failures", 0)
        out.append({
            "name": h.name, "url": redact_url(h.url), "events": list(h.events), "enabled": h.enabled,
            "state": "unknown" if not d.get("last_success_at") and not failures else
                     ("failing" if failures else "ok"),
            "cursor": d.get("cursor"), "last_success_at": d.get("last_success_at"),
            "last_failure_at": d.get("last_failure_at"), "last_error": d.get("last_error"),
            "consecutive_failures": failures, "pending": counts.get("pending", 0),
            "delivered": counts.get("delivered", 0), "failed": counts.get("failed", 0),
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
