"""Open and click tracking: what the tracking listener recorded, per recipient.

    results = await store.tracking.record([Hit("open", qid, rid, at, user_agent, reason)], machine_window=10)
    opens = await store.tracking.opens(qid)          # {recipient_id: Opens}
    clicks = await store.tracking.clicks(qid)        # [Click]
    flags = await store.tracking.flags([qid, ...])   # {qid: {"opened": n, "opened_machine": m}}

``record`` is one write for a batch of hits. A hit counts only for a recipient that exists under that
message (the token was checked by the caller; a pruned or deleted message records nothing). An open is a
machine's when the request said so (``Hit.reason``: an image proxy, a scanner's user agent, Apple's
network) or when it came less than ``machine_window`` seconds after the recipient's delivery (scanners and
pre-fetchers fetch within seconds; an open before the delivery was even recorded is one too). The flag of a
recipient is "opened" once a load not marked as a machine's was recorded, "opened (machine)" while every
load was a machine's. Events: ``opened`` at a recipient's first open, and once more at its first human open
after machine ones (``details.machine`` tells which); ``clicked`` at the first click of each URL. Rows go
with the message (ON DELETE CASCADE, migration 0008), so retention needs nothing more.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from store.errors import guarded
from store.messages import add_event
from store.sqlite import Database

Conn = sqlite3.Connection
ACTOR = "tracking"
AGENT_KEEP = 200
URL_KEEP = 2000
OPENED = "opened"
OPENED_MACHINE = "opened (machine)"


@dataclass(frozen=True)
class Hit:
    """One request to the tracking listener with a valid token."""

    kind: str                      # "open" | "click"
    queue_id: str
    recipient_id: int
    at: float
    user_agent: str = ""
    reason: str | None = None      # why the request itself looks like a machine's; None: nothing says so
    url: str | None = None         # clicks


@dataclass(frozen=True)
class Recorded:
    """What ``record`` did with one hit."""

    hit: Hit
    recorded: bool                 # False: no such recipient (pruned, deleted)
    machine: bool = False
    reason: str | None = None      # the machine reason, "prefetch" for one judged by time
    event: str | None = None       # the event written ("opened" / "clicked"), if any


@dataclass(frozen=True)
class Opens:
    """A recipient's opens."""

    recipient_id: int
    message_id: str
    first_at: float
    last_at: float
    opens: int
    human_opens: int
    machine_opens: int
    human_first_at: float | None
    last_user_agent: str | None
    last_reason: str | None

    @property
    def flag(self) -> str:
        return OPENED if self.human_opens else OPENED_MACHINE

    def as_dict(self) -> dict[str, Any]:
        return {"flag": self.flag, "first_at": self.first_at, "last_at": self.last_at, "count": self.opens,
                "human_count": self.human_opens, "machine_count": self.machine_opens,
                "human_first_at": self.human_first_at, "last_user_agent": self.last_user_agent,
                "last_machine_reason": self.last_reason}


@dataclass(frozen=True)
class Click:
    recipient_id: int
    message_id: str
    url: str
    first_at: float
    last_at: float
    clicks: int
    machine_clicks: int

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "first_at": self.first_at, "last_at": self.last_at, "count": self.clicks,
                "machine_count": self.machine_clicks}


def _opens_of(row: Mapping[str, Any]) -> Opens:
    return Opens(**{k: row[k] for k in Opens.__dataclass_fields__})


def _click_of(row: Mapping[str, Any]) -> Click:
    return Click(**{k: row[k] for k in Click.__dataclass_fields__})


def _delivered_at(conn: Conn, hit: Hit) -> float | None:
    """When the recipient was delivered (its last 'delivered' event), else when it was last touched (an
    open racing the commit of its delivery, or a server that got the mail while we saw an error); None when
    the recipient is not one of that message's."""
    row = conn.execute("SELECT updated_at FROM recipients WHERE id=? AND message_id=?",
                       (hit.recipient_id, hit.queue_id)).fetchone()
    if row is None:
        return None
    ev = conn.execute("SELECT MAX(at) FROM events WHERE message_id=? AND recipient_id=?"
                      " AND status='delivered'", (hit.queue_id, hit.recipient_id)).fetchone()
    return float(ev[0]) if ev and ev[0] is not None else float(row["updated_at"])


