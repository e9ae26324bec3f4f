"""The aiohttp application: route table from the ``routes_*`` modules, JSON errors, bearer-token auth.

Every endpoint is a ``common.Route`` listed in a resource module's ``ROUTES``; the same list feeds the
router and the OpenAPI document (``openapi.py``), so the two cannot drift apart. Resource modules whose
engine has not been installed (an ImportError of the engine module) are left out.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from admin_api import (
    openapi,
    routes_allowlist,
    routes_blocklists,
    routes_bounces,
    routes_campaigns,
    routes_channels,
    routes_dkim,
    routes_health,
    routes_messages,
    routes_nodes,
    routes_quarantine,
    routes_queue,
    routes_rejections,
    routes_routes,
    routes_suppressions,
    routes_users,
    routes_webhooks,
    ui,
)
from admin_api.auth import Authenticator, load_tokens
from admin_api.bulk import BulkJobs
from admin_api.common import (
    APP_KEY,
    CONFIG_KEY,
    JOBS_KEY,
    TAIL_KEY,
    TOKEN_NAME,
    WRITE_METHODS,
    ApiError,
    Route,
    error_response,
)
from admin_api.config import AdminConfig
from admin_api.event_metrics import EventTail
from admin_api.metrics import API_REQUESTS

log = logging.getLogger("admin_api")
audit = logging.getLogger("admin_api.audit")

# Every resource module, imported explicitly: a broken import stops the start with its traceback instead of
# silently leaving a feature out.
RESOURCES = (routes_health, routes_nodes,  # routes_nodes: the cluster's nodes (relaybox/cluster.py)
             routes_messages, routes_queue, routes_allowlist, routes_users, routes_webhooks,
             routes_routes, routes_dkim, routes_bounces, routes_suppressions, routes_channels,
             routes_campaigns, routes_quarantine, routes_rejections, routes_blocklists, openapi)

ROUTES_KEY = web.AppKey("routes", list)
AUTH_KEY = web.AppKey("authenticator", Authenticator)

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
          422: "invalid"}


def collect_routes() -> list[Route]:
    return [route for mod in RESOURCES for route in mod.ROUTES]


_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    resp = await _errors_as_json(request, handler)
    API_REQUESTS.labels(request.method if request.method in _METHODS else "other",
                        f"{resp.status // 100}xx").inc()
    return resp


async def _errors_as_json(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        msg = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else (exc.reason or "error")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, _CODES.get(exc.status, "error"), msg, headers)
    except asyncio.CancelledError:
        raise
    except (UnicodeError, RecursionError) as exc:
        # malformed input that got past the parsers (bytes that are not UTF-8, absurd nesting): the
        # client's fault, never a 500; logged in one line so a flood cannot fill the log with tracebacks
        log.warning("admin API: malformed input on %s %s: %s", request.method, request.raw_path[:200],
                    type(exc).__name__)
        return error_response(400, "bad_request", "malformed request (invalid encoding or nesting)")
    except Exception:  # noqa: BLE001 - a bug, not bad input: log it, answer a plain 500
        log.exception("admin API: unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error (see the relaybox log)")


@web.middleware
async def auth_middleware(request: web.Request, handler) -> web.StreamResponse:
    route = getattr(request.match_info, "route", None)
    spec = getattr(getattr(route, "handler", None), "__route__", None)
    if spec is not None and not spec.auth:
        return await handler(request)
    token = request.app[AUTH_KEY].check(request.headers.get("Authorization"))
    if token is None:
        return error_response(401, "unauthorized", "a valid bearer token is required",
                              {"WWW-Authenticate": 'Bearer realm="relaybox"'})
    if token.readonly and request.method in WRITE_METHODS:
        return error_response(403, "forbidden", f"token {token.name!r} is read-only")
    request[TOKEN_NAME] = token.name
    cfg = request.app[CONFIG_KEY]
    if request.content_length is not None and request.content_length > cfg.max_body_size:
        return error_response(413, "too_large", f"request body larger than {cfg.max_body_size} bytes")
    resp = await handler(request)
    if request.method in WRITE_METHODS:   # audit trail of changes (never the bodies: they may hold secrets)
        # raw_path: as sent, percent-encoded, so a crafted path cannot forge log lines
        audit.info("admin:%s %s %s -> %d", token.name, request.method, request.raw_path[:300], resp.status)
    return resp


def check_query(route: Route, query) -> None:
    """What the OpenAPI document promises about query parameters holds for every route: enums, integer
    bounds, booleans and required ones are checked here, before the handler runs (400 otherwise)."""
    for p in route.params:
        if p.where != "query":
            continue
        raw = query.get(p.name)
        if raw == "" and p.type in ("integer", "boolean"):
            raise ApiError(400, "bad_request", f"{p.name}: empty; give a value or leave the parameter out")
        if raw is None or raw == "":
            if p.required:
                raise ApiError(400, "bad_request", f"{p.name}: required")
            continue
        if p.enum is not None and raw not in p.enum:
            raise ApiError(400, "bad_request", f"{p.name}: expected one of {', '.join(p.enum) or '(empty)'}")
        if p.type == "integer":
            try:
                v = int(raw)
            except ValueError:
                raise ApiError(400, "bad_request", f"{p.name}: expected an integer") from None
            if (p.minimum is not None and v < p.minimum) or (p.maximum is not None and v > p.maximum):
                raise ApiError(400, "bad_request", f"{p.name}: expected {p.minimum}..{p.maximum}")
        if p.type == "boolean" and raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ApiError(400, "bad_request", f"{p.name}: expected true or false")
        if p.min_length is not None and len(raw) < p.min_length:
            raise ApiError(400, "bad_request", f"{p.name}: at least {p.min_length} characters")


def _wrap(route: Route):
    async def handler(request: web.Request) -> web.StreamResponse:
        check_query(route, request.query)
        return await route.handler(request)

    handler.__route__ = route  # type: ignore[attr-defined]
    return handler


def make_app(relaybox: Any, cfg: AdminConfig | None = None) -> web.Application:
    """The admin application for a running ``relaybox.app.App`` (``relaybox``)."""
    if cfg is None:
        cfg = relaybox.settings.section("admin") or AdminConfig()
    tokens = load_tokens(cfg)
    if not tokens:
        log.warning("admin API: no tokens configured; every request except /healthz gets 401")
    # the console (admin_api/ui: "/" and "/ui/...") answers first, with its session cookie; the API's
    # bearer-token auth and JSON errors below never see a console request, nor the console an API one
    app = web.Application(middlewares=[ui.middleware, error_middleware, auth_middleware],
                          client_max_size=cfg.max_body_size)
    app[APP_KEY] = relaybox
    app[CONFIG_KEY] = cfg
    app[AUTH_KEY] = Authenticator(tokens, cfg)
    ui.setup(app, app[AUTH_KEY])
    tail = EventTail(relaybox.store.stats)
    app[TAIL_KEY] = tail

    async def _start_tail(_app: web.Application) -> None:
        await tail.start()

    app.on_startup.append(_start_tail)
    jobs = app[JOBS_KEY] = BulkJobs()

    async def _stop_jobs(_app: web.Application) -> None:
        await jobs.stop()

    app.on_cleanup.append(_stop_jobs)
    routes = collect_routes()
    app[ROUTES_KEY] = routes
    for r in routes:
        app.router.add_route(r.method, r.path, _wrap(r))
    return app
