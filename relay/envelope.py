"""Envelope vocabulary for the relay: address validation here; statuses, queue ids and NewMessage are the
store's (``store.states``, ``store.records``) and re-exported for the relay's modules."""

from __future__ import annotations

import re

from store.records import NewMessage, domain_of, new_queue_id
from store.states import Status, message_status

__all__ = ["NewMessage", "Status", "address_error", "domain_of", "message_status", "new_queue_id"]


# RFC 5321 limits
MAX_LOCAL = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
_LOCAL_RE = re.compile(rf"^(?:{_DOT_ATOM}|{_QUOTED})$")
_LDH = r"A-Za-z0-9\u0080-\U0010ffff"      # letters, digits (and UTF-8 for internationalised names)
_LABEL = rf"(?:[{_LDH}](?:[{_LDH}\-]{{0,61}}[{_LDH}])?)"
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
    return _local_error(local) or _domain_error(domain)


def _local_error(local: str) -> str | None:
    if not local:
        return "missing local part"
    if len(local.encode("utf-8")) > MAX_LOCAL:
        return "local part longer than 64 octets"
    if _LOCAL_RE.match(local):
        return None
    if any(c in local for c in ",;"):
        return "more than one address (use one RCPT TO per recipient)"
    if " " in local:
        return "spaces in local part"
    return "invalid local part"


def _domain_error(domain: str) -> str | None:
    if not domain:
        return "missing domain"
    if len(domain.encode("utf-8")) > MAX_DOMAIN:
        return "domain longer than 255 octets"
    if domain.startswith("["):
        return None if _ADDR_LITERAL_RE.match(domain) else "invalid address literal"
    if _DOMAIN_RE.match(domain):
        return None
    if any(c in domain for c in ",;"):
        return "more than one address (use one RCPT TO per recipient)"
    return "invalid domain"
