"""AdminServer: the admin application on an aiohttp AppRunner + TCPSite inside relaybox's own loop, plus the
event-webhook dispatcher (both start and stop with the App)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from admin_api.app import make_app
from admin_api.config import AdminConfig
from relay.tls import server_context

log = logging.getLogger("admin_api")


class _MalformedRequests(logging.Filter):
    """aiohttp logs a malformed request (a NUL in a header, a bad request line) at ERROR with a traceback;
    anyone who can reach the port could fill the log that way. One warning line says enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "admin API: malformed HTTP request refused (400): %s"
            record.args = (exc.message[:200],)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


http_log = logging.getLogger("admin_api.http")
http_log.addFilter(_MalformedRequests())


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"admin.listen: expected host:port, got {listen!r}")
    return host.strip("[]"), int(port)


class AdminServer:
    def __init__(self, app: Any):
        self.app = app
        self.cfg: AdminConfig = app.settings.section("admin") or AdminConfig()
        self.runner: web.AppRunner | None = None
        self.bound: list[tuple[str, int]] = []
        self.webhooks: Any = None

    async def start(self) -> None:
        hooks, names = [], set()
        for h in self.app.settings.section("webhooks") or []:
            if h.name in names:   # one cursor per name: a second endpoint of the same name would steal events
                log.error("webhooks: duplicate endpoint name %r; only the first one is used", h.name)
                continue
            names.add(h.name)
            if h.enabled:
                hooks.append(h)
        if hooks:
            from admin_api.webhooks import Dispatcher

            cluster = getattr(self.app, "cluster", None)      # only the leader node dispatches
            self.webhooks = Dispatcher(self.app.store.outbox, hooks,
                                       leader=None if cluster is None else cluster.is_leader)
            await self.webhooks.start()
        if not self.cfg.enabled:
            return
        problem = self.cfg.listen_problem()
        if problem is not None:
            # `relaybox run` refuses such a config before starting (relaybox.checks); this guards the rest
            log.error("admin API not started: %s", problem)
            return
        host, port = split_listen(self.cfg.listen)
        ssl_ctx = server_context(self.cfg.tls_cert_file, self.cfg.tls_key_file) if self.cfg.tls else None
        self.runner = web.AppRunner(make_app(self.app, self.cfg), access_log=None, handle_signals=False,
                                    logger=http_log)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True, ssl_context=ssl_ctx)
        try:
            await site.start()
        except OSError as exc:
            # mail keeps flowing without the admin API: a busy admin port must not stop the relay
            log.error("admin API cannot listen on %s: %s; running without it", self.cfg.listen, exc.strerror)
            await self.runner.cleanup()
            self.runner = None
            return
        for s in getattr(site._server, "sockets", None) or []:  # noqa: SLF001 - the bound address
            self.bound.append(tuple(s.getsockname()[:2]))
        where = ", ".join(f"{h}:{p}" for h, p in self.bound) or self.cfg.listen
        log.info("admin API listening on %s (%s)", where, "HTTPS" if ssl_ctx else "plain HTTP")

    async def stop(self) -> None:
        if self.webhooks is not None:
            await self.webhooks.stop()
            self.webhooks = None
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
