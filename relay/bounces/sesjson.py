"""Amazon SES notifications delivered as JSON (directly or wrapped in an SNS envelope) by e-mail.

SES documents the format: ``notificationType`` (or ``eventType``) Bounce | Complaint | Delivery, with
``bounce.bouncedRecipients`` [{emailAddress, action, status, diagnosticCode}], ``bounce.bounceType``
Permanent | Transient, ``complaint.complainedRecipients``, ``delivery.recipients``.
"""

from __future__ import annotations

import json
from typing import Any

MAX_JSON = 256_000


def _load(text: str) -> Any:
    try:   # the notification may be followed by a signature text: read the first JSON value only
        return json.JSONDecoder(strict=False).raw_decode(text)[0]
    except (ValueError, RecursionError):
        return None


def notification(body: str) -> dict | None:
    """The SES notification object in ``body``, or None."""
    text = body.strip()
    if not text.startswith("{") or len(text) > MAX_JSON or "Type" not in text:
        return None
    obj = _load(text)
    if isinstance(obj, dict) and isinstance(obj.get("Message"), str):   # SNS envelope
        inner = _load(obj["Message"])
        obj = inner if isinstance(inner, dict) else obj
    if not isinstance(obj, dict):
        return None
    kind = obj.get("notificationType") or obj.get("eventType")
    return obj if kind in ("Bounce", "Complaint", "Delivery") else None


def entries(obj: dict) -> tuple[str, list[dict[str, str]]]:
    """(category, per-recipient dicts with address/action/status/diagnostic/remote_mta)."""
    kind = obj.get("notificationType") or obj.get("eventType")
    out: list[dict[str, str]] = []
    if kind == "Bounce":
        b = obj.get("bounce") or {}
        for r in (b.get("bouncedRecipients") or [])[:1000]:
            if isinstance(r, dict) and "@" in str(r.get("emailAddress", "")):
                out.append({"address": str(r["emailAddress"]).lower(),
                            "action": str(r.get("action") or "failed"),
                            "status": str(r.get("status") or ""),
                            "diagnostic": str(r.get("diagnosticCode") or ""),
                            "remote_mta": str(b.get("reportingMTA") or "")})
        return "bounce", out
    if kind == "Complaint":
        c = obj.get("complaint") or {}
        for r in (c.get("complainedRecipients") or [])[:1000]:
            if isinstance(r, dict) and "@" in str(r.get("emailAddress", "")):
                out.append({"address": str(r["emailAddress"]).lower(), "action": "", "status": "",
                            "diagnostic": str(c.get("complaintFeedbackType") or ""), "remote_mta": ""})
        return "feedback", out
    d = obj.get("delivery") or {}
    for addr in (d.get("recipients") or [])[:1000]:
        if "@" in str(addr):
            out.append({"address": str(addr).lower(), "action": "delivered", "status": "2.0.0",
                        "diagnostic": str(d.get("smtpResponse") or ""), "remote_mta": ""})
    return "delivered", out
