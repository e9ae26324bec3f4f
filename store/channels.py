"""Channels (polled mailboxes), their ordered filters, and campaigns (where routed inbound mail goes): the
configuration half of the inbound aggregate. ``store.inbound.InboundStore`` extends ``ChannelStore`` with
the message flow, so callers use one object: ``store.inbound``.

To the store a channel's and a campaign's settings are JSON documents owned by the poller (its
``ChannelConfig`` / ``CampaignConfig``). The store reads two keys of a channel's settings:
``default_campaign`` (a campaign still named there cannot be deleted) and ``oauth2_refresh_token`` (when an
admin gives a new one, the token rotated since is dropped). Secret fields are encrypted at rest
(store/secrets.py) and handed back in clear; redacting them for display is the caller's business.
"""

from __future__ import annotations

import json
import sqlite3
import time
import types
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

from store.errors import Conflict, guarded
from store.secrets import CAMPAIGN_SECRET_FIELDS, CHANNEL_SECRET_FIELDS, SecretBox
from store.sqlite import Database

__all__ = ["Campaign", "CampaignInUse", "Channel", "ChannelCheck", "ChannelStore", "Filter"]

T = TypeVar("T")


class CampaignInUse(Conflict):
    """A campaign that a channel's filters or default campaign still name cannot be deleted."""


@dataclass(frozen=True)
class Filter:
    """One rule of a channel, in order: the first that matches names the campaign."""

    field: str                 # sender | subject | body | to | header:NAME
    op: str                    # contains | equals | regex
    value: str
    campaign: str


@dataclass(frozen=True)
class Channel:
    """A polled mailbox: its settings (secrets included), its filters and how its polls went. The status
    fields (``last_poll_at`` .. ``quarantined``) are the store's: ignored when a channel is saved."""

    name: str
    settings: Mapping[str, Any]
    enabled: bool = True
    filters: tuple[Filter, ...] = ()
    created_at: float = 0.0
    last_poll_at: float | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    fetched: int = 0
    routed: int = 0
    quarantined: int = 0

    def status(self) -> dict[str, Any]:
        """The poll status and counters (no settings, so nothing secret)."""
        return {"last_poll_at": self.last_poll_at, "last_success_at": self.last_success_at,
                "last_error": self.last_error, "fetched": self.fetched, "routed": self.routed,
                "quarantined": self.quarantined}


