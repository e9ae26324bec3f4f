"""Non-standard bounce notices: failed recipients and their diagnostics from the human-readable text.

Works for the common shapes without knowing the MTA: the failed address stands on a line of its own
(qmail ``<a@b>:``, Exim, Gmail, Exchange ``a@b on <date>``, Sendmail lists), or follows an SMTP reply code
(``550 5.1.1 <a@b>... User unknown``) or ``RCPT TO:<a@b>``; ``X-Failed-Recipients`` when the MTA sets it.
Each recipient's diagnostic is the text between its line and the next recipient's, and the SMTP reply in
it (``550 5.1.1 ...``) when there is one.
"""

from __future__ import annotations

import re

from relay.bounces.dsn_fields import REPLY_RE, STATUS_RE, join_reply, status_of

ADDR = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}"
ADDR_RE = re.compile(rf"(?<![A-Za-z0-9.=+_-]){ADDR}(?![A-Za-z0-9-])")
NOT_RECIPIENT = re.compile(r"^(?:mailer-daemon|postmaster|mail-daemon|maildaemon|double-bounce)@", re.I)
_ALONE_REST = re.compile(r"^[\s<>\"'():;,.\-*\[\]]*$")
_MAILTO = re.compile(r"<mailto:[^>]*>|mailto:", re.I)
_AFTER_CODE = re.compile(rf"(?<![\w.+=-])[245]\d\d[ -](?:[245]\.\d{{1,3}}\.\d{{1,3}}\s+)?<?({ADDR})>?", re.I)
_RCPT_TO = re.compile(rf"(?:rcpt to|recipient)\s*:?\s*<?({ADDR})>?|\bto\s*:?\s*<({ADDR})>", re.I)
# "could not be delivered to: <a@b>": the phrase names the failed address, even postmaster@ (mail to a
# domain's postmaster fails like any other)
FAILED_TO = re.compile(rf"(?:error delivering (?:your )?(?:mail|message)|could not be delivered|"
                       rf"delivery (?:has )?failed|was not delivered|undeliverable) to:?\s*<?({ADDR})>?",
                       re.I)
_TRAILER = re.compile(r"^\s*(?:on\s.{0,40}|\(.{0,120}\)|\[.{0,80}\]|[:;,.]|\s)*$", re.I)
# a display name ("Ann Smith" <a@b>); never a sentence (CJK punctuation included)
_DISPLAY_NAME = re.compile(r"^\s*[\"']?[^\"'<>@:,;.\u3001\u3002\uff0c\uff1a]{0,30}[\"']?\s*(?=<)")
_LEADS = re.compile(rf"^\s*<?{ADDR}>?:(?:\s|$)|"
                    # "a@b Invalid Address, ERROR_CODE :550, ..." (Zoho): the address, then its error
                    rf"^\s*<?{ADDR}>?\s.*\b(?:[45]\d\d|error_code)\b", re.I)
MAX_SEGMENT = 1500


def addresses(text: str) -> list[str]:
    return [m.group(0).lower().strip(".") for m in ADDR_RE.finditer(text)]


def _line_recipients(text: str, exclude: set[str]) -> list[tuple[str, int]]:
    """(address, offset) of addresses that stand alone on a line (modulo names, brackets, a date)."""
    found: list[tuple[str, int]] = []
    offset = 0
    for line in text.split("\n"):
        if "@" in line and len(line) < 300:
            plain = _MAILTO.sub(" ", line)
            addrs = list(ADDR_RE.finditer(plain))
            if addrs:
                rest = ADDR_RE.sub("", plain)
                rest = _DISPLAY_NAME.sub("", rest)
                if _ALONE_REST.match(rest) or _TRAILER.match(rest) or _LEADS.match(plain):
                    for m in addrs:
                        addr = m.group(0).lower().strip(".")
                        if addr not in exclude and not NOT_RECIPIENT.match(addr):
                            found.append((addr, offset + line.find(m.group(0))))
        offset += len(line) + 1
    return found


def _phrase_recipients(text: str, exclude: set[str]) -> list[tuple[str, int]]:
    found = [(m.group(1).lower().strip("."), m.start(1)) for m in FAILED_TO.finditer(text)
             if m.group(1).lower().strip(".") not in exclude]
    for rx in (_AFTER_CODE, _RCPT_TO):
        for m in rx.finditer(text):
            group = 1 if m.group(1) else 2
            addr = m.group(group).lower().strip(".")
            if addr not in exclude and not NOT_RECIPIENT.match(addr):
                found.append((addr, m.start(group)))
    found.sort(key=lambda t: t[1])
    return found


def _first_positions(found: list[tuple[str, int]]) -> list[tuple[str, int]]:
    seen: dict[str, int] = {}
    for addr, pos in found:
        seen.setdefault(addr, pos)
    return sorted(seen.items(), key=lambda t: t[1])


def find_recipients(text: str, exclude: set[str], failed_header: list[str]) -> list[tuple[str, int]]:
    """Failed recipients with the offset of their first mention (-1 when only in a header)."""
    found = _first_positions(_line_recipients(text, exclude))
    if not found:
        found = _first_positions(_phrase_recipients(text, exclude))
    if not found and exclude:
        # someone who wrote to themselves: the failed address is also the bounce's own To
        found = _first_positions(_line_recipients(text, set()))
    for addr in failed_header:
        if addr not in dict(found):
            pos = text.lower().find(addr)
            found.append((addr, pos))
    if failed_header:
        # The header is authoritative about who failed; text mentions of others are noise.
        found = [f for f in found if f[0] in failed_header]
    return sorted(found, key=lambda t: (t[1] < 0, t[1]))


