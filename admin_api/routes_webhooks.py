"""Event webhook endpoints: status per endpoint, their deliveries, and "retry pending now"."""

from __future__ import annotations

import time

from aiohttp import web

from admin_api.common import Param, Route, bad_request, iso, not_found, ok, query_int, relaybox
from admin_api.webhooks import endpoint_status


def _hooks(request: web.Request) -> list:
    return list(relaybox(request).settings.section("webhooks") or [])


def _hook(request: web.Request):
    name = request.match_info["name"]
    for h in _hooks(request):
        if h.name == name:
            return h
    raise not_found(f"no webhook endpoint {name}")


async def list_webhooks(request: web.Request) -> web.Response:
    hooks = _hooks(request)
    rows = await relaybox(request).db.read(lambda c: endpoint_status(c, hooks))
    for r in rows:
        r["last_success_at"], r["last_failure_at"] = iso(r["last_success_at"]), iso(r["last_failure_at"])
    return ok({"items": rows, "next_cursor": None})


async def list_deliveries(request: web.Request) -> web.Response:
    hook = _hook(request)
    state = request.query.get("state") or None
    if state not in (None, "pending", "delivered", "failed"):
        raise bad_request("state: expected pending, delivered or failed")
    after = query_int(request, "after", 0, 0, 2**62)
    limit = query_int(request, "limit", 50, 1, 1000)

    def _q(conn):
        sql = ("SELECT id, event_id, event_type, message_id, state, attempts, next_attempt_at, created_at,"
               " last_status, last_error FROM webhook_deliveries WHERE endpoint=? AND id > ?")
        args: list = [hook.name, after]
        if state:
            sql += " AND state=?"
            args.append(state)
        return [dict(r) for r in conn.execute(sql + " ORDER BY id LIMIT ?", (*args, limit))]

    rows = await relaybox(request).db.read(_q)
    for r in rows:
        r["next_attempt_at"], r["created_at"] = iso(r["next_attempt_at"]), iso(r["created_at"])
    return ok({"items": rows, "next_after": rows[-1]["id"] if rows else after})


async def retry_now(request: web.Request) -> web.Response:
    hook = _hook(request)
    rb = relaybox(request)
    now = time.time()
    n = await rb.db.write(lambda c: c.execute(
        "UPDATE webhook_deliveries SET next_attempt_at=? WHERE endpoint=? AND state='pending'",
        (now, hook.name)).rowcount)
    admin = getattr(rb, "admin", None)
    if admin is not None and getattr(admin, "webhooks", None) is not None:
        admin.webhooks.wake()
    return ok({"name": hook.name, "rescheduled": n})


NAME = Param("name", where="path", required=True)
ROUTES = [
    Route("GET", "/api/v1/webhooks", list_webhooks, "Event webhook endpoints and their status", "webhooks",
          response={"type": "object", "properties": {"items": {"type": "array"}}}),
    Route("GET", "/api/v1/webhooks/{name}/deliveries", list_deliveries, "Deliveries of one endpoint",
          "webhooks", [NAME, Param("state", enum=["pending", "delivered", "failed"]),
                       Param("after", "integer", minimum=0, maximum=2**62),
                       Param("limit", "integer", minimum=1, maximum=1000)],
          response={"type": "object"}, errors=(404,)),
    Route("POST", "/api/v1/webhooks/{name}/retry", retry_now, "Retry pending deliveries now", "webhooks",
          [NAME], response={"type": "object"}, errors=(404,)),
]
