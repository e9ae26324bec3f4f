"""The SMTP client side of delivery (aiosmtplib): one session = connect, EHLO, STARTTLS, AUTH, then
transactions (MAIL, RCPT per recipient, DATA) until it is closed or has carried its share of messages.

- Hosts are tried in order; a connection failure, a non-2xx greeting, or EHLO/STARTTLS trouble moves on to
  the next host. AUTH failure does not (the credentials are wrong everywhere).
- TLS modes: ``opportunistic`` (MX: STARTTLS when offered, certificates not verified, plaintext retry if
  the handshake fails), ``none``, ``starttls`` (required), ``implicit`` (port 465 style); ``verify``.
- Every exchange goes to a transcript, a list of ``{"at", "dir": "S"|"C", "line"}``: server replies and
  our commands, never the message body, never credentials (``AUTH PLAIN ****``).
- Envelope addresses are re-validated with ``relay.envelope.address_error`` before any byte is written;
  an address with CR/LF can never become an SMTP command.
- Results are per recipient: ``Transaction.results[address] -> DeliveryError | None`` (None = accepted).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import aiosmtplib

from relay.delivery import aiosmtplib_seam
from relay.envelope import address_error
from relay.errors import ConnectError, DeliveryError, EnvelopeError, from_exception, from_reply
from relay.tls import client_context

aiosmtplib_seam.install()      # DATA framed by bytes.replace, not two regex passes (see the module)

log = logging.getLogger("relay.delivery.transport")


@dataclass(frozen=True)
class Candidate:
    host: str          # name for TLS SNI / the transcript
    ip: str            # address to connect to
    port: int


@dataclass(frozen=True)
class TLSPolicy:
    mode: str = "opportunistic"    # opportunistic | none | starttls | implicit
    verify: bool = False
    allow_plaintext_auth: bool = False   # AUTH on a connection without TLS (a route's explicit choice)


class TokenProvider(Protocol):
    """An OAuth2 access token for a route's XOAUTH2 login (``relay.delivery.attempt`` builds one per route
    over ``relay.oauth2``); ``forget`` after the server refused it, so the next attempt asks for a new one."""

    async def token(self) -> str: ...

    def forget(self) -> None: ...


@dataclass
class Transaction:
    results: dict[str, DeliveryError | None]
    transcript: list[dict[str, Any]]
    host: str
    ip: str
    tls: bool
    started_at: float
    ended_at: float
    reused: bool = False
    reply: tuple[int, str] | None = None     # the final (DATA) reply when accepted: (code, text)


class Session:
    """An open, greeted (and maybe TLS-secured and authenticated) SMTP connection to one host."""

    def __init__(self, smtp: aiosmtplib.SMTP, candidate: Candidate, tls: bool, opening: list[dict[str, Any]],
                 command_timeout: float):
        self.smtp = smtp
        self.candidate = candidate
        self.tls = tls
        self.opening = opening              # transcript of connect/greeting/EHLO/STARTTLS/AUTH
        self.command_timeout = command_timeout
        self.messages = 0
        self.idle_since = time.monotonic()
        self.broken = False
        self.opened_at = time.monotonic()   # a pool drops sessions opened before their route changed

    @property
    def is_open(self) -> bool:
        return not self.broken and self.smtp.is_connected

    async def send(self, sender: str, recipients: list[str], body: bytes, *, prefix: bytes = b"",
                   framed: bool = False) -> Transaction:
        """One mail transaction of ``prefix`` + ``body`` (``prefix``: fields delivery adds, kept apart so
        a large body is not copied to put them in front). ``framed``: ``body`` is known to need no line-end
        repair or dot-stuffing (see ``PipeliningProtocol.send_body``). Never raises for SMTP/network
        trouble: every recipient gets a result."""
        log_ = _Log(list(self.opening))
        started, reused = time.time(), self.messages > 0
        results: dict[str, DeliveryError | None] = {}
        final: list[tuple[int, str]] = []
        self.messages += 1
        valid = _validate(sender, recipients, results)
        if valid:
            opts = self._mail_options(sender, valid, prefix, body)
            if isinstance(opts, DeliveryError):
                results.update((r, opts) for r in valid)
            else:
                await self._exchange(log_, sender, valid, _Body(prefix, body, framed), opts, results, final)
        self.idle_since = time.monotonic()
        return Transaction(results, log_.lines, self.candidate.host, self.candidate.ip, self.tls, started,
                           time.time(), reused, final[0] if final else None)

    def _mail_options(self, sender: str, valid: list[str], prefix: bytes,
                      body: bytes) -> list[str] | DeliveryError:
        opts = []
        if not (sender.isascii() and all(r.isascii() for r in valid)):
            if not self.smtp.supports_extension("smtputf8"):
                return DeliveryError(553, "5.6.7", "non-ASCII address and the server lacks SMTPUTF8", False)
            opts.append("SMTPUTF8")
        if self.smtp.supports_extension("size"):
            opts.append(f"SIZE={len(prefix) + len(body)}")
        if self.smtp.supports_extension("8bitmime") and not (body.isascii() and prefix.isascii()):
            opts.append("BODY=8BITMIME")
        return opts

    async def _exchange(self, log_: "_Log", sender: str, valid: list[str], body: "_Body", opts: list[str],
                        results: dict[str, DeliveryError | None], final: list[tuple[int, str]]) -> None:
        proto = self.smtp.protocol
        if isinstance(proto, aiosmtplib_seam.PipeliningProtocol) and self.smtp.supports_extension(
                "pipelining"):
            await self._pipelined(proto, log_, sender, valid, body, opts, results, final)
            return
        enc = "utf-8" if "SMTPUTF8" in opts else "ascii"
        stage = "mail"
        try:
            log_.note("C", f"MAIL FROM:<{sender}>{' ' + ' '.join(opts) if opts else ''}")
            resp = await self.smtp.execute_command(b"MAIL", f"FROM:<{sender}>".encode(enc),
                                                   *(o.encode() for o in opts))
            log_.reply(resp.code, resp.message)
            err = from_reply(resp.code, resp.message, "mail")
            if err is not None:
                results.update((r, err) for r in valid)
                await self._rset(log_)
                return
            stage = "rcpt"
            for rcpt in valid:
                log_.note("C", f"RCPT TO:<{rcpt}>")
                resp = await self.smtp.execute_command(b"RCPT", f"TO:<{rcpt}>".encode(enc))
                log_.reply(resp.code, resp.message)
                results[rcpt] = from_reply(resp.code, resp.message, "rcpt")
            accepted = [r for r in valid if results[r] is None]
            if not accepted:
                await self._rset(log_)
                return
            stage = "data"
            log_.note("C", "DATA")
            resp = await self.smtp.data(body.prefix + body.data)
            log_.note("C", f"<{body.size} octets>")
            log_.reply(resp.code, resp.message)
            _data_result(resp, accepted, results, final)
        except aiosmtplib.SMTPResponseException as exc:
            log_.reply(exc.code, exc.message)
            _fail_pending(results, valid, from_exception(exc, stage), stage)
            if exc.code == 421:
                self.broken = True
            else:
                await self._rset(log_)
        except Exception as exc:  # noqa: BLE001 - network trouble: classify, mark the session broken
            self._broken_by(exc, stage, log_, results, valid)

    async def _pipelined(self, proto: aiosmtplib_seam.PipeliningProtocol, log_: "_Log", sender: str,
                         valid: list[str], body: "_Body", opts: list[str],
                         results: dict[str, DeliveryError | None], final: list[tuple[int, str]]) -> None:
        """RFC 2920: MAIL, every RCPT and DATA in one write, their replies read in order, then the body
        after a 354 (two round trips per message instead of 3 + recipients)."""
        enc = "utf-8" if "SMTPUTF8" in opts else "ascii"
        cmds = [f"MAIL FROM:<{sender}>{' ' + ' '.join(opts) if opts else ''}",
                *(f"RCPT TO:<{r}>" for r in valid), "DATA"]
        stage = "mail"
        try:
            replies = await proto.pipeline([c.encode(enc) for c in cmds], self.smtp.timeout)
            for cmd, rep in zip(cmds, replies, strict=True):
                log_.note("C", cmd)
                log_.reply(rep.code, rep.message)
            if any(rep.code == 421 for rep in replies):
                self.broken = True              # the server is closing: no RSET, no reuse
            accepted = _pipelined_results(replies, valid, results)
            data = replies[-1]
            if data.code != 354:
                if accepted:
                    results.update((r, from_reply(data.code, data.message, "data")
                                    or DeliveryError(451, "4.5.0", f"unexpected reply {data.code} to DATA",
                                                     True, stage="data")) for r in accepted)
                if not self.broken:
                    await self._rset(log_)
                return
            stage = "data"
            if accepted:
                resp = await proto.send_body(body.data, self.smtp.timeout, framed=body.framed,
                                             prefix=body.prefix)
            else:
                resp = await proto.send_body(b"", self.smtp.timeout)
            log_.note("C", f"<{body.size} octets>" if accepted else "<no recipient accepted: empty message>")
            log_.reply(resp.code, resp.message)
            if not accepted:
                await self._rset(log_)
                return
            _data_result(resp, accepted, results, final)
        except aiosmtplib.SMTPResponseException as exc:
            log_.reply(exc.code, exc.message)
            _fail_pending(results, valid, from_exception(exc, stage), stage)
            self.broken = True
        except Exception as exc:  # noqa: BLE001 - network trouble: classify, mark the session broken
            self._broken_by(exc, stage, log_, results, valid)

    def _broken_by(self, exc: BaseException, stage: str, log_: "_Log",
                   results: dict[str, DeliveryError | None], valid: list[str]) -> None:
        """Network trouble mid-transaction: every pending recipient gets the classified error; no reuse."""
        self.broken = True
        err = from_exception(exc, stage)
        log_.note("S", f"({err.text})")
        _fail_pending(results, valid, err, stage)

    async def _rset(self, log_: "_Log") -> None:
        try:
            log_.note("C", "RSET")
            resp = await self.smtp.rset()
            log_.reply(resp.code, resp.message)
        except Exception:  # noqa: BLE001
            self.broken = True

    async def close(self) -> None:
        try:
            if self.smtp.is_connected:
                await asyncio.wait_for(self.smtp.quit(), 5)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        finally:
            self.smtp.close()


class _Body(NamedTuple):
    """What one transaction sends after DATA: ``prefix`` + ``data``; ``framed``: see ``Session.send``."""
    prefix: bytes
    data: bytes
    framed: bool

    @property
    def size(self) -> int:
        return len(self.prefix) + len(self.data)


class _Log:
    """Transcript lines: ``{"at", "dir": "S"|"C", "line"}``; multi-line replies become one line each."""

    def __init__(self, lines: list[dict[str, Any]], mirror: list[dict[str, Any]] | None = None):
        self.lines = lines
        self.mirror = mirror

    def note(self, direction: str, line: str) -> None:
        for part in (line.splitlines() or [""]):
            entry = {"at": round(time.time(), 3), "dir": direction, "line": part}
            self.lines.append(entry)
            if self.mirror is not None:
                self.mirror.append(entry)

    def reply(self, code: int, message: str) -> None:
        lines = message.splitlines() or [""]
        for i, part in enumerate(lines):
            self.note("S", f"{code}{'-' if i < len(lines) - 1 else ' '}{part}")


def _validate(sender: str, recipients: list[str], results: dict[str, DeliveryError | None]) -> list[str]:
    """Re-validate the envelope (no CR/LF or lists can reach the wire); returns the sendable recipients."""
    bad_sender = address_error(sender) if sender else None
    valid = []
    for rcpt in recipients:
        why = address_error(rcpt)
        if why or bad_sender:
            results[rcpt] = EnvelopeError(rcpt if why else sender, why or bad_sender or "")
        else:
            valid.append(rcpt)
    return valid


def _data_result(resp: Any, accepted: list[str], results: dict[str, DeliveryError | None],
                 final: list[tuple[int, str]]) -> None:
    """The reply after the body decides for every accepted recipient."""
    err = from_reply(resp.code, resp.message, "data")
    if err is None:
        final.append((resp.code, " ".join(resp.message.split())))
    results.update((r, err) for r in accepted)


def _pipelined_results(replies: list[Any], valid: list[str],
                       results: dict[str, DeliveryError | None]) -> list[str]:
    """Each recipient's result from the replies to MAIL and its RCPT; returns the accepted ones."""
    mail_err = from_reply(replies[0].code, replies[0].message, "mail")
    for rcpt, rep in zip(valid, replies[1:-1], strict=True):
        results[rcpt] = mail_err or from_reply(rep.code, rep.message, "rcpt")
    return [r for r in valid if results[r] is None]


