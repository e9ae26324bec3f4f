"""Typed settings of the outbound relay, in the order mail flows: intake -> storage -> delivery -> bounces
-> tracking.

Every field states its default; ``conf/relaybox.toml`` documents the same keys in the same order.
Values are validated in ``__post_init__`` where a range matters, naming the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from relay.configtypes import Duration, Size
from relay.envelope import helo_error


@dataclass(frozen=True)
class TLSConfig:
    cert_file: str = ""            # PEM certificate; empty = no STARTTLS offered
    key_file: str = ""             # PEM private key


@dataclass(frozen=True)
class SMTPUser:
    username: str
    password_hash: str = ""        # scrypt$... as printed by `relaybox users hash`; or
    password: str = ""             # plaintext in the config file (hashed at load; discouraged)


@dataclass(frozen=True)
class SMTPConfig:
    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:2525"])   # host:port, [::1]:port
    implicit_tls_listen: list[str] = field(default_factory=list)            # port-465 style listeners
    hostname: str = "relaybox.localdomain"  # EHLO name / banner / Received by
    max_message_size: Size = Size(20_000_000)   # advertised SIZE; bigger mail -> 552 5.3.4
    max_recipients: int = 1000                  # per transaction; more -> 452 4.5.3
    max_line_length: int = 998                  # octets without CRLF (RFC 5322); longer -> 500 5.5.2
    bare_lf: str = "normalize"                  # "normalize" (bare CR/LF -> CRLF) | "reject" (550 5.6.11)
    nul: str = "reject"                         # NUL octets in DATA: "reject" (550 5.6.0) | "strip"
    reject_unauth_pipelining: bool = True       # data sent before our 354 -> 554 5.5.0 and disconnect
    max_sessions: int = 500                     # concurrent sessions; more -> 421 4.3.2
    max_sessions_per_ip: int = 20               # per client address; more -> 421 4.3.2
    max_connection_rate_per_ip: int = 120       # sessions a minute per address (0 = off; allowlist exempt)
    idle_timeout: Duration = Duration(60)       # seconds without a command -> 421 4.4.2
    allowlist: list[str] = field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])  # seeds the DB
    require_tls_for_auth: bool = True           # AUTH only after STARTTLS (never turn off in production)
    auth_workers: int = 2                       # threads verifying password hashes (off the event loop)
    auth_queue: int = 32                        # verifications waiting for a thread; more -> 454 4.7.0
    auth_failure_delay: Duration = Duration(1)  # first failed AUTH answered after this, doubling per failure
    auth_failure_delay_cap: Duration = Duration(30)   # of the client address or user, up to this
    auth_failure_window: Duration = Duration(900)     # failures counted over this long
    auth_lockout_after: int = 10                # failures of one address or user in the window -> locked out
    auth_lockout: Duration = Duration(900)      # for this long (AUTH answered 454 4.7.0, nothing checked)
    auth_max_failures_per_session: int = 3      # then 421 4.7.0 and disconnect (smtpd_hard_error_limit)
    rejection_log: bool = True                  # record refused transactions/recipients (relaybox rejections)
    rejection_log_keep: Duration = Duration(7 * 86400)   # rows older than this are deleted
    rejection_log_max_rows: int = 100_000       # at most this many rows (the oldest go first)
    rejection_log_buffer: int = 10_000          # distinct rejections waiting in memory; more are dropped
    users: list[SMTPUser] = field(default_factory=list)                      # seeds SMTP AUTH users
    tls: TLSConfig = field(default_factory=TLSConfig)

    def __post_init__(self):
        if self.bare_lf not in ("normalize", "reject"):
            raise ValueError(f'smtp.bare_lf: expected "normalize" or "reject", got {self.bare_lf!r}')
        if self.max_recipients < 1:
            raise ValueError("smtp.max_recipients: must be >= 1")
        if self.max_line_length < 78:
            raise ValueError("smtp.max_line_length: must be >= 78")
        if self.nul not in ("reject", "strip"):
            raise ValueError(f'smtp.nul: expected "reject" or "strip", got {self.nul!r}')
        for name in ("max_sessions", "max_sessions_per_ip", "auth_workers", "auth_queue",
                     "auth_lockout_after", "auth_max_failures_per_session", "rejection_log_max_rows",
                     "rejection_log_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"smtp.{name}: must be >= 1")
        if self.max_connection_rate_per_ip < 0:
            raise ValueError("smtp.max_connection_rate_per_ip: must be >= 0 (0 = off)")
        if helo_error(self.hostname):
            raise ValueError(f"smtp.hostname: {self.hostname!r} is not a domain name")


@dataclass(frozen=True)
class StorageConfig:
    path: str = "var/relaybox.db"      # the SQLite database (WAL files beside it)
    url: str = ""                      # "postgresql://user@host/db": PostgreSQL instead (docs/storage.md)
    min_free: float = 0.05             # free-disk floor (fraction); below -> 452 4.3.1 at MAIL FROM
    body_days: float = 30.0            # keep bodies of final messages this long (resend works)
    meta_days: float = 90.0            # keep metadata, events, transcripts this long
    poison_limit: int = 3              # crashes while processing an item before it fails as "poison"
    commit_delay: float = 0.002        # SQLite: under load, wait this long for more jobs per commit

    def __post_init__(self):
        if not 0 <= self.commit_delay <= 0.1:
            raise ValueError("storage.commit_delay: expected seconds between 0 and 0.1")
        if not 0 <= self.min_free < 1:
            raise ValueError("storage.min_free: expected a fraction between 0 and 1")
        if self.url and not self.url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f'storage.url: expected "postgresql://...", got {self.url.split(":", 1)[0]!r}')

    def location(self) -> str:
        """What ``store.Store`` opens: the PostgreSQL URL when set, else the SQLite file."""
        return self.url or self.path

    def key_file(self) -> str:
        """The secrets' key file: beside the SQLite file (also with PostgreSQL: every node of one database
        needs a copy of the same key)."""
        return self.path + ".key"


@dataclass(frozen=True)
class RelayConfig:
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    delivery: DeliveryConfig = field(default_factory=lambda: DeliveryConfig())
    routes: list[RouteConfig] = field(default_factory=list)
    dkim: DKIMConfig = field(default_factory=lambda: DKIMConfig())
    bounces: BouncesConfig = field(default_factory=lambda: BouncesConfig())
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig())
    dnsbl: DnsblConfig = field(default_factory=lambda: DnsblConfig())


# ---- delivery (owned by the delivery engine: relay/delivery/) -----------------------------------------
@dataclass(frozen=True)
class DeliveryConfig:
    enabled: bool = True                   # false = accept and queue only (maintenance, intake benchmarks)
    helo_name: str = ""                    # EHLO name towards next hops; empty = smtp.hostname
    max_lifetime: Duration = Duration(5 * 86400)   # give up after this -> failed 'expired'
    retry_first: Duration = Duration(300)  # first retry delay, doubling
    retry_cap: Duration = Duration(4000)   # longest retry delay
    retry_jitter: float = 0.1              # +- fraction of each delay
    concurrency: int = 200                 # connections in flight, all destinations
    per_destination: int = 20              # connections per domain / smarthost
    per_domain: dict[str, int] = field(default_factory=dict)   # overrides, e.g. {"gmail.com" = 10}
    messages_per_connection: int = 100     # reuse one SMTP connection for up to this many messages
    connect_timeout: Duration = Duration(30)
    command_timeout: Duration = Duration(120)   # per SMTP command; DATA end waits this long too
    idle_reuse: Duration = Duration(5)     # keep an idle connection this long for the next message
    mx_port: int = 25                      # port of MX hosts (tests use a high port)
    mx_tls_verify: bool = False            # opportunistic STARTTLS to MX: certificates not verified
    nameservers: list[str] = field(default_factory=list)  # empty = system resolver (/etc/resolv.conf)
    dns_port: int = 53
    dns_timeout: Duration = Duration(10)
    lease: Duration = Duration(300)        # claim lease; a crashed worker's recipients return after this
    claim_batch: int = 200                 # recipients claimed per scheduler round
    poll_interval: Duration = Duration(1)  # how often the scheduler looks for due recipients when idle
    dsn: bool = True                       # RFC 3464 report to the envelope sender on bounced/failed
    delay_notice: bool = False             # one "delayed" DSN per message, once it is this late:
    delay_notice_after: Duration = Duration(4 * 3600)
    log_results: str = "all"               # info line per result: "all" | "failures" (not delivered) | "none"

    def __post_init__(self):
        for name in ("concurrency", "per_destination", "messages_per_connection", "claim_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"delivery.{name}: must be >= 1")
        if not 0 <= self.retry_jitter < 1:
            raise ValueError("delivery.retry_jitter: expected a fraction between 0 and 1")
        if self.log_results not in ("all", "failures", "none"):
            raise ValueError(f'delivery.log_results: expected "all", "failures" or "none", '
                             f"got {self.log_results!r}")


ROUTE_TLS_MODES = ("none", "starttls", "implicit")
ROUTE_DEFAULT_PORTS = {"none": 25, "starttls": 587, "implicit": 465}   # the port used when none is given
_ROUTE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_ROUTE_HOST = re.compile(r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                         r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$")
_ROUTE_DOMAIN = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{1,63}$")
_ROUTE_ADDRESS = re.compile(r"^[^\s@<>(),;:\\\"\[\]]{1,64}@[^\s@<>(),;:\\\"\[\]]{1,253}$")


@dataclass(frozen=True)
class RouteConfig:
    """A smarthost route (``[[routes]]``, or one saved by the admin API / CLI in ``store.routes``). Which
    messages take it: ``relay.delivery.routes`` (header, submitting identity, From address, From domain,
    default)."""

    name: str                              # a slug: a-z 0-9 - _, at most 63, starting with a letter/digit
    host: str
    port: int = 0                          # 0 = the mode's usual port: none 25, starttls 587, implicit 465
    tls: str = "starttls"                  # none | starttls | implicit
    tls_verify: bool = True
    username: str = ""
    password: str = field(default="", repr=False)   # never logged, never in transcripts or answers
    allow_plaintext_auth: bool = False     # AUTH without TLS (tls = "none", or opportunistic without it)
    from_addresses: list[str] = field(default_factory=list)   # exact From addresses using this route
    from_domains: list[str] = field(default_factory=list)     # From domains using this route (+ subdomains)
    auth_users: list[str] = field(default_factory=list)       # SMTP AUTH users whose mail takes this route
    client_networks: list[str] = field(default_factory=list)  # submitting client addresses (CIDR) likewise
    default: bool = False                  # used when no route matches (else: direct MX)
    sender: str = ""                       # MAIL FROM of "routes test" (else the first from_addresses)
    # XOAUTH2 instead of a password (Microsoft 365: client credentials; Google: a refresh token)
    oauth2_token_url: str = ""             # the provider's token endpoint; set = AUTH XOAUTH2 for username
    oauth2_client_id: str = ""
    oauth2_client_secret: str = field(default="", repr=False)
    oauth2_scope: str = ""                 # e.g. https://outlook.office365.com/.default
    oauth2_refresh_token: str = field(default="", repr=False)   # the first one; a rotated one is stored

    def __post_init__(self):
        problems = route_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        if not self.port:                  # the effective port, so every user of the route sees a number
            object.__setattr__(self, "port", ROUTE_DEFAULT_PORTS[self.tls])


def route_problems(r: RouteConfig) -> list[str]:
    """What is wrong with a route's settings, each naming its key (``routes.<name>.<key>: ...``)."""
    import ipaddress

    if not isinstance(r.name, str) or not _ROUTE_NAME.match(r.name):
        return [f"routes.{r.name}.name: expected a slug of a-z, 0-9, '-' and '_' (at most 63, starting"
                f" with a letter or digit), got {r.name!r}"]
    if r.name == "resolve":
        return ["routes.resolve.name: 'resolve' is reserved (GET /api/v1/routes/resolve)"]
    at, out = f"routes.{r.name}", []
    if r.tls not in ROUTE_TLS_MODES:
        out.append(f'{at}.tls: expected "none", "starttls" or "implicit", got {r.tls!r}')
    if not isinstance(r.host, str) or not _ROUTE_HOST.match(r.host):
        try:
            ipaddress.ip_address(str(r.host).strip("[]"))
        except ValueError:
            out.append(f"{at}.host: expected a host name or IP address, got {r.host!r}")
    if isinstance(r.port, bool) or not isinstance(r.port, int) or not 0 <= r.port <= 65535:
        out.append(f"{at}.port: expected 1 to 65535, got {r.port!r}")
    return out + _selector_problems(r, at) + _oauth_problems(r, at)


