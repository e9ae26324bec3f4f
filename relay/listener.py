"""SMTP intake: aiosmtpd in the shared loop, thin hooks, 250 only after the spool commit.

``RelaySMTP`` (an aiosmtpd ``SMTP`` subclass) adds what a production relay needs and aiosmtpd lacks:
raw-argument address validation (aiosmtpd turns ``<a@x.com;b@y.com>`` into ``a@x.com``), enhanced status
codes on our replies, session limits, a 421 on idle timeout and on shutdown, and the fast strict DATA
reader of ``relay.smtpdata``. ``IntakeHandler`` holds the policy decisions and the spool commit.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiosmtpd.smtp as _aiosmtpd_smtp
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, Session

from relay.config import SMTPConfig
from relay.db import StorageError
from relay.envelope import NewMessage, address_error
from relay.headers import HeaderError, prepare_message
from relay.metrics import SMTP_ACCEPTED, SMTP_REJECTED, SMTP_SESSIONS
from relay.policy import Policy
from relay.queue import Spool
from relay.smtpdata import check_and_clean, read_data

log = logging.getLogger("relay.listener")

DATA_READ_LIMIT = 512 * 1024
_PATH_RE = re.compile(r"^\s*<([^<>]*)>(.*)$", re.S)

_sanitized_log = _aiosmtpd_smtp.sanitized_log


def _quiet_sanitized_log(func, msg, *args, **kwargs):
    """aiosmtpd sanitizes the arguments of every per-command debug/info line before the logger decides to
    drop it (~7 us a command); skip that work when the level is disabled."""
    level = logging.DEBUG if getattr(func, "__name__", "") == "debug" else logging.INFO
    if _aiosmtpd_smtp.log.isEnabledFor(level):
        _sanitized_log(func, msg, *args, **kwargs)


_aiosmtpd_smtp.sanitized_log = _quiet_sanitized_log


class _CachedIntrospection:
    """aiosmtpd's SMTP.__init__ introspects the protocol object and the handler on every connection
    (``inspect.getmembers`` over all attributes, ``dir()`` twice, ``inspect.signature``): ~0.3 ms per
    connection, the biggest per-connection cost for clients that connect per message. The *names* it
    looks for (``auth_*``, ``handle_*``, ``smtp_*``) are class attributes, so we cache them per type and
    still bind every method to the new instance. Used only inside aiosmtpd.smtp's namespace."""

    def __init__(self):
        self._members: dict[type, list[str]] = {}
        self._dirs: dict[type, list[str]] = {}
        self._sigs: dict[Any, Any] = {}

    def getmembers(self, obj, predicate=None):
        names = self._members.get(type(obj))
        if names is None:
            names = self._members[type(obj)] = [n for n, _ in inspect.getmembers(obj) if n.startswith("auth_")]
        return [(n, getattr(obj, n)) for n in names]       # aiosmtpd only keeps the auth_* members

    def dir(self, obj):
        names = self._dirs.get(type(obj))
        if names is None:
            names = self._dirs[type(obj)] = [n for n in dir(obj) if n.startswith(("handle_", "smtp_"))]
        return names

    def signature(self, fn):
        key = getattr(fn, "__func__", fn)
        sig = self._sigs.get(key)
        if sig is None:
            sig = self._sigs[key] = inspect.signature(fn)
        return sig

    def __getattr__(self, name):
        return getattr(inspect, name)


_introspection = _CachedIntrospection()
_aiosmtpd_smtp.inspect = _introspection          # type: ignore[attr-defined]
_aiosmtpd_smtp.dir = _introspection.dir           # type: ignore[attr-defined] - shadows the builtin there only


@dataclass
class ListenerState:
    """Shared by all sessions of one process (limits, draining)."""

    sessions: int = 0
    per_ip: dict[str, int] = field(default_factory=dict)
    in_data: int = 0
    draining: bool = False
    disk_ok: Callable[[], bool] = lambda: True


