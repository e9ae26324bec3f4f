"""The admin web console: server-rendered pages under ``/ui`` on the admin listener (docs/console.md).

The console has its own small dispatcher instead of routes on the API's router: the API's router is
exactly its route table (the OpenAPI document is generated from it and a test holds the two equal), and
the API's bearer-token middleware never sees a console request. ``middleware`` answers ``/`` (a redirect
to ``/ui/``) and everything under ``/ui``; every other request goes on to the API unchanged.

Console requests authenticate with the session cookie (``session.py``) instead of a bearer token; a bearer
token does not open the console, and the cookie does not open the API. Every page calls the same store
and spool operations as the matching API route (``views.py``), never SQL of its own.
"""

from __future__ import annotations

import logging
import os

import aiohttp_jinja2
import jinja2
from aiohttp import web

from admin_api.auth import Authenticator
from admin_api.common import ApiError
from admin_api.ui import pages_access, pages_inbound, pages_relay, pages_routes, views
from admin_api.ui.session import Sessions
from admin_api.ui.views import AUTHN_KEY, SESSIONS_KEY

log = logging.getLogger("admin_api.ui")

HERE = os.path.dirname(os.path.abspath(__file__))
DISPATCH_KEY = web.AppKey("ui_dispatcher", web.UrlDispatcher)

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",   # not no-referrer: Chromium then sends "Origin: null" on POSTs
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def owns(path: str) -> bool:
    return path == "/" or path == "/ui" or path.startswith("/ui/")


def setup(app: web.Application, authenticator: Authenticator) -> None:
    """Mount the console on the admin application (called by ``admin_api.app.make_app``)."""
    templates = os.path.join(HERE, "templates")
    if not os.path.isfile(os.path.join(templates, "base.html")):
        log.error("console: %s is missing (the install left out admin_api/ui's package data); every /ui"
                  " page will answer 500", templates)
    env = aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(templates),
                               autoescape=True)
    views.install_filters(env)
    app[SESSIONS_KEY] = Sessions()
    app[AUTHN_KEY] = authenticator
    router = web.UrlDispatcher()
    # the pages' own routes first: "/ui/channels/{name}/filters" before views' "/ui/channels/{name}/{action}"
    for method, path, handler in (*pages_inbound.ROUTES, *pages_access.ROUTES, *pages_relay.ROUTES,
                                  *pages_routes.ROUTES, *views.ROUTES):
        router.add_route(method, path, handler)
    app[DISPATCH_KEY] = router


@web.middleware
async def middleware(request: web.Request, handler) -> web.StreamResponse:
    if not owns(request.path):
        return await handler(request)
    match = await request.app[DISPATCH_KEY].resolve(request)
    request[views.MATCH] = match
    try:
        resp = await match.handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            exc.headers.update(SECURITY_HEADERS)
            raise
        resp = views.error_page(request, exc.status, exc.reason or "error")
    except ApiError as exc:
        resp = views.error_page(request, exc.status, exc.message)
    except Exception:  # noqa: BLE001 - a bug: log it, show a plain page, never a traceback
        log.exception("console: unhandled error on %s %s", request.method, request.path)
        resp = views.error_page(request, 500, "internal error (see the relaybox log)")
    resp.headers.update(SECURITY_HEADERS)
    resp.headers.setdefault("Cache-Control", "no-store")
    return resp
