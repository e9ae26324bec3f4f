"""The message format, once: where the header block ends and how it splits into fields (RFC 5322 2.1, 2.2).

    head, sep, body = split(message)      # head + sep + body == message, always
    for name, raw in fields(head): ...    # lower-case name, the raw field with its folded lines and EOL

``split`` finds the first empty line (CRLF CRLF, or LF LF in a message that never got CRLF line ends):
``head`` is the header block with the line break of its last field, ``sep`` the empty line itself
(``b"\\r\\n"``, ``b"\\n"``, or ``b""`` when there is none) and ``body`` what follows. A message whose
first line is not a header field has no header block: everything is body. Intake (trace headers), DKIM
signing and outgoing DSNs read messages through these two functions.
"""

from __future__ import annotations

import re

_FIELD_RE = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")


def split(message: bytes) -> tuple[bytes, bytes, bytes]:
    """(header block, the empty line, body); their concatenation is ``message``."""
    if message.startswith(b"\r\n"):
        return b"", b"\r\n", message[2:]
    if message.startswith(b"\n"):
        return b"", b"\n", message[1:]
    if not _FIELD_RE.match(message[:1000]):
        return b"", b"", message
    i = message.find(b"\r\n\r\n")
    j = message.find(b"\n\n", 0, i if i >= 0 else len(message))   # an LF-only block ending first
    if i >= 0 and (j < 0 or i < j):
        return message[:i + 2], b"\r\n", message[i + 4:]
    if j >= 0:
        return message[:j + 1], b"\n", message[j + 2:]
    return message, b"", b""


def fields(head: bytes) -> list[tuple[str, bytes]]:
    """[(lower-case field name, raw field bytes incl. continuation lines and line breaks)], in order.
    A line that is neither a field nor a continuation gets the name ``""`` (kept, never dropped)."""
    out: list[tuple[str, bytes]] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and out:
            name, raw = out[-1]
            out[-1] = (name, raw + line)
            continue
        m = _FIELD_RE.match(line)
        out.append((m.group(1).decode("ascii").lower() if m else "", line))
    return out


def is_field(line: bytes) -> bool:
    return _FIELD_RE.match(line) is not None
