"""The spool: enqueue, claim with a lease, complete/defer/fail, admin operations, crash recovery.

Every status change of a recipient writes an ``events`` row in the same transaction (the durable outbox
for event webhooks and the message history admins read). All writes go through ``Database.write`` and
therefore through group commit: ``enqueue`` returns only once the message is on stable storage.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from relay.envelope import NewMessage, Status, domain_of
from store.sqlite import Database


@dataclass
class Claim:
    message: dict
    recipients: list[dict] = field(default_factory=list)


@dataclass
class RecipientResult:
    recipient_id: int
    status: str                        # delivered | deferred | bounced | failed
    code: int | None = None
    enhanced: str | None = None
    text: str | None = None
    next_attempt_at: float | None = None
    reason: str | None = None
    route: str | None = None


class QueueError(Exception):
    """An admin operation that does not apply (unknown id, wrong state)."""


def add_event(conn: sqlite3.Connection, at: float, message_id: str, recipient_id: int | None, status: str,
              actor: str, reason: str | None = None, details: dict | None = None) -> None:
    conn.execute(
        "INSERT INTO events(at, message_id, recipient_id, status, actor, reason, details) VALUES (?,?,?,?,?,?,?)",
        (at, message_id, recipient_id, status, actor, reason, json.dumps(details) if details else None),
    )


class Spool:
    def __init__(self, db: Database, *, poison_limit: int = 3, clock: Callable[[], float] = time.time):
        self.db = db
        self.poison_limit = poison_limit
        self.clock = clock
        # called (no arguments, in the loop) after each durable enqueue: the scheduler wakes at once
        self.on_enqueue: list[Callable[[], None]] = []

    # ---- intake ----------------------------------------------------------------------------------
    async def enqueue(self, msg: NewMessage, actor: str = "smtp") -> str:
        now = self.clock()
        qid = await self.db.write(lambda conn: self._enqueue(conn, msg, now, actor))
        for cb in self.on_enqueue:
            cb()
        return qid

    def _enqueue(self, conn: sqlite3.Connection, msg: NewMessage, now: float, actor: str) -> str:
        qid = msg.queue_id
        scheduled = msg.send_at is not None and msg.send_at > now
        status = Status.SCHEDULED if scheduled else Status.QUEUED
        due = msg.send_at if scheduled else now
        conn.execute(
            "INSERT INTO messages(id, created_at, sender, from_header, subject, message_id, client_ip, client_helo,"
            " auth_user, size, body_sha256, send_at, held) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (qid, now, msg.sender, msg.from_header, msg.subject, msg.message_id_header, msg.client_ip,
             msg.client_helo, msg.auth_user, len(msg.body), hashlib.sha256(msg.body).hexdigest(),
             msg.send_at, 1 if msg.held else 0),
        )
        conn.execute("INSERT INTO bodies(message_id, data) VALUES (?, ?)", (qid, msg.body))
        for rcpt in msg.recipients:
            cur = conn.execute(
                "INSERT INTO recipients(message_id, address, domain, status, next_attempt_at, updated_at)"
                " VALUES (?,?,?,?,?,?)",
                (qid, rcpt, domain_of(rcpt), status, due, now),
            )
            add_event(conn, now, qid, cur.lastrowid, status, actor,
                      "send-at" if scheduled else "accepted")
        return qid

    # ---- delivery side ---------------------------------------------------------------------------
    async def claim(self, owner: str, *, limit: int = 100, lease: float = 300.0,
                    now: float | None = None) -> list[Claim]:
        t = self.clock() if now is None else now
        return await self.db.write(lambda conn: self._claim(conn, owner, limit, lease, t))

    def _claim(self, conn, owner, limit, lease, now) -> list[Claim]:
        rows = conn.execute(
            "SELECT r.* FROM recipients r JOIN messages m ON m.id = r.message_id"
            " WHERE ((r.status IN ('queued','deferred','scheduled') AND r.next_attempt_at <= ?)"
            "        OR (r.status = 'sending' AND r.leased_until < ?)) AND m.held = 0"
            " ORDER BY r.next_attempt_at LIMIT ?",
            (now, now, limit),
        ).fetchall()
        if not rows:
            return []
        by_msg: dict[str, Claim] = {}
        for r in rows:
            conn.execute(
                "UPDATE recipients SET status='sending', leased_until=?, lease_owner=?, updated_at=? WHERE id=?",
                (now + lease, owner, now, r["id"]),
            )
            claim = by_msg.get(r["message_id"])
            if claim is None:
                m = conn.execute("SELECT * FROM messages WHERE id=?", (r["message_id"],)).fetchone()
                claim = by_msg[r["message_id"]] = Claim(dict(m))
            d = dict(r)
            d["status"] = Status.SENDING
            claim.recipients.append(d)
        # Poison accounting: count that processing of these messages started. complete() resets it; a
        # crash leaves it raised, and recover() fails messages that crashed the process poison_limit times.
        conn.executemany("UPDATE messages SET crash_count = crash_count + 1 WHERE id=?",
                         [(mid,) for mid in by_msg])
        return list(by_msg.values())

    async def body(self, message_id: str) -> bytes | None:
        def _get(conn):
            row = conn.execute("SELECT data FROM bodies WHERE message_id=?", (message_id,)).fetchone()
            return bytes(row[0]) if row else None

        return await self.db.read(_get)

    async def complete(self, results: Iterable[RecipientResult], *, attempt: dict | None = None,
                       actor: str = "delivery") -> None:
        results = list(results)
        if not results and not attempt:
            return
        now = self.clock()
        await self.db.write(lambda conn: self._complete(conn, results, attempt, actor, now))

    def _complete(self, conn, results, attempt, actor, now) -> None:
        msg_ids: set[str] = set()
        for res in results:
            if res.status not in (Status.DELIVERED, Status.DEFERRED, Status.BOUNCED, Status.FAILED):
                raise ValueError(f"not a result status: {res.status}")
            row = conn.execute("SELECT message_id, status FROM recipients WHERE id=?",
                               (res.recipient_id,)).fetchone()
            if row is None:
                continue
            if row["status"] == Status.CANCELLED:
                continue
            nxt = res.next_attempt_at if res.status == Status.DEFERRED else now
            if res.status == Status.DEFERRED and nxt is None:
                raise ValueError("deferred result needs next_attempt_at")
            conn.execute(
                "UPDATE recipients SET status=?, reason=?, attempts=attempts+?, next_attempt_at=?,"
                " leased_until=NULL, lease_owner=NULL, last_code=?, last_enhanced=?, last_text=?,"
                " route=COALESCE(?, route), updated_at=? WHERE id=?",
                (res.status, res.reason, 0 if res.reason in ("suppressed", "expired", "invalid") else 1, nxt,
                 res.code, res.enhanced, res.text, res.route, now, res.recipient_id),
            )
            details = {k: v for k, v in (("code", res.code), ("enhanced", res.enhanced), ("text", res.text),
                                         ("route", res.route), ("next_attempt_at", nxt if res.status ==
                                                                 Status.DEFERRED else None)) if v is not None}
            add_event(conn, now, row["message_id"], res.recipient_id, res.status, actor, res.reason, details)
            msg_ids.add(row["message_id"])
        if attempt:
            conn.execute(
                "INSERT INTO attempts(message_id, started_at, ended_at, route, host, ip, tls, result, recipients,"
                " transcript) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (attempt["message_id"], attempt.get("started_at", now), attempt.get("ended_at", now),
                 attempt.get("route"), attempt.get("host"), attempt.get("ip"),
                 None if attempt.get("tls") is None else int(bool(attempt.get("tls"))), attempt.get("result"),
                 json.dumps(attempt.get("recipients") or [r.recipient_id for r in results]),
                 json.dumps(attempt.get("transcript") or [])),
            )
            msg_ids.add(attempt["message_id"])
        for mid in msg_ids:
            conn.execute("UPDATE messages SET crash_count = 0 WHERE id=? AND NOT EXISTS"
                         " (SELECT 1 FROM recipients WHERE message_id=? AND status='sending')", (mid, mid))

    async def defer(self, recipient_ids: list[int], next_attempt_at: float, code=None, enhanced=None,
                    text=None, actor="delivery") -> None:
        await self.complete([RecipientResult(r, Status.DEFERRED, code, enhanced, text, next_attempt_at)
                             for r in recipient_ids], actor=actor)

    async def fail(self, recipient_ids: list[int], reason: str, code=None, enhanced=None, text=None,
                   actor="delivery") -> None:
        await self.complete([RecipientResult(r, Status.FAILED, code, enhanced, text, reason=reason)
                             for r in recipient_ids], actor=actor)

    async def mark_bounced(self, recipient_id: int, code: int | None, enhanced: str | None, text: str | None,
                           reason: str | None, actor: str = "bounce") -> bool:
        """An asynchronous bounce: the recipient becomes bounced, also after delivered."""
        now = self.clock()

        def _do(conn):
            row = conn.execute("SELECT message_id, status FROM recipients WHERE id=?", (recipient_id,)).fetchone()
            if row is None or row["status"] in (Status.CANCELLED,):
                return False
            conn.execute("UPDATE recipients SET status='bounced', reason=?, last_code=?, last_enhanced=?,"
                         " last_text=?, leased_until=NULL, updated_at=? WHERE id=?",
                         (reason, code, enhanced, text, now, recipient_id))
            add_event(conn, now, row["message_id"], recipient_id, Status.BOUNCED, actor, reason,
                      {"code": code, "enhanced": enhanced, "text": text})
            return True

        return await self.db.write(_do)

    # ---- admin operations --------------------------------------------------------------------------
    def _rids(self, conn, message_id: str, recipient_ids: list[int] | None, statuses: Iterable[str]) -> list:
        if conn.execute("SELECT 1 FROM messages WHERE id=?", (message_id,)).fetchone() is None:
            raise QueueError(f"no such message: {message_id}")
        marks = ",".join("?" * len(tuple(statuses)))
        rows = conn.execute(f"SELECT id FROM recipients WHERE message_id=? AND status IN ({marks})",
                            (message_id, *statuses)).fetchall()
        ids = [r["id"] for r in rows]
        if recipient_ids is not None:
            ids = [i for i in ids if i in set(recipient_ids)]
        return ids

    async def _transition(self, message_id, recipient_ids, from_statuses, to_status, actor, reason,
                          next_at_now=False) -> int:
        now = self.clock()

        def _do(conn):
            ids = self._rids(conn, message_id, recipient_ids, tuple(from_statuses))
            for rid in ids:
                if next_at_now:
                    conn.execute("UPDATE recipients SET status=?, reason=?, next_attempt_at=?, updated_at=?,"
                                 " leased_until=NULL WHERE id=?", (to_status, reason, now, now, rid))
                else:
                    conn.execute("UPDATE recipients SET status=?, reason=?, updated_at=? WHERE id=?",
                                 (to_status, reason, now, rid))
                add_event(conn, now, message_id, rid, to_status, actor, reason)
            return len(ids)

        return await self.db.write(_do)

    async def cancel(self, message_id: str, recipient_ids: list[int] | None = None, actor: str = "admin") -> int:
        """Cancel recipients that are not being sent and not final. Returns how many."""
        return await self._transition(message_id, recipient_ids, ("scheduled", "queued", "deferred"),
                                      Status.CANCELLED, actor, "cancelled")

    async def retry_now(self, message_id: str, actor: str = "admin") -> int:
        return await self._transition(message_id, None, ("deferred", "queued", "scheduled"), Status.QUEUED,
                                      actor, "retry-now", next_at_now=True)

    async def resend(self, message_id: str, recipient_ids: list[int] | None = None, actor: str = "admin") -> int:
        """Final recipients get a new attempt chain (the body must still be retained)."""
        def _check(conn):
            return conn.execute("SELECT 1 FROM bodies WHERE message_id=?", (message_id,)).fetchone()

        if await self.db.read(_check) is None:
            raise QueueError(f"body of {message_id} is no longer retained; cannot resend")
        now = self.clock()

        def _do(conn):
            ids = self._rids(conn, message_id, recipient_ids, tuple(Status.FINAL))
            for rid in ids:
                conn.execute("UPDATE recipients SET status='queued', reason=NULL, attempts=0, next_attempt_at=?,"
                             " leased_until=NULL, updated_at=? WHERE id=?", (now, now, rid))
                add_event(conn, now, message_id, rid, Status.QUEUED, actor, "resend")
            return len(ids)

        return await self.db.write(_do)

    async def hold(self, message_id: str, actor: str = "admin") -> bool:
        return await self._set_held(message_id, 1, actor)

    async def release(self, message_id: str, actor: str = "admin") -> bool:
        return await self._set_held(message_id, 0, actor)

    async def _set_held(self, message_id: str, held: int, actor: str) -> bool:
        now = self.clock()

        def _do(conn):
            cur = conn.execute("UPDATE messages SET held=? WHERE id=? AND held<>?", (held, message_id, held))
            if conn.execute("SELECT 1 FROM messages WHERE id=?", (message_id,)).fetchone() is None:
                raise QueueError(f"no such message: {message_id}")
            if cur.rowcount:
                add_event(conn, now, message_id, None, "held" if held else "released", actor, None)
            return bool(cur.rowcount)

        return await self.db.write(_do)

    async def delete(self, message_id: str, actor: str = "admin") -> bool:
        """Remove a message whose recipients are all final (or cancel+delete is the caller's choice)."""
        def _do(conn):
            active = conn.execute("SELECT COUNT(*) FROM recipients WHERE message_id=? AND status='sending'",
                                  (message_id,)).fetchone()[0]
            if active:
                raise QueueError(f"{message_id} is being delivered; cancel or wait")
            cur = conn.execute("DELETE FROM messages WHERE id=?", (message_id,))
            return bool(cur.rowcount)

        return await self.db.write(_do)

    # ---- crash recovery --------------------------------------------------------------------------
    async def recover(self) -> dict[str, int]:
        """At start: every 'sending' lease belongs to a dead process -> back to queued; a message whose
        processing was interrupted ``poison_limit`` times fails with reason 'poison'."""
        now = self.clock()
        return await self.db.write(lambda conn: recover_sync(conn, now, self.poison_limit))

    async def prune(self, body_days: float, meta_days: float, batch: int = 500) -> int:
        now = self.clock()

        def _do(conn):
            final = "NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id=m.id AND r.status NOT IN" \
                    " ('delivered','bounced','failed','cancelled'))"
            n = conn.execute(
                f"DELETE FROM bodies WHERE message_id IN (SELECT id FROM messages m WHERE created_at < ? AND"
                f" {final} LIMIT ?)", (now - body_days * 86400, batch)).rowcount
            ids = [r[0] for r in conn.execute(
                f"SELECT id FROM messages m WHERE created_at < ? AND {final} LIMIT ?",
                (now - meta_days * 86400, batch))]
            for mid in ids:
                conn.execute("DELETE FROM events WHERE message_id=?", (mid,))
                conn.execute("DELETE FROM attempts WHERE message_id=?", (mid,))
                conn.execute("DELETE FROM messages WHERE id=?", (mid,))
            return n + len(ids)

        return await self.db.write(_do)


def recover_sync(conn: sqlite3.Connection, now: float, poison_limit: int) -> dict[str, int]:
    stats = {"requeued": 0, "poisoned": 0}
    poisoned = [r["id"] for r in conn.execute(
        "SELECT id FROM messages WHERE crash_count >= ? AND EXISTS (SELECT 1 FROM recipients WHERE"
        " message_id=messages.id AND status='sending')", (poison_limit,))]
    for mid in poisoned:
        for r in conn.execute("SELECT id FROM recipients WHERE message_id=? AND status='sending'", (mid,)):
            conn.execute("UPDATE recipients SET status='failed', reason='poison', leased_until=NULL,"
                         " lease_owner=NULL, updated_at=? WHERE id=?", (now, r["id"]))
            add_event(conn, now, mid, r["id"], Status.FAILED, "system", "poison",
                      {"text": f"processing crashed the process {poison_limit} times"})
            stats["poisoned"] += 1
    for r in conn.execute("SELECT id, message_id FROM recipients WHERE status='sending'").fetchall():
        conn.execute("UPDATE recipients SET status='queued', leased_until=NULL, lease_owner=NULL,"
                     " updated_at=? WHERE id=?", (now, r["id"]))
        add_event(conn, now, r["message_id"], r["id"], Status.QUEUED, "system", "recovered-lease")
        stats["requeued"] += 1
    return stats


def row_dict(row: Any) -> dict:
    return dict(row) if row is not None else {}
