"""Queue summary: recipient counts per status, a qshape-style table (destination domain x age), and the
destinations the delivery engine has parked (down since, last error, next probe, recipients waiting)."""

from __future__ import annotations

from aiohttp import web

from admin_api.common import Param, Route, bad_request, iso, ok, query_int, relaybox
from store.history import parse_statuses


async def summary(request: web.Request) -> web.Response:
    try:
        st = parse_statuses(request.query.get("status"))
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    top = query_int(request, "top", 50, 1, 10000)
    shape = await relaybox(request).store.history.summary(statuses=st, top=top)
    return ok({**shape.as_dict(), "destinations_down": _parked(request)})


def _parked(request: web.Request) -> list[dict]:
    scheduler = relaybox(request).scheduler
    if scheduler is None:        # delivery.enabled = false
        return []
    return [{**d.as_dict(), "down_since": iso(d.down_since), "next_probe": iso(d.next_probe)}
            for d in scheduler.destinations.status()]


async def destinations(request: web.Request) -> web.Response:
    return ok({"items": _parked(request), "next_cursor": None})


ROW = {"type": "object", "properties": {"domain": {"type": "string"}, "total": {"type": "integer"},
                                        "counts": {"type": "array", "items": {"type": "integer"}}}}

PARKED = {"type": "object", "properties": {
    "destination": {"type": "string"}, "down_since": {"type": "string"}, "failures": {"type": "integer"},
    "last_error": {"type": "string"}, "next_probe": {"type": "string"}, "probing": {"type": "boolean"},
    "recipients_waiting": {"type": "integer"}}}

ROUTES = [
    Route("GET", "/api/v1/queue/summary", summary, "Counts per status and qshape table (domain x age)",
          "queue",
          [Param("status", description="recipient statuses in the table (default: active ones)"),
           Param("top", "integer", "most loaded domains listed (default 50)", minimum=1, maximum=10000)],
          response={"type": "object", "required": ["counts", "buckets", "rows", "total"], "properties": {
              "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
              "buckets": {"type": "array", "items": {"type": "string"}},
              "rows": {"type": "array", "items": ROW}, "total": ROW,
              "destinations_down": {"type": "array", "items": PARKED}}}),
    Route("GET", "/api/v1/destinations", destinations,
          "Parked destinations: down since, last error, next probe",
          "queue", response={"type": "object", "properties": {"items": {"type": "array", "items": PARKED}}}),
]
