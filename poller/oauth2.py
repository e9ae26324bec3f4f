"""OAuth2 access tokens for a channel's XOAUTH2 login (Microsoft 365, Google): the channel's settings as a
``relay.oauth2.Grant``. A rotated refresh token is stored on the channel (``store.inbound``
``oauth_refresh``) and used next time; tokens are cached until shortly before they expire
(``relay/oauth2.py`` does the work, for routes too). Secrets never reach the logs.
"""

from __future__ import annotations

import aiohttp

from poller.config import ChannelConfig
from relay import oauth2 as _shared
from relay.oauth2 import RefreshTokens, TokenError

__all__ = ["RefreshTokens", "TokenError", "access_token", "forget", "grant"]

_cache = _shared._cache      # one cache for channels and routes (tests clear it between runs)


def grant(ch: ChannelConfig) -> _shared.Grant:
    return _shared.Grant(owner=ch.name, token_url=ch.oauth2_token_url, client_id=ch.oauth2_client_id,
                         client_secret=ch.oauth2_client_secret, scope=ch.oauth2_scope,
                         refresh_token=ch.oauth2_refresh_token)


def forget(ch: ChannelConfig) -> None:
    """Drop the cached access token (the mail server refused it: revoked, or expired early)."""
    _shared.forget(grant(ch))


async def access_token(inbound: RefreshTokens, http: aiohttp.ClientSession, ch: ChannelConfig) -> str:
    """An access token for the channel: cached, or from the token endpoint."""
    return await _shared.access_token(inbound, http, grant(ch))