def _oauth_problems(r: RouteConfig, at: str) -> list[str]:
    if not r.oauth2_token_url:
        return []
    out = []
    if not str(r.oauth2_token_url).startswith(("https://", "http://127.0.0.1", "http://localhost")):
        out.append(f"{at}.oauth2_token_url: expected an https:// URL, got {r.oauth2_token_url!r}")
    if not r.oauth2_client_id:
        out.append(f"{at}.oauth2_client_id: required with oauth2_token_url")
    if not r.username:
        out.append(f"{at}.username: required with oauth2_token_url (the mailbox that sends)")
    if r.password:
        out.append(f"{at}.password: not used with oauth2_token_url (XOAUTH2); remove one of them")
    return out


def _selector_problems(r: RouteConfig, at: str) -> list[str]:
    import ipaddress

    out: list[str] = []
    for key, a in [*(("from_addresses", a) for a in r.from_addresses), *([("sender", r.sender)] if r.sender
                                                                          else [])]:
        if not isinstance(a, str) or not _ROUTE_ADDRESS.match(a.strip()):
            out.append(f"{at}.{key}: not an address: {a!r}")
    for d in r.from_domains:
        if not isinstance(d, str) or not _ROUTE_DOMAIN.match(d.strip().lstrip("@").rstrip(".").lower()):
            out.append(f"{at}.from_domains: not a domain: {d!r}")
    for u in r.auth_users:
        if not isinstance(u, str) or not u.strip() or len(u) > 320:
            out.append(f"{at}.auth_users: not a user name: {u!r}")
    for n in r.client_networks:
        try:
            ipaddress.ip_network(str(n), strict=False)
        except ValueError:
            out.append(f"{at}.client_networks: not a network: {n!r}")
    return out


