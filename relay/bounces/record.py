"""Effects of an inbound report: correlate it, record it, mark the recipient, update the suppression list.

Entry points (all bounces go through ``relay.bounces.parse``):
- ``await process(bounces, cfg, raw, source=..., rcpt=None, raw_ref=None)``: parse (in a thread) and record
  through ``store.bounces`` (one atomic write: correlation, bounces rows, recipient -> bounced, suppression).
  ``source`` is ``smtp`` (the listener accepted it for ``bounces.domain``; ``rcpt`` is the VERP address),
  ``channel`` (a poller bounce channel; VERP addresses are also looked for in Delivered-To/X-Original-To/To).
- ``make_sink(bounces, relay_cfg)`` -> ``async sink(raw, *, raw_ref=None, rcpt=None)`` for the poller.
- ``report_of(parsed)``: the parser's result as the store's ``Report`` record.
- ``from_reply(address, code, enhanced, text, stage=None)``: a Parsed for a synchronous 5xx at delivery
  (source ``delivery``: recorded and counted for suppression; the spool already marked the recipient).
- ``delivery_failure(queue_id, recipient_id, address, code, enhanced, text, reason, remote_mta, stage=,
  transcript=)``: the same for every recipient the scheduler ends bounced or failed (a 5xx, an expiry, a
  suppressed or invalid address), as the ``store.bounces.DeliveryFailure`` that
  ``store.bounces.complete_delivery`` records in the write of the results. The SMTP stage of the refusal
  (given, or read from the attempt's transcript) decides what the reply's words may mean. Local refusals
  keep their own reason (``expired``, ``suppressed``, ``syntaxerror``); a refusal because the address is
  suppressed or unusable does not count again.

Correlation (in ``store.bounces``): a VERP token (HMAC-verified here) first; else ``X-Relaybox-ID`` of the
returned headers; else the original Message-ID matched against ``messages.message_id``. Header correlation
only counts when the failed address is a recipient of that message, so a forged report cannot touch an
arbitrary address; uncorrelated reports are recorded (for admins) but change nothing.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import json
import logging
from typing import Any, Awaitable, Callable, Mapping, Sequence

from relay.bounces import Parsed, Recipient, parse, verp
from relay.bounces import reasons as _reasons
from store.bounces import BounceStore, DeliveryFailure, Recorded, Report, ReportLine
from store.suppressions import Rules

log = logging.getLogger("relay.bounces")


def rules_of(cfg: Any) -> Rules:
    """The suppression rules of a BouncesConfig (defaults when there is none)."""
    if cfg is None:
        return Rules()
    return Rules(cfg.soft_limit, float(cfg.soft_window), float(cfg.hard_suppress_for))


def report_of(parsed: Parsed) -> Report:
    lines = tuple(ReportLine(r.address, r.action, r.status, r.replycode, r.diagnostic, r.remote_mta, r.reason,
                             r.kind) for r in parsed.recipients)
    return Report(parsed.category, lines,
                  parsed.problem, parsed.relaybox_id, parsed.original_message_id, parsed.feedback_type)


# the delivery engine's stages (DeliveryError.stage) -> the SMTP command a reply answered, as the parser
# names it; a stage that is no command of the envelope (dns, starttls, auth) says nothing about the address
STAGE_COMMANDS = {"rcpt": "RCPT", "mail": "MAIL", "data": "DATA", "connect": "CONN", "greeting": "CONN",
                  "ehlo": "HELO", "helo": "HELO"}
_TRANSCRIPT_STAGES = (("MAIL FROM:", "mail"), ("RCPT TO:", "rcpt"), ("DATA", "data"), ("<", "data"),
                      ("EHLO ", "ehlo"), ("HELO ", "ehlo"), ("connect ", "greeting"),
                      ("STARTTLS", "starttls"), ("AUTH ", "auth"), ("RSET", "rset"))


def stage_in_transcript(transcript: Sequence[Mapping[str, Any]], address: str,
                        code: int | None) -> str | None:
    """The stage whose reply refused ``address`` with ``code``, read from an attempt's transcript (lines
    ``{"dir": "C"|"S", "line": ...}``): the command sent before the last final reply with that code; a RCPT
    only when it named this address, and a recipient refused at RCPT took no part in the DATA that
    followed. Each ``connect`` (the next host) starts over. None when no such reply is there."""
    if not code:
        return None
    want, found, stage, rcpt, refused = str(code), None, None, "", False
    addr = (address or "").lower()
    for entry in transcript:
        line = str(entry.get("line", ""))
        if entry.get("dir") == "C":
            stage = next((name for prefix, name in _TRANSCRIPT_STAGES if line.startswith(prefix)), stage)
            rcpt = line[8:].strip().strip("<>").lower() if stage == "rcpt" else ""
            if stage == "greeting":
                found, refused = None, False
            continue
        if line[:3] != want or line[3:4] not in (" ", "") or stage == "rset":
            continue
        if stage == "rcpt":
            if rcpt == addr:
                found, refused = "rcpt", True
        elif not refused:
            found = stage
    return found


def from_reply(address: str, code: int | None, enhanced: str | None, text: str | None,
               stage: str | None = None) -> Parsed:
    """A Parsed for a synchronous rejection at delivery (the reply is the diagnostic). ``stage`` is the
    delivery stage that got it (``rcpt``, ``mail``, ``data``, ``connect``, ...): the command decides what
    the words may mean (a "user unknown" at DATA or MAIL is no unknown address)."""
    status = enhanced or ""
    r = Recipient(address=address.lower(), action="failed", status=status,
                  replycode=str(code) if code else "", diagnostic=(text or "")[:1000])
    r.reason = _reasons.classify(r.diagnostic, status, r.action, command=STAGE_COMMANDS.get(stage or "", ""))
    if not r.status:
        r.status = _reasons.pseudo_status(r.reason, r.replycode.startswith("4"))
    r.kind = _reasons.kind(r.reason, r.status, r.replycode)
    return Parsed("bounce", [r])


# local refusals of the scheduler (RecipientResult.reason) -> (bounce reason, kind, counts for suppression)
LOCAL_REFUSALS = {"expired": ("expired", "soft", True), "suppressed": ("suppressed", "hard", False),
                  "invalid": ("syntaxerror", "hard", False)}


def delivery_failure(queue_id: str, recipient_id: int, address: str, code: int | None, enhanced: str | None,
                     text: str | None, reason: str | None = None, remote_mta: str = "", *,
                     stage: str | None = None,
                     transcript: Sequence[Mapping[str, Any]] = ()) -> DeliveryFailure:
    """A bounced/failed recipient of the delivery engine as a bounce of source ``delivery``. The stage of
    the refusal is ``stage`` when the caller has it, else read from the attempt's ``transcript``."""
    if stage is None and transcript:
        stage = stage_in_transcript(transcript, address, code)
    r = from_reply(address, code, enhanced, text, stage).recipients[0]
    counts = True
    if reason in LOCAL_REFUSALS:
        r.reason, r.kind, counts = LOCAL_REFUSALS[reason]
    r.remote_mta = remote_mta or ""
    report = Report("bounce", (ReportLine(r.address, r.action, r.status, r.replycode, r.diagnostic,
                                          r.remote_mta, r.reason, r.kind),))
    return DeliveryFailure(report, queue_id, recipient_id, counts and "@" in r.address)


