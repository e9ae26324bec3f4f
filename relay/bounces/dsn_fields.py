"""RFC 3464 / RFC 6533 delivery-status fields -> per-recipient dicts.

The same scanner reads a proper ``message/delivery-status`` part and the DSN-like field blocks that many
MTAs print inside their plain-text notices. Field names are case-insensitive; continuation lines are
unfolded; a new recipient starts when ``Final-Recipient`` (or ``Original-Recipient``) repeats.
"""

from __future__ import annotations

import re

_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]{1,40})[ \t]*:[ \t]*(.*)$")
_RCPT_FIELDS = {"final-recipient", "original-recipient", "x-actual-recipient", "action", "status",
                "remote-mta", "diagnostic-code", "last-attempt-date", "will-retry-until",
                "final-log-id", "x-supplementary-info", "x-display-name", "x-powermta-bouncecategory"}
_MSG_FIELDS = {"reporting-mta", "received-from-mta", "arrival-date", "x-original-message-id",
               "original-envelope-id", "dsn-gateway", "x-postfix-sender", "x-postfix-queue-id"}
STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
REPLY_RE = re.compile(r"(?<![\d.#-])([245][0-9][0-9])(?![\d.])(?=[ -]|$)")
_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_ADDR_IN = re.compile(r"(?:\"[^\"\n]{1,64}\"|[^\s<>\"';,()\[\]]+)@[^\s<>\"';,()\[\]]+")


def unfold(text: str) -> list[str]:
    lines: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line[:1] in (" ", "\t") and lines and lines[-1]:
            lines[-1] += " " + line.strip()
        else:
            lines.append(line.rstrip())
    return lines


def typed_value(value: str) -> str:
    """``rfc822; user@example.com`` -> ``user@example.com``; ``smtp; 550 ...`` -> ``550 ...``."""
    if ";" in value:
        kind, rest = value.split(";", 1)
        if len(kind.strip()) <= 12 and " " not in kind.strip():
            return rest.strip()
    return value.strip()


def address_of(value: str) -> str:
    value = typed_value(value)
    m = _ADDR_IN.search(value)
    if not m:
        return ""
    addr = m.group(0).strip(".:").lower()
    local, _, domain = addr.rpartition("@")
    if len(local) > 2 and local[0] == local[-1] == '"' and _DOT_ATOM.match(local[1:-1]):
        addr = f"{local[1:-1]}@{domain}"    # "a.b"@c is a.b@c; "a..b"@c must keep its quotes (RFC 5321)
    return addr


def status_of(text: str) -> str:
    m = STATUS_RE.search(text or "")
    return f"{m.group(1)}.{int(m.group(2))}.{int(m.group(3))}" if m else ""


_REPLY_STATUS = re.compile(r"(?<!\d)[245]\d\d[ -]['\"]?([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")


_CONTINUATION = re.compile(r"(?<=\s)[245]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3}\s+)?")


def join_reply(text: str) -> str:
    """One line of a multi-line SMTP reply: the code prefixes of continuation lines removed
    (``550-5.7.1 Messages with 550-5.7.1 two lines`` -> ``550-5.7.1 Messages with two lines``)."""
    text = " ".join((text or "").split())
    m = REPLY_RE.match(text)
    if not m:
        return text
    head_end = m.end(1) + 1
    first = re.match(r"[245]\.\d{1,3}\.\d{1,3}\s+", text[head_end:])
    if first:
        head_end += first.end()
    code = m.group(1)
    rest = re.sub(rf"(?<=\s){code}[ -](?:[245]\.\d{{1,3}}\.\d{{1,3}}\s+)?", "", text[head_end:])
    return text[:head_end] + rest


def diag_status_of(text: str) -> str:
    """The enhanced code that follows a reply code (``550 5.1.1``) if any, else the first one."""
    m = _REPLY_STATUS.search(text or "")
    if m:
        return f"{m.group(1)}.{int(m.group(2))}.{int(m.group(3))}"
    return status_of(text)


def more_specific(status: str, text: str) -> str:
    """4.4.7 ("delivery time expired") only says the MTA gave up: when the diagnostic also quotes the error
    it kept getting (``554 4.4.7 Message expired ... <421 4.4.2 Connection timed out>``), that code is the
    more precise status."""
    if status != "4.4.7":
        return status
    for m in STATUS_RE.finditer((text or "")[:2000]):
        code = f"{m.group(1)}.{int(m.group(2))}.{int(m.group(3))}"
        if code[0] == "4" and code != "4.4.7" and not code.endswith(".0.0"):
            return code
    return status


def reply_of(text: str) -> str:
    m = REPLY_RE.search(text or "")
    return m.group(1) if m else ""


def scan(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Returns (per-message fields, per-recipient field dicts) found in ``text``."""
    per_msg: dict[str, str] = {}
    rcpts: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    for line in unfold(text):
        if not line.strip():
            if cur.get("final-recipient") or cur.get("original-recipient"):
                rcpts.append(cur)
                cur = {}
            continue
        m = _FIELD.match(line.strip())
        if not m:
            continue
        name, value = m.group(1).lower(), m.group(2).strip()
        if name in _MSG_FIELDS:
            per_msg.setdefault(name, value)
            continue
        if name not in _RCPT_FIELDS:
            continue
        starts = name in ("final-recipient", "original-recipient")
        if starts and name in cur:
            rcpts.append(cur)
            cur = {}
        if name in cur:
            if name == "diagnostic-code":
                cur[name] += " " + value
            continue
        cur[name] = value
    if cur:
        rcpts.append(cur)
    return per_msg, [r for r in rcpts if r.get("final-recipient") or r.get("original-recipient")]


_CODE_TITLE = re.compile(r"other or undefined|^\s*(?:permanent|temporary|persistent transient) failure\s*$|"
                         r"^\s*(?:failed|delayed|failure)\s*$", re.I)


def _comment(value: str) -> str:
    """``5.0.0 (host name lookup failure)`` -> ``host name lookup failure`` (RFC 5322 comment text)."""
    m = re.search(r"\(([^()]{3,200})\)", value)
    if not m or _CODE_TITLE.search(m.group(1)):
        return ""       # the title of the code (RFC 3463) says nothing the code does not
    return m.group(1).strip()


def recipients(text: str) -> list[dict[str, str]]:
    """Normalised per-recipient entries: address, action, status, replycode, diagnostic, remote_mta."""
    per_msg, blocks = scan(text)
    out = []
    for block in blocks:
        addr = address_of(block.get("final-recipient", "")) or address_of(block.get("original-recipient", ""))
        actual = address_of(block.get("x-actual-recipient", ""))
        if actual and not addr:
            addr = actual
        if not addr:
            continue
        raw_diag = block.get("diagnostic-code", "")
        diag = join_reply(typed_value(raw_diag))
        out.append({
            "address": addr,
            "original": address_of(block.get("original-recipient", "")),
            "action": block.get("action", "").strip().lower().split(" ")[0],
            "status": status_of(block.get("status", "")),
            "status_comment": _comment(block.get("status", "")),
            "diag_status": diag_status_of(diag),
            "replycode": reply_of(diag[:8]) or reply_of(diag),
            "diagnostic": diag,
            "diag_type": raw_diag.split(";", 1)[0].strip().lower() if ";" in raw_diag else "",
            "remote_mta": typed_value(block.get("remote-mta", "")),
            "reporting_mta": typed_value(per_msg.get("reporting-mta", "")),
            "mta_category": block.get("x-powermta-bouncecategory", "").strip().lower(),
        })
    return out