@dataclass
class BounceIntake:
    """Mail for the VERP bounce domain: ``in_domain(addr)``, ``valid(addr)`` (a signed VERP address) and
    ``process(raw, rcpt)`` which parses and durably records the report (relay.bounce_handler)."""

    in_domain: Callable[[str], bool]
    valid: Callable[[str], bool]
    process: Callable[[bytes, str], Awaitable[Any]]


class IntakeHandler:
    """aiosmtpd handler hooks: policy at MAIL/RCPT, durable commit at DATA."""

    def __init__(self, cfg: SMTPConfig, spool: Spool, policy: Policy, state: ListenerState,
                 bounces: "BounceIntake | None" = None):
        self.cfg = cfg
        self.spool = spool
        self.policy = policy
        self.state = state
        self.bounces = bounces

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session error: %s: %s", type(error).__name__, error)
        return "451 4.3.0 Internal error, try again later"

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        out = [r for r in responses if r != "250 HELP"]
        out.append("250-ENHANCEDSTATUSCODES")
        out.append("250 HELP")
        return out

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if not self.state.disk_ok():
            SMTP_REJECTED.labels("disk_full").inc()
            return "452 4.3.1 Insufficient system storage"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if len(envelope.rcpt_tos) >= self.cfg.max_recipients:
            SMTP_REJECTED.labels("too_many_recipients").inc()
            return "452 4.5.3 Error: too many recipients"
        ip = session.peer[0] if session.peer else ""
        if self.bounces is not None and self.bounces.in_domain(address):
            # our bounce domain: anyone may send reports to valid VERP addresses; they are parsed, never relayed
            if not self.bounces.valid(address):
                SMTP_REJECTED.labels("bad_verp").inc()
                return "550 5.1.1 No such bounce address"
        elif not (session.authenticated or self.policy.ip_allowed(ip)):
            SMTP_REJECTED.labels("relay_denied").inc()
            log.info("relay denied: client=%s rcpt=%s", ip, address)
            return "550 5.7.1 Relay access denied"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        ip = session.peer[0] if session.peer else ""
        if self.bounces is not None:
            reports = [r for r in envelope.rcpt_tos if self.bounces.in_domain(r)]
            if reports:
                try:
                    for rcpt in reports:
                        await self.bounces.process(envelope.content, rcpt)
                except (StorageError, OSError) as exc:
                    SMTP_REJECTED.labels("storage").inc()
                    log.error("could not record a bounce report from %s: %s", ip, exc)
                    return "451 4.3.0 Error: could not record the report, try again later"
                envelope.rcpt_tos = [r for r in envelope.rcpt_tos if r not in reports]
                if not envelope.rcpt_tos:
                    return "250 2.0.0 Ok: report recorded"
        try:
            prepared = prepare_message(
                envelope.content, hostname=self.cfg.hostname, helo=session.host_name or "", client_ip=ip,
                tls=session.ssl is not None, auth=bool(session.authenticated),
                rcpts=envelope.rcpt_tos, queue_id=None)
        except HeaderError as exc:
            SMTP_REJECTED.labels("bad_header").inc()
            return f"550 5.6.0 {exc}"
        auth_user = None
        if session.authenticated and isinstance(session.auth_data, str):
            auth_user = session.auth_data
        msg = NewMessage(
            sender=envelope.mail_from if envelope.mail_from != "<>" else "",
            recipients=list(envelope.rcpt_tos), body=prepared.body, client_ip=ip,
            client_helo=session.host_name or "", auth_user=auth_user, send_at=prepared.send_at,
            from_header=prepared.from_header, subject=prepared.subject,
            message_id_header=prepared.message_id, queue_id=prepared.queue_id)
        try:
            qid = await self.spool.enqueue(msg)
        except (StorageError, OSError) as exc:
            SMTP_REJECTED.labels("storage").inc()
            log.error("could not store message from %s: %s", ip, exc)
            return "451 4.3.0 Error: queue file write error, try again later"
        SMTP_ACCEPTED.inc()
        log.info("accepted queue_id=%s client=%s sender=<%s> rcpts=%d size=%d", qid, ip, msg.sender,
                 len(msg.recipients), len(msg.body), extra={"queue_id": qid})
        return f"250 2.0.0 Ok: queued as {qid}"


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP with strict address parsing, limits, timeouts with 421, and a fast DATA reader."""

    def __init__(self, handler: IntakeHandler, cfg: SMTPConfig, state: ListenerState, *,
                 implicit_tls: bool = False, **kw: Any):
        self.cfg = cfg
        self.state = state
        self._counted_ip: str | None = None
        self._implicit_tls = implicit_tls
        # on an implicit-TLS listener the whole session is encrypted: AUTH needs no STARTTLS first
        super().__init__(handler, data_size_limit=cfg.max_message_size, enable_SMTPUTF8=True,
                         decode_data=False, hostname=cfg.hostname, ident="relaybox",
                         timeout=cfg.idle_timeout, auth_require_tls=cfg.require_tls_for_auth and not implicit_tls,
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
        handler: IntakeHandler = self.event_handler
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        ok = handler.policy.check_login(user, auth_data.password.decode("utf-8", "replace"))
        if not ok:
            SMTP_REJECTED.labels("auth_failed").inc()
            log.info("authentication failed: client=%s user=%s", session.peer[0] if session.peer else "?", user)
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


def _param(params: str, name: str) -> str | None:
    for p in params.split():
        k, _, v = p.partition("=")
        if k.upper() == name:
            return v
    return None


def make_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Listener:
    """Binds the configured addresses in the running loop and tracks sessions for a graceful drain."""

    def __init__(self, cfg: SMTPConfig, spool: Spool, policy: Policy, *, disk_ok: Callable[[], bool] | None = None,
                 bounces: BounceIntake | None = None):
        self.cfg = cfg
        self.state = ListenerState()
        if disk_ok is not None:
            self.state.disk_ok = disk_ok
        self.handler = IntakeHandler(cfg, spool, policy, self.state, bounces)
        self.tls_context = (make_tls_context(cfg.tls.cert_file, cfg.tls.key_file)
                            if cfg.tls.cert_file else None)
        self.servers: list[asyncio.base_events.Server] = []
        self.bound: list[tuple[str, int]] = []

    def _factory(self, implicit_tls: bool):
        def make():
            return RelaySMTP(self.handler, self.cfg, self.state, implicit_tls=implicit_tls,
                             tls_context=None if implicit_tls else self.tls_context)
        return make

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for addr, implicit in [(a, False) for a in self.cfg.listen] + \
                              [(a, True) for a in self.cfg.implicit_tls_listen]:
            host, port = split_hostport(addr)
            if implicit and self.tls_context is None:
                raise ValueError(f"smtp.implicit_tls_listen {addr}: needs smtp.tls.cert_file")
            srv = await loop.create_server(self._factory(implicit), host=host, port=port,
                                           ssl=self.tls_context if implicit else None, reuse_address=True)
            self.servers.append(srv)
            for sock in srv.sockets:
                self.bound.append(sock.getsockname()[:2])
        log.info("SMTP listening on %s", ", ".join(f"{h}:{p}" for h, p in self.bound))

    async def drain(self, timeout: float = 30.0) -> None:
        """Stop accepting (421 to new sessions), let sessions in DATA finish their commit."""
        self.state.draining = True          # new sessions get 421 4.3.2 while we drain
        deadline = time.monotonic() + timeout
        while self.state.in_data and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for srv in self.servers:
            srv.close()


def split_hostport(addr: str) -> tuple[str, int]:
    if addr.startswith("["):
        host, _, port = addr[1:].partition("]:")
    else:
        host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {addr!r}")
    return host, int(port)
