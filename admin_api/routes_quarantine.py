"""Quarantine of the inbound poller (``poller.store``): messages that could not be parsed or delivered to
their campaign. Inspect, download, retry, drop."""

from __future__ import annotations

from aiohttp import web

from admin_api.common import Param, Route, conflict, iso, not_found, ok, query_int, relaybox
from admin_api.queries import _headers
from poller import store


def _row(conn, inbound_id: int) -> dict | None:
    r = conn.execute("SELECT id, channel, folder, uid, message_id, size, status, tries, last_error,"
                     " created_at, updated_at, raw IS NOT NULL AS has_raw FROM inbound WHERE id=?",
                     (inbound_id,)).fetchone()
    return dict(r) if r else None


def _present(r: dict) -> dict:
    return {**r, "created_at": iso(r["created_at"]), "updated_at": iso(r["updated_at"])}


def _id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise not_found(f"no quarantined message {raw[:40]}")
    return int(raw)


async def _quarantined(request: web.Request) -> dict:
    iid = _id(request)
    r = await relaybox(request).db.read(lambda c: _row(c, iid))
    if r is None or r["status"] != "quarantined":
        raise not_found(f"no quarantined message {iid}")
    return r


async def list_quarantine(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 100, 1, 1000)
    channel = request.query.get("channel") or None
    rows = await relaybox(request).db.read(lambda c: store.quarantine(c, limit=limit, channel=channel))
    return ok({"items": [_present(r) for r in rows], "next_cursor": None})


async def show(request: web.Request) -> web.Response:
    r = await _quarantined(request)
    raw = await relaybox(request).db.read(lambda c: store.raw_of(c, r["id"]))
    out = _present(r)
    out["has_raw"] = bool(out["has_raw"])
    out["headers"] = _headers(raw)
    return ok(out)


async def raw(request: web.Request) -> web.Response:
    r = await _quarantined(request)
    data = await relaybox(request).db.read(lambda c: store.raw_of(c, r["id"]))
    if data is None:
        raise not_found(f"message {r['id']} was quarantined before it was fetched: no content stored")
    return web.Response(body=data, content_type="message/rfc822",
                        headers={"Content-Disposition": f'attachment; filename="inbound-{r["id"]}.eml"'})


async def retry(request: web.Request) -> web.Response:
    r = await _quarantined(request)
    if not await relaybox(request).db.write(lambda c: store.retry_quarantined(c, r["id"])):
        raise conflict(f"message {r['id']} has no stored content to retry (too large, or never fetched)")
    return ok({"id": r["id"], "status": "received"})


async def drop(request: web.Request) -> web.Response:
    r = await _quarantined(request)
    await relaybox(request).db.write(lambda c: store.drop_quarantined(c, r["id"]))
    return ok({"id": r["id"], "removed": True})


ID = Param("id", where="path", required=True, description="inbound message id")
ITEM = {"type": "object", "properties": {"id": {"type": "integer"}, "channel": {"type": "string"},
                                         "last_error": {"type": "string", "nullable": True}}}

ROUTES = [
    Route("GET", "/api/v1/quarantine", list_quarantine, "Quarantined inbound messages, newest first",
          "quarantine", [Param("channel"), Param("limit", "integer", minimum=1, maximum=1000)],
          response={"type": "object", "properties": {"items": {"type": "array", "items": ITEM}}}),
    Route("GET", "/api/v1/quarantine/{id}", show, "One quarantined message: error, headers", "quarantine",
          [ID], response=ITEM, errors=(404,)),
    Route("GET", "/api/v1/quarantine/{id}/raw", raw, "Download the quarantined message", "quarantine", [ID],
          errors=(404,), content_type="message/rfc822"),
    Route("POST", "/api/v1/quarantine/{id}/retry", retry, "Deliver to its campaign again", "quarantine", [ID],
          response={"type": "object"}, errors=(404, 409)),
    Route("DELETE", "/api/v1/quarantine/{id}", drop, "Drop a quarantined message", "quarantine", [ID],
          response={"type": "object"}, errors=(404,)),
]
