"""One delivery attempt: the recipients of one message for one destination, in one SMTP transaction.

    delivery = Delivery(relay_config)                   # resolver, DKIM keys, routes, connection pool
    route = delivery.route_for(message)                 # a smarthost RouteConfig, or None for MX
    key = delivery.destination_key(route, recipient)    # "route:<name>" or "mx:<domain>" (for grouping)
    outcome = await delivery.deliver(message, recipients, body, route)
    outcome.results   -> {recipient_id: DeliveryError | None}   (None = delivered)
    outcome.replies   -> {recipient_id: (code, enhanced, text)} for delivered ones
    outcome.attempt   -> the AttemptLog (host, ip, tls, route, transcript) for Spool.complete

Steps: route (smarthost by From) or MX lookup -> DKIM signature prepended (headers only) -> a pooled or
new SMTP session -> per-recipient results. A reused connection that turns out to be dead before anything
was accepted is replaced by a fresh one once (servers close idle connections).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import aiohttp

from relay import oauth2
from relay.bounces import verp
from relay.config import RelayConfig, RouteConfig
from relay.delivery.dkim import DKIMError, Signer
from relay.delivery.mx import MXResolver
from relay.delivery.routes import Router
from relay.delivery.transport import Candidate, ConnectionPool, Session, TLSPolicy, Transaction, open_session
from relay.envelope import domain_of
from relay.errors import ConnectError, DeliveryError, DNSError, from_exception, split_enhanced
from relay.tracking.prepare import Tracker
from store.records import AttemptLog, Message, Recipient

log = logging.getLogger("relay.delivery.attempt")

MAX_ADDRESSES_PER_HOST = 2


def config_problems(config: RelayConfig) -> list[str]:
    """What would stop the delivery engine from starting (for ``check-config`` and start-up): DKIM keys that
    cannot be loaded, inconsistent routes. Empty when fine."""
    from relay.delivery.routes import RouteError

    problems = []
    try:
        Signer.from_config(config.dkim)
    except DKIMError as exc:
        problems.append(str(exc))
    try:
        Router(config.routes)
    except RouteError as exc:
        problems.append(str(exc))
    try:
        Tracker(config.tracking)
    except ValueError as exc:
        problems.append(str(exc))
    return problems


@dataclass
class Outcome:
    results: dict[int, DeliveryError | None]
    replies: dict[int, tuple[int, str, str]] = field(default_factory=dict)
    attempt: AttemptLog | None = None
    route: str = "mx"
    # the open connection that carried the transaction: handed back with ``Delivery.finished`` once the
    # results are durable, so it never starts another transaction before this one is recorded
    session: Session | None = None
    # a server greeted (the session opened): the destination is reachable, whatever the results
    connected: bool = False


_UNSET: Any = object()   # deliver(): "compute the route" (None is a real answer: no route, MX)


def _log(message: Message, recipients: list[Recipient], started: float, label: str, result: str,
         transcript: list[dict[str, Any]], tx: Transaction | None = None,
         err: DeliveryError | None = None) -> AttemptLog:
    """The attempt record; without a transaction (the session never opened) the host and address are those
    of the last server tried, when there was one (not for a DNS failure)."""
    host, ip = (tx.host, tx.ip) if tx else ((err.host, err.ip) if err is not None else (None, None))
    return AttemptLog(message_id=message.id, started_at=started, ended_at=time.time(), result=result,
                      route=label, host=host, ip=ip, tls=tx.tls if tx else None,
                      recipients=tuple(r.id for r in recipients), transcript=tuple(transcript))


class _MemoryRefreshTokens:
    """Rotated refresh tokens kept in memory only (a Delivery built without the store's)."""

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}

    async def oauth_refresh(self, name: str) -> str | None:
        return self._tokens.get(name)

    async def set_oauth_refresh(self, name: str, token: str) -> None:
        self._tokens[name] = token


