"""Quarantine of the inbound poller (``store.inbound``): messages that could not be parsed or delivered to
their campaign. Inspect, download, retry, drop."""

from __future__ import annotations

from email.parser import BytesHeaderParser
from email.policy import compat32

from aiohttp import web

from admin_api.common import Param, Route, conflict, iso, not_found, ok, query_int, relaybox
from store.inbound import InboundStore, QuarantineItem


def _inbound(request: web.Request) -> InboundStore:
    return relaybox(request).store.inbound


def present(q: QuarantineItem) -> dict:
    return {**q.as_dict(), "created_at": iso(q.created_at), "updated_at": iso(q.updated_at)}


def header_fields(raw: bytes | None) -> list[list[str]] | None:
    """The header fields of a stored message, as [name, value] pairs (None: no content stored)."""
    if raw is None:
        return None
    end = raw.find(b"\r\n\r\n")
    head = raw[:end if end >= 0 else 65536][:65536]
    return [[k, str(v)] for k, v in BytesHeaderParser(policy=compat32).parsebytes(head + b"\r\n\r\n").items()]


def _id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise not_found(f"no quarantined message {raw[:40]}")
    return int(raw)


async def _quarantined(request: web.Request) -> QuarantineItem:
    iid = _id(request)
    q = await _inbound(request).quarantined(iid)
    if q is None:
        raise not_found(f"no quarantined message {iid}")
    return q


async def list_quarantine(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 100, 1, 1000)
    channel = request.query.get("channel") or None
    items = await _inbound(request).quarantine(limit=limit, channel=channel)
    return ok({"items": [present(q) for q in items], "next_cursor": None})


async def show(request: web.Request) -> web.Response:
    q = await _quarantined(request)
    raw = await _inbound(request).raw(q.id)
    return ok({**present(q), "status": "quarantined", "headers": header_fields(raw)})


async def raw(request: web.Request) -> web.Response:
    q = await _quarantined(request)
    data = await _inbound(request).raw(q.id)
    if data is None:
        raise not_found(f"message {q.id} was quarantined before it was fetched: no content stored")
    return web.Response(body=data, content_type="message/rfc822",
                        headers={"Content-Disposition": f'attachment; filename="inbound-{q.id}.eml"'})


async def retry_one(inbound: InboundStore, q: QuarantineItem) -> None:
    """``POST /api/v1/quarantine/{id}/retry``'s steps (the console too): back to ``received``; 409 when no
    content was stored."""
    if not await inbound.retry_quarantined(q.id):
        raise conflict(f"message {q.id} has no stored content to retry (too large, or never fetched)")


async def retry(request: web.Request) -> web.Response:
    q = await _quarantined(request)
    await retry_one(_inbound(request), q)
    return ok({"id": q.id, "status": "received"})


async def drop(request: web.Request) -> web.Response:
    q = await _quarantined(request)
    await _inbound(request).drop_quarantined(q.id)
    return ok({"id": q.id, "removed": True})


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
