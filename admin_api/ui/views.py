"""Console pages. Each page calls the same store / spool operations as the matching JSON route:
messages through ``store.history`` and ``routes_messages.run_action`` (bulk through ``BulkJobs``), bounces
and suppressions through ``store.bounces``, channels through ``poller.channels``, the dashboard through
``store.stats.queue_stats`` and the scheduler's destinations. Only ``store/`` has SQL."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import logging
import os
import secrets
import time
from typing import Any, Awaitable, Callable

import aiohttp_jinja2
import jinja2
from aiohttp import web

from admin_api import routes_channels
from admin_api.auth import Authenticator
from admin_api.bulk import WAIT
from admin_api.common import APP_KEY, JOBS_KEY, ApiError, decode_cursor, encode_cursor
from admin_api.routes_messages import ACTIONS, filter_from, run_action, schedule_time
from admin_api.ui import channel_form
from admin_api.ui.preview import text_preview
from admin_api.ui.session import COOKIE, IDLE, LOGIN_COOKIE, Session, Sessions
from poller import channels
from poller.validate import Validation, validate_stored
from store.history import MessageFilter, redact_transcript

log = logging.getLogger("admin_api.ui")
audit = logging.getLogger("admin_api.audit")

SESSIONS_KEY = web.AppKey("ui_sessions", Sessions)
AUTHN_KEY = web.AppKey("ui_authenticator", Authenticator)
MATCH: Any = web.RequestKey("ui_match", object) if hasattr(web, "RequestKey") else "ui_match"
SESSION: Any = web.RequestKey("ui_session", object) if hasattr(web, "RequestKey") else "ui_session"

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_TYPES = {"console.css": "text/css", "console.js": "text/javascript"}
OUTBOX = ("scheduled", "queued", "sending", "deferred", "failed", "bounced")
SENT = ("delivered",)
BULK_ACTIONS = (*ACTIONS, "delete")
PAGE = 50
FAILED_SIGN_IN_DELAY = 1.0
NAV = (("dashboard", "Dashboard"), ("outbox", "Outbox"), ("sent", "Sent"), ("bounces", "Bounces"),
       ("suppressions", "Suppressions"), ("channels", "Channels"), ("campaigns", "Campaigns"),
       ("quarantine", "Quarantine"), ("routes", "Routes"), ("allowlist", "Allowlist"),
       ("users", "SMTP users"), ("dkim", "DKIM"), ("webhooks", "Webhooks"))

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---- helpers -------------------------------------------------------------------------------------------
def rb(request: web.Request) -> Any:
    return request.app[APP_KEY]


def param(request: web.Request, name: str) -> str:
    return request[MATCH].get(name, "")


def _iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def _age(seconds: float | None) -> str:
    if not seconds:
        return "none"
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size} {unit}"
    return f"{s} s"


def install_filters(env: jinja2.Environment) -> None:
    env.filters.update(iso=_iso, size=_size, age=_age)


def _session(request: web.Request) -> Session | None:
    auth = request.app[AUTHN_KEY]
    auth.check(None)            # re-reads a changed token file: a removed token ends its sessions
    return request.app[SESSIONS_KEY].get(request.cookies.get(COOKIE), auth.tokens)


def render(request: web.Request, template: str, ctx: dict[str, Any], status: int = 200,
           fragment: bool = False) -> web.Response:
    s = request.get(SESSION)
    base = {"session": s, "csrf": s.csrf if s else "", "nav": NAV, "page": ctx.get("page", ""),
            "flashes": s.take_flashes() if s and not fragment else [], "writable": bool(s and not s.readonly)}
    return aiohttp_jinja2.render_template(template, request, {**base, **ctx}, status=status)


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    return render(request, "error.html", {"status": status, "message": message, "page": ""}, status=status)


def signed_in(fn: Handler) -> Handler:
    """Pages: a live session or a redirect to the sign-in page."""
    @functools.wraps(fn)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        s = _session(request)
        if s is None:
            if request.method != "GET":
                raise ApiError(403, "forbidden", "not signed in (or the session expired)")
            raise web.HTTPSeeOther("/ui/login")
        request[SESSION] = s
        return await fn(request)
    return wrapper


def writes(fn: Handler) -> Handler:
    """Changes: a session, its CSRF token in the form, and a session that is not read-only; audited like
    the API's writes."""
    @functools.wraps(fn)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        s = _session(request)
        if s is None:
            raise ApiError(403, "forbidden", "not signed in (or the session expired)")
        request[SESSION] = s
        form = await request.post()
        if not same_origin(request) or not s.csrf_ok(form.get("csrf")):
            raise ApiError(403, "forbidden", "missing or wrong CSRF token: reload the page and try again")
        if s.readonly:
            raise ApiError(403, "forbidden", f"token {s.name!r} is read-only")
        try:
            resp = await fn(request)
        except web.HTTPException as exc:       # the usual answer: a redirect back to the page
            _audit(request, s, exc.status)
            raise
        _audit(request, s, resp.status)
        return resp
    return wrapper


