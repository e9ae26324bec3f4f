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
from poller.config import ChannelConfig, FilterConfig
from relay.configtypes import ConfigError, build
from store.inbound import InboundStore

MASK = "***"
log = logging.getLogger("admin_api.channels")
# what a channel view adds to its settings; a PUT of a whole view ignores these
READ_ONLY = ("state", "status", "last_poll_at", "last_success_at", "last_error", "fetched", "routed",
             "quarantined")


def _status(request: web.Request) -> dict[str, dict]:
    poller = getattr(relaybox(request), "poller", None)
    if poller is None:
        return {}
    return {s["name"]: s for s in poller.status()}


def _present(row: dict, status: dict[str, dict]) -> dict:
    out = dict(row)
    for k in ("last_poll_at", "last_success_at"):
        if k in out:
            out[k] = iso(out[k])
    st = status.get(out["name"], {})
    out["state"] = ("inactive" if not out.get("enabled") else "up" if st.get("up") else
                    "failing" if out.get("last_error") else "starting")
    out["status"] = {"running": bool(st.get("running", False)), "up": st.get("up"),
                     "idling": st.get("idle")}
    return out


def _inbound(request: web.Request) -> InboundStore:
    return relaybox(request).store.inbound


async def _one(request: web.Request, name: str) -> dict:
    rec = await _inbound(request).channel(name)
    if rec is None:
        raise not_found(f"no channel {name}")
    return _present(channels.channel_view(rec), _status(request))


def _build(data: dict, name: str) -> ChannelConfig:
    try:
        return build(ChannelConfig, data, f"channels.{name}")
    except ConfigError as exc:
        raise invalid("; ".join(exc.problems)) from None


async def _save(request: web.Request, ch: ChannelConfig) -> None:
    try:
        await channels.save_channel(_inbound(request), ch)
    except (channels.ChannelError, ValueError) as exc:
        raise invalid(str(exc)) from None


async def list_channels(request: web.Request) -> web.Response:
    rows = await channels.list_channels(_inbound(request))
    status = _status(request)
    return ok({"items": [_present(r, status) for r in rows], "next_cursor": None})


async def show_channel(request: web.Request) -> web.Response:
    return ok(await _one(request, request.match_info["name"]))


async def create_channel(request: web.Request) -> web.Response:
    body = await read_json(request)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise invalid("name: required")
    ch = _build(body, name)
    if await _inbound(request).channel(ch.name.strip()) is not None:
        raise conflict(f"channel {ch.name.strip()} exists; PUT /api/v1/channels/{ch.name.strip()} changes it")
    await _save(request, ch)
    return ok(await _one(request, ch.name.strip()), status=201)


async def _stored(request: web.Request, name: str) -> ChannelConfig:
    ch = await channels.get_channel(_inbound(request), name)
    if ch is None:
        raise not_found(f"no channel {name}")
    return ch


def _merge(old: ChannelConfig, body: dict) -> dict:
    data = dataclasses.asdict(old)
    for k, v in body.items():
        if k in READ_ONLY:
            continue
        if k in channels.SECRET_FIELDS and (v is None or v == MASK):
            continue            # write-only secrets: the redacted view round-trips unchanged
        data[k] = v
    data["name"] = old.name
    return data


async def update_channel(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await read_json(request)
    if "name" in body and body["name"] != name:
        raise invalid("name: cannot be changed (create a new channel)")
    old = await _stored(request, name)
    await _save(request, _build(_merge(old, body), name))
    return ok(await _one(request, name))


async def delete_channel(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not await _inbound(request).delete_channel(name):
        raise not_found(f"no channel {name}")
    return ok({"removed": name})


def _toggle(enabled: bool):
    async def handler(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        old = await _stored(request, name)
        await _save(request, dataclasses.replace(old, enabled=enabled))
        return ok(await _one(request, name))
    return handler


async def get_filters(request: web.Request) -> web.Response:
    ch = await _stored(request, request.match_info["name"])
    return ok({"items": [dataclasses.asdict(f) for f in ch.filters], "next_cursor": None})


async def put_filters(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await read_json(request)
    items = body.get("items")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items) or len(items) > 1000:
        raise invalid("items: expected an ordered list of filters {field, op, value, campaign}")
    try:
        filters = [build(FilterConfig, i, f"filters[{n}]") for n, i in enumerate(items)]
    except ConfigError as exc:
        raise invalid("; ".join(exc.problems)) from None
    old = await _stored(request, name)
    await _save(request, dataclasses.replace(old, filters=filters))
    return ok({"items": [dataclasses.asdict(f) for f in filters], "next_cursor": None})


async def validate(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await _stored(request, name)
    poller = getattr(relaybox(request), "poller", None)
    if poller is None:
        raise conflict("the inbound poller is not running in this instance")
    try:
        success, text = await poller.validate(name)
    except Exception as exc:  # noqa: BLE001 - a settings combination the poller did not foresee: say so
        log.exception("channel %s: validation failed unexpectedly", name)
        success, text = False, f"validation failed: {type(exc).__name__}: {exc}"[:500]
    return ok({"name": name, "ok": bool(success), "result": text})


NAME = Param("name", where="path", required=True)
FILTER = {"type": "object", "required": ["field", "value", "campaign"], "properties": {
    "field": {"type": "string", "description": "sender | subject | body | to | header:NAME"},
    "op": {"type": "string", "enum": ["contains", "equals", "regex"]},
    "value": {"type": "string"}, "campaign": {"type": "string"}}}
CHANNEL: dict[str, Any] = {"type": "object", "required": ["name", "host", "user"], "properties": {
    "name": {"type": "string"}, "host": {"type": "string"}, "user": {"type": "string"},
    "address": {"type": "string"}, "protocol": {"type": "string", "enum": ["imap", "pop3"]},
    "port": {"type": "integer"}, "tls": {"type": "string", "enum": ["implicit", "starttls", "none"]},
    "auth": {"type": "string", "enum": ["password", "oauth2"]},
    "password": {"type": "string", "description": "write-only; answers show ***"},
    "folder": {"type": "string"}, "after": {"type": "string", "enum": ["seen", "move", "delete"]},
    "storage_folder": {"type": "string"}, "default_campaign": {"type": "string"},
    "enabled": {"type": "boolean"}, "filters": {"type": "array", "items": FILTER}}}
VIEW = {"type": "object", "properties": {"name": {"type": "string"}, "state": {"type": "string"},
                                         "last_error": {"type": "string", "nullable": True}}}

ROUTES = [
    Route("GET", "/api/v1/channels", list_channels, "Inbound channels with status and counters", "channels",
          response={"type": "object", "properties": {"items": {"type": "array", "items": VIEW}}}),
    Route("POST", "/api/v1/channels", create_channel, "Create a channel (validated on save)", "channels",
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
          "Connect, log in and select (server's own error)", "channels", [NAME], response={"type": "object"},
          errors=(404, 409)),
    Route("GET", "/api/v1/channels/{name}/filters", get_filters, "Ordered filters of a channel", "channels",
          [NAME], response={"type": "object"}, errors=(404,)),
    Route("PUT", "/api/v1/channels/{name}/filters", put_filters, "Replace the ordered filters", "channels",
          [NAME], body={"type": "object", "required": ["items"], "properties": {
              "items": {"type": "array", "items": FILTER}}}, response={"type": "object"}, errors=(404, 422)),
]
