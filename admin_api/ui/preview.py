"""A safe text preview of a stored message: the text/plain part decoded, or the HTML part's source as
text (never rendered), cut at ``LIMIT`` characters. The template escapes it like everything else."""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass

LIMIT = 100_000
PARSE_LIMIT = 5_000_000     # bytes of a body parsed for the preview


@dataclass(frozen=True)
class Preview:
    text: str
    kind: str            # "text/plain" | "text/html (source, not rendered)" | "" (no text part)
    truncated: bool
    note: str = ""


def text_preview(body: bytes) -> Preview:
    note = "only the first 5 MB were read" if len(body) > PARSE_LIMIT else ""
    try:
        msg = email.message_from_bytes(body[:PARSE_LIMIT], policy=email.policy.default)
        part = msg.get_body(preferencelist=("plain", "html"))  # type: ignore[attr-defined]
        if part is None:
            return Preview("", "", False, "no text part")
        text = part.get_content()
        kind = "text/plain" if part.get_content_type() == "text/plain" else "text/html (source, not rendered)"
    except Exception as exc:  # noqa: BLE001 - a malformed message is shown as raw text instead
        text, kind = body[:LIMIT].decode("utf-8", "replace"), "raw"
        note = f"could not be parsed ({type(exc).__name__}); the raw message is shown"
    if not isinstance(text, str):
        text = str(text)
    return Preview(text[:LIMIT], kind, len(text) > LIMIT, note)