def same_origin(request: web.Request) -> bool:
    """A POST that names its origin must come from this listener's own pages (SameSite=Strict and the
    CSRF token already stop cross-site forms; this is the third lock)."""
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"


def _audit(request: web.Request, s: Session, status: int) -> None:
    audit.info("admin:%s %s %s -> %d (console)", s.name, request.method, request.raw_path[:300], status)


def actor(request: web.Request) -> str:
    return f"admin:{request[SESSION].name}"


def back(to: str) -> web.HTTPSeeOther:
    """A redirect to a console page only (a posted ``back`` is never a way off the console)."""
    safe = to.startswith("/ui/") and "\\" not in to and all(" " < c < "\x7f" for c in to) and len(to) < 2000
    return web.HTTPSeeOther(to if safe else "/ui/dashboard")


# ---- sign-in -------------------------------------------------------------------------------------------
async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/dashboard")


def _cookie(resp: web.StreamResponse, request: web.Request, name: str, value: str, max_age: int) -> None:
    resp.set_cookie(name, value, max_age=max_age, path="/ui", httponly=True, samesite="Strict",
                    secure=request.secure)


async def login_form(request: web.Request, error: str = "", status: int = 200) -> web.StreamResponse:
    pre = secrets.token_urlsafe(24)
    resp = render(request, "login.html", {"login_csrf": pre, "error": error, "page": "login"}, status=status)
    _cookie(resp, request, LOGIN_COOKIE, pre, 600)
    return resp


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    pre, presented = request.cookies.get(LOGIN_COOKIE, ""), form.get("csrf")
    if not same_origin(request) or not pre or not isinstance(presented, str) \
            or not secrets.compare_digest(pre, presented):
        raise ApiError(403, "forbidden", "missing or wrong CSRF token: reload the sign-in page")
    token = form.get("token")
    tok = request.app[AUTHN_KEY].check(f"Bearer {token}") if isinstance(token, str) and token else None
    if tok is None:
        log.warning("console: failed sign-in from %s", request.remote)
        await asyncio.sleep(FAILED_SIGN_IN_DELAY)     # guessing tokens through the form stays slow
        return await login_form(request, "That token is not valid.", 401)
    s = request.app[SESSIONS_KEY].open(tok)
    audit.info("admin:%s signed in to the console%s", s.name, " (read-only)" if s.readonly else "")
    resp = web.HTTPSeeOther("/ui/dashboard")
    _cookie(resp, request, COOKIE, s.id, int(IDLE))
    resp.del_cookie(LOGIN_COOKIE, path="/ui")
    raise resp


async def logout(request: web.Request) -> web.StreamResponse:
    s = _session(request)
    form = await request.post()
    if s is None or not s.csrf_ok(form.get("csrf")):
        raise ApiError(403, "forbidden", "missing or wrong CSRF token")
    request.app[SESSIONS_KEY].close(s.id)
    audit.info("admin:%s signed out of the console", s.name)
    resp = web.HTTPSeeOther("/ui/login")
    resp.del_cookie(COOKIE, path="/ui")
    raise resp


