"""Blocklist awareness: the relay's own sending addresses checked against DNSBL zones at an interval.

What is checked: ``dnsbl.sending_ips`` (the public addresses the relay sends from, for every route), plus,
with ``dnsbl.learn``, the source address the kernel picks toward each route's smarthost and toward the
default route (direct MX delivery, route name ``mx``) — only when that address is a public one (behind NAT
the learned address is private and only the configured ones count).

One (address, zone) pair is one DNS question (RFC 5782): ``4.3.2.1.zen.example`` for 1.2.3.4, the 32
reversed nibbles for IPv6. An A record in 127.0.0.0/8 means listed (the codes say why; a TXT record, asked
only then, gives the zone's text); NXDOMAIN (or no A record) means not listed. A timeout, SERVFAIL or an
answer outside 127/8 (a resolver that rewrites NXDOMAIN) is ``unknown``: not counted as listed. Spamhaus'
127.255.255.x answers ("query refused: use a private resolver / a data query key") are ``unknown`` too,
with the reason in the text.

Each change of a pair's state is one log line (listed / delisted / unknown) and the gauge
``relaybox_dnsbl_listed{ip,zone}`` (1 listed, 0 otherwise). The state is kept in memory: the admin API
(``GET /api/v1/blocklists``), the route status and ``relaybox blocklists`` read it or check afresh.
The resolvers are picked the way MX lookups pick them (``relay.delivery.mx``): ``dnsbl.nameservers``, else
``delivery.nameservers``, else the system's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterable

import dns.asyncresolver
import dns.exception
import dns.resolver
from prometheus_client import Gauge

from relay.config import DnsblConfig, RelayConfig, RouteConfig
from relay.delivery.mx import MXResolver

log = logging.getLogger("relay.dnsbl")

LISTED, CLEAR, UNKNOWN = "listed", "clear", "unknown"
CONCURRENCY = 8                      # questions in flight: polite to the zones' servers
MX_ROUTE = "mx"                      # the name of direct MX delivery, as in tracking.routes
_DEFAULT_ROUTE_PROBE = "192.0.2.1"   # TEST-NET-1: only used to ask the kernel which source it would pick
_DEFAULT_ROUTE_PROBE6 = "2001:db8::1"

# Spamhaus (and a few others) answer these instead of a listing when they refuse the question
REFUSALS = {"127.255.255.252": "typo in the zone name", "127.255.255.254": "query via a public/open resolver "
            "refused by the zone", "127.255.255.255": "excessive number of queries (rate limited)"}


# set only by the process running the checker (worker slot 0 with relaybox/workers.py): its latest value
DNSBL_LISTED = Gauge("relaybox_dnsbl_listed",
                     "1 while the sending address is listed by the DNSBL zone (0: not listed, or unknown)",
                     ["ip", "zone"], multiprocess_mode="livemostrecent")


@dataclass(frozen=True)
class Listing:
    """The state of one (address, zone) pair."""

    ip: str
    zone: str
    status: str                      # listed | clear | unknown
    codes: tuple[str, ...] = ()      # the 127.0.0.x answers when listed
    text: str = ""                   # the zone's TXT when listed; the problem when unknown
    since: float | None = None       # when the pair entered this status
    last_checked: float | None = None
    routes: tuple[str, ...] = ()     # routes sending from this address ("mx" = direct MX delivery)

    @property
    def listed(self) -> bool:
        return self.status == LISTED

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["codes"], out["routes"], out["listed"] = list(self.codes), list(self.routes), self.listed
        return out


def query_name(ip: str, zone: str) -> str:
    """The DNSBL question for ``ip`` in ``zone`` (RFC 5782 2.1 and 2.4): reversed octets or nibbles."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        labels = str(addr).split(".")
    else:
        labels = list(addr.exploded.replace(":", ""))
    return ".".join(reversed(labels)) + "." + zone.strip(".").lower()


