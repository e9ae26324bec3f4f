"""Smarthost routes: their settings (created by the admin API / CLI, or seeded from the config) and how
delivery through each went. Schema: migration 0012.

    await store.routes.create(StoredRoute("m365", {...}))      # RouteExists when the name is taken
    await store.routes.replace(StoredRoute("m365", {...}))     # RouteMissing / RouteReadOnly (config)
    await store.routes.seed([StoredRoute(...), ...])            # config routes, at start and SIGHUP
    await store.routes.delete("m365")
    routes = await store.routes.list() ; one = await store.routes.get("m365")
    v = await store.routes.version()                            # bumped by every change of settings
    await store.routes.record_status([RouteDelta(...)])         # the delivery engine's results

To the store a route's settings are a JSON document the relay owns (``relay.config.RouteConfig``); it reads
one key, ``default`` (at most one default route: ``DefaultTaken``), and encrypts ``password`` at rest
(store/secrets.py, like channel passwords). Records come back with the password in clear: redacting it is
the caller's business (the admin API and the CLI never show it).
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import sqlite3
import time
import types
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

from store.errors import Conflict, guarded
from store.secrets import SecretBox
from store.sqlite import Database

__all__ = ["DefaultTaken", "RouteDelta", "RouteExists", "RouteMissing", "RouteReadOnly", "RouteStore",
           "StoredRoute", "ROUTE_SECRET_FIELDS"]

T = TypeVar("T")
ROUTE_SECRET_FIELDS = ("password", "oauth2_client_secret", "oauth2_refresh_token")
VERSION_KEY = "routes.version"
SOURCES = ("api", "config")


class RouteExists(Conflict):
    """A route of that name exists already (create)."""


class RouteMissing(LookupError):
    """No route of that name (replace)."""


class RouteReadOnly(Conflict):
    """The route comes from the config file: change it there (the next start or SIGHUP would undo it)."""


class DefaultTaken(Conflict):
    """Another route is the default already."""


@dataclass(frozen=True)
class StoredRoute:
    """A route's settings and status. The status fields (``state`` .. ``failed``) are the delivery
    engine's: ignored when a route is saved."""

    name: str
    settings: Mapping[str, Any]
    source: str = "api"                    # api | config
    created_at: float = 0.0
    updated_at: float = 0.0
    state: str | None = None               # up | failing | None (no transaction yet)
    last_success_at: float | None = None
    last_error: str | None = None          # "<code> <enhanced> <the server's text>"
    last_error_at: float | None = None
    delivered: int = 0
    deferred: int = 0
    failed: int = 0

    @property
    def default(self) -> bool:
        return bool(self.settings.get("default"))


@dataclass(frozen=True)
class RouteDelta:
    """What happened on one route since the last write: added to its counters; state, success and error
    replace the stored ones when given (newer wins)."""

    name: str
    delivered: int = 0
    deferred: int = 0
    failed: int = 0
    state: str | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None


def _box(db: Database) -> SecretBox:
    assert db.secrets is not None, "Database.open() sets the secret box"
    return db.secrets


def _route_of(row: sqlite3.Row, box: SecretBox) -> StoredRoute:
    settings = box.open(json.loads(row["settings"]), ROUTE_SECRET_FIELDS)
    settings["name"] = row["name"]
    return StoredRoute(name=row["name"], settings=types.MappingProxyType(settings), source=row["source"],
                       created_at=row["created_at"], updated_at=row["updated_at"], state=row["state"],
                       last_success_at=row["last_success_at"], last_error=row["last_error"],
                       last_error_at=row["last_error_at"], delivered=row["delivered"],
                       deferred=row["deferred"], failed=row["failed"])


def _bump(conn: sqlite3.Connection) -> None:
    row = conn.execute("SELECT value FROM kv WHERE key=?", (VERSION_KEY,)).fetchone()
    if row is None:
        conn.execute("INSERT INTO kv(key, value) VALUES (?, ?)", (VERSION_KEY, "1"))
    else:
        conn.execute("UPDATE kv SET value=? WHERE key=?", (str(int(row[0] or 0) + 1), VERSION_KEY))


class RouteStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self.db.write(guarded(fn))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self.db.read(guarded(fn))

    # ---- reads -----------------------------------------------------------------------------------
    async def get(self, name: str) -> StoredRoute | None:
        row = await self._read(lambda conn: conn.execute(
            "SELECT * FROM routes WHERE name=?", (name,)).fetchone())
        return None if row is None else _route_of(row, _box(self.db))

    async def list(self) -> list[StoredRoute]:
        """Every route, by name."""
        rows = await self._read(lambda conn: conn.execute("SELECT * FROM routes ORDER BY name").fetchall())
        return [_route_of(r, _box(self.db)) for r in rows]

    async def version(self) -> int:
        """A number that changes whenever a route's settings change (0: never)."""
        row = await self._read(lambda conn: conn.execute(
            "SELECT value FROM kv WHERE key=?", (VERSION_KEY,)).fetchone())
        return int(row[0]) if row is not None and row[0] else 0

    # ---- changes ---------------------------------------------------------------------------------
    async def create(self, route: StoredRoute) -> StoredRoute:
        """A new route (source ``api`` unless given). Raises RouteExists, DefaultTaken."""
        def _create(conn: sqlite3.Connection) -> StoredRoute:
            if conn.execute("SELECT 1 FROM routes WHERE name=?", (route.name,)).fetchone():
                raise RouteExists(f"route {route.name} exists already")
            self._put(conn, route, new=True)
            return self._get(conn, route.name)
        return await self._write(_create)

    async def replace(self, route: StoredRoute, *, allow_config: bool = False) -> StoredRoute:
        """New settings for an existing route (its status and creation time kept). Raises RouteMissing,
        RouteReadOnly (a config route, unless ``allow_config``), DefaultTaken."""
        def _replace(conn: sqlite3.Connection) -> StoredRoute:
            row = conn.execute("SELECT source FROM routes WHERE name=?", (route.name,)).fetchone()
            if row is None:
                raise RouteMissing(f"no route {route.name}")
            if row[0] == "config" and not allow_config:
                raise RouteReadOnly(f"route {route.name} is defined in the config file ([[routes]]):"
                                    " change it there and reload")
            self._put(conn, dataclasses.replace(route, source=row[0]), new=False)   # the source stays
            return self._get(conn, route.name)
        return await self._write(_replace)

    async def delete(self, name: str, *, allow_config: bool = False) -> bool:
        """Remove a route; False when there is none. Raises RouteReadOnly for a config route."""
        def _delete(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT source FROM routes WHERE name=?", (name,)).fetchone()
            if row is None:
                return False
            if row[0] == "config" and not allow_config:
                raise RouteReadOnly(f"route {name} is defined in the config file ([[routes]]): remove it"
                                    " there and reload")
            conn.execute("DELETE FROM routes WHERE name=?", (name,))
            _bump(conn)
            return True
        return await self._write(_delete)

    async def seed(self, routes: Sequence[StoredRoute]) -> builtins.list[str]:
        """The config's routes, in one transaction: each upserted as source ``config`` (an API route of
        the same name becomes a config route), config routes no longer in the config removed. Returns
        the names removed. Raises DefaultTaken when a config default meets an API default."""
        names = {r.name for r in routes}

        def _seed(conn: sqlite3.Connection) -> builtins.list[str]:
            gone = [r[0] for r in conn.execute("SELECT name FROM routes WHERE source='config' ORDER BY name")
                    if r[0] not in names]
            for name in gone:
                conn.execute("DELETE FROM routes WHERE name=?", (name,))
            for r in routes:
                self._put(conn, StoredRoute(r.name, r.settings, source="config"),
                          new=conn.execute("SELECT 1 FROM routes WHERE name=?", (r.name,)).fetchone() is None)
            if gone or routes:
                _bump(conn)
            return gone
        return await self._write(_seed)

    def _put(self, conn: sqlite3.Connection, r: StoredRoute, *, new: bool) -> None:
        if r.source not in SOURCES:
            raise ValueError(f"route source: expected api or config, got {r.source!r}")
        settings = {k: v for k, v in r.settings.items() if k != "name"}
        is_default = 1 if settings.get("default") else 0
        if is_default:
            other = conn.execute("SELECT name FROM routes WHERE is_default=1 AND name<>?",
                                 (r.name,)).fetchone()
            if other is not None:
                raise DefaultTaken(f"route {other[0]} is the default route already (one default at most)")
        doc = json.dumps(_box(self.db).seal(settings, ROUTE_SECRET_FIELDS), sort_keys=True)
        now = self.clock()
        if new:
            conn.execute("INSERT INTO routes(name, settings, source, is_default, created_at, updated_at)"
                         " VALUES (?,?,?,?,?,?)", (r.name, doc, r.source, is_default, now, now))
        else:
            conn.execute("UPDATE routes SET settings=?, source=?, is_default=?, updated_at=? WHERE name=?",
                         (doc, r.source, is_default, now, r.name))
        _bump(conn)

    def _get(self, conn: sqlite3.Connection, name: str) -> StoredRoute:
        return _route_of(conn.execute("SELECT * FROM routes WHERE name=?", (name,)).fetchone(), _box(self.db))

    # ---- status ----------------------------------------------------------------------------------
    async def record_status(self, deltas: Sequence[RouteDelta]) -> None:
        """Add the delivery engine's results to the routes' status (routes gone since are skipped). The
        settings version does not change."""
        def _record(conn: sqlite3.Connection) -> None:
            for d in deltas:
                conn.execute("UPDATE routes SET delivered=delivered+?, deferred=deferred+?, failed=failed+?"
                             " WHERE name=?", (d.delivered, d.deferred, d.failed, d.name))
                if d.state is not None:
                    conn.execute("UPDATE routes SET state=? WHERE name=?", (d.state, d.name))
                if d.last_success_at is not None:
                    conn.execute("UPDATE routes SET last_success_at=? WHERE name=? AND"
                                 " (last_success_at IS NULL OR last_success_at<?)",
                                 (d.last_success_at, d.name, d.last_success_at))
                if d.last_error is not None and d.last_error_at is not None:
                    conn.execute("UPDATE routes SET last_error=?, last_error_at=? WHERE name=? AND"
                                 " (last_error_at IS NULL OR last_error_at<?)",
                                 (d.last_error[:1000], d.last_error_at, d.name, d.last_error_at))
        if deltas:
            await self._write(_record)
