"""The message edits of tracking, on the raw bytes: only the first inline HTML part changes.

    value = control_value(message)           # the X-Relaybox-Track field's value, or None
    message = strip_control(message)         # that field removed; nothing else moves
    out = edit_html(message, fn)             # fn(decoded HTML bytes) -> new HTML bytes; None = no HTML part
    html = insert_pixel(html, url)           # a 1x1 <img> before </body> (else at the end)
    html = rewrite_links(html, make_url)     # href="http(s)://..." -> make_url(original URL)

The MIME structure is walked on the bytes (``rfc5322.split`` for each entity, boundaries found line by
line), never re-serialised: every byte outside the edited part's body stays where it was, so text-only
mail, attachments and the other alternatives go out unchanged. The HTML part is decoded from its
Content-Transfer-Encoding (7bit, 8bit, binary, quoted-printable, base64), edited as bytes (the inserted
markup is ASCII, so any ASCII-compatible charset is fine; UTF-16/32 parts are left alone) and encoded again
the same way. A 7bit/8bit part whose edit would make a line longer than 998 octets is sent as
quoted-printable instead (its Content-Transfer-Encoding field changes with it).
"""

from __future__ import annotations

import base64
import binascii
import html as htmllib
import re
from email.message import Message as EmailMessage
from email.parser import BytesHeaderParser
from typing import Callable

from relay import rfc5322

CONTROL = "x-relaybox-track"
MAX_DEPTH = 8
MAX_LINE = 998
_WIDE_CHARSETS = ("utf-16", "utf-32", "ucs-2", "ucs-4", "utf16", "utf32")
_BODY_END = re.compile(rb"</body\s*>", re.I)
_HTML_END = re.compile(rb"</html\s*>", re.I)
_LINK = re.compile(rb"""(<(?:a|area)\b[^>]*?\bhref\s*=\s*)(["'])(https?://[^"'<>\s]+)\2""", re.I)


# ---- the control header ---------------------------------------------------------------------------------
def control_value(message: bytes) -> str | None:
    """The value of the top-level ``X-Relaybox-Track`` field (the first one), unfolded, or None."""
    head, _, _ = rfc5322.split(message)
    if b"x-relaybox-track" not in head.lower():
        return None
    for name, raw in rfc5322.fields(head):
        if name == CONTROL:
            value = raw.partition(b":")[2]
            return " ".join(value.decode("ascii", "replace").split())
    return None


def strip_control(message: bytes) -> bytes:
    """``message`` without any top-level ``X-Relaybox-Track`` field (folded lines included)."""
    head, sep, body = rfc5322.split(message)
    if b"x-relaybox-track" not in head.lower():
        return message
    kept = b"".join(raw for name, raw in rfc5322.fields(head) if name != CONTROL)
    return kept + sep + body


# ---- finding the HTML part --------------------------------------------------------------------------------
def _headers(head: bytes) -> EmailMessage:
    return BytesHeaderParser().parsebytes(head)


def _parts(body: bytes, boundary: bytes) -> list[tuple[int, int]]:
    """Spans of the body parts between the delimiter lines of ``boundary`` (RFC 2046 5.1.1): the CRLF
    before a delimiter belongs to the delimiter, so a span is exactly one part's header block and body."""
    pattern = re.compile(rb"(?:^|\r\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?=\r\n|$)(?:\r\n)?")
    spans: list[tuple[int, int]] = []
    start: int | None = None
    for m in pattern.finditer(body):
        if start is not None:
            spans.append((start, m.start()))
        if m.group(1):
            return spans
        start = m.end()
    return spans            # no close delimiter: a damaged message, the open last part is not touched


def _is_inline_html(h: EmailMessage) -> bool:
    if h.get_content_type() != "text/html":
        return False
    if (h.get_content_disposition() or "inline") == "attachment":
        return False
    charset = (h.get_content_charset() or "").lower()
    return not charset.startswith(_WIDE_CHARSETS)


def find_html(entity: bytes, depth: int = 0) -> tuple[int, int, int, str] | None:
    """(start of the part's header block, start of its body, end of its body, transfer encoding) of the
    first inline text/html part of ``entity`` (the message itself or a nested part), or None."""
    head, sep, body = rfc5322.split(entity)
    h = _headers(head)
    offset = len(head) + len(sep)
    if _is_inline_html(h):
        if not sep and head:
            return None                   # no empty line: no body to edit
        return 0, offset, len(entity), str(h.get("content-transfer-encoding", "7bit")).strip().lower()
    if h.get_content_maintype() != "multipart" or depth >= MAX_DEPTH:
        return None
    boundary = h.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return None
    for start, end in _parts(body, boundary.encode("ascii", "replace")):
        found = find_html(body[start:end], depth + 1)
        if found is not None:
            hs, bs, be, cte = found
            base = offset + start
            return base + hs, base + bs, base + be, cte
    return None


