"""The outbound spool's tables: messages, bodies, recipients, events, attempts.

Every status change of a recipient goes through ``store.states.transition`` and writes an ``events`` row in
the same transaction (the durable outbox for event webhooks and the history admins read). All writes go
through the group-commit writer: ``enqueue`` returns only once the message is on stable storage.

    ms = store.messages
    qid = await ms.enqueue(NewMessage(...), actor="smtp")
    claims = await ms.claim("node:pid", limit=100, lease=300.0)        # -> list[Claim] (frozen records)
    suppressed, bodies = await ms.prefetch(addresses, small_ids)      # one read per claim round
    await ms.complete([RecipientResult(...)], attempt=AttemptLog(...))
    await ms.release(ids, at)                                         # back to the queue, no attempt
    await ms.cancel(qid) / retry_now / resend / hold / unhold / delete / mark_bounced
    await ms.schedule(qid, at) / send_now(qid)                        # pending recipients: a new time
    stats = await ms.recover()                                        # at start: leases, poison
"""

from __future__ import annotations

import json
import sqlite3
import time
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any, Callable, Iterable, Mapping, Sequence

from store import suppressions as _supp
from store.postgres import dialect
from store.records import (
    AttemptLog,
    Claim,
    Message,
    NewMessage,
    Recipient,
    RecipientResult,
    domain_of,
    message_of,
    recipient_of,
)
from store.sqlite import Database
from store.states import BEING_DELIVERED, NEW, Status, can_transition, transition

Conn = sqlite3.Connection

# reasons of a result that does not count as a real attempt (decided without talking to anyone)
NOT_AN_ATTEMPT = frozenset({"suppressed", "expired", "invalid"})


class QueueError(Exception):
    """An admin operation that does not apply (unknown id, wrong state)."""


def add_event(conn: Conn, at: float, message_id: str, recipient_id: int | None, status: str, actor: str,
              reason: str | None = None, details: Mapping[str, Any] | None = None) -> None:
    conn.execute(
        "INSERT INTO events(at, message_id, recipient_id, status, actor, reason, details)"
        " VALUES (?,?,?,?,?,?,?)",
        (at, message_id, recipient_id, status, actor, reason, json.dumps(dict(details)) if details else None),
    )


def set_status(conn: Conn, rid: int, current: str, new: str, now: float, assignments: str = "",
               args: Sequence[Any] = ()) -> None:
    """The one UPDATE of ``recipients.status``: checked by the state machine first. ``assignments`` are
    extra ``col=?`` pairs (with ``args``) written in the same statement."""
    transition(current, new)
    extra = f", {assignments}" if assignments else ""
    conn.execute(f"UPDATE recipients SET status=?, updated_at=?{extra} WHERE id=?",
                 (new, now, *args, rid))


def set_statuses(conn: Conn, rows: Iterable[tuple[int, str]], new: str, now: float, assignments: str = "",
                 args: Sequence[Any] = ()) -> None:
    """``set_status`` for many (recipient id, current status) pairs: each transition checked, the
    UPDATEs sent as one batch (one round trip on PostgreSQL, where psycopg pipelines executemany)."""
    batch = []
    for rid, current in rows:
        transition(current, new)
        batch.append((new, now, *args, rid))
    if batch:
        extra = f", {assignments}" if assignments else ""
        conn.executemany(f"UPDATE recipients SET status=?, updated_at=?{extra} WHERE id=?", batch)


def _reset_crash_count(conn: Conn, message_ids: Iterable[str]) -> None:
    """A message that got through is no longer suspected of crashing the process: its count goes back to
    0 (a no-op, no row written, for the usual message that never crashed anything)."""
    conn.executemany("UPDATE messages SET crash_count = 0 WHERE id=? AND crash_count > 0 AND NOT EXISTS"
                     " (SELECT 1 FROM recipients WHERE message_id=? AND status='sending')",
                     [(mid, mid) for mid in message_ids])


