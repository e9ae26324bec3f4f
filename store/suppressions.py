"""The suppression list's SQL: addresses relaybox will not deliver to (the scheduler fails them 'suppressed').

Rules (``apply_bounce`` / ``apply_complaint``, run inside the write that records a bounce):
- a hard bounce (the address itself is unusable) suppresses for ``hard_for`` seconds (default 30 days;
  0 = forever);
- a complaint (ARF feedback, unsubscribe request) suppresses forever;
- soft bounces suppress only when ``soft_limit`` of them (default 5) arrived within ``soft_window``
  (default 7 days), counted from the ``bounces`` table; the entry then lasts ``soft_window``;
- an existing entry is never weakened: the later expiry (or "never") wins.

Functions take a connection of the writer or a reader (``store.bounces.BounceStore`` is the async face).
Addresses are stored lower-cased.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Mapping

Conn = sqlite3.Connection
COLUMNS = ("address", "reason", "kind", "source", "created_at", "expires_at", "note", "bounce_id")


@dataclass(frozen=True)
class Suppression:
    address: str
    reason: str
    kind: str                    # hard | soft | complaint | manual
    source: str                  # bounce | complaint | cli | api | ...
    created_at: float
    expires_at: float | None     # None = never
    note: str | None = None
    bounce_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in COLUMNS}


@dataclass(frozen=True)
class Rules:
    """When bounces suppress an address (``[bounces]`` of the config)."""

    soft_limit: int = 5
    soft_window: float = 7 * 86400
    hard_for: float = 30 * 86400


def normalize(address: str) -> str:
    return (address or "").strip().strip("<>").strip().lower()


def _entry(r: Mapping[str, Any] | None) -> Suppression | None:
    return Suppression(**{k: r[k] for k in COLUMNS}) if r is not None else None


def get(conn: Conn, address: str, now: float) -> Suppression | None:
    """The active entry for ``address`` (expired entries do not count), or None."""
    return _entry(conn.execute("SELECT * FROM suppressions WHERE address=? AND (expires_at IS NULL OR"
                               " expires_at > ?)", (normalize(address), now)).fetchone())


def is_suppressed(conn: Conn, address: str, now: float) -> bool:
    return conn.execute("SELECT 1 FROM suppressions WHERE address=?"
                        " AND (expires_at IS NULL OR expires_at > ?)",
                        (normalize(address), now)).fetchone() is not None


def add(conn: Conn, address: str, reason: str, kind: str, source: str, *, now: float,
        expires_at: float | None = None, note: str | None = None,
        bounce_id: int | None = None) -> Suppression:
    """Insert or strengthen an entry; returns the resulting entry. ``expires_at=None`` means never."""
    addr = normalize(address)
    if "@" not in addr or len(addr) > 320:
        raise ValueError(f"not an e-mail address: {address!r}")
    old = conn.execute("SELECT * FROM suppressions WHERE address=?", (addr,)).fetchone()
    if old is not None and (old["expires_at"] is None or old["expires_at"] > now):
        old_exp = old["expires_at"]
        stronger = expires_at is None or (old_exp is not None and expires_at >= old_exp)
        if not stronger:
            return Suppression(**{k: old[k] for k in COLUMNS})
    conn.execute(
        "INSERT INTO suppressions(address, reason, kind, source, created_at, expires_at, note, bounce_id)"
        " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(address) DO UPDATE SET reason=excluded.reason,"
        " kind=excluded.kind, source=excluded.source, created_at=excluded.created_at,"
        " expires_at=excluded.expires_at, note=COALESCE(excluded.note, suppressions.note),"
        " bounce_id=excluded.bounce_id",
        (addr, reason, kind, source, now, expires_at, note, bounce_id))
    row = conn.execute("SELECT * FROM suppressions WHERE address=?", (addr,)).fetchone()
    return Suppression(**{k: row[k] for k in COLUMNS})


def remove(conn: Conn, address: str) -> bool:
    return bool(conn.execute("DELETE FROM suppressions WHERE address=?", (normalize(address),)).rowcount > 0)


def list_entries(conn: Conn, *, now: float, include_expired: bool = False, search: str | None = None,
                 limit: int = 100, offset: int = 0) -> list[Suppression]:
    """Entries, newest first; ``search`` is a case-insensitive substring of the address or reason."""
    sql, args = "SELECT * FROM suppressions WHERE 1=1", list[Any]()
    if not include_expired:
        sql += " AND (expires_at IS NULL OR expires_at > ?)"
        args.append(now)
    if search:
        like = "%" + search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        sql += " AND (address LIKE ? ESCAPE '\\' OR reason LIKE ? ESCAPE '\\')"
        args += [like, like]
    sql += " ORDER BY created_at DESC, address LIMIT ? OFFSET ?"
    args += [max(0, int(limit)), max(0, int(offset))]
    return [Suppression(**{k: r[k] for k in COLUMNS}) for r in conn.execute(sql, args).fetchall()]


def export(conn: Conn, *, now: float) -> list[Suppression]:
    """Every active entry, ordered by address (for backups and for loading into another system)."""
    rows = conn.execute("SELECT * FROM suppressions WHERE expires_at IS NULL OR expires_at > ?"
                        " ORDER BY address", (now,)).fetchall()
    return [Suppression(**{k: r[k] for k in COLUMNS}) for r in rows]


def purge_expired(conn: Conn, *, now: float, limit: int = 1000) -> int:
    return int(conn.execute("DELETE FROM suppressions WHERE address IN (SELECT address FROM suppressions"
                            " WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?)",
                            (now, limit)).rowcount)


def soft_count(conn: Conn, address: str, since: float) -> int:
    """Soft bounces of ``address`` recorded since ``since`` (delay notices do not count)."""
    return int(conn.execute("SELECT COUNT(*) FROM bounces WHERE address=? AND category='bounce'"
                            " AND kind='soft' AND COALESCE(action,'') != 'delayed' AND at >= ?",
                            (normalize(address), since)).fetchone()[0])


def apply_bounce(conn: Conn, address: str, reason: str, kind: str, *, now: float, rules: Rules,
                 bounce_id: int | None = None) -> str:
    """The suppression effect of one recorded bounce: 'suppressed', 'counted' (soft, below the limit)."""
    if kind == "hard":
        add(conn, address, reason, "hard", "bounce", now=now, bounce_id=bounce_id,
            expires_at=(now + rules.hard_for) if rules.hard_for > 0 else None)
        return "suppressed"
    if soft_count(conn, address, now - rules.soft_window) >= rules.soft_limit:
        add(conn, address, reason, "soft", "bounce", now=now, bounce_id=bounce_id,
            expires_at=now + rules.soft_window,
            note=f"{rules.soft_limit} soft bounces within {rules.soft_window / 86400:g} days")
        return "suppressed"
    return "counted"


def apply_complaint(conn: Conn, address: str, *, now: float, reason: str = "feedback",
                    bounce_id: int | None = None) -> str:
    add(conn, address, reason, "complaint", "complaint", now=now, expires_at=None, bounce_id=bounce_id)
    return "suppressed"
