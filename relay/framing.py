"""SMTP DATA framing (RFC 5321 4.5.2): which bytes may follow DATA unchanged.

A body goes on the wire after DATA with every line ending in CRLF and a dot doubled at the start of
every line that begins with one; then ``CRLF.CRLF`` ends it. Intake already refuses or repairs bare CR
and LF and knows whether any line started with a dot (``relay.intake.data.content_framed``), so
delivery can skip both passes for such a body; the small pieces relaybox adds in front of it (trace and
DKIM fields) are checked here.
"""

from __future__ import annotations


def is_framed(data: bytes) -> bool:
    """True when ``data`` can follow DATA byte for byte: CRLF line ends only, no line starting with a dot,
    and a final CRLF (or nothing at all). Meant for small pieces: a whole body's framing is known from
    intake."""
    if not data:
        return True
    crlf = data.count(b"\r\n")
    return (data.endswith(b"\r\n") and data.count(b"\r") == crlf == data.count(b"\n")
            and not data.startswith(b".") and b"\n." not in data)
