"""Bounces as recorded by ``relay.bounces.record`` (``store.bounces``): list with filters, show (with the
raw report of unparsed ones), each linked to its message when correlated."""

from __future__ import annotations

from aiohttp import web

from admin_api.common import (
    PAGE_PARAMS,
    Param,
    Route,
    iso,
    not_found,
    ok,
    page_schema,
    relaybox,
    time_page,
)
from store.bounces import Bounce

FILTERS = ("address", "category", "kind", "reason", "source", "message_id")


def _present(b: Bounce, *, full: bool = False) -> dict:
    out = {k: v for k, v in b.as_dict().items() if k != "raw"}
    out["at"] = iso(b.at)
    out["message"] = f"/api/v1/messages/{b.message_id}" if b.message_id else None
    if full:
        out["raw"] = b.raw.decode("utf-8", "replace") if b.raw else None
    return out


async def list_bounces(request: web.Request) -> web.Response:
    page = time_page(request, FILTERS)
    rows = await relaybox(request).store.bounces.list(page.filters, since=page.since, until=page.until,
                                                      before=page.before, limit=page.limit + 1)
    nxt = page.next_cursor(rows)
    return ok({"items": [_present(r) for r in rows[:page.limit]], "next_cursor": nxt})


async def show_bounce(request: web.Request) -> web.Response:
    raw_id = request.match_info["id"]
    if not raw_id.isdigit() or len(raw_id) > 18:
        raise not_found(f"no bounce {raw_id[:40]}")
    row = await relaybox(request).store.bounces.get(int(raw_id))
    if row is None:
        raise not_found(f"no bounce {raw_id}")
    return ok(_present(row, full=True))


BOUNCE = {"type": "object", "properties": {
    "id": {"type": "integer"}, "at": {"type": "string"}, "address": {"type": "string"},
    "category": {"type": "string"}, "reason": {"type": "string", "nullable": True},
    "kind": {"type": "string", "nullable": True}, "status": {"type": "string", "nullable": True},
    "diagnostic": {"type": "string", "nullable": True}, "message": {"type": "string", "nullable": True}}}

ROUTES = [
    Route("GET", "/api/v1/bounces", list_bounces, "Bounces and complaints, newest first", "bounces",
          [Param("address", description="the failed address (exact)"),
           Param("category", enum=["bounce", "feedback", "autoreply", "delivered", "unknown"]),
           Param("kind", enum=["hard", "soft", ""]), Param("reason", description="e.g. userunknown"),
           Param("source"), Param("message_id", description="queue id"),
           Param("since", description="epoch seconds or ISO 8601"), Param("until")] + PAGE_PARAMS,
          response=page_schema(BOUNCE)),
    Route("GET", "/api/v1/bounces/{id}", show_bounce, "One bounce, with the raw report if it was not parsed",
          "bounces", [Param("id", where="path", required=True)], response=BOUNCE, errors=(404,)),
]
