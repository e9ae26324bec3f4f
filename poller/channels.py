"""Channels and campaigns in the database: validation on save, seeds from the config, redacted views.

Functions take a sqlite3 connection (run them inside ``db.write`` / ``db.read``). A channel's settings
are stored as JSON of ``ChannelConfig`` (secrets included, the database is the secret store); every
function meant for display returns them with secrets replaced by ``"***"``.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from typing import Any

from poller.config import CampaignConfig, ChannelConfig, FilterConfig
from relay.configtypes import build

SECRET_FIELDS = ("password", "oauth2_client_secret", "oauth2_refresh_token")
_TRIM = ("host", "user", "address", "server_name", "oauth2_token_url", "oauth2_client_id",
         "oauth2_client_secret", "oauth2_refresh_token", "oauth2_scope", "folder", "storage_folder",
         "default_campaign", "name")


class ChannelError(ValueError):
    """A channel or campaign that cannot be saved/activated as given (message says why)."""


def normalize(ch: ChannelConfig) -> ChannelConfig:
    """Trim credential and name fields: a trailing space in a client id is a classic support case."""
    return dataclasses.replace(ch, **{f: getattr(ch, f).strip() for f in _TRIM})


def check(ch: ChannelConfig, campaigns: set[str]) -> None:
    """Static checks (the server-side ones, e.g. the storage folder exists, are in validate)."""
    if ch.protocol not in ("imap", "pop3"):
        raise ChannelError(f"channel {ch.name}: protocol must be imap or pop3")
    if ch.tls not in ("implicit", "starttls", "none"):
        raise ChannelError(f"channel {ch.name}: tls must be implicit, starttls or none")
    if ch.auth not in ("password", "oauth2"):
        raise ChannelError(f"channel {ch.name}: auth must be password or oauth2")
    if ch.auth == "oauth2" and not (ch.oauth2_token_url and ch.oauth2_client_id):
        raise ChannelError(f"channel {ch.name}: oauth2 needs oauth2_token_url and oauth2_client_id")
    if ch.after not in ("seen", "move", "delete"):
        raise ChannelError(f"channel {ch.name}: after must be seen, move or delete")
    if ch.after == "move":
        if not ch.storage_folder:
            raise ChannelError(f"channel {ch.name}: after = move needs storage_folder")
        if ch.storage_folder == ch.folder:
            raise ChannelError(f"channel {ch.name}: storage_folder must differ from the source folder")
        if ch.protocol == "pop3":
            raise ChannelError(f"channel {ch.name}: POP3 has no folders; use after = delete or seen")
    if ch.purpose not in ("campaigns", "bounces"):
        raise ChannelError(f"channel {ch.name}: purpose must be campaigns or bounces")
    if ch.enabled and ch.purpose == "campaigns":
        if not ch.default_campaign:
            raise ChannelError(f"channel {ch.name}: activation needs a default campaign")
        if ch.default_campaign not in campaigns:
            raise ChannelError(f"channel {ch.name}: unknown default campaign {ch.default_campaign!r}")
    for f in ch.filters:
        if f.campaign not in campaigns:
            raise ChannelError(f"channel {ch.name}: filter targets unknown campaign {f.campaign!r}")
        if f.op == "regex":
            import re
            try:
                re.compile(f.value)
            except re.error as exc:
                raise ChannelError(f"channel {ch.name}: bad regex {f.value!r}: {exc}") from None


def default_port(ch: ChannelConfig) -> int:
    if ch.port:
        return ch.port
    if ch.protocol == "imap":
        return 993 if ch.tls == "implicit" else 143
    return 995 if ch.tls == "implicit" else 110


# ---- campaigns -----------------------------------------------------------------------------------
def save_campaign(conn: sqlite3.Connection, c: CampaignConfig) -> None:
    settings = {k: v for k, v in dataclasses.asdict(c).items() if k != "name"}
    conn.execute("INSERT INTO campaigns(name, kind, settings, created_at) VALUES (?,?,?,?) ON CONFLICT(name)"
                 " DO UPDATE SET kind=excluded.kind, settings=excluded.settings",
                 (c.name.strip(), c.kind, json.dumps(settings), time.time()))


def get_campaign(conn: sqlite3.Connection, name: str) -> CampaignConfig | None:
    row = conn.execute("SELECT name, kind, settings FROM campaigns WHERE name=?", (name,)).fetchone()
    if row is None:
        return None
    data = json.loads(row["settings"])
    data["name"], data["kind"] = row["name"], row["kind"]
    return build(CampaignConfig, data, f"campaigns.{name}")


def list_campaigns(conn: sqlite3.Connection) -> list[dict]:
    out = []
    for row in conn.execute("SELECT name, kind, settings FROM campaigns ORDER BY name"):
        data = json.loads(row["settings"])
        if data.get("secret"):
            data["secret"] = "***"
        out.append({"name": row["name"], "kind": row["kind"], **data})
    return out


def delete_campaign(conn: sqlite3.Connection, name: str) -> bool:
    used = conn.execute("SELECT COUNT(*) FROM filters WHERE campaign=?", (name,)).fetchone()[0]
    for row in conn.execute("SELECT name, settings FROM channels"):
        if json.loads(row["settings"]).get("default_campaign") == name:
            used += 1
    if used:
        raise ChannelError(f"campaign {name} is still used by channels or filters")
    return conn.execute("DELETE FROM campaigns WHERE name=?", (name,)).rowcount > 0


# ---- channels ------------------------------------------------------------------------------------
def save_channel(conn: sqlite3.Connection, ch: ChannelConfig) -> ChannelConfig:
    ch = normalize(ch)
    campaigns = {r[0] for r in conn.execute("SELECT name FROM campaigns")}
    check(ch, campaigns)
    settings = dataclasses.asdict(ch)
    filters = settings.pop("filters")
    old = conn.execute("SELECT settings FROM channels WHERE name=?", (ch.name,)).fetchone()
    if old is not None and json.loads(old[0]).get("oauth2_refresh_token") != ch.oauth2_refresh_token:
        # an admin gave a new refresh token (re-consent): it replaces the one rotated since
        conn.execute("UPDATE channels SET oauth_refresh=NULL WHERE name=?", (ch.name,))
    conn.execute("INSERT INTO channels(name, settings, enabled, created_at) VALUES (?,?,?,?) ON CONFLICT(name)"
                 " DO UPDATE SET settings=excluded.settings, enabled=excluded.enabled",
                 (ch.name, json.dumps(settings), int(ch.enabled), time.time()))
    conn.execute("DELETE FROM filters WHERE channel=?", (ch.name,))
    for pos, f in enumerate(filters):
        conn.execute("INSERT INTO filters(channel, position, field, op, value, campaign) VALUES (?,?,?,?,?,?)",
                     (ch.name, pos, f["field"], f["op"], f["value"], f["campaign"]))
    return ch


def get_channel(conn: sqlite3.Connection, name: str) -> ChannelConfig | None:
    row = conn.execute("SELECT settings FROM channels WHERE name=?", (name,)).fetchone()
    if row is None:
        return None
    data = json.loads(row["settings"])
    data["filters"] = [
        {"field": f["field"], "op": f["op"], "value": f["value"], "campaign": f["campaign"]}
        for f in conn.execute("SELECT * FROM filters WHERE channel=? ORDER BY position", (name,))]
    data.pop("filters_ids", None)
    return build(ChannelConfig, data, f"channels.{name}")


def filter_ids(conn: sqlite3.Connection, name: str) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM filters WHERE channel=? ORDER BY position", (name,))]


def channel_names(conn: sqlite3.Connection, enabled_only: bool = False) -> list[str]:
    q = "SELECT name FROM channels" + (" WHERE enabled=1" if enabled_only else "") + " ORDER BY name"
    return [r[0] for r in conn.execute(q)]


def redacted(ch: ChannelConfig) -> dict[str, Any]:
    d = dataclasses.asdict(ch)
    for k in SECRET_FIELDS:
        if d.get(k):
            d[k] = "***"
    return d


def list_channels(conn: sqlite3.Connection) -> list[dict]:
    out = []
    for name in channel_names(conn):
        ch = get_channel(conn, name)
        row = conn.execute("SELECT last_poll_at, last_success_at, last_error, fetched, routed, quarantined"
                           " FROM channels WHERE name=?", (name,)).fetchone()
        out.append({**redacted(ch), **dict(row)})
    return out


def delete_channel(conn: sqlite3.Connection, name: str) -> bool:
    conn.execute("DELETE FROM checkpoints WHERE channel=?", (name,))
    return conn.execute("DELETE FROM channels WHERE name=?", (name,)).rowcount > 0


def seed(conn: sqlite3.Connection, campaigns: list[CampaignConfig], channels: list[ChannelConfig]) -> None:
    """Config seeds: campaigns first (channels refer to them), then channels. Existing rows are updated."""
    for c in campaigns:
        save_campaign(conn, c)
    for ch in channels:
        save_channel(conn, ch)


def filter_from_dict(d: dict) -> FilterConfig:
    return build(FilterConfig, d, "filter")
