"""Smarthost routes (from the config; passwords never shown), which route a From address takes, and the
"SMTP test" action (connect, EHLO, STARTTLS, AUTH: ``relay.delivery.routes.smtp_test``)."""

from __future__ import annotations

from aiohttp import web

from admin_api.common import Param, Route, bad_request, not_found, ok, relaybox
from relay.delivery.routes import Router, smtp_test
from store.history import redact_transcript


def present(r) -> dict:
    return {"name": r.name, "host": r.host, "port": r.port, "tls": r.tls, "tls_verify": r.tls_verify,
            "auth": bool(r.username), "username": r.username or None,
            "from_addresses": list(r.from_addresses), "from_domains": list(r.from_domains),
            "default": r.default}


def _routes(request: web.Request) -> list:
    return list(relaybox(request).settings.relay.routes)


def _get(request: web.Request):
    name = request.match_info["name"]
    for r in _routes(request):
        if r.name == name:
            return r
    raise not_found(f"no route {name}")


async def list_routes(request: web.Request) -> web.Response:
    return ok({"items": [present(r) for r in _routes(request)], "next_cursor": None})


async def show_route(request: web.Request) -> web.Response:
    return ok(present(_get(request)))


async def resolve(request: web.Request) -> web.Response:
    addr = request.query.get("from", "").strip()
    if not addr or "@" not in addr or len(addr) > 320:
        raise bad_request("from: expected an address like app@org.example")
    r = Router(_routes(request)).route_for({"from_header": addr, "sender": addr})
    return ok({"from": addr, "route": r.name if r else None, "direct_mx": r is None})


async def test_route(request: web.Request) -> web.Response:
    route = _get(request)
    rc = relaybox(request).settings.relay
    helo = rc.delivery.helo_name or rc.smtp.hostname
    timeout = min(float(rc.delivery.connect_timeout), 30.0)
    success, summary, lines = await smtp_test(route, helo, timeout)
    transcript = redact_transcript(list(lines))
    out = {"route": route.name, "ok": bool(success), "result": summary, "transcript": transcript}
    if route.password and route.password in str(out):   # never echo the route's password
        out["transcript"], out["result"] = [], "output withheld: it contained the route's password"
    return ok(out)


NAME = Param("name", where="path", required=True)
ROUTE = {"type": "object", "properties": {"name": {"type": "string"}, "host": {"type": "string"},
                                          "port": {"type": "integer"}, "tls": {"type": "string"},
                                          "default": {"type": "boolean"}}}
ROUTES = [
    Route("GET", "/api/v1/routes", list_routes, "Smarthost routes (passwords never shown)", "routes",
          response={"type": "object", "properties": {"items": {"type": "array", "items": ROUTE}}}),
    Route("GET", "/api/v1/routes/resolve", resolve, "Which route a From address takes", "routes",
          [Param("from", required=True, description="From address", min_length=3)],
          response={"type": "object"}),
    Route("GET", "/api/v1/routes/{name}", show_route, "One route", "routes", [NAME], response=ROUTE,
          errors=(404,)),
    Route("POST", "/api/v1/routes/{name}/test", test_route, "SMTP test: connect, EHLO, STARTTLS, AUTH",
          "routes", [NAME], response={"type": "object"}, errors=(404,)),
]
