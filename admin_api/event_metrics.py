"""Delivery metrics derived from the durable record: ``events`` and ``attempts`` rows, tailed by id.

Every recipient transition is an ``events`` row and every SMTP transaction an ``attempts`` row, written in
the same transaction as the state change, so counting them is exact and needs no hook in the delivery
engine. The tail starts at the newest rows when the admin server starts (counters count from process
start, as Prometheus expects) and catches up at every scrape, in batches.

Labels stay bounded: ``route`` is the configured route name, or ``mx`` for direct delivery (never a domain).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

from store.stats import Stats, TailBatch, TailPosition

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
OPENS = Counter("relaybox_tracking_opens", "Opened flags set per recipient ('opened' events): kind human for"
                " 'opened', machine for 'opened (machine)'", ["kind"])
CLICKS = Counter("relaybox_tracking_clicks", "First clicks of a link per recipient ('clicked' events)",
                 ["kind"])

BATCH = 5000
_RESULTS = ("delivered", "deferred", "bounced", "failed")
_ACTORS = ("smtp", "delivery", "admin", "bounce", "system", "dsn", "cli", "scheduler", "tracking")


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
    """Counters fed from the store's tail of events, attempts and bounces (``store.stats``)."""

    def __init__(self, stats: Stats):
        self.stats = stats
        self.position: TailPosition | None = None

    async def start(self) -> None:
        self.position = await self.stats.tail_start()

    async def catch_up(self) -> int:
        if self.position is None:
            await self.start()
        total = 0
        while True:
            assert self.position is not None
            batch = await self.stats.tail(self.position, batch=BATCH)
            self._count(batch)
            self.position = batch.position
            total += batch.size
            if batch.size < BATCH:
                return total

    @staticmethod
    def _count(batch: TailBatch) -> None:
        for e in batch.events:
            EVENTS.labels(e.status, _actor(e.actor)).inc()
            if e.status in ("opened", "clicked"):
                counter = OPENS if e.status == "opened" else CLICKS
                counter.labels("machine" if (e.details or {}).get("machine") else "human").inc()
            if e.status in _RESULTS and e.actor != "bounce":
                route = route_label(e.details.get("route") or e.recipient_route)
                RESULTS.labels(route, e.status).inc()
                if e.status == "delivered" and e.message_created_at is not None:
                    LATENCY.labels(route).observe(max(0.0, e.at - e.message_created_at))
        for a in batch.attempts:
            result = a.result if a.result in _RESULTS else "other"
            ATTEMPTS.labels(route_label(a.route), result).inc()
        for b in batch.bounces:
            BOUNCES.labels(_word(b.category), _word(b.kind), _word(b.reason)).inc()


def _word(value: Any) -> str:
    """A bounded label value: the bounce vocabulary is a fixed set of short words; others are 'other'."""
    text = str(value or "")
    if not text or (len(text) <= 24 and text.replace("-", "").replace("_", "").isalnum()):
        return text
    return "other"

