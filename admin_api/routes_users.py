"""SMTP AUTH credentials. Passwords are hashed (scrypt) on the way in; hashes are never returned."""

from __future__ import annotations

from aiohttp import web

from admin_api.common import Param, Route, body_str, invalid, iso, not_found, ok, read_json, relaybox
from relay.intake import policy

USER = {"type": "object", "required": ["username"], "properties": {
    "username": {"type": "string"}, "note": {"type": "string", "nullable": True},
    "source": {"type": "string"}, "created_at": {"type": "string"}}}


async def list_users(request: web.Request) -> web.Response:
    users = await relaybox(request).store.access.list_users()
    items = [{**u.as_dict(), "created_at": iso(u.created_at)} for u in users]
    return ok({"items": items, "next_cursor": None})


async def save_user(rb, username: str, password: str, note: str | None, source: str = "api") -> None:
    """``POST /api/v1/smtp-users``'s steps (the console's forms too): checked, the password hashed
    (scrypt), stored (a new user or a new password), the intake's policy refreshed."""
    if len(password) < 8:
        raise invalid("password: at least 8 characters")
    if not username or any(c.isspace() or ord(c) < 32 for c in username) or "/" in username:
        raise invalid("username: non-empty, without spaces, control characters or '/'")
    hashed = policy.hash_password(password)
    await rb.store.access.set_user(username, hashed, note, source)
    await rb.policy.refresh()


async def delete_user(rb, name: str) -> None:
    """``DELETE /api/v1/smtp-users/{username}``'s steps (404 if there is no such user)."""
    if not await rb.store.access.remove_user(name):
        raise not_found(f"no SMTP user {name}")
    await rb.policy.refresh()


async def set_user(request: web.Request) -> web.Response:
    body = await read_json(request)
    username = body_str(body, "username", max_len=200) or ""
    password = body_str(body, "password", max_len=1000) or ""
    note = body_str(body, "note", required=False)
    await save_user(relaybox(request), username, password, note)
    return ok({"username": username, "note": note}, status=201)


async def remove_user(request: web.Request) -> web.Response:
    name = request.match_info["username"]
    await delete_user(relaybox(request), name)
    return ok({"removed": name})


ROUTES = [
    Route("GET", "/api/v1/smtp-users", list_users, "SMTP AUTH users (no password hashes)", "smtp-users",
          response={"type": "object", "properties": {"items": {"type": "array", "items": USER}}}),
    Route("POST", "/api/v1/smtp-users", set_user, "Create or update a user (password is hashed)",
          "smtp-users",
          body={"type": "object", "required": ["username", "password"], "properties": {
              "username": {"type": "string"}, "password": {"type": "string", "minLength": 8},
              "note": {"type": "string"}}}, response=USER, status=201, errors=(422,)),
    Route("DELETE", "/api/v1/smtp-users/{username}", remove_user, "Remove a user", "smtp-users",
          [Param("username", where="path", required=True)], response={"type": "object"}, errors=(404,)),
]
