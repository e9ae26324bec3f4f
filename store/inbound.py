"""The inbound poller's tables: channels, filters and campaigns (``store.channels``), and here the message
flow: checkpoints, inbound messages and the quarantine.

Life of an inbound message: ``received`` (stored durably, the checkpoint moved past its UID in the same
transaction) -> ``delivered`` (the campaign accepted it; the mailbox action is still to do) -> ``done``
(flagged/moved/deleted on the server). Failures count ``tries`` with a backoff ``next_try_at``; after
``max_tries`` the message is ``quarantined`` with its error, visible and retryable, and the channel goes on.
``duplicate`` marks a message seen again after a UIDVALIDITY change (same Message-ID and content);
``skipped`` a POP3 message that recipient_only leaves alone; a message stored without content (too large)
is ``quarantined`` at once.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from store.channels import Campaign, CampaignInUse, Channel, ChannelCheck, ChannelStore, Filter
from store.errors import Conflict

__all__ = ["Campaign", "CampaignInUse", "Channel", "ChannelCheck", "Checkpoint", "Conflict", "Delivery",
           "Fetched", "Filter", "InboundMessage", "InboundStore", "QuarantineItem"]

RECEIVED, DELIVERED, DONE = "received", "delivered", "done"
QUARANTINED, DUPLICATE, SKIPPED = "quarantined", "duplicate", "skipped"
NOT_ADDRESSED = "not-addressed"         # the skip reason of recipient_only: not an error
_FORWARDING = "forwarding as "          # ``result`` of a message whose relay queue id is reserved


@dataclass(frozen=True)
class Checkpoint:
    """How far a folder of a channel was fetched: UIDs up to ``last_uid`` under ``uidvalidity``."""

    channel: str
    folder: str
    uidvalidity: int
    last_uid: int
    updated_at: float


@dataclass(frozen=True)
class Fetched:
    """One message of a fetched batch: its IMAP UID or POP3 UIDL, its content (None: not fetched), why it
    is not to be delivered (None: deliver it; ``not-addressed``: skipped; anything else: quarantined),
    and its Message-ID header (the dedupe after a UIDVALIDITY change compares it)."""

    uid: str
    raw: bytes | None = None
    skip: str | None = None
    message_id: str | None = None


@dataclass(frozen=True)
class InboundMessage:
    """One stored inbound message (its content is read separately: ``InboundStore.raw``)."""

    id: int
    channel: str
    folder: str                 # POP3 for a POP3 channel
    uidvalidity: int            # 0 for POP3
    uid: str
    status: str
    sha256: str
    size: int
    tries: int
    next_try_at: float
    created_at: float
    updated_at: float
    message_id: str | None = None
    campaign: str | None = None
    filter_id: int | None = None       # position of the filter that routed it; None: the default campaign
    last_error: str | None = None
    result: str | None = None          # the campaign's answer: file name, HTTP status, queue id
    has_raw: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QuarantineItem:
    """A message that could not be parsed, fetched or delivered to its campaign."""

    id: int
    channel: str
    folder: str
    uid: str
    size: int
    tries: int
    created_at: float
    updated_at: float
    message_id: str | None = None
    last_error: str | None = None
    has_raw: bool = False              # False: quarantined before it was fetched (nothing to retry)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Delivery:
    """A campaign accepted an inbound message: what to record on it."""

    inbound_id: int
    campaign: str
    result: str
    filter_index: int | None = None


_COLUMNS = ("id, channel, folder, uidvalidity, uid, status, sha256, size, tries, next_try_at, created_at,"
            " updated_at, message_id, campaign, filter_id, last_error, result, (raw IS NOT NULL) AS has_raw")
_QCOLUMNS = ("id, channel, folder, uid, size, tries, created_at, updated_at, message_id, last_error,"
             " (raw IS NOT NULL) AS has_raw")


def _message_of(row: sqlite3.Row) -> InboundMessage:
    d = dict(row)
    d["has_raw"] = bool(d["has_raw"])
    return InboundMessage(**d)


def _quarantined_of(row: sqlite3.Row) -> QuarantineItem:
    d = dict(row)
    d["has_raw"] = bool(d["has_raw"])
    return QuarantineItem(**d)


class InboundStore(ChannelStore):
    """Channels, filters, campaigns (inherited) plus checkpoints, inbound messages and the quarantine."""

    # ---- checkpoints -----------------------------------------------------------------------------
    async def checkpoint(self, channel: str, folder: str) -> Checkpoint | None:
        row = await self._read(lambda conn: conn.execute(
            "SELECT channel, folder, uidvalidity, last_uid, updated_at FROM checkpoints"
            " WHERE channel=? AND folder=?", (channel, folder)).fetchone())
        return None if row is None else Checkpoint(**dict(row))

    async def set_checkpoint(self, channel: str, folder: str, uidvalidity: int, last_uid: int) -> None:
        await self._write(lambda conn: self._set_checkpoint(conn, channel, folder, uidvalidity, last_uid))

    def _set_checkpoint(self, conn: sqlite3.Connection, channel: str, folder: str, uidvalidity: int,
                        last_uid: int) -> None:
        conn.execute("INSERT INTO checkpoints(channel, folder, uidvalidity, last_uid, updated_at)"
                     " VALUES (?,?,?,?,?) ON CONFLICT(channel, folder) DO UPDATE SET"
                     " uidvalidity=excluded.uidvalidity, last_uid=excluded.last_uid,"
                     " updated_at=excluded.updated_at",
                     (channel, folder, uidvalidity, last_uid, self.clock()))

    # ---- fetched messages ------------------------------------------------------------------------
    async def store_fetched(self, channel: str, folder: str, uidvalidity: int, items: Sequence[Fetched], *,
                            last_uid: int | None = None, dedupe: bool = False) -> list[int]:
        """Store a fetched batch and (``last_uid`` given) move the checkpoint, in one transaction. A message
        already stored (same channel, folder, UIDVALIDITY and UID) is left alone. ``dedupe``: a message with
        the same content and Message-ID stored under another UIDVALIDITY of the folder is a ``duplicate``.
        Returns the ids of the new messages to deliver."""
        return [m.id for m, _ in await self.store_batch(channel, folder, uidvalidity, items,
                                                        last_uid=last_uid, dedupe=dedupe)]

    async def store_batch(self, channel: str, folder: str, uidvalidity: int, items: Sequence[Fetched], *,
                          last_uid: int | None = None,
                          dedupe: bool = False) -> list[tuple[InboundMessage, Fetched]]:
        """``store_fetched``, answering each new message to deliver as stored, with its item: the poller
        hands the content it holds to the campaign instead of reading it back."""
        return await self._write(lambda conn: self._store_fetched(conn, channel, folder, uidvalidity, items,
                                                                  last_uid, dedupe))

    def _store_fetched(self, conn: sqlite3.Connection, channel: str, folder: str, uidvalidity: int,
                       items: Sequence[Fetched], last_uid: int | None,
                       dedupe: bool) -> list[tuple[InboundMessage, Fetched]]:
        now = self.clock()
        ids: list[tuple[InboundMessage, Fetched]] = []
        fetched = quarantined = 0
        for item in items:
            data = item.raw or b""
            digest = hashlib.sha256(data).hexdigest()
            msgid = item.message_id if item.raw is not None else None
            status, err = RECEIVED, None
            if item.skip == NOT_ADDRESSED:
                status, err = SKIPPED, item.skip
            elif item.skip:
                status, err = QUARANTINED, item.skip
            elif dedupe and conn.execute(
                    "SELECT 1 FROM inbound WHERE channel=? AND folder=? AND uidvalidity<>? AND sha256=?"
                    " AND (message_id=? OR (message_id IS NULL AND ? IS NULL))",
                    (channel, folder, uidvalidity, digest, msgid, msgid)).fetchone():
                status = DUPLICATE
            inserted = conn.execute(
                "INSERT INTO inbound(channel, folder, uidvalidity, uid, message_id, sha256, size, raw,"
                " status, last_error, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
                f" ON CONFLICT(channel, folder, uidvalidity, uid) DO NOTHING RETURNING {_COLUMNS}",
                (channel, folder, uidvalidity, item.uid, msgid, digest, len(data), item.raw, status, err, now,
                 now)).fetchall()
            if not inserted:
                continue
            fetched += 1
            quarantined += status == QUARANTINED
            if status == RECEIVED:
                ids.append((_message_of(inserted[0]), item))
        if fetched:
            conn.execute("UPDATE channels SET fetched=fetched+?, quarantined=quarantined+? WHERE name=?",
                         (fetched, quarantined, channel))
        if last_uid is not None:
            self._set_checkpoint(conn, channel, folder, uidvalidity, last_uid)
        return ids

    async def seen_uidls(self, channel: str) -> set[str]:
        """The POP3 UIDLs of the channel already stored (whatever became of them)."""
        return await self._read(lambda conn: {r[0] for r in conn.execute(
            "SELECT uid FROM inbound WHERE channel=? AND folder='POP3'", (channel,))})

    async def finished_uidls(self, channel: str) -> set[str]:
        """The POP3 UIDLs of the channel whose campaign accepted them and whose mailbox action was sent
        (``done``): one still listed by the server was DELEted in a session cut before QUIT (the server
        rolled the DELE back) and is to be DELEted again."""
        return await self._read(lambda conn: {r[0] for r in conn.execute(
            "SELECT uid FROM inbound WHERE channel=? AND folder='POP3' AND status='done'", (channel,))})

    # ---- reading messages ------------------------------------------------------------------------
    async def pending(self, channel: str, now: float, limit: int = 200) -> list[InboundMessage]:
        """Messages to (re)deliver now, and delivered ones whose mailbox action is still due; oldest first."""
        return await self._read(lambda conn: [_message_of(r) for r in conn.execute(
            f"SELECT {_COLUMNS} FROM inbound WHERE channel=? AND"
            " ((status='received' AND next_try_at<=?) OR status='delivered') ORDER BY id LIMIT ?",
            (channel, now, limit))])

    async def get(self, inbound_id: int) -> InboundMessage | None:
        row = await self._read(lambda conn: conn.execute(
            f"SELECT {_COLUMNS} FROM inbound WHERE id=?", (inbound_id,)).fetchone())
        return None if row is None else _message_of(row)

    async def messages(self, channel: str | None = None, *, status: str | None = None,
                       limit: int = 100) -> list[InboundMessage]:
        """Stored messages, newest first, optionally of one channel and/or in one status."""
        where, args = _where(channel=channel, status=status)
        return await self._read(lambda conn: [_message_of(r) for r in conn.execute(
            f"SELECT {_COLUMNS} FROM inbound{where} ORDER BY id DESC LIMIT ?", (*args, limit))])

    async def raw(self, inbound_id: int) -> bytes | None:
        """The message as fetched (None: unknown, never fetched, or dropped once done)."""
        row = await self._read(lambda conn: conn.execute(
            "SELECT raw FROM inbound WHERE id=?", (inbound_id,)).fetchone())
        return bytes(row[0]) if row is not None and row[0] is not None else None

    async def next_retry_at(self, channel: str) -> float | None:
        """When the earliest failed delivery of the channel is due again (None: nothing waits)."""
        row = await self._read(lambda conn: conn.execute(
            "SELECT MIN(next_try_at) FROM inbound WHERE channel=? AND status='received'",
            (channel,)).fetchone())
        return row[0] if row is not None and row[0] is not None else None

    # ---- delivery results ------------------------------------------------------------------------
    async def mark_delivered(self, deliveries: Sequence[Delivery]) -> None:
        """Record campaign acceptances, all in one transaction."""
        def _mark(conn: sqlite3.Connection) -> None:
            now = self.clock()
            for d in deliveries:
                conn.execute("UPDATE inbound SET status='delivered', campaign=?, filter_id=?, result=?,"
                             " last_error=NULL, updated_at=? WHERE id=?",
                             (d.campaign, d.filter_index, d.result[:500], now, d.inbound_id))
                conn.execute("UPDATE channels SET routed=routed+1 WHERE name=(SELECT channel FROM inbound"
                             " WHERE id=?)", (d.inbound_id,))
        if deliveries:
            await self._write(_mark)

    async def mark_done(self, inbound_ids: Sequence[int], *, keep_raw: bool = False) -> None:
        """The mailbox action is done: the messages are finished (content dropped unless ``keep_raw``)."""
        drop = "" if keep_raw else ", raw=NULL"

        def _mark(conn: sqlite3.Connection) -> None:
            now = self.clock()
            conn.executemany(f"UPDATE inbound SET status='done', updated_at=?{drop} WHERE id=?",
                             [(now, i) for i in inbound_ids])
        if inbound_ids:
            await self._write(_mark)

    async def mark_failed(self, inbound_id: int, error: str, *, max_tries: int, retry_first: float,
                          retry_cap: float) -> bool:
        """Count a failed delivery: retried after ``retry_first`` doubling up to ``retry_cap``, quarantined
        at the ``max_tries``-th failure. True when the message went to quarantine."""
        def _mark(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT tries, channel FROM inbound WHERE id=?", (inbound_id,)).fetchone()
            if row is None:
                return False
            tries, now = row["tries"] + 1, self.clock()
            if tries >= max_tries:
                conn.execute("UPDATE inbound SET status='quarantined', tries=?, last_error=?, updated_at=?"
                             " WHERE id=?", (tries, error[:1000], now, inbound_id))
                conn.execute("UPDATE channels SET quarantined=quarantined+1 WHERE name=?", (row["channel"],))
                return True
            delay = min(retry_cap, retry_first * (2 ** (tries - 1)))
            conn.execute("UPDATE inbound SET tries=?, last_error=?, next_try_at=?, updated_at=? WHERE id=?",
                         (tries, error[:1000], now + delay, now, inbound_id))
            return False
        return await self._write(_mark)

    async def reserve_forward(self, inbound_id: int, queue_id: str) -> str:
        """The relay queue id under which an SMTP campaign forwards the message: the one reserved by an
        earlier attempt (a crash may have come between its enqueue and ``mark_delivered``: enqueueing it
        again under the same id is recognisable), else ``queue_id``, reserved now (durable on return)."""
        def _reserve(conn: sqlite3.Connection) -> str:
            row = conn.execute("SELECT result FROM inbound WHERE id=?", (inbound_id,)).fetchone()
            prev = row[0] if row is not None else None
            if prev and prev.startswith(_FORWARDING):
                return str(prev[len(_FORWARDING):])
            conn.execute("UPDATE inbound SET result=?, updated_at=? WHERE id=?",
                         (_FORWARDING + queue_id, self.clock(), inbound_id))
            return queue_id
        return await self._write(_reserve)

    # ---- quarantine ------------------------------------------------------------------------------
    async def quarantine(self, *, limit: int = 100, channel: str | None = None) -> list[QuarantineItem]:
        """Quarantined messages, newest first."""
        where, args = _where(channel=channel, status=QUARANTINED)
        return await self._read(lambda conn: [_quarantined_of(r) for r in conn.execute(
            f"SELECT {_QCOLUMNS} FROM inbound{where} ORDER BY id DESC LIMIT ?", (*args, limit))])

    async def quarantined(self, inbound_id: int) -> QuarantineItem | None:
        """One message if it is in quarantine."""
        row = await self._read(lambda conn: conn.execute(
            f"SELECT {_QCOLUMNS} FROM inbound WHERE id=? AND status='quarantined'", (inbound_id,)).fetchone())
        return None if row is None else _quarantined_of(row)

    async def retry_quarantined(self, inbound_id: int) -> bool:
        """Back to ``received`` with fresh tries. Only a message with stored content can be retried (one
        quarantined before it was fetched is not refetched: its checkpoint is not moved back)."""
        return await self._write(lambda conn: conn.execute(
            "UPDATE inbound SET status='received', tries=0, next_try_at=0, updated_at=? WHERE id=?"
            " AND status='quarantined' AND raw IS NOT NULL", (self.clock(), inbound_id)).rowcount > 0)

    async def drop_quarantined(self, inbound_id: int) -> bool:
        return await self._write(lambda conn: conn.execute(
            "DELETE FROM inbound WHERE id=? AND status='quarantined'", (inbound_id,)).rowcount > 0)


def _where(**equal: str | None) -> tuple[str, tuple[str, ...]]:
    given = {k: v for k, v in equal.items() if v is not None}
    if not given:
        return "", ()
    return " WHERE " + " AND ".join(f"{k}=?" for k in given), tuple(given.values())