@dataclass(frozen=True)
class DKIMKeyConfig:
    selector: str
    key_file: str                          # PEM private key (RSA 2048 or Ed25519); type taken from the key


@dataclass(frozen=True)
class DKIMConfig:
    enabled: bool = False
    default_domain: str = ""               # sign with this domain's key when the From domain has none
    domains: dict[str, DKIMKeyConfig] = field(default_factory=dict)
    headers: list[str] = field(default_factory=list)   # empty = the standard set in relay/delivery/dkim.py


# ---- bounces (owned by relay/bounces/: parser, record.py, verp.py; rows in store/bounces.py) ---------
@dataclass(frozen=True)
class BouncesConfig:
    domain: str = ""                       # VERP return-path domain; empty = VERP off (sender kept)
    local: str = "bounces"                 # local part before "+token" (at most 26 characters)
    secret: str = field(default="", repr=False)   # HMAC key of VERP tokens (>= 16 chars); or
    secret_file: str = ""                  # a file holding it (preferred: keeps it out of the config)
    dsn: bool = True                       # parse DSNs arriving for bounces.domain / bounce channels
    soft_limit: int = 5                    # soft bounces of one address within soft_window -> suppressed
    soft_window: Duration = Duration(7 * 86400)
    hard_suppress_for: Duration = Duration(30 * 86400)   # hard bounce -> suppressed this long (0 = forever)

    def __post_init__(self):
        if self.domain and not (self.secret or self.secret_file):
            raise ValueError("bounces.secret: required (or bounces.secret_file) when bounces.domain is set")
        if self.secret and len(self.secret) < 16:
            raise ValueError("bounces.secret: must be at least 16 characters")
        if len(self.local) > 26 or not self.local:
            raise ValueError("bounces.local: 1 to 26 characters")
        if self.soft_limit < 1:
            raise ValueError("bounces.soft_limit: must be >= 1")


