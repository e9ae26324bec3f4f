"""The bounce parser: raw bytes -> category + per-recipient results. Pure; never raises.

Order of evidence (standards first, then patterns):
1. RFC 5965 feedback report -> ``feedback`` (a complaint, not a bounce).
2. RFC 3464 / RFC 6533 delivery-status fields (in their MIME part, else inside the text) -> ``bounce`` or,
   when every recipient was delivered/relayed/expanded, ``delivered``. Missing diagnostics are filled
   from the human-readable notice.
3. A notice that looks like a non-delivery report (null sender, MAILER-DAEMON/postmaster, a bounce
   subject, ``X-Failed-Recipients``): recipients and diagnostics from the text (``notice.py``), then
   flufl.bounce as the fallback address detector.
4. RFC 3834 auto-replies -> ``autoreply``. Anything else -> ``unknown``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field

from relay.bounces import dsn_fields as dsn
from relay.bounces import kinds, message, notice, reasons, sesjson

# flufl.bounce logs a traceback for every detector that trips over a malformed message (and an INFO line per
# detector): hostile input must not be able to flood our logs. Its failures just mean "no address found".
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

_GENERIC_STATUS = re.compile(r"^[245]\.0\.0$")
# a Status: that only summarises the action: failed (X.0.0), delayed until given up (4.4.7)
_SUMMARY_STATUS = re.compile(r"^(?:[45]\.0\.0|4\.4\.7)$")
# a temporary error in the words of the error itself (Sisimai's test: "temporar", "persistent")
_TEMPORARY_WORDS = re.compile(r"\btemporar|\bpersistent", re.I)
_REMOTE = re.compile(r"(?:host|server|mta|mx)\s+\[?((?:[a-z0-9-]+\.)+[a-z]{2,}|\d{1,3}(?:\.\d{1,3}){3})\]?",
                     re.I)
_RELAYBOX_ID = re.compile(rb"X-Relaybox-ID:[ \t]*([A-Za-z0-9._-]{1,64})", re.I)
_MSGID = re.compile(r"^Message-I[dD]:[ \t]*(<[^>\s]{1,250}>)", re.M)
# (Exim's "retry timeout exceeded" / "have been failing for a long time": the errors were temporary ones
# that lasted until the retry limit)
_TEMPORARY = re.compile(r"temporary failure|will (?:keep )?try(?:ing)? again|retry timeout exceeded|"
                        r"(?:has|have) been failing for a long time|"
                        r"temporarily (?:deferred|unavailable)|this is only a temporary|"
                        r"has been delayed", re.I)
_DELAY_NOTICE = re.compile(
    r"will (?:be )?retried|will (?:keep )?try(?:ing)? again|will continue (?:to try|trying)|"
    r"delivery attempts will continue|this is only a temporary|still (?:be )?(?:retrying|trying)|"
    r"warning: message still undelivered|has been delayed|no action is required on your part", re.I)
_NEXT_BLOCK = re.compile(r"^\s*(?:original|final)-recipient\s*:", re.I | re.M)
_AFTER_MAIL_FROM = re.compile(r"\bSMTP error from remote (?:mail )?server after MAIL FROM\b", re.I)
_LOCAL_EXIT_STATUS = re.compile(r"^[45]\.(?:0\.0|5\.\d{1,3})$")
# the words Postfix's local delivery agents give a program's EX_TEMPFAIL / EX_UNAVAILABLE exit (sysexits.h)
# with X.3.0: the program failed, nothing more is known
_EXIT_WORDS = re.compile(r"^\s*(?:temporary failure|service unavailable)\s*$", re.I)
# a notice that quotes the original's headers inline ("Original Message:\nFrom: ...\nTo: ...")
_QUOTED_ORIGINAL = re.compile(r"^[\s-]*original message[\s-]*:?[\s-]*$", re.I | re.M)
_ERROR_LINE = re.compile(r"^\s*(?:error|reason)\s*:\s*(\S.{2,300})$", re.I | re.M)
MAX_RECIPIENTS = 200       # per report; more is an abuse, not a bounce
_DONE_ACTIONS = {"delivered", "relayed", "expanded", "deliverable"}   # deliverable: Postfix verify (-bv)


@dataclass
class Recipient:
    address: str
    action: str = ""
    status: str = ""
    replycode: str = ""
    diagnostic: str = ""
    remote_mta: str = ""
    reason: str = ""
    kind: str = ""


@dataclass
class Parsed:
    category: str                          # bounce | feedback | autoreply | delivered | unknown
    recipients: list[Recipient] = field(default_factory=list)
    problem: str = ""                      # why the message is unparsed/unknown ('' when understood)
    relaybox_id: str = ""                  # X-Relaybox-ID found in the returned headers
    original_message_id: str = ""          # Message-ID of the returned original
    feedback_type: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def parse(raw: bytes) -> Parsed:
    """Parse one returned message. Never raises; bad input gives category 'unknown' with ``problem``."""
    if not isinstance(raw, (bytes, bytearray)):
        return Parsed("unknown", problem="unparsed: input is not bytes")
    try:
        result = _parse(bytes(raw))
    except RecursionError:
        return Parsed("unknown", problem="unparsed: MIME structure too deep")
    except Exception as exc:  # noqa: BLE001 - hostile input must never crash the caller
        return Parsed("unknown", problem=f"unparsed: {type(exc).__name__}: {str(exc)[:200]}")
    try:
        _correlation(bytes(raw), result, None)
    except Exception:  # noqa: BLE001
        pass
    return result


def _parse(raw: bytes) -> Parsed:
    if not raw.strip():
        return Parsed("unknown", problem="unparsed: empty message")
    msg = message.load(raw)
    pcs = message.pieces(msg)
    text = pcs.notice_text()
    special = _not_a_bounce_report(msg, pcs, text)
    if special is not None:
        return special
    entries, text = _dsn_entries(raw, pcs, text)
    if entries:
        return _from_dsn(msg, entries, text)
    strong = kinds.looks_like_bounce(msg, text) and not _null_sender_only(msg)
    if strong or (not kinds.is_autoreply(msg) and kinds.looks_like_bounce(msg, text)):
        found = _from_notice(msg, text, pcs)
        if found.recipients:
            return found
    refused = kinds.list_refusal(msg, text)
    if refused is not None:
        address, reason, diag = refused
        r = Recipient(address=address, action="failed", diagnostic=diag, reason=reason,
                      status=reasons.pseudo_status(reason, False))
        r.kind = reasons.kind(r.reason, r.status)
        return Parsed("bounce", [r])
    if kinds.is_autoreply(msg):
        sender = kinds.header_addresses(msg, "From") or kinds.header_addresses(msg, "Sender")
        diag = " ".join(text.split())[:300]
        rcpts = [Recipient(address=sender[0], reason="vacation", diagnostic=diag)] if sender else []
        return Parsed("autoreply", rcpts)
    if strong:
        return Parsed("unknown", problem="looks like a bounce but no failed recipient was found")
    return Parsed("unknown", problem="not a delivery report")


def _not_a_bounce_report(msg, pcs: message.Pieces, text: str) -> Parsed | None:
    """Complaints (ARF, non-ARF loops, unsubscribe requests) and SES JSON notifications."""
    if pcs.feedback or pcs.report_type == "feedback-report":
        return _feedback(pcs, text)
    if pcs.returned and kinds.complaint_subject(msg) and not kinds.looks_like_bounce(msg, text):
        return _feedback(pcs, text)
    if kinds.is_unsubscribe(msg):
        sender = kinds.header_addresses(msg, "From")
        return Parsed("feedback", [Recipient(address=a, reason="feedback", diagnostic="unsubscribe request")
                                   for a in sender[:1]], feedback_type="unsubscribe")
    ses = sesjson.notification(text) if text.lstrip().startswith("{") else None
    return _from_ses(ses) if ses is not None else None


def _dsn_entries(raw: bytes, pcs: message.Pieces, text: str) -> tuple[list[dict], str]:
    """DSN fields from the delivery-status parts, else from the text; with broken MIME from the raw body."""
    entries = []
    for status_text in pcs.status:
        entries.extend(dsn.recipients(status_text))
    if not entries and "recipient" in text.lower():
        entries = dsn.recipients(text)
    if not entries or not text.strip():
        raw_text = message.body_text(raw)     # broken MIME: read the body as plain text
        if not entries and "recipient" in raw_text.lower():
            entries = dsn.recipients(raw_text)
        if not text.strip():
            text, returned = message.split_notice(raw_text)
            pcs.returned = pcs.returned or returned
    return entries, text


def _null_sender_only(msg) -> bool:
    """True when the only bounce signal is the null return path (auto-replies use it too)."""
    saved = msg.get("Return-Path")
    if str(saved or "").strip() != "<>":
        return False
    del msg["Return-Path"]
    try:
        return not kinds.looks_like_bounce(msg, "")
    finally:
        msg["Return-Path"] = saved


def _feedback(pcs: message.Pieces, text: str) -> Parsed:
    rcpts, fields = kinds.feedback_recipients(pcs.feedback, pcs.returned)
    diag = " ".join(text.split())[:500]
    out = Parsed("feedback", feedback_type=fields.get("feedback-type", "").lower())
    out.recipients = [Recipient(address=a, reason="feedback", diagnostic=diag) for a in rcpts]
    return out


def _from_ses(obj: dict) -> Parsed:
    category, items = sesjson.entries(obj)
    out = []
    for e in items:
        diag = dsn.typed_value(e["diagnostic"])
        r = Recipient(address=e["address"], action=e["action"], diagnostic=diag[:1000],
                      status=dsn.status_of(e["status"]) or dsn.diag_status_of(diag),
                      replycode=dsn.reply_of(diag[:8]), remote_mta=dsn.typed_value(e["remote_mta"]))
        if category == "bounce":
            _finish(r, context="")
        else:
            r.reason = "feedback" if category == "feedback" else "delivered"
        out.append(r)
    return Parsed(category, out)


def _from_dsn(msg, entries: list[dict], text: str) -> Parsed:
    exclude = set(kinds.header_addresses(msg, "To", "From"))
    found = notice.find_recipients(text, exclude, [e["address"] for e in entries])
    segs = notice.segments(text, found)
    out: list[Recipient] = []
    seen: set[str] = set()
    for e in entries[:MAX_RECIPIENTS]:
        if e["address"] in seen:
            continue
        seen.add(e["address"])
        seg = _own_block(segs.get(e["address"]) or segs.get(e.get("original", ""), ""))
        from_text = notice.describe(seg, e["address"]) if seg else {}
        diag = e["diagnostic"] or e["status_comment"] or from_text.get("diagnostic", "")
        status = e["status"]
        diag_status = e["diag_status"]
        if diag_status and (not status or _GENERIC_STATUS.match(status) or status[0] == diag_status[0]
                            or e["replycode"][:1] == diag_status[0]):
            # the code inside the remote reply wins, also over a Status: of another class when the reply's
            # own code agrees with it ("Status: 4.5.0", "550 5.5.0 ...")
            status = e["diag_status"]
        if not e["diag_status"] and (not status or _GENERIC_STATUS.match(status)):
            # no code in the Diagnostic-Code (none at all, or a local program's "X-Unix; 255"): the notice
            # text (a transcript's "554 5.3.0 unknown mailer error 255") is the only precise evidence
            specific = from_text.get("status", "")
            if specific and not _GENERIC_STATUS.match(specific):
                status = specific
        own = notice.own_error(seg, e["address"]) if seg and not e["diagnostic"] else ""
        if own and _SUMMARY_STATUS.match(status):
            diag, status = own, ""
        reply = e["replycode"] or dsn.reply_of(diag[:8]) or from_text.get("replycode", "")
        r = Recipient(address=e["address"], action=e["action"], status=status, replycode=reply,
                      diagnostic=" ".join(diag.split())[:1000], remote_mta=e["remote_mta"])
        _finish(r, context=seg, own_error=own)
        _reporting_mta_category(r, e["mta_category"])
        if e["diag_type"] == "x-unix" and _local_program_failed(r.status, diag):
            r.reason, r.kind = "mailererror", "soft"
        out.append(r)
    if all(r.action in _DONE_ACTIONS for r in out):
        for r in out:
            r.reason, r.kind = "delivered", ""
        return Parsed("delivered", out)
    return Parsed("bounce", [r for r in out if r.action not in _DONE_ACTIONS])


def _local_program_failed(status: str, diag: str) -> bool:
    """RFC 3464 "X-Unix; 71": the exit status of the local delivery program; a generic or protocol (X.5.Y)
    code cannot describe a program's exit, nor can X.3.0 when the text is only the exit's name or a number
    outside sysexits.h (EX_USAGE 64 .. EX_CONFIG 78 name system conditions; Sendmail calls any other exit an
    "unknown mailer error")."""
    if _LOCAL_EXIT_STATUS.match(status):
        return not reasons.by_text(diag)
    if status[1:] != ".3.0":
        return False
    diag = diag.strip()
    return bool(_EXIT_WORDS.match(diag)) or (diag.isdigit() and not 64 <= int(diag) <= 78)


def _own_block(seg: str) -> str:
    """A recipient's notice segment stops where the next recipient's DSN field block starts (a report whose
    MIME is broken is read as text: the segments would run into the next recipient's fields)."""
    m = _NEXT_BLOCK.search(seg, seg.find("\n") + 1) if seg else None
    return seg[:m.start()] if m else seg


def _from_notice(msg, text: str, pcs: message.Pieces) -> Parsed:
    exclude = set(kinds.header_addresses(msg, "To", "From", "Reply-To", "Sender"))
    exclude |= set(_returned_senders(pcs.returned))
    failed = [a.strip().strip("<>").lower() for a in str(msg.get("X-Failed-Recipients", "")).split(",")
              if "@" in a]
    found = notice.find_recipients(text, exclude, failed)
    if not found:
        found = [(a, text.lower().find(a)) for a in _flufl(msg) if a not in exclude]
    if not found:
        found = _labelled(text, exclude)
    guessed = not found
    if guessed:
        found = _returned_recipients(pcs, text, exclude)
    found = found[:MAX_RECIPIENTS]
    segs = notice.segments(text, found)
    local = _local_statuses(pcs, len(found))
    out = []
    for i, (addr, _pos) in enumerate(found):
        seg = segs.get(addr, text)
        d = notice.describe(seg, addr)
        d["status"] = d["status"] or local[i]
        if guessed and not d["replycode"]:
            # the notice names no recipient: only an "Error: ..." line of it is a diagnostic
            m_err = _ERROR_LINE.search(text)
            d["diagnostic"] = m_err.group(1).strip() if m_err else ""
        r = Recipient(address=addr, action="failed", status=d["status"], replycode=d["replycode"],
                      diagnostic=d["diagnostic"])
        m = _REMOTE.search(seg[:2000])
        if m:
            r.remote_mta = m.group(1)
        first = _lead_in_end(text, found)
        context = seg[:3000] + "\n" + text[max(0, first - 600):first]   # the lead-in explains a list too
        # a bare X.0.0 the server sent is reported as sent (a derived X.0.9NN only when it sent no code)
        own = notice.own_error(seg, addr) if not d["replycode"] else ""
        _finish(r, context=context, temporary=bool(_TEMPORARY.search(seg[:3000])), own_error=own)
        if _DELAY_NOTICE.search(seg[:3000] + text[:3000]):
            r.action = "delayed"     # a warning: the reporting MTA is still trying
        out.append(r)
    return Parsed("bounce", out)


def _lead_in_end(text: str, found: list[tuple[str, int]]) -> int:
    """Where the text before the first recipient ends: at its mention, or where the summary of the returned
    message that names it starts (the summary's "MAIL FROM:" / "RCPT TO:" labels are no SMTP dialogue)."""
    first = min((p for _a, p in found if p >= 0), default=0)
    summary = notice.summary_start(text, text.rfind("\n", 0, first) + 1)
    return summary if summary >= 0 else first


def _local_statuses(pcs: message.Pieces, count: int) -> list[str]:
    """The Status: of delivery-status blocks whose Final-Recipient is no address (Exim's local delivery to
    a mailbox file: ``rfc822;/var/mail/ann``), in order, when they pair one to one with the recipients the
    notice names; else no code for any."""
    blocks = [b for t in pcs.status for b in dsn.scan(t)[1]]
    if count and len(blocks) == count:
        return [dsn.status_of(b.get("status", "")) for b in blocks]
    return [""] * count


def _returned_recipients(pcs: message.Pieces, text: str, exclude: set[str]) -> list[tuple[str, int]]:
    """A report that names no recipient at all (Postfix's "Delivery report unavailable", old Sendmail's
    "Deferred: ... with example.com"): the returned original's To, when the report has a delivery-status
    part or names the recipient's domain. At most a few: a guess must not fan out."""
    out: list[tuple[str, int]] = []
    low = text.lower()
    quoted = _QUOTED_ORIGINAL.search(text)
    headers = pcs.returned or (text[quoted.end():quoted.end() + 2000] if quoted else "")
    for line in dsn.unfold(headers):
        if not line.lower().startswith("to:"):
            continue
        for addr in notice.addresses(line[3:])[:5]:
            domain = addr.rpartition("@")[2]
            if addr not in exclude and (pcs.status or re.search(rf"\b{re.escape(domain)}\b", low)):
                out.append((addr, -1))
        break
    return out


def _labelled(text: str, exclude: set[str]) -> list[tuple[str, int]]:
    """'recipient: a@b', 'target address: a@b', 'failed address: a@b' style lines."""
    rx = re.compile(r"(?:recipient|address|adresse|destinat\w*|empf\w*)[^:\n]{0,30}:\s*<?("
                    + notice.ADDR + ")", re.I)
    out: list[tuple[str, int]] = []
    for m in rx.finditer(text):
        addr = m.group(1).lower()
        if addr not in exclude and addr not in dict(out):
            out.append((addr, m.start(1)))
    return out


def _returned_senders(returned: str) -> list[str]:
    out = []
    for line in dsn.unfold(returned):
        if line.lower().startswith(("from:", "return-path:", "sender:", "message-id:", "in-reply-to:",
                                    "references:")):
            out.extend(notice.addresses(line))
    return out


def _flufl(msg) -> list[str]:
    try:
        from flufl.bounce import all_failures
        temp, perm = all_failures(msg)
    except Exception:  # noqa: BLE001 - the fallback must never take the parser down
        return []
    out = []
    for a in sorted(perm | temp):
        s = a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a)
        if "@" in s and not notice.NOT_RECIPIENT.match(s.strip("<>")):
            out.append(s.strip("<>").lower())
    return out


