"""Smarthost routes, managed like channels: list and show with status, create, replace (PUT), change
(PATCH), remove, which route a message takes (resolve), and the full SMTP test.

- Routes live in ``store.routes`` (``relay.delivery.route_book``): ``[[routes]]`` of the config are seeded
  at start and SIGHUP (``"source": "config"``: read-only here, 409), the rest are created here or by
  ``relaybox routes add`` (``"source": "api"``). A change is live for the next delivery at once (this
  process) or within a second (other processes).
- Secrets (``SECRETS``: password, OAuth2 client secret and refresh token) are write-only: answers show
  ``"password_set": true`` (``oauth2_*_set``); a PUT/PATCH that leaves one out or sends ``"***"`` keeps the
  stored one; ``""`` removes it. PUT replaces every other setting (left out = the default), PATCH only the
  given ones.
- Saving (POST, PUT, PATCH) runs the full test (``relay.delivery.route_check``) and answers with it under
  ``"test"``, like Postal and the channels: the route is saved either way (201/200) and ``test.result``
  says ``Connection succeeded`` or ``Connection failed at <STEP>: <the server's words>``. Query
  ``validate=strict``: a failed test saves nothing (422, the result in ``error.test``); ``validate=skip``:
  no test. Body ``test_rcpt`` / ``test_sender`` pick the test's RCPT TO / MAIL FROM.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin_api.common import (
    ApiError,
    Param,
    Route,
    bad_request,
    conflict,
    invalid,
    iso,
    not_found,
    ok,
    read_json,
    relaybox,
)
from relay.config import RouteConfig
from relay.configtypes import ConfigError, build
from relay.delivery.route_check import CheckResult, check_route
from relay.delivery.routes import ROUTE_FIELDS, route_from_settings, route_settings
from store.history import redact_transcript
from store.routes import DefaultTaken, RouteExists, RouteMissing, RouteReadOnly, StoredRoute

MASK = "***"
SECRETS = ("password", "oauth2_client_secret", "oauth2_refresh_token")   # write-only
VALIDATE = ("report", "strict", "skip")
# keys of a route view that a PUT of a whole view may carry back (ignored)
READ_ONLY = ("status", "source", "created_at", "updated_at", "auth", "password_set", "test", "oauth2",
             "oauth2_client_secret_set", "oauth2_refresh_token_set", "unusable")
TEST_KEYS = ("test_rcpt", "test_sender")


def present(r: RouteConfig) -> dict[str, Any]:
    """A route's settings for an answer: everything but the password."""
    return {"name": r.name, "host": r.host, "port": r.port, "tls": r.tls, "tls_verify": r.tls_verify,
            "auth": bool(r.username), "username": r.username or None, "password_set": bool(r.password),
            "allow_plaintext_auth": r.allow_plaintext_auth, "from_addresses": list(r.from_addresses),
            "from_domains": list(r.from_domains), "auth_users": list(r.auth_users),
            "client_networks": list(r.client_networks), "default": r.default, "sender": r.sender or None,
            **_oauth2(r)}


def _oauth2(r: RouteConfig) -> dict[str, Any]:
    """XOAUTH2 settings of a route (secrets as ``*_set`` flags), when the route uses it."""
    url = getattr(r, "oauth2_token_url", "")
    if not url:
        return {"oauth2": False}
    return {"oauth2": True, "oauth2_token_url": url, "oauth2_client_id": getattr(r, "oauth2_client_id", ""),
            "oauth2_scope": getattr(r, "oauth2_scope", ""),
            "oauth2_client_secret_set": bool(getattr(r, "oauth2_client_secret", "")),
            "oauth2_refresh_token_set": bool(getattr(r, "oauth2_refresh_token", ""))}


def view(stored: StoredRoute, status: dict[str, Any]) -> dict[str, Any]:
    """A stored route with its status, as the API (and the console) shows it."""
    try:
        out = present(route_from_settings(stored.settings))
    except (TypeError, ValueError) as exc:          # stored before a rule got stricter: show, do not use
        out = {"name": stored.name, "unusable": str(exc)}
    st = dict(status)
    for k in ("last_success_at", "last_error_at"):
        st[k] = iso(st.get(k))
    return {**out, "source": stored.source, "created_at": iso(stored.created_at),
            "updated_at": iso(stored.updated_at), "status": st}


def book(request: web.Request) -> Any:
    return relaybox(request).routes


def helo_of(request: web.Request) -> str:
    rc = relaybox(request).settings.relay
    return str(rc.delivery.helo_name or rc.smtp.hostname)


