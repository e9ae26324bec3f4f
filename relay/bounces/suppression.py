"""The suppression list: addresses relaybox will not deliver to (the scheduler fails them 'suppressed').

Rules (``apply_bounce`` / ``apply_complaint``, called by ``relay.bounces.record`` inside its write):
- a hard bounce (the address itself is unusable) suppresses for ``hard_for`` seconds (default 30 days;
  0 = forever);
- a complaint (ARF feedback, unsubscribe request) suppresses forever;
- soft bounces suppress only when ``soft_limit`` of them (default 5) arrived within ``soft_window``
  (default 7 days), counted from the ``bounces`` table; the entry then lasts ``soft_window``;
- an existing entry is never weakened: the later expiry (or "never") wins.

All functions take a ``sqlite3.Connection``: run them inside ``db.write`` / ``db.read`` (or the ``_sync``
variants offline). Addresses are stored lower-cased.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

COLUMNS = ("address", "reason", "kind", "source", "created_at", "expires_at", "note", "bounce_id")


def normalize(address: str) -> str:
    return (address or "").strip().strip("<>").strip().lower()


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _row(r: sqlite3.Row | None) -> dict[str, Any] | None:
    return {k: r[k] for k in COLUMNS} if r is not None else None


def get(conn: sqlite3.Connection, address: str, now: float | None = None) -> dict[str, Any] | None:
    """The active entry for ``address`` (expired entries do not count), or None."""
    r = conn.execute("SELECT * FROM suppressions WHERE address=? AND (expires_at IS NULL OR expires_at > ?)",
                     (normalize(address), _now(now))).fetchone()
    return _row(r)


def is_suppressed(conn: sqlite3.Connection, address: str, now: float | None = None) -> bool:
    return conn.execute("SELECT 1 FROM suppressions WHERE address=?"
                        " AND (expires_at IS NULL OR expires_at > ?)",
                        (normalize(address), _now(now))).fetchone() is not None


def add(conn: sqlite3.Connection, address: str, reason: str, kind: str, source: str, *,
        now: float | None = None, expires_at: float | None = None, note: str | None = None,
        bounce_id: int | None = None) -> dict[str, Any]:
    """Insert or strengthen an entry; returns the resulting entry. ``expires_at=None`` means never."""
    addr = normalize(address)
    if "@" not in addr or len(addr) > 320:
        raise ValueError(f"not an e-mail address: {address!r}")
    now = _now(now)
    old = conn.execute("SELECT * FROM suppressions WHERE address=?", (addr,)).fetchone()
    if old is not None and (old["expires_at"] is None or old["expires_at"] > now):
        old_exp = old["expires_at"]
        stronger = expires_at is None or (old_exp is not None and expires_at >= old_exp)
        if not stronger:
            return _row(old)  # type: ignore[return-value]
    conn.execute(
        "INSERT INTO suppressions(address, reason, kind, source, created_at, expires_at, note, bounce_id)"
        " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(address) DO UPDATE SET reason=excluded.reason,"
        " kind=excluded.kind, source=excluded.source, created_at=excluded.created_at,"
        " expires_at=excluded.expires_at, note=COALESCE(excluded.note, suppressions.note),"
        " bounce_id=excluded.bounce_id",
        (addr, reason, kind, source, now, expires_at, note, bounce_id))
    return _row(conn.execute("SELECT * FROM suppressions WHERE address=?", (addr,)).fetchone())  # type: ignore


def remove(conn: sqlite3.Connection, address: str) -> bool:
    return conn.execute("DELETE FROM suppressions WHERE address=?", (normalize(address),)).rowcount > 0


def list_entries(conn: sqlite3.Connection, *, now: float | None = None, include_expired: bool = False,
                 search: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """Entries, newest first; ``search`` is a case-insensitive substring of the address or reason."""
    sql, args = "SELECT * FROM suppressions WHERE 1=1", []
    if not include_expired:
        sql += " AND (expires_at IS NULL OR expires_at > ?)"
        args.append(_now(now))
    if search:
        like = "%" + search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        sql += " AND (address LIKE ? ESCAPE '\\' OR reason LIKE ? ESCAPE '\\')"
        args += [like, like]
    sql += " ORDER BY created_at DESC, address LIMIT ? OFFSET ?"
    args += [max(0, int(limit)), max(0, int(offset))]
    return [_row(r) for r in conn.execute(sql, args).fetchall()]  # type: ignore[misc]


def search(conn: sqlite3.Connection, text: str, *, now: float | None = None, limit: int = 100) -> list[dict]:
    return list_entries(conn, now=now, search=text, limit=limit)


def export(conn: sqlite3.Connection, *, now: float | None = None) -> list[dict[str, Any]]:
    """Every active entry, ordered by address (for backups and for loading into another system)."""
    rows = conn.execute("SELECT * FROM suppressions WHERE expires_at IS NULL OR expires_at > ?"
                        " ORDER BY address", (_now(now),)).fetchall()
    return [_row(r) for r in rows]  # type: ignore[misc]


def purge_expired(conn: sqlite3.Connection, *, now: float | None = None, limit: int = 1000) -> int:
    return conn.execute("DELETE FROM suppressions WHERE rowid IN (SELECT rowid FROM suppressions"
                        " WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?)",
                        (_now(now), limit)).rowcount


def soft_count(conn: sqlite3.Connection, address: str, since: float) -> int:
    """Soft bounces of ``address`` recorded since ``since`` (delay notices do not count)."""
    return conn.execute("SELECT COUNT(*) FROM bounces WHERE address=? AND category='bounce' AND kind='soft'"
                        " AND COALESCE(action,'') != 'delayed' AND at >= ?",
                        (normalize(address), since)).fetchone()[0]


def apply_bounce(conn: sqlite3.Connection, address: str, reason: str, kind: str, *, now: float,
                 soft_limit: int = 5, soft_window: float = 7 * 86400, hard_for: float = 30 * 86400,
                 bounce_id: int | None = None) -> str:
    """The suppression effect of one recorded bounce: 'suppressed', 'counted' (soft, below the limit)."""
    if kind == "hard":
        add(conn, address, reason, "hard", "bounce", now=now, bounce_id=bounce_id,
            expires_at=(now + hard_for) if hard_for > 0 else None)
        return "suppressed"
    if soft_count(conn, address, now - soft_window) >= soft_limit:
        add(conn, address, reason, "soft", "bounce", now=now, bounce_id=bounce_id,
            expires_at=now + soft_window,
            note=f"{soft_limit} soft bounces within {soft_window / 86400:g} days")
        return "suppressed"
    return "counted"


def apply_complaint(conn: sqlite3.Connection, address: str, *, now: float, reason: str = "feedback",
                    bounce_id: int | None = None) -> str:
    add(conn, address, reason, "complaint", "complaint", now=now, expires_at=None, bounce_id=bounce_id)
    return "suppressed"