# ---- dashboard -----------------------------------------------------------------------------------------
async def _dashboard_data(request: web.Request) -> dict[str, Any]:
    app = rb(request)
    qs = await app.store.stats.queue_stats()
    sched = getattr(app, "scheduler", None)
    parked = [d.as_dict() for d in sched.destinations.status()] if sched is not None else []
    chans = [routes_channels.present(r, routes_channels.poller_status(request))
             for r in await channels.list_channels(app.store.inbound)]
    recent = await app.store.history.list_messages(MessageFilter(status=("deferred", "failed")), limit=5)
    disk = app.disk
    return {"counts": {k: v for k, v in qs.counts.items()}, "held": qs.held_messages, "oldest": qs.oldest_age,
            "suppressed": sum(qs.suppressions.values()), "parked": parked, "scheduler": sched is not None,
            "channels": chans, "recent": [m.as_dict() for m in recent.items],
            "disk": {"ok": disk.ok(), "free_ratio": disk.free_ratio, "free_bytes": disk.free_bytes,
                     "db_bytes": app.store.stats.size_bytes()}}


@signed_in
async def dashboard(request: web.Request) -> web.StreamResponse:
    return render(request, "dashboard.html", {"page": "dashboard", **await _dashboard_data(request)})


@signed_in
async def dashboard_panel(request: web.Request) -> web.StreamResponse:
    return render(request, "_dashboard_panel.html", await _dashboard_data(request), fragment=True)


# ---- messages ------------------------------------------------------------------------------------------
def _message_filter(q: Any, statuses: tuple[str, ...]) -> tuple[MessageFilter, dict[str, str]]:
    keys = ("recipient", "sender", "subject", "id", "status", "held")
    shown = {k: q.get(k, "").strip()[:500] for k in keys}
    # the Sent box is "every recipient delivered", not "any recipient delivered" (store.history)
    box = ["sent"] if statuses == SENT else list(statuses)
    raw: dict[str, Any] = {"status": [shown["status"]] if shown["status"] in statuses else box}
    for k in ("recipient", "sender", "subject"):
        if shown[k]:
            raw[k] = shown[k]
    if shown["id"]:
        raw["ids"] = [shown["id"]]
    if shown["held"] in ("true", "false"):
        raw["held"] = shown["held"] == "true"
    return filter_from(raw, from_query=False), shown


def _list_page(kind: str, statuses: tuple[str, ...]) -> Handler:
    @signed_in
    async def handler(request: web.Request) -> web.StreamResponse:
        f, shown = _message_filter(request.query, statuses)
        cur = decode_cursor(request.query.get("cursor"))
        after = cur.get("after") if isinstance(cur, dict) and isinstance(cur.get("after"), str) else None
        page = await rb(request).store.history.list_messages(f, limit=PAGE, after=after, order="desc")
        nxt = encode_cursor({"after": page.next_after, "order": "desc"}) if page.next_after else None
        more = {k: v for k, v in shown.items() if v}
        return render(request, "messages.html", {
            "page": kind, "title": "Outbox" if kind == "outbox" else "Sent", "statuses": statuses,
            "items": [m.as_dict() for m in page.items], "shown": shown, "next_cursor": nxt, "more": more,
            "actions": BULK_ACTIONS, "first": after is None})
    return handler


async def _act(request: web.Request, action: str, qid: str) -> str:
    try:
        n = await run_action(rb(request), action, qid, actor(request))
    except ApiError as exc:
        if exc.status == 409 and exc.message.startswith(qid + ": no "):
            return "unchanged"
        return f"error:{exc.code}:{exc.message}"
    return "affected" if n else "unchanged"


KINDS = {"outbox": OUTBOX, "sent": SENT}


