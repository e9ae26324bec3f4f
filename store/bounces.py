"""Bounce records (synchronous 5xx at delivery, DSN/ARF reports) and the suppression list.

    outcome = await store.bounces.record(report, source="smtp", target=(queue_id, recipient_id), rules=...)
    rows = await store.bounces.list(filters, since=..., until=..., before=..., limit=50)
    entry = await store.bounces.suppress("a@example.com", "manual", "manual", "api")
    await store.bounces.complete_delivery(results, attempt=log, failures=[DeliveryFailure(...)], rules=...)

``complete_delivery`` is the delivery engine's one write for a transaction with failures: the results and
the attempt (``store.messages.complete``) plus one ``bounces`` row of source ``delivery`` per bounced or
failed recipient, linked to its attempt, with the suppression rules applied.

``record`` is one atomic write: correlate the report with a recipient (the VERP target first, then the
``X-Relaybox-ID`` of the returned headers, then the original Message-ID, which only counts when the failed
address is a recipient of that message), insert one ``bounces`` row per reported recipient, mark the
recipient bounced (``store.messages.mark_bounced_sync``, through the state machine) and apply the
suppression rules (``store.suppressions``). Uncorrelated reports are recorded but change nothing.
"""

from __future__ import annotations

import builtins
import sqlite3
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from store import suppressions as supp
from store.messages import (
    _complete_one,
    _insert_attempt,
    _reset_crash_count,
    add_event,
    mark_bounced_sync,
    transcript_json,
)
from store.records import AttemptLog, RecipientResult
from store.sqlite import Database
from store.suppressions import Rules, Suppression

Conn = sqlite3.Connection
RAW_KEEP = 64 * 1024          # bytes of an unparsed report kept in bounces.raw
COLUMNS = ("id", "at", "message_id", "recipient_id", "address", "category", "action", "reason", "kind",
           "status", "replycode", "diagnostic", "remote_mta", "source", "correlation", "effect", "raw_ref",
           "unparsed", "raw", "attempt_id")
FILTERS = frozenset({"address", "category", "kind", "reason", "source", "message_id"})
DEFAULT_RULES = Rules()


@dataclass(frozen=True)
class ReportLine:
    """One reported recipient of a bounce, complaint or auto-reply."""

    address: str
    action: str = ""
    status: str = ""
    replycode: str = ""
    diagnostic: str = ""
    remote_mta: str = ""
    reason: str = ""
    kind: str = ""


@dataclass(frozen=True)
class Report:
    """What the parser understood of one returned message (or of one rejection at delivery)."""

    category: str                          # bounce | feedback | autoreply | delivered | unknown
    lines: tuple[ReportLine, ...] = ()
    problem: str = ""
    relaybox_id: str = ""
    original_message_id: str = ""
    feedback_type: str = ""


@dataclass(frozen=True)
class Bounce:
    """One ``bounces`` row."""

    id: int
    at: float
    address: str
    category: str
    source: str
    message_id: str | None = None
    recipient_id: int | None = None
    action: str | None = None
    reason: str | None = None
    kind: str | None = None
    status: str | None = None
    replycode: str | None = None
    diagnostic: str | None = None
    remote_mta: str | None = None
    correlation: str | None = None
    effect: str | None = None
    raw_ref: str | None = None
    unparsed: str | None = None
    raw: bytes | None = None
    attempt_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in COLUMNS}


@dataclass(frozen=True)
class DeliveryFailure:
    """A recipient the delivery engine ended bounced or failed (a 5xx, an expiry, a local refusal), as a
    report of source ``delivery``. ``counts``: whether it counts for suppression (a refusal because the
    address is already suppressed, or is not an address at all, does not)."""

    report: Report
    queue_id: str
    recipient_id: int
    counts: bool = True


@dataclass(frozen=True)
class Effect:
    """What recording did for one reported recipient."""

    id: int
    address: str
    message_id: str | None
    recipient_id: int | None
    effect: str               # bounced+suppressed, suppressed, counted, delayed, ignored, uncorrelated, ...
    reason: str
    kind: str


