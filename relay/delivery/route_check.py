"""The full SMTP test of a smarthost route, what admins run before trusting it (``relaybox routes test``,
``POST /api/v1/routes/{name}/test``, and every save of a route):

    connect -> EHLO -> STARTTLS (tls = "starttls") or TLS at connect ("implicit") -> AUTH (with a
    username) -> MAIL FROM:<sender> -> RCPT TO:<rcpt> -> RSET -> QUIT
    (``send=True``: DATA with a short test message instead of RSET, then QUIT)

The answer is ``Connection succeeded`` or ``Connection failed at <STEP>: <the server's own words>`` (STEP:
DNS, CONNECT, GREETING, EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA). The transcript shows every command and
reply; AUTH is logged as ``AUTH ****`` and the password never appears in the result (a result that would
contain it is withheld). The port is always the effective one (25 / 587 / 465 by TLS mode when unset).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from email.utils import formatdate, make_msgid
from typing import Any

import aiohttp
import aiosmtplib

from relay import oauth2
from relay.config import RouteConfig
from relay.envelope import address_error
from relay.errors import DeliveryError, from_exception

STAGES = {"dns": "DNS", "connect": "CONNECT", "greeting": "GREETING", "ehlo": "EHLO", "starttls": "STARTTLS",
          "auth": "AUTH", "mail": "MAIL", "rcpt": "RCPT", "data": "DATA"}


@dataclass
class CheckResult:
    route: str
    host: str
    port: int
    sender: str
    rcpt: str
    ok: bool = False
    step: str | None = None                # where it failed (None: it did not)
    reply: str | None = None               # the server's words at that step (or our reason, for DNS/CONNECT)
    sent: bool = False                     # send=True and the test message was accepted
    transcript: list[dict[str, Any]] = field(default_factory=list)

    @property
    def summary(self) -> str:
        if self.ok:
            return "Connection succeeded" + (" (test message accepted)" if self.sent else "")
        return f"Connection failed at {self.step}: {self.reply}"

    def as_dict(self) -> dict[str, Any]:
        return {"route": self.route, "host": self.host, "port": self.port, "ok": self.ok,
                "result": self.summary, "step": self.step, "reply": self.reply, "sender": self.sender,
                "rcpt": self.rcpt, "sent": self.sent, "transcript": list(self.transcript)}


def check_addresses(route: RouteConfig, helo: str, sender: str | None = None,
                   rcpt: str | None = None) -> tuple[str, str]:
    """MAIL FROM and RCPT TO of a test: the given ones, else the route's ``sender`` or first From address
    (else postmaster@<helo>); the recipient defaults to the sender. Raises ValueError for a bad address."""
    s = (sender or route.sender or (route.from_addresses[0] if route.from_addresses else "")
         or f"postmaster@{helo}").strip()
    r = (rcpt or s).strip()
    for what, addr in (("sender", s), ("rcpt", r)):
        why = address_error(addr)
        if why:
            raise ValueError(f"{what}: {why}")
    return s, r


def _server_words(err: DeliveryError, transcript: list[dict[str, Any]]) -> str:
    """The server's last reply line with the error's code (its own words), else the classified error."""
    for entry in reversed(transcript):
        line = str(entry.get("line", ""))
        if entry.get("dir") == "S" and line[:3] == str(err.code):
            return (line[:3] + " " + line[4:]).strip()
        if entry.get("dir") == "C":
            break
    return f"{err.code} {err.enhanced} {err.text}"


def _withheld(result: CheckResult, route: RouteConfig) -> CheckResult:
    secrets = [getattr(route, k, "") for k in ("password", "oauth2_client_secret", "oauth2_refresh_token")]
    text = str(result.as_dict())
    if any(s and s in text for s in secrets):
        result.transcript = []
        result.reply = "output withheld: it contained one of the route's secrets"
    return result


async def check_route(route: RouteConfig, helo: str, *, sender: str | None = None, rcpt: str | None = None,
                      send: bool = False, timeout: float = 30.0,
                      refresh_tokens: oauth2.RefreshTokens | None = None) -> CheckResult:
    """Run the full test against ``route``; never raises for network or SMTP trouble (ValueError for a bad
    sender or recipient address). An XOAUTH2 route (``oauth2_token_url``) asks its token endpoint first;
    ``refresh_tokens``: where its rotated refresh token is kept (the relay's: ``store.kv``)."""
    s, r = check_addresses(route, helo, sender, rcpt)
    result = CheckResult(route.name, route.host, route.port, s, r)
    http = aiohttp.ClientSession() if getattr(route, "oauth2_token_url", "") else None
    try:
        token = _Token(route, http, refresh_tokens or _Memory()) if http is not None else None
        await _run(route, helo, result, send, timeout, token)
    except DeliveryError as exc:
        _failed(result, exc)
    finally:
        if http is not None:
            await http.close()
    return _withheld(result, route)


class _Memory:
    """Rotated refresh tokens of one test, in memory."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}

    async def oauth_refresh(self, name: str) -> str | None:
        return self.tokens.get(name)

    async def set_oauth_refresh(self, name: str, token: str) -> None:
        self.tokens[name] = token


class _Token:
    """The route's XOAUTH2 access token (``transport.TokenProvider``) from its grant."""

    def __init__(self, route: RouteConfig, http: aiohttp.ClientSession, store: oauth2.RefreshTokens):
        self.http, self.store = http, store
        self.grant = oauth2.Grant(owner=f"route:{route.name}", token_url=route.oauth2_token_url,
                                  client_id=route.oauth2_client_id, client_secret=route.oauth2_client_secret,
                                  scope=route.oauth2_scope, refresh_token=route.oauth2_refresh_token)

    async def token(self) -> str:
        return await oauth2.access_token(self.store, self.http, self.grant)

    def forget(self) -> None:
        oauth2.forget(self.grant)


def _failed(result: CheckResult, exc: DeliveryError) -> None:
    result.ok = False
    result.step = STAGES.get(exc.stage or "connect", (exc.stage or "CONNECT").upper())
    result.reply = _server_words(exc, result.transcript)


async def _run(route: RouteConfig, helo: str, result: CheckResult, send: bool, timeout: float,
               token: _Token | None) -> None:
    from relay.delivery.transport import Candidate, TLSPolicy, open_session

    tr = result.transcript
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(route.host, route.port), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        raise DeliveryError(451, "4.4.3", f"cannot resolve {route.host}: {exc}", True, stage="dns") from exc
    ips = list(dict.fromkeys(str(i[4][0]) for i in infos))
    cands = [Candidate(route.host, ip, route.port) for ip in ips[:2]]
    policy = TLSPolicy(route.tls, route.tls_verify, route.allow_plaintext_auth)
    try:
        session = await open_session(cands, helo=helo, tls=policy, username=route.username,
                                     password=route.password, connect_timeout=timeout,
                                     command_timeout=timeout, transcript=tr, oauth=token)
    except DeliveryError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything else is reported as a reply-shaped line
        raise from_exception(exc, "connect") from exc
    smtp = session.smtp
    try:
        await _command(smtp, tr, "mail", f"MAIL FROM:<{result.sender}>")
        await _command(smtp, tr, "rcpt", f"RCPT TO:<{result.rcpt}>")
        if send:
            await _data(smtp, tr, route, helo, result)
            result.sent = True
        else:
            await _command(smtp, tr, "rset", "RSET", check=False)
        result.ok = True
    except DeliveryError as exc:
        _failed(result, exc)             # before QUIT: the server's words are the last reply
    finally:
        try:
            _note(tr, "C", "QUIT")
            resp = await smtp.quit()
            _reply(tr, resp.code, resp.message)
        except Exception:  # noqa: BLE001 - the test's verdict is in; the server may just hang up
            smtp.close()


def _note(tr: list[dict[str, Any]], direction: str, line: str) -> None:
    tr.append({"at": round(time.time(), 3), "dir": direction, "line": line})


def _reply(tr: list[dict[str, Any]], code: int, message: str) -> None:
    lines = message.splitlines() or [""]
    for i, part in enumerate(lines):
        _note(tr, "S", f"{code}{'-' if i < len(lines) - 1 else ' '}{part}")


async def _command(smtp: aiosmtplib.SMTP, tr: list[dict[str, Any]], stage: str, line: str, *,
                   check: bool = True) -> None:
    _note(tr, "C", line)
    verb, _, arg = line.partition(" ")
    try:
        resp = await smtp.execute_command(verb.encode(), *([arg.encode("utf-8")] if arg else []))
    except Exception as exc:  # noqa: BLE001
        err = from_exception(exc, stage)
        _note(tr, "S", f"({err.text})")
        raise DeliveryError(err.code, err.enhanced, err.text, err.temporary, stage=stage) from exc
    _reply(tr, resp.code, resp.message)
    if check and not 200 <= resp.code < 300:
        raise DeliveryError(resp.code, None, resp.message, stage=stage)


async def _data(smtp: aiosmtplib.SMTP, tr: list[dict[str, Any]], route: RouteConfig, helo: str,
                result: CheckResult) -> None:
    body = (f"From: <{result.sender}>\r\nTo: <{result.rcpt}>\r\n"
            f"Subject: relaybox route test ({route.name})\r\nDate: {formatdate()}\r\n"
            f"Message-ID: {make_msgid(domain=helo)}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            f"A test message sent by relaybox through route {route.name} ({route.host}:{route.port}).\r\n")
    _note(tr, "C", "DATA")
    try:
        resp = await smtp.data(body.encode())
    except aiosmtplib.SMTPResponseException as exc:
        _reply(tr, exc.code, exc.message)
        raise DeliveryError(exc.code, None, exc.message, stage="data") from exc
    except Exception as exc:  # noqa: BLE001
        err = from_exception(exc, "data")
        _note(tr, "S", f"({err.text})")
        raise DeliveryError(err.code, err.enhanced, err.text, err.temporary, stage="data") from exc
    _reply(tr, resp.code, resp.message)
