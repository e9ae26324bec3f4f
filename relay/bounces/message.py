"""Safe, bounded reading of a returned message: MIME parts -> the texts the bounce parser looks at.

Nothing here trusts the input. The raw bytes are cut at ``MAX_RAW`` before parsing (the report parts come
first; a 20 MB "bounce" is mostly the returned attachment), at most ``MAX_PARTS`` parts are visited, every
text is decoded with ``errors="replace"`` and cut at ``MAX_TEXT`` characters. The result is a ``Pieces``
object: the notice texts (what the reporting MTA wrote for humans), the delivery-status texts (RFC 3464 /
RFC 6533 fields), the feedback-report text (RFC 5965) and the returned original headers.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass, field
from email.message import Message

MAX_RAW = 1_000_000        # bytes of the raw message parsed at all
MAX_PARTS = 64             # MIME parts visited
MAX_TEXT = 64_000          # characters kept of each text part
MAX_HEADERS = 16_000       # characters kept of the returned headers

_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
_RETURNED_TYPES = ("message/rfc822", "message/global", "text/rfc822-headers", "message/rfc822-headers",
                   "message/global-headers", "message/partial")
_FEEDBACK_TYPE = "message/feedback-report"

# Where a plain-text notice stops and the copy of the original message starts: the first line that opens
# a header block of a message (these fields never start a sentence of a notice).
_RETURNED_START = re.compile(
    r"^(?:Return-Path|Received|DKIM-Signature|Message-I[dD]|X-Relaybox-ID|Authentication-Results"
    r"|ARC-Seal|X-Received)[ \t]*:", re.M | re.I)
_TAGS = re.compile(r"<(?:style|script)\b.*?</(?:style|script)>|<[^>]{0,2000}>", re.S | re.I)
_ENTITIES = {"&nbsp;": " ", "&lt;": "<", "&gt;": ">", "&amp;": "&", "&quot;": '"', "&#39;": "'"}


@dataclass
class Pieces:
    headers: Message                       # the report's own top-level headers
    content_type: str = ""
    report_type: str = ""
    notice: list[str] = field(default_factory=list)       # human-readable text parts (returned copy cut off)
    status: list[str] = field(default_factory=list)       # delivery-status part texts
    feedback: str = ""                                     # message/feedback-report text
    returned: str = ""                                     # header block of the returned original message
    problems: list[str] = field(default_factory=list)

    def notice_text(self) -> str:
        return "\n".join(self.notice)


def load(raw: bytes) -> Message:
    """Parse at most MAX_RAW bytes; never raises for malformed MIME (compat32 records defects instead)."""
    return email.message_from_bytes(normalize_newlines(raw), policy=email.policy.compat32)


def normalize_newlines(raw: bytes) -> bytes:
    """At most MAX_RAW bytes with CRLF and bare CR (old Mac mail stores) turned into LF."""
    return raw[:MAX_RAW].replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def decode_text(part: Message) -> str:
    """The decoded text of a non-multipart part, bounded, never raising."""
    try:
        data = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - broken transfer encoding
        data = None
    if not isinstance(data, bytes):
        payload = part.get_payload()
        return payload[:MAX_TEXT] if isinstance(payload, str) else ""
    data = data[: MAX_TEXT * 4]
    charset = part.get_content_charset()
    try:
        text = data.decode(charset or "utf-8", errors="replace")
    except LookupError:
        text = data.decode("utf-8", errors="replace")
    return (text if charset else _jis(text))[:MAX_TEXT]


def _utf8(text: str) -> str:
    """Header-derived text from compat32 carries raw 8-bit bytes as surrogates: decode them as UTF-8."""
    try:
        return _jis(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    except UnicodeError:
        return text


def _jis(text: str) -> str:
    """ISO-2022-JP is 7-bit: a delivery-status part without a charset may carry it raw (Lotus Domino,
    Notes). Lines with its escape sequences are decoded; everything else is left as it is."""
    if "\x1b$" not in text:
        return text
    out = []
    for line in text.split("\n"):
        if "\x1b$" in line and line.isascii():
            line = line.encode("ascii").decode("iso-2022-jp", errors="replace")
        out.append(line)
    return "\n".join(out)


def _payload_text(part: Message) -> str:
    """Text of a message/* part whichever way compat32 parsed it (list of blocks, a message, or a string)."""
    payload = part.get_payload()
    if isinstance(payload, str):
        return decode_text(part)
    if isinstance(payload, list):
        chunks = []
        for sub in payload[:MAX_PARTS]:
            if isinstance(sub, Message):
                chunks.append("".join(f"{k}: {v}\n" for k, v in sub.raw_items()))
                if isinstance(sub.get_payload(), str):
                    data = sub.get_payload(decode=True)
                    if isinstance(data, bytes):
                        chunks.append(data[:MAX_TEXT].decode("utf-8", errors="replace"))
                chunks.append("\n")
        return _utf8("".join(chunks)[:MAX_TEXT])
    return ""


def _headers_text(part: Message) -> str:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return _utf8("".join(f"{k}: {v}\n" for k, v in payload[0].raw_items())[:MAX_HEADERS])
    return _payload_text(part)[:MAX_HEADERS]


def html_to_text(html: str) -> str:
    text = re.sub(r"<br\s*/?>|</p>|</div>|</tr>|</li>", "\n", html, flags=re.I)
    text = _TAGS.sub("", text)
    for ent, repl in _ENTITIES.items():
        text = text.replace(ent, repl)
    return text