def make_resolver(cfg: DnsblConfig, relay: RelayConfig) -> dns.asyncresolver.Resolver:
    """The resolvers of MX lookups (``MXResolver``), unless [dnsbl] names its own."""
    delivery = relay.delivery
    servers = list(cfg.nameservers) or list(delivery.nameservers)
    port = cfg.dns_port or delivery.dns_port
    return MXResolver(servers or None, port, float(cfg.timeout)).resolver


async def _resolve(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> list[str] | None:
    """Answers as text; [] when the name or the type does not exist; None when the question failed."""
    try:
        answer = await resolver.resolve(name, rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.DNSException, OSError):
        return None
    if rdtype == "TXT":
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
    return [r.to_text() for r in answer]


async def check_pair(resolver: dns.asyncresolver.Resolver, ip: str, zone: str) -> tuple[str, tuple[str, ...],
                                                                                           str]:
    """(status, codes, text) of one address in one zone, by one A question (and a TXT one if listed)."""
    name = query_name(ip, zone)
    try:
        codes = await _resolve(resolver, name, "A")
    except Exception as exc:  # noqa: BLE001 - a resolver bug must not stop the checker
        return UNKNOWN, (), f"lookup of {name} failed: {type(exc).__name__}"
    if codes is None:
        return UNKNOWN, (), f"no answer for {name} (timeout or SERVFAIL)"
    if not codes:
        return CLEAR, (), ""
    refused = [REFUSALS[c] for c in codes if c in REFUSALS]
    if refused:
        return UNKNOWN, tuple(codes), f"{zone} refused the question: {refused[0]}"
    if not all(ipaddress.ip_address(c) in ipaddress.ip_network("127.0.0.0/8") for c in codes):
        return UNKNOWN, tuple(codes), f"answer for {name} outside 127.0.0.0/8 (a rewriting resolver?)"
    texts = await _resolve(resolver, name, "TXT") or []
    return LISTED, tuple(sorted(codes)), " ".join(texts)[:500]


def source_address(host: str, port: int = 25) -> str | None:
    """The local address the kernel would send from toward ``host`` (a UDP connect sends no packet)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return None
    for family, _type, proto, _name, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_DGRAM, proto) as s:
                s.connect(sockaddr)
                return str(s.getsockname()[0]).split("%", 1)[0]
        except OSError:
            continue
    return None


def targets(cfg: DnsblConfig, relay: RelayConfig,
            learn: Callable[[str, int], str | None] = source_address,
            routes: Iterable[RouteConfig] | None = None) -> dict[str, tuple[str, ...]]:
    """Addresses to check -> the routes that send from them (``routes``: the live ones, else the config's).
    Configured addresses count for every route; learned ones only for their route, and only when public."""
    live = list(relay.routes if routes is None else routes)
    default = any(r.default for r in live)
    every = tuple([r.name for r in live] + ([] if default else [MX_ROUTE]))
    out: dict[str, set[str]] = {str(ipaddress.ip_address(ip)): set(every) for ip in cfg.sending_ips}
    if cfg.learn:
        probes = [(r.name, r.host, r.port) for r in live]
        if not default:
            probes += [(MX_ROUTE, _DEFAULT_ROUTE_PROBE, 25), (MX_ROUTE, _DEFAULT_ROUTE_PROBE6, 25)]
        for name, host, port in probes:
            ip = learn(host, port)
            if ip and ipaddress.ip_address(ip).is_global:
                out.setdefault(str(ipaddress.ip_address(ip)), set()).add(name)
    return {ip: tuple(sorted(names)) for ip, names in out.items()}


class DnsblChecker:
    """The checker loop and the state per (address, zone)."""

    def __init__(self, relay: RelayConfig, *, clock: Callable[[], float] = time.time,
                 resolver: dns.asyncresolver.Resolver | None = None,
                 learn: Callable[[str, int], str | None] = source_address,
                 routes: Callable[[], Iterable[RouteConfig]] | None = None):
        self.relay = relay
        self.routes = routes          # the live routes (relaybox: the route book's), else the config's
        self.cfg = relay.dnsbl
        self.clock = clock
        self.resolver = resolver      # made at the first check: nothing is read while the checker is off
        self.learn = learn
        self.state: dict[tuple[str, str], Listing] = {}
        self.checked_at: float | None = None
        self.wake = asyncio.Event()
        self._lock = asyncio.Lock()          # one round at a time (the loop and "check now" may meet)

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled and bool(self.cfg.zones)

    async def check_now(self) -> list[Listing]:
        """Every (address, zone) pair once, at most ``CONCURRENCY`` questions at a time; the new state is kept
        and returned."""
        async with self._lock:
            return await self._round()

    async def _round(self) -> list[Listing]:
        if self.resolver is None:
            self.resolver = make_resolver(self.cfg, self.relay)
        resolver = self.resolver
        live = list(self.routes()) if self.routes is not None else None
        where = await asyncio.to_thread(targets, self.cfg, self.relay, self.learn, live)
        pairs = [(ip, zone.strip(".").lower()) for ip in where for zone in self.cfg.zones]
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(ip: str, zone: str) -> tuple[str, tuple[str, ...], str]:
            async with gate:
                return await check_pair(resolver, ip, zone)

        results = await asyncio.gather(*(one(ip, zone) for ip, zone in pairs))
        now = self.clock()
        for (ip, zone), (status, codes, text) in zip(pairs, results, strict=True):
            self._update(Listing(ip, zone, status, codes, text, now, now, where[ip]))
        checked = set(pairs)
        for key in [k for k in self.state if k not in checked]:   # no longer checked: forget
            DNSBL_LISTED.labels(*key).set(0)      # what a multiprocess collector keeps after remove()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # "clearing labels not implemented in multi-process mode"
                DNSBL_LISTED.remove(*key)
            del self.state[key]
        self.checked_at = now
        return self.snapshot()

    def _update(self, new: Listing) -> None:
        key = (new.ip, new.zone)
        old = self.state.get(key)
        if old is not None and old.status == new.status:
            new = replace(new, since=old.since)
        else:
            _log_change(old, new)
        self.state[key] = new
        DNSBL_LISTED.labels(new.ip, new.zone).set(1 if new.listed else 0)

    def snapshot(self) -> list[Listing]:
        return sorted(self.state.values(), key=lambda s: (not s.listed, s.ip, s.zone))

    def zones_listing(self, route: str) -> list[str]:
        """The zones that list an address the route sends from (``mx`` = direct MX delivery)."""
        return sorted({s.zone for s in self.state.values() if s.listed and route in s.routes})

    async def run(self) -> None:
        """Check at start and every ``dnsbl.interval`` until cancelled; returns at once when disabled."""
        if not self.enabled:
            return
        log.info("dnsbl: checking %s every %.0fs", ", ".join(self.cfg.zones), float(self.cfg.interval))
        while True:
            try:
                await self.check_now()
            except Exception:  # noqa: BLE001 - the checker must never take the relay down
                log.exception("dnsbl: check failed; will retry")
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), float(self.cfg.interval))
            except asyncio.TimeoutError:
                pass


def _log_change(old: Listing | None, new: Listing) -> None:
    routes = ", ".join(new.routes) or "-"
    if new.listed:
        log.warning("dnsbl: %s is LISTED by %s (%s; routes %s)%s", new.ip, new.zone, ", ".join(new.codes),
                    routes, f": {new.text}" if new.text else "")
    elif old is not None and old.listed and new.status == CLEAR:
        log.warning("dnsbl: %s is no longer listed by %s (delisted; routes %s)", new.ip, new.zone, routes)
    elif new.status == UNKNOWN:
        log.warning("dnsbl: %s in %s unknown: %s", new.ip, new.zone, new.text)
    elif old is not None:
        log.info("dnsbl: %s in %s %s again (was %s)", new.ip, new.zone, new.status, old.status)


def summary(listings: Iterable[Listing]) -> dict[str, int]:
    out = {LISTED: 0, CLEAR: 0, UNKNOWN: 0}
    for s in listings:
        out[s.status] = out.get(s.status, 0) + 1
    return out
