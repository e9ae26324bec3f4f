"""Smarthost routes: which next hop a message takes.

Routes live in the store (``store.routes``): seeded from the config (``[[routes]]``, at start and SIGHUP)
and created, edited or removed by the admin API and ``relaybox routes``; ``relay.delivery.route_book``
keeps the delivery engine's ``Router`` in step with them. Selection, first match wins:

1. the route the message names in ``X-Relaybox-Route: <name>`` (removed at intake; an unknown name is
   ignored and logged);
2. the submitting identity: a route listing the message's SMTP AUTH user (``auth_users``), then a route
   listing a network holding the client's address (``client_networks``: the allow-list entries an app
   submits from);
3. a route listing the message's From address exactly (case-insensitive);
4. a route listing the From domain (or a parent domain of it);
5. the route marked ``default = true``;
6. none: direct delivery to the recipient domain's MX.

The From address is the header's (what contact-centre suites key on), else the envelope sender.
``smtp_test(route, helo)`` opens a session only (connect, EHLO, STARTTLS, AUTH); the admins' full test
with MAIL/RCPT is ``relay.delivery.route_check.check_route``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from dataclasses import asdict, fields
from email.utils import getaddresses
from typing import Any, Mapping

from relay.config import RouteConfig
from store.records import Message

log = logging.getLogger("relay.delivery.routes")

# the settings a route stores (store.routes keeps them as a JSON document)
ROUTE_FIELDS = tuple(f.name for f in fields(RouteConfig))
LIST_FIELDS = ("from_addresses", "from_domains", "auth_users", "client_networks")


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


def route_settings(route: RouteConfig) -> dict[str, Any]:
    """A route as the settings document ``store.routes`` keeps (the password included: the store
    encrypts it)."""
    return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in asdict(route).items()}


def route_from_settings(settings: Mapping[str, Any]) -> RouteConfig:
    """The RouteConfig of a stored settings document (unknown keys ignored). Raises ValueError."""
    kw = {k: settings[k] for k in ROUTE_FIELDS if k in settings and settings[k] is not None}
    for k in LIST_FIELDS:
        if k in kw:
            kw[k] = list(kw[k])
    return RouteConfig(**kw)


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def _prefix(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, plen: int) -> int:
    return int(addr) >> (addr.max_prefixlen - plen)


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
        self._by_user: dict[str, RouteConfig] = {}
        # client networks by (IP version, prefix length) -> {network as an int: route}; the longest first
        self._networks: dict[tuple[int, int], dict[int, RouteConfig]] = {}
        self._by_client: dict[str, RouteConfig | None] = {}     # a few submitting clients: cached
        for r in routes:
            for a in r.from_addresses:
                self._by_address.setdefault(a.strip().lower(), r)
            for d in r.from_domains:
                self._by_domain.setdefault(d.strip().lstrip("@").rstrip(".").lower(), r)
            for u in r.auth_users:
                self._by_user.setdefault(u.strip(), r)
            for n in r.client_networks:
                net = _network(n)
                if net is not None:
                    key = (net.version, net.prefixlen)
                    self._networks.setdefault(key, {}).setdefault(_prefix(net.network_address, net.prefixlen),
                                                                  r)
        self._prefixes = sorted(self._networks, key=lambda k: -k[1])    # the most specific network first
        self.default = next((r for r in routes if r.default), None)

    def route_for(self, message: Message | Mapping[str, Any]) -> RouteConfig | None:
        """The route for this message, or None for direct MX delivery."""
        hint = message.get("route_hint")
        if hint:
            named = self.by_name.get(str(hint).strip().lower())
            if named is not None:
                return named
            log.warning("message %s names route %r (X-Relaybox-Route), which does not exist: ignored",
                        message.get("id"), hint)
        by_identity = self._by_identity(message)
        if by_identity is not None:
            return by_identity
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

    def _by_identity(self, message: Message | Mapping[str, Any]) -> RouteConfig | None:
        user = message.get("auth_user")
        if user and user in self._by_user:
            return self._by_user[user]
        ip = message.get("client_ip")
        if not ip or not self._networks:
            return None
        ip = str(ip)
        if ip in self._by_client:
            return self._by_client[ip]
        found = None
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            pass
        else:
            for version, plen in self._prefixes:
                if version == addr.version:
                    found = self._networks[(version, plen)].get(_prefix(addr, plen))
                    if found is not None:
                        break
        if len(self._by_client) >= 4096:
            self._by_client.clear()
        self._by_client[ip] = found
        return found

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
