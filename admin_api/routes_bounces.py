"""Bounces as recorded by ``relay.bounces.record`` (table ``bounces``): list with filters, show (with the
raw report of unparsed ones), each linked to its message when correlated."""

from __future__ import annotations

import sqlite3

from aiohttp import web

import relay.bounces.suppression  # noqa: F401 - the bounce engine; its absence leaves this resource out
from admin_api.common import (
    PAGE_PARAMS,
    Param,
    Route,
    bad_request,
    decode_cursor,
    encode_cursor,
    iso,
    not_found,
    ok,
    page_schema,
    parse_time,
    query_int,
    relaybox,
)

FILTERS = ("address", "category", "kind", "reason", "source", "message_id")


def _present(r: dict, *, full: bool = False) -> dict:
    out = {k: v for k, v in r.items() if k != "raw"}
    out["at"] = iso(out["at"])
    out["message"] = f"/api/v1/messages/{r['message_id']}" if r.get("message_id") else None
    if full:
        raw = r.get("raw")
        out["raw"] = bytes(raw).decode("utf-8", "replace") if raw else None
    return out


def query(conn: sqlite3.Connection, flt: dict, since: float | None, until: float | None, before: int | None,
          limit: int) -> list[dict]:
    sql, args = "SELECT * FROM bounces WHERE 1=1", []
    for k, v in flt.items():
        sql += f" AND {k} = ?"
        args.append(v.lower() if k == "address" else v)
    if since is not None:
        sql += " AND at >= ?"
        args.append(since)
    if until is not None:
        sql += " AND at < ?"
        args.append(until)
    if before is not None:
        sql += " AND id < ?"
        args.append(before)
    sql += " ORDER BY id DESC LIMIT ?"
    return [dict(r) for r in conn.execute(sql, (*args, limit))]


async def list_bounces(request: web.Request) -> web.Response:
    flt = {k: request.query[k] for k in FILTERS if request.query.get(k)}
    since = parse_time(request.query["since"], "since") if request.query.get("since") else None
    until = parse_time(request.query["until"], "until") if request.query.get("until") else None
    limit = query_int(request, "limit", 50, 1, 1000)
    cur = decode_cursor(request.query.get("cursor"))
    if cur is not None and not (isinstance(cur, dict) and isinstance(cur.get("before"), int)):
        raise bad_request("cursor: not a cursor returned by this API")
    rows = await relaybox(request).db.read(
        lambda c: query(c, flt, since, until, cur["before"] if cur else None, limit + 1))
    nxt = encode_cursor({"before": rows[limit - 1]["id"]}) if len(rows) > limit else None
    return ok({"items": [_present(r) for r in rows[:limit]], "next_cursor": nxt})


async def show_bounce(request: web.Request) -> web.Response:
    raw_id = request.match_info["id"]
    if not raw_id.isdigit() or len(raw_id) > 18:
        raise not_found(f"no bounce {raw_id[:40]}")
    row = await relaybox(request).db.read(
        lambda c: c.execute("SELECT * FROM bounces WHERE id=?", (int(raw_id),)).fetchone())
    if row is None:
        raise not_found(f"no bounce {raw_id}")
    return ok(_present(dict(row), full=True))


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
