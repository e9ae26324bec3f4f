"""Campaigns (``store.inbound``, seen through ``poller.channels``): where routed inbound mail goes (maildir,
webhook, smtp forward)."""

from __future__ import annotations

import dataclasses

from aiohttp import web

from admin_api.common import Param, Route, bad_request, conflict, invalid, not_found, ok, read_json, relaybox
from poller import channels
from poller.config import CampaignConfig, identifier_problem
from relay.configtypes import ConfigError, build
from store.inbound import CampaignInUse, InboundStore

MASK = "***"


def _build(data: dict, name: str) -> CampaignConfig:
    try:
        return build(CampaignConfig, data, f"campaigns.{name}")
    except ConfigError as exc:
        raise invalid("; ".join(exc.problems)) from None


def _inbound(request: web.Request) -> InboundStore:
    return relaybox(request).store.inbound


async def _view(request: web.Request, name: str) -> dict:
    rec = await _inbound(request).campaign(name)
    if rec is None:
        raise not_found(f"no campaign {name}")
    return channels.campaign_view(rec)


async def list_campaigns(request: web.Request) -> web.Response:
    return ok({"items": await channels.list_campaigns(_inbound(request)), "next_cursor": None})


async def show_campaign(request: web.Request) -> web.Response:
    return ok(await _view(request, request.match_info["name"]))


async def create(inbound: InboundStore, body: dict) -> str:
    """``POST /api/v1/campaigns``'s steps (the console's form too): the saved name."""
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise invalid("name: required")
    problem = identifier_problem("campaign name", name.strip())
    if problem:                   # a campaign name becomes a Maildir directory: never a path
        raise bad_request(problem)
    c = _build(body, name)
    if await inbound.campaign(name.strip()) is not None:
        raise conflict(f"campaign {name.strip()} exists; PUT /api/v1/campaigns/{name.strip()} changes it")
    await channels.save_campaign(inbound, c)
    return name.strip()


async def update(inbound: InboundStore, name: str, body: dict) -> None:
    """``PUT /api/v1/campaigns/{name}``'s steps (the console's form too): the fields given replace the
    stored ones; a secret of ``***`` or None keeps the stored secret."""
    if "name" in body and body["name"] != name:
        raise invalid("name: cannot be changed")
    old = await channels.get_campaign(inbound, name)
    if old is None:
        raise not_found(f"no campaign {name}")
    data = dataclasses.asdict(old)
    data.update({k: v for k, v in body.items() if not (k == "secret" and v in (None, MASK))})
    await channels.save_campaign(inbound, _build(data, name))


async def delete(inbound: InboundStore, name: str) -> None:
    """``DELETE /api/v1/campaigns/{name}``'s steps: 409 while a channel or filter names it."""
    try:
        removed = await inbound.delete_campaign(name)
    except CampaignInUse as exc:
        raise conflict(str(exc)) from None
    if not removed:
        raise not_found(f"no campaign {name}")


async def create_campaign(request: web.Request) -> web.Response:
    name = await create(_inbound(request), await read_json(request))
    return ok(await _view(request, name), status=201)


async def update_campaign(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await update(_inbound(request), name, await read_json(request))
    return ok(await _view(request, name))


async def delete_campaign(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await delete(_inbound(request), name)
    return ok({"removed": name})


NAME = Param("name", where="path", required=True)
CAMPAIGN = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
    "kind": {"type": "string", "enum": ["maildir", "webhook", "smtp"]},
    "path": {"type": "string"}, "url": {"type": "string"},
    "secret": {"type": "string", "description": "write-only; answers show ***"},
    "forward_to": {"type": "string"}, "sender": {"type": "string"},
    "timeout": {"oneOf": [{"type": "string"}, {"type": "number", "minimum": 0}],
                "description": 'webhook: per request, e.g. "15s" or a number of seconds'},
    "attachments": {"type": "string", "enum": ["base64", "none"]}}}

ROUTES = [
    Route("GET", "/api/v1/campaigns", list_campaigns, "Campaigns (targets of routed inbound mail)",
          "campaigns",
          response={"type": "object", "properties": {"items": {"type": "array", "items": CAMPAIGN}}}),
    Route("POST", "/api/v1/campaigns", create_campaign, "Create a campaign", "campaigns", body=CAMPAIGN,
          response=CAMPAIGN, status=201, errors=(400, 409, 422)),
    Route("GET", "/api/v1/campaigns/{name}", show_campaign, "One campaign", "campaigns", [NAME],
          response=CAMPAIGN, errors=(404,)),
    Route("PUT", "/api/v1/campaigns/{name}", update_campaign, "Change a campaign (*** keeps the secret)",
          "campaigns", [NAME], body={"type": "object", "properties": CAMPAIGN["properties"]},
          response=CAMPAIGN, errors=(404, 422)),
    Route("DELETE", "/api/v1/campaigns/{name}", delete_campaign, "Remove an unused campaign", "campaigns",
          [NAME], response={"type": "object"}, errors=(404, 409)),
]