@writes
async def bulk(request: web.Request) -> web.StreamResponse:
    """Ticked messages (``scope=ticked``), or every message the list's search matches (``scope=matching``:
    first a page with the dry-run count, then the job on ``confirm``), as the API's bulk action."""
    form = await request.post()
    s: Session = request[SESSION]
    action = str(form.get("action", ""))
    kind = str(form.get("kind", "outbox"))
    to = str(form.get("back", "/ui/outbox"))
    if action not in BULK_ACTIONS or kind not in KINDS:
        s.flash("error", "Pick an action.")
        raise back(to)
    if form.get("scope") == "matching":
        # the list's search travels as f_<key> (a plain "id" would mix with the tick boxes)
        f, shown = _message_filter({k[2:]: v for k, v in form.items() if k.startswith("f_")}, KINDS[kind])
        if form.get("confirm") != "1":
            matched = await rb(request).store.history.count_matching(f)
            return render(request, "bulk_confirm.html", {
                "page": kind, "action": action, "kind": kind, "matched": matched, "back": to,
                "shown": {k: v for k, v in shown.items() if v}})
    else:
        ids = tuple(str(v)[:100] for v in form.getall("id", []))[:1000]
        if not ids:
            s.flash("error", "Tick at least one message.")
            raise back(to)
        f = MessageFilter(ids=ids)
    return await _run_bulk(request, s, action, f, to)


async def _run_bulk(request: web.Request, s: Session, action: str, f: MessageFilter,
                    to: str) -> web.StreamResponse:
    job, task = await request.app[JOBS_KEY].start(rb(request).store.history, action, f, None,
                                                  lambda qid: _act(request, action, qid))
    try:
        await asyncio.wait_for(asyncio.shield(task), WAIT)
    except asyncio.TimeoutError:
        raise web.HTTPSeeOther(f"/ui/jobs/{job.id}") from None
    text = f"{action}: {job.affected} changed, {job.unchanged} unchanged, {job.error_count} errors"
    s.flash("error" if job.error_count else "ok", text + "".join(f"; {e['id']}: {e['message']}"
                                                              for e in job.errors[:3]))
    raise back(to)


def _job(request: web.Request) -> dict[str, Any]:
    job = request.app[JOBS_KEY].get(param(request, "id"))
    if job is None:
        raise ApiError(404, "not_found", "no such job (jobs are kept in memory until a restart)")
    return {"page": "outbox", "job": job.as_dict()}


@signed_in
async def job_page(request: web.Request) -> web.StreamResponse:
    return render(request, "job.html", _job(request))


@signed_in
async def job_panel(request: web.Request) -> web.StreamResponse:
    return render(request, "_job.html", _job(request), fragment=True)


@signed_in
async def message(request: web.Request) -> web.StreamResponse:
    app, qid = rb(request), param(request, "id")
    m = await app.store.history.show(qid)
    if m is None:
        raise ApiError(404, "not_found", f"no message {qid}")
    body = await app.spool.body(qid) if m.body_available else None
    attempts = [{**a.as_dict(), "transcript": redact_transcript(list(a.transcript))} for a in m.attempts]
    addr = {r.id: r.address for r in m.recipients}
    opens = await app.store.tracking.opens(qid)        # the "opened" tick: docs/tracking.md
    opened = {rid: {"flag": o.flag, "count": o.opens, "first_at": o.first_at} for rid, o in opens.items()}
    return render(request, "message.html", {
        "page": "outbox", "m": m.as_dict(), "attempts": attempts, "addr": addr, "opened": opened,
        "preview": text_preview(body) if body is not None else None, "actions": BULK_ACTIONS})


@signed_in
async def message_eml(request: web.Request) -> web.StreamResponse:
    app, qid = rb(request), param(request, "id")
    body = await app.spool.body(qid)
    if body is None:
        raise ApiError(404, "not_found", f"no message {qid}, or its body is no longer retained")
    return web.Response(body=body, content_type="message/rfc822",
                        headers={"Content-Disposition": f'attachment; filename="{qid}.eml"'})


