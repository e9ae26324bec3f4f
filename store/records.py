"""Records of the outbound spool as frozen dataclasses: what the store takes and what it returns.

Nothing above the store sees a database row: a message is a ``Message``, a recipient a ``Recipient``, a
status change an ``Event``, an SMTP transaction an ``Attempt``. ``NewMessage`` is what intake hands in;
``RecipientResult`` and ``AttemptLog`` are what delivery hands back.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

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


def domain_of(addr: str) -> str:
    return addr.rpartition("@")[2].lower()


@dataclass(frozen=True)
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
    route_hint: str | None = None     # the X-Relaybox-Route header's route name (removed at intake)
    # intake found ``body`` needing no line-end repair and no dot-stuffing on the wire (CRLF only, no line
    # starting with "."): a hand-off to delivery sends it as it is. Not stored (a body read back from the
    # store is checked again when delivered).
    framed: bool = False

    @cached_property
    def body_sha256(self) -> str:
        """Computed once: the row and the hand-off's ``Message`` both carry it (~60 us per 100 KB)."""
        return hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class Message:
    """One spooled message (envelope and indexed header fields; the body is fetched separately)."""

    id: str
    created_at: float
    sender: str
    size: int
    body_sha256: str
    from_header: str | None = None
    subject: str | None = None
    message_id: str | None = None      # the Message-ID header
    client_ip: str | None = None
    client_helo: str | None = None
    auth_user: str | None = None
    send_at: float | None = None
    held: bool = False
    crash_count: int = 0
    route_hint: str | None = None      # the route the client named (X-Relaybox-Route), migration 0012

    def get(self, key: str, default: Any = None) -> Any:
        """Mapping-style read for code that formats a message generically (templates, JSON)."""
        return getattr(self, key, default)

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True)
class Recipient:
    """One recipient of one message and where it stands."""

    id: int
    message_id: str
    address: str
    domain: str
    status: str
    next_attempt_at: float
    updated_at: float
    reason: str | None = None
    attempts: int = 0
    leased_until: float | None = None
    lease_owner: str | None = None
    last_code: int | None = None
    last_enhanced: str | None = None
    last_text: str | None = None
    route: str | None = None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True)
class Event:
    """One status change (or admin action) of a message or recipient: the durable history and outbox."""

    id: int
    at: float
    message_id: str
    status: str
    actor: str
    recipient_id: int | None = None
    reason: str | None = None
    details: Mapping[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True)
class Attempt:
    """One real SMTP transaction (or connection attempt) for some recipients of one message."""

    id: int
    message_id: str
    started_at: float
    ended_at: float | None = None
    route: str | None = None
    host: str | None = None
    ip: str | None = None
    tls: bool | None = None
    result: str | None = None
    recipients: tuple[int, ...] = ()
    transcript: tuple[Mapping[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["recipients"] = list(self.recipients)
        d["transcript"] = list(self.transcript)
        return d


@dataclass(frozen=True)
class Claim:
    """Recipients of one message leased to one delivery worker."""

    message: Message
    recipients: tuple[Recipient, ...] = ()


@dataclass(frozen=True)
class RecipientResult:
    """What a delivery attempt (or a decision not to attempt) did to one recipient."""

    recipient_id: int
    status: str                        # delivered | deferred | bounced | failed
    code: int | None = None
    enhanced: str | None = None
    text: str | None = None
    next_attempt_at: float | None = None
    reason: str | None = None
    route: str | None = None


@dataclass(frozen=True)
class AttemptLog:
    """An SMTP transaction to record: where it went, how it ended, its transcript (never the body)."""

    message_id: str
    started_at: float
    ended_at: float
    result: str
    route: str | None = None
    host: str | None = None
    ip: str | None = None
    tls: bool | None = None
    recipients: tuple[int, ...] = ()
    transcript: tuple[Mapping[str, Any], ...] = ()


def message_of(row: Mapping[str, Any]) -> Message:
    return Message(id=row["id"], created_at=row["created_at"], sender=row["sender"], size=row["size"],
                   body_sha256=row["body_sha256"], from_header=row["from_header"], subject=row["subject"],
                   message_id=row["message_id"], client_ip=row["client_ip"], client_helo=row["client_helo"],
                   auth_user=row["auth_user"], send_at=row["send_at"], held=bool(row["held"]),
                   crash_count=row["crash_count"], route_hint=_column(row, "route_hint"))


def _column(row: Mapping[str, Any], name: str) -> Any:
    try:
        return row[name]
    except (IndexError, KeyError):      # a row of a partial SELECT
        return None


def recipient_of(row: Mapping[str, Any], **override: Any) -> Recipient:
    d = {k: row[k] for k in Recipient.__dataclass_fields__}
    d.update(override)
    return Recipient(**d)


def event_of(row: Mapping[str, Any]) -> Event:
    return Event(id=row["id"], at=row["at"], message_id=row["message_id"], status=row["status"],
                 actor=row["actor"], recipient_id=row["recipient_id"], reason=row["reason"],
                 details=json.loads(row["details"]) if row["details"] else None)


def attempt_of(row: Mapping[str, Any]) -> Attempt:
    tls = row["tls"]
    return Attempt(id=row["id"], message_id=row["message_id"], started_at=row["started_at"],
                   ended_at=row["ended_at"], route=row["route"], host=row["host"], ip=row["ip"],
                   tls=None if tls is None else bool(tls), result=row["result"],
                   recipients=tuple(json.loads(row["recipients"] or "[]")),
                   transcript=tuple(json.loads(row["transcript"] or "[]")))