# ---- tracking (owned by relay/tracking/: tokens, HTML insertion, the listener; rows in store/tracking.py) -
@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = False                  # off: no message is changed (X-Relaybox-Track is still stripped)
    listen: str = "127.0.0.1:8026"         # host:port of the tracking listener (never the admin API's)
    base_url: str = ""                     # public URL of that listener in the mail, e.g. https://t.example.com
    secret: str = field(default="", repr=False)   # HMAC key of tracking tokens (>= 16 chars); or
    secret_file: str = ""                  # a file holding it (first line signs, every line verifies)
    routes: list[str] = field(default_factory=list)           # route names tracked ("mx" = direct MX)
    sender_domains: list[str] = field(default_factory=list)   # From domains tracked (with subdomains)
    clicks: bool = False                   # also rewrite http(s) links of tracked HTML to signed redirects
    machine_window: Duration = Duration(10)   # an open this soon after delivery counts as a machine's
    machine_networks: list[str] = field(default_factory=lambda: ["17.0.0.0/8"])   # image proxies (Apple)
    trusted_proxies: list[str] = field(default_factory=list)  # reverse proxies whose X-Forwarded-For counts
    rate: float = 5.0                      # requests per second per client address, sustained
    burst: int = 30                        # and in a burst; beyond: the same GIF, nothing recorded

    def __post_init__(self):
        import ipaddress

        if self.enabled and not self.base_url.startswith(("http://", "https://")):
            raise ValueError("tracking.base_url: an http(s) URL is required when tracking.enabled is set")
        if self.enabled and not (self.secret or self.secret_file):
            raise ValueError("tracking.secret: required (or tracking.secret_file) when tracking is enabled")
        if self.secret and len(self.secret) < 16:
            raise ValueError("tracking.secret: must be at least 16 characters")
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"tracking.listen: expected host:port, got {self.listen!r}")
        for key in ("machine_networks", "trusted_proxies"):
            for net in getattr(self, key):
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError:
                    raise ValueError(f"tracking.{key}: not a network: {net!r}") from None
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("tracking.rate and tracking.burst: must be positive")