def check_timeout(request: web.Request) -> float:
    return min(float(relaybox(request).settings.relay.delivery.connect_timeout), 30.0)


def blocklisted(request: web.Request, name: str) -> list[str]:
    """The DNSBL zones listing an address the route sends from (relay.dnsbl; [] when checks are off)."""
    checker = getattr(relaybox(request), "dnsbl", None)
    return list(checker.zones_listing(name)) if checker is not None else []


async def route_views(request: web.Request) -> list[dict[str, Any]]:
    return [view(s, {**st, "blocklisted": blocklisted(request, s.name)})
            for s, st in await book(request).views()]


async def one(request: web.Request, name: str) -> dict[str, Any]:
    stored = await book(request).store.routes.get(name)
    if stored is None:
        raise not_found(f"no route {name}")
    return view(stored, {**book(request).status.view(stored), "blocklisted": blocklisted(request, name)})


# ---- the steps of a save (the console calls these too) ---------------------------------------------
def build_route(data: dict[str, Any], name: str) -> RouteConfig:
    """A RouteConfig from a body (unknown keys and bad values: 422 naming the key)."""
    try:
        return build(RouteConfig, {**data, "name": name}, f"routes.{name}")
    except ConfigError as exc:
        raise invalid("; ".join(exc.problems)) from None


def merged(body: dict[str, Any], old: dict[str, Any] | None, *, patch: bool) -> dict[str, Any]:
    """The settings a save stores: the body (PATCH: over the old settings), the password kept when left
    out or masked, and the port 0 (the TLS mode's) when none was given."""
    data = {k: v for k, v in body.items() if k not in READ_ONLY and k not in TEST_KEYS and k != "name"}
    if "port" in data and (isinstance(data["port"], bool) or not isinstance(data["port"], int)
                           or not 1 <= data["port"] <= 65535):
        raise invalid(f"port: expected 1 to 65535, got {data['port']!r}")
    base = {k: v for k, v in (old or {}).items() if k in ROUTE_FIELDS and k != "name"} if patch else {}
    out = {**base, **data}
    for key in SECRETS:
        if old is not None and (key not in data or data.get(key) == MASK):
            if old.get(key):
                out[key] = old[key]
            else:
                out.pop(key, None)
        if out.get(key) == MASK:
            raise invalid(f"{key}: '***' keeps a stored secret; this route has none")
    if not patch and "port" not in data:
        out.pop("port", None)
    if out.get("port") == 0:
        out.pop("port")
    return out


async def run_test(request: web.Request, route: RouteConfig, *, rcpt: Any = None, sender: Any = None,
                   send: bool = False) -> CheckResult:
    for key, value in (("rcpt", rcpt), ("sender", sender)):
        if value is not None and (not isinstance(value, str) or len(value) > 320):
            raise invalid(f"{key}: expected an address")
    try:
        result = await check_route(route, helo_of(request), sender=sender, rcpt=rcpt, send=send,
                                   timeout=check_timeout(request), refresh_tokens=relaybox(request).store.kv)
    except ValueError as exc:
        raise invalid(str(exc)) from None
    result.transcript = redact_transcript(result.transcript)
    return result


async def save(request: web.Request, name: str, data: dict[str, Any], *, new: bool,
               test: dict[str, Any]) -> tuple[dict[str, Any], CheckResult | None]:
    """Validate, test (unless ``validate=skip``), store, make live. Returns the view and the test."""
    mode = request.query.get("validate", "report")
    if mode not in VALIDATE:
        raise bad_request(f"validate: expected one of {', '.join(VALIDATE)}")
    route = build_route(data, name)
    result = None
    if mode != "skip":
        result = await run_test(request, route, rcpt=test.get("test_rcpt"), sender=test.get("test_sender"))
        if mode == "strict" and not result.ok:
            raise StrictFailure(result)
    settings = route_settings(route)
    if "port" not in data:
        settings["port"] = 0                     # follows the TLS mode if that changes later
    routes = book(request).store.routes
    try:
        if new:
            await routes.create(StoredRoute(name, settings))
        else:
            await routes.replace(StoredRoute(name, settings))
    except (RouteExists, DefaultTaken, RouteReadOnly) as exc:
        raise conflict(str(exc)) from None
    except RouteMissing as exc:
        raise not_found(str(exc)) from None
    await book(request).refresh(force=True)
    return await one(request, name), result


class StrictFailure(ApiError):
    def __init__(self, result: CheckResult):
        super().__init__(422, "test_failed", result.summary)
        self.result = result