def _fail_pending(results: dict[str, DeliveryError | None], valid: list[str], err: DeliveryError,
                  stage: str) -> None:
    for rcpt in valid:
        if rcpt not in results or (stage == "data" and results[rcpt] is None):
            results[rcpt] = err


async def open_session(candidates: list[Candidate], *, helo: str, tls: TLSPolicy = TLSPolicy(),
                       username: str = "", password: str = "", connect_timeout: float = 30.0,
                       command_timeout: float = 120.0, transcript: list[dict[str, Any]] | None = None,
                       oauth: TokenProvider | None = None) -> Session:
    """Connect to the first candidate that greets and completes EHLO (and STARTTLS/AUTH as required;
    with ``oauth``, AUTH is XOAUTH2 for ``username`` with that provider's token).

    Raises a DeliveryError (the last host's) when none works; ``transcript`` collects what happened."""
    tr = transcript if transcript is not None else []
    last: DeliveryError | None = None
    if not candidates:
        raise ConnectError(451, "4.4.4", "no hosts to connect to", True, stage="connect")
    for cand in candidates:
        attempts = [tls.mode == "opportunistic", False] if tls.mode == "opportunistic" else [True]
        for try_tls in attempts:
            try:
                return await _open_one(cand, helo, tls, try_tls, (username, password, oauth),
                                       connect_timeout, command_timeout, tr)
            except _RetryPlain as exc:
                last = exc.error
                continue
            except DeliveryError as exc:
                last = exc
                if exc.stage == "auth":
                    raise
                break
    assert last is not None
    raise last


