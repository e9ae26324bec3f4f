"""Read side of the spool for admins: message lists with filters and cursors, one message with its
recipients, events and attempts, matching ids for bulk actions, the events list, queue summaries (qshape).

A message matches a status filter when any of its recipients has that status. The two boxes admins read are
a partition: ``outbox`` is every message with a recipient not (yet) delivered (scheduled, queued, sending,
deferred, failed, bounced), ``sent`` every message whose recipients are all delivered (cancelled ones
aside); a message with 2 delivered and 1 bounced recipient is in the Outbox, its ``status_summary`` saying
so. Substring searches (recipient, sender, subject) of 3 characters or more go through the indexes of
migration 0013 (distinct values with counts and an FTS5 trigram index over them on SQLite, pg_trgm on
PostgreSQL); shorter ones, and terms so common that the index would hand over a large part of the table,
walk the messages newest first and stop after a page. Bad filter values raise ValueError.
Attempt transcripts are returned redacted (no AUTH argument), whatever the delivery engine stored.
"""

from __future__ import annotations

import dataclasses
import re
import sqlite3
import time
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any, Callable, Mapping, Sequence

from store.errors import guarded
from store.migrations.m0015_address_blocks import BLOCK_SHIFT as ADDRESS_BLOCK_SHIFT
from store.postgres import dialect
from store.records import Attempt, Event, Message, Recipient, attempt_of, event_of, message_of, recipient_of
from store.sqlite import Database
from store.states import Status, box_of, message_status, status_summary

STATUS_ALIASES: dict[str, tuple[str, ...]] = {
    "outbox": Status.OUTBOX,
    "sent": ("delivered",),          # in a message filter: the Sent box (MessageFilter.sent), see above
    "active": tuple(sorted(Status.ACTIVE)),
    "final": tuple(sorted(Status.FINAL)),
}
FILTER_KEYS = ("status", "sender", "recipient", "domain", "subject", "client_ip", "auth_user", "since",
               "until", "held", "ids")
QSHAPE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)   # minutes, as Postfix qshape
HEAD_LIMIT = 65536   # bytes of a body parsed for the header list
_RCPT_VIEW = ("id", "address", "domain", "status", "reason", "attempts", "next_attempt_at", "last_code",
              "last_enhanced", "last_text", "route", "updated_at")


@dataclass(frozen=True)
class MessageFilter:
    status: tuple[str, ...] = ()
    sender: str | None = None        # substring, case-insensitive
    recipient: str | None = None     # substring of any recipient address, case-insensitive
    domain: str | None = None        # exact recipient domain
    subject: str | None = None       # substring, case-insensitive
    client_ip: str | None = None
    auth_user: str | None = None
    since: float | None = None       # created_at >= since
    until: float | None = None       # created_at < until
    held: bool | None = None
    ids: tuple[str, ...] = ()
    sent: bool = False               # also (OR) the messages of the Sent box: every recipient delivered

    def empty(self) -> bool:
        return not self.sent and not any(getattr(self, k) not in (None, ()) for k in FILTER_KEYS)


@dataclass(frozen=True)
class MessageSummary:
    """One line of a message list: the envelope, indexed headers and where its recipients stand."""

    message: Message
    status: str
    recipients: tuple[str, ...] = ()
    recipient_status: Mapping[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**_message_view(self.message), "status": self.status, "recipients": list(self.recipients),
                "recipient_status": dict(self.recipient_status), **_where_it_stands(self.recipient_status)}


@dataclass(frozen=True)
class MessagePage:
    items: tuple[MessageSummary, ...]
    next_after: str | None          # the id to continue after, None on the last page


@dataclass(frozen=True)
class MessageDetail:
    """One message with everything known about it."""

    message: Message
    status: str
    recipients: tuple[Recipient, ...]
    events: tuple[Event, ...]
    attempts: tuple[Attempt, ...]
    body_available: bool
    headers: tuple[tuple[str, str], ...] | None     # None once the body is no longer retained

    def as_dict(self) -> dict[str, Any]:
        m = self.message
        counts: dict[str, int] = {}
        for r in self.recipients:
            counts[r.status] = counts.get(r.status, 0) + 1
        return {**_message_view(m), "status": self.status, "recipient_status": counts,
                **_where_it_stands(counts),
                "recipients": [{k: getattr(r, k) for k in _RCPT_VIEW} for r in self.recipients],
                "client_helo": m.client_helo, "body_sha256": m.body_sha256,
                "events": [e.as_dict() for e in self.events],
                "attempts": [a.as_dict() for a in self.attempts],
                "body_available": self.body_available,
                "headers": None if self.headers is None else [list(h) for h in self.headers]}