def _answer(v: dict[str, Any], result: CheckResult | None, status: int) -> web.Response:
    return ok({**v, "test": result.as_dict() if result is not None else None}, status)


def _strict(exc: StrictFailure) -> web.Response:
    return web.json_response({"error": {"code": exc.code, "message": exc.message,
                                        "test": exc.result.as_dict()}}, status=422)


async def _editable(request: web.Request, name: str) -> StoredRoute:
    stored = await book(request).store.routes.get(name)
    if stored is None:
        raise not_found(f"no route {name}")
    if stored.source == "config":
        raise conflict(f"route {name} is defined in the config file ([[routes]]): change it there and reload")
    return stored


# ---- handlers --------------------------------------------------------------------------------------
async def list_routes(request: web.Request) -> web.Response:
    return ok({"items": await route_views(request), "next_cursor": None})


async def show_route(request: web.Request) -> web.Response:
    return ok(await one(request, request.match_info["name"]))


async def create_route(request: web.Request) -> web.Response:
    body = await read_json(request)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise invalid("name: required")
    name = name.strip()
    if await book(request).store.routes.get(name) is not None:
        raise conflict(f"route {name} exists; PUT /api/v1/routes/{name} changes it")
    try:
        v, result = await save(request, name, merged(body, None, patch=False), new=True, test=body)
    except StrictFailure as exc:
        return _strict(exc)
    return _answer(v, result, 201)


