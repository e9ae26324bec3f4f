"""Messages that are not bounces but come back to a bounce address: ARF complaints and auto-replies.

RFC 5965 feedback reports (``multipart/report; report-type=feedback-report``) are complaints: the address
that complained comes from ``Original-Rcpt-To`` or the returned message's ``To``. RFC 3834 auto-replies
(``Auto-Submitted: auto-replied``, the de-facto ``X-Autoreply``/``X-Autorespond``/``Precedence:
auto_reply`` headers, vacation subjects) are neither bounces nor complaints.
"""

from __future__ import annotations

import email.header
import email.utils
import re
from email.message import Message

from relay.bounces.dsn_fields import address_of, unfold
from relay.bounces.notice import FAILED_TO, addresses

_AUTO_SUBJECT = re.compile(
    r"^(?:auto(?:matic)?[ -]?(?:reply|response|antwort|risposta|respuesta|r[eé]ponse)|autoreply|"
    r"out of (?:the )?office|vacation|away from|abwesenheit|absence|on leave|i am away|"
    r"away until|ooo\b|auto:)", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery (?:status|failure|failed|notification|report|problem)|returned mail|"
    r"failure notice|mail delivery|non.?delivery|could not be delivered|undelivered|"
    r"delivery has failed|mail system error|rejected|bounce|warning: could not send|"
    r"unzustellbar|no entregado|non recapitabile|non remis|error sending|failed delivery|"
    r"message not delivered|not delivered", re.I)


_REPLY_LINE = re.compile(r"^\s*[45]\d\d[ -]", re.M)
_BOUNCE_TEXT = re.compile(
    r"requested action not taken|could not be delivered|undeliverable|was not delivered|"
    r"permanent (?:error|failure)|"
    r"delivery (?:has )?failed|failed to deliver|unable to deliver|did not reach|rejected your message|"
    r"no such user|user unknown|invalid (?:user|recipient)", re.I)


def header_addresses(msg: Message, *names: str) -> list[str]:
    out = []
    for name in names:
        for value in msg.get_all(name, []) or []:
            for _, addr in email.utils.getaddresses([str(value)]):
                if "@" in addr:
                    out.append(addr.strip("<>").lower())
    return out


def feedback_recipients(feedback: str, returned: str) -> tuple[list[str], dict[str, str]]:
    fields: dict[str, str] = {}
    rcpts: list[str] = []
    for line in unfold(feedback):
        if ":" not in line:
            continue
        name, value = line.split(":", 1)
        name = name.strip().lower()
        fields.setdefault(name, value.strip())
        if name in ("original-rcpt-to", "removal-recipient", "x-hmxmroriginalrecipient"):
            addr = address_of(value)
            if addr and addr not in rcpts:
                rcpts.append(addr)
    if not rcpts and returned:
        for line in unfold(returned):
            if line.lower().startswith("x-hmxmroriginalrecipient:"):
                rcpts = addresses(line.split(":", 1)[1])[:1]
                break
    if not rcpts and returned:
        for line in unfold(returned):
            if line.lower().startswith("to:"):
                rcpts = [a for a in addresses(line[3:])][:50]
                break
    return rcpts, fields


def is_unsubscribe(msg: Message) -> bool:
    """A one-click unsubscribe sent by a mail client on the user's behalf: an opt-out, like a complaint."""
    if str(msg.get("X-Apple-Unsubscribe", "")).strip().lower() == "true":
        return True
    return subject(msg).strip().lower() == "unsubscribe" and not msg.is_multipart()


def complaint_subject(msg: Message) -> bool:
    """Non-ARF complaint loops (e.g. Microsoft JMRP) mail the complained message with such a subject."""
    return bool(re.search(r"complaint about message|abuse report|spam report|"
                          r"junk report", subject(msg), re.I))


def is_autoreply(msg: Message) -> bool:
    auto = str(msg.get("Auto-Submitted", "")).strip().lower()
    if auto.startswith("auto-replied"):
        return True
    if msg.get("X-Autoreply") or msg.get("X-Autorespond") or msg.get("X-Autoresponder"):
        return True
    if str(msg.get("Precedence", "")).strip().lower() == "auto_reply":
        return True
    if str(msg.get("X-Auto-Response-Suppress", "")) and _AUTO_SUBJECT.search(subject(msg)):
        return True
    return bool(_AUTO_SUBJECT.search(subject(msg)))


def subject(msg: Message) -> str:
    raw = str(msg.get("Subject", "") or "")
    try:
        parts = email.header.decode_header(raw)
        text = "".join(p.decode(c or "utf-8", errors="replace") if isinstance(p, bytes) else p
                       for p, c in parts)
    except Exception:  # noqa: BLE001
        text = raw
    return " ".join(text.split())[:300]


def looks_like_bounce(msg: Message, notice: str) -> bool:
    """Weak signals that a message without a delivery-status part is a non-delivery notice."""
    sender = " ".join(header_addresses(msg, "From", "Return-Path", "Sender"))
    if re.search(r"(?:^|\s)(?:mailer-daemon|postmaster|mail-daemon|maildaemon)@", sender, re.I):
        return True
    if str(msg.get("Return-Path", "")).strip() == "<>":
        return True
    if msg.get("X-Failed-Recipients"):
        return True
    if _BOUNCE_SUBJECT.search(subject(msg)):
        return True
    # no header says so, but the text carries an SMTP error reply and a non-delivery phrase, or a
    # non-delivery phrase naming the address ("Could not be delivered to: <a@b>")
    head = notice[:20000]
    return bool(_REPLY_LINE.search(head) and _BOUNCE_TEXT.search(head)) or bool(FAILED_TO.search(head))



# A mailing-list manager refusing a post to the list (fml's notices, marked by its ``X-MLServer: fml``
# header): the list is the recipient that refused the message, the poster gets the notice
_FML = re.compile(r"^\s*fml\b", re.I)
_LIST_REFUSALS = [
    ("rejected", re.compile(r"\bnot (?:a )?member|members? only|only members|not allowed to post|"
                            r"(?:post|submission)s? (?:is |are )?(?:restricted|rejected|denied|not allowed)",
                            re.I)),
    ("systemerror", re.compile(r"loop alert|duplicated message-id|mail loop|looped", re.I)),
    ("mesgtoobig", re.compile(r"too (?:big|large)|size limit|exceeds? (?:the )?(?:size|limit)", re.I)),
]
_ANGLED = re.compile(r"<([^\s<>@]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,})>")


def list_refusal(msg: Message, notice: str) -> tuple[str, str, str] | None:
    """(list address, reason, diagnostic) when ``msg`` is a list manager's refusal of a post, else None."""
    if not _FML.match(str(msg.get("X-MLServer", "") or "")):
        return None
    text = "\n".join([subject(msg), notice[:4000]])
    reason = next((name for name, rx in _LIST_REFUSALS if rx.search(text)), "")
    poster = set(header_addresses(msg, "To", "From"))
    listed = next((a.lower() for a in _ANGLED.findall(text) if a.lower() not in poster
                   and not re.search(r"-(?:admin|ctl|request|owner|help)@", a.lower())), "")
    if not reason or not listed:
        return None
    first = next((ln.strip() for ln in notice.splitlines() if ln.strip()), "")
    return listed, reason, " ".join(first.split())[:300]
