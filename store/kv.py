"""Small named values (cursors, flags, once-only markers) in the kv table."""

from __future__ import annotations

import sqlite3
import time
from typing import Callable

from store.errors import guarded
from store.sqlite import Database


class KeyValue:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock

    async def get(self, key: str, default: str | None = None) -> str | None:
        def _q(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
            return default if row is None else row["value"]
        return await self.db.read(guarded(_q))

    async def set(self, key: str, value: str | None) -> None:
        """Store ``value`` under ``key``, replacing what was there."""
        await self.db.write(guarded(lambda c: c.execute(
            "INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value))))

    async def add(self, key: str, value: str | None) -> bool:
        """Store ``value`` only if ``key`` is absent: True when this call created it (a once-only marker
        that survives restarts), False when it was already there."""
        def _do(conn: sqlite3.Connection) -> bool:
            return conn.execute("INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING"
                                " RETURNING key", (key, value)).fetchone() is not None
        return await self.db.write(guarded(_do))

    async def delete(self, key: str) -> bool:
        def _do(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM kv WHERE key=? RETURNING key", (key,)).fetchone() is not None
        return await self.db.write(guarded(_do))

    # ---- rotated OAuth2 refresh tokens of smarthost routes (``relay.oauth2.RefreshTokens``), encrypted --
    async def oauth_refresh(self, name: str) -> str | None:
        key = f"oauth-refresh:{name}"
        sealed = await self.get(key)
        if not sealed:
            return None
        assert self.db.secrets is not None, "Database.open() sets the secret box"
        return self.db.secrets.decrypt(sealed, key)

    async def set_oauth_refresh(self, name: str, token: str) -> None:
        key = f"oauth-refresh:{name}"
        assert self.db.secrets is not None, "Database.open() sets the secret box"
        await self.set(key, self.db.secrets.encrypt(token, key))
