"""Smarthost routes: which next hop a message takes, chosen by its From address or domain.

An organisation relaying through Microsoft 365, Gmail or its ISP lists routes in the config
(``[[routes]]``: host, port, TLS mode, verification, AUTH user/password, ``from_addresses``,
``from_domains``, ``default``). Selection, first match wins:

1. a route listing the message's From address exactly (case-insensitive);
2. a route listing the From domain (or a parent domain of it);
3. the route marked ``default = true``;
4. none: direct delivery to the recipient domain's MX.

The From address is the header's (what contact-centre suites key on), else the envelope sender.
``smtp_test(route, helo)`` is the admins' "SMTP test" of one route (CLI and admin API).
"""

from __future__ import annotations

import asyncio
import re
from email.utils import getaddresses
from typing import Any, Mapping

from relay.config import RouteConfig
from store.records import Message


class RouteError(ValueError):
    """An inconsistent set of routes (duplicate names, two defaults)."""


_SIMPLE_FROM = re.compile(r'^\s*(?:[^<>",;@]*<)?\s*([^\s<>",;@()]+@[^\s<>",;@()]+)\s*>?\s*$')


def from_address(message: Message | Mapping[str, Any]) -> str:
    """The From header's (first) address, lower-cased; else the envelope sender."""
    header = str(message.get("from_header") or "")
    if header:
        m = _SIMPLE_FROM.match(header)          # "Name <a@b>" / "a@b": no full RFC 5322 parse needed
        if m:
            return m.group(1).lower()
        addrs = [a for _, a in getaddresses([" ".join(header.split())]) if "@" in a]
        if addrs:
            return addrs[0].lower()
    return (message.get("sender") or "").lower()


class Router:
    def __init__(self, routes: list[RouteConfig]):
        names = [r.name for r in routes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise RouteError(f"routes: duplicate route names: {', '.join(dupes)}")
        defaults = [r.name for r in routes if r.default]
        if len(defaults) > 1:
            raise RouteError(f"routes: more than one default route: {', '.join(defaults)}")
        self.routes = list(routes)
        self.by_name = {r.name: r for r in routes}
        self._by_address: dict[str, RouteConfig] = {}
        self._by_domain: dict[str, RouteConfig] = {}
        for r in routes:
            for a in r.from_addresses:
                self._by_address.setdefault(a.strip().lower(), r)
            for d in r.from_domains:
                self._by_domain.setdefault(d.strip().lstrip("@").rstrip(".").lower(), r)
        self.default = next((r for r in routes if r.default), None)

    def route_for(self, message: Message | Mapping[str, Any]) -> RouteConfig | None:
        """The route for this message, or None for direct MX delivery."""
        if not self._by_address and not self._by_domain:
            return self.default
        addr = from_address(message)
        if addr in self._by_address:
            return self._by_address[addr]
        domain = addr.rpartition("@")[2]
        while domain:
            if domain in self._by_domain:
                return self._by_domain[domain]
            domain = domain.partition(".")[2]
        return self.default

    def get(self, name: str) -> RouteConfig | None:
        return self.by_name.get(name)


async def smtp_test(route: RouteConfig, helo: str,
                    timeout: float = 30.0) -> tuple[bool, str, list[dict[str, Any]]]:
    """The admins' "SMTP test": connect, EHLO, STARTTLS/implicit TLS and AUTH as the route says, QUIT.

    Returns (ok, summary, transcript); the summary is "OK: ..." or the server's exact reply
    ("535 5.7.8 Authentication credentials invalid"). Credentials never appear in either.
    Used by ``relaybox routes test NAME`` and the admin API.
    """
    from relay.delivery.transport import Candidate, TLSPolicy, open_session
    from relay.errors import DeliveryError, from_exception

    transcript: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(route.host, route.port)
    except OSError as exc:
        return False, f"cannot resolve {route.host}: {exc}", transcript
    ips = list(dict.fromkeys(str(i[4][0]) for i in infos))
    cands = [Candidate(route.host, ip, route.port) for ip in ips[:2]]
    try:
        policy = TLSPolicy(route.tls, route.tls_verify, route.allow_plaintext_auth)
        session = await open_session(cands, helo=helo, tls=policy,
                                     username=route.username, password=route.password,
                                     connect_timeout=timeout, command_timeout=timeout, transcript=transcript)
    except DeliveryError as exc:
        return False, f"{exc.code} {exc.enhanced} {exc.text}", transcript
    except Exception as exc:  # noqa: BLE001 - report anything as a reply-shaped line
        err = from_exception(exc)
        return False, f"{err.code} {err.enhanced} {err.text}", transcript
    tls = "TLS" if session.tls else "no TLS"
    auth = ", authenticated" if route.username else ""
    ip = session.candidate.ip
    await session.close()
    return True, f"OK: {route.host}:{route.port} [{ip}] accepted EHLO ({tls}{auth})", transcript