@writes
async def message_action(request: web.Request) -> web.StreamResponse:
    qid, action = param(request, "id"), param(request, "action")
    s: Session = request[SESSION]
    if action not in (*BULK_ACTIONS, "schedule"):
        raise ApiError(404, "not_found", f"no action {action}")
    try:
        at = None
        if action == "schedule":       # the message page's "Send at" form (RFC 3339, as the API)
            at = schedule_time(str((await request.post()).get("at", "")), time.time())
        n = await run_action(rb(request), action, qid, actor(request), at=at)
    except ApiError as exc:
        if exc.status == 404:
            raise
        s.flash("error", f"{action}: {exc.message}")
    else:
        s.flash("ok", f"{action}: done ({n} changed).")
    raise back("/ui/outbox" if action == "delete" else f"/ui/messages/{qid}")


# ---- bounces, suppressions, channels -------------------------------------------------------------------
@signed_in
async def bounces(request: web.Request) -> web.StreamResponse:
    q = request.query
    shown = {k: q.get(k, "").strip()[:320] for k in ("address", "category", "kind", "reason")}
    cur = decode_cursor(q.get("cursor"))
    before = cur.get("before") if isinstance(cur, dict) and isinstance(cur.get("before"), int) else None
    rows = await rb(request).store.bounces.list({k: v for k, v in shown.items() if v}, before=before,
                                                limit=PAGE + 1)
    nxt = encode_cursor({"before": rows[PAGE - 1].id}) if len(rows) > PAGE else None
    return render(request, "bounces.html", {"page": "bounces", "items": [r.as_dict() for r in rows[:PAGE]],
                                            "shown": shown, "next_cursor": nxt,
                                            "more": {k: v for k, v in shown.items() if v}})


@signed_in
async def suppressions(request: web.Request) -> web.StreamResponse:
    search = request.query.get("search", "").strip()[:320]
    cur = decode_cursor(request.query.get("cursor"))
    raw = cur.get("offset") if isinstance(cur, dict) else None
    offset = max(0, min(raw, 10**9)) if isinstance(raw, int) else 0
    rows = await rb(request).store.bounces.suppressions(search=search or None, limit=PAGE + 1, offset=offset)
    nxt = encode_cursor({"offset": offset + PAGE}) if len(rows) > PAGE else None
    return render(request, "suppressions.html", {"page": "suppressions", "items": [r.as_dict() for r in
                                                                                   rows[:PAGE]],
                                                 "search": search, "next_cursor": nxt})


