"""Typed settings of the outbound relay, in the order mail flows: intake -> storage -> delivery -> bounces.

Every field states its default; ``conf/relaybox.toml`` documents the same keys in the same order.
Values are validated in ``__post_init__`` where a range matters, naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.configtypes import Duration, Size


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
    max_sessions: int = 500                     # concurrent sessions; more -> 421 4.3.2
    max_sessions_per_ip: int = 100              # per client address; more -> 421 4.3.2
    idle_timeout: Duration = Duration(60)       # seconds without a command -> 421 4.4.2
    allowlist: list[str] = field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])  # seeds the DB
    require_tls_for_auth: bool = True           # AUTH only after STARTTLS (never turn off in production)
    users: list[SMTPUser] = field(default_factory=list)                      # seeds SMTP AUTH users
    tls: TLSConfig = field(default_factory=TLSConfig)

    def __post_init__(self):
        if self.bare_lf not in ("normalize", "reject"):
            raise ValueError(f'smtp.bare_lf: expected "normalize" or "reject", got {self.bare_lf!r}')
        if self.max_recipients < 1:
            raise ValueError("smtp.max_recipients: must be >= 1")
        if self.max_line_length < 78:
            raise ValueError("smtp.max_line_length: must be >= 78")


@dataclass(frozen=True)
class StorageConfig:
    path: str = "var/relaybox.db"      # the SQLite database (WAL files beside it)
    min_free: float = 0.05             # free-disk floor (fraction); below -> 452 4.3.1 at MAIL FROM
    body_days: float = 30.0            # keep bodies of final messages this long (resend works)
    meta_days: float = 90.0            # keep metadata, events, transcripts this long
    poison_limit: int = 3              # crashes while processing an item before it fails as "poison"

    def __post_init__(self):
        if not 0 <= self.min_free < 1:
            raise ValueError("storage.min_free: expected a fraction between 0 and 1")


@dataclass(frozen=True)
class RelayConfig:
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