def _finish(r: Recipient, context: str, temporary: bool = False, own_error: str = "") -> None:
    """Status, reason and kind of one recipient. ``own_error``: the error the notice prints on the
    recipient's own line without any code (``a@b: Envelope expired``); a code derived for it takes its
    class from those words alone, not from the report's remarks about itself ("this is only a temporary
    failure report", ``Action: delayed``): the convention of the Sisimai vocabulary."""
    r.status = dsn.more_specific(r.status, r.diagnostic + "\n" + context[:2000])
    r.reason = reasons.classify(r.diagnostic, r.status, r.action, context)
    if r.reason in ("undefined", "onhold"):
        r.reason = reasons.by_provider(r.address) or r.reason
    if own_error:
        temporary = bool(_TEMPORARY_WORDS.search(own_error))
    else:
        temporary = (temporary or r.status[:1] == "4" or (not r.status and r.replycode[:1] == "4")
                     or r.action == "delayed")
    if (r.reason == "userunknown" and not r.status and not r.replycode
            and reasons.codeless_unknown_unproven(r.diagnostic, context)):
        r.reason = "filtered"       # no code, no command, no directory lookup: the words prove nothing
    if not r.status:
        r.status = reasons.pseudo_status(r.reason, temporary)
        if _AFTER_MAIL_FROM.search(r.diagnostic[:500] + "\n" + context[:3000]):
            # Exim's "SMTP error from remote mail server after MAIL FROM:<...>": the recipient was never
            # offered, nothing is known about it: the derived code is "on hold" (X.0.901), the reason
            # says why the transaction failed
            r.status = reasons.pseudo_status("onhold", temporary)
    r.kind = reasons.kind(r.reason, r.status, r.replycode)


def _reporting_mta_category(r: Recipient, category: str) -> None:
    """PowerMTA states its own classification of the reply (``X-PowerMTA-BounceCategory: bad-mailbox``): it
    settles what the words leave open (a "user unknown" without proof of the command, a text no rule
    explains), never overrides a cause the words or the code name."""
    reason = reasons.MTA_CATEGORIES.get(category, "")
    if reason and r.reason in ("filtered", "userunknown", "onhold", "undefined") and reason != r.reason:
        r.reason = reason
        r.kind = reasons.kind(r.reason, r.status, r.replycode)


def _correlation(raw: bytes, result: Parsed, _unused) -> None:
    raw = message.normalize_newlines(raw)
    head_end = message.body_offset(raw)
    body = raw[head_end:message.MAX_RAW] if head_end >= 0 else b""
    m = _RELAYBOX_ID.search(body)
    if m:
        result.relaybox_id = m.group(1).decode("ascii")
    text = body.decode("utf-8", "replace")
    m2 = _MSGID.search(text)
    if m2:
        result.original_message_id = m2.group(1)
