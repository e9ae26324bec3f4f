"""The vocabulary of the spool: statuses, queue ids, envelope address validation, NewMessage."""

from __future__ import annotations

import os
import random
import re
import time
from dataclasses import dataclass, field


class Status:
    """Per-recipient status. A message's status is derived from its recipients."""

    SCHEDULED = "scheduled"   # send-at in the future
    QUEUED = "queued"         # due now
    SENDING = "sending"       # leased by a delivery worker
    DELIVERED = "delivered"   # 2xx from the next hop
    DEFERRED = "deferred"     # 4xx / network / DNS trouble; retried later
    BOUNCED = "bounced"       # 5xx at delivery or an asynchronous bounce (may follow delivered)
    FAILED = "failed"         # gave up: expired, suppressed, null MX, invalid, poison
    CANCELLED = "cancelled"   # by an admin, only before sending

    ALL = ("scheduled", "queued", "sending", "delivered", "deferred", "bounced", "failed", "cancelled")
    FINAL = frozenset({"delivered", "bounced", "failed", "cancelled"})
    ACTIVE = frozenset({"scheduled", "queued", "sending", "deferred"})
    DUE = ("queued", "deferred", "scheduled")   # statuses a scheduler may claim once next_attempt_at passed


def message_status(statuses: list[str]) -> str:
    """Derive a message's status from its recipients' (the 'least final' one wins)."""
    order = ("sending", "queued", "deferred", "scheduled", "failed", "bounced", "delivered", "cancelled")
    present = set(statuses)
    for s in order:
        if s in present:
            return s
    return "unknown"


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_rng = random.Random(os.urandom(16))


_last_ms = 0
_seq = 0


def new_queue_id(now: float | None = None) -> str:
    """16 chars of Crockford base32: 48-bit milliseconds + 32 bits (random start, then a counter within
    the same millisecond, so ids are unique in-process and sort by creation time)."""
    global _last_ms, _seq
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    if ms == _last_ms:
        _seq = (_seq + 1) & 0xFFFFFFFF
    else:
        _last_ms = ms
        _seq = _rng.getrandbits(31)
    n = (ms << 32) | _seq
    out = []
    for _ in range(16):
        out.append(_CROCKFORD[n & 31])
        n >>= 5
    return "".join(reversed(out))


# RFC 5321 limits
MAX_LOCAL = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
_LOCAL_RE = re.compile(rf"^(?:{_DOT_ATOM}|{_QUOTED})$")
_LABEL = r"(?:[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]{0,61}[A-Za-z0-9\u0080-\U0010ffff])?)"
_DOMAIN_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_ADDR_LITERAL_RE = re.compile(r"^\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9A-Fa-f:.]+)\]$")


def address_error(addr: str) -> str | None:
    """Why ``addr`` (a bare envelope address, no angle brackets) is not a valid mailbox, or None.

    Rejects lists (``a@x.com;b@y.com``, ``a@x.com,b@y.com``), spaces, CR/LF and other controls, a missing
    or malformed domain, and over-long parts (RFC 5321 4.5.3.1).
    """
    if not addr:
        return "empty address"
    if any(ord(c) < 32 or ord(c) == 127 for c in addr):
        return "control characters (CR/LF) in address"
    if len(addr.encode("utf-8")) > MAX_PATH - 2:
        return "address too long"
    if "@" not in addr:
        return "missing domain"
    local, _, domain = addr.rpartition("@")
    if not local:
        return "missing local part"
    if not domain:
        return "missing domain"
    if len(local.encode("utf-8")) > MAX_LOCAL:
        return "local part longer than 64 octets"
    if len(domain.encode("utf-8")) > MAX_DOMAIN:
        return "domain longer than 255 octets"
    if not _LOCAL_RE.match(local):
        if any(c in local for c in ",;"):
            return "more than one address (use one RCPT TO per recipient)"
        if " " in local:
            return "spaces in local part"
        return "invalid local part"
    if domain.startswith("["):
        if not _ADDR_LITERAL_RE.match(domain):
            return "invalid address literal"
        return None
    if not _DOMAIN_RE.match(domain):
        if any(c in domain for c in ",;"):
            return "more than one address (use one RCPT TO per recipient)"
        return "invalid domain"
    return None


def domain_of(addr: str) -> str:
    return addr.rpartition("@")[2].lower()


@dataclass
class NewMessage:
    """A message accepted at intake, ready to be spooled. ``body`` is the exact bytes to deliver (CRLF)."""

    sender: str                       # envelope sender; '' for <>
    recipients: list[str]
    body: bytes
    client_ip: str = ""
    client_helo: str = ""
    auth_user: str | None = None
    send_at: float | None = None      # scheduled: recipients wait until then
    held: bool = False
    from_header: str | None = None
    subject: str | None = None
    message_id_header: str | None = None
    queue_id: str = field(default_factory=new_queue_id)
