"""Console pages of the smarthost routes: the list with each route's status, **Add a route** / **Edit**
(every setting; the password write-only), **Delete**, and **Test** (the full SMTP test: connect, EHLO,
STARTTLS, AUTH, MAIL FROM, RCPT TO) showing "Connection succeeded" or "Connection failed at <STEP>:
<the server's words>" with the redacted transcript.

Every step is the API's own (``routes_routes.route_views / one / merged / save / run_test``, the route
book's store and refresh): saving tests the route and stores it either way, like ``POST /api/v1/routes``
without ``validate=strict``. Routes of the config file (``source = config``) are shown, tested, not
edited here."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from admin_api import routes_routes
from admin_api.common import ApiError
from admin_api.ui.views import SESSION, Handler, back, param, render, signed_in, writes
from relay.config import RouteConfig
from relay.delivery.routes import route_from_settings

LISTS = ("from_addresses", "from_domains", "auth_users", "client_networks")
BOOLS = ("tls_verify", "allow_plaintext_auth", "default")
SKIP = ("name",)
HELP = {
    "host": "the smarthost's name or address",
    "port": "empty: the TLS mode's port (none 25, starttls 587, implicit 465)",
    "tls": "starttls: upgrade on the submission port; implicit: TLS from the first byte; none: plain",
    "tls_verify": "check the server's certificate and name",
    "username": "SMTP AUTH user (empty: no AUTH)",
    "password": "write-only",
    "allow_plaintext_auth": "AUTH without TLS (only on a trusted network)",
    "from_addresses": "exact From addresses taking this route, comma-separated",
    "from_domains": "From domains taking this route (and their subdomains), comma-separated",
    "auth_users": "SMTP AUTH users whose mail takes this route, comma-separated",
    "client_networks": "submitting client networks (CIDR) whose mail takes this route, comma-separated",
    "default": "mail no other route takes goes here (else directly to the recipients' MX)",
    "sender": "MAIL FROM of the test (empty: the first From address)",
    "oauth2_token_url": "XOAUTH2 instead of a password: the provider's token endpoint",
    "oauth2_client_id": "XOAUTH2 client id",
    "oauth2_client_secret": "XOAUTH2 client secret (client-credentials grant; write-only)",
    "oauth2_scope": "XOAUTH2 scope, e.g. https://outlook.office365.com/.default",
    "oauth2_refresh_token": "XOAUTH2 refresh token (refresh-token grant; write-only)",
}


def _kind(name: str) -> str:
    if name in BOOLS:
        return "bool"
    if name in routes_routes.SECRETS:
        return "secret"
    return {"tls": "enum", "port": "int"}.get(name, "list" if name in LISTS else "text")


def _fields(values: dict[str, Any], stored_secrets: set[str] | frozenset[str] = frozenset()
            ) -> list[dict[str, Any]]:
    out = []
    for f in dataclasses.fields(RouteConfig):
        if f.name in SKIP:
            continue
        k = _kind(f.name)
        default = f.default if f.default is not dataclasses.MISSING else (
            [] if f.default_factory is not dataclasses.MISSING else "")
        v = values.get(f.name, default)
        if k == "list":
            v = ", ".join(v) if isinstance(v, (list, tuple)) else str(v or "")
        elif k == "int" and v in (0, "0"):
            v = ""                        # the TLS mode's port
        out.append({"name": f.name, "kind": k, "value": "" if k == "secret" else ("" if v is None else v),
                    "choices": ("starttls", "implicit", "none"), "help": HELP.get(f.name, ""),
                    "required": f.name == "host", "stored": f.name in stored_secrets})
    return out


def _body(form: Any) -> dict[str, Any]:
    """The API's JSON body from the form (an empty password: keep the stored one, the API's ``***``)."""
    body: dict[str, Any] = {}
    for f in dataclasses.fields(RouteConfig):
        if f.name in SKIP:
            continue
        raw = form.get(f.name)
        text = raw if isinstance(raw, str) else ""
        k = _kind(f.name)
        if k == "bool":
            body[f.name] = text == "true"
        elif k == "list":
            body[f.name] = [p.strip() for p in text.replace("\n", ",").split(",") if p.strip()]
        elif k == "int":
            if text.strip():
                try:
                    body[f.name] = int(text.strip())
                except ValueError:
                    raise ApiError(422, "invalid", f"{f.name}: expected a whole number") from None
        elif k == "secret":
            if text:                      # left empty: the stored secret is kept (merged)
                body[f.name] = text
        else:
            body[f.name] = text.strip()
    return body


async def _stored(request: web.Request, name: str) -> Any:
    stored = await routes_routes.book(request).store.routes.get(name)
    if stored is None:
        raise ApiError(404, "not_found", f"no route {name}")
    return stored


async def _page(request: web.Request, test: Any = None) -> web.Response:
    items = await routes_routes.route_views(request)
    return render(request, "routes.html", {"page": "routes", "items": items, "test": test})


@signed_in
async def routes_list(request: web.Request) -> web.StreamResponse:
    return await _page(request)


@writes
async def route_test(request: web.Request) -> web.StreamResponse:
    """The answer is the routes page with the result and its transcript (a test changes nothing)."""
    stored = await _stored(request, param(request, "name"))
    try:
        route = route_from_settings(stored.settings)
    except (TypeError, ValueError) as exc:
        raise ApiError(422, "invalid", f"route {stored.name} is not usable: {exc}") from None
    return await _page(request, (await routes_routes.run_test(request, route)).as_dict())


def _editable(request: web.Request, stored: Any) -> None:
    if request[SESSION].readonly:
        raise ApiError(403, "forbidden", f"token {request[SESSION].name!r} is read-only")
    if stored is not None and stored.source == "config":
        raise ApiError(409, "conflict", f"route {stored.name} is defined in the config file ([[routes]]):"
                                        " change it there and reload")


@signed_in
async def route_form(request: web.Request) -> web.StreamResponse:
    name = param(request, "name")
    stored = await _stored(request, name) if name else None
    _editable(request, stored)
    settings = dict(stored.settings) if stored else {}
    values = {k: v for k, v in settings.items() if k not in routes_routes.SECRETS}
    if stored is not None and not values.get("port"):
        values["port"] = ""
    return render(request, "route_form.html", {"page": "routes", "name": name, "new_name": "", "error": "",
                                               "fields": _fields(values, {k for k in routes_routes.SECRETS
                                                                          if settings.get(k)})})


@writes
async def route_save(request: web.Request) -> web.StreamResponse:
    name, s = param(request, "name"), request[SESSION]
    form = await request.post()
    typed = {k: v for k, v in form.items() if isinstance(v, str) and k not in ("csrf", "password")}
    new_name = str(form.get("route_name", "")).strip() if not name else name
    try:
        stored = await _stored(request, name) if name else None
        _editable(request, stored)
        if not new_name:
            raise ApiError(422, "invalid", "name: required")
        if stored is None and await routes_routes.book(request).store.routes.get(new_name) is not None:
            raise ApiError(409, "conflict", f"route {new_name} exists: edit it instead")
        body = _body(form)
        data = routes_routes.merged(body, dict(stored.settings) if stored else None, patch=False)
        _, result = await routes_routes.save(request, new_name, data, new=stored is None, test={})
    except ApiError as exc:
        if exc.status == 404:
            raise
        return render(request, "route_form.html", {
            "page": "routes", "name": name, "new_name": new_name, "error": exc.message,
            "fields": _fields(typed)}, status=exc.status)
    words = result.summary if result is not None else "not tested"
    s.flash("ok" if result is None or result.ok else "error", f"route {new_name}: saved; {words}")
    raise back("/ui/routes")


@writes
async def route_delete(request: web.Request) -> web.StreamResponse:
    name, s = param(request, "name"), request[SESSION]
    stored = await _stored(request, name)
    try:
        _editable(request, stored)
        if not await routes_routes.book(request).store.routes.delete(name):
            raise ApiError(404, "not_found", f"no route {name}")
        await routes_routes.book(request).refresh(force=True)
    except ApiError as exc:
        if exc.status in (403, 404):
            raise
        s.flash("error", f"route {name}: {exc.message}")
    else:
        s.flash("ok", f"route {name}: deleted")
    raise back("/ui/routes")


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/ui/routes", routes_list),
    ("GET", "/ui/routes/new", route_form), ("POST", "/ui/routes/new", route_save),
    ("GET", "/ui/routes/{name}/edit", route_form), ("POST", "/ui/routes/{name}/edit", route_save),
    ("POST", "/ui/routes/{name}/delete", route_delete), ("POST", "/ui/routes/{name}/test", route_test),
]
