"""Opening a channel's session (connect, TLS with SNI and certificate verification against ``server_name``,
LOGIN or XOAUTH2) and validating a channel before it is saved: the session opens, the folder can be
selected, and the storage folder of ``after = move`` exists (and differs from the folder).

The answer is ``Connection succeeded`` or ``Connection failed: <the server's own words>``; saving an
active channel needs the first (``poller.channels.save_validated``).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from poller import oauth2
from poller.channels import ChannelError, check, config_of, default_port, normalize, save_channel
from poller.config import ChannelConfig
from poller.imap import IMAPSession, MailboxError
from poller.oauth2 import RefreshTokens, TokenError, access_token
from poller.pop3 import POP3Session
from store.inbound import InboundStore

SUCCEEDED = "Connection succeeded"
FAILED = "Connection failed: "


@dataclass(frozen=True)
class Validation:
    ok: bool
    text: str                        # "Connection succeeded" | "Connection failed: <why>"
    detail: str = ""                 # what was checked (success) or the server's words (failure)
    rotated_refresh: str | None = None   # a refresh token the token endpoint rotated to while validating

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "result": self.text, "detail": self.detail}


async def open_session(ch: ChannelConfig, tokens: RefreshTokens, http: aiohttp.ClientSession | None,
                       timeout: float) -> Any:
    """A logged-in ``IMAPSession`` or ``POP3Session`` (raises ``MailboxError`` / ``TokenError``)."""
    cls = POP3Session if ch.protocol == "pop3" else IMAPSession
    session = cls(ch.host, default_port(ch), tls=ch.tls, server_name=ch.server_name, verify=ch.verify,
                  ca_file=ch.ca_file, timeout=timeout)
    await session.connect()
    try:
        if ch.auth == "oauth2":
            if http is None:
                raise TokenError("no HTTP client for the token endpoint")
            token = await access_token(tokens, http, ch)
            try:
                await session.xoauth2(ch.user, token)
            except MailboxError:
                oauth2.forget(ch)        # the next attempt asks the token endpoint for a fresh one
                raise
        else:
            await session.login(ch.user, ch.password)
    except BaseException:
        await session.logout()
        raise
    return session


class _Capture:
    """The rotated refresh token of a validation, kept aside: the channel may not be saved yet."""

    def __init__(self, tokens: RefreshTokens):
        self.tokens = tokens
        self.rotated: str | None = None

    async def oauth_refresh(self, name: str) -> str | None:
        return self.rotated or await self.tokens.oauth_refresh(name)

    async def set_oauth_refresh(self, name: str, token: str) -> None:
        self.rotated = token


async def _checks(session: Any, ch: ChannelConfig) -> str:
    if ch.protocol == "pop3":
        n = len(await session.uidl())
        return f"logged in to {ch.host} ({n} messages)"
    await session.select(ch.folder)
    if ch.after == "move" or ch.sync_all_folders:
        names = [n for n, _ in await session.folders()]
        if ch.after == "move" and ch.storage_folder not in names:
            raise MailboxError(f"storage folder {ch.storage_folder!r} does not exist on the server")
    return f"logged in to {ch.host} and selected {ch.folder}"


async def check_connection(ch: ChannelConfig, tokens: RefreshTokens, timeout: float,
                           http: aiohttp.ClientSession | None = None) -> Validation:
    """Validate ``ch`` against its server within ``timeout``. ``http`` (for the OAuth2 token endpoint) is
    opened for the call when not given."""
    if ch.after == "move" and ch.storage_folder == ch.folder:
        return Validation(False, FAILED + "the storage folder must differ from the source folder")
    capture = _Capture(tokens)
    own = http is None and ch.auth == "oauth2"
    client = aiohttp.ClientSession() if own else http

    async def _do() -> str:
        session = await open_session(ch, capture, client, timeout)
        try:
            return await _checks(session, ch)
        finally:
            await session.logout()

    try:
        detail = await asyncio.wait_for(_do(), timeout)
        return Validation(True, SUCCEEDED, detail, capture.rotated)
    except asyncio.TimeoutError:
        why = f"no answer from {ch.host} within {timeout:.0f} s"
    except (MailboxError, TokenError) as exc:
        why = str(exc)
    except (OSError, UnicodeError, ValueError, ssl.SSLError) as exc:   # e.g. a host name that is not IDNA
        why = f"cannot connect to {ch.host!r}: {exc}"
    finally:
        if own and client is not None:
            await client.close()
    return Validation(False, FAILED + why, why, capture.rotated)


class NotValidated(ChannelError):
    """An active channel whose validation failed: not saved (it may be saved inactive)."""

    def __init__(self, validation: Validation):
        self.validation = validation
        super().__init__(f"{validation.text} (a channel that fails validation can be saved only as inactive:"
                         " enabled = false, or --disabled)")


async def save_validated(inbound: InboundStore, ch: ChannelConfig, timeout: float,
                         http: aiohttp.ClientSession | None = None) -> Validation:
    """Save a channel after validating it: the static checks first (``ChannelError``), then the server
    (``check_connection``). An active channel is saved only when the connection succeeded
    (``NotValidated``); an inactive one is saved either way, the failure kept as its last error."""
    ch = normalize(ch)
    check(ch, set(await inbound.campaign_names()))
    v = await check_connection(ch, inbound, timeout, http)
    if not v.ok and ch.enabled:
        raise NotValidated(v)
    await save_channel(inbound, ch)
    if v.rotated_refresh:
        await inbound.set_oauth_refresh(ch.name, v.rotated_refresh)
    await inbound.record_validation(ch.name, None if v.ok else v.text)
    return v


async def validate_stored(inbound: InboundStore, name: str, timeout: float,
                          http: aiohttp.ClientSession | None = None) -> Validation:
    """Validate a saved channel: the answer is kept as its last error (cleared on success), and a refresh
    token the token endpoint rotated to meanwhile is stored (the old one may be dead already)."""
    rec = await inbound.channel(name)
    if rec is None:
        return Validation(False, f"no such channel: {name}")
    v = await check_connection(config_of(rec), inbound, timeout, http)
    if v.rotated_refresh:
        await inbound.set_oauth_refresh(name, v.rotated_refresh)
    await inbound.record_validation(name, None if v.ok else v.text)
    return v