# ---- dnsbl (owned by relay/dnsbl.py: the blocklist checks of the relay's own sending addresses) ------
@dataclass(frozen=True)
class DnsblConfig:
    enabled: bool = False                  # off: nothing is looked up
    zones: list[str] = field(default_factory=list)         # e.g. ["zen.spamhaus.org", "bl.spamcop.net"]
    sending_ips: list[str] = field(default_factory=list)   # the relay's public sending addresses (v4/v6)
    learn: bool = True                     # also the source address toward each route / the default route
    interval: Duration = Duration(900)     # how often every (address, zone) pair is checked
    nameservers: list[str] = field(default_factory=list)   # empty = delivery.nameservers, else the system's
    dns_port: int = 0                      # 0 = delivery.dns_port
    timeout: Duration = Duration(5)        # per query; a timeout leaves the pair "unknown"

    def __post_init__(self):
        import ipaddress

        if self.enabled and not self.zones:
            raise ValueError("dnsbl.zones: at least one zone is required when dnsbl.enabled is set")
        for zone in self.zones:
            if helo_error(zone.rstrip(".")):
                raise ValueError(f"dnsbl.zones: {zone!r} is not a domain name")
        for ip in self.sending_ips:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ValueError(f"dnsbl.sending_ips: not an IP address: {ip!r}") from None
        if self.interval < 1 or self.timeout <= 0:
            raise ValueError("dnsbl.interval (>= 1s) and dnsbl.timeout (> 0): out of range")
        if not 0 <= self.dns_port < 65536:
            raise ValueError("dnsbl.dns_port: expected 0..65535")
