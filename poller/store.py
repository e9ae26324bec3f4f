"""Inbound messages and checkpoints in the database (functions run inside db.write / db.read).

Life of an inbound row: ``received`` (stored durably, the checkpoint moved past its UID in the same
transaction) -> ``delivered`` (the campaign accepted it; the mailbox action is still to do) -> ``done``
(flagged/moved/deleted on the server). Failures count ``tries`` with a backoff ``next_try_at``; after
``poller.max_tries`` the row is ``quarantined`` with its error, visible and retryable, and the channel goes
on. ``duplicate`` marks a message seen again after a UIDVALIDITY change (same Message-ID and content);
``skipped`` a POP3 message that recipient_only leaves alone; a message larger than
``poller.max_message_size`` is ``quarantined`` without its content.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time


def checkpoint(conn: sqlite3.Connection, channel: str, folder: str) -> tuple[int, int] | None:
    row = conn.execute("SELECT uidvalidity, last_uid FROM checkpoints WHERE channel=? AND folder=?",
                       (channel, folder)).fetchone()
    return (row[0], row[1]) if row else None


def set_checkpoint(conn: sqlite3.Connection, channel: str, folder: str, uidvalidity: int, last_uid: int) -> None:
    conn.execute("INSERT INTO checkpoints(channel, folder, uidvalidity, last_uid, updated_at) VALUES (?,?,?,?,?)"
                 " ON CONFLICT(channel, folder) DO UPDATE SET uidvalidity=excluded.uidvalidity,"
                 " last_uid=excluded.last_uid, updated_at=excluded.updated_at",
                 (channel, folder, uidvalidity, last_uid, time.time()))


def message_id_of(raw: bytes) -> str | None:
    head = raw[:65536].split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    for i, line in enumerate(lines):
        if line[:11].lower() == b"message-id:":
            value = line[11:]
            for cont in lines[i + 1:]:
                if cont[:1] not in (b" ", b"\t"):
                    break
                value += cont
            return value.strip().decode("utf-8", "replace") or None
    return None


def store_fetched(conn: sqlite3.Connection, channel: str, folder: str, uidvalidity: int,
                  items: list[tuple[str, bytes | None, str | None]], new_last_uid: int | None,
                  dedupe: bool) -> list[int]:
    """Store a fetched batch and move the checkpoint, atomically. ``items``: (uid, raw or None, skip reason).
    Returns the ids of rows to process."""
    now = time.time()
    ids = []
    for uid, raw, skip in items:
        data = raw or b""
        digest = hashlib.sha256(data).hexdigest()
        msgid = message_id_of(data) if raw else None
        status, err = "received", None
        if skip == "not-addressed":          # recipient_only (POP3 remembers it by UIDL): not an error
            status, err = "skipped", skip
        elif skip:
            status, err = "quarantined", skip
        elif dedupe and conn.execute(
                "SELECT 1 FROM inbound WHERE channel=? AND sha256=? AND (message_id IS ? OR message_id=?)"
                " AND folder=? AND uidvalidity<>?", (channel, digest, msgid, msgid, folder, uidvalidity)).fetchone():
            status = "duplicate"
        cur = conn.execute(
            "INSERT OR IGNORE INTO inbound(channel, folder, uidvalidity, uid, message_id, sha256, size, raw,"
            " status, last_error, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (channel, folder, uidvalidity, uid, msgid, digest, len(data), raw, status, err, now, now))
        if cur.rowcount and status == "received":
            ids.append(cur.lastrowid)
        if cur.rowcount:
            conn.execute("UPDATE channels SET fetched=fetched+1 WHERE name=?", (channel,))
            if status == "quarantined":
                conn.execute("UPDATE channels SET quarantined=quarantined+1 WHERE name=?", (channel,))
    if new_last_uid is not None:
        set_checkpoint(conn, channel, folder, uidvalidity, new_last_uid)
    return ids


def pending(conn: sqlite3.Connection, channel: str, now: float, limit: int = 200) -> list[dict]:
    """Rows to (re)deliver or whose mailbox action is still due."""
    return [dict(r) for r in conn.execute(
        "SELECT id, folder, uidvalidity, uid, status, tries FROM inbound WHERE channel=? AND"
        " ((status='received' AND next_try_at<=?) OR status='delivered') ORDER BY id LIMIT ?",
        (channel, now, limit))]


def raw_of(conn: sqlite3.Connection, inbound_id: int) -> bytes | None:
    row = conn.execute("SELECT raw FROM inbound WHERE id=?", (inbound_id,)).fetchone()
    return bytes(row[0]) if row and row[0] is not None else None


def mark_delivered(conn: sqlite3.Connection, inbound_id: int, campaign: str, filter_index: int | None,
                   result: str) -> None:
    conn.execute("UPDATE inbound SET status='delivered', campaign=?, filter_id=?, result=?, last_error=NULL,"
                 " updated_at=? WHERE id=?", (campaign, filter_index, result[:500], time.time(), inbound_id))
    conn.execute("UPDATE channels SET routed=routed+1 WHERE name=(SELECT channel FROM inbound WHERE id=?)",
                 (inbound_id,))


def mark_done(conn: sqlite3.Connection, inbound_id: int, keep_raw: bool = False) -> None:
    conn.execute("UPDATE inbound SET status='done', updated_at=?" + ("" if keep_raw else ", raw=NULL") +
                 " WHERE id=?", (time.time(), inbound_id))


def mark_failed(conn: sqlite3.Connection, inbound_id: int, error: str, max_tries: int, first: float,
                cap: float) -> bool:
    """Count a failed delivery; returns True when the row went to quarantine."""
    row = conn.execute("SELECT tries, channel FROM inbound WHERE id=?", (inbound_id,)).fetchone()
    tries = row["tries"] + 1
    now = time.time()
    if tries >= max_tries:
        conn.execute("UPDATE inbound SET status='quarantined', tries=?, last_error=?, updated_at=? WHERE id=?",
                     (tries, error[:1000], now, inbound_id))
        conn.execute("UPDATE channels SET quarantined=quarantined+1 WHERE name=?", (row["channel"],))
        return True
    delay = min(cap, first * (2 ** (tries - 1)))
    conn.execute("UPDATE inbound SET tries=?, last_error=?, next_try_at=?, updated_at=? WHERE id=?",
                 (tries, error[:1000], now + delay, now, inbound_id))
    return False


def quarantine(conn: sqlite3.Connection, limit: int = 100, channel: str | None = None) -> list[dict]:
    q = ("SELECT id, channel, folder, uid, message_id, size, tries, last_error, created_at, updated_at"
         " FROM inbound WHERE status='quarantined'")
    args: list = []
    if channel:
        q += " AND channel=?"
        args.append(channel)
    return [dict(r) for r in conn.execute(q + " ORDER BY id DESC LIMIT ?", (*args, limit))]


def retry_quarantined(conn: sqlite3.Connection, inbound_id: int) -> bool:
    """Back to 'received' with fresh tries (a message quarantined before it was fetched is refetched:
    its checkpoint is not moved back, so it is only retried when its raw is stored)."""
    return conn.execute("UPDATE inbound SET status='received', tries=0, next_try_at=0, updated_at=? WHERE id=?"
                        " AND status='quarantined' AND raw IS NOT NULL", (time.time(), inbound_id)).rowcount > 0


def drop_quarantined(conn: sqlite3.Connection, inbound_id: int) -> bool:
    return conn.execute("DELETE FROM inbound WHERE id=? AND status='quarantined'", (inbound_id,)).rowcount > 0


def seen_uidls(conn: sqlite3.Connection, channel: str) -> set[str]:
    return {r[0] for r in conn.execute("SELECT uid FROM inbound WHERE channel=? AND folder='POP3'", (channel,))}


def record_poll(conn: sqlite3.Connection, channel: str, error: str | None) -> None:
    now = time.time()
    if error is None:
        conn.execute("UPDATE channels SET last_poll_at=?, last_success_at=?, last_error=NULL WHERE name=?",
                     (now, now, channel))
    else:
        conn.execute("UPDATE channels SET last_poll_at=?, last_error=? WHERE name=?", (now, error[:1000], channel))


def next_retry_at(conn: sqlite3.Connection, channel: str) -> float | None:
    row = conn.execute("SELECT MIN(next_try_at) FROM inbound WHERE channel=? AND status='received'",
                       (channel,)).fetchone()
    return row[0] if row and row[0] is not None else None
