"""Queue summary: recipient counts per status and a qshape-style table (destination domain x age)."""

from __future__ import annotations

from aiohttp import web

from admin_api.common import Param, Route, bad_request, ok, query_int, relaybox
from store.history import parse_statuses


async def summary(request: web.Request) -> web.Response:
    try:
        st = parse_statuses(request.query.get("status"))
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    top = query_int(request, "top", 50, 1, 10000)
    shape = await relaybox(request).store.history.summary(statuses=st, top=top)
    return ok(shape.as_dict())


ROW = {"type": "object", "properties": {"domain": {"type": "string"}, "total": {"type": "integer"},
                                        "counts": {"type": "array", "items": {"type": "integer"}}}}

ROUTES = [
    Route("GET", "/api/v1/queue/summary", summary, "Counts per status and qshape table (domain x age)",
          "queue",
          [Param("status", description="recipient statuses in the table (default: active ones)"),
           Param("top", "integer", "most loaded domains listed (default 50)", minimum=1, maximum=10000)],
          response={"type": "object", "required": ["counts", "buckets", "rows", "total"], "properties": {
              "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
              "buckets": {"type": "array", "items": {"type": "string"}},
              "rows": {"type": "array", "items": ROW}, "total": ROW}}),
]
