"""One poll of one channel: fetch what is new, store it durably, deliver it, then act on the mailbox.

IMAP: the checkpoint is (channel, folder, UIDVALIDITY, last UID). New mail is ``UID FETCH last+1:*
(RFC822.SIZE)`` (too large: quarantined unfetched), fetched in batches cut by count and bytes with
``BODY.PEEK[]`` (never setting \\Seen, never relying on it: mail a person already read in another client
is still fetched), stored together with the checkpoint move in one transaction, and only
then handed to the campaign; \\Seen/move/delete happens after the campaign accepted. A UIDVALIDITY change
restarts from UID 0 and drops messages already stored under an older UIDVALIDITY of the folder (same
Message-ID and content hash); that check runs on every fetch, so a crash in the middle of a resync cannot
let the rest of it through as new. POP3: messages are tracked by UIDL and deleted only after the campaign
accepted (and DELEted again at the next session when the one that accepted it was cut before QUIT).

Crash windows: killed after the store but before delivery -> delivered on restart (same idempotency key);
after delivery but before the status update -> delivered again with the same key (the target dedupes); after
delivery but before the mailbox action -> the action is done on restart. Nothing fetched is lost.

The campaign step (``Deliver``) answers with an ``Accepted`` (or None): the acceptance to record, the
Maildir file to publish before recording it, and whether to record it at once or with its batch.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from poller import campaigns
from poller.config import ChannelConfig, PollerConfig
from poller.imap import IMAPSession, MailboxError, uid_set
from poller.pop3 import POP3Session
from poller.router import MessageView, addressed_to
from store.inbound import DELIVERED, NOT_ADDRESSED, RECEIVED, Delivery, Fetched, InboundMessage, InboundStore

log = logging.getLogger("poller")


@dataclass(frozen=True)
class Accepted:
    """A campaign accepted a stored message: the acceptance to record, and how to record it."""

    delivery: Delivery
    staged: campaigns.Staged | None = None   # a Maildir file: published (synced, renamed) before the commit
    record_now: bool = False                 # commit at once, not with the batch (webhook: a crash re-POSTs
                                             # the one message in flight, not a whole batch)


# deliver(channel, inbound id, raw) -> Accepted, or None when the campaign did not accept (the failure is
# already recorded)
Deliver = Callable[[ChannelConfig, int, bytes], Awaitable[Accepted | None]]


@dataclass
class PollResult:
    fetched: int = 0
    delivered: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


PAGE = 100                    # stored messages delivered per round (one transaction, one mailbox command)
FETCH_BYTES = 16_000_000      # a UID FETCH asks for at most this much (and at most poller.fetch_batch msgs)


def batches(sizes: dict[int, int], count: int, max_bytes: int) -> list[list[int]]:
    """Cut the UIDs (ascending) into fetch batches by count and by bytes; a big message goes alone."""
    out: list[list[int]] = []
    cur: list[int] = []
    total = 0
    for uid, size in sizes.items():
        if cur and (len(cur) >= count or total + size > max_bytes):
            out.append(cur)
            cur, total = [], 0
        cur.append(uid)
        total += size
    if cur:
        out.append(cur)
    return out


def message_id_of(raw: bytes) -> str | None:
    """The Message-ID header (unfolded), read without parsing the message."""
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


def fetched(uid: str, raw: bytes | None, skip: str | None = None) -> Fetched:
    return Fetched(uid, raw, skip, message_id_of(raw) if raw else None)


def _too_large(size: int, pcfg: PollerConfig) -> str:
    return (f"message of {size} bytes is larger than poller.max_message_size ({pcfg.max_message_size});"
            " not fetched")


def skip_reason(ch: ChannelConfig, raw: bytes, pcfg: PollerConfig) -> str | None:
    if ch.recipient_only and ch.address:
        try:
            if not addressed_to(MessageView(raw), ch.address):
                return NOT_ADDRESSED
        except Exception:  # noqa: BLE001 - unparsable: let the delivery step quarantine it with the reason
            return None
    return None


async def imap_folders(session: IMAPSession, ch: ChannelConfig) -> list[str]:
    if not ch.sync_all_folders:
        return [ch.folder]
    out = []
    for name, flags in await session.folders():
        lower = {f.lower() for f in flags}
        if "\\noselect" in lower or "\\nonexistent" in lower:
            continue
        if lower & {"\\trash", "\\sent", "\\junk", "\\drafts"}:
            continue
        if ch.storage_folder and name == ch.storage_folder:
            continue
        if name.lower() in ("trash", "sent", "sent items", "deleted items", "drafts", "junk", "spam"):
            continue
        out.append(name)
    return out


async def fetch_imap_folder(inbound: InboundStore, session: IMAPSession, ch: ChannelConfig, folder: str,
                            pcfg: PollerConfig, result: PollResult,
                            after_batch: Callable[[Fresh], Awaitable[None]] | None = None,
                            lock: asyncio.Lock | None = None) -> None:
    """Fetch what is new in ``folder`` batch by batch; each batch is stored (with the checkpoint) and then
    ``after_batch`` delivers it (given the contents just stored) while the next batch is fetched, so a big
    backlog flows to the campaign while it is still being fetched. ``lock`` serialises the use of the
    session (a SELECT and the commands meant for that folder) with the delivery's mailbox actions."""
    lock = lock or asyncio.Lock()
    async with lock:
        uidvalidity, sizes, horizon = await _new_in_folder(inbound, session, ch, folder)
    delivering: asyncio.Future[None] | None = None
    try:
        for batch in batches(sizes, pcfg.fetch_batch, FETCH_BYTES):
            wanted = [u for u in batch if sizes[u] <= pcfg.max_message_size]
            async with lock:          # the delivery of the previous batch acts on the mailbox meanwhile
                if await session.ensure_selected(folder) != uidvalidity:
                    raise MailboxError(f"{folder}: UIDVALIDITY changed during the fetch")
                raws = await session.fetch(wanted)
            items = _batch_items(ch, batch, sizes, raws, pcfg, result)
            stored = await inbound.store_batch(ch.name, folder, uidvalidity, items,
                                               last_uid=batch[-1] if horizon is None else None, dedupe=True)
            result.fetched += len(items)
            if after_batch is not None:
                if delivering is not None:          # in order: a batch is delivered after the one before
                    await delivering
                delivering = asyncio.ensure_future(after_batch(_fresh(stored)))
        if delivering is not None:
            await delivering
    except BaseException:
        if delivering is not None and not delivering.done():    # cut like a crash: redone next time
            delivering.cancel()
            await asyncio.gather(delivering, return_exceptions=True)
        raise
    if horizon is not None:
        await inbound.set_checkpoint(ch.name, folder, uidvalidity, horizon)