class _RouteToken:
    """A route's XOAUTH2 access token (``transport.TokenProvider``) from its grant, over ``relay.oauth2``."""

    def __init__(self, delivery: "Delivery", route: RouteConfig):
        self.delivery = delivery
        self.grant = oauth2.Grant(owner=f"route:{route.name}", token_url=route.oauth2_token_url,
                                  client_id=route.oauth2_client_id, client_secret=route.oauth2_client_secret,
                                  scope=route.oauth2_scope, refresh_token=route.oauth2_refresh_token)

    async def token(self) -> str:
        return await oauth2.access_token(self.delivery.refresh_tokens, self.delivery.http(), self.grant)

    def forget(self) -> None:
        oauth2.forget(self.grant)


class _Signed(NamedTuple):
    """One attempt's message: ``prefix`` (DKIM-Signature, or b"") goes in front of ``body`` on the wire."""
    body: bytes
    prefix: bytes
    framed: bool


class Delivery:
    def __init__(self, config: RelayConfig, *, resolver: MXResolver | None = None,
                 signer: Signer | None = None, pool: ConnectionPool | None = None,
                 refresh_tokens: oauth2.RefreshTokens | None = None):
        self.reconfigure(config, resolver=resolver, signer=signer)
        d = config.delivery
        self.pool = pool or ConnectionPool(d.messages_per_connection, d.idle_reuse)
        # where a route's rotated OAuth2 refresh token is kept (the store's, encrypted, in the relay)
        self.refresh_tokens: oauth2.RefreshTokens = refresh_tokens or _MemoryRefreshTokens()
        self._http: aiohttp.ClientSession | None = None

    def http(self) -> aiohttp.ClientSession:
        """The HTTP client of OAuth2 token requests, made at first use (most relays never need one)."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    def reconfigure(self, config: RelayConfig, *, resolver: MXResolver | None = None,
                    signer: Signer | None = None) -> None:
        """(Re)load routes, DKIM keys and resolver settings; raises on a bad key or route set."""
        self.config = config
        d = config.delivery
        self.helo = d.helo_name or config.smtp.hostname
        self.router = Router(config.routes)
        self.resolver = resolver or MXResolver.from_config(d)
        self.signer = signer if signer is not None else Signer.from_config(config.dkim)
        self.verp = config.bounces if config.bounces.domain else None
        self.verp_keys = verp.load_secrets(self.verp) if self.verp else []
        self.tracker = Tracker(config.tracking)      # X-Relaybox-Track stripped; tracked HTML per recipient

    # ---- where ---------------------------------------------------------------------------------------
    def route_for(self, message: Message) -> RouteConfig | None:
        """The message's smarthost route, or None when it goes to the recipients' MX hosts."""
        return self.router.route_for(message)

    @staticmethod
    def destination_key(route: RouteConfig | None, recipient: Recipient) -> str:
        if route is not None:
            return f"route:{route.name}"
        return f"mx:{recipient.domain or domain_of(recipient.address)}"

    def concurrency_for(self, key: str) -> int:
        name = key.split(":", 1)[1]
        return self.config.delivery.per_domain.get(name, self.config.delivery.per_destination)

    async def candidates(self, domain: str, transcript: list[dict[str, Any]]) -> list[Candidate]:
        """MX hosts of ``domain`` as connectable candidates. Raises DNSError."""
        port = self.config.delivery.mx_port
        hosts = await self.resolver.lookup(domain)
        out: list[Candidate] = []
        last: DNSError | None = None
        for h in hosts:
            addrs = h.addresses
            if not addrs:
                try:
                    addrs = await self.resolver.resolve_host(h.name)
                except DNSError as exc:
                    transcript.append({"at": round(time.time(), 3), "dir": "C",
                                       "line": f"skip MX {h.name}: {exc.text}"})
                    last = exc
                    continue
            out.extend(Candidate(h.name, a, port) for a in addrs[:MAX_ADDRESSES_PER_HOST])
        if not out:
            if last is not None:
                raise DNSError(451, "4.4.4", f"no MX host of {domain} resolves: {last.text}", True,
                               stage="dns")
            raise DNSError(451, "4.4.4", f"no usable MX host for {domain}", True, stage="dns")
        return out

    # ---- the attempt ---------------------------------------------------------------------------------
    def sign(self, body: bytes) -> bytes:
        sig = self.signature(body)
        return sig + body if sig else body

    def signature(self, body: bytes) -> bytes:
        """The DKIM-Signature field to put in front of ``body``; b"" when not signing it."""
        if self.signer is None:
            return b""
        try:
            return self.signer.sign(body) or b""
        except (DKIMError, ValueError) as exc:       # never block mail on a signing problem
            log.warning("DKIM signing failed, sending unsigned: %s", exc)
            return b""

    async def deliver(self, message: Message, recipients: list[Recipient], body: bytes,
                      route: RouteConfig | None = _UNSET, *, framed: bool = False) -> Outcome:
        """One attempt for ``recipients`` of ``message``. ``framed``: intake found ``body`` needing no
        line-end repair or dot-stuffing (a hand-off, ``Scheduler.take``); it goes on the wire as it is."""
        started = time.time()
        if route is _UNSET:
            route = self.route_for(message)
        key = self.destination_key(route, recipients[0])
        label = route.name if route else "mx"
        transcript: list[dict[str, Any]] = []
        try:
            session = await self._session(key, route, recipients[0].domain, transcript)
        except Exception as exc:  # noqa: BLE001 - classify DNS/connection/auth trouble
            err = from_exception(exc, "connect")
            if err.stage == "dns":           # nothing was said on the wire: the transcript names the lookup
                transcript.append({"at": round(time.time(), 3), "dir": "C",
                                   "line": f"DNS {label if route else 'MX ' + recipients[0].domain}: "
                                           f"{err.code} {err.enhanced} {err.text}"})
            return Outcome({r.id: err for r in recipients},
                           attempt=_log(message, recipients, started, label, err.status,
                                        transcript, err=err), route=label)
        prepared = self.tracker.prepare(message, body, route)    # before DKIM: the pixel is signed too
        personalize = prepared.personalize
        signed = _Signed(prepared.body, self.signature(prepared.body) if personalize is None else b"",
                         framed and prepared.body is body)
        try:
            tx = await self._send(session, message, recipients, signed, personalize)
        except asyncio.CancelledError:      # shutdown mid-transaction: drop the connection, not the mail
            session.smtp.close()
            raise
        if tx.reused and session.broken and all(e is not None and e.temporary for e in tx.results.values()):
            # the idle connection died under us: one fresh connection
            await session.close()
            transcript.append({"at": round(time.time(), 3), "dir": "C",
                               "line": "reused connection was closed by the server; reconnecting"})
            try:
                session = await self._session(key, route, recipients[0].domain, transcript, fresh=True)
                tx = await self._send(session, message, recipients, signed, personalize)
            except Exception as exc:  # noqa: BLE001
                err = from_exception(exc, "connect")
                return Outcome({r.id: err for r in recipients},
                               attempt=_log(message, recipients, started, label, err.status, transcript,
                                            err=err), route=label)
        results = {r.id: tx.results.get(r.address) for r in recipients}
        replies = {}
        if tx.reply:
            enh, text = split_enhanced(tx.reply[1])
            replies = {rid: (tx.reply[0], enh or "2.0.0", text) for rid, e in results.items() if e is None}
        statuses = {("delivered" if e is None else e.status) for e in results.values()}
        opening = {id(e) for e in session.opening}
        pre = [e for e in transcript if id(e) not in opening]
        if tx.reused:
            pre.append({"at": round(tx.started_at, 3), "dir": "C",
                        "line": f"reusing connection to {tx.host} [{tx.ip}] (greeting and EHLO below)"})
        result = statuses.pop() if len(statuses) == 1 else "mixed"
        return Outcome(results, replies, _log(message, recipients, started, label, result,
                                              pre + tx.transcript, tx),
                       label, session, connected=True)

    async def finished(self, key: str, outcome: Outcome, *, recorded: bool) -> None:
        """The transaction's results are durable (``recorded``): its connection may carry the next one.
        Otherwise (the commit failed, shutdown) the connection is closed: never reused with a result
        pending."""
        session, outcome.session = outcome.session, None
        if session is None:
            return
        if recorded:
            await self.pool.give_back(key, session)
        else:
            session.smtp.close()

    async def _send(self, session: Session, message: Message, recipients: list[Recipient],
                    body: "_Signed", personalize: Callable[[Recipient], bytes] | None = None) -> Transaction:
        """One transaction, or with VERP (``bounces.domain`` set, sender not <>) one per recipient on the
        same connection, each with its own return path ``<local>+<token>@<domain>``; also one per recipient
        for tracked mail (``personalize``: that recipient's body, signed here)."""
        sender = message.sender
        if (not self.verp or not sender) and personalize is None:
            return await session.send(sender, [r.address for r in recipients], body.body, prefix=body.prefix,
                                      framed=body.framed)
        merged: Transaction | None = None
        for r in recipients:
            rp = sender if not self.verp or not sender else verp.encode(
                message.id, r.id, secret=self.verp_keys[0], domain=self.verp.domain, local=self.verp.local)
            if personalize is None:
                tx = await session.send(rp, [r.address], body.body, prefix=body.prefix, framed=body.framed)
            else:
                tx = await session.send(rp, [r.address], self.sign(personalize(r)))
            if merged is None:
                merged = tx
            else:
                merged.results.update(tx.results)
                merged.transcript.extend(e for e in tx.transcript if e not in session.opening)
                merged.reply = merged.reply or tx.reply
                merged.ended_at = tx.ended_at
            if not session.is_open:
                rest = [x.address for x in recipients if x.address not in merged.results]
                err = tx.results[r.address] or ConnectError(421, "4.4.2", "connection closed", True)
                for a in rest:
                    merged.results[a] = err
                break
        assert merged is not None
        return merged

    async def _session(self, key: str, route: RouteConfig | None, domain: str, transcript: list[dict[str,
                                                                                                     Any]],
                       fresh: bool = False) -> Session:
        if not fresh:
            session = self.pool.take(key)
            if session is not None:
                return session
        d = self.config.delivery
        if route is not None:
            ips = await self._route_addresses(route)
            cands = [Candidate(route.host, ip, route.port) for ip in ips[:MAX_ADDRESSES_PER_HOST]]
            tls = TLSPolicy(route.tls, route.tls_verify, route.allow_plaintext_auth)
            return await open_session(cands, helo=self.helo, tls=tls, username=route.username,
                                      password=route.password, connect_timeout=d.connect_timeout,
                                      command_timeout=d.command_timeout, transcript=transcript,
                                      oauth=_RouteToken(self, route) if route.oauth2_token_url else None)
        cands = await self.candidates(domain, transcript)
        return await open_session(cands, helo=self.helo, tls=TLSPolicy("opportunistic", d.mx_tls_verify),
                                  connect_timeout=d.connect_timeout, command_timeout=d.command_timeout,
                                  transcript=transcript)

    async def _route_addresses(self, route: RouteConfig) -> list[str]:
        """A smarthost's addresses via the system resolver (so /etc/hosts names like localhost work)."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(route.host, route.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise DNSError(451, "4.4.3", f"route {route.name}: cannot resolve {route.host}: {exc}", True,
                           stage="dns") from exc
        ips: list[str] = []
        for info in infos:
            ip = str(info[4][0])
            if ip not in ips:
                ips.append(ip)
        if not ips:
            raise DNSError(451, "4.4.4", f"route {route.name}: {route.host} has no address", True)
        return ips

    async def close(self) -> None:
        await self.pool.close_all()
        if self._http is not None:
            await self._http.close()