def _count_crashes(conn: Conn, mine: str, args: Sequence[Any]) -> None:
    """Poison accounting, at recovery: each message with recipients in 'sending' was being processed when
    its process died; its crash_count goes up (claims do not write it, so a delivery costs no write of
    the message row; ``complete`` resets it)."""
    conn.execute("UPDATE messages SET crash_count = crash_count + 1 WHERE id IN (SELECT message_id FROM"
                 " recipients WHERE status='sending'" + mine + ")", tuple(args))


def insert_message(conn: Conn, msg: NewMessage, now: float, actor: str,
                   lease: tuple[str, float] | None = None, ids: list[int] | None = None) -> str:
    """The rows of one new message (inside a caller's write): also used by campaigns that enqueue in the
    same transaction as their own bookkeeping. With ``lease`` (owner, until) the recipients are inserted
    already claimed by that owner (accepted, then 'sending': see ``enqueue_claimed``). ``ids`` gets the
    recipients' row ids, in the order of ``msg.recipients``."""
    qid = msg.queue_id
    scheduled = msg.send_at is not None and msg.send_at > now
    status = transition(NEW, Status.SCHEDULED if scheduled else Status.QUEUED)
    event_status, leased = status, None
    if lease is not None and not scheduled and not msg.held:
        status, leased = transition(status, Status.SENDING), lease
    due = msg.send_at if scheduled and msg.send_at is not None else now
    conn.execute(
        "INSERT INTO messages(id, created_at, sender, from_header, subject, message_id, client_ip,"
        " client_helo, auth_user, size, body_sha256, send_at, held, route_hint)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (qid, now, msg.sender, msg.from_header, msg.subject, msg.message_id_header, msg.client_ip,
         msg.client_helo, msg.auth_user, len(msg.body), msg.body_sha256,
         msg.send_at, 1 if msg.held else 0, msg.route_hint),
    )
    conn.execute("INSERT INTO bodies(message_id, data) VALUES (?, ?)", (qid, msg.body))
    owner, until = leased if leased is not None else (None, None)
    # SQLite gives the new row's id without RETURNING (which costs it an ephemeral table per statement)
    returning = " RETURNING id" if dialect(conn) == "postgresql" else ""
    for rcpt in msg.recipients:
        cur = conn.execute(
            "INSERT INTO recipients(message_id, address, domain, status, next_attempt_at, updated_at,"
            " leased_until, lease_owner) VALUES (?,?,?,?,?,?,?,?)" + returning,
            (qid, rcpt, domain_of(rcpt), status, due, now, until, owner),
        )
        rid: int = cur.fetchone()[0] if returning else cur.lastrowid  # type: ignore[assignment]
        if ids is not None:
            ids.append(rid)
        add_event(conn, now, qid, rid, event_status, actor, "send-at" if scheduled else "accepted")
    return qid


def _leased(msg: NewMessage, ids: list[int], now: float, owner: str, until: float) -> tuple[Recipient, ...]:
    """The ``Recipient`` records ``insert_message`` just wrote with a lease (no read back): the row's
    defaults for everything else."""
    return tuple(Recipient(id=rid, message_id=msg.queue_id, address=rcpt, domain=domain_of(rcpt),
                           status=Status.SENDING, next_attempt_at=now, updated_at=now, leased_until=until,
                           lease_owner=owner)
                 for rid, rcpt in zip(ids, msg.recipients, strict=True))


def _new_message(msg: NewMessage, now: float) -> Message:
    """The ``Message`` record of a message just inserted by ``insert_message`` (no read back)."""
    return Message(id=msg.queue_id, created_at=now, sender=msg.sender, size=len(msg.body),
                   body_sha256=msg.body_sha256, from_header=msg.from_header,
                   subject=msg.subject, message_id=msg.message_id_header, client_ip=msg.client_ip,
                   client_helo=msg.client_helo, auth_user=msg.auth_user, send_at=msg.send_at,
                   held=msg.held, route_hint=msg.route_hint)


# The due recipients of one status, earliest first: the status index (recipients_due) read in order, so a
# claim reads about ``limit`` rows however many are due (one query with OR over the statuses could not use
# that order: it sorted every due recipient, seconds per claim with a million queued). PostgreSQL: several
# nodes claim at once; each takes rows no other claim holds.
_DUE = ("SELECT r.* FROM recipients r WHERE r.status = ? AND {} AND NOT EXISTS (SELECT 1 FROM messages m"
        " WHERE m.id = r.message_id AND m.held = 1) ORDER BY r.next_attempt_at LIMIT ?")