async def _new_in_folder(inbound: InboundStore, session: IMAPSession, ch: ChannelConfig,
                         folder: str) -> tuple[int, dict[int, int], int | None]:
    """SELECT ``folder`` and tell what to fetch: its UIDVALIDITY, {uid: size} of the messages past the
    checkpoint, and (a first sync by policy) the UID the checkpoint moves to once they are stored."""
    uidvalidity = await session.select(folder)
    cp = await inbound.checkpoint(ch.name, folder)
    last_uid = 0
    if cp is not None:
        if cp.uidvalidity == uidvalidity:
            last_uid = cp.last_uid
        else:
            log.warning("channel %s folder %s: UIDVALIDITY changed %s -> %s; resyncing with dedupe",
                        ch.name, folder, cp.uidvalidity, uidvalidity)
    horizon: int | None = None            # a first sync by policy: the checkpoint moves here at its end
    if cp is None and ch.first_sync != "all":
        sizes, horizon = await _first_sync(session, ch)
    else:
        sizes = await session.sizes_after(last_uid)
        if not sizes and cp is None:
            await inbound.set_checkpoint(ch.name, folder, uidvalidity, 0)
    return uidvalidity, sizes, horizon


def _batch_items(ch: ChannelConfig, batch: list[int], sizes: dict[int, int], raws: dict[int, bytes],
                 pcfg: PollerConfig, result: PollResult) -> list[Fetched]:
    """What to store of a fetched batch: oversized messages without content (quarantined), messages
    recipient_only leaves alone dropped (counted as skipped), expunged ones absent."""
    items: list[Fetched] = []
    for uid in batch:
        if sizes[uid] > pcfg.max_message_size:
            items.append(fetched(str(uid), None, _too_large(sizes[uid], pcfg)))
            continue
        raw = raws.get(uid)
        if raw is None:
            continue            # expunged meanwhile
        if skip_reason(ch, raw, pcfg) == NOT_ADDRESSED:
            result.skipped += 1
            continue
        items.append(fetched(str(uid), raw))
    return items


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


