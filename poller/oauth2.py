"""OAuth2 access tokens for XOAUTH2 (Microsoft 365, Google): refresh-token or client-credentials grant.

A rotated refresh token returned by the token endpoint is stored on the channel (``oauth_refresh``) and
used next time. Tokens are cached until shortly before they expire. Secrets never reach the logs.
"""

from __future__ import annotations

import time
from typing import Protocol

import aiohttp

from poller.config import ChannelConfig


class RefreshTokens(Protocol):
    """Where the refresh token rotated by the token endpoint lives (``store.inbound``, or a validation's
    capture of it for a channel not saved yet)."""

    async def oauth_refresh(self, name: str) -> str | None: ...

    async def set_oauth_refresh(self, name: str, token: str) -> None: ...

_cache: dict[tuple[str, str, str], tuple[str, float]] = {}


def _key(ch: ChannelConfig) -> tuple[str, str, str]:
    return (ch.name, ch.oauth2_token_url, ch.oauth2_client_id)


def forget(ch: ChannelConfig) -> None:
    """Drop the cached access token (the mail server refused it: revoked, or expired early)."""
    _cache.pop(_key(ch), None)


class TokenError(Exception):
    pass


async def access_token(inbound: RefreshTokens, http: aiohttp.ClientSession, ch: ChannelConfig) -> str:
    """An access token for the channel (a ``ChannelConfig``): cached, or from the token endpoint."""
    cached = _cache.get(_key(ch))
    if cached and cached[1] > time.time() + 60:
        return cached[0]
    refresh = await inbound.oauth_refresh(ch.name) or ch.oauth2_refresh_token
    form = {"client_id": ch.oauth2_client_id}
    if ch.oauth2_client_secret:
        form["client_secret"] = ch.oauth2_client_secret
    if ch.oauth2_scope:
        form["scope"] = ch.oauth2_scope
    if refresh:
        form.update(grant_type="refresh_token", refresh_token=refresh)
    else:
        form["grant_type"] = "client_credentials"
    try:
        async with http.post(ch.oauth2_token_url, data=form, timeout=aiohttp.ClientTimeout(total=30)) as resp:
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        raise TokenError(f"token endpoint {ch.oauth2_token_url}: {type(exc).__name__}: {exc}") from exc
    if resp.status != 200 or "access_token" not in body:
        err = body.get("error_description") or body.get("error") or f"HTTP {resp.status}"
        raise TokenError(f"token endpoint refused: {err}")
    token = str(body["access_token"])
    _cache[_key(ch)] = (token, time.time() + float(body.get("expires_in", 3600)))
    new_refresh = body.get("refresh_token")
    if new_refresh and new_refresh != refresh:
        await inbound.set_oauth_refresh(ch.name, new_refresh)
    return token
