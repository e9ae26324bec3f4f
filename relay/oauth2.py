"""OAuth2 access tokens for XOAUTH2 logins, inbound (the poller's IMAP/POP3 channels) and outbound (smarthost
routes to Microsoft 365 or Google Workspace).

Two grants: ``refresh_token`` (Google; Microsoft 365 delegated) when a refresh token is known, else
``client_credentials`` (Microsoft 365 application access). A refresh token rotated by the token endpoint
is handed to the caller's ``RefreshTokens`` store and used from then on (the one in the config is only the
first). Access tokens are cached per (owner, token URL, client id) until a minute before they expire;
``forget`` drops one the mail server refused. Secrets never reach logs or error texts: a ``TokenError``
carries the endpoint's own ``error_description`` only.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp


class RefreshTokens(Protocol):
    """Where a rotated refresh token lives (encrypted in the store), by owner name."""

    async def oauth_refresh(self, name: str) -> str | None: ...

    async def set_oauth_refresh(self, name: str, token: str) -> None: ...


@dataclass(frozen=True)
class Grant:
    """What the token endpoint needs. ``owner`` names the channel or route the token is for."""

    owner: str
    token_url: str
    client_id: str
    client_secret: str = field(default="", repr=False)
    scope: str = ""
    refresh_token: str = field(default="", repr=False)     # the first one; a rotated one wins

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.owner, self.token_url, self.client_id)


class TokenError(Exception):
    pass


_cache: dict[tuple[str, str, str], tuple[str, float]] = {}


def forget(grant: Grant) -> None:
    """Drop the cached access token (the mail server refused it: revoked, or expired early)."""
    _cache.pop(grant.key, None)


_pending: dict[tuple[str, str, str], asyncio.Task[str]] = {}


async def access_token(refresh_store: RefreshTokens, http: aiohttp.ClientSession, grant: Grant) -> str:
    """An access token for ``grant``: cached, or from the token endpoint. Concurrent callers (sessions
    opening at once) share one request, so a rotating refresh token is never spent twice."""
    cached = _cache.get(grant.key)
    if cached and cached[1] > time.time() + 60:
        return cached[0]
    loop = asyncio.get_running_loop()
    task = _pending.get(grant.key)
    if task is None or task.done() or task.get_loop() is not loop:
        task = loop.create_task(_fetch(refresh_store, http, grant))
        _pending[grant.key] = task
        task.add_done_callback(lambda t: _pending.pop(grant.key, None) if _pending.get(grant.key) is t
                               else None)
    return await asyncio.shield(task)


async def _fetch(refresh_store: RefreshTokens, http: aiohttp.ClientSession, grant: Grant) -> str:
    refresh = await refresh_store.oauth_refresh(grant.owner) or grant.refresh_token
    form = {"client_id": grant.client_id}
    if grant.client_secret:
        form["client_secret"] = grant.client_secret
    if grant.scope:
        form["scope"] = grant.scope
    if refresh:
        form.update(grant_type="refresh_token", refresh_token=refresh)
    else:
        form["grant_type"] = "client_credentials"
    try:
        async with http.post(grant.token_url, data=form, timeout=aiohttp.ClientTimeout(total=30)) as resp:
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        raise TokenError(f"token endpoint {grant.token_url}: {type(exc).__name__}: {exc}") from exc
    if resp.status != 200 or not isinstance(body, dict) or "access_token" not in body:
        err = (body.get("error_description") or body.get("error")) if isinstance(body, dict) else None
        raise TokenError(f"token endpoint refused: {err or f'HTTP {resp.status}'}")
    token = str(body["access_token"])
    _cache[grant.key] = (token, time.time() + float(body.get("expires_in", 3600)))
    new_refresh = body.get("refresh_token")
    if new_refresh and new_refresh != refresh:
        await refresh_store.set_oauth_refresh(grant.owner, str(new_refresh))
    return token


def xoauth2_response(username: str, token: str) -> str:
    """The SASL XOAUTH2 initial response (Google's and Microsoft's format), base64."""
    return base64.b64encode(f"user={username}\x01auth=Bearer {token}\x01\x01".encode()).decode("ascii")
