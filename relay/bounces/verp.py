"""VERP return paths: ``<local>+<token>@<bounces.domain>``, the token naming one queued recipient.

The token is Crockford base32 (lower case; decoding ignores case and reads I/L as 1 and O as 0, because
MTAs and mailbox providers may change the case of a local part) of::

    queue id (10 bytes: the 16-char Crockford queue id) | recipient id (LEB128 varint) | MAC (10 bytes)

where MAC = HMAC-SHA256(secret, "relaybox-verp-1" | queue id | recipient id) truncated to 80 bits. A bounce
to a forged or altered token decodes to ``None`` and therefore can neither mark nor suppress anything.
With a 16-char queue id and recipient ids below 2**21 the token is 37 characters, so ``local`` may be up
to 26 characters (RFC 5321 limits a local part to 64 octets). Pure functions; no I/O.

Several secrets may be given to ``decode`` (the current one first) so a secret can be rotated while
bounces to the old one are still arriving.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Iterable

from relay import varint

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_VALUES = {c: i for i, c in enumerate(_ALPHABET)}
_VALUES.update({"i": 1, "l": 1, "o": 0})
_CONTEXT = b"relaybox-verp-1"
MAC_BYTES = 10
QID_BYTES = 10
MAX_LOCAL = 64


@dataclass(frozen=True)
class VerpTarget:
    queue_id: str          # the spool's message id (upper-case Crockford base32, as stored)
    recipient_id: int      # recipients.id


def _b32encode(data: bytes) -> str:
    n, bits = int.from_bytes(data, "big"), len(data) * 8
    chars = -(-bits // 5)
    n <<= chars * 5 - bits
    return "".join(_ALPHABET[(n >> (5 * i)) & 31] for i in reversed(range(chars)))


def _b32decode(text: str, nbytes: int) -> bytes | None:
    n = 0
    for c in text.lower():
        v = _VALUES.get(c)
        if v is None:
            return None
        n = (n << 5) | v
    extra = len(text) * 5 - nbytes * 8
    if extra < 0 or extra >= 5 or n & ((1 << extra) - 1):
        return None       # not the canonical encoding: padding bits must be zero
    return (n >> extra).to_bytes(nbytes, "big")


def _qid_bytes(queue_id: str) -> bytes:
    if len(queue_id) != 16:
        raise ValueError(f"queue id must be 16 Crockford base32 characters: {queue_id!r}")
    raw = _b32decode(queue_id, QID_BYTES)
    if raw is None:
        raise ValueError(f"queue id is not Crockford base32: {queue_id!r}")
    return raw


def _key(secret: bytes | str) -> bytes:
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(key) < 16:
        raise ValueError("VERP secret must be at least 16 bytes")
    return key


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, _CONTEXT + body, hashlib.sha256).digest()[:MAC_BYTES]


def token(queue_id: str, recipient_id: int, secret: bytes | str) -> str:
    body = _qid_bytes(queue_id) + varint.encode(recipient_id)
    return _b32encode(body + _mac(_key(secret), body))


def encode(queue_id: str, recipient_id: int, *, secret: bytes | str, domain: str,
           local: str = "bounces") -> str:
    """The envelope sender for one recipient of one message."""
    local_part = f"{local}+{token(queue_id, recipient_id, secret)}"
    if len(local_part) > MAX_LOCAL:
        raise ValueError(f"VERP local part would exceed {MAX_LOCAL} octets; shorten bounces local part")
    return f"{local_part}@{domain.lower()}"


def parse_token(tok: str, secrets: bytes | str | Iterable[bytes | str]) -> VerpTarget | None:
    """The recipient a token names, or None if it is malformed or its MAC does not verify."""
    if not tok or len(tok) > 60:
        return None
    nbytes = len(tok) * 5 // 8
    data = _b32decode(tok, nbytes)
    if data is None or len(data) < QID_BYTES + 1 + MAC_BYTES:
        return None
    body, mac = data[:-MAC_BYTES], data[-MAC_BYTES:]
    rid = varint.decode(body[QID_BYTES:])
    if rid is None or QID_BYTES + rid[1] != len(body):
        return None
    if isinstance(secrets, (bytes, str)):
        secrets = [secrets]
    ok = False
    for secret in secrets:
        ok |= hmac.compare_digest(_mac(_key(secret), body), mac)
    if not ok:
        return None
    queue_id = _b32encode(body[:QID_BYTES]).upper()
    return VerpTarget(queue_id=queue_id, recipient_id=rid[0])


def decode(address: str, *, secrets: bytes | str | Iterable[bytes | str],
           domain: str | None = None) -> VerpTarget | None:
    """``local+token@domain`` -> VerpTarget, or None (wrong domain, no token, forged or altered token)."""
    if not address:
        return None
    address = address.strip().strip("<>")
    local, at, dom = address.rpartition("@")
    if not at or "+" not in local:
        return None
    if domain is not None and dom.lower().rstrip(".") != domain.lower().rstrip("."):
        return None
    return parse_token(local.rsplit("+", 1)[1], secrets)


# ---- wiring from the [bounces] config section ---------------------------------------------------------
def load_secrets(cfg) -> list[bytes]:
    """The VERP secrets of a BouncesConfig: ``secret``, else the non-empty lines of ``secret_file`` (the
    first line signs, all lines verify: rotate by prepending a new line). Empty list when VERP is off."""
    if not getattr(cfg, "domain", ""):
        return []
    if cfg.secret:
        return [_key(cfg.secret)]
    try:
        with open(cfg.secret_file, "rb") as fh:
            lines = [line.strip() for line in fh.read().splitlines() if line.strip()]
    except OSError as exc:
        why = exc.strerror or exc
        raise ValueError(f"bounces.secret_file: cannot read {cfg.secret_file}: {why}") from exc
    if not lines:
        raise ValueError(f"bounces.secret_file: {cfg.secret_file} is empty")
    return [_key(line) for line in lines]


def return_path(cfg, queue_id: str, recipient_id: int, secrets: list[bytes] | None = None) -> str | None:
    """The VERP envelope sender for one recipient, or None when VERP is off (keep the original sender)."""
    if not getattr(cfg, "domain", ""):
        return None
    keys = secrets if secrets is not None else load_secrets(cfg)
    return encode(queue_id, recipient_id, secret=keys[0], domain=cfg.domain, local=cfg.local)


def make_rcpt_hook(cfg):
    """For the SMTP listener: ``hook(address) -> True`` only for a valid VERP address of ``cfg.domain``
    (anyone may send those: relaybox can be the MX of its bounce domain); anything else -> False."""
    keys = load_secrets(cfg)
    domain = cfg.domain

    def hook(address: str) -> bool:
        return bool(keys) and decode(address, secrets=keys, domain=domain) is not None

    return hook
