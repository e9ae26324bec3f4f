"""An OAuth2 authorisation server of the tests' own: a token endpoint (client-credentials and refresh-token
grants, the refresh token rotated on every use as Microsoft 365 does) and an RFC 7662 introspection
endpoint that Dovecot's ``passdb { driver = oauth2 }`` asks about each XOAUTH2 login.

It runs in its own thread and event loop, so a synchronous helper (imaplib, Dovecot's auth process) can
reach it while the test's loop is busy.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import threading

from aiohttp import web

from tests.peers.ports import free_port


class TokenServer(threading.Thread):
    def __init__(self, client_id: str, client_secret: str, username: str, refresh_token: str = ""):
        super().__init__(daemon=True)
        self.client_id, self.client_secret, self.username = client_id, client_secret, username
        self.refresh_token = refresh_token          # the one currently valid (rotated on use)
        self.port = free_port()
        self.active: set[str] = set()               # access tokens that introspect as active
        self.grants: list[str] = []                 # grant types asked for, in order
        self.introspections = 0
        self.errors: list[str] = []
        self._n = itertools.count(1)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def introspection_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/introspect"

    def revoke_all(self) -> None:
        self.active.clear()

    # ---- endpoints ---------------------------------------------------------------------------------
    def _error(self, status: int, error: str, description: str) -> web.Response:
        self.errors.append(f"{error}: {description}")
        return web.json_response({"error": error, "error_description": description}, status=status)

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = form.get("grant_type", "")
        self.grants.append(grant)
        # exact comparison on purpose: a stray space in a client id is an "invalid_client" at real providers
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return self._error(401, "invalid_client",
                               f"AADSTS700016: unknown client {form.get('client_id')!r}")
        body: dict = {"token_type": "Bearer", "expires_in": 3600}
        if grant == "refresh_token":
            if not self.refresh_token or form.get("refresh_token") != self.refresh_token:
                return self._error(400, "invalid_grant", "AADSTS70008: the refresh token has expired or was "
                                                         "already used")
            self.refresh_token = f"rt-{next(self._n)}-{secrets.token_hex(4)}"
            body["refresh_token"] = self.refresh_token
        elif grant != "client_credentials":
            return self._error(400, "unsupported_grant_type", grant)
        token = f"at-{next(self._n)}-{secrets.token_hex(8)}"
        self.active.add(token)
        body["access_token"] = token
        return web.json_response(body)

    async def introspect(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.introspections += 1
        token = form.get("token", "")
        if token in self.active:
            return web.json_response({"active": True, "username": self.username})
        return web.json_response({"active": False})

    # ---- thread --------------------------------------------------------------------------------------
    def run(self) -> None:
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/token", self.token)
        app.router.add_post("/introspect", self.introspect)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def begin(self) -> "TokenServer":
        self.start()
        if not self._ready.wait(10):
            raise RuntimeError("token server did not start")
        return self

    def close(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self.join(10)
