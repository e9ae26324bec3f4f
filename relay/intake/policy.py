"""Who may relay: the allowlist of CIDRs and the SMTP AUTH users, both kept in the database.

The SMTP hooks must not do I/O, so the policy keeps an in-memory snapshot and refreshes it from the
database (after an admin change, and every few seconds so offline CLI changes apply without a restart).
Passwords are stored as scrypt hashes; a successful verification is remembered (keyed by a process-local
HMAC of user and password, never the password itself) so AUTH does not cost 50 ms every session.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import os
import sqlite3
import time
from typing import Iterable

from relay.tasks import cancel_and_wait
from store.sqlite import Database

log = logging.getLogger("relay.intake.policy")

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt${n}${r}${p}${salt}${dk}".format(
        salt=base64.b64encode(salt).decode(), dk=base64.b64encode(dk).decode(), **_SCRYPT)


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, dk = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), dklen=32,
                             n=int(n), r=int(r), p=int(p))
        return hmac.compare_digest(got, base64.b64decode(dk))
    except (ValueError, TypeError):
        return False


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """'10.0.0.0/8', '2001:db8::/32', or a single address. Raises ValueError with a clear message."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"not an IP network: {text!r} ({exc})") from None


# ---- database operations (run inside db.write / db.read) ------------------------------------------
def allowlist_add(conn: sqlite3.Connection, cidr: str, note: str | None = None, source: str = "api") -> str:
    net = str(parse_cidr(cidr))
    conn.execute("INSERT INTO allowlist(cidr, note, source, created_at) VALUES (?,?,?,?) "
                 "ON CONFLICT(cidr) DO UPDATE SET note=COALESCE(excluded.note, note)",
                 (net, note, source, time.time()))
    return net


def allowlist_remove(conn: sqlite3.Connection, cidr: str) -> bool:
    net = str(parse_cidr(cidr))
    return conn.execute("DELETE FROM allowlist WHERE cidr=?", (net,)).rowcount > 0


def allowlist_list(conn: sqlite3.Connection) -> list[dict]:
    return [dict(r) for r in conn.execute("SELECT cidr, note, source, created_at FROM allowlist ORDER BY cidr")]


def user_set(conn: sqlite3.Connection, username: str, password_hash: str, note: str | None = None,
             source: str = "api") -> None:
    if not username or any(c.isspace() for c in username):
        raise ValueError("username must be non-empty without spaces")
    conn.execute("INSERT INTO smtp_users(username, password_hash, note, source, created_at) VALUES (?,?,?,?,?)"
                 " ON CONFLICT(username) DO UPDATE SET password_hash=excluded.password_hash,"
                 " note=COALESCE(excluded.note, note)", (username, password_hash, note, source, time.time()))


def user_remove(conn: sqlite3.Connection, username: str) -> bool:
    return conn.execute("DELETE FROM smtp_users WHERE username=?", (username,)).rowcount > 0


def user_list(conn: sqlite3.Connection) -> list[dict]:
    """Users without their hashes (never printed)."""
    return [dict(r) for r in conn.execute("SELECT username, note, source, created_at FROM smtp_users"
                                          " ORDER BY username")]


def seed(conn: sqlite3.Connection, cidrs: Iterable[str], users: Iterable[tuple[str, str]]) -> None:
    """Config seeds: entries with source='config' follow the config file; others are left alone."""
    wanted = {str(parse_cidr(c)) for c in cidrs}
    for row in conn.execute("SELECT cidr FROM allowlist WHERE source='config'").fetchall():
        if row["cidr"] not in wanted:
            conn.execute("DELETE FROM allowlist WHERE cidr=?", (row["cidr"],))
    for c in wanted:
        conn.execute("INSERT OR IGNORE INTO allowlist(cidr, note, source, created_at) VALUES (?,?,?,?)",
                     (c, "from config", "config", time.time()))
    for username, pw_hash in users:
        user_set(conn, username, pw_hash, "from config", "config")


class Policy:
    """In-memory snapshot used by the SMTP hooks."""

    def __init__(self, db: Database | None = None, refresh_every: float = 5.0):
        self.db = db
        self.refresh_every = refresh_every
        self.networks: list = []
        self.users: dict[str, str] = {}
        self._verified: set[bytes] = set()
        self._key = os.urandom(32)
        self._task: asyncio.Task | None = None

    def set_snapshot(self, cidrs: Iterable[str], users: dict[str, str]) -> None:
        self.networks = [parse_cidr(c) for c in cidrs]
        if users != self.users:
            self._verified.clear()
        self.users = dict(users)

    def _load(self, conn: sqlite3.Connection):
        cidrs = [r["cidr"] for r in conn.execute("SELECT cidr FROM allowlist")]
        users = {r["username"]: r["password_hash"] for r in conn.execute("SELECT username, password_hash"
                                                                           " FROM smtp_users")}
        return cidrs, users

    async def refresh(self) -> None:
        if self.db is None:
            return
        cidrs, users = await self.db.read(self._load)
        self.set_snapshot(cidrs, users)

    def refresh_sync(self) -> None:
        if self.db is not None:
            self.set_snapshot(*self.db.read_sync(self._load))

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_every)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - keep the last good snapshot
                log.exception("allowlist refresh failed; keeping the previous snapshot")

    def ip_allowed(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(addr.version == n.version and addr in n for n in self.networks)

    def check_login(self, username: str, password: str) -> bool:
        stored = self.users.get(username)
        if stored is None:
            # spend comparable time so unknown users are not distinguishable by timing
            verify_password(password, hash_password("x", salt=b"0" * 16))
            return False
        token = hmac.new(self._key, f"{username}\0{password}\0{stored}".encode(), "sha256").digest()
        if token in self._verified:
            return True
        if verify_password(password, stored):
            self._verified.add(token)
            return True
        return False
