"""Effects of an inbound report: correlate it, record it, mark the recipient, update the suppression list.

Entry points (all bounces go through ``relay.bounces.parse``):
- ``await process(db, cfg, raw, source=..., rcpt=None, raw_ref=None)``: parse (in a thread) and record.
  ``source`` is ``smtp`` (the listener accepted it for ``bounces.domain``; ``rcpt`` is the VERP address),
  ``channel`` (a poller bounce channel; VERP addresses are also looked for in Delivered-To/X-Original-To/To).
- ``make_sink(db, relay_cfg)`` -> ``async sink(raw, *, raw_ref=None, rcpt=None)`` for the poller.
- ``record_bounce(conn, parsed, ...)``: the database part, run inside ``db.write`` so it is atomic.
- ``from_reply(address, code, enhanced, text)``: a Parsed for a synchronous 5xx at delivery (source
  ``delivery``: recorded and counted for suppression; the spool already marked the recipient).

Correlation: a VERP token (HMAC-verified) first; else ``X-Relaybox-ID`` of the returned headers; else the
original Message-ID matched against ``messages.message_id``. Header correlation only counts when the
failed address is a recipient of that message, so a forged report cannot touch an arbitrary address;
uncorrelated reports are recorded (for admins) but change nothing.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from relay.bounces import Parsed, Recipient, parse, suppression, verp
from relay.bounces import reasons as _reasons
from relay.spool.spool import add_event

log = logging.getLogger("relay.bounces")

RAW_KEEP = 64 * 1024          # bytes of an unparsed report kept in bounces.raw
_FINAL_UNTOUCHED = ("cancelled",)


@dataclass
class Settings:
    soft_limit: int = 5
    soft_window: float = 7 * 86400
    hard_for: float = 30 * 86400

    @classmethod
    def of(cls, cfg: Any) -> "Settings":
        if cfg is None:
            return cls()
        return cls(cfg.soft_limit, float(cfg.soft_window), float(cfg.hard_suppress_for))


@dataclass
class Outcome:
    category: str
    correlation: str = ""                          # verp | relaybox-id | message-id | delivery | ''
    rows: list[dict[str, Any]] = field(default_factory=list)   # one per recorded bounces row


def from_reply(address: str, code: int | None, enhanced: str | None, text: str | None) -> Parsed:
    """A Parsed for a synchronous rejection at delivery (the reply is the diagnostic)."""
    status = enhanced or ""
    r = Recipient(address=address.lower(), action="failed", status=status,
                  replycode=str(code) if code else "", diagnostic=(text or "")[:1000])
    r.reason = _reasons.classify(r.diagnostic, status, r.action)
    if not r.status:
        r.status = _reasons.pseudo_status(r.reason, r.replycode.startswith("4"))
    r.kind = _reasons.kind(r.reason, r.status, r.replycode)
    return Parsed("bounce", [r])


# ---- correlation --------------------------------------------------------------------------------------
def _recipient_by_id(conn, target: verp.VerpTarget) -> sqlite3.Row | None:
    return conn.execute("SELECT id, message_id, address, status FROM recipients WHERE id=? AND message_id=?",
                        (target.recipient_id, target.queue_id)).fetchone()


def _message_ids(conn, parsed: Parsed) -> tuple[list[str], str]:
    if parsed.relaybox_id:
        row = conn.execute("SELECT id FROM messages WHERE id=?", (parsed.relaybox_id.upper(),)).fetchone()
        if row:
            return [row["id"]], "relaybox-id"
    if parsed.original_message_id:
        rows = conn.execute("SELECT id FROM messages WHERE message_id=? ORDER BY created_at DESC LIMIT 20",
                            (parsed.original_message_id,)).fetchall()
        if rows:
            return [r["id"] for r in rows], "message-id"
    return [], ""


def _recipient_in(conn, message_ids: list[str], address: str) -> sqlite3.Row | None:
    for mid in message_ids:
        row = conn.execute("SELECT id, message_id, address, status FROM recipients WHERE message_id=?"
                           " AND lower(address)=? ORDER BY id DESC LIMIT 1",
                           (mid, address.lower())).fetchone()
        if row:
            return row
    return None


# ---- recording ----------------------------------------------------------------------------------------
def _insert(conn, now: float, r: Recipient | None, parsed: Parsed, rcpt_row, source: str, correlation: str,
            raw_ref: str | None, raw: bytes | None) -> int:
    keep_raw = raw[:RAW_KEEP] if (raw is not None and parsed.category == "unknown") else None
    cur = conn.execute(
        "INSERT INTO bounces(at, message_id, recipient_id, address, category, action, reason, kind, status,"
        " replycode, diagnostic, remote_mta, source, correlation, effect, raw_ref, unparsed, raw)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (now, rcpt_row["message_id"] if rcpt_row else None, rcpt_row["id"] if rcpt_row else None,
         (r.address if r else "").lower(), parsed.category, r.action if r else "", r.reason if r else "",
         r.kind if r else "", r.status if r else "", r.replycode if r else "",
         (r.diagnostic if r else "")[:2000], (r.remote_mta if r else "")[:255], source,
         correlation if rcpt_row else "", "", raw_ref, parsed.problem or "", keep_raw))
    return int(cur.lastrowid)


def _mark_bounced(conn, now: float, rcpt_row, r: Recipient, bounce_id: int, source: str) -> bool:
    if rcpt_row["status"] in _FINAL_UNTOUCHED:
        return False
    code = int(r.replycode) if r.replycode.isdigit() else None
    text = r.diagnostic[:1000] or None
    if rcpt_row["status"] == "bounced":
        prev = conn.execute("SELECT last_enhanced, last_text FROM recipients WHERE id=?",
                            (rcpt_row["id"],)).fetchone()
        if prev and prev["last_enhanced"] == (r.status or None) and prev["last_text"] == text:
            return False          # the same report twice (re-fetched, duplicated): one event is enough
    conn.execute("UPDATE recipients SET status='bounced', reason=?, last_code=?, last_enhanced=?,"
                 " last_text=?, leased_until=NULL, lease_owner=NULL, updated_at=? WHERE id=?",
                 (r.reason, code, r.status or None, text, now, rcpt_row["id"]))
    add_event(conn, now, rcpt_row["message_id"], rcpt_row["id"], "bounced", "bounce", r.reason,
              {"status": r.status, "replycode": r.replycode, "diagnostic": r.diagnostic[:1000],
               "remote_mta": r.remote_mta, "kind": r.kind, "action": r.action, "source": source,
               "bounce_id": bounce_id, "previous": rcpt_row["status"]})
    return True


def _effect(conn, now: float, parsed: Parsed, r: Recipient, rcpt_row, bounce_id: int, source: str,
            st: Settings) -> str:
    if rcpt_row is None:
        return "uncorrelated"
    if parsed.category == "feedback":
        add_event(conn, now, rcpt_row["message_id"], rcpt_row["id"], "complained", "bounce", "feedback",
                  {"feedback_type": parsed.feedback_type, "bounce_id": bounce_id, "source": source})
        return suppression.apply_complaint(conn, r.address, now=now, bounce_id=bounce_id)
    if parsed.category != "bounce":
        return "ignored"
    if r.action == "delayed":
        return "delayed"
    marked = source != "delivery" and _mark_bounced(conn, now, rcpt_row, r, bounce_id, source)
    effect = suppression.apply_bounce(conn, r.address, r.reason, r.kind, now=now, soft_limit=st.soft_limit,
                                      soft_window=st.soft_window, hard_for=st.hard_for, bounce_id=bounce_id)
    return f"bounced+{effect}" if marked else effect


def record_bounce(conn: sqlite3.Connection, parsed: Parsed, *, source: str, now: float | None = None,
                  target: verp.VerpTarget | None = None, settings: Settings | Any = None,
                  raw: bytes | None = None, raw_ref: str | None = None) -> Outcome:
    """Record one parsed report and apply its effects; run inside ``db.write`` (one atomic unit).

    ``target`` is the recipient a verified VERP token names (or, for source ``delivery``, the recipient
    the delivery engine rejected). ``settings``: a ``Settings`` or a ``BouncesConfig``.
    """
    now = time.time() if now is None else now
    st = settings if isinstance(settings, Settings) else Settings.of(settings)
    out = Outcome(parsed.category)
    recipients = list(parsed.recipients)
    pairs: list[tuple[Recipient | None, Any]] = []
    if target is not None:
        row = _recipient_by_id(conn, target)
        out.correlation = ("delivery" if source == "delivery" else "verp") if row else ""
        if row is not None and recipients:
            # the envelope names the recipient; the report says why (a forwarded address may differ)
            same = [r for r in recipients if r.address == row["address"].lower()]
            first = same[0] if same else recipients[0]
            first.address = row["address"].lower()
            pairs.append((first, row))
        elif row is not None:
            pairs.append((None, row))
    if not pairs:
        mids, how = _message_ids(conn, parsed)
        for r in recipients:
            row = _recipient_in(conn, mids, r.address) if mids else None
            if row is not None:
                out.correlation = how
            pairs.append((r, row))
    if not pairs:
        pairs.append((None, None))
    for r, row in pairs:
        bid = _insert(conn, now, r, parsed, row, source, out.correlation, raw_ref, raw)
        if r is None:
            effect = "unparsed" if parsed.category == "unknown" else "ignored"
        else:
            effect = _effect(conn, now, parsed, r, row, bid, source, st)
        conn.execute("UPDATE bounces SET effect=? WHERE id=?", (effect, bid))
        out.rows.append({"id": bid, "address": r.address if r else "", "message_id": row["message_id"] if row
                         else None, "recipient_id": row["id"] if row else None, "effect": effect,
                         "reason": r.reason if r else "", "kind": r.kind if r else ""})
    return out


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
    keys = verp.load_secrets(cfg) if cfg is not None and getattr(cfg, "domain", "") else []
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


async def process(db, cfg: Any, raw: bytes, *, source: str, rcpt: str | None = None,
                  raw_ref: str | None = None) -> Outcome:
    """Parse ``raw`` off the event loop and record it durably. ``cfg`` is the BouncesConfig."""
    if cfg is not None and not getattr(cfg, "dsn", True):
        parsed = Parsed("unknown", problem="bounce parsing disabled (bounces.dsn = false)")
    else:
        parsed = await asyncio.to_thread(parse, raw)
    target = resolve_target(cfg, raw, rcpt)
    outcome = await db.write(lambda conn: record_bounce(conn, parsed, source=source, target=target,
                                                        settings=cfg, raw=raw, raw_ref=raw_ref))
    log.info("inbound report: category=%s source=%s correlation=%s effects=%s", outcome.category, source,
             outcome.correlation or "none", json.dumps([r["effect"] for r in outcome.rows]))
    return outcome


def make_sink(db, relay_cfg: Any):
    """For the poller's bounce channels: ``await sink(raw, raw_ref=..., rcpt=None) -> Outcome``."""
    cfg = getattr(relay_cfg, "bounces", relay_cfg)

    async def sink(raw: bytes, *, raw_ref: str | None = None, rcpt: str | None = None) -> Outcome:
        return await process(db, cfg, raw, source="channel", rcpt=rcpt, raw_ref=raw_ref)

    return sink
