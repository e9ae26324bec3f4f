"""Figures for metrics and health computed from the store: gauges at scrape time, and tails of the
``events``, ``attempts`` and ``bounces`` rows by id (counters derived from the durable record).

A tail is a ``TailPosition`` (the last id seen of each table): ``tail_start()`` gives the newest rows,
``tail(position)`` the rows after it, at most ``batch`` of each table, and the position to continue from.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from store.errors import guarded
from store.postgres import dialect
from store.sqlite import Database
from store.states import Status

SUPPRESSION_KINDS = ("hard", "soft", "complaint", "manual")


@dataclass(frozen=True)
class QueueStats:
    counts: Mapping[str, int]               # recipients per status (every status present, 0 if none)
    held_messages: int
    oldest_age: float                       # seconds since the oldest message still queued/deferred/sending
    webhook_pending: Mapping[str, int]      # pending webhook deliveries by endpoint
    suppressions: Mapping[str, int]         # active suppression entries by kind


@dataclass(frozen=True)
class TailPosition:
    event_id: int = 0
    attempt_id: int = 0
    bounce_id: int = 0


@dataclass(frozen=True)
class TailEvent:
    """A recipient status change with what its metrics need: the recipient's route and the message's age."""

    id: int
    at: float
    status: str
    actor: str
    details: Mapping[str, Any] = field(default_factory=dict)
    recipient_route: str | None = None
    message_created_at: float | None = None


@dataclass(frozen=True)
class TailAttempt:
    id: int
    route: str | None
    result: str | None


@dataclass(frozen=True)
class TailBounce:
    id: int
    category: str | None
    kind: str | None
    reason: str | None


@dataclass(frozen=True)
class TailBatch:
    events: tuple[TailEvent, ...]
    attempts: tuple[TailAttempt, ...]
    bounces: tuple[TailBounce, ...]
    position: TailPosition

    @property
    def size(self) -> int:
        """The longest of the three lists: below the batch size, the tail has caught up."""
        return max(len(self.events), len(self.attempts), len(self.bounces))


def _details(text: str | None) -> Mapping[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _queue_stats(conn: sqlite3.Connection, now: float) -> QueueStats:
    counts = {s: 0 for s in Status.ALL}
    for r in conn.execute("SELECT status, n FROM queue_counts"):      # kept by triggers: no scan
        counts[r[0]] = r[1]
    held = conn.execute("SELECT COUNT(*) FROM messages WHERE held = 1").fetchone()[0]   # partial index
    # queue ids sort by creation time: the smallest waiting one is one probe of a partial index
    hint = "" if dialect(conn) == "postgresql" else " INDEXED BY recipients_waiting_msg"
    row = conn.execute("SELECT message_id FROM recipients" + hint +
                       " WHERE status IN ('queued', 'deferred', 'sending')"
                       " ORDER BY message_id LIMIT 1").fetchone()
    found = conn.execute("SELECT created_at FROM messages WHERE id=?", (row[0],)).fetchone() if row else None
    oldest = found[0] if found else None
    pending = {r[0]: r[1] for r in conn.execute(
        "SELECT endpoint, COUNT(*) FROM webhook_deliveries WHERE state='pending' GROUP BY endpoint")}
    suppressed = {k: 0 for k in SUPPRESSION_KINDS}
    for r in conn.execute("SELECT kind, COUNT(*) FROM suppressions WHERE expires_at IS NULL"
                          " OR expires_at > ? GROUP BY kind", (now,)):
        suppressed[r[0]] = r[1]
    return QueueStats(counts=counts, held_messages=held, oldest_age=(now - oldest) if oldest else 0.0,
                      webhook_pending=pending, suppressions=suppressed)


def _top(conn: sqlite3.Connection) -> TailPosition:
    def top(table: str) -> int:
        return int(conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0])
    return TailPosition(event_id=top("events"), attempt_id=top("attempts"), bounce_id=top("bounces"))


def _tail(conn: sqlite3.Connection, pos: TailPosition, batch: int) -> TailBatch:
    events = tuple(TailEvent(id=e["id"], at=e["at"], status=e["status"], actor=e["actor"],
                             details=_details(e["details"]), recipient_route=e["rroute"],
                             message_created_at=e["created"]) for e in conn.execute(
        "SELECT e.id, e.at, e.status, e.actor, e.details, r.route AS rroute, m.created_at AS created"
        " FROM events e LEFT JOIN recipients r ON r.id = e.recipient_id"
        " LEFT JOIN messages m ON m.id = e.message_id WHERE e.id > ? ORDER BY e.id LIMIT ?",
        (pos.event_id, batch)))
    attempts = tuple(TailAttempt(id=a["id"], route=a["route"], result=a["result"]) for a in conn.execute(
        "SELECT id, route, result FROM attempts WHERE id > ? ORDER BY id LIMIT ?", (pos.attempt_id, batch)))
    bounces = tuple(TailBounce(id=b["id"], category=b["category"], kind=b["kind"], reason=b["reason"])
                    for b in conn.execute("SELECT id, category, kind, reason FROM bounces WHERE id > ?"
                                          " ORDER BY id LIMIT ?", (pos.bounce_id, batch)))
    return TailBatch(events=events, attempts=attempts, bounces=bounces, position=TailPosition(
        event_id=events[-1].id if events else pos.event_id,
        attempt_id=attempts[-1].id if attempts else pos.attempt_id,
        bounce_id=bounces[-1].id if bounces else pos.bounce_id))


class Stats:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock

    async def queue_stats(self, now: float | None = None) -> QueueStats:
        """The scrape-time gauges: the queue by status, held messages, the oldest waiting message, pending
        webhook deliveries and active suppressions."""
        at = self.clock() if now is None else now
        return await self.db.read(guarded(lambda c: _queue_stats(c, at)))

    async def tail_start(self) -> TailPosition:
        """The newest ids: a tail started here counts only what happens from now on."""
        return await self.db.read(guarded(_top))

    async def tail(self, position: TailPosition, *, batch: int = 5000) -> TailBatch:
        """Rows after ``position`` (at most ``batch`` of each table) and the position after them."""
        return await self.db.read(guarded(lambda c: _tail(c, position, batch)))

    def size_bytes(self) -> int:
        """Bytes the database takes on disk (with its write-ahead log)."""
        return self.db.size_bytes()

    async def writable(self) -> bool:
        """Readiness: a tiny durable write goes through."""
        return await self.db.check_writable()
