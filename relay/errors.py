"""Delivery outcomes, classified once at the edge (where the SMTP reply, socket error or DNS answer arrives).

Everything the delivery path can run into becomes one ``DeliveryError`` carrying an SMTP reply code, an
RFC 3463 enhanced status code, the text, and whether it is worth retrying::

    DeliveryError(code, enhanced, text, temporary)   one SMTP-shaped outcome; .status says what it means
    ├── ConnectError                                  cannot reach / talk to the host: 4.4.1, 4.4.2, TLS 4.7.5
    ├── DNSError                                      resolver trouble 4.4.3; NXDOMAIN 5.1.2; null MX 5.1.10
    └── EnvelopeError                                 an address that must never reach the wire: 5.1.3

Rules (RFC 5321 4.2.1, RFC 3463, Mailman ``mta/deliver.py``):
- 2xx is success and is never an error.
- 4xx, connection trouble and DNS trouble are temporary -> the recipient is ``deferred``.
- 5xx is permanent -> ``bounced``, except 552 at RCPT, which RFC 5321 4.5.3.1.10 says to treat as 452
  (too many recipients / temporary storage trouble) -> temporary.
- Some permanent outcomes are not the remote's verdict but ours (null MX, invalid address, expired,
  suppressed): those are ``failed`` with a ``reason``.

Helpers: ``from_reply(code, text, stage)`` classifies an SMTP reply, ``from_exception(exc)`` classifies a
socket / TLS / timeout / aiosmtplib error (re-raise with ``raise from_exception(e) from e``).
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl

_ENHANCED_RE = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


class DeliveryError(Exception):
    """One classified outcome. ``status`` is the recipient status it leads to."""

    default_enhanced = {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}

    def __init__(self, code: int, enhanced: str | None, text: str, temporary: bool | None = None, *,
                 status: str | None = None, reason: str | None = None, stage: str | None = None):
        self.code = int(code)
        self.text = _oneline(text)
        self.enhanced = enhanced or self.default_enhanced.get(self.code // 100, "5.0.0")
        self.temporary = (self.code // 100 == 4) if temporary is None else temporary
        self.stage = stage                   # connect, greeting, ehlo, starttls, auth, mail, rcpt, data, dns
        self.reason = reason
        if status is None:
            status = "deferred" if self.temporary else "bounced"
        self.status = status
        # the server that answered (or did not): set where the connection is opened, so a connect failure's
        # attempt record still names the host and address it tried last
        self.host: str | None = None
        self.ip: str | None = None
        super().__init__(f"{self.code} {self.enhanced} {self.text}")

    def as_reply(self) -> tuple[int, str, str]:
        return self.code, self.enhanced, self.text

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.code}, {self.enhanced!r}, {self.text!r}, "
                f"temporary={self.temporary}, status={self.status!r})")


class ConnectError(DeliveryError):
    """The host could not be reached or the session broke (refused, reset, timeout, TLS failure)."""


class DNSError(DeliveryError):
    """The destination's DNS: NXDOMAIN (permanent), null MX (permanent, failed) or resolver trouble."""


class EnvelopeError(DeliveryError):
    """An envelope address that fails re-validation (CR/LF injection, lists, bad syntax): never sent."""

    def __init__(self, address: str, why: str):
        super().__init__(553, "5.1.3", f"invalid envelope address {address!r}: {why}", False,
                         status="failed", reason="invalid")


def _oneline(text: str) -> str:
    return " ".join(str(text).split())[:900]


def split_enhanced(text: str) -> tuple[str | None, str]:
    """``"5.1.1 User unknown"`` -> ``("5.1.1", "User unknown")``; no enhanced code -> ``(None, text)``."""
    m = _ENHANCED_RE.match(text or "")
    if not m:
        return None, (text or "").strip()
    return f"{m.group(1)}.{m.group(2)}.{m.group(3)}", text[m.end():].strip()


def is_temporary(code: int, stage: str | None = None) -> bool:
    """4xx temporary, 5xx permanent, except 552 at RCPT (RFC 5321 4.5.3.1.10) and any refusal of our AUTH:
    wrong credentials are the relay's configuration, not the recipient's fault, so the mail waits for the
    admin to fix the route (as Postfix's ``smtp_sasl_auth_soft_bounce = yes``) instead of bouncing."""
    if code // 100 == 4 or stage == "auth":
        return True
    if code == 552 and stage == "rcpt":
        return True
    return False


def from_reply(code: int, text: str, stage: str | None = None) -> DeliveryError | None:
    """Classify an SMTP reply. 2xx/3xx -> None (success); else a DeliveryError.

    Multi-line replies may repeat the enhanced code on each line; only the first is kept.
    """
    if 200 <= code < 400:
        return None
    lines = [ln for ln in (text or "").splitlines() if ln.strip()] or [""]
    enhanced, first = split_enhanced(lines[0])
    rest = [split_enhanced(ln)[1] for ln in lines[1:]]
    msg = " ".join([first, *rest]).strip()
    if enhanced and enhanced[0] != str(code)[0]:
        enhanced = None        # inconsistent class: ignore the server's enhanced code
    temporary = is_temporary(code, stage)
    if code == 552 and stage == "rcpt" and enhanced and enhanced.startswith("5"):
        enhanced = "4" + enhanced[1:]
    if not 400 <= code < 600:
        return DeliveryError(451, "4.5.0", f"unexpected reply {code} {msg}", True, stage=stage)
    return DeliveryError(code, enhanced, msg, temporary, stage=stage)


def from_exception(exc: BaseException, stage: str | None = None) -> DeliveryError:
    """Classify a network/TLS/protocol exception. A DeliveryError passes through unchanged."""
    if isinstance(exc, DeliveryError):
        return exc
    # aiosmtplib response errors carry the server's reply
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None)
    if isinstance(code, int) and 400 <= code < 600 and isinstance(message, str):
        err = from_reply(code, message, stage)
        if err is not None:
            return err
    name = type(exc).__name__
    if _tls_cause(exc) or "TLS" in name or "SSL" in name:
        return ConnectError(421, "4.7.5", f"TLS failure: {_exc_text(exc)}", True, stage=stage or "starttls")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or "Timeout" in name:
        return ConnectError(421, "4.4.2", f"timed out{' during ' + stage if stage else ''}", True,
                            stage=stage)
    if isinstance(exc, socket.gaierror):
        return DNSError(451, "4.4.3", f"cannot resolve host: {_exc_text(exc)}", True, stage="dns")
    if isinstance(exc, (ConnectionError, OSError)) or "Connect" in name or "Disconnect" in name:
        return ConnectError(421, "4.4.1", f"connection failed: {_exc_text(exc)}", True, stage=stage)
    return ConnectError(451, "4.3.0", f"unexpected error: {name}: {_exc_text(exc)}", True, stage=stage)


def _tls_cause(exc: BaseException) -> bool:
    """An ssl.SSLError, or an error caused by one (aiosmtplib wraps handshake failures)."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 5:
        if isinstance(cur, ssl.SSLError):
            return True
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return False


def _exc_text(exc: BaseException) -> str:
    s = str(exc)
    return _oneline(s) if s else type(exc).__name__
