"""The SMTP protocol object: aiosmtpd's ``SMTP`` with what a production relay needs and aiosmtpd lacks.

Raw-argument MAIL/RCPT parsing (aiosmtpd turns ``<a@x.com;b@y.com>`` into ``a@x.com``), enhanced status
codes on our replies, session limits, a 421 on idle timeout and while draining, and the fast strict DATA
reader of ``relay.intake.data``. Policy decisions and the spool commit are the handler's
(``relay.intake.listener.IntakeHandler``); this module only speaks the protocol.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, Session

from relay.config import SMTPConfig
from relay.envelope import address_error
from relay.intake import aiosmtpd_seam
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


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP with strict address parsing, limits, timeouts with 421, and a fast DATA reader."""

    def __init__(self, handler: Any, cfg: SMTPConfig, state: ListenerState, *,
                 implicit_tls: bool = False, **kw: Any):
        aiosmtpd_seam.install()
        self.cfg = cfg
        self.state = state
        self._counted_ip: str | None = None
        self._implicit_tls = implicit_tls
        # on an implicit-TLS listener the whole session is encrypted: AUTH needs no STARTTLS first
        super().__init__(handler, data_size_limit=cfg.max_message_size, enable_SMTPUTF8=True,
                         decode_data=False, hostname=cfg.hostname, ident="relaybox",
                         timeout=cfg.idle_timeout,
                         auth_require_tls=cfg.require_tls_for_auth and not implicit_tls,
                         auth_required=False, authenticator=self._check_credentials,
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

    async def _refuse(self, line: str) -> None:
        try:
            await self.push(line)
        finally:
            if self.transport is not None:
                self.transport.close()

    def _timeout_cb(self):
        if self.transport is not None:
            try:
                self._writer.write(b"421 4.4.2 " + self.hostname.encode() + b" Error: timeout exceeded\r\n")
            except Exception:  # noqa: BLE001 - the connection is going away anyway
                pass
        super()._timeout_cb()

    def _create_session(self) -> Session:
        return Session(self.loop)

    # ---- AUTH ------------------------------------------------------------------------------------
    def _check_credentials(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        handler = self.event_handler
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        ok = handler.policy.check_login(user, auth_data.password.decode("utf-8", "replace"))
        if not ok:
            SMTP_REJECTED.labels("auth_failed").inc()
            log.info("authentication failed: client=%s user=%s", session.peer[0] if session.peer else "?",
                     user)
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

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
                                           max_line=self.cfg.max_line_length)
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
