"""Outgoing delivery status notifications (RFC 3464 multipart/report; RFC 3461 for the fields we use).

When recipients end ``bounced`` or ``failed`` (expired, null MX, suppressed, invalid...), the envelope sender
gets one report per message per delivery round, listing those recipients with their status code and the
remote server's reply. Never to ``<>`` (a bounce of a bounce), never for a message that is itself a report.
The report is enqueued with the spool like any message (envelope sender ``<>``), so it is durable and
retried like everything else. Optionally (``delivery.delay_notice``) a "delayed" report goes out once per
message when recipients are still deferred ``delivery.delay_notice_after`` after acceptance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime, make_msgid

from relay import rfc5322
from relay.envelope import NewMessage, address_error
from store.records import Message

FAILED_SUBJECT = "Undelivered Mail Returned to Sender"
DELAYED_SUBJECT = "Delayed Mail (still being retried)"


@dataclass
class FailedRecipient:
    address: str
    status: str                 # bounced | failed
    enhanced: str | None        # e.g. 5.1.1
    code: int | None            # SMTP reply code from the remote, when there was one
    text: str | None            # the reply / our reason
    remote_mta: str | None = None
    reason: str | None = None   # expired, nullmx, suppressed, invalid, poison


def should_notify(message: Message) -> bool:
    sender = message.sender or ""
    if not sender or address_error(sender):
        return False
    return not sender.lower().startswith(("mailer-daemon@", "postmaster@"))


def _status_code(r: FailedRecipient) -> str:
    if r.enhanced and r.enhanced[0] in "45":
        return r.enhanced
    return {"expired": "4.4.7", "nullmx": "5.1.10", "suppressed": "5.7.1", "invalid": "5.1.3"}.get(
        r.reason or "", "5.0.0")


def _clean(s: str | None) -> str:
    return " ".join((s or "").split())


def _reply(r: FailedRecipient) -> str:
    return _clean(" ".join(str(x) for x in (r.code, r.enhanced, r.text) if x))


def build(message: Message, recipients: list[FailedRecipient], original: bytes | None, *,
          reporting_mta: str, now: float | None = None, action: str = "failed") -> bytes:
    """The report as bytes (CRLF), addressed to the message's envelope sender. ``action`` is "failed"
    (bounced/failed recipients) or "delayed" (a delay notice: still being retried)."""
    delayed = action == "delayed"
    now = time.time() if now is None else now
    date = format_datetime(datetime.fromtimestamp(now, timezone.utc))
    arrival = format_datetime(datetime.fromtimestamp(float(message.created_at or now), timezone.utc))
    boundary = f"=_relaybox_{message.id}_{int(now)}"
    daemon = f"MAILER-DAEMON@{reporting_mta}"
    lines = [
        f"From: Mail Delivery System <{daemon}>",
        f"To: <{message.sender}>",
        f"Subject: {DELAYED_SUBJECT if delayed else FAILED_SUBJECT}",
        f"Date: {date}",
        f"Message-ID: {make_msgid('dsn', reporting_mta)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"This is the mail system at host {reporting_mta}.",
        "",
        ("Your message has not been delivered yet to the recipients below; the mail system will keep"
         " trying." if delayed else "Your message could not be delivered to one or more recipients."),
        f"Queue id: {message.id}",
        "",
    ]
    for r in recipients:
        why = _reply(r) if r.code else _clean(r.text or r.reason)
        lines.append(f"<{r.address}>: {why}")
    lines += ["", f"--{boundary}", "Content-Type: message/delivery-status", "",
              f"Reporting-MTA: dns; {reporting_mta}", f"X-Relaybox-Queue-ID: {message.id}",
              f"Arrival-Date: {arrival}", ""]
    for r in recipients:
        lines += [f"Final-Recipient: rfc822; {r.address}", f"Action: {action}", f"Status: {_status_code(r)}"]
        if r.remote_mta:
            lines.append(f"Remote-MTA: dns; {r.remote_mta}")
        if r.code:
            lines.append(f"Diagnostic-Code: smtp; {_reply(r)}")
        elif r.text or r.reason:
            lines.append(f"Diagnostic-Code: x-relaybox; {_clean(r.text or r.reason)}")
        lines.append(f"Last-Attempt-Date: {date}")
        lines.append("")
    lines += [f"--{boundary}", "Content-Type: text/rfc822-headers", ""]
    if original:
        block, _, _ = rfc5322.split(original)
        for name, raw in rfc5322.fields(block):
            if name:
                lines.extend(raw.decode("utf-8", "replace").replace("\r\n", "\n").rstrip("\n").split("\n"))
    else:
        lines.append(f"X-Relaybox-Note: body of {message.id} no longer retained")
    lines += ["", f"--{boundary}--", ""]
    return "\r\n".join(lines).encode("utf-8")


def new_message(message: Message, recipients: list[FailedRecipient], original: bytes | None, *,
                reporting_mta: str, now: float | None = None, action: str = "failed") -> NewMessage | None:
    """The DSN ready for ``Spool.enqueue``, or None when no report must be sent."""
    if not recipients or not should_notify(message):
        return None
    body = build(message, recipients, original, reporting_mta=reporting_mta, now=now, action=action)
    return NewMessage(sender="", recipients=[message.sender], body=body,
                      from_header=f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
                      subject=DELAYED_SUBJECT if action == "delayed" else FAILED_SUBJECT)
