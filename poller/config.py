"""Typed settings of the inbound poller: the ``[poller]`` table and the ``[[channels]]`` / ``[[campaigns]]``
seeds (channels and campaigns live in the database; the config file seeds them at start)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from relay.configtypes import Duration, Size

# channel, short and campaign names: identifiers (a campaign name becomes a Maildir directory, a channel
# name a metrics label): a letter or digit, then letters, digits, "_", "." or "-", at most 64
IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
FIRST_SYNC = re.compile(r"all|unseen|since:\d{4}-\d{2}-\d{2}")


def identifier_problem(what: str, name: str) -> str | None:
    if IDENTIFIER.fullmatch(name):
        return None
    return (f"{what} {name!r} is not an identifier (a letter or digit, then letters, digits, '_', '.' or"
            " '-', at most 64)")


@dataclass(frozen=True)
class PollerConfig:
    enabled: bool = True                  # false: no channel is polled (campaigns/quarantine stay visible)
    max_tries: int = 5                    # campaign delivery failures before a message is quarantined
    retry_first: Duration = Duration(30)  # first retry of a failed campaign delivery, doubling ...
    retry_cap: Duration = Duration(1800)  # ... up to this
    fetch_batch: int = 50                 # messages per UID FETCH round-trip (and at most 16 MB)
    parallel_deliveries: int = 16         # campaign deliveries in flight per channel (a crash repeats
                                          # at most this many webhook POSTs, same Idempotency-Key)
    max_message_size: Size = Size(50_000_000)   # larger messages are quarantined without being fetched
    timeout: Duration = Duration(60)      # connect / login / command timeout (validation answers within it)
    idle_timeout: Duration = Duration(300)    # re-issue IDLE this often (RFC 2177 asks for < 29 min)
    error_backoff_cap: Duration = Duration(300)   # server errors: retry after 5 s, doubling up to this
    maildir_root: str = "var/maildir"     # where maildir campaigns without a path write (one dir each)


@dataclass(frozen=True)
class FilterConfig:
    field: str                            # sender | subject | body | to | header:NAME
    value: str
    campaign: str
    op: str = "contains"                  # contains (case-insensitive) | equals | regex

    def __post_init__(self):
        if self.op not in ("contains", "equals", "regex"):
            raise ValueError(f"filter op: expected contains|equals|regex, got {self.op!r}")
        if self.field not in ("sender", "subject", "body", "to") and not self.field.startswith("header:"):
            raise ValueError(f"filter field: expected sender|subject|body|to|header:NAME, got {self.field!r}")


@dataclass(frozen=True)
class ChannelConfig:
    name: str
    host: str
    user: str
    short_name: str = ""                  # identity of the channel's stored mail (default: name); kept when
                                          # host/user change (the mailbox moved to another server)
    address: str = ""                     # the mailbox address (recipient_only matches it)
    protocol: str = "imap"                # imap | pop3
    port: int = 0                         # 0 = the protocol's default for the TLS mode
    tls: str = "implicit"                 # implicit | starttls | none
    server_name: str = ""                 # SNI / certificate name; empty = host
    verify: bool = True                   # verify the server certificate
    ca_file: str = ""                     # extra CA bundle (self-signed servers)
    auth: str = "password"                # password | oauth2
    password: str = field(default="", repr=False)
    oauth2_token_url: str = ""
    oauth2_client_id: str = ""
    oauth2_client_secret: str = field(default="", repr=False)
    oauth2_refresh_token: str = field(default="", repr=False)
    oauth2_scope: str = ""
    folder: str = "INBOX"
    sync_all_folders: bool = False        # every folder except storage, trash and sent
    recipient_only: bool = False          # only messages whose To/Cc/Bcc/Delivered-To name `address`
    first_sync: str = "all"               # what a folder's first sync takes: all | unseen (IMAP) |
                                          # since:YYYY-MM-DD (IMAP, by internal date); later syncs: all new
    poll_interval: Duration = Duration(60)
    idle: bool = True                     # IMAP IDLE when the server offers it
    after: str = "seen"                   # seen | move | delete (POP3: delete, or seen = leave on server)
    storage_folder: str = ""              # target of after = "move"
    default_campaign: str = ""
    purpose: str = "campaigns"            # campaigns | bounces (messages go to the bounce parser)
    enabled: bool = True
    filters: list[FilterConfig] = field(default_factory=list)


@dataclass(frozen=True)
class CampaignConfig:
    name: str
    kind: str = "maildir"                 # maildir | webhook | smtp
    path: str = ""                        # maildir: directory (default poller.maildir_root/<name>)
    url: str = ""                         # webhook: endpoint
    secret: str = field(default="", repr=False)   # webhook: HMAC-SHA256 key of X-Relaybox-Signature
    timeout: Duration = Duration(15)      # webhook: per request
    attachments: str = "base64"           # webhook: base64 | none (metadata only)
    forward_to: str = ""                  # smtp: address that receives the message via the relay's queue
    sender: str = ""                      # smtp: envelope sender (default: the channel address)

    def __post_init__(self):
        problem = identifier_problem("campaign name", self.name.strip())
        if problem:
            raise ValueError(problem)
        if self.kind not in ("maildir", "webhook", "smtp"):
            raise ValueError(f"campaign {self.name}: kind must be maildir|webhook|smtp, got {self.kind!r}")
        if self.kind == "webhook" and not self.url:
            raise ValueError(f"campaign {self.name}: webhook needs url")
        if self.kind == "smtp" and not self.forward_to:
            raise ValueError(f"campaign {self.name}: smtp needs forward_to")


SECTIONS = {"poller": PollerConfig, "channels": list[ChannelConfig], "campaigns": list[CampaignConfig]}