@dataclass(frozen=True)
class QshapeRow:
    domain: str
    total: int
    counts: tuple[int, ...]      # one per bucket of ``QueueSummary.buckets``

    def as_dict(self) -> dict[str, Any]:
        return {"domain": self.domain, "total": self.total, "counts": list(self.counts)}


@dataclass(frozen=True)
class QueueSummary:
    """Recipient counts per status, and a qshape table: recipient domain x age of the message."""

    counts: Mapping[str, int]
    held_messages: int
    statuses: tuple[str, ...]
    buckets: tuple[str, ...]
    total: QshapeRow
    rows: tuple[QshapeRow, ...]
    domains: int

    def as_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "held_messages": self.held_messages,
                "statuses": list(self.statuses),
                "buckets": list(self.buckets), "total": self.total.as_dict(),
                "rows": [r.as_dict() for r in self.rows], "domains": self.domains}


def _message_view(m: Message) -> dict[str, Any]:
    return {"id": m.id, "created_at": m.created_at, "sender": m.sender, "from": m.from_header,
            "subject": m.subject, "message_id": m.message_id, "client_ip": m.client_ip,
            "auth_user": m.auth_user, "size": m.size, "send_at": m.send_at, "held": m.held}


def _where_it_stands(counts: Mapping[str, int]) -> dict[str, Any]:
    """The message-level view of its recipients: summary text, box, and whether anything can still be
    cancelled or rescheduled (a pending recipient) or is in an attempt right now."""
    return {"status_summary": status_summary(counts), "box": box_of(counts),
            "pending": sum(counts.get(s, 0) for s in Status.PENDING),
            "sending": counts.get(Status.SENDING, 0)}


def parse_message_statuses(value: str | Sequence[str] | None) -> tuple[tuple[str, ...], bool]:
    """Like ``parse_statuses`` for a message filter, where ``sent`` is the Sent box (every recipient
    delivered) rather than "any recipient delivered": (statuses, sent)."""
    if isinstance(value, str):
        parts: list[Any] = value.split(",")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        return parse_statuses(value), False
    sent = any(isinstance(p, str) and p.strip().lower() == "sent" for p in parts)
    rest = [p for p in parts if not (isinstance(p, str) and p.strip().lower() == "sent")]
    return parse_statuses(rest) if rest else (), sent