class _RetryPlain(Exception):
    def __init__(self, error: DeliveryError):
        self.error = error


async def _open_one(cand: Candidate, helo: str, tls: TLSPolicy, use_starttls: bool,
                    login: tuple[str, str, TokenProvider | None], connect_timeout: float,
                    command_timeout: float, tr: list[dict[str, Any]]) -> Session:
    log_ = _Log([], tr)
    implicit = tls.mode == "implicit"
    stage = ["connect"]
    log_.note("C", f"connect {cand.host} [{cand.ip}]:{cand.port}{' (implicit TLS)' if implicit else ''}")
    smtp = aiosmtplib.SMTP(hostname=cand.ip, port=cand.port, local_hostname=helo, timeout=command_timeout,
                           start_tls=False, validate_certs=tls.verify)
    try:
        if implicit:
            # connect to the chosen address ourselves so that TLS (SNI, certificate check) uses the host name
            sock = await _tcp_connect(cand, connect_timeout)
            smtp = aiosmtplib.SMTP(hostname=cand.host, sock=sock, local_hostname=helo,
                                   timeout=command_timeout, use_tls=True, start_tls=False,
                                   validate_certs=tls.verify, tls_context=client_context(tls.verify))
        await _greet(smtp, log_, helo, connect_timeout, stage)
        secured = implicit or await _starttls(smtp, log_, cand, helo, tls, use_starttls, stage)
        if login[0]:
            stage[0] = "auth"
            await _auth(smtp, log_, login, secured or tls.allow_plaintext_auth)
    except DeliveryError as exc:
        smtp.close()
        exc.host, exc.ip = cand.host, cand.ip
        raise
    except _RetryPlain as exc:
        smtp.close()
        exc.error.host, exc.error.ip = cand.host, cand.ip
        raise
    except Exception as exc:  # noqa: BLE001 - classify any network/protocol failure
        smtp.close()
        err = from_exception(exc, stage[0])
        err.host, err.ip = cand.host, cand.ip
        log_.note("S", f"({err.text})")
        raise err from exc
    return Session(smtp, cand, secured, log_.lines, command_timeout)


