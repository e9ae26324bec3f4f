"""The suppression list (``store.bounces``): list/search, show, add, remove, export."""

from __future__ import annotations

import csv
import io
import time

from aiohttp import web

from admin_api.common import (
    PAGE_PARAMS,
    Param,
    Route,
    bad_request,
    body_str,
    decode_cursor,
    encode_cursor,
    invalid,
    iso,
    not_found,
    ok,
    page_schema,
    query_bool,
    query_int,
    read_json,
    relaybox,
)
from store import suppressions
from store.suppressions import Suppression


def _present(e: Suppression) -> dict:
    return {**e.as_dict(), "created_at": iso(e.created_at), "expires_at": iso(e.expires_at)}


async def list_suppressions(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 50, 1, 1000)
    cur = decode_cursor(request.query.get("cursor"))
    if cur is not None and not (isinstance(cur, dict) and isinstance(cur.get("offset"), int)
                                and 0 <= cur["offset"] <= 10**9):
        raise bad_request("cursor: not a cursor returned by this API")
    offset = cur["offset"] if cur else 0
    search = request.query.get("search") or None
    expired = bool(query_bool(request, "include_expired"))
    rows = await relaybox(request).store.bounces.suppressions(include_expired=expired, search=search,
                                                             limit=limit + 1, offset=offset)
    nxt = encode_cursor({"offset": offset + limit}) if len(rows) > limit else None
    return ok({"items": [_present(r) for r in rows[:limit]], "next_cursor": nxt})


async def show_suppression(request: web.Request) -> web.Response:
    addr = request.match_info["address"]
    e = await relaybox(request).store.bounces.suppression(addr)
    if e is None:
        raise not_found(f"{addr} is not suppressed")
    return ok(_present(e))


async def add_suppression(request: web.Request) -> web.Response:
    body = await read_json(request)
    address = body_str(body, "address", max_len=320) or ""
    reason = body_str(body, "reason", required=False, max_len=100) or "manual"
    note = body_str(body, "note", required=False)
    days = body.get("days")
    bad_days = isinstance(days, bool) or not isinstance(days, (int, float)) or not 0 < days <= 36500
    if days is not None and bad_days:
        raise invalid("days: expected a number of days (0 < days <= 36500); leave it out for 'forever'")
    expires = time.time() + days * 86400 if days is not None else None
    try:
        entry = await relaybox(request).store.bounces.suppress(address, reason, "manual", "api",
                                                               expires_at=expires, note=note)
    except ValueError as exc:
        raise invalid(f"address: {exc}") from None
    return ok(_present(entry), status=201)


async def remove_suppression(request: web.Request) -> web.Response:
    addr = request.match_info["address"]
    if not await relaybox(request).store.bounces.unsuppress(addr):
        raise not_found(f"{addr} is not on the suppression list")
    return ok({"removed": suppressions.normalize(addr)})


async def export(request: web.Request) -> web.Response:
    rows = [_present(r) for r in await relaybox(request).store.bounces.export_suppressions()]
    return ok({"items": rows, "next_cursor": None})


async def export_csv(request: web.Request) -> web.Response:
    rows = [_present(r) for r in await relaybox(request).store.bounces.export_suppressions()]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(suppressions.COLUMNS))
    w.writeheader()
    w.writerows(rows)
    return web.Response(text=buf.getvalue(), content_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="suppressions.csv"'})


ENTRY = {"type": "object", "properties": {
    "address": {"type": "string"}, "reason": {"type": "string"}, "kind": {"type": "string"},
    "source": {"type": "string"}, "created_at": {"type": "string"},
    "expires_at": {"type": "string", "nullable": True}, "note": {"type": "string", "nullable": True}}}
ADDR = Param("address", where="path", required=True)

ROUTES = [
    Route("GET", "/api/v1/suppressions", list_suppressions, "Suppressed addresses (search, newest first)",
          "suppressions", [Param("search", description="substring of address or reason"),
                           Param("include_expired", "boolean")] + PAGE_PARAMS, response=page_schema(ENTRY)),
    Route("GET", "/api/v1/export/suppressions", export, "Every active entry", "suppressions",
          response={"type": "object"}),
    Route("GET", "/api/v1/export/suppressions.csv", export_csv, "Every active entry as CSV", "suppressions",
          content_type="text/csv"),
    Route("POST", "/api/v1/suppressions", add_suppression, "Suppress an address (manual)", "suppressions",
          body={"type": "object", "required": ["address"], "properties": {
              "address": {"type": "string"}, "reason": {"type": "string"}, "note": {"type": "string"},
              "days": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 36500}}},
          response=ENTRY, status=201, errors=(422,)),
    Route("GET", "/api/v1/suppressions/{address}", show_suppression, "One entry", "suppressions", [ADDR],
          response=ENTRY, errors=(404,)),
    Route("DELETE", "/api/v1/suppressions/{address}", remove_suppression, "Remove an address", "suppressions",
          [ADDR], response={"type": "object"}, errors=(404,)),
]
