"""Tracking tokens: one recipient of one message (opens), plus the URL for clicks, signed with HMAC-SHA256.

    tok = open_token("01J...16CHARS", 42, key)          # URL-safe base64, ~48 characters
    open_target(tok, keys) -> Target(queue_id, recipient_id) | None
    tok = click_token("01J...", 42, "https://example.com/x", key)
    click_target(tok, keys) -> Target(queue_id, recipient_id, url) | None

Layout before base64url (no padding)::

    version (1) | kind (b"o" | b"c") | queue id (16 ASCII) | recipient id (LEB128) | [url (UTF-8)] | MAC (16)

MAC = HMAC-SHA256(key, "relaybox-track-1" | everything before it) truncated to 128 bits: unguessable, and a
forged or altered token (another recipient, another URL) parses to ``None``. Several keys verify (the
first one signs), so the secret can be rotated while old mail is still being read. Pure functions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Iterable, Protocol

from relay import varint

VERSION = b"\x01"
OPEN = b"o"
CLICK = b"c"
MAC_BYTES = 16
MAX_TOKEN = 4096
_CONTEXT = b"relaybox-track-1"
_QID = re.compile(rb"^[0-9A-Z]{16}$")


@dataclass(frozen=True)
class Target:
    queue_id: str
    recipient_id: int
    url: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    if not text or len(text) > MAX_TOKEN or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, _CONTEXT + body, hashlib.sha256).digest()[:MAC_BYTES]


def _body(kind: bytes, queue_id: str, recipient_id: int, url: str = "") -> bytes:
    qid = queue_id.encode("ascii")
    if not _QID.match(qid):
        raise ValueError(f"queue id must be 16 upper-case base32 characters: {queue_id!r}")
    return VERSION + kind + qid + varint.encode(recipient_id) + url.encode("utf-8")


def open_token(queue_id: str, recipient_id: int, key: bytes) -> str:
    body = _body(OPEN, queue_id, recipient_id)
    return _b64(body + _mac(key, body))


def click_token(queue_id: str, recipient_id: int, url: str, key: bytes) -> str:
    body = _body(CLICK, queue_id, recipient_id, url)
    return _b64(body + _mac(key, body))


def _parse(tok: str, kind: bytes, keys: Iterable[bytes]) -> Target | None:
    data = _unb64(tok)
    if data is None or len(data) < 2 + 16 + 1 + MAC_BYTES or data[:1] != VERSION or data[1:2] != kind:
        return None
    body, mac = data[:-MAC_BYTES], data[-MAC_BYTES:]
    ok = False
    for key in keys:                      # every key is tried: the time does not tell which one matched
        ok |= hmac.compare_digest(_mac(key, body), mac)
    if not ok:
        return None
    qid = body[2:18]
    rid = varint.decode(body[18:])
    if not _QID.match(qid) or rid is None:
        return None
    rest = body[18 + rid[1]:]
    if kind == OPEN:
        return Target(qid.decode("ascii"), rid[0]) if not rest else None
    try:
        url = rest.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return Target(qid.decode("ascii"), rid[0], url) if url else None


def open_target(tok: str, keys: Iterable[bytes]) -> Target | None:
    """The recipient an open token names, or None (malformed, forged, altered, a click token)."""
    return _parse(tok, OPEN, keys)


def click_target(tok: str, keys: Iterable[bytes]) -> Target | None:
    """Recipient and URL of a click token, or None."""
    return _parse(tok, CLICK, keys)


class _SecretConfig(Protocol):
    @property
    def secret(self) -> str: ...
    @property
    def secret_file(self) -> str: ...


def load_keys(cfg: _SecretConfig) -> list[bytes]:
    """``tracking.secret``, else the non-empty lines of ``tracking.secret_file``; empty when neither is set.
    Raises ValueError for an unreadable or empty file or a key shorter than 16 bytes."""
    if cfg.secret:
        lines = [cfg.secret.encode()]
    elif cfg.secret_file:
        try:
            with open(cfg.secret_file, "rb") as fh:
                lines = [line.strip() for line in fh.read().splitlines() if line.strip()]
        except OSError as exc:
            raise ValueError(f"tracking.secret_file: cannot read {cfg.secret_file}: "
                             f"{exc.strerror or exc}") from exc
        if not lines:
            raise ValueError(f"tracking.secret_file: {cfg.secret_file} is empty")
    else:
        return []
    for line in lines:
        if len(line) < 16:
            raise ValueError("tracking.secret: each key must be at least 16 bytes")
    return lines