def _due(conn: Conn, now: float, limit: int) -> list[Any]:
    """Up to ``limit`` recipients to claim, by next attempt: queued, deferred and scheduled ones whose time
    came, and those whose lease expired, of messages not held."""
    lock = " FOR UPDATE OF r SKIP LOCKED" if dialect(conn) == "postgresql" else ""
    rows: list[Any] = []
    due, expired = "r.next_attempt_at <= ?", "r.leased_until < ?"
    for status, cond in ((Status.QUEUED, due), (Status.DEFERRED, due), (Status.SCHEDULED, due),
                         (Status.SENDING, expired)):
        rows += conn.execute(_DUE.format(cond) + lock, (status, now, limit)).fetchall()
    rows.sort(key=lambda r: r["next_attempt_at"])
    return rows[:limit]


def _select_in(conn: Conn, sql: str, keys: Sequence[Any], chunk: int = 500) -> list[Any]:
    """``sql`` ending in ``IN`` run for ``keys`` (in chunks of ``chunk`` placeholders): all rows."""
    rows: list[Any] = []
    for i in range(0, len(keys), chunk):
        part = keys[i:i + chunk]
        rows += conn.execute(f"{sql} ({','.join('?' * len(part))})", tuple(part)).fetchall()
    return rows


def _messages(conn: Conn, ids: Sequence[str]) -> list[Message]:
    return [message_of(row) for row in _select_in(conn, "SELECT * FROM messages WHERE id IN", ids)]


def _complete_one(conn: Conn, res: RecipientResult, actor: str, now: float) -> str | None:
    if res.status not in Status.RESULTS:
        raise ValueError(f"not a result status: {res.status}")
    row = conn.execute("SELECT message_id, status FROM recipients WHERE id=?", (res.recipient_id,)).fetchone()
    if row is None or row["status"] == Status.CANCELLED:
        return None
    nxt = res.next_attempt_at if res.status == Status.DEFERRED else now
    if res.status == Status.DEFERRED and nxt is None:
        raise ValueError("deferred result needs next_attempt_at")
    current = row["status"]
    if current in Status.DUE:       # the lease expired and the recipient returned while the attempt ran
        current = Status.SENDING
    if not can_transition(current, res.status):
        return None                 # it already ended (a duplicate claim finished first): keep that
    set_status(conn, res.recipient_id, current, res.status, now,
               "reason=?, attempts=attempts+?, next_attempt_at=?, leased_until=NULL, lease_owner=NULL,"
               " last_code=?, last_enhanced=?, last_text=?, route=COALESCE(?, route)",
               (res.reason, 0 if res.reason in NOT_AN_ATTEMPT else 1, nxt, res.code, res.enhanced, res.text,
                res.route))
    details = {k: v for k, v in (("code", res.code), ("enhanced", res.enhanced), ("text", res.text),
                                 ("route", res.route),
                                 ("next_attempt_at", nxt if res.status == Status.DEFERRED else None))
               if v is not None}
    add_event(conn, now, row["message_id"], res.recipient_id, res.status, actor, res.reason, details)
    return str(row["message_id"])


def _insert_attempt(conn: Conn, a: AttemptLog, recipient_ids: list[int],
                    transcript: str | None = None) -> None:
    """The attempt's row. ``transcript``: its JSON (``transcript_json``), encoded by the caller before the
    write, outside the write lock every worker queues for (~50 us per attempt, the largest single cost of
    a delivery's write job); computed here when not given."""
    conn.execute(
        "INSERT INTO attempts(message_id, started_at, ended_at, route, host, ip, tls, result, recipients,"
        " transcript) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (a.message_id, a.started_at, a.ended_at, a.route, a.host, a.ip,
         None if a.tls is None else int(bool(a.tls)), a.result,
         json.dumps(list(a.recipients) or recipient_ids),
         transcript if transcript is not None else transcript_json(a.transcript)),
    )


_TRANSCRIPT_KEYS = ("at", "dir", "line")