def reply_line(segment: str) -> str:
    """The SMTP reply (code, enhanced code, text) inside a segment, or ''."""
    for m in REPLY_RE.finditer(segment):
        if m.group(1)[0] == "2":
            continue            # a 2xx (a transcript's "250 Ok") never explains a failure
        start = m.start(1)
        before = segment[max(0, start - 12):start]
        if re.search(r"\d[:.]$|port\s*$|#\s*$", before):
            continue
        end = segment.find("\n\n", start)
        end = len(segment) if end < 0 else end
        return join_reply(segment[start:min(end, start + 600)])
    return ""


def segments(text: str, found: list[tuple[str, int]]) -> dict[str, str]:
    """For each recipient, the notice text between its mention and the next recipient's."""
    positioned = sorted([f for f in found if f[1] >= 0], key=lambda t: t[1])
    out: dict[str, str] = {}
    for i, (addr, pos) in enumerate(positioned):
        end = positioned[i + 1][1] if i + 1 < len(positioned) else len(text)
        line_start = text.rfind("\n", 0, pos) + 1
        seg = text[line_start:end][:MAX_SEGMENT * 4]
        if len(seg.strip()) - len(addr) < 20 and i + 1 < len(positioned):
            # a plain list of addresses: the shared explanation follows the last one
            seg = text[line_start:line_start + MAX_SEGMENT * 4]
        summary = summary_start(text, line_start)
        if summary >= 0:
            # the address is a field of a summary of the returned message ("Message details: ... RCPT TO:
            # a@b ... Size: 39") that follows the error: the explanation is the text before the summary
            seg = text[max(0, summary - 800):summary]
        elif len(_meaningful(seg, addr)) < 20:
            # nothing after the address: the explanation came before the list
            first = positioned[0][1]
            para_start = text.rfind("\n\n", 0, max(0, text.rfind("\n\n", 0, first)))
            seg = text[max(0, para_start, first - 800):first] + "\n" + seg
        out[addr] = seg[:MAX_SEGMENT * 4]
    for addr, pos in found:
        if pos < 0:
            out[addr] = text
    return out


# a "Label: value" line of a summary of the returned message (Subject, Sent date, MAIL FROM, RCPT TO, Size)
_SUMMARY_FIELD = re.compile(r"^\s*[A-Za-z][A-Za-z ()-]{0,30}:(?:\s|$)")
_NO_SUMMARY = re.compile(r"diagnostic|status|action|reason|error|[245]\d\d\b", re.I)


def summary_start(text: str, line_start: int) -> int:
    """Where the paragraph of ``line_start`` starts when it is a summary of the returned message: at least
    three "Label: value" lines (a heading line ending in ':' may open it), none about the failure (a
    status, reply code, diagnostic or DSN field); else -1."""
    start = text.rfind("\n\n", 0, line_start)
    start = 0 if start < 0 else start + 2
    end = text.find("\n\n", line_start)
    lines = [ln for ln in text[start:len(text) if end < 0 else end].split("\n") if ln.strip()]
    if len(lines) < 3 or start == 0 or any(_NO_SUMMARY.search(ln) for ln in lines):
        return -1
    body = lines[1:] if lines[0].rstrip().endswith(":") else lines
    return start if all(_SUMMARY_FIELD.match(ln) for ln in body) else -1


def _meaningful(seg: str, addr: str) -> str:
    return re.sub(r"[\s<>\"'():;,.\-]+", "", seg.lower().replace(addr, ""))


# Zoho: "a@b Invalid Address, ERROR_CODE :550, ERROR_CODE :Requested action not taken: ...",
# "[Status: Error, Address: <a@b>, ResponseCode 421, , Host not reachable.]"
_LABELLED_CODE = re.compile(r"\b(?:error_code|response ?code)\s*:?\s*([45]\d\d)\b[\s,]*"
                            r"(?:error_code\s*:\s*)?[\s,]*([^\n\]]{0,300})", re.I)


def labelled_reply(segment: str) -> str:
    """A reply code given as a labelled field instead of an SMTP reply line, as ``NNN text``, or ''."""
    m = _LABELLED_CODE.search(segment[:MAX_SEGMENT])
    return f"{m.group(1)} {m.group(2).strip()}".strip() if m else ""


def describe(segment: str, addr: str) -> dict[str, str]:
    """Diagnostic, reply code and status found in one recipient's segment."""
    body = segment
    reply = reply_line(body) or labelled_reply(body)
    if reply:
        diag = reply
    else:
        diag = " ".join(body.split())[:MAX_SEGMENT]
    m = REPLY_RE.match(reply) if reply else None
    code = m.group(1) if m else ""
    from relay.bounces.dsn_fields import diag_status_of
    status = status_of(reply) or diag_status_of(body[:MAX_SEGMENT * 2]) or _status_in(body)
    return {"diagnostic": diag[:MAX_SEGMENT], "replycode": code, "status": status}


def own_error(segment: str, addr: str) -> str:
    """The error the notice prints on the recipient's own line (``a@b: Envelope expired``) when it carries
    no reply or status code, or ''."""
    first = segment.lstrip().split("\n", 1)[0]
    m = re.match(rf"\s*<?{re.escape(addr)}>?\s*:\s*(\S.*)$", first, re.I)
    if not m or REPLY_RE.search(m.group(1)) or STATUS_RE.search(m.group(1)):
        return ""
    return m.group(1).strip()


def _status_in(text: str) -> str:
    for m in STATUS_RE.finditer(text[:MAX_SEGMENT * 2]):
        before = text[max(0, m.start() - 10):m.start()].lower()
        if "version" in before or "v" == before[-1:]:
            continue
        return f"{m.group(1)}.{int(m.group(2))}.{int(m.group(3))}"
    return ""
