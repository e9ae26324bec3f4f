"""Messages: list (filters, cursor pagination), show, body download, actions, and bulk actions by filter.

Actions call the spool (``relay.spool.spool.Spool``); the HTTP layer only maps outcomes to status codes:
unknown id -> 404, an action that does not apply to the message's current state -> 409 (a message in an
SMTP transaction right now: "it is being delivered now; wait for the attempt to end"; nothing pending:
"no pending recipient ..."), a bad schedule time -> 400. Scheduling: ``POST .../{id}/schedule {"at":
"<RFC 3339>"}`` and ``POST .../{id}/send-now`` (docs/scheduling.md).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from admin_api.bulk import WAIT
from admin_api.common import (
    CONFIG_KEY,
    JOBS_KEY,
    PAGE_PARAMS,
    ApiError,
    Param,
    Route,
    actor,
    bad_request,
    conflict,
    decode_cursor,
    encode_cursor,
    invalid,
    iso,
    not_found,
    ok,
    page_schema,
    parse_time,
    query_int,
    read_json,
    relaybox,
)
from relay.intake.headers import rfc3339
from relay.spool.spool import QueueError
from store.history import FILTER_KEYS, MessageDetail, MessageFilter, parse_message_statuses, parse_statuses
from store.states import BEING_DELIVERED, NOTHING_PENDING, Status

FILTER_PARAMS = [
    Param("status", description="comma-separated statuses or aliases (outbox, sent, active, final); a message"
          " matches when any recipient has one of them; sent: every recipient delivered (cancelled aside)"),
    Param("sender", description="substring of the envelope sender"),
    Param("recipient", description="substring of a recipient address"),
    Param("domain", description="recipient domain (exact)"),
    Param("subject", description="substring of the Subject"),
    Param("client_ip", description="submitting client address"),
    Param("auth_user", description="SMTP AUTH user that submitted"),
    Param("since", description="created at or after (epoch seconds or ISO 8601)"),
    Param("until", description="created before (epoch seconds or ISO 8601)"),
    Param("held", "boolean", "only held (true) or not held (false) messages"),
]

MESSAGE_SCHEMA: dict = {"type": "object", "required": ["id", "status", "created_at"], "properties": {
    "id": {"type": "string"}, "status": {"type": "string"}, "created_at": {"type": "string"},
    "status_summary": {"type": "string", "description": "e.g. delivered, or 2 delivered, 1 bounced"},
    "box": {"type": "string", "nullable": True, "enum": ["outbox", "sent", None]},
    "sender": {"type": "string"}, "subject": {"type": "string", "nullable": True},
    "recipients": {"type": "array"}, "held": {"type": "boolean"}}}
FILTER_SCHEMA: dict = {"type": "object", "properties": {
    **{p.name: {"type": "string"} for p in FILTER_PARAMS if p.name not in ("held", "status", "since",
                                                                           "until")},
    "since": {"oneOf": [{"type": "string"}, {"type": "number"}]},
    "until": {"oneOf": [{"type": "string"}, {"type": "number"}]},
    "status": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    "held": {"type": "boolean"}, "ids": {"type": "array", "items": {"type": "string"}}}}
RCPTS_BODY = {"type": "object", "properties": {
    "recipients": {"type": "array", "items": {"type": "integer"},
                   "description": "recipient ids (default: all that apply)"}}}
BULK_BODY = {"type": "object", "properties": {
    "filter": FILTER_SCHEMA,
    "at": {"type": "string", "format": "date-time", "description": "schedule only: the new time (RFC 3339)"},
    "all": {"type": "boolean", "description": "required to act with an empty filter"},
    "dry_run": {"type": "boolean"},
    "limit": {"type": "integer", "minimum": 1, "nullable": True,
              "description": "act on at most this many (default, or null: all)"}}}
SCHEDULE_BODY = {"type": "object", "required": ["at"], "properties": {
    "at": {"type": "string", "format": "date-time",
           "description": "RFC 3339 with an offset, in the future (send-now for now)"}}}
ACTION_RESULT = {"type": "object", "properties": {"id": {"type": "string"}, "action": {"type": "string"},
                                                  "affected": {"type": "integer"}}}
BULK_RESULT = {"type": "object", "properties": {
    "action": {"type": "string"}, "matched": {"type": "integer"}, "affected": {"type": "integer"},
    "unchanged": {"type": "integer"}, "errors": {"type": "array"}, "ids": {"type": "array"},
    "job": {"type": "string"}, "state": {"type": "string"}, "done": {"type": "integer"},
    "status_url": {"type": "string"}}}


def filter_from(source: Any, *, from_query: bool) -> MessageFilter:
    """Build a filter from query parameters or a JSON object; 400/422 on bad values."""
    get = source.get
    err = bad_request if from_query else invalid
    unknown = [k for k in source.keys() if k not in FILTER_KEYS]
    if not from_query and unknown:
        raise invalid(f"filter: unknown keys {unknown}")
    if not from_query and any(v is None for v in source.values()):
        raise invalid("filter: null is not a value; leave the key out")
    try:
        statuses, sent = parse_message_statuses(get("status"))
        fields: dict[str, Any] = {"status": statuses, "sent": sent}
    except ValueError as exc:
        raise err(str(exc)) from None
    for key in ("sender", "recipient", "domain", "subject", "client_ip", "auth_user"):
        v = get(key)
        if v in (None, ""):
            continue
        if not isinstance(v, str) or len(v) > 500:
            raise err(f"{key}: expected a string up to 500 characters")
        fields[key] = v
    for key in ("since", "until"):
        if get(key) not in (None, ""):
            try:
                fields[key] = parse_time(get(key), key)
            except ApiError as exc:
                raise err(exc.message) from None
    fields.update(_held_and_ids(source, from_query))
    return MessageFilter(**fields)


def _held_and_ids(source: Any, from_query: bool) -> dict[str, Any]:
    held = source.get("held")
    if from_query:
        if held not in (None, "") and held.lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise bad_request("held: expected true or false")
        return {"held": None if held in (None, "") else held.lower() in ("1", "true", "yes")}
    out: dict[str, Any] = {}
    if held is not None:
        if not isinstance(held, bool):
            raise invalid("held: expected true or false")
        out["held"] = held
    ids = source.get("ids")
    if ids is not None:
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(ids) > 100000:
            raise invalid("ids: expected a list of message ids")
        out["ids"] = tuple(ids)
    return out


def _times(d: dict) -> dict:
    return {k: iso(v) if k.endswith("_at") else v for k, v in d.items()}


def _present(m: dict) -> dict:
    for k in ("created_at", "send_at"):
        m[k] = iso(m.get(k))
    return m


async def list_messages(request: web.Request) -> web.Response:
    rb = relaybox(request)
    f = filter_from(request.query, from_query=True)
    cfg = request.app[CONFIG_KEY]
    limit = query_int(request, "limit", cfg.page_size, 1, 1000)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise bad_request("order: expected asc or desc")
    cur = decode_cursor(request.query.get("cursor"))
    if cur is not None and (not isinstance(cur, dict) or not isinstance(cur.get("after"), str)
                            or cur.get("order") != order):
        raise bad_request("cursor: not valid for this query (was the order changed?)")
    after = cur["after"] if cur else None
    page = await rb.store.history.list_messages(f, limit=limit, after=after, order=order)
    nxt = encode_cursor({"after": page.next_after, "order": order}) if page.next_after else None
    opened = await rb.store.tracking.flags([m.message.id for m in page.items])   # docs/tracking.md
    items = [{**_present(m.as_dict()), "opened": opened.get(m.message.id, {"opened": 0, "opened_machine": 0})}
             for m in page.items]
    return ok({"items": items, "next_cursor": nxt})


async def _show(rb: Any, qid: str) -> MessageDetail:
    m = await rb.store.history.show(qid)
    if m is None:
        raise not_found(f"no message {qid}")
    return m


async def show_message(request: web.Request) -> web.Response:
    rb = relaybox(request)
    m = await _show(rb, request.match_info["id"])
    out = _present(m.as_dict())
    opens, clicks = await rb.store.tracking.opens(m.message.id), await rb.store.tracking.clicks(m.message.id)
    for r in out["recipients"]:
        r["next_attempt_at"] = iso(r["next_attempt_at"])
        r["updated_at"] = iso(r["updated_at"])
        o = opens.get(r["id"])              # "opened" | "opened (machine)" | None: docs/tracking.md
        r["opened"], r["opens"] = (o.flag, _times(o.as_dict())) if o else (None, None)
        r["clicks"] = [_times(c.as_dict()) for c in clicks if c.recipient_id == r["id"]]
    for e in out["events"]:
        e["at"] = iso(e["at"])
    for a in out["attempts"]:
        a["started_at"], a["ended_at"] = iso(a["started_at"]), iso(a["ended_at"])
    return ok(out)


async def message_body(request: web.Request) -> web.Response:
    rb, qid = relaybox(request), request.match_info["id"]
    body = await rb.spool.body(qid)
    if body is None:
        await _show(rb, qid)  # 404 for an unknown message
        raise not_found(f"the body of {qid} is no longer retained")
    return web.Response(body=body, content_type="message/rfc822",
                        headers={"Content-Disposition": f'attachment; filename="{qid}.eml"'})


def _rcpt_ids(body: dict) -> list[int] | None:
    ids = body.get("recipients")
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise invalid("recipients: expected a list of recipient ids (integers)")
    return ids


def schedule_time(value: Any, now: float, err: Any = bad_request) -> float:
    """The ``at`` of a schedule request: an RFC 3339 date-time with an offset, in the future."""
    if not isinstance(value, str):
        raise err("at: expected an RFC 3339 date-time with an offset, like 2026-01-31T09:00:00Z")
    try:
        at = rfc3339(value)
    except ValueError as exc:
        raise err(f"at: {exc}") from None
    if at <= now:
        raise err(f"at: {value.strip()[:40]} is in the past; send-now sends at once")
    return at


async def _move(spool: Any, action: str, qid: str, who: str, rcpts: list[int] | None,
                at: float | None) -> int:
    """The actions that move recipients; returns how many moved."""
    if action == "cancel":
        return int(await spool.cancel(qid, rcpts, actor=who))
    if action == "retry":
        return int(await spool.retry_now(qid, actor=who))
    if action == "send-now":
        return int(await spool.send_now(qid, actor=who))
    if action == "schedule":
        if at is None:  # pragma: no cover - the handlers always pass it
            raise bad_request("at: required")
        return int(await spool.schedule(qid, at, actor=who))
    if action == "resend":
        return int(await spool.resend(qid, rcpts, actor=who))
    raise not_found(f"no action {action}")  # pragma: no cover - routes are fixed


async def run_action(rb, action: str, qid: str, who: str, rcpts: list[int] | None = None,
                     at: float | None = None) -> int:
    """Apply one action to one message; returns how many recipients (or 1/0 for hold/release/delete)
    changed. Raises ApiError 404/409."""
    spool = rb.spool
    try:
        if action in ("hold", "release"):
            return int(await (spool.hold if action == "hold" else spool.release)(qid, actor=who))
        if action == "delete":
            if not await spool.delete(qid, actor=who):
                raise not_found(f"no message {qid}")
            return 1
        n = await _move(spool, action, qid, who, rcpts, at)
    except QueueError as exc:
        text = str(exc)
        if text.startswith("no such message") or not await _exists(rb, qid):
            raise not_found(f"no message {qid}") from None
        raise conflict(text) from None
    if n == 0:
        if not await _exists(rb, qid):
            raise not_found(f"no message {qid}")
        if action in _PENDING_ONLY and any(r.status == Status.SENDING
                                           for r in await rb.store.messages.recipients(qid)):
            raise conflict(f"{qid}: {BEING_DELIVERED}")
        raise conflict(_NOTHING[action].format(qid=qid))
    return n


async def _exists(rb: Any, qid: str) -> bool:
    return bool(await rb.store.history.exists(qid))


_PENDING_ONLY = ("cancel", "retry", "send-now", "schedule")   # act on pending recipients only
_NOTHING = {
    "cancel": "{qid}: " + NOTHING_PENDING + " to cancel",
    "retry": "{qid}: no recipient is waiting for a retry",
    "send-now": "{qid}: " + NOTHING_PENDING + " to send now",
    "schedule": "{qid}: " + NOTHING_PENDING + " to schedule",
    "resend": "{qid}: no recipient is final (delivered, bounced, failed, cancelled); nothing to resend",
}


def _action_handler(action: str):
    async def handler(request: web.Request) -> web.Response:
        rb, qid = relaybox(request), request.match_info["id"]
        body = await read_json(request, required=False) if action in ("cancel", "resend") else {}
        n = await run_action(rb, action, qid, actor(request), _rcpt_ids(body))
        return ok({"id": qid, "action": action, "affected": n})
    return handler


async def schedule_message(request: web.Request) -> web.Response:
    """Schedule or reschedule the pending recipients: ``{"at": "<RFC 3339>"}`` in the future."""
    rb, qid = relaybox(request), request.match_info["id"]
    body = await read_json(request)
    unknown = sorted(k for k in body if k != "at")
    if unknown:
        raise bad_request(f"unknown keys {unknown}; expected {{\"at\": \"<RFC 3339>\"}}")
    at = schedule_time(body.get("at"), time.time())
    n = await run_action(rb, "schedule", qid, actor(request), at=at)
    return ok({"id": qid, "action": "schedule", "affected": n, "at": iso(at)})


def _bulk_handler(action: str):
    async def handler(request: web.Request) -> web.Response:
        rb = relaybox(request)
        body = await read_json(request)
        raw = body.get("filter", {})
        if not isinstance(raw, dict):
            raise invalid("filter: expected an object")
        f = filter_from(raw, from_query=False)
        every = body.get("all", False)
        if not isinstance(every, bool):
            raise invalid("all: expected true or false")
        if f.empty() and not every:
            raise invalid("an empty filter matches every message: pass \"all\": true to mean it")
        limit = body.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise invalid("limit: expected a positive integer (leave it out for every matching message)")
        dry = body.get("dry_run", False)
        if not isinstance(dry, bool):
            raise invalid("dry_run: expected true or false")
        at = schedule_time(body.get("at"), time.time(), invalid) if action == "schedule" else None
        if dry:
            matched = await rb.store.history.count_matching(f)
            ids = await rb.store.history.matching_ids(f, min(limit or matched, 1000))
            return ok({"action": action, "matched": min(matched, limit) if limit else matched, "affected": 0,
                       "unchanged": 0, "errors": [], "ids": ids, "ids_complete": len(ids) == matched})
        who = actor(request)

        async def act(qid: str) -> str:
            try:
                n = await run_action(rb, action, qid, who, at=at)
            except ApiError as exc:
                if exc.status == 409 and exc.message.startswith(qid + ": no "):
                    return "unchanged"
                return f"error:{exc.code}:{exc.message}"
            return "affected" if n else "unchanged"

        jobs = request.app[JOBS_KEY]
        job, task = await jobs.start(rb.store.history, action, f, limit, act)
        try:       # small jobs answer at once; large ones run on and are followed at /api/v1/jobs/{id}
            await asyncio.wait_for(asyncio.shield(task), WAIT)
        except asyncio.TimeoutError:
            return ok(job.as_dict(), status=202)
        return ok(job.as_dict())
    return handler


async def show_job(request: web.Request) -> web.Response:
    job = request.app[JOBS_KEY].get(request.match_info["id"])
    if job is None:
        raise not_found(f"no job {request.match_info['id'][:40]} (jobs are kept in memory until a restart)")
    return ok(job.as_dict())


async def list_events(request: web.Request) -> web.Response:
    rb = relaybox(request)
    after = query_int(request, "after", 0, 0, 2**62)
    limit = query_int(request, "limit", 100, 1, 1000)
    try:
        st = parse_statuses(request.query.get("status"))
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    mid = request.query.get("message_id") or None
    events = await rb.store.history.events(after=after, limit=limit, message_id=mid, status=st)
    items = [{**e.as_dict(), "at": iso(e.at)} for e in events]
    return ok({"items": items, "next_after": items[-1]["id"] if items else after})


ID = Param("id", where="path", required=True, description="queue id")
ACTIONS = ("cancel", "retry", "send-now", "resend", "hold", "release")
_SUMMARIES = {"cancel": "Cancel pending recipients (not those being sent)",
              "retry": "Retry deferred recipients now",
              "send-now": "Make the pending recipients due now (also scheduled or deferred ones)",
              "schedule": "Schedule or reschedule the pending recipients for a time (RFC 3339)",
              "resend": "Resend final recipients (body must be retained)", "hold": "Hold (no delivery)",
              "release": "Release a held message", "delete": "Delete the message and its body"}

ROUTES = [
    Route("GET", "/api/v1/messages", list_messages, "List messages (newest first)", "messages",
          FILTER_PARAMS + PAGE_PARAMS + [Param("order", enum=["desc", "asc"])],
          response=page_schema(MESSAGE_SCHEMA)),
    *[Route("POST", f"/api/v1/bulk/messages/{a}", _bulk_handler(a), f"Bulk: {_SUMMARIES[a]}, by filter",
            "messages", body=BULK_BODY, response=BULK_RESULT, errors=(422,))
      for a in (*ACTIONS, "delete", "schedule")],
    Route("GET", "/api/v1/jobs/{id}", show_job, "Progress of a bulk action", "messages",
          [Param("id", where="path", required=True)], response=BULK_RESULT, errors=(404,)),
    Route("GET", "/api/v1/messages/{id}", show_message, "Show a message: recipients, events, attempts",
          "messages", [ID], response=MESSAGE_SCHEMA, errors=(404,)),
    Route("GET", "/api/v1/messages/{id}/body", message_body, "Download the message (while retained)",
          "messages", [ID], errors=(404,), content_type="message/rfc822"),
    *[Route("POST", f"/api/v1/messages/{{id}}/{a}", _action_handler(a), _SUMMARIES[a], "messages", [ID],
            body=RCPTS_BODY if a in ("cancel", "resend") else None, response=ACTION_RESULT,
            errors=(404, 409, 422)) for a in ACTIONS],
    Route("POST", "/api/v1/messages/{id}/schedule", schedule_message, _SUMMARIES["schedule"], "messages",
          [ID], body=SCHEDULE_BODY, response=ACTION_RESULT, errors=(400, 404, 409)),
    Route("DELETE", "/api/v1/messages/{id}", _action_handler("delete"), _SUMMARIES["delete"], "messages",
          [ID], response=ACTION_RESULT, errors=(404, 409)),
    Route("GET", "/api/v1/events", list_events, "Message events in id order (the webhook outbox)", "events",
          [Param("after", "integer", "events with a larger id", minimum=0, maximum=2**62),
           Param("limit", "integer", minimum=1, maximum=1000),
           Param("status", description="comma-separated statuses"), Param("message_id")],
          response={"type": "object"}),
]
