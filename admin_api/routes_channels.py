"""Inbound channels (``poller.channels``): list with status, show, create, update, delete, enable/disable,
ordered filters, and the "Validate" action (connect, log in, select within the poller's timeout).

Secrets (password, OAuth2 client secret, refresh token) are write-only: answers show ``"***"``, and an
update that sends ``"***"`` or leaves the field out keeps the stored value.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from aiohttp import web

from admin_api.common import Param, Route, conflict, invalid, iso, not_found, ok, read_json, relaybox
from poller import channels
from poller.config import ChannelConfig, FilterConfig, PollerConfig
from poller.validate import Validation, save_validated, validate_stored
from relay.configtypes import ConfigError, build
from store.inbound import InboundStore

MASK = "***"
log = logging.getLogger("admin_api.channels")
# what a channel view adds to its settings; a PUT of a whole view ignores these
READ_ONLY = ("state", "status", "last_poll_at", "last_success_at", "last_error", "fetched", "routed",
             "quarantined")


def poller_of(request: web.Request) -> Any:
    return getattr(relaybox(request), "poller", None)


def poller_status(request: web.Request) -> dict[str, dict]:
    poller = poller_of(request)
    if poller is None:
        return {}
    return {s["name"]: s for s in poller.status()}


def present(row: dict, status: dict[str, dict]) -> dict:
    """A channel view for the API: the state (active | inactive | failing, from enabled and the last error)
    and the running poller's view; ``up`` is never true for a disabled channel or with a last error."""
    out = dict(row)
    for k in ("last_poll_at", "last_success_at"):
        if k in out:
            out[k] = iso(out[k])
    st = status.get(out["name"], {})
    out["state"] = channels.state_of(bool(out.get("enabled")), out.get("last_error"))
    live = out["state"] == "active"
    out["status"] = {"running": bool(st.get("running", False)) and bool(out.get("enabled")),
                     "up": live and bool(st.get("up")), "idling": live and bool(st.get("idle"))}
    return out


def inbound_store(request: web.Request) -> InboundStore:
    return relaybox(request).store.inbound


async def _one(request: web.Request, name: str) -> dict:
    rec = await inbound_store(request).channel(name)
    if rec is None:
        raise not_found(f"no channel {name}")
    return present(channels.channel_view(rec), poller_status(request))


def build_channel(data: dict, name: str) -> ChannelConfig:
    try:
        return build(ChannelConfig, data, f"channels.{name}")
    except ConfigError as exc:
        raise invalid("; ".join(exc.problems)) from None


def validation_timeout(request: web.Request) -> float:
    poller = poller_of(request)
    return float(poller.pcfg.timeout if poller is not None else PollerConfig().timeout)


async def save(request: web.Request, ch: ChannelConfig, *, validate: bool = True) -> Validation | None:
    """Save a channel: validated against its server first (an active channel only when the connection
    succeeds: 422 "Connection failed: ..." otherwise); ``validate=False`` for changes that do not touch
    the connection (filters, disabling)."""
    try:
        if not validate:
            await channels.save_channel(inbound_store(request), ch)
            return None
        poller = poller_of(request)
        return await save_validated(inbound_store(request), ch, validation_timeout(request),
                                    poller.http if poller is not None else None)
    except (channels.ChannelError, ValueError) as exc:
        raise invalid(str(exc)) from None


def _with(view: dict, v: Validation | None) -> dict:
    return view if v is None else {**view, "validation": v.as_dict()}


async def list_channels(request: web.Request) -> web.Response:
    search = {k: request.query.get(k) for k in ("name", "address", "campaign", "state", "q")}
    if search["state"] is not None and search["state"] not in channels.STATES:
        raise invalid(f"state: expected one of {', '.join(channels.STATES)}")
    rows = await channels.list_channels(inbound_store(request), **search)
    status = poller_status(request)
    return ok({"items": [present(r, status) for r in rows], "next_cursor": None})


async def show_channel(request: web.Request) -> web.Response:
    return ok(await _one(request, request.match_info["name"]))


async def create(request: web.Request, body: dict) -> tuple[str, Validation | None]:
    """``POST /api/v1/channels``'s steps (the console's form too): build, refuse an existing name, save
    (validated): the saved name and the validation."""
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise invalid("name: required")
    ch = build_channel(body, name)
    if await inbound_store(request).channel(ch.name.strip()) is not None:
        raise conflict(f"channel {ch.name.strip()} exists; PUT /api/v1/channels/{ch.name.strip()} changes it")
    return ch.name.strip(), await save(request, ch)


async def create_channel(request: web.Request) -> web.Response:
    name, v = await create(request, await read_json(request))
    return ok(_with(await _one(request, name), v), status=201)


