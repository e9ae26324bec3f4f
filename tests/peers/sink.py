"""An aiosmtpd receiver for tests: records what it receives and injects faults on request.

    sink = Sink()                                  # 127.0.0.1:<free port>, in the running loop
    await sink.start()
    sink.faults.rcpt["bob@x.test"] = "550 5.1.1 no such user"
    sink.faults.greylist = 300                     # first try of each (sender, rcpt): 451 ... in 300 seconds
    sink.faults.drop_at = "data"                   # close the connection instead of answering DATA
    ...
    sink.messages -> [Received(sender, rcpts, data, tls, auth_user)]
    await sink.stop()

Faults: ``greeting`` (a reply sent instead of the banner, then the connection is closed), ``mail``,
``rcpt`` (per address), ``data`` (reply strings like "451 4.3.0 later"), ``drop_at`` (mail | rcpt | data),
``greylist`` (seconds to name), ``data_delay`` (seconds before answering DATA). STARTTLS is offered with a
self-signed certificate when ``tls=True`` (``broken_tls=True``: offered, but the handshake always fails);
``implicit_tls=True`` wraps the listener in TLS; ``users`` enables AUTH PLAIN/LOGIN (``auth_require_tls``
as aiosmtpd).
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Callable

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from tests.peers.certs import make_cert
from tests.peers.ports import free_port


@dataclass
class Faults:
    greeting: str | None = None
    mail: str | None = None
    rcpt: dict[str, str] = field(default_factory=dict)
    data: str | None = None
    drop_at: str | None = None
    greylist: int | None = None
    data_delay: float = 0.0


@dataclass
class Received:
    sender: str
    rcpts: list[str]
    data: bytes
    tls: bool
    auth_user: str | None
    peer: str


class _Handler:
    def __init__(self, sink: "Sink"):
        self.sink = sink

    def _drop(self, server, stage: str) -> bool:
        if self.sink.faults.drop_at == stage:
            server.transport.close()
            return True
        return False

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.sink.commands.append(("MAIL", address, list(mail_options)))
        if self._drop(server, "mail"):
            return "421 4.4.2 dropped"
        if self.sink.faults.mail:
            return self.sink.faults.mail
        envelope.mail_from = address          # "<>" for the null sender (aiosmtpd needs it truthy)
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.sink.commands.append(("RCPT", address, list(rcpt_options)))
        if self._drop(server, "rcpt"):
            return "421 4.4.2 dropped"
        f = self.sink.faults
        if address in f.rcpt:
            return f.rcpt[address]
        if f.greylist is not None:
            key = (envelope.mail_from, address)
            if key not in self.sink.greylisted:
                self.sink.greylisted.add(key)
                return f"451 4.7.1 Greylisted, please try again in {f.greylist} seconds"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        f = self.sink.faults
        if f.data_delay:
            await asyncio.sleep(f.data_delay)
        if self._drop(server, "data"):
            return "421 4.4.2 dropped"
        if f.data:
            return f.data
        auth = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        sender = "" if envelope.mail_from == "<>" else envelope.mail_from
        self.sink.messages.append(Received(sender, list(envelope.rcpt_tos), bytes(envelope.content),
                                           session.ssl is not None or self.sink.implicit_tls, auth,
                                           str(session.peer)))
        self.sink.received.set()
        return "250 2.0.0 OK queued"


class _OAuthHandler(_Handler):
    """Also offers AUTH XOAUTH2 (the SASL format of Google and Microsoft), checked by
    ``sink.xoauth2(user, token)``."""

    async def auth_XOAUTH2(self, server, args):
        import base64

        self.sink.commands.append(("AUTH", "XOAUTH2"))
        try:
            fields = base64.b64decode(args[1], validate=True).decode().split("\x01")
            user = fields[0].removeprefix("user=")
            token = fields[1].removeprefix("auth=Bearer ")
        except (IndexError, ValueError):
            return AuthResult(success=False, handled=False, message="501 5.5.2 malformed XOAUTH2 response")
        assert self.sink.xoauth2 is not None
        if not self.sink.xoauth2(user, token):
            return AuthResult(success=False, handled=False,
                              message="535 5.7.3 Authentication unsuccessful (token invalid or expired)")
        return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))


class _CountingSMTP(SMTP):
    """aiosmtpd's SMTP that keeps the sink's count of open sessions (and the peak)."""

    def __init__(self, sink: "Sink", *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sink = sink

    def connection_made(self, transport):
        self._sink.active += 1
        self._sink.max_active = max(self._sink.max_active, self._sink.active)
        super().connection_made(transport)

    def connection_lost(self, exc):
        self._sink.active -= 1
        super().connection_lost(exc)


class _Refuser(asyncio.Protocol):
    def __init__(self, greeting: str):
        self.greeting = greeting

    def connection_made(self, transport):
        transport.write(self.greeting.encode() + b"\r\n")
        transport.close()


class Sink:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None, *, tls: bool = False,
                 implicit_tls: bool = False, users: dict[str, str] | None = None,
                 auth_require_tls: bool = True, hostname: str = "sink.test", broken_tls: bool = False,
                 xoauth2: Callable[[str, str], bool] | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.faults = Faults()
        self.messages: list[Received] = []
        self.commands: list[tuple] = []
        self.greylisted: set = set()
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self.received = asyncio.Event()
        self.users = users or {}
        self.xoauth2 = xoauth2                # also offer AUTH XOAUTH2, its (user, token) checked by this
        self.auth_require_tls = auth_require_tls
        self.hostname = hostname
        self._server: asyncio.base_events.Server | None = None
        self._tls_ctx: ssl.SSLContext | None = None
        if tls or implicit_tls:
            cert, key = make_cert(tempfile.mkdtemp(prefix="sink-tls-"), "localhost")
            self._tls_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls_ctx.load_cert_chain(cert, key)
            if broken_tls:     # offers STARTTLS, but no client of today can complete the handshake
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self._tls_ctx.minimum_version = ssl.TLSVersion.TLSv1
                    self._tls_ctx.maximum_version = ssl.TLSVersion.TLSv1
            self.cert_file = cert
        self.tls = tls
        self.implicit_tls = implicit_tls

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and self.users.get(auth_data.login.decode()) == \
            auth_data.password.decode()
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def _factory(self):
        self.connections += 1
        if self.faults.greeting:
            return _Refuser(self.faults.greeting)
        kwargs = dict(hostname=self.hostname, enable_SMTPUTF8=True, data_size_limit=50_000_000, timeout=30,
                      loop=asyncio.get_running_loop())
        if self.tls and not self.implicit_tls:
            kwargs["tls_context"] = self._tls_ctx
        if self.users or self.xoauth2:
            kwargs.update(authenticator=self._authenticate, auth_require_tls=self.auth_require_tls)
        handler = _OAuthHandler(self) if self.xoauth2 else _Handler(self)
        return _CountingSMTP(self, handler, **kwargs)

    async def start(self) -> "Sink":
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, self.host, self.port,
                                                ssl=self._tls_ctx if self.implicit_tls else None)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def recipients(self) -> list[str]:
        return [r for m in self.messages for r in m.rcpts]
