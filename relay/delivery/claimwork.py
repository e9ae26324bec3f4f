"""The scheduler's own SQL beside the Spool API, kept small and in one place:

- ``prefetch(conn, ...)``: in one reader round trip per claim round, which claimed addresses are
  suppressed (``relay.bounces.suppression.is_suppressed``) and the bodies of small messages;
- ``release(conn, ids, at, now)``: hand claimed recipients back to the queue without an attempt (a full
  destination backlog, or a shutdown that cancelled them): no status event, since nothing happened to
  them, and the claim's poison accounting is undone once nothing of the message is in flight.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Callable

log = logging.getLogger("relay.delivery.scheduler")


def prefetch(conn: sqlite3.Connection, addresses: set[str], body_ids: list[str],
             is_suppressed: Callable | None, now: float) -> tuple[set[str], dict[str, bytes]]:
    suppressed: set[str] = set()
    if is_suppressed is not None:
        try:
            suppressed = {a.lower() for a in addresses if is_suppressed(conn, a, now)}
        except Exception:  # noqa: BLE001 - a broken suppression check must not stop delivery
            log.exception("suppression check failed; delivering without it")
    bodies: dict[str, bytes] = {}
    for i in range(0, len(body_ids), 500):
        part = body_ids[i:i + 500]
        marks = ",".join("?" * len(part))
        for row in conn.execute(f"SELECT message_id, data FROM bodies WHERE message_id IN ({marks})", part):
            bodies[row[0]] = bytes(row[1])
    return suppressed, bodies


def release(conn: sqlite3.Connection, ids: list[int], at: float, now: float) -> int:
    mids = set()
    for rid in ids:
        row = conn.execute("SELECT message_id FROM recipients WHERE id=? AND status='sending'",
                           (rid,)).fetchone()
        if row is None:
            continue
        conn.execute("UPDATE recipients SET status='queued', next_attempt_at=?, leased_until=NULL,"
                     " lease_owner=NULL, updated_at=? WHERE id=?", (at, now, rid))
        mids.add(row["message_id"])
    for mid in mids:
        conn.execute("UPDATE messages SET crash_count = 0 WHERE id=? AND NOT EXISTS (SELECT 1 FROM"
                     " recipients WHERE message_id=? AND status='sending')", (mid, mid))
    return len(mids)
