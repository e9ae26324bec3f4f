"""Event webhooks: endpoints' cursors over the events table and the deliveries to each endpoint.

``events`` stays the durable source. ``materialize`` turns the events after an endpoint's cursor into
delivery rows (the payload fixed at that moment, rendered by the caller) and moves the cursor in the same
transaction, so an event is neither lost nor queued twice across crashes. A new endpoint starts at the
present (no replay of history). ``deferred`` is queued once per message and endpoint.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Callable, Collection, Sequence

from store.errors import guarded
from store.records import Event, Message, event_of, message_of
from store.sqlite import Database

BATCH = 500
STATES = ("pending", "delivered", "failed")


@dataclass(frozen=True)
class OutboxEvent:
    """What a webhook payload is rendered from: the event, its message (None once pruned), the recipient."""

    event: Event
    message: Message | None
    recipient: str | None


@dataclass(frozen=True)
class PendingDelivery:
    """A delivery due to be POSTed."""

    id: int
    event_id: int
    event_type: str
    payload: str
    attempts: int
    created_at: float


@dataclass(frozen=True)
class Delivery:
    """A delivery as listed for admins (without its payload)."""

    id: int
    event_id: int
    event_type: str
    message_id: str
    state: str
    attempts: int
    next_attempt_at: float
    created_at: float
    last_status: int | None
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True)
class EndpointState:
    """Where one endpoint stands; ``cursor`` is None for an endpoint that never ran."""

    name: str
    cursor: int | None = None
    last_success_at: float | None = None
    last_failure_at: float | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    pending: int = 0
    delivered: int = 0
    failed: int = 0


def _event(row: Any) -> Event:
    try:
        return event_of(row)
    except ValueError:   # damaged details: the event still goes out, without them
        return event_of({**dict(row), "details": None})


def _outbox_event(conn: sqlite3.Connection, ev: Event) -> OutboxEvent:
    m = conn.execute("SELECT * FROM messages WHERE id=?", (ev.message_id,)).fetchone()
    rcpt = None
    if ev.recipient_id is not None:
        r = conn.execute("SELECT address FROM recipients WHERE id=?", (ev.recipient_id,)).fetchone()
        rcpt = r["address"] if r else None
    return OutboxEvent(event=ev, message=message_of(m) if m else None, recipient=rcpt)


def _materialize(conn: sqlite3.Connection, endpoint: str, wanted: Collection[str],
                 render: Callable[[OutboxEvent], str], now: float, batch: int) -> int:
    row = conn.execute("SELECT cursor FROM webhook_endpoints WHERE name=?", (endpoint,)).fetchone()
    if row is None:
        top = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
        conn.execute("INSERT INTO webhook_endpoints(name, cursor, created_at) VALUES (?,?,?)",
                     (endpoint, top, now))
        return top
    cursor = int(row["cursor"])
    events = [_event(r) for r in conn.execute("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?",
                                              (cursor, batch))]
    if not events:
        return cursor
    for ev in events:
        if ev.status not in wanted:
            continue
        if ev.status == "deferred" and conn.execute(
                "SELECT 1 FROM webhook_deliveries WHERE endpoint=? AND message_id=?"
                " AND event_type='deferred'",
                (endpoint, ev.message_id)).fetchone():
            continue
        conn.execute(
            "INSERT INTO webhook_deliveries(endpoint, event_id, event_type, message_id, payload, state,"
            " next_attempt_at, created_at, updated_at) VALUES (?,?,?,?,?,'pending',?,?,?)"
            " ON CONFLICT(endpoint, event_id) DO NOTHING",
            (endpoint, ev.id, ev.status, ev.message_id, render(_outbox_event(conn, ev)), now, ev.at, now))
    conn.execute("UPDATE webhook_endpoints SET cursor=? WHERE name=?", (events[-1].id, endpoint))
    return events[-1].id


def _states(conn: sqlite3.Connection, names: Sequence[str]) -> list[EndpointState]:
    out = []
    for name in names:
        row = conn.execute("SELECT * FROM webhook_endpoints WHERE name=?", (name,)).fetchone()
        counts = {r[0]: r[1] for r in conn.execute(
            "SELECT state, COUNT(*) FROM webhook_deliveries WHERE endpoint=? GROUP BY state", (name,))}
        known = {} if row is None else {
            "cursor": row["cursor"], "last_success_at": row["last_success_at"],
            "last_failure_at": row["last_failure_at"], "last_error": row["last_error"],
            "consecutive_failures": row["consecutive_failures"]}
        out.append(EndpointState(name=name, pending=counts.get("pending", 0),
                                 delivered=counts.get("delivered", 0), failed=counts.get("failed", 0),
                                 **known))
    return out


def _delivery(r: sqlite3.Row) -> Delivery:
    return Delivery(id=r["id"], event_id=r["event_id"], event_type=r["event_type"],
                    message_id=r["message_id"], state=r["state"], attempts=r["attempts"],
                    next_attempt_at=r["next_attempt_at"], created_at=r["created_at"],
                    last_status=r["last_status"], last_error=r["last_error"])


class WebhookOutbox:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock

    async def latest_event_id(self) -> int:
        return await self.db.read(guarded(
            lambda c: int(c.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])))

    async def materialize(self, endpoint: str, events: Collection[str], render: Callable[[OutboxEvent], str],
                          *, batch: int = BATCH) -> int:
        """Queue deliveries for the endpoint's new events of the ``events`` types; returns its new cursor.
        ``render`` makes the payload (run inside the transaction: keep it pure and quick)."""
        now = self.clock()
        wanted = frozenset(events)
        return await self.db.write(guarded(lambda c: _materialize(c, endpoint, wanted, render, now, batch)))

    async def due(self, endpoint: str, limit: int, now: float | None = None) -> list[PendingDelivery]:
        at = self.clock() if now is None else now

        def _q(conn: sqlite3.Connection) -> list[PendingDelivery]:
            return [PendingDelivery(id=r["id"], event_id=r["event_id"], event_type=r["event_type"],
                                    payload=r["payload"], attempts=r["attempts"], created_at=r["created_at"])
                    for r in conn.execute(
                        "SELECT id, event_id, event_type, payload, attempts, created_at"
                        " FROM webhook_deliveries WHERE endpoint=? AND state='pending'"
                        " AND next_attempt_at <= ? ORDER BY id LIMIT ?",
                        (endpoint, at, limit))]
        return await self.db.read(guarded(_q))

    async def delivered(self, endpoint: str, delivery_id: int, *, attempts: int, status: int | None) -> None:
        """A 2xx: the delivery is done and the endpoint healthy."""
        now = self.clock()

        def _do(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE webhook_deliveries SET state='delivered', attempts=?, last_status=?,"
                         " last_error=NULL, updated_at=? WHERE id=?", (attempts, status, now, delivery_id))
            conn.execute("UPDATE webhook_endpoints SET last_success_at=?, consecutive_failures=0,"
                         " delivered=delivered+1 WHERE name=?", (now, endpoint))
        await self.db.write(guarded(_do))

    async def attempt_failed(self, endpoint: str, delivery_id: int, *, attempts: int, status: int | None,
                             error: str, next_attempt_at: float, give_up: bool) -> None:
        """A failed POST: retried at ``next_attempt_at``, or ``failed`` for good with ``give_up``."""
        now = self.clock()

        def _do(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE webhook_deliveries SET state=?, attempts=?, next_attempt_at=?,"
                         " last_status=?, last_error=?, updated_at=? WHERE id=?",
                         ("failed" if give_up else "pending", attempts, next_attempt_at, status, error, now,
                          delivery_id))
            conn.execute("UPDATE webhook_endpoints SET last_failure_at=?, last_error=?,"
                         " consecutive_failures=consecutive_failures+1, failed=failed+? WHERE name=?",
                         (now, error, 1 if give_up else 0, endpoint))
        await self.db.write(guarded(_do))

    async def postpone(self, endpoint: str, until: float, max_age: float) -> int:
        """The endpoint is failing: its pending deliveries wait until ``until``; those older than ``max_age``
        seconds become ``failed``. Returns how many failed."""
        now = self.clock()

        def _do(conn: sqlite3.Connection) -> int:
            conn.execute("UPDATE webhook_deliveries SET next_attempt_at=?, updated_at=? WHERE endpoint=?"
                         " AND state='pending' AND next_attempt_at < ?", (until, now, endpoint, until))
            n = conn.execute("UPDATE webhook_deliveries SET state='failed',"
                             " last_error=COALESCE(last_error, '') || ' (expired after max_age)',"
                             " updated_at=? WHERE endpoint=? AND state='pending' AND created_at < ?",
                             (now, endpoint, now - max_age)).rowcount
            if n:
                conn.execute("UPDATE webhook_endpoints SET failed=failed+? WHERE name=?", (n, endpoint))
            return int(n)
        return await self.db.write(guarded(_do))

    async def retry_now(self, endpoint: str) -> int:
        """Every pending delivery of the endpoint is due now; returns how many."""
        now = self.clock()
        return await self.db.write(guarded(lambda c: int(c.execute(
            "UPDATE webhook_deliveries SET next_attempt_at=? WHERE endpoint=? AND state='pending'",
            (now, endpoint)).rowcount)))

    async def endpoint_states(self, names: Sequence[str]) -> list[EndpointState]:
        return await self.db.read(guarded(lambda c: _states(c, names)))

    async def deliveries(self, endpoint: str, *, state: str | None = None, after: int = 0,
                         limit: int = 50) -> list[Delivery]:
        if state is not None and state not in STATES:
            raise ValueError(f"state: expected one of {', '.join(STATES)}")

        def _q(conn: sqlite3.Connection) -> list[Delivery]:
            sql = ("SELECT id, event_id, event_type, message_id, state, attempts, next_attempt_at,"
                   " created_at, last_status, last_error FROM webhook_deliveries WHERE endpoint=? AND id > ?")
            args: list[Any] = [endpoint, after]
            if state:
                sql += " AND state=?"
                args.append(state)
            return [_delivery(r) for r in conn.execute(sql + " ORDER BY id LIMIT ?", (*args, limit))]
        return await self.db.read(guarded(_q))
