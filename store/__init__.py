"""The store: the only package that knows SQL. Connections, the group-commit writer, migrations of every
schema, and one typed async interface per aggregate, returning frozen dataclasses.

    store = Store(path).open()           # migrations run, writer thread started
    store = Store("postgresql://user@host/db").open()   # the PostgreSQL backend (store/postgres.py)
    qid = await store.messages.enqueue(NewMessage(...))   # durable on return
    store.close()

Aggregates (attributes of ``Store``):

- ``messages``  messages, bodies, recipients, events, attempts: enqueue, claim, complete, admin moves
                (``store.messages``; recipient statuses change only through ``store.states.transition``)
- ``history``   the read side of the spool for admins (lists, one message, summaries)
- ``bounces``   bounce records and the suppression list
- ``access``    allowlist and SMTP AUTH users
- ``inbound``   channels, filters, campaigns, checkpoints, inbound messages, quarantine
- ``outbox``    event webhooks (endpoint cursors over ``events``, deliveries)
- ``kv``        small named values
- ``stats``     figures for /metrics and /readyz
- ``tracking``  opens and clicks recorded by the tracking listener
- ``routes``    smarthost routes (settings seeded from the config or saved by the API/CLI) and their status
- ``nodes``     the nodes registry and named leases (leader, channels) of several nodes on one database
"""

from __future__ import annotations

import time
from typing import Callable, cast

from store.access import AccessStore
from store.bounces import BounceStore
from store.history import History
from store.inbound import InboundStore
from store.kv import KeyValue
from store.messages import MessageStore
from store.nodes import NodeStore
from store.outbox import WebhookOutbox
from store.postgres import PgDatabase, is_url
from store.rejections import RejectionStore
from store.routes import RouteStore
from store.sqlite import Database, SchemaTooNew, StorageError
from store.stats import Stats
from store.tracking import TrackingStore

__all__ = ["Store", "StorageError", "SchemaTooNew"]


class Store:
    """Every aggregate over one database. ``open()`` before use, ``close()`` at the end."""

    def __init__(self, path_or_url: str, *, clock: Callable[[], float] = time.time, readers: int = 4,
                 poison_limit: int = 3, key_file: str | None = None, commit_delay: float | None = None):
        self.path = str(path_or_url)
        self.clock = clock
        # key_file: the secrets' key (store/secrets.py); default <path>.key, created 0600 at first open
        # (PostgreSQL: store.postgres.DEFAULT_KEY_FILE; every node of one database needs the same key)
        if is_url(self.path):
            # "postgresql://...": the same interface as Database; the aggregates' conn is its PgConnection
            self.db = cast(Database, PgDatabase(self.path, readers=readers, key_file=key_file))
        else:
            self.db = Database(self.path, readers=readers, key_file=key_file)
            if commit_delay is not None:
                self.db.commit_delay = commit_delay
        self.messages = MessageStore(self.db, clock, poison_limit=poison_limit)
        self.history = History(self.db, clock)
        self.bounces = BounceStore(self.db, clock)
        self.access = AccessStore(self.db, clock)
        self.inbound = InboundStore(self.db, clock)
        self.outbox = WebhookOutbox(self.db, clock)
        self.kv = KeyValue(self.db, clock)
        self.stats = Stats(self.db, clock)
        self.tracking = TrackingStore(self.db, clock)
        self.rejections = RejectionStore(self.db, clock)
        self.routes = RouteStore(self.db, clock)
        self.nodes = NodeStore(self.db, clock)

    def open(self) -> "Store":
        self.db.open()
        return self

    def close(self) -> None:
        self.db.close()

    @property
    def last_error(self) -> str | None:
        """The last commit failure (None once a commit succeeded again)."""
        return self.db.last_error

    async def check_writable(self) -> bool:
        return await self.db.check_writable()

    def size_bytes(self) -> int:
        return self.db.size_bytes()

    async def compact(self, pages: int = 2000) -> int:
        """Give space back after retention (free pages to the filesystem, WAL truncated)."""
        return await self.db.compact(pages)
