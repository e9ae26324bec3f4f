"""The intake rejection log (``store.rejections``): transactions and recipients refused at SMTP time, with
client, AUTH user, sender, the recipient as typed, code and reason; a flood is one row with a count."""

from __future__ import annotations

from aiohttp import web

from admin_api.common import (
    PAGE_PARAMS,
    Param,
    Route,
    bad_request,
    decode_cursor,
    encode_cursor,
    iso,
    ok,
    page_schema,
    parse_time,
    query_int,
    relaybox,
)
from store.rejections import Rejection

FILTERS = ("sender", "recipient", "client", "reason", "auth_user")


def _present(r: Rejection) -> dict:
    out = r.as_dict()
    out["first_at"] = iso(r.first_at)
    out["last_at"] = iso(r.last_at)
    return out


async def list_rejections(request: web.Request) -> web.Response:
    flt = {k: request.query[k] for k in FILTERS if request.query.get(k)}
    since = parse_time(request.query["since"], "since") if request.query.get("since") else None
    until = parse_time(request.query["until"], "until") if request.query.get("until") else None
    limit = query_int(request, "limit", 50, 1, 1000)
    cur = decode_cursor(request.query.get("cursor"))
    if cur is not None and not (isinstance(cur, dict) and isinstance(cur.get("before"), int)):
        raise bad_request("cursor: not a cursor returned by this API")
    rows = await relaybox(request).store.rejections.list(flt, since=since, until=until,
                                                         before=cur["before"] if cur else None,
                                                         limit=limit + 1)
    nxt = encode_cursor({"before": rows[limit - 1].id}) if len(rows) > limit else None
    return ok({"items": [_present(r) for r in rows[:limit]], "next_cursor": nxt})


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
