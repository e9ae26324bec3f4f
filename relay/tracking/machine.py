"""Is an open a person's, or a machine's? The evidence a request carries, as a pure function.

An image request proves that *something* fetched the pixel, not that someone read the message:

- Apple Mail Privacy Protection pre-fetches every image of every message through Apple's proxies, read or
  not: requests from ``machine_networks`` (Apple's 17.0.0.0/8 by default) and the bare ``Mozilla/5.0``
  user agent those proxies send;
- Gmail's and Yahoo's image proxies fetch (and cache) images for their readers: one fetch, no real client;
- security scanners and link checkers fetch within seconds of delivery, or say what they are in their user
  agent (bots, HTTP libraries, headless browsers, mail-security products).

The time since delivery is judged by the store (``store.tracking``), which knows when the recipient was
delivered; this module judges the request itself. The reasons are short fixed words (metric labels).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_PROXIES = (
    (re.compile(r"GoogleImageProxy|ggpht\.com", re.I), "google-proxy"),
    (re.compile(r"YahooMailProxy", re.I), "yahoo-proxy"),
)
_BOTS = re.compile(
    r"bot\b|bot/|crawler|spider|scanner|preview|headlesschrome|phantomjs|curl/|wget/|python-requests|"
    r"python-urllib|aiohttp|go-http-client|java/|libwww|okhttp|httpclient|axios|node-fetch|"
    r"barracuda|mimecast|proofpoint|messagelabs|symantec|trendmicro|forcepoint|fortinet|sophos|"
    r"safelinks|cisco|ironport|zscaler", re.I)
APPLE_PROXY_AGENT = "Mozilla/5.0"
REASONS = ("prefetch", "network", "apple-mpp", "google-proxy", "yahoo-proxy", "bot-agent", "no-agent")


def networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def in_networks(ip: str, nets: Iterable[IPNetwork]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in nets)


def classify(user_agent: str, ip: str, machine_nets: Iterable[IPNetwork] = ()) -> str | None:
    """A reason the request is a machine's (one of ``REASONS``), or None when nothing says so."""
    ua = " ".join((user_agent or "").split())
    if in_networks(ip, machine_nets):
        return "network"
    if not ua:
        return "no-agent"
    if ua == APPLE_PROXY_AGENT:
        return "apple-mpp"
    for pattern, reason in _PROXIES:
        if pattern.search(ua):
            return reason
    if _BOTS.search(ua):
        return "bot-agent"
    return None
