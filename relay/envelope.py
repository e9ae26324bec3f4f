"""Envelope vocabulary for the relay: address validation here; statuses, queue ids and NewMessage are the
store's (``store.states``, ``store.records``) and re-exported for the relay's modules."""

from __future__ import annotations

import functools
import ipaddress
import re

from store.records import NewMessage, domain_of, new_queue_id
from store.states import Status, message_status

__all__ = ["NewMessage", "Status", "address_error", "address_literal_error", "domain_of", "helo_error",
           "message_status", "new_queue_id", "utf8_error"]


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
# an EHLO/HELO name: ASCII LDH labels (underscore tolerated, as real clients send it), optional final dot
_HELO_LABEL = r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?)"
_HELO_RE = re.compile(rf"^{_HELO_LABEL}(?:\.{_HELO_LABEL})*\.?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")     # C0 controls (CR, LF, NUL, ...) and DEL


def utf8_error(text: str) -> str | None:
    """Why ``text`` (a command argument decoded with surrogateescape) is not valid UTF-8, or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid UTF-8"
    return None


def address_literal_error(literal: str) -> str | None:
    """RFC 5321 4.1.3: ``[IPv4]`` or ``[IPv6:addr]`` with a real address in it; general literals refused."""
    if len(literal) < 3 or literal[0] != "[" or literal[-1] != "]":
        return "invalid address literal"
    inner = literal[1:-1]
    if "%" in inner:
        return "invalid address literal"   # no IPv6 zone ids
    try:
        if inner[:5].upper() == "IPV6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            if not inner.replace(".", "").isascii() or not inner.replace(".", "").isdigit():
                return "invalid address literal"
            ipaddress.IPv4Address(inner)
    except ValueError:
        return "invalid address literal"
    return None


# The same few names and addresses come back all day (an application's sender, its recipients, its EHLO
# name), checked at intake and again before delivery: the verdicts are kept (pure functions of the text;
# bounded, least recently used out first).
@functools.lru_cache(maxsize=8192)
def helo_error(name: str) -> str | None:
    """Why an EHLO/HELO argument is not a domain or an address literal (RFC 5321 4.1.1.1), or None.

    What passes is safe in a header (ASCII letters, digits, ``-``, ``_``, ``.``, or a checked literal):
    no CR, LF, NUL, space, parenthesis or ``;`` can reach the Received field through it.
    """
    if not name:
        return "missing name"
    if len(name) > MAX_DOMAIN:
        return "name longer than 255 octets"
    if name.startswith("["):
        return address_literal_error(name)
    if name.isascii() and _HELO_RE.match(name):
        return None
    return "not a domain name or address literal"


@functools.lru_cache(maxsize=8192)
def address_error(addr: str) -> str | None:
    """Why ``addr`` (a bare envelope address, no angle brackets) is not a valid mailbox, or None.

    Rejects lists (``a@x.com;b@y.com``, ``a@x.com,b@y.com``), spaces, CR/LF and other controls, a missing
    or malformed domain, and over-long parts (RFC 5321 4.5.3.1).
    """
    if not addr:
        return "empty address"
    if _CONTROL.search(addr):
        return "control characters (CR/LF) in address"
    if utf8_error(addr):
        return "invalid UTF-8 in address"
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
        return address_literal_error(domain)
    if _DOMAIN_RE.match(domain):
        return None
    if any(c in domain for c in ",;"):
        return "more than one address (use one RCPT TO per recipient)"
    return "invalid domain"
