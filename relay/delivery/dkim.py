"""DKIM signing (RFC 6376, RFC 8463): relaxed/relaxed, rsa-sha256 and ed25519-sha256, headers only.

The signer touches nothing but headers: it returns a ``DKIM-Signature`` field to prepend; the body bytes
go out unchanged. Keys are loaded once (``Signer.from_config``) and the private-key step runs in OpenSSL
through ``cryptography`` (~0.5 ms for RSA-2048) instead of dkimpy's pure-Python RSA (~10 ms). The
canonicalisation and hashing are done here on bytes with a few regular expressions; tests/test_dkim.py
checks the result against independent verifiers (Perl Mail::DKIM, opendkim) and dkimpy.

Signing domain: the From domain if a key is configured for it (or for a parent domain), else
``dkim.default_domain`` if set, else the message is sent unsigned.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from prometheus_client import Counter

from relay import rfc5322
from relay.config import DKIMConfig

# Signed when present (RFC 6376 5.4.1 recommendations); From is also over-signed (one extra "from")
# so that a From added in transit breaks the signature.
STANDARD_HEADERS = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc", "mime-version",
    "content-type", "content-transfer-encoding", "content-id", "content-description", "in-reply-to",
    "references", "list-id", "list-help", "list-unsubscribe", "list-unsubscribe-post", "list-subscribe",
    "list-post", "list-owner", "list-archive",
)

_WSP_RUN = re.compile(rb"[ \t]+")
_TRAILING_WSP = re.compile(rb"[ \t]+\r\n")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")


class DKIMError(Exception):
    """A key that cannot be loaded or a message that cannot be signed."""


DKIM_SIGNATURES = Counter("relaybox_dkim_signatures", "DKIM signatures made, by algorithm", ["algorithm"])


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    algorithm: str          # "rsa-sha256" | "ed25519-sha256"
    key: object             # cryptography private key

    def sign_digest_input(self, data: bytes) -> bytes:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return self.key.sign(hashlib.sha256(data).digest())
        raise DKIMError(f"dkim key for {self.domain}: unsupported key type")


def load_key(domain: str, selector: str, pem: bytes) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise DKIMError(f"dkim key for {domain}: cannot load PEM private key: {exc}") from exc
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:
            raise DKIMError(f"dkim key for {domain}: RSA key of {key.key_size} bits is too small")
        return SigningKey(domain.lower(), selector, "rsa-sha256", key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return SigningKey(domain.lower(), selector, "ed25519-sha256", key)
    raise DKIMError(f"dkim key for {domain}: only RSA and Ed25519 keys are supported")


def dns_record(key: Any) -> str:
    """The TXT record value (``v=DKIM1; k=...; p=...``) for a private or public key."""
    pub = key.public_key() if hasattr(key, "public_key") else key
    if isinstance(pub, ed25519.Ed25519PublicKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


# ---- canonicalisation (RFC 6376 3.4.2 and 3.4.4) -----------------------------------------------------
def split_message(message: bytes) -> tuple[bytes, bytes]:
    """Header block (with its final line break) and body (``relay.rfc5322.split`` without the empty line)."""
    head, _, body = rfc5322.split(message)
    return head, body


def parse_headers(block: bytes) -> list[tuple[bytes, bytes]]:
    """[(name, raw field including continuation lines, without the final line break)], in order."""
    return [(raw.partition(b":")[0].strip(), raw.rstrip(b"\r\n"))
            for name, raw in rfc5322.fields(block) if name]


def relaxed_header(raw: bytes) -> bytes:
    name, _, value = raw.partition(b":")
    if b"\n" in value or b"\r" in value:          # an unfolded one-line field has nothing to unfold
        value = _FOLD.sub(b"", value).replace(b"\r", b"").replace(b"\n", b"")
    if b"\t" in value or b"  " in value:          # else every run of WSP is one space already
        value = _WSP_RUN.sub(b" ", value)
    return name.strip().lower() + b":" + value.strip(b" ")


def relaxed_body(body: bytes) -> bytes:
    if b"\r\n" not in body and b"\n" in body:
        body = body.replace(b"\n", b"\r\n")
    if b"\t" in body or b"  " in body:            # (C-level tests spare the two regex scans of most bodies)
        body = _WSP_RUN.sub(b" ", body)
    if b" \r\n" in body:                          # after the line above a WSP run is one space
        body = _TRAILING_WSP.sub(b"\r\n", body)
    if body.endswith(b" "):
        body = body.rstrip(b" ")
    body = body.rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


# the usual From forms, "<a@b>", "Name <a@b>" and "a@b", with nothing a full parse could read otherwise
_SIMPLE_FROM = re.compile(r'^(?:[^"<>@,;:()\\\[\]]*<([^<>@\s"(),;:\\\[\]]+@[^<>@\s"(),;:\\\[\]]+)>'
                          r'|([^<>@\s"(),;:\\\[\]]+@[^<>@\s"(),;:\\\[\]]+))$')


def from_domain(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, raw in headers:
        if name.lower() == b"from":
            value = raw.partition(b":")[2].decode("utf-8", "replace")
            m = _SIMPLE_FROM.match(" ".join(value.split()))
            if m:                                    # what getaddresses gives for these, ~10x cheaper
                return (m.group(1) or m.group(2)).rpartition("@")[2].lower().rstrip(">")
            addrs = [a for _, a in getaddresses([" ".join(value.split())]) if "@" in a]
            if addrs:
                return addrs[0].rpartition("@")[2].lower().rstrip(">")
            return None
    return None


def _fold_b64(sig: str, first: int) -> str:
    out, line = [], sig[:first]
    rest = sig[first:]
    out.append(line)
    while rest:
        out.append(rest[:72])
        rest = rest[72:]
    return "\r\n\t".join(out)


class Signer:
    """Signs messages with keys loaded once. ``sign(message)`` returns the header field to prepend."""

    def __init__(self, keys: dict[str, SigningKey], default_domain: str = "",
                 headers: tuple[str, ...] = STANDARD_HEADERS):
        self.keys = {d.lower(): k for d, k in keys.items()}
        self.default_domain = default_domain.lower()
        self.headers = tuple(h.lower() for h in headers)
        self._wanted = frozenset(self.headers)

    @classmethod
    def from_config(cls, cfg: DKIMConfig) -> "Signer | None":
        """Build from a ``relay.config.DKIMConfig``; None when DKIM is disabled or has no keys."""
        if not cfg.enabled or not cfg.domains:
            return None
        keys = {}
        for domain, kc in cfg.domains.items():
            try:
                with open(kc.key_file, "rb") as fh:
                    pem = fh.read()
            except OSError as exc:
                raise DKIMError(f"dkim.domains.{domain}.key_file: {exc.strerror}: {kc.key_file}") from exc
            keys[domain] = load_key(domain, kc.selector, pem)
        if cfg.default_domain and cfg.default_domain.lower() not in {d.lower() for d in keys}:
            raise DKIMError(f"dkim.default_domain: no key configured for {cfg.default_domain}")
        return cls(keys, cfg.default_domain, tuple(cfg.headers) or STANDARD_HEADERS)

    def key_for(self, domain: str | None) -> SigningKey | None:
        d = (domain or "").lower()
        while d:
            if d in self.keys:
                return self.keys[d]
            d = d.partition(".")[2] if "." in d else ""
        return self.keys.get(self.default_domain) if self.default_domain else None

    def sign(self, message: bytes, now: float | None = None) -> bytes | None:
        """The ``DKIM-Signature: ...\\r\\n`` field for ``message``, or None if no key applies."""
        prepared = self.prepare(message, now)
        return prepared.finish(prepared.key.sign_digest_input(prepared.data)) if prepared else None

    def sign_message(self, message: bytes, now: float | None = None) -> bytes:
        sig = self.sign(message, now)
        return sig + message if sig else message

    def prepare(self, message: bytes, now: float | None = None) -> "Prepared | None":
        """Canonicalise and hash: everything but the private-key step (which ``Prepared.key`` does on
        ``Prepared.data``; OpenSSL releases the GIL there, so a caller may run it in a thread)."""
        block, body = split_message(message)
        headers = parse_headers(block)
        key = self.key_for(from_domain(headers))
        if key is None:
            return None
        return self.prepare_with(key, headers, body, now)

    def sign_with(self, key: SigningKey, headers: list[tuple[bytes, bytes]], body: bytes,
                  now: float | None = None) -> bytes:
        prepared = self.prepare_with(key, headers, body, now)
        return prepared.finish(key.sign_digest_input(prepared.data))

    def prepare_with(self, key: SigningKey, headers: list[tuple[bytes, bytes]], body: bytes,
                     now: float | None = None) -> "Prepared":
        bh = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
        by_name: dict[bytes, list[bytes]] = {}
        for name, raw in headers:
            lname = name.lower()
            if lname.decode("ascii", "replace") in self._wanted:
                by_name.setdefault(lname, []).append(raw)
        names: list[str] = []
        canon: list[bytes] = []
        for h in self.headers:
            instances = by_name.get(h.encode())
            if not instances:
                continue
            for raw in reversed(instances):       # verifiers take instances from the bottom up
                names.append(h)
                canon.append(relaxed_header(raw) + b"\r\n")
        names.append("from")                      # over-sign From
        t = int(time.time() if now is None else now)
        value = (f"v=1; a={key.algorithm}; c=relaxed/relaxed; d={key.domain}; s={key.selector};\r\n"
                 f"\tt={t}; bh={bh};\r\n\th={':'.join(names)};\r\n\tb=")
        field = b"DKIM-Signature: " + value.encode()
        return Prepared(key, field, b"".join(canon) + relaxed_header(field))


@dataclass(frozen=True)
class Prepared:
    """A signature waiting for its private-key step: ``finish(key.sign_digest_input(data))``."""

    key: SigningKey
    field: bytes
    data: bytes

    def finish(self, signature: bytes) -> bytes:
        DKIM_SIGNATURES.labels(self.key.algorithm).inc()
        sig = base64.b64encode(signature).decode()
        return self.field + _fold_b64(sig, 70).encode() + b"\r\n"
