"""Filters: ordered rules on sender/subject/body/to/header:NAME; the first match names the campaign.

``MessageView`` parses a raw message once (stdlib email, policy.default) and offers the fields the
filters and the webhook document need. A message that cannot be parsed raises ``ParseError`` and goes
to quarantine with that reason.
"""

from __future__ import annotations

import email
import email.headerregistry
import email.message
import email.parser
import email.policy
import email.utils
import re
from dataclasses import dataclass

from poller.config import FilterConfig


class ParseError(ValueError):
    pass


class _HeaderClasses(email.headerregistry.HeaderRegistry):
    """The stdlib registry builds a new class with ``type()`` each time a header is decoded (a third of
    the cost of decoding a short header); the same class, built once per kind of header."""

    def __init__(self) -> None:
        super().__init__()
        self._built: dict[type, type] = {}

    def __getitem__(self, name: str) -> type:
        cls = self.registry.get(name.lower(), self.default_class)
        built = self._built.get(cls)
        if built is None:
            built = self._built[cls] = super().__getitem__(name)
        return built


_CLASSES = _HeaderClasses()
POLICY = email.policy.default.clone(header_factory=_CLASSES)    # policy.default, decoding faster


class MessageView:
    def __init__(self, raw: bytes):
        if not raw or not raw.strip():
            raise ParseError("empty message")
        try:          # headers only: routing by sender/subject/to needs no MIME walk of a 200 KB body
            self.head = email.parser.BytesParser(policy=POLICY).parsebytes(_header_block(raw),
                                                                                        headersonly=True)
        except Exception as exc:  # noqa: BLE001 - email raises many types on hostile input
            raise ParseError(f"cannot parse message: {exc}") from None
        if not self.head.keys():
            raise ParseError("no header fields: not an RFC 5322 message")
        self.raw = raw
        self._fields: list[tuple[str, str]] | None = None
        self._msg: email.message.EmailMessage | None = None
        self._text: str | None = None
        self._html: str | None = None

    @property
    def msg(self):
        """The fully parsed message (bodies, attachments), parsed on first use."""
        if self._msg is None:
            try:
                self._msg = self._single_part() or email.message_from_bytes(self.raw,
                                                                           policy=POLICY)
            except Exception as exc:  # noqa: BLE001
                raise ParseError(f"cannot parse message: {exc}") from None
        return self._msg

    def _single_part(self) -> email.message.EmailMessage | None:
        """A message of one part (not multipart/*, not message/*) whose header section parsed cleanly:
        its parsed header plus the body as the parser would store it (the bytes after the empty line,
        decoded as ASCII with surrogateescape), without the parser's line-by-line walk of the body
        (most of the cost of a big single-part message). None: parse it all."""
        head = self.head
        if head.get_content_maintype() in ("multipart", "message") or head.defects or head.get_payload():
            return None
        start = _body_start(self.raw)
        if start is None:
            return None
        head.set_payload(self.raw[start:].decode("ascii", "surrogateescape"))
        return head

    def fields(self) -> list[tuple[str, str]]:
        """Every header field as (name, decoded value), in order, each decoded once (the email package
        builds a header class per field it decodes: asking it again for every use cost more than the rest
        of routing). A field that cannot be decoded reads as its raw text."""
        if self._fields is None:
            policy = self.head.policy
            out = []
            for name, raw in self.head.raw_items():
                plain = _plain_text(name, raw)
                if plain is not None:
                    out.append((name, plain))
                    continue
                try:
                    out.append((name, str(policy.header_fetch_parse(name, raw))))
                except Exception:  # noqa: BLE001 - a malformed header reads as its raw text
                    out.append((name, str(raw)))
            self._fields = out
        return self._fields

    def header(self, name: str) -> str:
        want = name.lower()
        return ", ".join(v for k, v in self.fields() if k.lower() == want)

    def addresses(self, *names: str) -> list[str]:
        out = []
        for name in names:
            for _, addr in email.utils.getaddresses([self.header(name)]):
                if addr:
                    out.append(addr)
        return out

    @property
    def sender(self) -> str:
        found = self.addresses("From")
        return found[0] if found else ""

    @property
    def subject(self) -> str:
        return self.header("Subject")

    def _bodies(self) -> None:
        if self._text is not None:
            return
        text: list[str] = []
        html: list[str] = []
        for part in self.msg.walk():
            if part.is_multipart() or part.get_content_disposition() == "attachment" or \
                    (part.get_content_disposition() is None and part.get_filename()):
                continue
            ctype = part.get_content_type()
            if ctype not in ("text/plain", "text/html"):
                continue
            try:
                content = part.get_content()
            except Exception:  # noqa: BLE001 - undecodable charset: use the raw payload
                content = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
            (text if ctype == "text/plain" else html).append(content)
        self._text, self._html = "\n".join(text), "\n".join(html)

    @property
    def text(self) -> str:
        self._bodies()
        return self._text or ""

    @property
    def html(self) -> str:
        self._bodies()
        return self._html or ""

    def attachments(self) -> list[tuple[str, str, bytes]]:
        out = []
        for part in self.msg.walk():
            if part.is_multipart():
                continue
            # a file name makes an attachment: from Content-Disposition, or the Content-Type "name" of
            # a part sent without Content-Disposition (older clients and scanners)
            if part.get_content_disposition() in ("attachment", "inline", None) and part.get_filename():
                out.append((part.get_filename(), part.get_content_type(),
                            part.get_payload(decode=True) or b""))
        return out

    def field(self, name: str) -> str:
        if name == "sender":
            return self.header("From") + " " + self.sender
        if name == "subject":
            return self.subject
        if name == "body":
            return self.text or self.html
        if name == "to":
            return " ".join(self.addresses("To", "Cc"))
        if name.startswith("header:"):
            return self.header(name.split(":", 1)[1])
        return ""


