"""Event webhook endpoints: status per endpoint, their deliveries, and "retry pending now"."""

from __future__ import annotations

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


async def statuses(rb) -> list[dict]:
    """Every configured endpoint with its cursor, pending/failed counts and last success/failure."""
    rows = await endpoint_status(rb.store.outbox, list(rb.settings.section("webhooks") or []))
    for r in rows:
        r["last_success_at"], r["last_failure_at"] = iso(r["last_success_at"]), iso(r["last_failure_at"])
    return rows


async def list_webhooks(request: web.Request) -> web.Response:
    return ok({"items": await statuses(relaybox(request)), "next_cursor": None})


async def list_deliveries(request: web.Request) -> web.Response:
    hook = _hook(request)
    state = request.query.get("state") or None
    if state not in (None, "pending", "delivered", "failed"):
        raise bad_request("state: expected pending, delivered or failed")
    after = query_int(request, "after", 0, 0, 2**62)
    limit = query_int(request, "limit", 50, 1, 1000)
    found = await relaybox(request).store.outbox.deliveries(hook.name, state=state, after=after, limit=limit)
    rows = [{**d.as_dict(), "next_attempt_at": iso(d.next_attempt_at), "created_at": iso(d.created_at)}
            for d in found]
    return ok({"items": rows, "next_after": rows[-1]["id"] if rows else after})


async def retry_pending(rb, name: str) -> int:
    """``POST /api/v1/webhooks/{name}/retry``'s steps (the console too): pending deliveries due now, the
    dispatcher woken; how many were rescheduled."""
    n = await rb.store.outbox.retry_now(name)
    admin = getattr(rb, "admin", None)
    if admin is not None and getattr(admin, "webhooks", None) is not None:
        admin.webhooks.wake()
    return n


async def retry_now(request: web.Request) -> web.Response:
    hook = _hook(request)
    return ok({"name": hook.name, "rescheduled": await retry_pending(relaybox(request), hook.name)})


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