def split_notice(text: str) -> tuple[str, str]:
    """Split a plain-text notice into (notice, returned headers) at the first original header line."""
    m = _RETURNED_START.search(text)
    if not m:
        return text, ""
    return text[: m.start()], text[m.start(): m.start() + MAX_HEADERS]


def body_offset(raw: bytes) -> int:
    """Where the top-level header block of newline-normalised ``raw`` ends (-1 when there is no body)."""
    return raw.find(b"\n\n")


def body_text(raw: bytes) -> str:
    """The raw body after the top-level header block, decoded leniently (for broken MIME)."""
    raw = normalize_newlines(raw)
    pos = body_offset(raw)
    if pos < 0:
        return ""
    return raw[pos: pos + MAX_TEXT * 4].decode("utf-8", errors="replace")


def _add_notice(out: Pieces, text: str) -> None:
    notice, returned = split_notice(text)
    out.notice.append(notice)
    if returned and not out.returned:
        out.returned = returned


def _visit(out: Pieces, part: Message, top: bool, html: list[str]) -> list[Message]:
    """Take what one part offers; returns its sub-parts to visit (the returned message is not entered)."""
    ctype = part.get_content_type()
    if ctype in _STATUS_TYPES:
        out.status.append(_payload_text(part))
    elif ctype == _FEEDBACK_TYPE:
        out.feedback = _payload_text(part)
    elif ctype in _RETURNED_TYPES:
        out.returned = out.returned or _headers_text(part)
    elif part.is_multipart():
        payload = part.get_payload()
        return [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []
    elif part.get_content_maintype() == "text" and (
            top or not (part.get("Content-Disposition") or "").lower().startswith("attachment")):
        text = decode_text(part)
        if ctype == "text/html":
            html.append(html_to_text(text))
        else:
            _add_notice(out, text)
    return []


def pieces(msg: Message) -> Pieces:
    out = Pieces(headers=msg, content_type=msg.get_content_type(),
                 report_type=str(msg.get_param("report-type") or "").lower() if msg.is_multipart() else "")
    html: list[str] = []
    queue: list[Message] = [msg]
    seen = 0
    while queue:
        part = queue.pop(0)
        seen += 1
        if seen > MAX_PARTS:
            out.problems.append(f"more than {MAX_PARTS} MIME parts; the rest ignored")
            break
        queue[0:0] = _visit(out, part, part is msg, html)
    if not any(t.strip() for t in out.notice):
        for text in html:           # HTML-only notices
            _add_notice(out, text)
    return out
