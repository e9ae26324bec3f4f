"""Settings of the admin HTTP API (``[admin]``) and of event webhooks (``[[webhooks]]``).

Tokens are secrets: they are compared in constant time and never printed. A token is either a bare string
or ``"name:secret"``; the name (or a short fingerprint when there is none) becomes the actor recorded in
message events (``admin:<name>``). ``token_file`` holds one token per line in the same form (``#``
comments allowed); a line ending in `` ro`` makes that token read-only.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from relay.configtypes import Duration, Size

EVENT_TYPES = ("delivered", "deferred", "bounced", "failed", "complained", "cancelled", "opened", "clicked")


@dataclass(frozen=True)
class AdminConfig:
    enabled: bool = True
    listen: str = "127.0.0.1:8025"          # host:port of the HTTP API, /metrics, /healthz, /readyz
    tls_cert_file: str = ""                 # PEM certificate (chain); with tls_key_file the API is HTTPS only
    tls_key_file: str = ""                  # PEM private key
    allow_insecure_listen: bool = False     # plain HTTP on a non-loopback address (tokens in clear): explicit
    tokens: list[str] = field(default_factory=list, repr=False)           # full access ("name:secret")
    readonly_tokens: list[str] = field(default_factory=list, repr=False)  # GET only (dashboards, scrapers)
    token_file: str = ""                    # more tokens, one per line; "name:secret ro" = read-only
    max_body_size: Size = Size(1_000_000)   # larger request bodies get 413
    page_size: int = 50                     # default page size of list endpoints (max 1000)

    def __post_init__(self):
        if not 1 <= self.page_size <= 1000:
            raise ValueError("admin.page_size: expected 1..1000")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("admin.tls_cert_file: tls_cert_file and tls_key_file go together")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file and self.tls_key_file)

    def listen_problem(self) -> str | None:
        """Why the API must not listen as configured (bearer tokens in clear off this host), or None."""
        if not self.enabled or self.tls or self.allow_insecure_listen or is_loopback(self.listen):
            return None
        return (f"admin.listen = {self.listen!r} is not a loopback address and the admin API has no TLS: set"
                " admin.tls_cert_file and admin.tls_key_file, or admin.allow_insecure_listen = true if"
                " the network in between is trusted (tokens travel in clear)")


def is_loopback(listen: str) -> bool:
    """Whether ``host:port`` names only this host: 127.0.0.0/8, ::1 or localhost (never 0.0.0.0 / ::)."""
    host = listen.rpartition(":")[0].strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class WebhookConfig:
    name: str
    url: str                                # http(s) URL receiving POSTed JSON events
    secret: str = field(repr=False)         # HMAC-SHA256 key for the X-Relaybox-Signature header
    events: list[str] = field(default_factory=lambda: list(EVENT_TYPES))
    timeout: Duration = Duration(10)        # per POST
    retry: list[Duration] = field(default_factory=lambda: [Duration(60), Duration(300), Duration(900),
                                                           Duration(3600)])  # then the last one repeats
    max_age: Duration = Duration(86400)     # give up on an event this long after it happened
    enabled: bool = True

    def __post_init__(self):
        unknown = [e for e in self.events if e not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"webhooks.{self.name}.events: unknown {unknown}; expected {list(EVENT_TYPES)}")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"webhooks.{self.name}.url: expected an http(s) URL")
        if not self.secret:
            raise ValueError(f"webhooks.{self.name}.secret: required")
        if not self.retry:
            raise ValueError(f"webhooks.{self.name}.retry: at least one delay")


SECTIONS = {"admin": AdminConfig, "webhooks": list[WebhookConfig]}