async def _tcp_connect(cand: Candidate, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in cand.ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (cand.ip, cand.port)), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


async def _greet(smtp: aiosmtplib.SMTP, log_: _Log, helo: str, timeout: float, stage: list[str]) -> None:
    try:
        greeting = await asyncio.wait_for(smtp.connect(timeout=timeout), timeout + 5)
    except aiosmtplib.SMTPConnectResponseError as exc:
        log_.note("S", f"{exc.code} {exc.message}")
        raise from_reply(exc.code, exc.message, "greeting") or from_exception(exc, "greeting") from exc
    log_.reply(greeting.code, greeting.message)
    stage[0] = "ehlo"
    log_.note("C", f"EHLO {helo}")
    resp = await smtp.ehlo()
    log_.reply(resp.code, resp.message)
    if resp.code != 250:
        raise from_reply(resp.code, resp.message, "ehlo") or ConnectError(421, "4.4.0", "EHLO failed")


async def _starttls(smtp: aiosmtplib.SMTP, log_: _Log, cand: Candidate, helo: str, tls: TLSPolicy,
                    use_starttls: bool, stage: list[str]) -> bool:
    """STARTTLS as the policy says; True when the session is now encrypted."""
    offers = smtp.supports_extension("starttls")
    if tls.mode == "starttls" and not offers:
        raise DeliveryError(421, "4.7.4", f"{cand.host} does not offer STARTTLS, which the route requires",
                            True, stage="starttls")
    if tls.mode not in ("starttls", "opportunistic") or not use_starttls or not offers:
        return False
    stage[0] = "starttls"
    log_.note("C", "STARTTLS")
    try:
        resp = await smtp.starttls(server_hostname=cand.host, validate_certs=tls.verify,
                                   tls_context=client_context(tls.verify))
    except Exception as exc:  # noqa: BLE001
        err = from_exception(exc, "starttls")
        if err.enhanced in ("4.4.1", "4.3.0"):     # the peer dropped the handshake: still a TLS failure
            err = ConnectError(421, "4.7.5", f"TLS handshake failed: {err.text}", True, stage="starttls")
        log_.note("S", f"({err.text})")
        if tls.mode == "opportunistic":
            raise _RetryPlain(err) from exc
        raise err from exc
    log_.reply(resp.code, resp.message)
    log_.note("C", f"EHLO {helo}")
    resp = await smtp.ehlo()
    log_.reply(resp.code, resp.message)
    return True