async def _first_sync(session: IMAPSession, ch: ChannelConfig) -> tuple[dict[int, int], int]:
    """The first sync of a folder under ``first_sync = unseen | since:DATE``: the sizes of the messages it
    takes, and the highest UID of the folder now (the checkpoint, set once they are all stored: a first
    sync cut before is redone from the start, and what it had stored is not stored twice)."""
    everything = await session.uids_after(0)
    if ch.first_sync == "unseen":
        wanted = await session.search("UNSEEN")
    else:
        year, month, day = (int(x) for x in ch.first_sync.split(":", 1)[1].split("-"))
        wanted = await session.search(f"SINCE {day}-{_MONTHS[month - 1]}-{year}")
    horizon = max(everything, default=0)
    return await session.sizes_of([u for u in wanted if u <= horizon]), horizon


async def imap_actions(session: IMAPSession, ch: ChannelConfig, folder: str, uids: list[int]) -> None:
    """\\Seen / move / delete for many UIDs of one folder in one command."""
    await session.ensure_selected(folder)
    if ch.after == "move":
        await session.mark_seen(uid_set(uids))       # processed mail reads as read where it is moved to
        await session.move(uid_set(uids), ch.storage_folder)
    elif ch.after == "delete":
        await session.delete(uid_set(uids))
    else:
        await session.mark_seen(uid_set(uids))


Act = Callable[[list[InboundMessage]], Awaitable[list[InboundMessage]]]
Fresh = list[tuple[InboundMessage, bytes]]     # messages this poll just stored, with their contents


def _fresh(stored: list[tuple[InboundMessage, Fetched]]) -> Fresh:
    return [(m, f.raw) for m, f in stored if f.raw is not None]