def transcript_json(lines: Sequence[Mapping[str, Any]]) -> str:
    """``json.dumps(list(lines))``, byte for byte, for the usual ``{"at", "dir", "line"}`` entries at ~1/3
    of its cost: the entries of one attempt share a few timestamps, and formatting a float is most of what
    the generic encoder spends (~1 us each on this VM). Any other entry shape goes to json.dumps."""
    parts = []
    times: dict[Any, str] = {}
    for e in lines:
        at, direction, line = e.get("at"), e.get("dir"), e.get("line")
        if (tuple(e) != _TRANSCRIPT_KEYS or type(at) is not float or type(direction) is not str
                or type(line) is not str):
            return json.dumps(list(lines))
        t = times.get(at)
        if t is None:
            t = times[at] = json.dumps(at)
        parts.append(f'{{"at": {t}, "dir": {_json_str(direction)}, "line": {_json_str(line)}}}')
    return "[" + ", ".join(parts) + "]"


def recover_sync(conn: Conn, now: float, poison_limit: int, owner: str | None = None) -> dict[str, int]:
    """Every 'sending' lease belongs to a dead process -> queued; a message whose processing was interrupted
    ``poison_limit`` times fails with reason 'poison'. With ``owner``, only the leases of that (dead) worker
    process (``lease_owner``): the other workers of the instance keep theirs."""
    stats = {"requeued": 0, "poisoned": 0}
    mine, args = ("", ()) if owner is None else (" AND lease_owner=?", (owner,))
    _count_crashes(conn, mine, args)
    poisoned = [r["id"] for r in conn.execute(
        "SELECT id FROM messages WHERE crash_count >= ? AND EXISTS (SELECT 1 FROM recipients WHERE"
        " message_id=messages.id AND status='sending'" + mine + ")", (poison_limit, *args))]
    for mid in poisoned:
        for r in conn.execute("SELECT id FROM recipients WHERE message_id=? AND status='sending'" + mine,
                              (mid, *args)).fetchall():
            set_status(conn, r["id"], Status.SENDING, Status.FAILED, now,
                       "reason='poison', leased_until=NULL, lease_owner=NULL")
            add_event(conn, now, mid, r["id"], Status.FAILED, "system", "poison",
                      {"text": f"processing crashed the process {poison_limit} times"})
            stats["poisoned"] += 1
    for r in conn.execute("SELECT id, message_id FROM recipients WHERE status='sending'" + mine,
                          args).fetchall():
        set_status(conn, r["id"], Status.SENDING, Status.QUEUED, now, "leased_until=NULL, lease_owner=NULL")
        add_event(conn, now, r["message_id"], r["id"], Status.QUEUED, "system", "recovered-lease")
        stats["requeued"] += 1
    return stats


class MessageStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time, *, poison_limit: int = 3):
        self.db = db
        self.clock = clock
        self.poison_limit = poison_limit

    # ---- intake ----------------------------------------------------------------------------------
    async def enqueue(self, msg: NewMessage, actor: str = "smtp") -> str:
        """Store a new message and its recipients; returns the queue id once durable."""
        now = self.clock()
        return await self.db.write(lambda conn: insert_message(conn, msg, now, actor), inline=True)

    async def enqueue_claimed(self, msg: NewMessage, owner: str, lease: float,
                              actor: str = "smtp") -> tuple[Claim, set[str]] | None:
        """Store a new message with its recipients already leased to ``owner`` (the delivery scheduler of
        the process that accepted it takes it at once: no claim transaction, no body read). Returns, once
        durable, the claim and which of its addresses are suppressed (as ``prefetch`` tells a claim
        round); None when the message is not due now (scheduled or held: stored as ``enqueue`` does). A
        crash before the delivery ends is recovered like any claim (``recover`` by owner)."""
        now = self.clock()
        message = _new_message(msg, now)          # built outside the write lock: nothing in it is read back

        def _do(conn: Conn) -> tuple[Claim, set[str]] | None:
            ids: list[int] = []
            insert_message(conn, msg, now, actor, (owner, now + lease), ids)
            if msg.held or (msg.send_at is not None and msg.send_at > now):
                return None
            suppressed = {a.lower() for a in msg.recipients if _supp.is_suppressed(conn, a, now)}
            return Claim(message, _leased(msg, ids, now, owner, now + lease)), suppressed

        return await self.db.write(_do, inline=True)

    async def enqueue_once(self, msg: NewMessage, actor: str) -> tuple[str, bool]:
        """Enqueue unless a message with ``msg.queue_id`` exists (an idempotent redelivery after a crash):
        returns (queue id, created)."""
        now = self.clock()

        def _do(conn: Conn) -> tuple[str, bool]:
            if conn.execute("SELECT 1 FROM messages WHERE id=?", (msg.queue_id,)).fetchone():
                return msg.queue_id, False
            return insert_message(conn, msg, now, actor), True

        return await self.db.write(_do)

    # ---- delivery side ---------------------------------------------------------------------------
    async def claim(self, owner: str, *, limit: int = 100, lease: float = 300.0,
                    now: float | None = None) -> list[Claim]:
        """Lease due recipients (queued/deferred/scheduled whose time came, or expired leases) of messages
        that are not held; each claimed message's crash_count goes up (poison accounting)."""
        t = self.clock() if now is None else now
        return await self.db.write(lambda conn: self._claim(conn, owner, limit, lease, t), inline=True)

    @staticmethod
    def _claim(conn: Conn, owner: str, limit: int, lease: float, now: float) -> list[Claim]:
        rows = _due(conn, now, limit)
        if not rows:
            return []
        until = now + lease
        set_statuses(conn, [(r["id"], r["status"]) for r in rows], Status.SENDING, now,
                     "leased_until=?, lease_owner=?", (until, owner))
        mids = list(dict.fromkeys(r["message_id"] for r in rows))       # in claim order
        messages = {m.id: m for m in _messages(conn, mids)}
        recipients: dict[str, list[Recipient]] = {mid: [] for mid in mids}
        for r in rows:
            recipients[r["message_id"]].append(recipient_of(r, status=Status.SENDING, leased_until=until,
                                                             lease_owner=owner))
        # An expired lease taken over: its holder stopped processing it without a result (hung or died
        # unseen), which counts for the poison accounting as recover() counts a crash.
        conn.executemany("UPDATE messages SET crash_count = crash_count + 1 WHERE id=?",
                         [(mid,) for mid in {r["message_id"] for r in rows if r["status"] == Status.SENDING}])
        return [Claim(messages[mid], tuple(recipients[mid])) for mid in mids]

    async def body(self, message_id: str) -> bytes | None:
        def _get(conn: Conn) -> bytes | None:
            row = conn.execute("SELECT data FROM bodies WHERE message_id=?", (message_id,)).fetchone()
            return bytes(row[0]) if row else None

        return await self.db.read(_get)

    async def prefetch(self, addresses: set[str], body_ids: list[str],
                       now: float | None = None) -> tuple[set[str], dict[str, bytes]]:
        """One reader round trip per claim round: which addresses are suppressed, and the given bodies."""
        t = self.clock() if now is None else now

        def _do(conn: Conn) -> tuple[set[str], dict[str, bytes]]:
            suppressed = {a.lower() for a in addresses if _supp.is_suppressed(conn, a, t)}
            rows = _select_in(conn, "SELECT message_id, data FROM bodies WHERE message_id IN", body_ids)
            return suppressed, {row[0]: bytes(row[1]) for row in rows}

        return await self.db.read(_do)

    async def complete(self, results: Iterable[RecipientResult], *, attempt: AttemptLog | None = None,
                       actor: str = "delivery") -> None:
        """Record per-recipient results (and the SMTP transaction that produced them) in one commit."""
        done = list(results)
        if not done and attempt is None:
            return
        now = self.clock()
        transcript = transcript_json(attempt.transcript) if attempt is not None else None

        def _do(conn: Conn) -> None:
            msg_ids = {mid for res in done if (mid := _complete_one(conn, res, actor, now)) is not None}
            if attempt is not None:
                _insert_attempt(conn, attempt, [r.recipient_id for r in done], transcript)
                msg_ids.add(attempt.message_id)
            _reset_crash_count(conn, msg_ids)

        await self.db.write(_do, inline=True)

    async def release(self, ids: list[int], at: float,
                      why: tuple[int | None, str | None, str] | None = None) -> int:
        """Hand claimed recipients back to the queue without an attempt (a full destination backlog, a
        parked destination, a shutdown that cancelled them): no status event, since nothing happened to
        them, and the poison accounting is undone once nothing of the message is in flight. ``why`` (code,
        enhanced, text) is kept as the recipient's last reply: what an admin reads while it waits.
        Returns the messages touched."""
        now = self.clock()
        extra, values = ("", ()) if why is None else (", last_code=?, last_enhanced=?, last_text=?", why)

        def _do(conn: Conn) -> int:
            rows = _select_in(conn, "SELECT id, message_id FROM recipients WHERE status='sending' AND id IN",
                              list(dict.fromkeys(ids)))
            set_statuses(conn, [(r["id"], Status.SENDING) for r in rows], Status.QUEUED, now,
                         "next_attempt_at=?, leased_until=NULL, lease_owner=NULL" + extra, (at, *values))
            mids = {r["message_id"] for r in rows}
            _reset_crash_count(conn, mids)
            return len(mids)

        return await self.db.write(_do, inline=True)

    async def mark_bounced(self, recipient_id: int, code: int | None, enhanced: str | None, text: str | None,
                           reason: str | None, actor: str = "bounce") -> bool:
        """An asynchronous bounce: the recipient becomes bounced, also after delivered."""
        now = self.clock()

        def _do(conn: Conn) -> bool:
            return mark_bounced_sync(conn, now, recipient_id, code, enhanced, text, reason, actor,
                                     {"code": code, "enhanced": enhanced, "text": text})

        return await self.db.write(_do)

    async def mark_delay_notice(self, message_id: str) -> bool:
        """True the first time only: at most one "delayed" report per message (a kv marker)."""
        now = self.clock()

        def _do(conn: Conn) -> bool:
            cur = conn.execute("INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
                               (f"delay-notice:{message_id}", str(now)))
            return bool(cur.rowcount == 1)

        return await self.db.write(_do)

    # ---- admin operations --------------------------------------------------------------------------
    async def exists(self, message_id: str) -> bool:
        def _do(conn: Conn) -> bool:
            return conn.execute("SELECT 1 FROM messages WHERE id=?", (message_id,)).fetchone() is not None

        return await self.db.read(_do)

    async def get(self, message_id: str) -> Message | None:
        def _do(conn: Conn) -> Message | None:
            row = conn.execute("SELECT * FROM messages WHERE id=?", (message_id,)).fetchone()
            return message_of(row) if row else None

        return await self.db.read(_do)

    async def recipients(self, message_id: str) -> list[Recipient]:
        def _do(conn: Conn) -> list[Recipient]:
            return [recipient_of(r) for r in conn.execute(
                "SELECT * FROM recipients WHERE message_id=? ORDER BY id", (message_id,))]

        return await self.db.read(_do)

    @staticmethod
    def _ids(conn: Conn, message_id: str, recipient_ids: list[int] | None,
             statuses: Iterable[str]) -> list[tuple[int, str]]:
        if conn.execute("SELECT 1 FROM messages WHERE id=?", (message_id,)).fetchone() is None:
            raise QueueError(f"no such message: {message_id}")
        wanted = tuple(statuses)
        marks = ",".join("?" * len(wanted))
        rows = conn.execute(f"SELECT id, status FROM recipients WHERE message_id=? AND status IN ({marks})",
                            (message_id, *wanted)).fetchall()
        keep = None if recipient_ids is None else set(recipient_ids)
        return [(r["id"], r["status"]) for r in rows if keep is None or r["id"] in keep]

    async def _move(self, message_id: str, recipient_ids: list[int] | None, from_statuses: Iterable[str],
                    to_status: str, actor: str, reason: str | None, assignments: str = "",
                    args: Sequence[Any] = ()) -> int:
        now = self.clock()

        def _do(conn: Conn) -> int:
            ids = self._ids(conn, message_id, recipient_ids, from_statuses)
            for rid, current in ids:
                values = tuple(now if a is _NOW else a for a in args)
                set_status(conn, rid, current, to_status, now, ("reason=?" + (", " + assignments
                                                                               if assignments else "")),
                           (reason, *values))
                add_event(conn, now, message_id, rid, to_status, actor, reason)
            return len(ids)

        return await self.db.write(_do)

    async def cancel(self, message_id: str, recipient_ids: list[int] | None = None,
                     actor: str = "admin") -> int:
        """Cancel recipients that are not being sent and not final. Returns how many."""
        return await self._move(message_id, recipient_ids, (Status.SCHEDULED, Status.QUEUED, Status.DEFERRED),
                                Status.CANCELLED, actor, "cancelled")

    async def retry_now(self, message_id: str, actor: str = "admin") -> int:
        return await self._move(message_id, None, (Status.DEFERRED, Status.QUEUED, Status.SCHEDULED),
                                Status.QUEUED, actor, "retry-now", "next_attempt_at=?, leased_until=NULL",
                                (_NOW,))

    async def schedule(self, message_id: str, at: float, actor: str = "admin") -> int:
        """Schedule (or reschedule) the pending recipients (scheduled, queued, deferred) for ``at``: they
        become ``scheduled`` (``queued`` if ``at`` has passed) with their next attempt then, and the
        message's send-at becomes ``at`` (its lifetime counts from then). One event per recipient with the
        old and the new time. Returns how many recipients moved (0: none was pending)."""
        now = self.clock()
        return await self.db.write(lambda conn: _reschedule(conn, message_id, at, now, actor, "rescheduled"))

    async def send_now(self, message_id: str, actor: str = "admin") -> int:
        """Make the pending recipients due now (also scheduled and deferred ones); a send-at still in the
        future becomes now. Returns how many recipients moved."""
        now = self.clock()
        return await self.db.write(lambda conn: _reschedule(conn, message_id, now, now, actor, "send-now"))

    async def resend(self, message_id: str, recipient_ids: list[int] | None = None,
                     actor: str = "admin") -> int:
        """Final recipients get a new attempt chain (the body must still be retained)."""
        def _check(conn: Conn) -> bool:
            return conn.execute("SELECT 1 FROM bodies WHERE message_id=?",
                                (message_id,)).fetchone() is not None

        if not await self.db.read(_check):
            if not await self.exists(message_id):
                raise QueueError(f"no such message: {message_id}")
            raise QueueError(f"body of {message_id} is no longer retained; cannot resend")
        return await self._move(message_id, recipient_ids, tuple(Status.FINAL), Status.QUEUED, actor,
                                "resend",
                                "attempts=0, next_attempt_at=?, leased_until=NULL", (_NOW,))

    async def set_held(self, message_id: str, held: bool, actor: str = "admin") -> bool:
        """Hold (no claims) or release a message; False when it already was in that state."""
        now = self.clock()
        flag = 1 if held else 0

        def _do(conn: Conn) -> bool:
            cur = conn.execute("UPDATE messages SET held=? WHERE id=? AND held<>?", (flag, message_id, flag))
            if conn.execute("SELECT 1 FROM messages WHERE id=?", (message_id,)).fetchone() is None:
                raise QueueError(f"no such message: {message_id}")
            if cur.rowcount:
                add_event(conn, now, message_id, None, "held" if held else "released", actor, None)
            return bool(cur.rowcount)

        return await self.db.write(_do)

    async def delete(self, message_id: str, actor: str = "admin") -> bool:
        """Remove a message none of whose recipients is being delivered."""
        def _do(conn: Conn) -> bool:
            active = conn.execute("SELECT COUNT(*) FROM recipients WHERE message_id=? AND status='sending'",
                                  (message_id,)).fetchone()[0]
            if active:
                raise QueueError(f"{message_id}: {BEING_DELIVERED}")
            cur = conn.execute("DELETE FROM messages WHERE id=?", (message_id,))
            return bool(cur.rowcount)

        return await self.db.write(_do)

    # ---- crash recovery and retention ----------------------------------------------------------------
    async def recover(self, owner: str | None = None) -> dict[str, int]:
        """At start: every lease back to the queue; ``owner``: only a dead worker's (relaybox.workers)."""
        now = self.clock()
        return await self.db.write(lambda conn: recover_sync(conn, now, self.poison_limit, owner))

    async def prune(self, body_days: float, meta_days: float, batch: int = 500) -> int:
        """Retention in small batches: bodies of finished messages after ``body_days``, the message with
        its events and attempts after ``meta_days``. Returns how many rows went (0 = nothing left)."""
        now = self.clock()

        def _do(conn: Conn) -> int:
            final = "NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id=m.id AND r.status NOT IN" \
                    " ('delivered','bounced','failed','cancelled'))"
            n = int(conn.execute(
                f"DELETE FROM bodies WHERE message_id IN (SELECT id FROM messages m WHERE created_at < ? AND"
                f" {final} LIMIT ?)", (now - body_days * 86400, batch)).rowcount)
            ids = [r[0] for r in conn.execute(
                f"SELECT id FROM messages m WHERE created_at < ? AND {final} LIMIT ?",
                (now - meta_days * 86400, batch))]
            conn.execute("DELETE FROM queue_shape WHERE n = 0")       # slots the queue has left
            for mid in ids:
                conn.execute("DELETE FROM events WHERE message_id=?", (mid,))
                conn.execute("DELETE FROM attempts WHERE message_id=?", (mid,))
                conn.execute("DELETE FROM messages WHERE id=?", (mid,))
            return n + len(ids)

        return await self.db.write(_do)


