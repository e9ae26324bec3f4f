"""Gauges computed at scrape time from the database and the host, plus the admin side's own counters.

Counters of intake, delivery, bounces and the poller live next to the code they measure (``relay.intake.metrics``
and friends); ``/metrics`` serves the whole default registry.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from prometheus_client import Counter, Gauge

from relay.envelope import Status

QUEUE_RECIPIENTS = Gauge("relaybox_queue_recipients", "Recipients in the spool by status", ["status"])
QUEUE_MESSAGES_HELD = Gauge("relaybox_queue_held_messages", "Messages on hold")
QUEUE_OLDEST_AGE = Gauge("relaybox_queue_oldest_age_seconds",
                         "Age of the oldest message with a recipient queued, deferred or sending (0 if none)")
DISK_FREE_RATIO = Gauge("relaybox_disk_free_ratio", "Free fraction of the spool's filesystem")
DATABASE_SIZE = Gauge("relaybox_database_size_bytes", "Size of the SQLite database and its WAL")
WEBHOOK_DELIVERIES = Counter("relaybox_webhook_deliveries", "Event webhook POSTs by endpoint and result"
                             " (delivered, retry, failed)", ["endpoint", "result"])
WEBHOOK_PENDING = Gauge("relaybox_webhook_pending_events", "Events waiting to be delivered, by endpoint",
                        ["endpoint"])
SUPPRESSIONS = Gauge("relaybox_suppressions", "Active entries of the suppression list, by kind", ["kind"])
API_REQUESTS = Counter("relaybox_admin_requests", "Admin API requests by method and status class",
                       ["method", "code"])


def _queue_stats(conn: sqlite3.Connection, now: float) -> dict[str, Any]:
    counts = {s: 0 for s in Status.ALL}
    for r in conn.execute("SELECT status, COUNT(*) FROM recipients GROUP BY status"):
        counts[r[0]] = r[1]
    held = conn.execute("SELECT COUNT(*) FROM messages WHERE held=1").fetchone()[0]
    # driven by the (status, next_attempt_at) index: cost follows the active queue, not the retained history
    oldest = conn.execute("SELECT MIN(m.created_at) FROM recipients r JOIN messages m ON m.id = r.message_id"
                          " WHERE r.status IN ('queued','deferred','sending')").fetchone()[0]
    pending: dict[str, int] = {}
    try:
        for r in conn.execute("SELECT endpoint, COUNT(*) FROM webhook_deliveries WHERE state='pending'"
                              " GROUP BY endpoint"):
            pending[r[0]] = r[1]
    except sqlite3.OperationalError:   # before migration m0005
        pass
    suppressed: dict[str, int] | None = None
    try:
        suppressed = {k: 0 for k in ("hard", "soft", "complaint", "manual")}
        for r in conn.execute("SELECT kind, COUNT(*) FROM suppressions WHERE expires_at IS NULL"
                              " OR expires_at > ? GROUP BY kind", (now,)):
            suppressed[r[0]] = r[1]
    except sqlite3.OperationalError:   # bounce processing not installed
        suppressed = None
    return {"counts": counts, "held": held, "oldest": (now - oldest) if oldest else 0.0, "pending": pending,
            "suppressed": suppressed}


async def refresh(app: Any, tail: Any = None) -> None:
    """Set the scrape-time gauges from the running App (``relaybox.app.App``); catch the event tail up."""
    if tail is not None:
        await tail.catch_up()
    now = time.time()
    stats = await app.db.read(lambda c: _queue_stats(c, now))
    for status, n in stats["counts"].items():
        QUEUE_RECIPIENTS.labels(status).set(n)
    QUEUE_MESSAGES_HELD.set(stats["held"])
    for kind, n in (stats["suppressed"] or {}).items():
        SUPPRESSIONS.labels(kind).set(n)
    QUEUE_OLDEST_AGE.set(max(0.0, stats["oldest"]))
    app.disk.ok()
    DISK_FREE_RATIO.set(app.disk.free_ratio)
    DATABASE_SIZE.set(app.db.size_bytes())
    for hook in app.settings.section("webhooks") or []:
        WEBHOOK_PENDING.labels(hook.name).set(stats["pending"].get(hook.name, 0))
