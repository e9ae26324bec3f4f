"""Smarthost routes: which next hop a message takes, chosen by its From address or domain.

An organisation relaying through Microsoft 365, Gmail or its ISP lists routes in the config
(``[[routes]]``: host, port, TLS mode, verification, AUTH user/password, ``from_addresses``,
``from_domains``, ``default``). Selection, first match wins:

1. a route listing the message's From address exactly (case-insensitive);
2. a route listing the From domain (or a parent domain of it);
3. the route marked ``default = true``;
4. none: direct delivery to the recipient domain's MX.

The From address is the header's (what contact-centre suites key on), else the envelope sender.
"""

from __future__ import annotations

from email.utils import getaddresses

from relay.config import RouteConfig


class RouteError(ValueError):
    """An inconsistent set of routes (duplicate names, two defaults)."""


def from_address(message: dict) -> str:
    header = message.get("from_header") or ""
    if header:
        addrs = [a for _, a in getaddresses([" ".join(str(header).split())]) if "@" in a]
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
        self._by_address = {}
        self._by_domain = {}
        for r in routes:
            for a in r.from_addresses:
                self._by_address.setdefault(a.strip().lower(), r)
            for d in r.from_domains:
                self._by_domain.setdefault(d.strip().lstrip("@").rstrip(".").lower(), r)
        self.default = next((r for r in routes if r.default), None)

    def route_for(self, message: dict) -> RouteConfig | None:
        """The route for this message, or None for direct MX delivery."""
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