class Deliveries:
    """Hands stored messages of one channel to their campaign during one poll, round by round: up to
    ``parallel`` deliveries at once; a round's acceptances commit in one transaction (after its Maildir
    files and ``flush`` made the targets durable); then its mailbox actions go out as one command per
    folder and the messages are marked done. Slow targets (webhooks) record each acceptance at once, so a
    crash repeats only what was in flight.

    ``overlap_actions``: while a round is delivered, the one before is recorded and the one before that
    acted on (each stage one round at a time, in order; the IMAP session is shared under a lock). POP3
    does it all inline (one command at a time on its session)."""

    def __init__(self, inbound: InboundStore, ch: ChannelConfig, deliver: Deliver, act: Act,
                 result: PollResult, flush: Callable[[], Awaitable[None]], parallel: int = 1,
                 overlap_actions: bool = False):
        self.inbound, self.ch, self.deliver, self.act = inbound, ch, deliver, act
        self.result, self.flush, self.overlap = result, flush, overlap_actions
        self.sem = asyncio.Semaphore(max(1, parallel))
        self.rounding: asyncio.Future[None] | None = None    # a fresh round being delivered
        self.recording: asyncio.Future[None] | None = None   # a round being recorded
        self.acting: asyncio.Future[None] | None = None      # a recorded round being acted on

    async def fresh(self, fresh: Fresh) -> None:
        """Deliver messages this poll just stored: from memory (not read back), and never handed to a
        campaign before (no look-up for an earlier delivery)."""
        if not fresh:
            return
        rows, contents = [m for m, _ in fresh], {m.id: raw for m, raw in fresh}
        if not self.overlap:
            await self._round(rows, contents)
            return
        previous = self.rounding
        self.rounding = asyncio.ensure_future(self._round_after(previous, rows, contents))
        if previous is not None:             # at most two rounds delivering (the next batch is fetched
            await previous                   # meanwhile)

    async def pending(self, now: float) -> None:
        """Deliver what is due (retries, messages a crash left received or delivered), read from the
        store, PAGE at a time; returns once every mailbox action is done."""
        await self.drain()                       # the last fresh round is no longer pending
        seen: set[int] = set()
        while True:
            page = await self.inbound.pending(self.ch.name, now, limit=PAGE)
            rows = [r for r in page if r.id not in seen]
            if not rows:
                break
            seen.update(r.id for r in rows)
            await self._round(rows, {})
            if len(page) < PAGE:
                break
        await self.drain()

    async def drain(self) -> None:
        """Wait until the rounds handed on are delivered, recorded and acted on."""
        rounding, self.rounding = self.rounding, None
        if rounding is not None:
            await rounding                  # it hands its round on to ``recording``
        recording, self.recording = self.recording, None
        if recording is not None:
            await recording                 # it hands its round on to ``acting``
        acting, self.acting = self.acting, None
        if acting is not None:
            await acting

    async def cancel(self) -> None:
        """Cut the rounds being recorded or acted on (like a crash: redone next time)."""
        stages = [t for t in (self.rounding, self.recording, self.acting) if t is not None]
        for stage in stages:
            if not stage.done():
                stage.cancel()
        self.rounding = self.recording = self.acting = None
        await asyncio.gather(*stages, return_exceptions=True)

    async def _one(self, row: InboundMessage, contents: dict[int, bytes]) -> Accepted | None:
        async with self.sem:
            raw = contents.pop(row.id, None)
            if raw is None:
                raw = await self.inbound.raw(row.id)
            if raw is None:
                return None
            accepted = await self.deliver(self.ch, row.id, raw)
            if accepted is not None and accepted.record_now:
                await self.inbound.mark_delivered([accepted.delivery])
            return accepted

    async def _round(self, rows: list[InboundMessage], contents: dict[int, bytes]) -> None:
        first_attempt = frozenset(contents)
        delivering = [r for r in rows if r.status == RECEIVED]
        outcomes = await asyncio.gather(*(self._one(r, contents) for r in delivering))
        await self._hand_on(rows, delivering, outcomes, first_attempt)

    async def _round_after(self, previous: asyncio.Future[None] | None, rows: list[InboundMessage],
                           contents: dict[int, bytes]) -> None:
        """A fresh round whose deliveries start at once, taking the slots the round before leaves at its
        tail (no slot idles while its last deliveries finish), and which is recorded after it."""
        first_attempt = frozenset(contents)
        delivering = [r for r in rows if r.status == RECEIVED]
        outcomes = await asyncio.gather(*(self._one(r, contents) for r in delivering))
        if previous is not None:
            await previous
        await self._hand_on(rows, delivering, outcomes, first_attempt)

    async def _hand_on(self, rows: list[InboundMessage], delivering: list[InboundMessage],
                       outcomes: list[Accepted | None], first_attempt: frozenset[int]) -> None:
        """Hand a delivered round on to be recorded and acted on (inline without ``overlap``)."""
        if not self.overlap:
            await self._finish(rows, delivering, outcomes, first_attempt)
            await self.drain()
            return
        if self.recording is not None:          # one round in each stage at a time: in order, and
            await self.recording                 # memory bounded whichever stage is the slow one
        self.recording = asyncio.ensure_future(self._finish(rows, delivering, outcomes, first_attempt))

    async def _finish(self, rows: list[InboundMessage], delivering: list[InboundMessage],
                      outcomes: list[Accepted | None], first_attempt: frozenset[int]) -> None:
        """Record a round's acceptances, then hand its mailbox actions on (after the round before's)."""
        batch = [a for a in outcomes if a is not None and not a.record_now]
        committed = await self._record(batch, first_attempt) if batch else True
        accepted = [r for r, a in zip(delivering, outcomes, strict=True)
                    if a is not None and (committed or a.record_now)]
        self.result.delivered += len(accepted)
        to_act = [r for r in rows if r.status == DELIVERED] + accepted
        if to_act:
            if self.acting is not None:
                await self.acting
            self.acting = asyncio.ensure_future(self._act(to_act))

    async def _act(self, rows: list[InboundMessage]) -> None:
        """Act on the mailbox, then mark the messages done."""
        try:
            done = await self.act(rows)
        except MailboxError as exc:
            self.result.errors.append(f"mailbox action: {exc}")
            return
        await self.inbound.mark_done([r.id for r in done])

    async def _record(self, batch: list[Accepted], first_attempt: frozenset[int]) -> bool:
        """Make a round's targets durable (Maildir files written, synced and renamed into new/), then
        commit its acceptances together. False when the targets could not be made durable: nothing
        recorded, the messages are delivered again next time (under the same file names)."""
        staged = [a.staged for a in batch if a.staged is not None]
        try:
            if staged:
                await asyncio.to_thread(campaigns.publish_maildir, staged, first_attempt)
            await self.flush()
        except OSError as exc:
            self.result.errors.append(f"maildir: {exc}")
            return False
        await self.inbound.mark_delivered([a.delivery for a in batch])
        return True


async def _no_flush() -> None:
    return None


