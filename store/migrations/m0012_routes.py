"""Smarthost routes in the store (``store.routes``), and the route a message asked for.

- ``routes``: one row per route. ``settings`` is the route's JSON document (the relay's ``RouteConfig``
  fields; the password encrypted like channel secrets, store/secrets.py); ``source`` is ``config`` (seeded
  from ``[[routes]]`` at start and SIGHUP) or ``api`` (created by the admin API or the CLI). The status
  columns are the delivery engine's: the state after the last transaction (``up`` | ``failing``), the last
  success and the last error (the server's text), and result counters summed over every node.
- ``kv`` key ``routes.version``: bumped by every change of ``routes`` settings, so a running relaybox
  notices a change made by another process (the CLI) within a second.
- ``messages.route_hint``: the route named by the client's ``X-Relaybox-Route`` header (the header itself is
  removed at intake). The submitting AUTH user and client address are in ``messages`` since 0001.
"""

SQL = """
CREATE TABLE routes (
    name             TEXT PRIMARY KEY,
    settings         TEXT NOT NULL,
    source           TEXT NOT NULL DEFAULT 'api',
    is_default       INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    state            TEXT,
    last_success_at  REAL,
    last_error       TEXT,
    last_error_at    REAL,
    delivered        INTEGER NOT NULL DEFAULT 0,
    deferred         INTEGER NOT NULL DEFAULT 0,
    failed           INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX routes_one_default ON routes(is_default) WHERE is_default = 1;
ALTER TABLE messages ADD COLUMN route_hint TEXT;
"""

# PostgreSQL: the same schema (DOUBLE PRECISION times, BIGINT counters)
PG_SQL = """
CREATE TABLE routes (
    name             TEXT PRIMARY KEY,
    settings         TEXT NOT NULL,
    source           TEXT NOT NULL DEFAULT 'api',
    is_default       BIGINT NOT NULL DEFAULT 0,
    created_at       DOUBLE PRECISION NOT NULL,
    updated_at       DOUBLE PRECISION NOT NULL,
    state            TEXT,
    last_success_at  DOUBLE PRECISION,
    last_error       TEXT,
    last_error_at    DOUBLE PRECISION,
    delivered        BIGINT NOT NULL DEFAULT 0,
    deferred         BIGINT NOT NULL DEFAULT 0,
    failed           BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX routes_one_default ON routes(is_default) WHERE is_default = 1;
ALTER TABLE messages ADD COLUMN route_hint TEXT;
"""