@writes
async def remove_suppression(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    s: Session = request[SESSION]
    address = str(form.get("address", ""))[:320]
    if await rb(request).store.bounces.unsuppress(address):
        s.flash("ok", f"{address} removed from the suppression list.")
    else:
        s.flash("error", f"{address} is not on the suppression list.")
    raise back("/ui/suppressions")


@signed_in
async def channel_list(request: web.Request) -> web.StreamResponse:
    q = request.query.get("q", "").strip()[:200]
    state = request.query.get("state", "")
    rows = await channels.list_channels(rb(request).store.inbound, q=q or None,
                                        state=state if state in channels.STATES else None)
    status = routes_channels.poller_status(request)
    return render(request, "channels.html", {"page": "channels", "items": [routes_channels.present(r, status)
                                                                           for r in rows],
                                             "q": q, "state": state, "states": channels.STATES})


@writes
async def channel_action(request: web.Request) -> web.StreamResponse:
    """Enable (validated against the server first, like the API's), disable or validate a channel; the
    server's own words are shown ("Connection succeeded" / "Connection failed: ...")."""
    name, action = param(request, "name"), param(request, "action")
    s: Session = request[SESSION]
    if action not in ("enable", "disable", "validate", "delete"):
        raise ApiError(404, "not_found", f"no action {action}")
    if action == "delete":
        if not await rb(request).store.inbound.delete_channel(name):
            raise ApiError(404, "not_found", f"no channel {name}")
        s.flash("ok", f"{name}: deleted")
        raise back("/ui/channels")
    v: Validation | None
    try:
        if action == "validate":
            await routes_channels.stored(request, name)
            poller = routes_channels.poller_of(request)
            v = await validate_stored(rb(request).store.inbound, name,
                                      routes_channels.validation_timeout(request),
                                      poller.http if poller is not None else None)
        else:
            old = await routes_channels.stored(request, name)
            v = await routes_channels.save(request, dataclasses.replace(old, enabled=action == "enable"),
                                            validate=action == "enable")
    except ApiError as exc:
        if exc.status == 404:
            raise
        s.flash("error", f"{name}: {exc.message}")
    else:
        s.flash("ok" if v is None or v.ok else "error",
                f"{name}: {action}d" if v is None else f"{name}: {v.text}" + (f" ({v.detail})" if v.detail
                                                                               else ""))
    raise back("/ui/channels")


async def _channel_values(request: web.Request, name: str) -> dict[str, Any]:
    ch = await routes_channels.stored(request, name)
    return {f.name: getattr(ch, f.name) for f in channel_form.FIELDS}


@signed_in
async def channel_form_page(request: web.Request) -> web.StreamResponse:
    name = param(request, "name")
    if request[SESSION].readonly:
        raise ApiError(403, "forbidden", f"token {request[SESSION].name!r} is read-only")
    values = await _channel_values(request, name) if name else {}
    return render(request, "channel_form.html", {"page": "channels", "name": name, "error": "",
                                                 "fields": channel_form.form_fields(values, bool(name))})


@writes
async def channel_save(request: web.Request) -> web.StreamResponse:
    name = param(request, "name")
    s: Session = request[SESSION]
    form = await request.post()
    body: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}   # redrawn on an error
    try:
        body = channel_form.body_from(form, bool(name))
        if name:
            v = await channel_form.update(request, name, body)
        else:
            name, v = await channel_form.create(request, body)
    except ApiError as exc:
        if exc.status == 404:
            raise
        return render(request, "channel_form.html", {
            "page": "channels", "name": param(request, "name"), "error": exc.message,
            "fields": channel_form.form_fields(body, bool(param(request, "name")))}, status=exc.status)
    s.flash("ok" if v is None or v.ok else "error",
            f"{name}: saved" + ("" if v is None else f"; {v.text}" + (f" ({v.detail})" if v.detail else "")))
    raise back("/ui/channels")


# ---- static --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _static_bytes(name: str) -> bytes:
    with open(os.path.join(STATIC_DIR, name), "rb") as fh:
        return fh.read()


async def static(request: web.Request) -> web.StreamResponse:
    name = param(request, "name")
    if name not in STATIC_TYPES:
        raise web.HTTPNotFound()
    return web.Response(body=_static_bytes(name), content_type=STATIC_TYPES[name], charset="utf-8",
                        headers={"Cache-Control": "max-age=300"})


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/", root), ("GET", "/ui", home), ("GET", "/ui/", home),
    ("GET", "/ui/login", login_form), ("POST", "/ui/login", login), ("POST", "/ui/logout", logout),
    ("GET", "/ui/dashboard", dashboard), ("GET", "/ui/dashboard/panel", dashboard_panel),
    ("GET", "/ui/outbox", _list_page("outbox", OUTBOX)), ("GET", "/ui/sent", _list_page("sent", SENT)),
    ("POST", "/ui/messages/bulk", bulk),
    ("GET", "/ui/jobs/{id}", job_page), ("GET", "/ui/jobs/{id}/panel", job_panel),
    ("GET", "/ui/messages/{id}", message), ("GET", "/ui/messages/{id}/eml", message_eml),
    ("POST", "/ui/messages/{id}/{action}", message_action),
    ("GET", "/ui/bounces", bounces),
    ("GET", "/ui/suppressions", suppressions),       # its CSV export: pages_relay
    ("POST", "/ui/suppressions/remove", remove_suppression),
    ("GET", "/ui/channels", channel_list),
    ("GET", "/ui/channels/new", channel_form_page), ("POST", "/ui/channels/new", channel_save),
    ("GET", "/ui/channels/{name}/edit", channel_form_page),
    ("POST", "/ui/channels/{name}/edit", channel_save),
    ("POST", "/ui/channels/{name}/{action}", channel_action),
    ("GET", "/ui/static/{name}", static),
]