@dataclass(frozen=True)
class Recorded:
    category: str
    correlation: str = ""                          # verp | delivery | relaybox-id | message-id | ''
    effects: tuple[Effect, ...] = field(default_factory=tuple)


def _bounce(r: Mapping[str, Any]) -> Bounce:
    d = {k: r[k] for k in COLUMNS}
    if d["raw"] is not None:
        d["raw"] = bytes(d["raw"])
    return Bounce(**d)


# ---- correlation --------------------------------------------------------------------------------------
def _recipient_by_id(conn: Conn, queue_id: str, recipient_id: int) -> Mapping[str, Any] | None:
    row: Mapping[str, Any] | None = conn.execute(
        "SELECT id, message_id, address, status FROM recipients WHERE id=? AND message_id=?",
        (recipient_id, queue_id)).fetchone()
    return row


def _message_ids(conn: Conn, report: Report) -> tuple[list[str], str]:
    if report.relaybox_id:
        row = conn.execute("SELECT id FROM messages WHERE id=?", (report.relaybox_id.upper(),)).fetchone()
        if row:
            return [row["id"]], "relaybox-id"
    if report.original_message_id:
        rows = conn.execute("SELECT id FROM messages WHERE message_id=? ORDER BY created_at DESC LIMIT 20",
                            (report.original_message_id,)).fetchall()
        if rows:
            return [r["id"] for r in rows], "message-id"
    return [], ""


def _recipient_in(conn: Conn, message_ids: list[str], address: str) -> Mapping[str, Any] | None:
    for mid in message_ids:
        row: Mapping[str, Any] | None = conn.execute(
            "SELECT id, message_id, address, status FROM recipients WHERE message_id=? AND lower(address)=?"
            " ORDER BY id DESC LIMIT 1", (mid, address.lower())).fetchone()
        if row:
            return row
    return None


Pair = tuple[ReportLine | None, Mapping[str, Any] | None]


def _correlate(conn: Conn, report: Report, source: str,
               target: tuple[str, int] | None) -> tuple[list[Pair], str]:
    lines = list(report.lines)
    pairs: list[Pair] = []
    correlation = ""
    if target is not None:
        row = _recipient_by_id(conn, *target)
        correlation = ("delivery" if source == "delivery" else "verp") if row else ""
        if row is not None and lines:
            # the envelope names the recipient; the report says why (a forwarded address may differ)
            same = [r for r in lines if r.address == row["address"].lower()]
            pairs.append((replace(same[0] if same else lines[0], address=row["address"].lower()), row))
        elif row is not None:
            pairs.append((None, row))
    if not pairs:
        mids, how = _message_ids(conn, report)
        for line in lines:
            found = _recipient_in(conn, mids, line.address) if mids else None
            if found is not None:
                correlation = how
            pairs.append((line, found))
    return pairs or [(None, None)], correlation


# ---- recording ----------------------------------------------------------------------------------------
def _insert(conn: Conn, now: float, r: ReportLine | None, report: Report, row: Mapping[str, Any] | None,
            source: str, correlation: str, raw_ref: str | None, raw: bytes | None,
            attempt_id: int | None = None) -> int:
    keep_raw = raw[:RAW_KEEP] if (raw is not None and report.category == "unknown") else None
    line = r or ReportLine("")
    cur = conn.execute(
        "INSERT INTO bounces(at, message_id, recipient_id, address, category, action, reason, kind, status,"
        " replycode, diagnostic, remote_mta, source, correlation, effect, raw_ref, unparsed, raw, attempt_id)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
        (now, row["message_id"] if row else None, row["id"] if row else None, line.address.lower(),
         report.category, line.action, line.reason, line.kind, line.status, line.replycode,
         line.diagnostic[:2000], line.remote_mta[:255], source, correlation if row else "", "", raw_ref,
         report.problem or "", keep_raw, attempt_id))
    return int(cur.fetchone()[0])