async def _auth(smtp: aiosmtplib.SMTP, log_: _Log, login: tuple[str, str, TokenProvider | None],
                allowed: bool) -> None:
    username, password, oauth = login
    if not allowed:
        raise DeliveryError(530, "5.7.0", "refusing to send credentials without TLS (set"
                            " allow_plaintext_auth = true on the route to allow it)", True, stage="auth")
    if oauth is not None:
        await _auth_xoauth2(smtp, log_, username, oauth)
        return
    log_.note("C", "AUTH **** (credentials not logged)")
    try:
        resp = await smtp.login(username, password)
    except aiosmtplib.SMTPAuthenticationError as exc:
        log_.note("S", f"{exc.code} {exc.message}")
        err = from_reply(exc.code, exc.message, "auth") or DeliveryError(535, "5.7.8", exc.message, True)
        raise DeliveryError(err.code, err.enhanced, err.text, err.temporary, stage="auth") from exc
    except aiosmtplib.SMTPException as exc:
        err = from_exception(exc, "auth")
        log_.note("S", f"({err.text})")
        raise DeliveryError(err.code, err.enhanced, err.text, err.temporary, stage="auth") from exc
    log_.reply(resp.code, resp.message)


async def _auth_xoauth2(smtp: aiosmtplib.SMTP, log_: _Log, username: str, oauth: TokenProvider) -> None:
    """SASL XOAUTH2 with a token from the route's OAuth2 grant. A token endpoint that refuses defers the
    mail (4.7.0, its own words in the text: fix the grant, the mail waits); a server that refuses the token
    makes the next attempt ask for a fresh one."""
    from relay.oauth2 import TokenError, xoauth2_response

    try:
        token = await oauth.token()
    except TokenError as exc:
        log_.note("C", f"(OAuth2: {exc})")
        raise DeliveryError(454, "4.7.0", f"OAuth2 access token not obtained: {exc}", True,
                            stage="auth") from None
    log_.note("C", "AUTH XOAUTH2 **** (token not logged)")
    try:
        resp = await smtp.execute_command(b"AUTH", b"XOAUTH2", xoauth2_response(username, token).encode())
        if resp.code == 334:        # the error challenge (base64 JSON): an empty line gets the final reply
            log_.reply(resp.code, resp.message)
            resp = await smtp.execute_command(b"")
    except aiosmtplib.SMTPException as exc:
        err = from_exception(exc, "auth")
        log_.note("S", f"({err.text})")
        raise DeliveryError(err.code, err.enhanced, err.text, err.temporary, stage="auth") from exc
    log_.reply(resp.code, resp.message)
    if resp.code != 235:
        oauth.forget()
        err = from_reply(resp.code, resp.message, "auth") or DeliveryError(535, "5.7.8", resp.message, True)
        raise DeliveryError(err.code, err.enhanced, err.text, err.temporary, stage="auth")


