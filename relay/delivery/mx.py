"""Where mail for a domain goes: MX lookup with dnspython's async resolver (RFC 5321 5.1, RFC 7505).

- MX records sorted by preference, shuffled among equal preferences, at most ``max_hosts`` (5) hosts.
- No MX record -> the implicit MX: the domain itself, if it has A/AAAA records.
- Null MX (a single ``MX 0 .``) -> permanent 556 5.1.10, recipient ``failed`` at once (reason ``nullmx``).
- NXDOMAIN -> permanent 550 5.1.2, ``bounced``.
- SERVFAIL, timeouts, unreachable resolvers -> temporary 451 4.4.3, ``deferred``.
- An address literal ``[192.0.2.1]`` / ``[IPv6:...]`` is its own destination.

The resolver is injected (nameservers and port from ``delivery.nameservers`` / ``delivery.dns_port``), so
tests point it at a dnsmasq on a high port; by default the system resolver is used. Positive answers are
cached for their TTL (bounded), so a busy destination costs one lookup, not one per message.
"""

from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from relay.config import DeliveryConfig
from relay.errors import DNSError

MAX_HOSTS = 5
CACHE_MIN_TTL = 5.0
CACHE_MAX_TTL = 300.0
CACHE_MAX_ENTRIES = 10_000


@dataclass
class MXHost:
    name: str                    # host name without the trailing dot (or the literal address)
    preference: int
    addresses: list[str] = field(default_factory=list)   # filled by resolve_host / for literals


class MXResolver:
    def __init__(self, nameservers: list[str] | None = None, port: int = 53, timeout: float = 10.0,
                 max_hosts: int = MAX_HOSTS, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if nameservers:
            self.resolver = dns.asyncresolver.Resolver(configure=False)
            self.resolver.nameservers = list(nameservers)
            self.resolver.port = port
        else:
            self.resolver = dns.asyncresolver.Resolver()
        self.resolver.lifetime = timeout
        self.resolver.timeout = min(timeout, 3.0)
        self.max_hosts = max_hosts
        self.rng = rng or random.Random()
        self.clock = clock
        self._cache: dict[tuple[str, str], tuple[float, list[Any]]] = {}

    @classmethod
    def from_config(cls, cfg: DeliveryConfig) -> "MXResolver":
        """From a ``relay.config.DeliveryConfig``."""
        return cls(cfg.nameservers or None, cfg.dns_port, cfg.dns_timeout)

    async def _query(self, name: str, rdtype: str) -> list[Any]:
        """Records of one type; [] for NoAnswer; raises DNSError for NXDOMAIN and trouble."""
        key = (name.lower(), rdtype)
        hit = self._cache.get(key)
        if hit and hit[0] > self.clock():
            return hit[1]
        try:
            answer = await self.resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN as exc:
            raise DNSError(550, "5.1.2", f"domain {name} does not exist (NXDOMAIN)", False,
                           status="bounced", stage="dns") from exc
        except dns.resolver.NoAnswer:
            return []
        except (dns.exception.Timeout, dns.resolver.LifetimeTimeout) as exc:
            raise DNSError(451, "4.4.3", f"DNS timeout looking up {rdtype} {name}", True,
                           stage="dns") from exc
        except dns.resolver.NoNameservers as exc:
            raise DNSError(451, "4.4.3", f"DNS failure (SERVFAIL) looking up {rdtype} {name}", True,
                           stage="dns") from exc
        except (dns.exception.DNSException, OSError) as exc:
            raise DNSError(451, "4.4.3", f"DNS error looking up {rdtype} {name}: {type(exc).__name__}",
                           True, stage="dns") from exc
        records = list(answer)
        ttl = min(max(float(answer.rrset.ttl if answer.rrset else 0), CACHE_MIN_TTL), CACHE_MAX_TTL)
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            self._cache.clear()
        self._cache[key] = (self.clock() + ttl, records)
        return records

    async def lookup(self, domain: str) -> list[MXHost]:
        """The hosts to try, in order. Raises DNSError (temporary or permanent)."""
        literal = _literal(domain)
        if literal:
            return [MXHost(literal, 0, [literal])]
        domain = domain.rstrip(".").lower()
        records = await self._query(domain, "MX")
        if not records:
            # implicit MX (RFC 5321 5.1): the domain's own address records
            addrs = await self.resolve_host(domain)
            if not addrs:
                raise DNSError(550, "5.1.2", f"domain {domain} has no MX and no A/AAAA record", False,
                               status="bounced", stage="dns")
            return [MXHost(domain, 0, addrs)]
        real = [r for r in records if r.exchange != dns.name.root]
        if not real:
            raise DNSError(556, "5.1.10", f"domain {domain} accepts no mail (null MX, RFC 7505)", False,
                           status="failed", reason="nullmx", stage="dns")
        hosts = [(int(r.preference), r.exchange.to_text(omit_final_dot=True)) for r in real]
        by_pref: dict[int, list[str]] = {}
        for pref, host in hosts:
            by_pref.setdefault(pref, []).append(host.lower())
        ordered: list[MXHost] = []
        for pref in sorted(by_pref):
            group = by_pref[pref]
            self.rng.shuffle(group)
            ordered.extend(MXHost(h, pref) for h in group)
        return ordered[: self.max_hosts]

    async def resolve_host(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of ``host``; [] if it has none. Raises DNSError on trouble/NXDOMAIN."""
        literal = _literal(host)
        if literal:
            return [literal]
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        out: list[str] = []
        errors: list[DNSError] = []
        for rdtype in ("A", "AAAA"):
            try:
                out.extend(r.to_text() for r in await self._query(host, rdtype))
            except DNSError as exc:
                errors.append(exc)
        if not out and errors:
            raise errors[0]
        return out


def _literal(domain: str) -> str | None:
    """``[192.0.2.1]`` -> ``192.0.2.1``, ``[IPv6:2001:db8::1]`` -> ``2001:db8::1``; else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None