# ---- async entry points -------------------------------------------------------------------------------
def _verp_candidates(raw: bytes, rcpt: str | None) -> list[str]:
    out = [rcpt] if rcpt else []
    try:
        head = raw[:64 * 1024]
        end = head.find(b"\n\n")
        msg = email.message_from_bytes(head[:end] if end > 0 else head, policy=email.policy.compat32)
        for name in ("Delivered-To", "X-Original-To", "Envelope-To", "To"):
            for value in msg.get_all(name, []) or []:
                out.extend(a for _, a in email.utils.getaddresses([str(value)]) if "+" in a)
    except Exception:  # noqa: BLE001 - headers are a hint only
        pass
    return out


def resolve_target(cfg: Any, raw: bytes, rcpt: str | None) -> verp.VerpTarget | None:
    """The recipient named by a valid VERP address among ``rcpt`` and the delivery headers."""
    keys = verp.load_secrets(cfg) if cfg is not None and cfg.domain else []
    if not keys:
        return None
    for addr in _verp_candidates(raw, rcpt):
        target = verp.decode(addr, secrets=keys, domain=cfg.domain)
        if target is not None:
            return target
    return None


def for_bounce_domain(cfg: Any, address: str) -> bool:
    """True when ``address`` is in ``bounces.domain``: the listener hands such mail to ``process`` (it must
    never be queued for relaying: relaybox is the MX of that domain)."""
    domain = getattr(cfg, "domain", "") if cfg is not None else ""
    return bool(domain) and (address or "").strip("<> ").rpartition("@")[2].lower().rstrip(".") == \
        domain.lower().rstrip(".")


async def process(bounces: BounceStore, cfg: Any, raw: bytes, *, source: str, rcpt: str | None = None,
                  raw_ref: str | None = None) -> Recorded:
    """Parse ``raw`` off the event loop and record it durably. ``cfg`` is the BouncesConfig."""
    if cfg is not None and not getattr(cfg, "dsn", True):
        parsed = Parsed("unknown", problem="bounce parsing disabled (bounces.dsn = false)")
    else:
        parsed = await asyncio.to_thread(parse, raw)
    target = resolve_target(cfg, raw, rcpt)
    outcome = await bounces.record(report_of(parsed), source=source,
                                   target=(target.queue_id, target.recipient_id) if target else None,
                                   rules=rules_of(cfg), raw=raw, raw_ref=raw_ref)
    log.info("inbound report: category=%s source=%s correlation=%s effects=%s", outcome.category, source,
             outcome.correlation or "none", json.dumps([e.effect for e in outcome.effects]))
    return outcome


Sink = Callable[..., Awaitable[Recorded]]


def make_sink(bounces: BounceStore, relay_cfg: Any) -> Sink:
    """For the poller's bounce channels: ``await sink(raw, raw_ref=..., rcpt=None) -> Recorded``."""
    cfg = getattr(relay_cfg, "bounces", relay_cfg)

    async def sink(raw: bytes, *, raw_ref: str | None = None, rcpt: str | None = None) -> Recorded:
        return await process(bounces, cfg, raw, source="channel", rcpt=rcpt, raw_ref=raw_ref)

    return sink