def _changer(patch: bool):
    async def change_route(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await read_json(request)
        if "name" in body and body["name"] != name:
            raise invalid("name: a route cannot be renamed (create the new one, then remove this one)")
        stored = await _editable(request, name)
        try:
            v, result = await save(request, name, merged(body, dict(stored.settings), patch=patch),
                                   new=False, test=body)
        except StrictFailure as exc:
            return _strict(exc)
        return _answer(v, result, 200)
    change_route.__name__ = "patch_route" if patch else "put_route"
    return change_route


async def delete_route(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await _editable(request, name)
    try:
        removed = await book(request).store.routes.delete(name)
    except RouteReadOnly as exc:
        raise conflict(str(exc)) from None
    if not removed:
        raise not_found(f"no route {name}")
    await book(request).refresh(force=True)
    return ok({"removed": name})


async def resolve(request: web.Request) -> web.Response:
    addr = request.query.get("from", "").strip()
    if not addr or "@" not in addr or len(addr) > 320:
        raise bad_request("from: expected an address like app@org.example")
    msg = {"from_header": addr, "sender": addr, "auth_user": request.query.get("auth_user") or None,
           "client_ip": request.query.get("client_ip") or None, "route_hint": request.query.get("route")}
    r = book(request).router.route_for(msg)
    return ok({"from": addr, "route": r.name if r else None, "direct_mx": r is None})


async def test_route(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await read_json(request, required=False)
    stored = await book(request).store.routes.get(name)
    if stored is None:
        raise not_found(f"no route {name}")
    try:
        route = route_from_settings(stored.settings)
    except (TypeError, ValueError) as exc:
        raise invalid(f"route {name} is not usable: {exc}") from None
    send = body.get("send", False)
    if not isinstance(send, bool):
        raise invalid("send: expected true or false")
    result = await run_test(request, route, rcpt=body.get("rcpt"), sender=body.get("sender"), send=send)
    return ok(result.as_dict())


# ---- OpenAPI ---------------------------------------------------------------------------------------
NAME = Param("name", where="path", required=True)
BY_NAME = "/api/v1/routes/{name:(?!resolve$)[^/]+}"      # /routes/resolve is not a route's name
VALIDATE_PARAM = Param("validate", enum=list(VALIDATE),
                       description="report (default): save and report the test; strict: save only if the"
                                   " test succeeds (else 422); skip: no test")
_STR, _BOOL, _INT = {"type": "string"}, {"type": "boolean"}, {"type": "integer"}
_LIST = {"type": "array", "items": _STR}
_TIME = {"type": "string", "nullable": True, "description": "ISO 8601, UTC"}
SETTINGS: dict[str, Any] = {
    "host": _STR, "port": {**_INT, "minimum": 1, "maximum": 65535,
                           "description": "default by tls: none 25, starttls 587, implicit 465"},
    "tls": {"type": "string", "enum": ["none", "starttls", "implicit"]}, "tls_verify": _BOOL,
    "username": _STR, "password": {**_STR, "writeOnly": True, "description": "never returned; *** keeps"},
    "allow_plaintext_auth": _BOOL, "from_addresses": _LIST, "from_domains": _LIST,
    "auth_users": {**_LIST, "description": "SMTP AUTH users whose mail takes this route"},
    "client_networks": {**_LIST, "description": "client networks (CIDR) whose mail takes this route"},
    "default": _BOOL, "sender": {**_STR, "description": "MAIL FROM of the test"},
}
TEST_RESULT: dict[str, Any] = {"type": "object", "properties": {
    "route": _STR, "host": _STR, "port": _INT, "ok": _BOOL,
    "result": {**_STR, "description": "Connection succeeded | Connection failed at <STEP>: <reply>"},
    "step": {**_STR, "nullable": True,
             "description": "DNS | CONNECT | GREETING | EHLO | STARTTLS | AUTH | MAIL | RCPT | DATA"},
    "reply": {**_STR, "nullable": True}, "sender": _STR, "rcpt": _STR, "sent": _BOOL,
    "transcript": {"type": "array", "items": {"type": "object", "properties": {
        "at": {"type": "number"}, "dir": {"type": "string", "enum": ["C", "S"]}, "line": _STR}}}}}
STATUS: dict[str, Any] = {"type": "object", "properties": {
    "state": {"type": "string", "enum": ["up", "failing", "unknown"]}, "last_success_at": _TIME,
    "last_error": {**_STR, "nullable": True}, "last_error_at": _TIME, "in_flight": _INT,
    "delivered": _INT, "deferred": _INT, "failed": _INT,
    "blocklisted": {"type": "array", "items": _STR,
                    "description": "DNSBL zones listing the route's sending address"}}}
ROUTE: dict[str, Any] = {"type": "object", "properties": {
    "name": _STR, **{k: v for k, v in SETTINGS.items() if k != "password"}, "auth": _BOOL,
    "username": {**_STR, "nullable": True}, "sender": {**_STR, "nullable": True}, "password_set": _BOOL,
    "source": {"type": "string", "enum": ["config", "api"]}, "created_at": _TIME, "updated_at": _TIME,
    "status": STATUS}}
SAVED = {"type": "object", "properties": {**ROUTE["properties"],
                                          "test": {**TEST_RESULT, "nullable": True}}}
BODY: dict[str, Any] = {"type": "object", "properties": {**SETTINGS, "test_rcpt": _STR, "test_sender": _STR}}
CREATE = {"type": "object", "required": ["name", "host"],
          "properties": {"name": {**_STR, "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"}, **BODY["properties"]}}
ROUTES = [
    Route("GET", "/api/v1/routes", list_routes, "Smarthost routes with status (passwords never shown)",
          "routes", response={"type": "object", "properties": {"items": {"type": "array", "items": ROUTE}}}),
    Route("POST", "/api/v1/routes", create_route, "Create a route (tested on save; saved either way unless"
          " validate=strict)", "routes", [VALIDATE_PARAM], body=CREATE, response=SAVED, status=201,
          errors=(409, 422)),
    Route("GET", "/api/v1/routes/resolve", resolve, "Which route a message takes", "routes",
          [Param("from", required=True, description="From address", min_length=3),
           Param("auth_user", description="the submitting SMTP AUTH user"),
           Param("client_ip", description="the submitting client's address"),
           Param("route", description="an X-Relaybox-Route header's value")],
          response={"type": "object"}),
    Route("GET", BY_NAME, show_route, "One route with status", "routes", [NAME],
          response=ROUTE, errors=(404,)),
    Route("PUT", BY_NAME, _changer(False), "Replace a route's settings (password kept when"
          " left out or ***)", "routes", [NAME, VALIDATE_PARAM], body=BODY, response=SAVED,
          errors=(404, 409, 422)),
    Route("PATCH", BY_NAME, _changer(True), "Change the given settings of a route",
          "routes", [NAME, VALIDATE_PARAM], body=BODY, response=SAVED, errors=(404, 409, 422)),
    Route("DELETE", BY_NAME, delete_route, "Remove a route (not one of the config file)",
          "routes", [NAME], response={"type": "object"}, errors=(404, 409)),
    Route("POST", "/api/v1/routes/{name}/test", test_route,
          "Full SMTP test: connect, EHLO, STARTTLS, AUTH, MAIL FROM, RCPT TO, RSET (send: a test message)",
          "routes", [NAME], body={"type": "object", "properties": {"rcpt": _STR, "sender": _STR,
                                                                  "send": _BOOL}},
          response=TEST_RESULT, errors=(404, 422)),
]
