"""Channels and campaigns as the poller sees them (``ChannelConfig`` / ``CampaignConfig``) over the store's
records (``store.inbound``): validation on save, seeds from the config, redacted views.

A channel's settings are stored as the fields of its ``ChannelConfig`` (secrets included, the database is
the secret store); every function meant for display returns them with secrets replaced by ``"***"``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

from poller.config import FIRST_SYNC, CampaignConfig, ChannelConfig, FilterConfig, identifier_problem
from relay.configtypes import build
from store.inbound import Campaign, Channel, Filter, InboundStore

SECRET_FIELDS = ("password", "oauth2_client_secret", "oauth2_refresh_token")
_TRIM = ("host", "user", "address", "server_name", "oauth2_token_url", "oauth2_client_id",
         "oauth2_client_secret", "oauth2_refresh_token", "oauth2_scope", "folder", "storage_folder",
         "default_campaign", "name", "short_name", "first_sync")
STATES = ("active", "inactive", "failing")


class ChannelError(ValueError):
    """A channel or campaign that cannot be saved/activated as given (message says why)."""


def normalize(ch: ChannelConfig) -> ChannelConfig:
    """Trim credential and name fields: a trailing space in a client id is a classic support case."""
    return dataclasses.replace(ch, **{f: getattr(ch, f).strip() for f in _TRIM})


def check(ch: ChannelConfig, campaigns: set[str]) -> None:
    """Static checks (the server-side ones, e.g. the storage folder exists, are in validate)."""
    problem = _connection_problem(ch) or _action_problem(ch) or _routing_problem(ch, campaigns)
    if problem:
        raise ChannelError(f"channel {ch.name}: {problem}")


_CHOICES = (("protocol", ("imap", "pop3"), "protocol must be imap or pop3"),
            ("tls", ("implicit", "starttls", "none"), "tls must be implicit, starttls or none"),
            ("auth", ("password", "oauth2"), "auth must be password or oauth2"))


def _connection_problem(ch: ChannelConfig) -> str | None:
    problem = identifier_problem("name", ch.name) or (
        identifier_problem("short_name", ch.short_name) if ch.short_name else None)
    if problem:
        return problem
    if not FIRST_SYNC.fullmatch(ch.first_sync):
        return "first_sync must be all, unseen or since:YYYY-MM-DD"
    if ch.protocol == "pop3" and ch.first_sync != "all":
        return "first_sync: POP3 has no flags or dates to choose by; use all"
    for name, allowed, problem in _CHOICES:
        if getattr(ch, name) not in allowed:
            return problem
    if ch.auth == "oauth2" and not (ch.oauth2_token_url and ch.oauth2_client_id):
        return "oauth2 needs oauth2_token_url and oauth2_client_id"
    return None


def _action_problem(ch: ChannelConfig) -> str | None:
    if ch.after not in ("seen", "move", "delete"):
        return "after must be seen, move or delete"
    if ch.after != "move":
        return None
    if not ch.storage_folder:
        return "after = move needs storage_folder"
    if ch.storage_folder == ch.folder:
        return "storage_folder must differ from the source folder"
    if ch.protocol == "pop3":
        return "POP3 has no folders; use after = delete or seen"
    return None


def _routing_problem(ch: ChannelConfig, campaigns: set[str]) -> str | None:
    if ch.purpose not in ("campaigns", "bounces"):
        return "purpose must be campaigns or bounces"
    if ch.enabled and ch.purpose == "campaigns":
        if not ch.default_campaign:
            return "activation needs a default campaign"
        if ch.default_campaign not in campaigns:
            return f"unknown default campaign {ch.default_campaign!r}"
    for f in ch.filters:
        if f.campaign not in campaigns:
            return f"filter targets unknown campaign {f.campaign!r}"
        if f.op == "regex":
            try:
                re.compile(f.value)
            except re.error as exc:
                return f"bad regex {f.value!r}: {exc}"
    return None


def default_port(ch: ChannelConfig) -> int:
    if ch.port:
        return ch.port
    if ch.protocol == "imap":
        return 993 if ch.tls == "implicit" else 143
    return 995 if ch.tls == "implicit" else 110


# ---- records of the store <-> settings ---------------------------------------------------------------
_NOT_SETTINGS = ("name", "enabled", "filters", "filters_ids")


def record_of(ch: ChannelConfig) -> Channel:
    settings = {k: v for k, v in dataclasses.asdict(ch).items() if k not in _NOT_SETTINGS}
    return Channel(name=ch.name, settings=settings, enabled=ch.enabled,
                   filters=tuple(Filter(f.field, f.op, f.value, f.campaign) for f in ch.filters))


def config_of(rec: Channel) -> ChannelConfig:
    data = {k: v for k, v in rec.settings.items() if k not in _NOT_SETTINGS}
    data.update(name=rec.name, enabled=rec.enabled, filters=[
        {"field": f.field, "op": f.op, "value": f.value, "campaign": f.campaign} for f in rec.filters])
    return build(ChannelConfig, data, f"channels.{rec.name}")


def campaign_record(c: CampaignConfig) -> Campaign:
    settings = {k: v for k, v in dataclasses.asdict(c).items() if k not in ("name", "kind")}
    return Campaign(name=c.name.strip(), kind=c.kind, settings=settings)


def campaign_config(rec: Campaign) -> CampaignConfig:
    return build(CampaignConfig, rec.as_dict(), f"campaigns.{rec.name}")


# ---- views ---------------------------------------------------------------------------------------
def redacted(ch: ChannelConfig) -> dict[str, Any]:
    d = dataclasses.asdict(ch)
    for k in SECRET_FIELDS:
        if d.get(k):
            d[k] = "***"
    return d


def state_of(enabled: bool, last_error: str | None) -> str:
    """``inactive`` (disabled), ``failing`` (enabled, the last poll or validation failed) or ``active``."""
    return "inactive" if not enabled else "failing" if last_error else "active"


def channel_view(rec: Channel) -> dict[str, Any]:
    """Settings (secrets as ``***``), filters, poll status and counters, and the state."""
    view = {**redacted(config_of(rec)), **rec.status()}
    view["short_name"] = view.get("short_name") or rec.name
    view["state"] = state_of(rec.enabled, rec.last_error)
    return view


def matches(view: dict[str, Any], *, name: str | None = None, address: str | None = None,
            campaign: str | None = None, state: str | None = None, q: str | None = None) -> bool:
    """Search of channel views: ``name`` and ``address`` are case-insensitive substrings (of the name or
    short name; of the address or user), ``campaign`` the default campaign or one a filter names,
    ``state`` one of STATES, ``q`` a substring of any of name, short name, address, user and host."""
    def has(needle: str | None, *keys: str) -> bool:
        return needle is None or any(needle.casefold() in str(view.get(k) or "").casefold() for k in keys)

    if campaign is not None and campaign != view.get("default_campaign") and \
            campaign not in {f["campaign"] for f in view.get("filters", ())}:
        return False
    return (has(name, "name", "short_name") and has(address, "address", "user")
            and (state is None or view.get("state") == state)
            and has(q, "name", "short_name", "address", "user", "host"))


def campaign_view(rec: Campaign) -> dict[str, Any]:
    data = rec.as_dict()
    if data.get("secret"):
        data["secret"] = "***"
    return data


# ---- channels and campaigns in the store -----------------------------------------------------------------
async def save_channel(inbound: InboundStore, ch: ChannelConfig) -> ChannelConfig:
    """Normalize, check against the stored campaigns (in the saving transaction) and save; raises
    ``ChannelError``."""
    ch = normalize(ch)
    await inbound.save_channel(record_of(ch), lambda _rec, names: check(ch, set(names)))
    return ch


async def get_channel(inbound: InboundStore, name: str) -> ChannelConfig | None:
    rec = await inbound.channel(name)
    return None if rec is None else config_of(rec)


async def list_channels(inbound: InboundStore, **search: str | None) -> list[dict[str, Any]]:
    """Channel views by name, those that match ``search`` (see ``matches``)."""
    return [v for v in (channel_view(rec) for rec in await inbound.channels()) if matches(v, **search)]


async def save_campaign(inbound: InboundStore, c: CampaignConfig) -> None:
    await inbound.save_campaign(campaign_record(c))


async def get_campaign(inbound: InboundStore, name: str) -> CampaignConfig | None:
    rec = await inbound.campaign(name)
    return None if rec is None else campaign_config(rec)


async def list_campaigns(inbound: InboundStore) -> list[dict[str, Any]]:
    return [campaign_view(rec) for rec in await inbound.campaigns()]


async def seed(inbound: InboundStore, campaigns: Sequence[CampaignConfig],
               channels: Sequence[ChannelConfig]) -> None:
    """Config seeds, in one transaction: campaigns first (channels refer to them), then channels. Existing
    ones are updated; one channel that does not pass ``check`` saves nothing (``ChannelError``)."""
    configs = {ch.name: ch for ch in (normalize(c) for c in channels)}
    await inbound.seed([campaign_record(c) for c in campaigns], [record_of(ch) for ch in configs.values()],
                       lambda rec, names: check(configs[rec.name], set(names)))


def filter_from_dict(d: dict) -> FilterConfig:
    return build(FilterConfig, d, "filter")
