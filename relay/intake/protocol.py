"""The SMTP protocol object: aiosmtpd's ``SMTP`` with what a production relay needs and aiosmtpd lacks.

Raw-argument MAIL/RCPT parsing (aiosmtpd turns ``<a@x.com;b@y.com>`` into ``a@x.com``), enhanced status
codes on our replies, session limits, a 421 on idle timeout and while draining, and the fast strict DATA
reader of ``relay.intake.data``. Policy decisions and the spool commit are the handler's
(``relay.intake.listener.IntakeHandler``); this module only speaks the protocol.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import re
import time
from base64 import b64decode
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Session, syntax

from relay.config import SMTPConfig
from relay.envelope import address_error, helo_error, utf8_error
from relay.intake import aiosmtpd_seam
from relay.intake.auth import AUTH_ATTEMPTS, AuthThrottle, Busy, Hasher
from relay.intake.data import check_and_clean, read_data
from relay.intake.metrics import SMTP_REJECTED, SMTP_SESSIONS

log = logging.getLogger("relay.intake.listener")

DATA_READ_LIMIT = 512 * 1024
_PATH_RE = re.compile(r"^\s*<([^<>]*)>(.*)$", re.S)

@dataclass
class ListenerState:
    """Shared by all sessions of one process (limits, draining)."""

    sessions: int = 0
    per_ip: dict[str, int] = field(default_factory=dict)
    in_data: int = 0
    draining: bool = False
    disk_ok: Callable[[], bool] = lambda: True
    hasher: Hasher | None = None              # made from the config by the first session if not given
    throttle: AuthThrottle | None = None
    connects: dict[str, deque[float]] = field(default_factory=dict)   # recent session starts per address
    rejections: Any = None     # relay.intake.rejections.RejectionLog: refusals noted here, written in batches

    def auth(self, cfg: SMTPConfig) -> tuple[Hasher, AuthThrottle]:
        if self.hasher is None:
            self.hasher = Hasher(cfg.auth_workers, cfg.auth_queue)
        if self.throttle is None:
            self.throttle = AuthThrottle.from_config(cfg)
        return self.hasher, self.throttle

    def rate_exceeded(self, ip: str, limit: int, now: float) -> bool:
        """One more session start from ``ip``; True when it makes more than ``limit`` in 60 s."""
        q = self.connects.get(ip)
        if q is None:
            if len(self.connects) > 100_000:       # bounded: forget addresses with no recent start
                for k in [k for k, v in self.connects.items() if not v or v[-1] < now - 60]:
                    del self.connects[k]
            q = self.connects[ip] = deque()
        while q and q[0] < now - 60:
            q.popleft()
        if len(q) >= limit:
            return True
        q.append(now)
        return False


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP with strict address parsing, limits, timeouts with 421, and a fast DATA reader."""

    def __init__(self, handler: Any, cfg: SMTPConfig, state: ListenerState, *,
                 implicit_tls: bool = False, **kw: Any):
        aiosmtpd_seam.install()
        self.cfg = cfg
        self.state = state
        self._counted_ip: str | None = None
        self._implicit_tls = implicit_tls
        self._auth_failures = 0
        self._cmd: tuple[str, str] | None = None      # the command whose final reply is pending (log)
        self._auth_login = ""
        self._reply_lines: list[str] = []             # continuation lines of the reply being pushed
        self._idle_deadline = 0.0                     # loop time the session times out (_reset_timeout)
        self._timer_at = 0.0                          # loop time the armed timer fires
        # on an implicit-TLS listener the whole session is encrypted: AUTH needs no STARTTLS first
        super().__init__(handler, data_size_limit=cfg.max_message_size, enable_SMTPUTF8=True,
                         decode_data=False, hostname=cfg.hostname, ident="relaybox",
                         timeout=cfg.idle_timeout,
                         auth_require_tls=cfg.require_tls_for_auth and not implicit_tls,
                         auth_required=False, authenticator=None,
                         auth_exclude_mechanism=["CRAM-MD5"], **kw)

    # ---- session accounting / limits ----------------------------------------------------------------
    async def _handle_client(self) -> None:
        peer = self.session.peer if self.session else None
        ip = peer[0] if peer else ""
        st = self.state
        if st.draining:
            await self._refuse("421 4.3.2 Service shutting down, try again later")
            return
        if st.sessions >= self.cfg.max_sessions:
            SMTP_REJECTED.labels("too_many_sessions").inc()
            await self._refuse("421 4.3.2 Too many connections, try again later")
            return
        if st.per_ip.get(ip, 0) >= self.cfg.max_sessions_per_ip:
            SMTP_REJECTED.labels("too_many_sessions").inc()
            await self._refuse("421 4.3.2 Too many connections from your address")
            return
        rate = self.cfg.max_connection_rate_per_ip
        if rate and not self._exempt(ip) and st.rate_exceeded(ip, rate, time.monotonic()):
            SMTP_REJECTED.labels("connection_rate").inc()
            await self._refuse("421 4.7.0 Too many connections from your address, slow down")
            return
        if self._implicit_tls and self.session is not None and self.transport is not None:
            self.session.ssl = self.transport.get_extra_info("ssl_object")   # Received: ... with ESMTPS
        st.sessions += 1
        st.per_ip[ip] = st.per_ip.get(ip, 0) + 1
        self._counted_ip = ip
        SMTP_SESSIONS.inc()
        try:
            await super()._handle_client()
        finally:
            self._uncount()

    def _uncount(self) -> None:
        if self._counted_ip is None:
            return
        st = self.state
        st.sessions -= 1
        left = st.per_ip.get(self._counted_ip, 1) - 1
        if left <= 0:
            st.per_ip.pop(self._counted_ip, None)
        else:
            st.per_ip[self._counted_ip] = left
        self._counted_ip = None
        SMTP_SESSIONS.dec()

    def connection_lost(self, error) -> None:
        super().connection_lost(error)

    def _exempt(self, ip: str) -> bool:
        policy = getattr(self.event_handler, "policy", None)
        return bool(policy is not None and policy.ip_allowed(ip))

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # ---- the rejection log: every 4xx/5xx final reply to a command, noted without I/O -------------------
    async def push(self, status: Any) -> None:
        if isinstance(status, str) and status[3:4] == "-":
            # a continuation line ("250-SIZE ...") leaves with its reply's last line: one write (one
            # segment to the client) per reply instead of one per line; aiosmtpd pushes EHLO line by line
            self._reply_lines.append(status)
            return
        cmd = self._cmd
        if cmd is not None and isinstance(status, str) and status[:1] in "245":
            self._cmd = None
            if status[:1] != "2" and self.state.rejections is not None:
                self._note_rejection(cmd, status)
        if self._reply_lines:
            status = "\r\n".join([*self._reply_lines, status])
            self._reply_lines.clear()
        await super().push(status)

    def _note_rejection(self, cmd: tuple[str, str], reply: str) -> None:
        verb, arg = cmd
        sess, env = self.session, self.envelope
        user = sess.auth_data if sess is not None and sess.authenticated else ""
        sender = env.mail_from if env is not None and env.mail_from else ""
        if verb == "MAIL":
            sender = arg[5:] if arg[:5].upper() == "FROM:" else arg
        try:
            self.state.rejections.note(
                client_ip=self._peer_ip(), reply=reply, command=verb, sender=sender.strip(),
                auth_user=self._auth_login if verb == "AUTH" else (user if isinstance(user, str) else ""),
                recipient=(arg[3:] if arg[:3].upper() == "TO:" else arg).strip() if verb == "RCPT" else "")
        except Exception:  # noqa: BLE001 - the log never breaks a session
            log.exception("rejection log: could not note a refusal")

    async def _refuse(self, line: str) -> None:
        self._cmd = ("CONNECT", "")
        try:
            await self.push(line)
        finally:
            if self.transport is not None:
                self.transport.close()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """As aiosmtpd's (the idle timeout starts again at every command) without cancelling one loop timer
        and arming another per command: the session keeps one timer and moves a deadline; a timer firing
        before the deadline re-arms for the rest. A shorter duration than the armed one re-arms at once."""
        deadline = self.loop.time() + (duration or self._timeout_duration)
        self._idle_deadline = deadline
        if self._timeout_handle is None or deadline < self._timer_at:
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            self._arm_idle_timer(deadline)

    def _arm_idle_timer(self, at: float) -> None:
        self._timer_at = at
        self._timeout_handle = self.loop.call_at(at, self._idle_timer_fired)  # type: ignore[assignment]

    def _idle_timer_fired(self) -> None:
        if self._idle_deadline > self.loop.time():
            self._arm_idle_timer(self._idle_deadline)
        else:
            self._timeout_cb()

    def _timeout_cb(self):
        if self.transport is not None:
            try:
                self._writer.write(b"421 4.4.2 " + self.hostname.encode() + b" Error: timeout exceeded\r\n")
            except Exception:  # noqa: BLE001 - the connection is going away anyway
                pass
        super()._timeout_cb()

    def _create_session(self) -> Session:
        return Session(self.loop)

    # ---- HELO / EHLO: a domain or an address literal, nothing else (it reaches Received) ------------
    async def _helo_refused(self, verb: str, name: str | None) -> bool:
        err = helo_error(name or "")
        if err is None:
            return False
        SMTP_REJECTED.labels("bad_helo").inc()
        await self.push(f"501 5.5.2 Syntax: {verb} hostname ({err}; a domain name or an address literal)")
        return True

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        if not await self._helo_refused("HELO", hostname):
            await super().smtp_HELO(hostname)

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        if not await self._helo_refused("EHLO", hostname):
            await super().smtp_EHLO(hostname)

    # ---- AUTH: hashes off the loop, throttled per address and user, disconnect after N failures ------
    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        self._cmd, self._auth_login = ("AUTH", ""), ""
        _, throttle = self.state.auth(self.cfg)
        ip = self._peer_ip()
        if self.session is not None and not self.session.authenticated and throttle.locked(ip):
            AUTH_ATTEMPTS.labels("locked").inc()
            SMTP_REJECTED.labels("auth_locked").inc()
            self._auth_failures = self.cfg.auth_max_failures_per_session      # and disconnect at once
            await self.push("454 4.7.0 Too many failed authentications, try again later")
        else:
            await super().smtp_AUTH(arg)
        if self._auth_failures >= self.cfg.auth_max_failures_per_session:
            SMTP_REJECTED.labels("auth_disconnect").inc()
            await self.push("421 4.7.0 Too many failed authentications, closing connection")
            self._close()

    def _peer_ip(self) -> str:
        peer = self.session.peer if self.session else None
        return str(peer[0]) if peer else ""

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        blob = await self._auth_blob(args, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\0")
        if len(parts) != 3:
            await self.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return await self._verify(parts[1], parts[2])

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        login = await self._auth_blob(args, self.AuthLoginUsernameChallenge)
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if password is MISSING or not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._verify(login, password)

    async def _auth_blob(self, args: list[str], challenge: str) -> bytes | None:
        """The client's base64 response (initial response or after a 334), or None after replying 501."""
        if len(args) == 1:
            got = await self.challenge_auth(challenge)
            return got if isinstance(got, bytes) else None
        try:
            return b64decode(args[1].encode("ascii", "replace"), validate=True)
        except (binascii.Error, ValueError):
            await self.push("501 5.5.2 Can't decode base64")
            return None

    async def _verify(self, login: bytes, password: bytes) -> AuthResult:
        hasher, throttle = self.state.auth(self.cfg)
        ip = self._peer_ip()
        user = login.decode("utf-8", "replace")
        self._auth_login = user
        if throttle.locked(ip, user):
            AUTH_ATTEMPTS.labels("locked").inc()
            SMTP_REJECTED.labels("auth_locked").inc()
            self._auth_failures += 1
            return AuthResult(success=False, handled=False,
                              message="454 4.7.0 Too many failed authentications, try again later")
        try:
            ok = await self.event_handler.policy.verify_login(user, password.decode("utf-8", "replace"),
                                                              hasher.run)
        except Busy:
            AUTH_ATTEMPTS.labels("busy").inc()
            return AuthResult(success=False, handled=False,
                              message="454 4.7.0 Temporary authentication failure, try again later")
        if ok:
            AUTH_ATTEMPTS.labels("ok").inc()
            throttle.succeeded(ip, user)
            return AuthResult(success=True, handled=False, auth_data=user)
        AUTH_ATTEMPTS.labels("failed").inc()
        SMTP_REJECTED.labels("auth_failed").inc()
        self._auth_failures += 1
        delay = throttle.failed(ip, user)
        log.info("authentication failed: client=%s user=%r delay=%.1fs", ip, user, delay)
        await asyncio.sleep(delay)
        return AuthResult(success=False, handled=False)

    # ---- strict command parsing ------------------------------------------------------------------
    # MAIL and RCPT are parsed here from the raw argument: aiosmtpd's parser silently turns
    # <a@x.com;b@y.com> into a@x.com, and costs ~70 us per command (email header parser).
    async def _path_command(self, arg: str | None, keyword: str, verb: str):
        """Common checks; returns (address, params dict) or None after replying."""
        if await self.check_helo_needed():
            return None
        if await self.check_auth_needed(verb):
            return None
        syntax = f"501 5.5.4 Syntax: {verb} {keyword}<address> [SP <parameters>]"
        if arg and utf8_error(arg):
            SMTP_REJECTED.labels("bad_utf8").inc()
            await self.push(f"501 5.5.2 Syntax error: invalid UTF-8 in {verb} {keyword.rstrip(':')}")
            return None
        path = self._raw_path(arg or "", keyword)
        if path is None:
            await self.push(syntax)
            return None
        addr, rest = path
        params: dict[str, str | bool] = {}
        for p in rest.split():
            k, eq, v = p.partition("=")
            if not k.isalnum() or (eq and not v):
                await self.push(syntax)
                return None
            params[k.upper()] = v if eq else True
        return addr, params

    async def smtp_MAIL(self, arg):
        self._cmd = ("MAIL", arg or "")
        parsed = await self._path_command(arg, "FROM:", "MAIL")
        if parsed is None:
            return
        addr, params = parsed
        assert self.envelope is not None
        if self.envelope.mail_from:
            await self.push("503 5.5.1 Error: nested MAIL command")
            return
        if addr != "":
            err = address_error(addr)
            if err:
                SMTP_REJECTED.labels("bad_address").inc()
                await self.push(f"501 5.1.7 Bad sender address syntax: {err}")
                return
        body = params.pop("BODY", "7BIT")
        if not isinstance(body, str) or body.upper() not in ("7BIT", "8BITMIME"):
            await self.push("501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME")
            return
        smtputf8 = params.pop("SMTPUTF8", False)
        if smtputf8 is not False and smtputf8 is not True:
            await self.push("501 5.5.4 Error: SMTPUTF8 takes no arguments")
            return
        size = params.pop("SIZE", None)
        if size is not None:
            if not isinstance(size, str) or not size.isdigit():
                await self.push("501 5.5.4 Syntax: SIZE=<octets>")
                return
            if int(size) > self.cfg.max_message_size:
                SMTP_REJECTED.labels("too_big").inc()
                await self.push("552 5.3.4 Message size exceeds fixed maximum message size")
                return
        params.pop("RET", None)
        params.pop("ENVID", None)
        if params:
            await self.push("555 5.5.4 MAIL FROM parameters not recognized or not implemented")
            return
        self.envelope.smtp_utf8 = bool(smtputf8)
        status = await self._call_handler_hook("MAIL", addr or "<>", [])
        await self.push(status)

    async def smtp_RCPT(self, arg):
        self._cmd = ("RCPT", arg or "")
        assert self.envelope is not None
        if self.session is not None and self.session.host_name and not self.envelope.mail_from:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        parsed = await self._path_command(arg, "TO:", "RCPT")
        if parsed is None:
            return
        addr, params = parsed
        err = address_error(addr)
        if err:
            SMTP_REJECTED.labels("bad_address").inc()
            await self.push(f"501 5.1.3 Bad recipient address syntax: {err}")
            return
        for k in ("NOTIFY", "ORCPT"):
            params.pop(k, None)
        if params:
            await self.push("555 5.5.4 RCPT TO parameters not recognized or not implemented")
            return
        status = await self._call_handler_hook("RCPT", addr, [])
        await self.push(status)

    @staticmethod
    def _raw_path(arg: str, keyword: str) -> tuple[str, str] | None:
        if arg[: len(keyword)].upper() != keyword:
            return None
        m = _PATH_RE.match(arg[len(keyword):])
        if not m:
            return None
        addr = m.group(1)
        if addr.startswith("@") and ":" in addr:     # strip an RFC 5321 source route
            addr = addr.split(":", 1)[1]
        return addr, m.group(2)

    # ---- DATA ------------------------------------------------------------------------------------
    async def smtp_DATA(self, arg: str) -> None:
        self._cmd = ("DATA", "")
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if self.cfg.reject_unauth_pipelining and self._reader._buffer:  # type: ignore[attr-defined]
            # the body (or anything) came before our 354: PIPELINING is not offered; reading on would take
            # the client's data for commands or its commands for data
            SMTP_REJECTED.labels("pipelining").inc()
            log.info("improper pipelining before 354: client=%s", self._peer_ip())
            await self.push("554 5.5.0 Error: SMTP protocol synchronization (data sent before 354)")
            self._close()
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self.state.in_data += 1
        # aiosmtpd sizes the reader's limit for command lines (1001 bytes), and asyncio pauses the socket
        # whenever twice that is buffered: during DATA that means a pause/resume every 2 KB. Lift it.
        line_limit = self._reader._limit  # type: ignore[attr-defined]
        self._reader._limit = DATA_READ_LIMIT  # type: ignore[attr-defined]
        try:
            result = await read_data(self._reader, self.cfg.max_message_size)
            if result.error == "eof":
                return
            if result.error == "too_big":
                SMTP_REJECTED.labels("too_big").inc()
                self._set_post_data_state()
                await self.push("552 5.3.4 Message size exceeds fixed maximum message size")
                return
            content, err = check_and_clean(result.content or b"", bare_lf=self.cfg.bare_lf,
                                           max_line=self.cfg.max_line_length, nul=self.cfg.nul)
            if err == "nul":
                SMTP_REJECTED.labels("nul").inc()
                self._set_post_data_state()
                await self.push("550 5.6.0 Message contains NUL characters")
                return
            if err == "bare_lf":
                SMTP_REJECTED.labels("bare_lf").inc()
                self._set_post_data_state()
                await self.push("550 5.6.11 Bare CR or LF received; use CRLF line endings")
                return
            if err == "line_too_long":
                SMTP_REJECTED.labels("line_too_long").inc()
                self._set_post_data_state()
                await self.push(f"500 5.5.2 Line too long (more than {self.cfg.max_line_length} octets)")
                return
            self.envelope.content = content
            self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()
            await self.push(status)
        finally:
            self._reader._limit = line_limit  # type: ignore[attr-defined]
            self.state.in_data -= 1
