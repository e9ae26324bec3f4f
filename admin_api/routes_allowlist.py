"""Allowlist (CIDR + note): changes reach the SMTP intake at once (the in-memory policy is refreshed)."""

from __future__ import annotations

from aiohttp import web

from admin_api.common import (
    Param,
    Route,
    body_str,
    conflict,
    invalid,
    iso,
    not_found,
    ok,
    read_json,
    relaybox,
)
from relay.intake import policy
from store.access import AllowlistEntry, Conflict

ENTRY = {"type": "object", "required": ["cidr"], "properties": {
    "cidr": {"type": "string"}, "note": {"type": "string", "nullable": True},
    "source": {"type": "string"}, "created_at": {"type": "string"}}}


def _present(entry: AllowlistEntry) -> dict:
    d = entry.as_dict()
    d["created_at"] = iso(d["created_at"])
    return d


async def list_allowlist(request: web.Request) -> web.Response:
    entries = await relaybox(request).store.access.list_allowlist()
    return ok({"items": [_present(e) for e in entries], "next_cursor": None})


async def add(rb, cidr: str | None, note: str | None, source: str = "api") -> AllowlistEntry:
    """``POST /api/v1/allowlist``'s steps (the console's form too): the network normalised, 409 if it is
    already there, the intake's policy refreshed."""
    try:
        net = str(policy.parse_cidr(cidr or ""))
    except ValueError as exc:
        raise invalid(f"cidr: {exc}") from None
    try:
        entry = await rb.store.access.add_allowlist(net, note, source, exist_ok=False)
    except Conflict:
        raise conflict(f"{net} is already on the allowlist") from None
    await rb.policy.refresh()
    return entry


async def remove(rb, raw: str) -> str:
    """``DELETE /api/v1/allowlist/{cidr}``'s steps: the removed network (404 if it was not there)."""
    try:
        net = str(policy.parse_cidr(raw))
    except ValueError as exc:
        raise invalid(f"cidr: {exc}") from None
    if not await rb.store.access.remove_allowlist(net):
        raise not_found(f"{net} is not on the allowlist")
    await rb.policy.refresh()
    return net


async def add_entry(request: web.Request) -> web.Response:
    body = await read_json(request)
    cidr = body_str(body, "cidr", max_len=64)
    note = body_str(body, "note", required=False)
    return ok(_present(await add(relaybox(request), cidr, note)), status=201)


async def remove_entry(request: web.Request) -> web.Response:
    return ok({"removed": await remove(relaybox(request), request.match_info["cidr"])})


ROUTES = [
    Route("GET", "/api/v1/allowlist", list_allowlist, "Networks allowed to relay without AUTH", "allowlist",
          response={"type": "object", "properties": {"items": {"type": "array", "items": ENTRY}}}),
    Route("POST", "/api/v1/allowlist", add_entry, "Allow a network (takes effect immediately)", "allowlist",
          body={"type": "object", "required": ["cidr"], "properties": {
              "cidr": {"type": "string", "example": "10.0.0.0/8"}, "note": {"type": "string"}}},
          response=ENTRY, status=201, errors=(409, 422)),
    Route("DELETE", "/api/v1/allowlist/{cidr:.+}", remove_entry, "Remove a network", "allowlist",
          [Param("cidr", where="path", required=True, description="e.g. 10.0.0.0/8 (the slash may be %2F)")],
          response={"type": "object"}, errors=(404, 422)),
]