class ConnectionPool:
    """Idle sessions per destination key, reused for up to ``max_messages`` messages each."""

    def __init__(self, max_messages: int = 100, idle_timeout: float = 5.0):
        self.max_messages = max_messages
        self.idle_timeout = idle_timeout
        self._idle: dict[str, list[Session]] = {}
        self._dropped: dict[str, float] = {}     # key -> when its settings changed (drop())

    def take(self, key: str) -> Session | None:
        sessions = self._idle.get(key)
        now = time.monotonic()
        while sessions:
            s = sessions.pop()
            if s.is_open and now - s.idle_since < self.idle_timeout and s.messages < self.max_messages:
                return s
            asyncio.get_running_loop().create_task(s.close())
        return None

    def drop(self, key: str) -> None:
        """The destination's settings changed (a route edited): its idle sessions are closed, and the
        ones in use are closed when they come back."""
        self._dropped[key] = time.monotonic()
        for s in self._idle.pop(key, []):
            asyncio.get_running_loop().create_task(s.close())

    async def give_back(self, key: str, session: Session) -> None:
        if session.opened_at <= self._dropped.get(key, -1.0):
            await session.close()
        elif session.is_open and session.messages < self.max_messages:
            session.idle_since = time.monotonic()
            self._idle.setdefault(key, []).append(session)
        else:
            await session.close()

    async def prune(self) -> None:
        now = time.monotonic()
        for key, sessions in list(self._idle.items()):
            keep = []
            for s in sessions:
                if s.is_open and now - s.idle_since < self.idle_timeout:
                    keep.append(s)
                else:
                    await s.close()
            self._idle[key] = keep

    async def close_all(self) -> None:
        for sessions in self._idle.values():
            for s in sessions:
                await s.close()
        self._idle.clear()