async def stored(request: web.Request, name: str) -> ChannelConfig:
    ch = await channels.get_channel(inbound_store(request), name)
    if ch is None:
        raise not_found(f"no channel {name}")
    return ch


def merge(old: ChannelConfig, body: dict) -> dict:
    data = dataclasses.asdict(old)
    for k, v in body.items():
        if k in READ_ONLY:
            continue
        if k in channels.SECRET_FIELDS and (v is None or v == MASK):
            continue            # write-only secrets: the redacted view round-trips unchanged
        data[k] = v
    data["name"] = old.name
    return data


async def update(request: web.Request, name: str, body: dict) -> Validation | None:
    """``PUT /api/v1/channels/{name}``'s steps (the console's form too): merge with the stored channel,
    validate again only when the connection changed or the channel is being enabled, save."""
    if "name" in body and body["name"] != name:
        raise invalid("name: cannot be changed (create a new channel)")
    old = await stored(request, name)
    new = build_channel(merge(old, body), name)
    again = not same_connection(old, new) or (new.enabled and not old.enabled)
    return await save(request, new, validate=again)


async def update_channel(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    v = await update(request, name, await read_json(request))
    return ok(_with(await _one(request, name), v))


async def delete_channel(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not await inbound_store(request).delete_channel(name):
        raise not_found(f"no channel {name}")
    return ok({"removed": name})


def same_connection(a: ChannelConfig, b: ChannelConfig) -> bool:
    """Only filters, routing or the enabled flag differ (nothing a validation would look at)."""
    keep = ("filters", "enabled", "default_campaign", "poll_interval", "purpose", "recipient_only")
    return dataclasses.replace(a, **{k: getattr(b, k) for k in keep}) == b


def _toggle(enabled: bool):
    async def handler(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        old = await stored(request, name)
        v = await save(request, dataclasses.replace(old, enabled=enabled), validate=enabled)
        return ok(_with(await _one(request, name), v))
    return handler


async def get_filters(request: web.Request) -> web.Response:
    ch = await stored(request, request.match_info["name"])
    return ok({"items": [dataclasses.asdict(f) for f in ch.filters], "next_cursor": None})


async def replace_filters(request: web.Request, name: str, items: Any) -> list[FilterConfig]:
    """``PUT /api/v1/channels/{name}/filters``'s steps (the console's filter editor too): the ordered
    filters checked (each names a stored campaign) and saved, without a validation."""
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items) or len(items) > 1000:
        raise invalid("items: expected an ordered list of filters {field, op, value, campaign}")
    try:
        filters = [build(FilterConfig, i, f"filters[{n}]") for n, i in enumerate(items)]
    except ConfigError as exc:
        raise invalid("; ".join(exc.problems)) from None
    old = await stored(request, name)
    await save(request, dataclasses.replace(old, filters=filters), validate=False)
    return filters


async def put_filters(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await read_json(request)
    filters = await replace_filters(request, name, body.get("items"))
    return ok({"items": [dataclasses.asdict(f) for f in filters], "next_cursor": None})


async def validate(request: web.Request) -> web.Response:
    """Validate the stored channel now ("Connection succeeded" / "Connection failed: <server's words>");
    the answer is also kept as the channel's last error (cleared on success)."""
    name = request.match_info["name"]
    await stored(request, name)
    poller = poller_of(request)
    try:
        v = await validate_stored(inbound_store(request), name, validation_timeout(request),
                                  poller.http if poller is not None else None)
    except Exception as exc:  # noqa: BLE001 - a settings combination the poller did not foresee: say so
        log.exception("channel %s: validation failed unexpectedly", name)
        v = Validation(False, f"Connection failed: {type(exc).__name__}: {exc}"[:500])
    return ok({"name": name, **v.as_dict()})


NAME = Param("name", where="path", required=True)
FILTER = {"type": "object", "required": ["field", "value", "campaign"], "properties": {
    "field": {"type": "string", "description": "sender | subject | body | to | header:NAME"},
    "op": {"type": "string", "enum": ["contains", "equals", "regex"]},
    "value": {"type": "string"}, "campaign": {"type": "string"}}}
ENUMS = {"protocol": ["imap", "pop3"], "tls": ["implicit", "starttls", "none"],
          "auth": ["password", "oauth2"],
          "after": ["seen", "move", "delete"], "purpose": ["campaigns", "bounces"]}
DESCRIPTIONS = {
    "name": "identifier: letter or digit, then letters, digits, _ . - (at most 64)",
    "short_name": "identifier of the channel's stored mail (default: name), kept when the mailbox moves",
    "port": "0 = the protocol's default for the TLS mode",
    "server_name": "SNI and the name the certificate must carry (default: host)",
    "poll_interval": 'seconds or a duration like "60s"',
    "first_sync": "what a folder's first sync takes: all (default) | unseen | since:YYYY-MM-DD (IMAP only)",
    "sync_all_folders": "every folder except storage, trash, sent, drafts and junk",
    "recipient_only": "only messages whose To/Cc/Bcc/Delivered-To name the address",
    "storage_folder": "target of after = move: must exist on the server and differ from folder",
    "enabled": "an active channel is saved only when its validation succeeds",
}


def _schema(f: dataclasses.Field) -> dict[str, Any]:
    if f.name == "filters":
        return {"type": "array", "items": FILTER}
    tp = {"bool": "boolean", "int": "integer", "Duration": "string"}.get(str(f.type), "string")
    out: dict[str, Any] = {"type": tp}
    if f.name in ENUMS:
        out["enum"] = ENUMS[f.name]
    if f.name in channels.SECRET_FIELDS:
        out["description"] = "write-only; answers show ***"
    elif f.name in DESCRIPTIONS:
        out["description"] = DESCRIPTIONS[f.name]
    return out


# every field of ChannelConfig, as the API takes it
CHANNEL: dict[str, Any] = {"type": "object", "required": ["name", "host", "user"], "properties": {
    f.name: _schema(f) for f in dataclasses.fields(ChannelConfig)}}
VALIDATION = {"type": "object", "properties": {
    "ok": {"type": "boolean"}, "result": {"type": "string", "description":
                                          "Connection succeeded | Connection failed: <the server's words>"},
    "detail": {"type": "string"}}}
VIEW = {"type": "object", "properties": {
    **CHANNEL["properties"],
    "state": {"type": "string", "enum": ["active", "inactive", "failing"]},
    "last_error": {"type": "string", "nullable": True},
    "last_poll_at": {"type": "string", "nullable": True},
    "last_success_at": {"type": "string", "nullable": True},
    "fetched": {"type": "integer"}, "routed": {"type": "integer"}, "quarantined": {"type": "integer"},
    "status": {"type": "object", "properties": {"running": {"type": "boolean"}, "up": {"type": "boolean"},
                                                "idling": {"type": "boolean"}}},
    "validation": VALIDATION}}
SEARCH = [Param("name", description="substring of the name or short name"),
          Param("address", description="substring of the address or user"),
          Param("campaign", description="the default campaign or one a filter names"),
          Param("state", enum=["active", "inactive", "failing"]),
          Param("q", description="substring of name, short name, address, user or host")]

ROUTES = [
    Route("GET", "/api/v1/channels", list_channels, "Inbound channels with state, counters; search",
          "channels", SEARCH,
          response={"type": "object", "properties": {"items": {"type": "array", "items": VIEW}}}),
    Route("POST", "/api/v1/channels", create_channel,
          "Create a channel (validated on save; an active one only if the connection succeeds)", "channels",
          body=CHANNEL, response=VIEW, status=201, errors=(409, 422)),
    Route("GET", "/api/v1/channels/{name}", show_channel, "One channel (secrets shown as ***)", "channels",
          [NAME], response=VIEW, errors=(404,)),
    Route("PUT", "/api/v1/channels/{name}", update_channel,
          "Change a channel (fields given; *** keeps secrets)", "channels", [NAME],
          body={"type": "object", "properties": CHANNEL["properties"]}, response=VIEW, errors=(404, 422)),
    Route("DELETE", "/api/v1/channels/{name}", delete_channel, "Remove a channel", "channels", [NAME],
          response={"type": "object"}, errors=(404,)),
    Route("POST", "/api/v1/channels/{name}/enable", _toggle(True), "Activate (needs a default campaign)",
          "channels", [NAME], response=VIEW, errors=(404, 422)),
    Route("POST", "/api/v1/channels/{name}/disable", _toggle(False), "Deactivate", "channels", [NAME],
          response=VIEW, errors=(404, 422)),
    Route("POST", "/api/v1/channels/{name}/validate", validate,
          "Connect, log in and select: Connection succeeded / Connection failed: <the server's words>",
          "channels", [NAME], response=VALIDATION, errors=(404,)),
    Route("GET", "/api/v1/channels/{name}/filters", get_filters, "Ordered filters of a channel", "channels",
          [NAME], response={"type": "object"}, errors=(404,)),
    Route("PUT", "/api/v1/channels/{name}/filters", put_filters, "Replace the ordered filters", "channels",
          [NAME], body={"type": "object", "required": ["items"], "properties": {
              "items": {"type": "array", "items": FILTER}}}, response={"type": "object"}, errors=(404, 422)),
]
