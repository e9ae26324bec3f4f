"""A real relaybox App in the test's loop with the admin API on free loopback ports, plus an HTTP client."""

from __future__ import annotations

import contextlib
import smtplib
from typing import Any

import aiohttp

from relaybox.app import App
from relaybox.settings import parse
from tests.peers.ports import free_port

TOKEN = "admin:full-access-token-0123456789"
RO_TOKEN = "grafana:read-only-token-0123456789"


def settings(tmp_path, **extra: Any):
    smtp_port, admin_port = free_port(), free_port()
    data = {
        "smtp": {"listen": [f"127.0.0.1:{smtp_port}"], "hostname": "relay.test",
                 "allowlist": ["127.0.0.1/32"]},
        "storage": {"path": str(tmp_path / "relaybox.db"), "min_free": 0.0},
        "admin": {"listen": f"127.0.0.1:{admin_port}", "tokens": [TOKEN], "readonly_tokens": [RO_TOKEN],
                  "max_body_size": 20000},
    }
    for k, v in extra.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and k in data else v
    return parse(data), smtp_port, admin_port


class Api:
    """aiohttp client bound to one admin server and token."""

    def __init__(self, base: str, token: str | None):
        self.base = base
        self.token = token.split(":", 1)[1] if token and ":" in token else token
        self.session = aiohttp.ClientSession()

    def _headers(self, token: str | None | bool = True) -> dict:
        tok = self.token if token is True else token
        return {"Authorization": f"Bearer {tok}"} if tok else {}

    async def call(self, method: str, path: str, *, json: Any = None, data: Any = None, token: Any = True,
                   params: dict | None = None, headers: dict | None = None):
        async with self.session.request(method, self.base + path, json=json, data=data, params=params,
                                        headers={**self._headers(token), **(headers or {})}) as r:
            body = await r.read()
            ctype = r.headers.get("Content-Type", "")
            if ctype.startswith("application/json"):
                import json as _json
                return r.status, _json.loads(body)
            return r.status, body

    async def close(self) -> None:
        await self.session.close()


@contextlib.asynccontextmanager
async def running(tmp_path, *, scheduler: bool = False, **extra: Any):
    """scheduler=False stops the delivery scheduler (when installed) so tests set recipient states through
    the spool themselves; scheduler=True keeps it delivering (configure a route to a sink)."""
    s, smtp_port, admin_port = settings(tmp_path, **extra)
    app = App(s)
    await app.start()
    if not scheduler and app.scheduler is not None:
        await app.scheduler.stop(timeout=5)
        app.scheduler = None
    api = Api(f"http://127.0.0.1:{admin_port}", TOKEN)
    app.smtp_port = smtp_port  # type: ignore[attr-defined]
    try:
        yield app, api
    finally:
        await api.close()
        await app.stop(timeout=5)


def smtp_send(port: int, sender: str, rcpts: list[str], subject: str = "hello", source: str = "127.0.0.1",
              body: str = "hi\r\n") -> tuple[int, bytes]:
    """Blocking: run in a thread (asyncio.to_thread) from async tests."""
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=10) as s:
        s.ehlo("client.test")
        code, msg = s.mail(sender)
        if code != 250:
            return code, msg
        for r in rcpts:
            code, msg = s.rcpt(r)
            if code != 250:
                return code, msg
        msg_bytes = (f"From: {sender}\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
                     f"Message-ID: <{subject.replace(' ', '.')}@test>\r\n\r\n{body}").encode()
        return s.data(msg_bytes)