def parse_statuses(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """'deferred,sent' or ['deferred', 'sent'] -> statuses, aliases expanded (outbox, sent, active, final)."""
    if value is None or value == "":
        return ()
    if not isinstance(value, (str, list, tuple)):
        raise ValueError("status: expected a string or a list of strings")
    parts = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for p in parts:
        if not isinstance(p, str):
            raise ValueError("status: expected strings")
        p = p.strip().lower()
        if p in STATUS_ALIASES:
            out.extend(STATUS_ALIASES[p])
        elif p in Status.ALL:
            out.append(p)
        else:
            raise ValueError(f"status: unknown {p!r}; expected one of {', '.join(Status.ALL)}, "
                             f"{', '.join(STATUS_ALIASES)}")
    return tuple(dict.fromkeys(out))


# ---- presentation helpers shared with other admin views ------------------------------------------------
_SECRET_LINE = re.compile(r"^(\s*(?:>>>?|<<<?|C:|S:)?\s*)(AUTH\s+\S+)(\s+.*)?$", re.I)


def redact_transcript(lines: Sequence[Any]) -> list[Any]:
    """Transcripts should hold no secrets already; this is the belt to the delivery engine's braces."""
    out: list[Any] = []
    for item in lines:
        if isinstance(item, dict) and isinstance(item.get("line"), str):
            line = item["line"]
            if line.upper().lstrip().startswith("AUTH") or item.get("dir") in ("auth",):
                item = {**item, "line": _SECRET_LINE.sub(r"\1\2 [redacted]", line)}
            out.append(item)
        elif isinstance(item, str) and item.upper().lstrip(" >C:").startswith("AUTH"):
            out.append(_SECRET_LINE.sub(r"\1\2 [redacted]", item))
        else:
            out.append(item)
    return out


def header_list(body: bytes | None) -> list[list[str]] | None:
    """The header fields of a message as [name, value] pairs (at most the first 64 KiB are parsed)."""
    if body is None:
        return None
    end = body.find(b"\r\n\r\n")
    head = body[: end if end >= 0 else min(len(body), HEAD_LIMIT)][:HEAD_LIMIT]
    msg = BytesHeaderParser(policy=compat32).parsebytes(head + b"\r\n\r\n")
    return [[k, str(v)] for k, v in msg.items()]


# ---- SQL ----------------------------------------------------------------------------------------------
def _like(value: str) -> str:
    """A LIKE pattern matching ``value`` anywhere (with ESCAPE '\\')."""
    return "%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _contains(column: str) -> str:
    return f"lower({column}) LIKE lower(?) ESCAPE '\\'"


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _any_status(statuses: Sequence[str], rare: bool) -> str:
    if rare:
        # few recipients have these statuses: start from the status index
        return f"m.id IN (SELECT message_id FROM recipients WHERE status IN ({_marks(len(statuses))}))"
    return ("EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id"
            f" AND r.status IN ({_marks(len(statuses))}))")


def _where_status(f: MessageFilter, conn: sqlite3.Connection, clauses: list[str], args: list[Any]) -> None:
    """Any recipient in ``f.status``, or (OR) the message is in the Sent box: a delivered recipient and
    none in the Outbox statuses."""
    parts: list[str] = []
    if f.status:
        parts.append(_any_status(f.status, _rare(conn, f.status)))
        args += list(f.status)
    if f.sent:
        parts.append(f"({_any_status(('delivered',), _rare(conn, ('delivered',)))} AND NOT EXISTS"
                     " (SELECT 1 FROM recipients o WHERE o.message_id = m.id"
                     f" AND o.status IN ({_marks(len(Status.OUTBOX))})))")
        args += ["delivered", *Status.OUTBOX]
    if parts:
        clauses.append(parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")")


# ---- substring search ----------------------------------------------------------------------------------
TRIGRAM_MIN = 3          # characters: shorter terms have no trigram to look up
PROBES = 3               # trigrams of a term looked up at most (first, middle, last)
SPARSE = 2000            # distinct values one trigram may hand over (every trigram has more: the walk)
ROWS = 10000             # rows with the matching values looked up by value (more: a common term, the walk)
VALUES = 500             # matching values the walk may check with IN (more: with LIKE)
# searched column -> (distinct-value table of migration 0013, the column as the check reads it)
_SEARCH = {"address": ("search_addresses", "r.address"), "sender": ("search_senders", "m.sender"),
           "subject": ("search_subjects", "COALESCE(m.subject, '')")}
_BY_VALUE = {  # the rows carrying some values: looked up through the column's index, or checked in the walk
    "address": ("m.id IN (SELECT message_id FROM recipients WHERE (id >> {shift}) IN ({blocks})"
                " AND address IN ({marks}))",
                "EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND +r.address IN ({}))"),
    "sender": ("m.id IN (SELECT id FROM messages WHERE sender IN ({}))", "+m.sender IN ({})"),
    "subject": ("m.id IN (SELECT id FROM messages WHERE subject IN ({}))", "+m.subject IN ({})"),
}


def _trigrams(value: str) -> list[str]:
    """Distinct trigrams of ``value``, at most ``PROBES``, spread over it (first, middle, last)."""
    grams = list(dict.fromkeys(value[i:i + 3].lower() for i in range(len(value) - 2)))
    if len(grams) <= PROBES:
        return grams
    step = (len(grams) - 1) / (PROBES - 1)
    return list(dict.fromkeys(grams[round(i * step)] for i in range(PROBES)))


def _matching_values(conn: sqlite3.Connection, column: str, value: str) -> list[tuple[str, int]] | None:
    """The distinct values of ``column`` containing ``value`` (case-insensitive) with how many rows carry
    each: the values of the term's rarest trigram in the trigram index (fewer than ``SPARSE``), checked with
    LIKE; for a 1-2 character term, a scan of the distinct values. None when the term is common (all its
    trigrams are, or a short term matches more than ``VALUES`` values)."""
    table = _SEARCH[column][0]
    if len(value) < TRIGRAM_MIN:
        # no trigram: scan the distinct values (far fewer than the rows), stopping once the term is common
        try:
            found = conn.execute(f"SELECT value, n FROM {table} WHERE {_contains('value')} LIMIT ?",
                                 (_like(value), VALUES + 1)).fetchall()
        except sqlite3.OperationalError:    # a database from a development build of migration 0013
            return None
        return None if len(found) > VALUES else [(r[0], int(r[1])) for r in found]
    best: list[int] | None = None
    for gram in _trigrams(value):
        try:
            ids = [r[0] for r in conn.execute(
                f"SELECT rowid FROM {table}_fts WHERE {table}_fts MATCH ? LIMIT ?",
                ('"' + gram.replace('"', '""') + '"', SPARSE))]
        except sqlite3.OperationalError:    # a database from a development build of migration 0013
            return None
        if best is None or len(ids) < len(best):
            best = ids
        if len(best) < SPARSE // 10:
            break
    if best is None or len(best) >= SPARSE:
        return None
    if not best:
        return []
    return [(r[0], int(r[1])) for r in conn.execute(
        f"SELECT value, n FROM {table} WHERE id IN ({_marks(len(best))}) AND {_contains('value')}",
        (*best, _like(value)))]


def _lookup(conn: sqlite3.Connection, column: str, values: int) -> str:
    """The look-up, through the column's index, of the rows carrying ``values`` values. The address index
    is kept in blocks of recipient ids (migration 0015): each block from the first recipient to the last
    is probed."""
    sql = _BY_VALUE[column][0]
    if column != "address":
        return sql.format(_marks(values))
    # one aggregate per SELECT: each is then one probe of the rowid B-tree (both in one scan the table)
    lo, hi = conn.execute("SELECT (SELECT MIN(id) FROM recipients),"
                          " (SELECT MAX(id) FROM recipients)").fetchone()
    blocks = range(int(lo or 0) >> ADDRESS_BLOCK_SHIFT, (int(hi or 0) >> ADDRESS_BLOCK_SHIFT) + 1)
    return sql.format(shift=ADDRESS_BLOCK_SHIFT, blocks=",".join(str(b) for b in blocks),
                      marks=_marks(values))


def _where_text(f: MessageFilter, conn: sqlite3.Connection, clauses: list[str], args: list[Any]) -> None:
    pg = dialect(conn) == "postgresql"
    rcpt = "EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND {})"
    for value, column in ((f.sender, "sender"), (f.recipient, "address"), (f.subject, "subject")):
        if not value:
            continue
        checked = _SEARCH[column][1]
        if pg:      # ILIKE: case-insensitive, served by the pg_trgm GIN indexes of migration 0013
            column_sql = "m.subject" if column == "subject" else checked    # the indexed expression
            clause = f"{column_sql} ILIKE ? ESCAPE '\\'"
            clauses.append(rcpt.format(clause) if column == "address" else clause)
            args.append(_like(value))
            continue
        found = _matching_values(conn, column, value)
        if found is not None and (sum(n for _, n in found) < ROWS or len(found) <= VALUES):
            if not found:
                clauses.append("0 = 1")
                continue
            few = sum(n for _, n in found) < ROWS
            clauses.append(_lookup(conn, column, len(found)) if few
                           else _BY_VALUE[column][1].format(_marks(len(found))))
            args += [v for v, _ in found]
        else:       # a short or common term: walk the messages newest first, checking each
            clauses.append(rcpt.format(_contains(checked)) if column == "address" else _contains(checked))
            args.append(_like(value))


def _rare(conn: sqlite3.Connection, statuses: tuple[str, ...]) -> bool:
    """Whether recipients with ``statuses`` are a small part of all (the counters say, at no cost): then a
    status filter starts from the status index; otherwise walking messages in id order and checking each
    stops after a page."""
    counts = dict(conn.execute("SELECT status, n FROM queue_counts").fetchall())
    wanted = sum(counts.get(s, 0) for s in statuses)
    return bool(wanted * 20 < max(1, sum(counts.values())))


def _where(f: MessageFilter, conn: sqlite3.Connection) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    _where_status(f, conn, clauses, args)
    _where_text(f, conn, clauses, args)
    rcpt = "EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND {})"
    exact: tuple[tuple[Any, str], ...] = (
        (f.domain.lower() if f.domain else None, rcpt.format("r.domain = ?")),
        (f.client_ip or None, "m.client_ip = ?"), (f.auth_user or None, "m.auth_user = ?"),
        (f.since, "m.created_at >= ?"), (f.until, "m.created_at < ?"),
        (None if f.held is None else int(f.held), "m.held = ?"))
    for value, clause in exact:
        if value is not None:
            clauses.append(clause)
            args.append(value)
    if f.ids:
        clauses.append(f"m.id IN ({_marks(len(f.ids))})")
        args += list(f.ids)
    return clauses, args


def _sql_where(clauses: list[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""


def _lenient(convert: Callable[[Any], Any], row: sqlite3.Row, *json_columns: str) -> Any:
    """A record from a row whose JSON columns may be damaged: they read as empty rather than failing."""
    try:
        return convert(row)
    except ValueError:
        return convert({**dict(row), **{c: None for c in json_columns}})


def _list(conn: sqlite3.Connection, f: MessageFilter, limit: int, after: str | None,
          order: str) -> MessagePage:
    clauses, args = _where(f, conn)
    if after is not None:
        clauses.append("m.id < ?" if order == "desc" else "m.id > ?")
        args.append(after)
    sql = (f"SELECT m.* FROM messages m{_sql_where(clauses)}"
           f" ORDER BY m.id {'DESC' if order == 'desc' else 'ASC'} LIMIT ?")
    rows = conn.execute(sql, (*args, limit + 1)).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    rcpts: dict[str, list[str]] = {r["id"]: [] for r in rows}
    states: dict[str, dict[str, int]] = {r["id"]: {} for r in rows}
    if rows:
        for r in conn.execute(f"SELECT message_id, address, status FROM recipients"
                              f" WHERE message_id IN ({_marks(len(rcpts))}) ORDER BY id", tuple(rcpts)):
            rcpts[r["message_id"]].append(r["address"])
            counts = states[r["message_id"]]
            counts[r["status"]] = counts.get(r["status"], 0) + 1
    items = tuple(MessageSummary(message=message_of(r), status=message_status(list(states[r["id"]])),
                                 recipients=tuple(rcpts[r["id"]]), recipient_status=states[r["id"]])
                  for r in rows)
    return MessagePage(items=items, next_after=rows[-1]["id"] if more and rows else None)


def _show(conn: sqlite3.Connection, qid: str) -> MessageDetail | None:
    row = conn.execute("SELECT * FROM messages WHERE id=?", (qid,)).fetchone()
    if row is None:
        return None
    rcpts = tuple(recipient_of(r) for r in conn.execute(
        "SELECT * FROM recipients WHERE message_id=? ORDER BY id", (qid,)))
    events = tuple(_lenient(event_of, e, "details") for e in conn.execute(
        "SELECT * FROM events WHERE message_id=? ORDER BY id", (qid,)))
    attempts = []
    for a in conn.execute("SELECT * FROM attempts WHERE message_id=? ORDER BY id", (qid,)):
        att: Attempt = _lenient(attempt_of, a, "recipients", "transcript")
        attempts.append(dataclasses.replace(att, transcript=tuple(redact_transcript(att.transcript))))
    # the header block is at the start: 4 bytes past the parse limit tell whether it ended within it
    body = conn.execute("SELECT substr(data, 1, ?) FROM bodies WHERE message_id=?",
                        (HEAD_LIMIT + 4, qid)).fetchone()
    headers = header_list(bytes(body[0])) if body else None
    return MessageDetail(message=message_of(row), status=message_status([r.status for r in rcpts]),
                         recipients=rcpts, events=events, attempts=tuple(attempts),
                         body_available=body is not None,
                         headers=None if headers is None else tuple((k, v) for k, v in headers))


def _bucket_labels() -> tuple[str, ...]:
    labels, lo = [], 0
    for hi in QSHAPE_BUCKETS:
        labels.append(f"{lo}-{hi}m")
        lo = hi
    labels.append(f"{lo}m+")
    return tuple(labels)


_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}


def _slot_time(slot: str) -> float:
    """The creation time a queue-id slot (its first 7 characters: milliseconds >> 13) stands for."""
    n = 0
    for c in slot:
        n = n * 32 + _CROCKFORD.get(c.upper(), 0)
    return (n << 13) / 1000.0


def _summary(conn: sqlite3.Connection, statuses: tuple[str, ...], top: int, now: float) -> QueueSummary:
    counts = {s: 0 for s in Status.ALL}
    for r in conn.execute("SELECT status, n FROM queue_counts"):      # kept by triggers (m0009)
        counts[r["status"]] = r["n"]
    held = conn.execute("SELECT COUNT(*) FROM messages WHERE held = 1").fetchone()[0]
    statuses = statuses or tuple(sorted(Status.ACTIVE))
    width = len(QSHAPE_BUCKETS) + 1
    per_domain: dict[str, list[int]] = {}
    total = [0] * width
    # kept by triggers (m0011): one row per domain, status and 8-second creation slot of the queue id
    for r in conn.execute(f"SELECT domain, slot, n FROM queue_shape WHERE status IN ({_marks(len(statuses))})"
                          " AND n > 0", statuses):
        age_min = max(0.0, now - _slot_time(r["slot"])) / 60
        idx = next((i for i, hi in enumerate(QSHAPE_BUCKETS) if age_min < hi), len(QSHAPE_BUCKETS))
        per_domain.setdefault(r["domain"], [0] * width)[idx] += r["n"]
        total[idx] += r["n"]
    ranked = sorted(per_domain.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
    return QueueSummary(counts=counts, held_messages=held, statuses=tuple(statuses), buckets=_bucket_labels(),
                        total=QshapeRow("TOTAL", sum(total), tuple(total)),
                        rows=tuple(QshapeRow(d, sum(c), tuple(c)) for d, c in ranked[:top]),
                        domains=len(per_domain))


def _events(conn: sqlite3.Connection, after: int, limit: int, message_id: str | None,
            status: tuple[str, ...]) -> list[Event]:
    clauses: list[str] = ["id > ?"]
    args: list[Any] = [after]
    if message_id:
        clauses.append("message_id = ?")
        args.append(message_id)
    if status:
        clauses.append(f"status IN ({_marks(len(status))})")
        args += list(status)
    sql = "SELECT * FROM events WHERE " + " AND ".join(clauses) + " ORDER BY id LIMIT ?"
    return [_lenient(event_of, e, "details") for e in conn.execute(sql, (*args, limit))]


class History:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock

    async def list_messages(self, f: MessageFilter, *, limit: int = 50, after: str | None = None,
                            order: str = "desc") -> MessagePage:
        """One page of messages (newest first by default) and the id to continue after, if any."""
        if order not in ("asc", "desc"):
            raise ValueError("order: expected asc or desc")
        return await self.db.read(guarded(lambda c: _list(c, f, limit, after, order)))

    async def show(self, qid: str) -> MessageDetail | None:
        return await self.db.read(guarded(lambda c: _show(c, qid)))

    async def exists(self, qid: str) -> bool:
        return await self.db.read(guarded(
            lambda c: c.execute("SELECT 1 FROM messages WHERE id=?", (qid,)).fetchone() is not None))

    async def matching_ids(self, f: MessageFilter, limit: int, after: str | None = None) -> list[str]:
        """Ids of the messages a filter matches, oldest first, at most ``limit``, after the id ``after``
        (what a bulk action acts on, page by page)."""
        def _q(conn: sqlite3.Connection) -> list[str]:
            clauses, args = _where(f, conn)
            if after is not None:
                clauses.append("m.id > ?")
                args.append(after)
            sql = f"SELECT m.id FROM messages m{_sql_where(clauses)} ORDER BY m.id LIMIT ?"
            return [r[0] for r in conn.execute(sql, (*args, limit))]
        return await self.db.read(guarded(_q))

    async def count_matching(self, f: MessageFilter) -> int:
        """How many messages a filter matches (a bulk action's dry run: the true number, never capped)."""
        def _q(conn: sqlite3.Connection) -> int:
            clauses, args = _where(f, conn)
            row = conn.execute(f"SELECT COUNT(*) FROM messages m{_sql_where(clauses)}", args).fetchone()
            return int(row[0])
        return await self.db.read(guarded(_q))

    async def events(self, *, after: int = 0, limit: int = 100, message_id: str | None = None,
                     status: tuple[str, ...] = ()) -> list[Event]:
        """Events in id order after ``after`` (the outbox view), optionally of one message or statuses."""
        return await self.db.read(guarded(lambda c: _events(c, after, limit, message_id, status)))

    async def summary(self, *, statuses: tuple[str, ...] = (), top: int = 50,
                      now: float | None = None) -> QueueSummary:
        """Counts per status, and a qshape table of recipients in ``statuses`` (default: the active ones)."""
        at = self.clock() if now is None else now
        return await self.db.read(guarded(lambda c: _summary(c, statuses, top, at)))