def _record_open(conn: Conn, hit: Hit, machine: bool, reason: str | None) -> str | None:
    prev = conn.execute("SELECT human_opens FROM tracking_opens WHERE recipient_id=?",
                        (hit.recipient_id,)).fetchone()
    human = 0 if machine else 1
    conn.execute(
        "INSERT INTO tracking_opens(recipient_id, message_id, first_at, last_at, opens, human_opens,"
        " machine_opens, human_first_at, last_user_agent, last_reason) VALUES (?,?,?,?,1,?,?,?,?,?)"
        " ON CONFLICT(recipient_id) DO UPDATE SET"
        " first_at = CASE WHEN excluded.first_at < tracking_opens.first_at THEN excluded.first_at"
        " ELSE tracking_opens.first_at END,"
        " last_at = CASE WHEN excluded.last_at > tracking_opens.last_at THEN excluded.last_at"
        " ELSE tracking_opens.last_at END,"
        " opens = tracking_opens.opens + 1,"
        " human_opens = tracking_opens.human_opens + excluded.human_opens,"
        " machine_opens = tracking_opens.machine_opens + excluded.machine_opens,"
        " human_first_at = COALESCE(tracking_opens.human_first_at, excluded.human_first_at),"
        " last_user_agent = excluded.last_user_agent,"
        " last_reason = COALESCE(excluded.last_reason, tracking_opens.last_reason)",
        (hit.recipient_id, hit.queue_id, hit.at, hit.at, human, 1 - human, None if machine else hit.at,
         hit.user_agent[:AGENT_KEEP] or None, reason))
    if prev is not None and (machine or prev["human_opens"]):
        return None                       # neither a first open nor the first human one
    details: dict[str, Any] = {"machine": machine, "first": prev is None}
    if reason:
        details["reason"] = reason
    add_event(conn, hit.at, hit.queue_id, hit.recipient_id, OPENED, ACTOR,
              OPENED_MACHINE if machine else OPENED, details)
    return OPENED


def _record_click(conn: Conn, hit: Hit, machine: bool, reason: str | None) -> str | None:
    url = (hit.url or "")[:URL_KEEP]
    cur = conn.execute(
        "INSERT INTO tracking_clicks(recipient_id, message_id, url, first_at, last_at, clicks,"
        " machine_clicks) VALUES (?,?,?,?,?,1,?) ON CONFLICT(recipient_id, url) DO UPDATE SET"
        " last_at = CASE WHEN excluded.last_at > tracking_clicks.last_at THEN excluded.last_at"
        " ELSE tracking_clicks.last_at END, clicks = tracking_clicks.clicks + 1,"
        " machine_clicks = tracking_clicks.machine_clicks + excluded.machine_clicks"
        " RETURNING clicks", (hit.recipient_id, hit.queue_id, url, hit.at, hit.at, 1 if machine else 0))
    if cur.fetchone()[0] != 1:
        return None
    details: dict[str, Any] = {"url": url, "machine": machine}
    if reason:
        details["reason"] = reason
    add_event(conn, hit.at, hit.queue_id, hit.recipient_id, "clicked", ACTOR, None, details)
    return "clicked"


def _record(conn: Conn, hits: Sequence[Hit], window: float) -> list[Recorded]:
    out = []
    for hit in hits:
        delivered = _delivered_at(conn, hit)
        if delivered is None:
            out.append(Recorded(hit, False))
            continue
        reason = hit.reason
        if reason is None and hit.at - delivered < window:
            reason = "prefetch"
        machine = reason is not None
        record = _record_open if hit.kind == "open" else _record_click
        event = record(conn, hit, machine, reason)
        out.append(Recorded(hit, True, machine, reason, event))
    return out


class TrackingStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock

    async def record(self, hits: Sequence[Hit], *, machine_window: float = 10.0) -> list[Recorded]:
        """Record a batch of opens and clicks in one write (see the module's docstring)."""
        batch = list(hits)
        if not batch:
            return []
        return await self.db.write(guarded(lambda conn: _record(conn, batch, machine_window)))

    async def opens(self, message_id: str) -> dict[int, Opens]:
        def _q(conn: Conn) -> dict[int, Opens]:
            return {r["recipient_id"]: _opens_of(r) for r in conn.execute(
                "SELECT * FROM tracking_opens WHERE message_id=? ORDER BY recipient_id", (message_id,))}

        return await self.db.read(guarded(_q))

    async def clicks(self, message_id: str) -> list[Click]:
        def _q(conn: Conn) -> list[Click]:
            return [_click_of(r) for r in conn.execute(
                "SELECT * FROM tracking_clicks WHERE message_id=? ORDER BY recipient_id, first_at",
                (message_id,))]

        return await self.db.read(guarded(_q))

    async def flags(self, message_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Per message: how many recipients are "opened" and how many "opened (machine)"."""
        ids = list(dict.fromkeys(message_ids))

        def _q(conn: Conn) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                marks = ",".join("?" * len(part))
                for r in conn.execute(
                        "SELECT message_id, SUM(CASE WHEN human_opens > 0 THEN 1 ELSE 0 END) AS human,"
                        " SUM(CASE WHEN human_opens = 0 THEN 1 ELSE 0 END) AS machine FROM tracking_opens"
                        f" WHERE message_id IN ({marks}) GROUP BY message_id", part):
                    out[r["message_id"]] = {"opened": int(r["human"]), "opened_machine": int(r["machine"])}
            return out

        return await self.db.read(guarded(_q))