def _plain_text(name: str, raw: object) -> str | None:
    """The decoded value of an unstructured field (Subject, Received, X-...) written in plain ASCII
    without encoded words: its unfolded text, which is what the parser would make of it. None: decode it
    with the parser (structured fields, encoded words, 8-bit text)."""
    if not isinstance(raw, str) or "=?" in raw or not raw.isascii():
        return None
    if not issubclass(_CLASSES.registry.get(name.lower(), _UNSTRUCTURED), _UNSTRUCTURED):
        return None
    return raw.replace("\r", "").replace("\n", "")


_UNSTRUCTURED = email.headerregistry.UnstructuredHeader


def _body_start(raw: bytes) -> int | None:
    """Where the body starts: after the first empty line (None: no empty line)."""
    ends = [(i, n) for i, n in ((raw.find(b"\r\n\r\n"), 4), (raw.find(b"\n\n"), 2)) if i >= 0]
    if not ends:
        return None
    i, n = min(ends)
    return i + n


def _header_block(raw: bytes) -> bytes:
    """The header section (up to the first empty line): the parser reads all it is given, even with
    headersonly=True."""
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return raw[:min(ends) + 1] + b"\n" if ends else raw


@dataclass
class Route:
    campaign: str
    filter_index: int | None     # position of the matching filter, None = default campaign


def matches(f: FilterConfig, view: MessageView) -> bool:
    value = view.field(f.field)
    if f.op == "contains":
        return f.value.casefold() in value.casefold()
    if f.op == "equals":
        if f.field == "sender":
            return f.value.strip().casefold() == view.sender.casefold()
        return value.strip().casefold() == f.value.strip().casefold()
    try:
        return re.search(f.value, value) is not None
    except re.error:
        return False


def route(filters: list[FilterConfig], default_campaign: str, view: MessageView) -> Route:
    for i, f in enumerate(filters):
        if matches(f, view):
            return Route(f.campaign, i)
    return Route(default_campaign, None)


def addressed_to(view: MessageView, address: str) -> bool:
    """recipient_only: does To/Cc/Bcc/Delivered-To/X-Original-To name the channel's address?"""
    want = address.strip().casefold()
    return any(a.casefold() == want
               for a in view.addresses("To", "Cc", "Bcc", "Delivered-To", "X-Original-To"))