async def poll_imap(inbound: InboundStore, session: IMAPSession, ch: ChannelConfig, pcfg: PollerConfig,
                    deliver: Deliver, now: float,
                    flush: Callable[[], Awaitable[None]] = _no_flush) -> PollResult:
    result = PollResult()
    lock = asyncio.Lock()          # the fetch of a batch and the mailbox actions of the one before

    async def act(rows: list[InboundMessage]) -> list[InboundMessage]:
        done: list[InboundMessage] = []
        by_folder: dict[str, list[InboundMessage]] = {}
        for row in rows:
            by_folder.setdefault(row.folder, []).append(row)
        for folder, items in by_folder.items():
            async with lock:
                uidvalidity = await session.ensure_selected(folder)      # what the server numbers by now
                current = [r for r in items if r.uidvalidity == uidvalidity]
                if current:
                    await imap_actions(session, ch, folder, [int(r.uid) for r in current])
            done += items         # messages of an old UIDVALIDITY: the server renumbered them, nothing to do
        return done

    deliveries = Deliveries(inbound, ch, deliver, act, result, flush, pcfg.parallel_deliveries,
                            overlap_actions=True)
    try:
        for folder in await imap_folders(session, ch):
            await fetch_imap_folder(inbound, session, ch, folder, pcfg, result, deliveries.fresh, lock)
            await deliveries.drain()          # its last actions before another folder is selected
        await deliveries.pending(now)          # retries that are due, and messages left by a crash
    except BaseException:
        await deliveries.cancel()
        raise
    return result


async def poll_pop3(inbound: InboundStore, session: POP3Session, ch: ChannelConfig, pcfg: PollerConfig,
                    deliver: Deliver, now: float,
                    flush: Callable[[], Awaitable[None]] = _no_flush) -> PollResult:
    """UIDL tells what is new; messages are RETRieved and stored ``fetch_batch`` at a time (one commit),
    each batch delivered before the next is fetched. ``after = delete``: each message is DELEted as soon as
    its acceptance is durable; the server commits DELEs only at QUIT, so a message accepted in a session
    cut before QUIT is still listed at the next session, which DELEtes it first (idempotent: the server
    lists only what it still holds)."""
    result = PollResult()
    listing = await session.uidl()
    known = await inbound.seen_uidls(ch.name)
    if ch.after == "delete":
        finished = await inbound.finished_uidls(ch.name)
        for uidl, num in listing.items():
            if uidl in finished:
                await session.dele(num)
    sizes = await session.sizes() if any(u not in known for u in listing) else {}

    async def act(rows: list[InboundMessage]) -> list[InboundMessage]:
        for row in rows:
            if ch.after == "delete" and row.uid in listing:
                await session.dele(listing[row.uid])
        return rows

    deliveries = Deliveries(inbound, ch, deliver, act, result, flush, pcfg.parallel_deliveries)

    async def store_and_deliver(items: list[Fetched]) -> None:
        await deliveries.fresh(_fresh(await inbound.store_batch(ch.name, "POP3", 0, items)))

    items: list[Fetched] = []
    for uidl, num in listing.items():
        if uidl in known:
            continue
        if sizes.get(num, 0) > pcfg.max_message_size:
            items.append(fetched(uidl, None, _too_large(sizes[num], pcfg)))
            continue
        raw = await session.retr(num)
        if skip_reason(ch, raw, pcfg) == NOT_ADDRESSED:
            result.skipped += 1
            items.append(fetched(uidl, None, NOT_ADDRESSED))
        else:
            items.append(fetched(uidl, raw))
            result.fetched += 1
        if len(items) >= pcfg.fetch_batch:
            await store_and_deliver(items)
            items = []
    await store_and_deliver(items)     # the rest
    await deliveries.pending(now)      # retries that are due, and messages left by a crash
    return result


async def run_once(inbound: InboundStore, ch: ChannelConfig, pcfg: PollerConfig, deliver: Deliver,
                   connect: Callable[[ChannelConfig], Awaitable[Any]], now: float,
                   flush: Callable[[], Awaitable[None]] = _no_flush) -> PollResult:
    """Connect, poll, disconnect (POP3 commits DELE only at QUIT)."""
    session = await connect(ch)
    try:
        if ch.protocol == "pop3":
            return await poll_pop3(inbound, session, ch, pcfg, deliver, now, flush)
        return await poll_imap(inbound, session, ch, pcfg, deliver, now, flush)
    finally:
        await session.logout()


async def wait_idle(session: IMAPSession, timeout: float) -> bool:
    try:
        return await session.idle(timeout)
    except (MailboxError, asyncio.TimeoutError):
        return False
