"""The intake rejection log ("outgoing traffic errors"): transactions and recipients refused at SMTP time.

    n = await store.rejections.add([NewRejection(at, client_ip, auth_user, sender, recipient, ...)])
    rows = await store.rejections.list({"sender": "app@", "reason": "relay_denied"}, since=..., limit=50)
    gone = await store.rejections.prune(keep=7 * 86400, max_rows=100_000)

Bounded space: ``add`` folds a rejection into the newest row of the same client, reason and sender whose
first rejection is less than ``FLOOD_WINDOW`` seconds older (``count`` goes up, ``last_at`` moves), so a
flood is one row a minute; ``prune`` deletes rows older than ``keep`` and then the oldest beyond
``max_rows``. Intake never calls the store from its hooks: ``relay.intake.rejections.RejectionLog`` buffers
in memory and writes a batch a second.
"""

from __future__ import annotations

import builtins
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from store.sqlite import Database

Conn = sqlite3.Connection
FLOOD_WINDOW = 60.0
COLUMNS = ("id", "first_at", "last_at", "count", "client_ip", "auth_user", "sender", "recipient", "command",
           "code", "enhanced", "reason", "text")
# filter -> (column, exact match?)
FILTERS = {"sender": ("sender", False), "recipient": ("recipient", False), "client": ("client_ip", True),
           "reason": ("reason", True), "auth_user": ("auth_user", True), "command": ("command", True)}


@dataclass(frozen=True)
class NewRejection:
    """One refusal as intake saw it (``count`` > 1 when the buffer already folded several)."""

    at: float
    client_ip: str
    code: int
    reason: str
    auth_user: str = ""
    sender: str = ""
    recipient: str = ""
    command: str = ""
    enhanced: str = ""
    text: str = ""
    count: int = 1
    last_at: float | None = None


@dataclass(frozen=True)
class Rejection:
    """One ``rejections`` row: ``count`` refusals from ``first_at`` to ``last_at``."""

    id: int
    first_at: float
    last_at: float
    count: int
    client_ip: str
    auth_user: str
    sender: str
    recipient: str
    command: str
    code: int
    enhanced: str
    reason: str
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in COLUMNS}


def _row(r: Mapping[str, Any]) -> Rejection:
    return Rejection(**{k: r[k] for k in COLUMNS})


def _like(value: str) -> str:
    return "%" + value.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def add_sync(conn: Conn, items: Sequence[NewRejection]) -> int:
    """Insert or fold each item; returns how many rows were inserted."""
    inserted = 0
    for it in items:
        last = it.at if it.last_at is None else max(it.at, it.last_at)
        row = conn.execute(
            "SELECT id FROM rejections WHERE client_ip=? AND reason=? AND sender=? AND first_at >= ?"
            " ORDER BY id DESC LIMIT 1",
            (it.client_ip, it.reason, it.sender, it.at - FLOOD_WINDOW)).fetchone()
        if row is not None:
            conn.execute("UPDATE rejections SET count=count+?, last_at=CASE WHEN last_at > ? THEN last_at"
                         " ELSE ? END WHERE id=?", (it.count, last, last, row["id"]))
            continue
        conn.execute(
            "INSERT INTO rejections(first_at, last_at, count, client_ip, auth_user, sender, recipient,"
            " command, code, enhanced, reason, text) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (it.at, last, it.count, it.client_ip, it.auth_user, it.sender, it.recipient, it.command, it.code,
             it.enhanced, it.reason, it.text))
        inserted += 1
    return inserted


def prune_sync(conn: Conn, *, now: float, keep: float, max_rows: int) -> int:
    gone = int(conn.execute("DELETE FROM rejections WHERE last_at < ?", (now - keep,)).rowcount)
    cut = conn.execute("SELECT id FROM rejections ORDER BY id DESC LIMIT 1 OFFSET ?",
                       (max(0, max_rows),)).fetchone()
    if cut is not None:
        gone += int(conn.execute("DELETE FROM rejections WHERE id <= ?", (cut["id"],)).rowcount)
    return gone


class RejectionStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock

    async def add(self, items: Sequence[NewRejection]) -> int:
        """One write for a batch of refusals (floods folded into their row)."""
        batch = builtins.list(items)
        if not batch:
            return 0
        return await self.db.write(lambda conn: add_sync(conn, batch))

    async def list(self, filters: Mapping[str, str], *, since: float | None = None,
                   until: float | None = None, before: int | None = None,
                   limit: int = 50) -> builtins.list[Rejection]:
        """Newest first. ``sender`` and ``recipient`` match a case-insensitive substring; ``client``,
        ``reason``, ``auth_user`` and ``command`` match exactly."""
        sql, args = "SELECT * FROM rejections WHERE 1=1", builtins.list[Any]()
        for k, v in filters.items():
            if k not in FILTERS:
                raise ValueError(f"not a rejection filter: {k}")
            column, exact = FILTERS[k]
            if exact:
                sql += f" AND {column} = ?"
                args.append(v.upper() if k == "command" else v)
            else:
                sql += f" AND lower({column}) LIKE ? ESCAPE '\\'"
                args.append(_like(v))
        conds = ((" AND last_at >= ?", since), (" AND first_at < ?", until), (" AND id < ?", before))
        for cond, value in conds:
            if value is not None:
                sql += cond
                args.append(value)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(max(0, int(limit)))
        return await self.db.read(lambda conn: [_row(r) for r in conn.execute(sql, args)])

    async def prune(self, *, keep: float, max_rows: int) -> int:
        """Delete rows whose last refusal is older than ``keep`` seconds, then the oldest beyond
        ``max_rows``; returns how many went."""
        now = self.clock()
        return await self.db.write(lambda conn: prune_sync(conn, now=now, keep=keep, max_rows=max_rows))
