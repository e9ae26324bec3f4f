"""The intake rejection log (``store.rejections``): transactions and recipients refused at SMTP time, with
client, AUTH user, sender, the recipient as typed, code and reason; a flood is one row with a count."""

from __future__ import annotations

from aiohttp import web

from admin_api.common import (
    PAGE_PARAMS,
    Param,
    Route,
    iso,
    ok,
    page_schema,
    relaybox,
    time_page,
)
from store.rejections import Rejection

FILTERS = ("sender", "recipient", "client", "reason", "auth_user")


def _present(r: Rejection) -> dict:
    out = r.as_dict()
    out["first_at"] = iso(r.first_at)
    out["last_at"] = iso(r.last_at)
    return out


async def list_rejections(request: web.Request) -> web.Response:
    page = time_page(request, FILTERS)
    rows = await relaybox(request).store.rejections.list(page.filters, since=page.since, until=page.until,
                                                         before=page.before, limit=page.limit + 1)
    nxt = page.next_cursor(rows)
    return ok({"items": [_present(r) for r in rows[:page.limit]], "next_cursor": nxt})


REJECTION = {"type": "object", "properties": {
    "id": {"type": "integer"}, "first_at": {"type": "string"}, "last_at": {"type": "string"},
    "count": {"type": "integer"}, "client_ip": {"type": "string"}, "auth_user": {"type": "string"},
    "sender": {"type": "string"}, "recipient": {"type": "string"}, "command": {"type": "string"},
    "code": {"type": "integer"}, "enhanced": {"type": "string"}, "reason": {"type": "string"},
    "text": {"type": "string"}}}

ROUTES = [
    Route("GET", "/api/v1/rejections", list_rejections,
          "Transactions and recipients refused at SMTP time, newest first", "rejections",
          [Param("sender", description="substring of MAIL FROM (case-insensitive)"),
           Param("recipient", description="substring of the RCPT TO argument as typed"),
           Param("client", description="client IP address (exact)"),
           Param("reason", description="e.g. relay_denied, bad_recipient, syntax, too_big, auth_failed"),
           Param("auth_user", description="the AUTH user (exact)"),
           Param("since", description="epoch seconds or ISO 8601"), Param("until")] + PAGE_PARAMS,
          response=page_schema(REJECTION)),
]
