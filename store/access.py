"""Who may relay: the allowlist (CIDR + note + source) and the SMTP AUTH users (scrypt hashes only).

Entries carry a ``source``: ``config`` entries follow the config file (``seed``), ``api`` and ``cli`` ones
are left alone by it. Password hashes leave the store only in ``AccessSnapshot`` (what the SMTP policy
checks logins against); listings never include them.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from store.errors import Conflict, guarded
from store.sqlite import Database

__all__ = ["AccessSnapshot", "AccessStore", "AllowlistEntry", "Conflict", "SmtpUser", "parse_cidr"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AllowlistEntry:
    cidr: str
    note: str | None
    source: str
    created_at: float

    def as_dict(self) -> dict[str, Any]:
        return {"cidr": self.cidr, "note": self.note, "source": self.source, "created_at": self.created_at}


@dataclass(frozen=True)
class SmtpUser:
    """An SMTP AUTH user as listed: never the hash."""

    username: str
    note: str | None
    source: str
    created_at: float

    def as_dict(self) -> dict[str, Any]:
        return {"username": self.username, "note": self.note, "source": self.source,
                "created_at": self.created_at}


@dataclass(frozen=True)
class AccessSnapshot:
    """Everything the SMTP hooks need: the networks and the users' password hashes."""

    cidrs: tuple[str, ...] = ()
    users: Mapping[str, str] = field(default_factory=dict)


def parse_cidr(text: str) -> IPNetwork:
    """'10.0.0.0/8', '2001:db8::/32', or a single address. Raises ValueError with a clear message."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"not an IP network: {text!r} ({exc})") from None


def _check_username(username: str) -> None:
    if not username or any(c.isspace() for c in username):
        raise ValueError("username must be non-empty without spaces")


def _entry(row: sqlite3.Row) -> AllowlistEntry:
    return AllowlistEntry(cidr=row["cidr"], note=row["note"], source=row["source"],
                          created_at=row["created_at"])


def _user(row: sqlite3.Row) -> SmtpUser:
    return SmtpUser(username=row["username"], note=row["note"], source=row["source"],
                    created_at=row["created_at"])


_ADD = ("INSERT INTO allowlist(cidr, note, source, created_at) VALUES (?,?,?,?) ON CONFLICT(cidr) ")
_KEEP_NOTE = "DO UPDATE SET note=COALESCE(excluded.note, allowlist.note) "
_RETURNING = "RETURNING cidr, note, source, created_at"


def _upsert_user(conn: sqlite3.Connection, username: str, password_hash: str, note: str | None, source: str,
                 now: float) -> None:
    conn.execute("INSERT INTO smtp_users(username, password_hash, note, source, created_at)"
                 " VALUES (?,?,?,?,?) ON CONFLICT(username)"
                 " DO UPDATE SET password_hash=excluded.password_hash,"
                 " note=COALESCE(excluded.note, smtp_users.note)",
                 (username, password_hash, note, source, now))


class AccessStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock

    # ---- allowlist -------------------------------------------------------------------------------
    async def list_allowlist(self) -> list[AllowlistEntry]:
        def _q(conn: sqlite3.Connection) -> list[AllowlistEntry]:
            return [_entry(r) for r in conn.execute("SELECT cidr, note, source, created_at FROM allowlist"
                                                    " ORDER BY cidr")]
        return await self.db.read(guarded(_q))

    async def get_allowlist(self, cidr: str) -> AllowlistEntry | None:
        net = str(parse_cidr(cidr))

        def _q(conn: sqlite3.Connection) -> AllowlistEntry | None:
            row = conn.execute("SELECT cidr, note, source, created_at FROM allowlist WHERE cidr=?",
                               (net,)).fetchone()
            return None if row is None else _entry(row)
        return await self.db.read(guarded(_q))

    async def add_allowlist(self, cidr: str, note: str | None = None, source: str = "api", *,
                            exist_ok: bool = True) -> AllowlistEntry:
        """Allow a network (normalized: ``10.1.2.3/8`` is stored as ``10.0.0.0/8``). An existing entry
        keeps its source and gets the new note if one is given; with ``exist_ok=False`` it raises
        ``Conflict`` instead. Raises ValueError for text that is not a network."""
        net = str(parse_cidr(cidr))
        now = self.clock()

        def _do(conn: sqlite3.Connection) -> AllowlistEntry:
            sql = _ADD + (_KEEP_NOTE if exist_ok else "DO NOTHING ") + _RETURNING
            row = conn.execute(sql, (net, note, source, now)).fetchone()
            if row is None:
                raise Conflict(f"{net} is already on the allowlist")
            return _entry(row)
        return await self.db.write(guarded(_do))

    async def remove_allowlist(self, cidr: str) -> bool:
        net = str(parse_cidr(cidr))

        def _do(conn: sqlite3.Connection) -> bool:
            row = conn.execute("DELETE FROM allowlist WHERE cidr=? RETURNING cidr", (net,)).fetchone()
            return row is not None
        return await self.db.write(guarded(_do))

    # ---- SMTP users ------------------------------------------------------------------------------
    async def list_users(self) -> list[SmtpUser]:
        def _q(conn: sqlite3.Connection) -> list[SmtpUser]:
            return [_user(r) for r in conn.execute("SELECT username, note, source, created_at FROM smtp_users"
                                                   " ORDER BY username")]
        return await self.db.read(guarded(_q))

    async def set_user(self, username: str, password_hash: str, note: str | None = None,
                       source: str = "api") -> None:
        """Create a user or replace its password hash (the note is kept unless a new one is given)."""
        _check_username(username)
        now = self.clock()
        await self.db.write(guarded(lambda c: _upsert_user(c, username, password_hash, note, source, now)))

    async def remove_user(self, username: str) -> bool:
        def _do(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM smtp_users WHERE username=? RETURNING username",
                                (username,)).fetchone() is not None
        return await self.db.write(guarded(_do))

    # ---- config seeds and the policy snapshot ----------------------------------------------------
    async def seed(self, cidrs: Iterable[str], users: Iterable[tuple[str, str]]) -> None:
        """Config seeds: entries with source='config' follow the config file; others are left alone.
        ``users`` are (username, password hash) pairs."""
        wanted = sorted({str(parse_cidr(c)) for c in cidrs})
        accounts = list(users)
        for username, _hash in accounts:
            _check_username(username)
        now = self.clock()

        def _do(conn: sqlite3.Connection) -> None:
            for row in conn.execute("SELECT cidr FROM allowlist WHERE source='config'").fetchall():
                if row["cidr"] not in wanted:
                    conn.execute("DELETE FROM allowlist WHERE cidr=?", (row["cidr"],))
            for net in wanted:
                conn.execute(_ADD + "DO NOTHING", (net, "from config", "config", now))
            for username, pw_hash in accounts:
                _upsert_user(conn, username, pw_hash, "from config", "config", now)
        await self.db.write(guarded(_do))

    async def snapshot(self) -> AccessSnapshot:
        """The networks and the users with their hashes, read together (one consistent view)."""
        def _q(conn: sqlite3.Connection) -> AccessSnapshot:
            cidrs = tuple(r["cidr"] for r in conn.execute("SELECT cidr FROM allowlist ORDER BY cidr"))
            users = {r["username"]: r["password_hash"]
                     for r in conn.execute("SELECT username, password_hash FROM smtp_users")}
            return AccessSnapshot(cidrs=cidrs, users=users)
        return await self.db.read(guarded(_q))
