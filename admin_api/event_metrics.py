"""Delivery metrics derived from the durable record: ``events`` and ``attempts`` rows, tailed by id.

Every recipient transition is an ``events`` row and every SMTP transaction an ``attempts`` row, written in
the same transaction as the state change, so counting them is exact and needs no hook in the delivery
engine. The tail starts at the newest rows when the admin server starts (counters count from process
start, as Prometheus expects) and catches up at every scrape, in batches.

Labels stay bounded: ``route`` is the configured route name, or ``mx`` for direct delivery (never a domain).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from prometheus_client import Counter, Histogram

RESULTS = Counter("relaybox_delivery_results", "Recipient delivery results by route and result",
                  ["route", "result"])
ATTEMPTS = Counter("relaybox_delivery_attempts", "SMTP delivery transactions by route and result",
                   ["route", "result"])
LATENCY = Histogram("relaybox_delivery_latency_seconds", "Time from acceptance to delivery, per recipient",
                    ["route"], buckets=(0.1, 0.5, 1, 2.5, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600,
                                        86400, 5 * 86400))
BOUNCES = Counter("relaybox_bounces", "Bounce and complaint reports recorded, by category, kind and reason",
                  ["category", "kind", "reason"])
EVENTS = Counter("relaybox_message_events", "Recipient status transitions by new status and actor kind",
                 ["status", "actor"])

BATCH = 5000
_RESULTS = ("delivered", "deferred", "bounced", "failed")
_ACTORS = ("smtp", "delivery", "admin", "bounce", "system", "dsn", "cli", "scheduler")


def route_label(route: Any) -> str:
    if not route:
        return "mx"
    text = str(route)
    if text.startswith("route:"):
        return text[6:][:64]
    if text.startswith("mx"):
        return "mx"
    return text[:64]


def _actor(actor: str | None) -> str:
    kind = (actor or "").split(":", 1)[0]
    return kind if kind in _ACTORS else "other"


class EventTail:
    def __init__(self, db: Any):
        self.db = db
        self.event_id: int | None = None
        self.attempt_id: int | None = None
        self.bounce_id: int | None = None

    async def start(self) -> None:
        def _top(conn):
            return (conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0],
                    conn.execute("SELECT COALESCE(MAX(id), 0) FROM attempts").fetchone()[0])

        self.event_id, self.attempt_id = await self.db.read(_top)
        self.bounce_id = await self.db.read(_max_bounce)

    async def catch_up(self) -> int:
        if self.event_id is None:
            await self.start()
        total = 0
        while True:
            n = await self.db.read(self._step)
            total += n
            if n < BATCH:
                return total

    def _step(self, conn: sqlite3.Connection) -> int:
        rows = conn.execute(
            "SELECT e.id, e.at, e.status, e.actor, e.details, r.route AS rroute, m.created_at AS created"
            " FROM events e LEFT JOIN recipients r ON r.id = e.recipient_id"
            " LEFT JOIN messages m ON m.id = e.message_id WHERE e.id > ? ORDER BY e.id LIMIT ?",
            (self.event_id, BATCH)).fetchall()
        for e in rows:
            EVENTS.labels(e["status"], _actor(e["actor"])).inc()
            if e["status"] in _RESULTS and e["actor"] != "bounce":
                try:
                    details = json.loads(e["details"]) if e["details"] else {}
                except ValueError:
                    details = {}
                route = route_label(details.get("route") or e["rroute"])
                RESULTS.labels(route, e["status"]).inc()
                if e["status"] == "delivered" and e["created"] is not None:
                    LATENCY.labels(route).observe(max(0.0, e["at"] - e["created"]))
        if rows:
            self.event_id = rows[-1]["id"]
        att = conn.execute("SELECT id, route, result FROM attempts WHERE id > ? ORDER BY id LIMIT ?",
                           (self.attempt_id, BATCH)).fetchall()
        for a in att:
            result = a["result"] if a["result"] in _RESULTS else "other"
            ATTEMPTS.labels(route_label(a["route"]), result).inc()
        if att:
            self.attempt_id = att[-1]["id"]
        bounces = self._bounces(conn)
        return max(len(rows), len(att), bounces)

    def _bounces(self, conn: sqlite3.Connection) -> int:
        if self.bounce_id is None:      # no bounces table (bounce processing not installed)
            return 0
        rows = conn.execute("SELECT id, category, kind, reason FROM bounces WHERE id > ? ORDER BY id LIMIT ?",
                            (self.bounce_id, BATCH)).fetchall()
        for b in rows:
            BOUNCES.labels(_word(b["category"]), _word(b["kind"]), _word(b["reason"])).inc()
        if rows:
            self.bounce_id = rows[-1]["id"]
        return len(rows)


def _word(value: Any) -> str:
    """A bounded label value: the bounce vocabulary is a fixed set of short words; others are 'other'."""
    text = str(value or "")
    if not text or (len(text) <= 24 and text.replace("-", "").replace("_", "").isalnum()):
        return text
    return "other"


def _max_bounce(conn: sqlite3.Connection) -> int | None:
    try:
        return conn.execute("SELECT COALESCE(MAX(id), 0) FROM bounces").fetchone()[0]
    except sqlite3.OperationalError:
        return None
