"""Header work at intake: trace and identity headers, scheduled sending, the fields we index.

Only the header block is parsed (a simple RFC 5322 unfolding scan); the body is never touched, so DKIM
signing later sees exactly what the client sent plus our prepended headers.
"""

from __future__ import annotations

import email.utils
import functools
import ipaddress
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from relay import rfc5322
from relay.envelope import address_error, helo_error, new_queue_id
from relay.framing import is_framed

SEND_AT_HEADER = "x-relaybox-send-at"
ID_HEADER = "X-Relaybox-ID"
ROUTE_HEADER = "x-relaybox-route"      # the route the app asks for: kept as messages.route_hint, removed


class HeaderError(ValueError):
    """A header relaybox must understand is malformed (the text goes into the 550 reply)."""


@dataclass
class Prepared:
    body: bytes
    queue_id: str
    send_at: float | None
    from_header: str | None
    subject: str | None
    message_id: str | None
    route: str | None = None           # X-Relaybox-Route's value (a route name), the header removed
    framed: bool = False               # the content was framed (data.content_framed) and so are our fields


def field_value(raw: bytes) -> str:
    _, _, value = raw.partition(b":")
    return re.sub(r"\r\n[ \t]+", " ", value.decode("utf-8", "replace")).strip()


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def rfc3339(value: str) -> float:
    """An RFC 3339 date-time (``2026-01-31T09:00:00Z``, ``2026-01-31T10:00:00.5+01:00``: the offset is
    required) as epoch seconds; ValueError for anything else."""
    v = value.strip()
    if not _RFC3339.match(v):
        raise ValueError(f"{value[:60]!r} is not an RFC 3339 date-time with an offset,"
                         " like 2026-01-31T09:00:00Z")
    head, dot, rest = v.partition(".")
    if dot:   # at most microseconds for datetime: the digits beyond are dropped
        digits = re.match(r"\d+", rest)
        assert digits is not None
        v = f"{head}.{digits.group(0)[:6].ljust(6, '0')}{rest[digits.end():]}"
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00").replace("z", "+00:00")
                                      .replace("t", "T")).timestamp()
    except ValueError:
        raise ValueError(f"{value[:60]!r} is not a valid date-time") from None


def parse_send_at(value: str) -> float:
    """The X-Relaybox-Send-At value (docs/scheduling.md): RFC 3339 with an offset, or an RFC 5322 date
    (as in a Date field); HeaderError otherwise (intake answers 550 5.6.0 with the text)."""
    v = value.strip()
    shown = repr(v[:60])      # the reply quotes the value: bounded, escaped
    iso: datetime | None
    try:
        iso = datetime.fromisoformat(v.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        iso = None
    if iso is not None:
        if iso.tzinfo is None:
            raise HeaderError(f"X-Relaybox-Send-At: {shown} has no time zone; use RFC 3339 like"
                              " 2026-01-31T09:00:00Z")
        return iso.timestamp()
    parsed: datetime | None
    try:
        parsed = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        parsed = None
    if parsed is None:
        raise HeaderError(f"X-Relaybox-Send-At: cannot parse {shown}; use RFC 3339 like"
                          f" 2026-01-31T09:00:00Z or an RFC 5322 date")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


_date_cache: tuple[int, str] = (0, "")


def _rfc5322_date(now: float) -> str:
    global _date_cache
    sec = int(now)
    if _date_cache[0] != sec:
        _date_cache = (sec, email.utils.formatdate(sec, usegmt=True))
    return _date_cache[1]


_FOR_SAFE = re.compile(r"^[\x21-\x7e\u0080-\U0010ffff]+$")


@functools.lru_cache(maxsize=1024)
def _ip_text(client_ip: str) -> str:
    """The client address as the Received field shows it (``unknown`` when it does not parse)."""
    try:
        return str(ipaddress.ip_address(client_ip))
    except ValueError:
        return "unknown"


def trace_parts(helo: str, client_ip: str, rcpts: list[str]) -> tuple[str, str, str | None]:
    """The client-supplied parts of our Received field, each validated again here (whatever the caller
    checked): a name that is not a domain or address literal becomes ``unknown``, an IP that does not parse
    becomes ``unknown``, and the ``for`` address is only shown when it is one valid address with no
    space, control, parenthesis, ``;`` or angle bracket in it. Nothing else of the client's reaches it."""
    name = helo if helo and helo_error(helo) is None else "unknown"
    ip = _ip_text(client_ip)
    rcpt = rcpts[0] if len(rcpts) == 1 else None
    if rcpt is not None and (address_error(rcpt) or not _FOR_SAFE.match(rcpt)
                             or any(c in rcpt for c in "<>();")):
        rcpt = None
    return name, ip, rcpt


def prepare_message(content: bytes, *, hostname: str, helo: str, client_ip: str, tls: bool, auth: bool,
                    rcpts: list[str], queue_id: str | None = None, now: float | None = None,
                    framed: bool = False) -> Prepared:
    """The message as spooled: our trace fields in front, a Message-ID and Date when missing, relaybox's
    control fields removed. ``framed``: ``content`` needs no line-end repair or dot-stuffing on the wire
    (``relay.intake.data.content_framed``); the result's ``framed`` says whether that still holds with the
    fields added (each is checked: client text reaches some of them)."""
    now = time.time() if now is None else now
    qid = queue_id or new_queue_id(now)
    block, sep, rest = rfc5322.split(content)
    if not block and not sep:
        sep = b"\r\n"              # no header block: all of it is body, after our fields and an empty line
    elif not sep and not rest:
        sep = b"\r\n"              # header-only message: keep the required empty line
    fields = rfc5322.fields(block)
    seen = {name for name, _ in fields}
    first: dict[str, bytes] = {}
    for name, raw in fields:
        first.setdefault(name, raw)
    send_at = None
    route = None
    kept = []
    for name, raw in fields:
        if name == SEND_AT_HEADER:
            send_at = parse_send_at(field_value(raw))
            continue
        if name == ROUTE_HEADER:
            route = route or field_value(raw)[:63].lower() or None   # relay.delivery.routes resolves it
            continue
        if name == ID_HEADER.lower():
            continue   # never trust a client-supplied relaybox id (bounce correlation relies on it)
        kept.append(raw)
    date = _rfc5322_date(now)
    proto = "ESMTP" + ("S" if tls else "") + ("A" if auth else "")
    name, ip, rcpt = trace_parts(helo, client_ip, rcpts)
    for_clause = f"\r\n\tfor <{rcpt}>" if rcpt else ""
    prepend = [
        f"Received: from {name} ([{ip}])\r\n\tby {hostname} (relaybox) with {proto}"
        f" id {qid}{for_clause};\r\n\t{date}\r\n".encode("utf-8", "replace"),
        f"{ID_HEADER}: {qid}\r\n".encode(),
    ]
    append = []
    msgid = field_value(first["message-id"]) if "message-id" in seen else None
    if msgid is None:
        msgid = f"<{qid}@{hostname}>"
        append.append(f"Message-ID: {msgid}\r\n".encode())
    if "date" not in seen:
        append.append(f"Date: {date}\r\n".encode())
    body = b"".join([*prepend, *kept, *append, sep, rest])
    framed = framed and sep == b"\r\n" and all(map(is_framed, (*prepend, *append)))
    return Prepared(
        body=body, queue_id=qid, send_at=send_at,
        from_header=field_value(first["from"]) if "from" in seen else None,
        subject=field_value(first["subject"])[:500] if "subject" in seen else None,
        message_id=msgid, route=route, framed=framed)
