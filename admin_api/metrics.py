"""Gauges computed at scrape time from the database and the host, plus the admin side's own counters.

Counters of intake, delivery, bounces and the poller live next to the code they measure
(``relay.intake.metrics`` and friends); ``/metrics`` serves the whole default registry. The figures come from
``store.stats``.

With worker processes (relaybox/workers.py) every process writes its samples to files under
``PROMETHEUS_MULTIPROC_DIR`` and ``registry()`` is a multiprocess collector over all of them: counters and
histograms summed over the workers (dead ones included, so they never go down), gauges by their
``multiprocess_mode`` — the scrape-time gauges below come from the one process serving /metrics
("livemostrecent"). Without workers ``registry()`` is the default registry, as always.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

SCRAPE: Literal["livemostrecent"] = "livemostrecent"   # set at scrape time by the process serving /metrics
QUEUE_RECIPIENTS = Gauge("relaybox_queue_recipients", "Recipients in the spool by status", ["status"],
                         multiprocess_mode=SCRAPE)
QUEUE_MESSAGES_HELD = Gauge("relaybox_queue_held_messages", "Messages on hold", multiprocess_mode=SCRAPE)
QUEUE_OLDEST_AGE = Gauge("relaybox_queue_oldest_age_seconds",
                         "Age of the oldest message with a recipient queued, deferred or sending (0 if none)",
                         multiprocess_mode=SCRAPE)
DISK_FREE_RATIO = Gauge("relaybox_disk_free_ratio", "Free fraction of the spool's filesystem",
                        multiprocess_mode=SCRAPE)
DATABASE_SIZE = Gauge("relaybox_database_size_bytes", "Size of the SQLite database and its WAL",
                      multiprocess_mode=SCRAPE)
WEBHOOK_DELIVERIES = Counter("relaybox_webhook_deliveries", "Event webhook POSTs by endpoint and result"
                             " (delivered, retry, failed)", ["endpoint", "result"])
WEBHOOK_PENDING = Gauge("relaybox_webhook_pending_events", "Events waiting to be delivered, by endpoint",
                        ["endpoint"], multiprocess_mode=SCRAPE)
SUPPRESSIONS = Gauge("relaybox_suppressions", "Active entries of the suppression list, by kind", ["kind"],
                     multiprocess_mode=SCRAPE)
API_REQUESTS = Counter("relaybox_admin_requests", "Admin API requests by method and status class",
                       ["method", "code"])

_MULTI: CollectorRegistry | None = None


def registry() -> CollectorRegistry:
    """What /metrics serves: the default registry, or with worker processes every worker's samples."""
    global _MULTI
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return REGISTRY
    if _MULTI is None:
        from prometheus_client import multiprocess
        from prometheus_client.platform_collector import PlatformCollector
        from prometheus_client.process_collector import ProcessCollector

        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg, path)
        ProcessCollector(registry=reg)        # the serving process's own CPU and memory
        PlatformCollector(registry=reg)
        _MULTI = reg
    return _MULTI


async def refresh(app: Any, tail: Any = None) -> None:
    """Set the scrape-time gauges from the running App (``relaybox.app.App``); catch the event tail up."""
    if tail is not None:
        await tail.catch_up()
    stats = await app.store.stats.queue_stats()
    for status, n in stats.counts.items():
        QUEUE_RECIPIENTS.labels(status).set(n)
    QUEUE_MESSAGES_HELD.set(stats.held_messages)
    for kind, n in stats.suppressions.items():
        SUPPRESSIONS.labels(kind).set(n)
    QUEUE_OLDEST_AGE.set(max(0.0, stats.oldest_age))
    app.disk.ok()
    DISK_FREE_RATIO.set(app.disk.free_ratio)
    DATABASE_SIZE.set(app.store.stats.size_bytes())
    for hook in app.settings.section("webhooks") or []:
        WEBHOOK_PENDING.labels(hook.name).set(stats.webhook_pending.get(hook.name, 0))