_NOW = object()   # placeholder in _move's args: "the time of the write"


def _reschedule(conn: Conn, message_id: str, at: float, now: float, actor: str, reason: str) -> int:
    """Pending recipients of one message get their next attempt at ``at`` (scheduled when it is in the
    future, queued otherwise), each with an event holding the old and the new time."""
    if conn.execute("SELECT 1 FROM messages WHERE id=?", (message_id,)).fetchone() is None:
        raise QueueError(f"no such message: {message_id}")
    rows = conn.execute("SELECT id, status, next_attempt_at FROM recipients WHERE message_id=? AND status IN"
                        " ('scheduled','queued','deferred') ORDER BY id", (message_id,)).fetchall()
    new = Status.SCHEDULED if at > now else Status.QUEUED
    for r in rows:
        set_status(conn, r["id"], r["status"], new, now, "reason=?, next_attempt_at=?, leased_until=NULL",
                   (reason, at))
        add_event(conn, now, message_id, r["id"], new, actor, reason,
                  {"old": r["next_attempt_at"], "new": at, "previous": r["status"]})
    if rows:
        if reason == "send-now":    # a send-at still ahead is now; one in the past stays (lifetime)
            conn.execute("UPDATE messages SET send_at=? WHERE id=? AND send_at > ?", (at, message_id, at))
        else:
            conn.execute("UPDATE messages SET send_at=? WHERE id=?", (at, message_id))
    return len(rows)


def mark_bounced_sync(conn: Conn, now: float, recipient_id: int, code: int | None, enhanced: str | None,
                      text: str | None, reason: str | None, actor: str, details: Mapping[str, Any],
                      skip_same: bool = False) -> bool:
    """A recipient becomes bounced (any state but cancelled/active); ``skip_same``: a report identical to
    the last one recorded changes nothing (re-fetched or duplicated reports). Returns whether it changed."""
    row = conn.execute("SELECT message_id, status, last_enhanced, last_text FROM recipients WHERE id=?",
                       (recipient_id,)).fetchone()
    if row is None or not can_transition(row["status"], Status.BOUNCED):
        return False
    if skip_same and row["status"] == Status.BOUNCED and row["last_enhanced"] == (enhanced or None) \
            and row["last_text"] == text:
        return False
    set_status(conn, recipient_id, row["status"], Status.BOUNCED, now,
               "reason=?, last_code=?, last_enhanced=?, last_text=?, leased_until=NULL, lease_owner=NULL",
               (reason, code, enhanced or None, text))
    add_event(conn, now, row["message_id"], recipient_id, Status.BOUNCED, actor, reason,
              {**details, "previous": row["status"]} if skip_same else details)
    return True