@dataclass(frozen=True)
class Campaign:
    """A target of routed inbound mail: ``kind`` (maildir | webhook | smtp) and its settings."""

    name: str
    kind: str
    settings: Mapping[str, Any]
    created_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Settings with name and kind, unredacted."""
        return {**self.settings, "name": self.name, "kind": self.kind}


# check(channel, names of the stored campaigns): raises to refuse a channel; runs inside the transaction
# that saves it, so no campaign it names can be deleted between the check and the save
ChannelCheck = Callable[[Channel, frozenset[str]], None]


def _frozen(data: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(data))


def _box(db: Database) -> SecretBox:
    assert db.secrets is not None, "Database.open() sets the secret box"
    return db.secrets


def _channel_of(row: sqlite3.Row, filters: Sequence[Filter], box: SecretBox) -> Channel:
    settings = box.open(json.loads(row["settings"]), CHANNEL_SECRET_FIELDS)   # secrets at rest: store/secrets
    return Channel(name=row["name"], settings=_frozen(settings), enabled=bool(row["enabled"]),
                   filters=tuple(filters), created_at=row["created_at"], last_poll_at=row["last_poll_at"],
                   last_success_at=row["last_success_at"], last_error=row["last_error"],
                   fetched=row["fetched"], routed=row["routed"], quarantined=row["quarantined"])


def _campaign_of(row: sqlite3.Row, box: SecretBox) -> Campaign:
    settings = box.open(json.loads(row["settings"]), CAMPAIGN_SECRET_FIELDS)
    settings.pop("name", None)
    settings.pop("kind", None)
    return Campaign(name=row["name"], kind=row["kind"], settings=_frozen(settings),
                    created_at=row["created_at"])


def _filter_of(row: sqlite3.Row) -> Filter:
    return Filter(field=row["field"], op=row["op"], value=row["value"], campaign=row["campaign"])


def _filters(conn: sqlite3.Connection, name: str) -> list[Filter]:
    return [_filter_of(r) for r in conn.execute(
        "SELECT field, op, value, campaign FROM filters WHERE channel=? ORDER BY position", (name,))]


def _campaign_names(conn: sqlite3.Connection) -> frozenset[str]:
    return frozenset(r[0] for r in conn.execute("SELECT name FROM campaigns"))


class ChannelStore:
    """Channels, filters, campaigns and the OAuth2 refresh tokens rotated by the token endpoints."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock

    # sqlite3 errors leave the store as store errors (store.errors.guarded): a broken constraint is a
    # Conflict, the rest a StorageError; what the functions raise themselves (CampaignInUse, a caller's
    # check) passes unchanged
    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self.db.write(guarded(fn))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self.db.read(guarded(fn))

    # ---- channels --------------------------------------------------------------------------------
    async def channel(self, name: str) -> Channel | None:
        def _get(conn: sqlite3.Connection) -> Channel | None:
            row = conn.execute("SELECT * FROM channels WHERE name=?", (name,)).fetchone()
            return None if row is None else _channel_of(row, _filters(conn, name), _box(self.db))
        return await self._read(_get)

    async def channels(self, *, enabled_only: bool = False) -> list[Channel]:
        """Every channel (or every enabled one) by name, with filters and status."""
        def _list(conn: sqlite3.Connection) -> list[Channel]:
            by_channel: dict[str, list[Filter]] = {}
            for r in conn.execute("SELECT channel, field, op, value, campaign FROM filters"
                                  " ORDER BY channel, position"):
                by_channel.setdefault(r["channel"], []).append(_filter_of(r))
            where = " WHERE enabled=1" if enabled_only else ""
            return [_channel_of(row, by_channel.get(row["name"], ()), _box(self.db))
                    for row in conn.execute(f"SELECT * FROM channels{where} ORDER BY name")]
        return await self._read(_list)

    async def channel_names(self, *, enabled_only: bool = False) -> list[str]:
        where = " WHERE enabled=1" if enabled_only else ""
        return await self._read(lambda conn: [r[0] for r in conn.execute(
            f"SELECT name FROM channels{where} ORDER BY name")])

    async def save_channel(self, channel: Channel, check: ChannelCheck | None = None) -> None:
        """Create or replace a channel's settings, enabled flag and filters (its status is kept).
        ``check`` sees the stored campaign names in the same transaction and may refuse by raising."""
        await self._write(lambda conn: self._save_channel(conn, channel, check))

    def _save_channel(self, conn: sqlite3.Connection, ch: Channel, check: ChannelCheck | None) -> None:
        if check is not None:
            check(ch, _campaign_names(conn))
        old = conn.execute("SELECT settings FROM channels WHERE name=?", (ch.name,)).fetchone()
        box = _box(self.db)
        old_settings = box.open(json.loads(old[0]), CHANNEL_SECRET_FIELDS) if old is not None else {}
        if old is not None and (old_settings.get("oauth2_refresh_token")
                                != ch.settings.get("oauth2_refresh_token")):
            # an admin gave a new refresh token (re-consent): it replaces the one rotated since
            conn.execute("UPDATE channels SET oauth_refresh=NULL WHERE name=?", (ch.name,))
        conn.execute("INSERT INTO channels(name, settings, enabled, created_at) VALUES (?,?,?,?)"
                     " ON CONFLICT(name) DO UPDATE SET settings=excluded.settings, enabled=excluded.enabled",
                     (ch.name, json.dumps(box.seal(ch.settings, CHANNEL_SECRET_FIELDS)), int(ch.enabled),
                      self.clock()))
        conn.execute("DELETE FROM filters WHERE channel=?", (ch.name,))
        conn.executemany("INSERT INTO filters(channel, position, field, op, value, campaign)"
                         " VALUES (?,?,?,?,?,?)",
                         [(ch.name, pos, f.field, f.op, f.value, f.campaign)
                          for pos, f in enumerate(ch.filters)])

    async def delete_channel(self, name: str) -> bool:
        """Remove a channel with its filters and checkpoints (its inbound messages stay); False: no such."""
        def _delete(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM checkpoints WHERE channel=?", (name,))
            conn.execute("DELETE FROM filters WHERE channel=?", (name,))
            return conn.execute("DELETE FROM channels WHERE name=?", (name,)).rowcount > 0
        return await self._write(_delete)

    async def record_poll(self, name: str, error: str | None) -> None:
        """A poll of the channel ended: successfully (``error`` None) or with that error."""
        now = self.clock()

        def _record(conn: sqlite3.Connection) -> None:
            if error is None:
                conn.execute("UPDATE channels SET last_poll_at=?, last_success_at=?, last_error=NULL"
                             " WHERE name=?", (now, now, name))
            else:
                conn.execute("UPDATE channels SET last_poll_at=?, last_error=? WHERE name=?",
                             (now, error[:1000], name))
        await self._write(_record)

    async def record_validation(self, name: str, error: str | None) -> None:
        """A validation of the channel's settings (on save) succeeded (``error`` None: the last error is
        cleared) or failed with ``error`` (shown as the channel's last error until a poll succeeds)."""
        await self._write(lambda conn: conn.execute(
            "UPDATE channels SET last_error=? WHERE name=?", (error[:1000] if error else None, name)))

    # ---- OAuth2 ----------------------------------------------------------------------------------
    async def oauth_refresh(self, name: str) -> str | None:
        """The refresh token the token endpoint rotated to (None: use the configured one)."""
        row = await self._read(lambda conn: conn.execute(
            "SELECT oauth_refresh FROM channels WHERE name=?", (name,)).fetchone())
        return _box(self.db).decrypt(row[0], "oauth_refresh") if row is not None and row[0] else None

    async def set_oauth_refresh(self, name: str, token: str) -> None:
        sealed = _box(self.db).encrypt(token, "oauth_refresh")
        await self._write(lambda conn: conn.execute(
            "UPDATE channels SET oauth_refresh=? WHERE name=?", (sealed, name)))

    # ---- campaigns -------------------------------------------------------------------------------
    async def campaign(self, name: str) -> Campaign | None:
        row = await self._read(lambda conn: conn.execute(
            "SELECT * FROM campaigns WHERE name=?", (name,)).fetchone())
        return None if row is None else _campaign_of(row, _box(self.db))

    async def campaigns(self) -> list[Campaign]:
        return await self._read(lambda conn: [_campaign_of(r, _box(self.db)) for r in conn.execute(
            "SELECT * FROM campaigns ORDER BY name")])

    async def campaign_names(self) -> frozenset[str]:
        return await self._read(_campaign_names)

    async def save_campaign(self, campaign: Campaign) -> None:
        """Create or replace a campaign."""
        await self._write(lambda conn: self._save_campaign(conn, campaign))

    def _save_campaign(self, conn: sqlite3.Connection, c: Campaign) -> None:
        settings = {**c.settings, "kind": c.kind}
        conn.execute("INSERT INTO campaigns(name, kind, settings, created_at) VALUES (?,?,?,?)"
                     " ON CONFLICT(name) DO UPDATE SET kind=excluded.kind, settings=excluded.settings",
                     (c.name, c.kind, json.dumps(_box(self.db).seal(settings, CAMPAIGN_SECRET_FIELDS)),
                      self.clock()))

    async def delete_campaign(self, name: str) -> bool:
        """Remove an unused campaign; False: no such campaign. Raises ``CampaignInUse``."""
        def _delete(conn: sqlite3.Connection) -> bool:
            used = conn.execute("SELECT COUNT(*) FROM filters WHERE campaign=?", (name,)).fetchone()[0]
            for row in conn.execute("SELECT settings FROM channels"):
                if json.loads(row[0]).get("default_campaign") == name:
                    used += 1
            if used:
                raise CampaignInUse(f"campaign {name} is still used by channels or filters")
            return conn.execute("DELETE FROM campaigns WHERE name=?", (name,)).rowcount > 0
        return await self._write(_delete)

    async def seed(self, campaigns: Sequence[Campaign], channels: Sequence[Channel],
                   check: ChannelCheck | None = None) -> None:
        """Config seeds in one transaction: campaigns first (channels name them), then channels; existing
        ones are replaced. One refused channel (``check`` raised) saves nothing."""
        def _seed(conn: sqlite3.Connection) -> None:
            for c in campaigns:
                self._save_campaign(conn, c)
            for ch in channels:
                self._save_channel(conn, ch, check)
        await self._write(_seed)
