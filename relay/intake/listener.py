"""SMTP intake: the session hooks in the shared loop, 250 only after the spool commit.

``IntakeHandler`` holds the policy decisions (relay access, limits, the bounce domain) and the durable
enqueue; ``Listener`` binds the sockets and drains on shutdown. The protocol object itself, with its strict
parsing and fast DATA reader, is ``relay.intake.protocol.RelaySMTP``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from relay.config import SMTPConfig
from relay.envelope import NewMessage
from relay.intake.headers import HeaderError, prepare_message
from relay.intake.metrics import SMTP_ACCEPTED, SMTP_REJECTED
from relay.intake.policy import Policy
from relay.intake.protocol import ListenerState, RelaySMTP
from relay.intake.rejections import RejectionLog
from relay.maillog import mail_line
from relay.spool.spool import Spool
from relay.tls import server_context
from store.sqlite import StorageError

__all__ = ["BounceIntake", "IntakeHandler", "Listener", "ListenerState", "RelaySMTP", "split_hostport"]

log = logging.getLogger("relay.intake.listener")

@dataclass
class BounceIntake:
    """Mail for the VERP bounce domain: ``in_domain(addr)``, ``valid(addr)`` (a signed VERP address) and
    ``process(raw, rcpt)`` which parses and durably records the report (relay.bounces.record)."""

    in_domain: Callable[[str], bool]
    valid: Callable[[str], bool]
    process: Callable[[bytes, str], Awaitable[Any]]


class IntakeHandler:
    """The session's hooks: policy at MAIL/RCPT (synchronous), the durable commit at DATA."""

    def __init__(self, cfg: SMTPConfig, spool: Spool, policy: Policy, state: ListenerState,
                 bounces: "BounceIntake | None" = None):
        self.cfg = cfg
        self.spool = spool
        self.policy = policy
        self.state = state
        self.bounces = bounces

    def handle_MAIL(self, server, session, envelope, address, mail_options):
        if not self.state.disk_ok():
            SMTP_REJECTED.labels("disk_full").inc()
            return "452 4.3.1 Insufficient system storage"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if len(envelope.rcpt_tos) >= self.cfg.max_recipients:
            SMTP_REJECTED.labels("too_many_recipients").inc()
            return "452 4.5.3 Error: too many recipients"
        ip = session.peer[0] if session.peer else ""
        if self.bounces is not None and self.bounces.in_domain(address):
            # our bounce domain: anyone may send reports to valid VERP addresses; parsed, never relayed
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
                rcpts=envelope.rcpt_tos, queue_id=None, framed=getattr(envelope, "framed", False))
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
            message_id_header=prepared.message_id, queue_id=prepared.queue_id, route_hint=prepared.route,
            framed=prepared.framed)
        try:
            qid = await self.spool.enqueue(msg)
        except (StorageError, OSError) as exc:
            SMTP_REJECTED.labels("storage").inc()
            log.error("could not store message from %s: %s", ip, exc)
            return "451 4.3.0 Error: queue file write error, try again later"
        SMTP_ACCEPTED.inc()
        mail_line(log, f"accepted queue_id={qid} client={ip} sender=<{msg.sender}>"
                       f" rcpts={len(msg.recipients)} size={len(msg.body)}", qid)
        return f"250 2.0.0 Ok: queued as {qid}"


class Listener:
    """Binds the configured addresses in the running loop and tracks sessions for a graceful drain."""

    def __init__(self, cfg: SMTPConfig, spool: Spool, policy: Policy, *,
                 disk_ok: Callable[[], bool] | None = None, bounces: BounceIntake | None = None,
                 reuse_port: bool = False):
        self.cfg = cfg
        self.reuse_port = reuse_port    # worker processes share the ports (SO_REUSEPORT, relaybox.workers)
        self.state = ListenerState()
        self.state.auth(cfg)          # the AUTH thread pool and failure throttle, shared by all sessions
        if disk_ok is not None:
            self.state.disk_ok = disk_ok
        self.handler = IntakeHandler(cfg, spool, policy, self.state, bounces)
        store_rejections = getattr(getattr(spool, "store", None), "rejections", None)
        if cfg.rejection_log and store_rejections is not None:    # refusals logged, written in batches
            self.state.rejections = RejectionLog(store_rejections, cfg)
        self.tls_context = (server_context(cfg.tls.cert_file, cfg.tls.key_file)
                            if cfg.tls.cert_file else None)
        self.servers: list[asyncio.base_events.Server] = []
        self.bound: list[tuple[str, int]] = []

    def _factory(self, implicit_tls: bool, loop: asyncio.AbstractEventLoop):
        def make():
            return RelaySMTP(self.handler, self.cfg, self.state, implicit_tls=implicit_tls,
                             tls_context=None if implicit_tls else self.tls_context, loop=loop)
        return make

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.state.rejections is not None:
            await self.state.rejections.start()
        for addr, implicit in [(a, False) for a in self.cfg.listen] + \
                              [(a, True) for a in self.cfg.implicit_tls_listen]:
            host, port = split_hostport(addr)
            if implicit and self.tls_context is None:
                raise ValueError(f"smtp.implicit_tls_listen {addr}: needs smtp.tls.cert_file")
            srv = await loop.create_server(self._factory(implicit, loop), host=host, port=port,
                                           ssl=self.tls_context if implicit else None, reuse_address=True,
                                           reuse_port=self.reuse_port or None)
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
        if self.state.hasher is not None:
            self.state.hasher.close()
        if self.state.rejections is not None:
            await self.state.rejections.stop()        # the last refusals are written


def split_hostport(addr: str) -> tuple[str, int]:
    if addr.startswith("["):
        host, _, port = addr[1:].partition("]:")
    else:
        host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {addr!r}")
    return host, int(port)