def _mark(conn: Conn, now: float, row: Mapping[str, Any], r: ReportLine, bounce_id: int, source: str) -> bool:
    code = int(r.replycode) if r.replycode.isdigit() else None
    details = {"status": r.status, "replycode": r.replycode, "diagnostic": r.diagnostic[:1000],
               "remote_mta": r.remote_mta, "kind": r.kind, "action": r.action, "source": source,
               "bounce_id": bounce_id}
    return mark_bounced_sync(conn, now, int(row["id"]), code, r.status or None, r.diagnostic[:1000] or None,
                             r.reason, "bounce", details, skip_same=True)


def _effect(conn: Conn, now: float, report: Report, r: ReportLine, row: Mapping[str, Any] | None,
            bounce_id: int, source: str, rules: Rules | None) -> str:
    if row is None:
        return "uncorrelated"
    if report.category == "feedback":
        add_event(conn, now, row["message_id"], row["id"], "complained", "bounce", "feedback",
                  {"feedback_type": report.feedback_type, "bounce_id": bounce_id, "source": source})
        return supp.apply_complaint(conn, r.address, now=now, bounce_id=bounce_id)
    if report.category != "bounce":
        return "ignored"
    if r.action == "delayed":
        return "delayed"
    marked = source != "delivery" and _mark(conn, now, row, r, bounce_id, source)
    if rules is None:          # a local refusal that says nothing new about the address
        return "bounced+recorded" if marked else "recorded"
    try:
            effect = supp.apply_bounce(conn, r.address, r.reason, r.kind, now=now, rules=rules,
                                   bounce_id=bounce_id)
    except ValueError:         # not an address the suppression list can hold: recorded, nothing more
        effect = "recorded"
    return f"bounced+{effect}" if marked else effect


def record_sync(conn: Conn, report: Report, *, source: str, now: float, target: tuple[str, int] | None,
                rules: Rules | None, raw: bytes | None = None, raw_ref: str | None = None,
                attempt_id: int | None = None) -> Recorded:
    pairs, correlation = _correlate(conn, report, source, target)
    effects = []
    for r, row in pairs:
        bid = _insert(conn, now, r, report, row, source, correlation, raw_ref, raw, attempt_id)
        if r is None:
            effect = "unparsed" if report.category == "unknown" else "ignored"
        else:
            effect = _effect(conn, now, report, r, row, bid, source, rules)
        conn.execute("UPDATE bounces SET effect=? WHERE id=?", (effect, bid))
        effects.append(Effect(bid, r.address if r else "", row["message_id"] if row else None,
                              row["id"] if row else None, effect, r.reason if r else "", r.kind if r else ""))
    return Recorded(report.category, correlation, tuple(effects))


class BounceStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock

    # ---- bounces ------------------------------------------------------------------------------------
    async def record(self, report: Report, *, source: str, target: tuple[str, int] | None = None,
                     rules: Rules = DEFAULT_RULES, raw: bytes | None = None, raw_ref: str | None = None,
                     now: float | None = None) -> Recorded:
        """Record one report and apply its effects atomically. ``target`` = (queue id, recipient id) named
        by a verified VERP token, or the recipient the delivery engine saw rejected (source ``delivery``)."""
        t = self.clock() if now is None else now
        return await self.db.write(lambda conn: record_sync(conn, report, source=source, now=t, target=target,
                                                            rules=rules, raw=raw, raw_ref=raw_ref))

    async def complete_delivery(self, results: Sequence[RecipientResult], *, attempt: AttemptLog | None,
                                failures: Sequence[DeliveryFailure], rules: Rules = DEFAULT_RULES,
                                actor: str = "delivery") -> builtins.list[Recorded]:
        """``store.messages.complete`` plus the bounce records of its bounced/failed recipients, in one
        write: the results, the attempt row, one ``bounces`` row per failure (source ``delivery``, linked to
        the attempt) and the suppression rules. A result that changes nothing (its recipient already ended)
        records no bounce."""
        done = builtins.list(results)
        now = self.clock()
        transcript = transcript_json(attempt.transcript) if attempt is not None else None

        def _do(conn: Conn) -> builtins.list[Recorded]:
            changed = {}
            for res in done:
                mid = _complete_one(conn, res, actor, now)
                if mid is not None:
                    changed[res.recipient_id] = mid
            attempt_id = None
            if attempt is not None:
                _insert_attempt(conn, attempt, [r.recipient_id for r in done], transcript)
                row = conn.execute("SELECT MAX(id) FROM attempts WHERE message_id=?",
                                   (attempt.message_id,)).fetchone()
                attempt_id = int(row[0]) if row and row[0] is not None else None
            _reset_crash_count(conn, set(changed.values()) | ({attempt.message_id} if attempt else set()))
            return [record_sync(conn, f.report, source="delivery", now=now,
                                target=(f.queue_id, f.recipient_id), rules=rules if f.counts else None,
                                attempt_id=attempt_id)
                    for f in failures if f.recipient_id in changed]

        return await self.db.write(_do)

    async def list(self, filters: Mapping[str, str], *, since: float | None = None,
                   until: float | None = None,
                   before: int | None = None, limit: int = 50) -> builtins.list[Bounce]:
        """Newest first; ``filters`` keys among FILTERS (exact match; address compared lower-cased)."""
        sql, args = "SELECT * FROM bounces WHERE 1=1", list[Any]()
        for k, v in filters.items():
            if k not in FILTERS:
                raise ValueError(f"not a bounce filter: {k}")
            sql += f" AND {k} = ?"
            args.append(v.lower() if k == "address" else v)
        for cond, value in ((" AND at >= ?", since), (" AND at < ?", until), (" AND id < ?", before)):
            if value is not None:
                sql += cond
                args.append(value)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)

        def _do(conn: Conn) -> builtins.list[Bounce]:
            return [_bounce(r) for r in conn.execute(sql, args)]

        return await self.db.read(_do)

    async def get(self, bounce_id: int) -> Bounce | None:
        def _do(conn: Conn) -> Bounce | None:
            row = conn.execute("SELECT * FROM bounces WHERE id=?", (bounce_id,)).fetchone()
            return _bounce(row) if row else None

        return await self.db.read(_do)

    # ---- suppressions --------------------------------------------------------------------------------
    async def suppression(self, address: str) -> Suppression | None:
        now = self.clock()
        return await self.db.read(lambda conn: supp.get(conn, address, now))

    async def is_suppressed(self, address: str) -> bool:
        now = self.clock()
        return await self.db.read(lambda conn: supp.is_suppressed(conn, address, now))

    async def suppressions(self, *, include_expired: bool = False, search: str | None = None,
                           limit: int = 100,
                           offset: int = 0) -> builtins.list[Suppression]:
        now = self.clock()
        return await self.db.read(lambda conn: supp.list_entries(
            conn, now=now, include_expired=include_expired, search=search, limit=limit, offset=offset))

    async def suppress(self, address: str, reason: str, kind: str, source: str, *,
                       expires_at: float | None = None, note: str | None = None) -> Suppression:
        """Add or strengthen an entry (raises ValueError for something that is not an address)."""
        now = self.clock()
        return await self.db.write(lambda conn: supp.add(conn, address, reason, kind, source, now=now,
                                                         expires_at=expires_at, note=note))

    async def unsuppress(self, address: str) -> bool:
        return await self.db.write(lambda conn: supp.remove(conn, address))

    async def export_suppressions(self) -> builtins.list[Suppression]:
        now = self.clock()
        return await self.db.read(lambda conn: supp.export(conn, now=now))

    async def purge_expired(self, limit: int = 1000) -> int:
        now = self.clock()
        return await self.db.write(lambda conn: supp.purge_expired(conn, now=now, limit=limit))
