"""Console pages of who may relay: the allowlist (list, add a network with a note, remove) and the SMTP AUTH
users (list, add with a password, reset a password, remove). Writes go through the API's own steps
(``routes_allowlist.add/remove``, ``routes_users.save_user/delete_user``: checked, hashed, the intake's
policy refreshed at once). A password is never drawn back into a page, a flash or the log."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin_api import routes_allowlist, routes_users
from admin_api.common import ApiError
from admin_api.ui.views import SESSION, Handler, back, rb, render, signed_in, writes

NOTE_MAX = 1000


def _text(form: Any, key: str, limit: int) -> str:
    v = form.get(key)
    return v.strip()[:limit] if isinstance(v, str) else ""


# ---- allowlist -----------------------------------------------------------------------------------------
async def _allowlist_page(request: web.Request, error: str = "", typed: dict[str, str] | None = None,
                          status: int = 200) -> web.Response:
    entries = await rb(request).store.access.list_allowlist()
    return render(request, "allowlist.html", {"page": "allowlist", "items": [e.as_dict() for e in entries],
                                              "error": error, "typed": typed or {}}, status=status)


@signed_in
async def allowlist(request: web.Request) -> web.StreamResponse:
    return await _allowlist_page(request)


@writes
async def allowlist_add(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    cidr, note = _text(form, "cidr", 64), _text(form, "note", NOTE_MAX)
    try:
        entry = await routes_allowlist.add(rb(request), cidr, note or None)
    except ApiError as exc:
        return await _allowlist_page(request, exc.message, {"cidr": cidr, "note": note}, exc.status)
    request[SESSION].flash("ok", f"{entry.cidr} may relay now.")
    raise back("/ui/allowlist")


@writes
async def allowlist_remove(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    s = request[SESSION]
    try:
        net = await routes_allowlist.remove(rb(request), _text(form, "cidr", 64))
    except ApiError as exc:
        s.flash("error", exc.message)
    else:
        s.flash("ok", f"{net} removed from the allowlist.")
    raise back("/ui/allowlist")


# ---- SMTP users ----------------------------------------------------------------------------------------
async def _users_page(request: web.Request, error: str = "", typed: dict[str, str] | None = None,
                      status: int = 200) -> web.Response:
    users = await rb(request).store.access.list_users()
    return render(request, "users.html", {"page": "users", "items": [u.as_dict() for u in users],
                                          "error": error, "typed": typed or {}}, status=status)


@signed_in
async def users(request: web.Request) -> web.StreamResponse:
    return await _users_page(request)


@writes
async def user_add(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    username, note = _text(form, "username", 200), _text(form, "note", NOTE_MAX)
    password = form.get("password")
    password = password if isinstance(password, str) else ""
    if any(u.username == username for u in await rb(request).store.access.list_users()):
        return await _users_page(request, f"{username} exists: use Reset password on its row",
                                 {"username": username, "note": note}, 409)
    try:
        await routes_users.save_user(rb(request), username, password[:1000], note or None)
    except ApiError as exc:             # never the password back: only what else was typed
        return await _users_page(request, exc.message, {"username": username, "note": note}, exc.status)
    request[SESSION].flash("ok", f"SMTP user {username} added.")
    raise back("/ui/users")


@writes
async def user_password(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    s, username = request[SESSION], _text(form, "username", 200)
    password = form.get("password")
    current = next((u for u in await rb(request).store.access.list_users() if u.username == username), None)
    if current is None:
        raise ApiError(404, "not_found", f"no SMTP user {username}")
    try:
        await routes_users.save_user(rb(request), username, password if isinstance(password, str) else "",
                                     current.note)
    except ApiError as exc:
        s.flash("error", f"{username}: {exc.message}")
    else:
        s.flash("ok", f"{username}: password reset (the old one no longer works).")
    raise back("/ui/users")


@writes
async def user_remove(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    s, username = request[SESSION], _text(form, "username", 200)
    try:
        await routes_users.delete_user(rb(request), username)
    except ApiError as exc:
        s.flash("error", exc.message)
    else:
        s.flash("ok", f"SMTP user {username} removed.")
    raise back("/ui/users")


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/ui/allowlist", allowlist), ("POST", "/ui/allowlist/add", allowlist_add),
    ("POST", "/ui/allowlist/remove", allowlist_remove),
    ("GET", "/ui/users", users), ("POST", "/ui/users/add", user_add),
    ("POST", "/ui/users/password", user_password), ("POST", "/ui/users/remove", user_remove),
]