# ---- transfer encodings -----------------------------------------------------------------------------------
def qp_encode(data: bytes) -> bytes:
    """Quoted-printable (RFC 2045 6.7) with CRLF hard line breaks and soft breaks before 76 columns."""
    out: list[bytes] = []
    for line in data.split(b"\r\n"):
        tokens = []
        last = len(line) - 1
        for i, b in enumerate(line):
            if (33 <= b <= 126 and b != 61) or (b in (9, 32) and i != last):
                tokens.append(bytes((b,)))
            else:
                tokens.append(b"=%02X" % b)
        cur = b""
        for tok in tokens:
            if len(cur) + len(tok) > 75:
                out.append(cur + b"=")
                cur = b""
            cur += tok
        out.append(cur)
    return b"\r\n".join(out)


def _decode(data: bytes, cte: str) -> bytes | None:
    if cte == "quoted-printable":
        return binascii.a2b_qp(data)
    if cte == "base64":
        try:
            return base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", data))
        except (binascii.Error, ValueError):
            return None
    if cte in ("7bit", "8bit", "binary", ""):
        return data
    return None                           # an encoding we do not know: leave the part alone


def _encode(data: bytes, cte: str) -> bytes:
    if cte == "quoted-printable":
        return qp_encode(data)
    if cte == "base64":
        return base64.encodebytes(data).replace(b"\n", b"\r\n").rstrip(b"\r\n")
    return data


def _set_cte(head: bytes, cte: str) -> bytes:
    """The part's header block with its Content-Transfer-Encoding field set to ``cte``."""
    fields = rfc5322.fields(head)
    line = f"Content-Transfer-Encoding: {cte}\r\n".encode()
    if any(name == "content-transfer-encoding" for name, _ in fields):
        return b"".join(line if name == "content-transfer-encoding" else raw for name, raw in fields)
    return head + line


def edit_html(message: bytes, fn: Callable[[bytes], bytes]) -> bytes | None:
    """``message`` with ``fn`` applied to the decoded body of its first inline HTML part; None when it has
    none (or one whose encoding cannot be read). Only that part's body (and, for a 7bit part that needs it,
    its Content-Transfer-Encoding field) changes."""
    found = find_html(message)
    if found is None:
        return None
    hs, bs, be, cte = found
    raw = message[bs:be]
    decoded = _decode(raw, cte)
    if decoded is None:
        return None
    edited = fn(decoded)
    if edited == decoded:
        return message
    head = message[hs:bs]
    if cte not in ("quoted-printable", "base64") and any(
            len(line) > MAX_LINE for line in edited.split(b"\r\n")):
        cte = "quoted-printable"
        block, sep, _ = rfc5322.split(message[hs:be])
        head = _set_cte(block, cte) + (sep or b"\r\n")
    encoded = _encode(edited, cte)
    if raw.endswith(b"\r\n") and not encoded.endswith(b"\r\n"):
        encoded += b"\r\n"
    return message[:hs] + head + encoded + message[be:]


# ---- the HTML edits ---------------------------------------------------------------------------------------
def pixel_tag(url: str) -> bytes:
    src = htmllib.escape(url, quote=True)
    return (f'<img src="{src}" width="1" height="1" alt="" border="0" '
            f'style="width:1px;height:1px;border:0;margin:0;padding:0" />').encode("ascii")


def insert_pixel(html: bytes, url: str) -> bytes:
    """The pixel on a line of its own before the last ``</body>`` (else ``</html>``, else at the end)."""
    tag = pixel_tag(url)
    for pattern in (_BODY_END, _HTML_END):
        matches = list(pattern.finditer(html))
        if matches:
            at = matches[-1].start()
            lead = b"" if at == 0 or html[at - 1:at] == b"\n" else b"\r\n"
            return html[:at] + lead + tag + b"\r\n" + html[at:]
    lead = b"" if not html or html.endswith(b"\n") else b"\r\n"
    return html + lead + tag + b"\r\n"


def rewrite_links(html: bytes, make: Callable[[str], str | None]) -> bytes:
    """Every ``<a|area href="http(s)://...">`` replaced by ``make(url)`` (the URL with HTML character
    references resolved, as a browser would follow it); ``make`` returning None keeps the link."""
    def sub(m: re.Match[bytes]) -> bytes:
        try:
            url = htmllib.unescape(m.group(3).decode("utf-8"))
        except UnicodeDecodeError:
            return m.group(0)
        new = make(url)
        if new is None:
            return m.group(0)
        return m.group(1) + m.group(2) + htmllib.escape(new, quote=True).encode("ascii") + m.group(2)

    return _LINK.sub(sub, html)
