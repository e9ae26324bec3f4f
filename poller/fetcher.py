"""One poll of one channel: fetch what is new, store it durably, deliver it, then act on the mailbox.

IMAP: the checkpoint is (channel, folder, UIDVALIDITY, last UID). New mail is ``UID FETCH last+1:*
(RFC822.SIZE)`` (too large: quarantined unfetched), fetched in batches cut by count and bytes with ``BODY.PEEK[]`` (never setting \\Seen, never relying on it: mail a person already read in
another client is still fetched), stored together with the checkpoint move in one transaction, and only
then handed to the campaign; \\Seen/move/delete happens after the campaign accepted. A UIDVALIDITY change
restarts from UID 0 and drops messages already stored under an older UIDVALIDITY of the folder (same
Message-ID and content hash); that check runs on every fetch, so a crash in the middle of a resync cannot
let the rest of it through as new. POP3: messages are tracked by UIDL and deleted only after the campaign
accepted.

Crash windows: killed after the store but before delivery -> delivered on restart (same idempotency key);
after delivery but before the status update -> delivered again with the same key (the target dedupes); after
delivery but before the mailbox action -> the action is done on restart. Nothing fetched is lost.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from poller import campaigns, store
from poller.config import ChannelConfig, PollerConfig
from poller.imap import IMAPSession, MailboxError, uid_set
from poller.pop3 import POP3Session
from poller.router import MessageView, addressed_to

log = logging.getLogger("poller")

# deliver(channel, inbound id, raw) -> a function that records the acceptance (run in the batch's write
# transaction), or None when the campaign did not accept (already recorded as a failure)
Deliver = Callable[[ChannelConfig, int, bytes], Awaitable[Callable[[Any], None] | None]]


@dataclass
class PollResult:
    fetched: int = 0
    delivered: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


FETCH_BYTES = 16_000_000      # a UID FETCH asks for at most this much (and at most poller.fetch_batch messages)


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


def skip_reason(ch: ChannelConfig, raw: bytes, pcfg: PollerConfig) -> str | None:
    if ch.recipient_only and ch.address:
        try:
            if not addressed_to(MessageView(raw), ch.address):
                return "not-addressed"
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


async def fetch_imap_folder(db, session: IMAPSession, ch: ChannelConfig, folder: str, pcfg: PollerConfig,
                            result: PollResult, after_batch: Callable[[], Awaitable[None]] | None = None) -> None:
    """Fetch what is new in ``folder`` batch by batch; each batch is stored (with the checkpoint) and then
    ``after_batch`` delivers it, so a big backlog flows to the campaign while it is still being fetched."""
    uidvalidity = await session.select(folder)
    cp = await db.read(lambda c: store.checkpoint(c, ch.name, folder))
    last_uid = 0
    if cp is not None:
        if cp[0] == uidvalidity:
            last_uid = cp[1]
        else:
            log.warning("channel %s folder %s: UIDVALIDITY changed %s -> %s; resyncing with dedupe",
                        ch.name, folder, cp[0], uidvalidity)
    sizes = await session.sizes_after(last_uid)
    if not sizes and cp is None:
        await db.write(lambda c: store.set_checkpoint(c, ch.name, folder, uidvalidity, 0))
    for batch in batches(sizes, pcfg.fetch_batch, FETCH_BYTES):
        wanted = [u for u in batch if sizes[u] <= pcfg.max_message_size]
        if await session.ensure_selected(folder) != uidvalidity:      # after_batch may have selected another
            raise MailboxError(f"{folder}: UIDVALIDITY changed during the fetch")
        raws = await session.fetch(wanted)
        items = []
        for uid in batch:
            if sizes[uid] > pcfg.max_message_size:
                items.append((str(uid), None, f"message of {sizes[uid]} bytes is larger than"
                                              f" poller.max_message_size ({pcfg.max_message_size}); not fetched"))
                continue
            raw = raws.get(uid)
            if raw is None:
                continue            # expunged meanwhile
            reason = skip_reason(ch, raw, pcfg)
            if reason == "not-addressed":
                result.skipped += 1
                continue
            items.append((str(uid), raw, None))
        top = batch[-1]
        await db.write(lambda c, items=items, top=top: store.store_fetched(
            c, ch.name, folder, uidvalidity, items, top, True))
        result.fetched += len(items)
        if after_batch is not None:
            await after_batch()


async def imap_actions(session: IMAPSession, ch: ChannelConfig, folder: str, uids: list[int]) -> None:
    """\\Seen / move / delete for many UIDs of one folder in one command."""
    await session.ensure_selected(folder)
    if ch.after == "move":
        await session.move(uid_set(uids), ch.storage_folder)
    elif ch.after == "delete":
        await session.delete(uid_set(uids))
    else:
        await session.mark_seen(uid_set(uids))


async def process_pending(db, ch: ChannelConfig, deliver: Deliver, act: Callable[[list[dict]], Awaitable[list]],
                          result: PollResult, now: float, flush: Callable[[], Awaitable[None]],
                          parallel: int = 1) -> None:
    """Deliver stored rows to their campaign, then act on the mailbox, in batches: up to ``parallel``
    deliveries run at once; each batch's campaign results commit in one transaction (after ``flush`` made
    the targets durable, e.g. Maildir directory fsync), and its mailbox actions go out as one command per
    folder. Slow targets (webhooks) record each acceptance at once, so a crash repeats only what was in
    flight."""
    seen: set[int] = set()
    sem = asyncio.Semaphore(max(1, parallel))
    while True:
        rows = [r for r in await db.read(lambda c: store.pending(c, ch.name, now, limit=100)) if r["id"] not in seen]
        if not rows:
            return
        seen.update(r["id"] for r in rows)

        async def one(row: dict):
            async with sem:           # at most `parallel` message bodies in memory
                raw = await db.read(lambda c: store.raw_of(c, row["id"]))
                if raw is None:
                    return None
                commit = await deliver(ch, row["id"], raw)
                if commit is not None and getattr(commit, "immediate", False):
                    await db.write(commit)
                    return "recorded"
                return commit

        delivering = [r for r in rows if r["status"] == "received"]
        outcomes = await asyncio.gather(*(one(r) for r in delivering))
        commits = [c for c in outcomes if c is not None and c != "recorded"]
        result.delivered += sum(1 for c in outcomes if c is not None)
        to_act = [r for r in rows if r["status"] == "delivered"]
        to_act += [r for r, c in zip(delivering, outcomes, strict=True) if c is not None]
        if commits:
            staged = [fn.staged for fn in commits if getattr(fn, "staged", None) is not None]
            try:
                if staged:                  # Maildir files: synced and renamed into new/ before the commit
                    await asyncio.to_thread(campaigns.publish_maildir, staged)
                await flush()
            except OSError as exc:
                result.errors.append(f"maildir: {exc}")
                commits = []                # not accepted: delivered again next time (same file names)
            if commits:
                await db.write(lambda c, commits=commits: [fn(c) for fn in commits])
        if to_act:
            try:
                done = await act(to_act)
            except MailboxError as exc:
                result.errors.append(f"mailbox action: {exc}")
                done = []
            if done:
                await db.write(lambda c, done=done: [store.mark_done(c, r["id"]) for r in done])


async def _no_flush() -> None:
    return None


async def poll_imap(db, session: IMAPSession, ch: ChannelConfig, pcfg: PollerConfig, deliver: Deliver,
                    now: float, flush: Callable[[], Awaitable[None]] = _no_flush) -> PollResult:
    result = PollResult()

    async def act(rows: list[dict]) -> list[dict]:
        done: list[dict] = []
        by_folder: dict[str, list[dict]] = {}
        for row in rows:
            by_folder.setdefault(row["folder"], []).append(row)
        for folder, items in by_folder.items():
            cp = await db.read(lambda c, f=folder: store.checkpoint(c, ch.name, f))
            current = [r for r in items if cp is not None and cp[0] == r["uidvalidity"]]
            if current:
                await imap_actions(session, ch, folder, [int(r["uid"]) for r in current])
            done += items         # rows of an old UIDVALIDITY: the server renumbered them, nothing to do
        return done

    async def deliver_stored() -> None:
        await process_pending(db, ch, deliver, act, result, now, flush, pcfg.parallel_deliveries)

    for folder in await imap_folders(session, ch):
        await fetch_imap_folder(db, session, ch, folder, pcfg, result, deliver_stored)
    await deliver_stored()             # retries that are due, and rows left by a crash
    return result


async def poll_pop3(db, session: POP3Session, ch: ChannelConfig, pcfg: PollerConfig, deliver: Deliver,
                    now: float, flush: Callable[[], Awaitable[None]] = _no_flush) -> PollResult:
    """UIDL tells what is new; messages are RETRieved and stored ``fetch_batch`` at a time (one commit),
    each batch delivered before the next is fetched; DELE only after acceptance (committed at QUIT)."""
    result = PollResult()
    listing = await session.uidl()
    known = await db.read(lambda c: store.seen_uidls(c, ch.name))
    sizes = await session.sizes() if any(u not in known for u in listing) else {}

    async def act(rows: list[dict]) -> list[dict]:
        for row in rows:
            if ch.after == "delete" and row["uid"] in listing:
                await session.dele(listing[row["uid"]])
        return rows

    async def store_and_deliver(items: list) -> None:
        await db.write(lambda c: store.store_fetched(c, ch.name, "POP3", 0, items, None, False))
        await process_pending(db, ch, deliver, act, result, now, flush, pcfg.parallel_deliveries)

    items: list[tuple[str, bytes | None, str | None]] = []
    for uidl, num in listing.items():
        if uidl in known:
            continue
        if sizes.get(num, 0) > pcfg.max_message_size:
            items.append((uidl, None, f"message of {sizes[num]} bytes is larger than poller.max_message_size"
                                      f" ({pcfg.max_message_size}); not fetched"))
            continue
        raw = await session.retr(num)
        if skip_reason(ch, raw, pcfg) == "not-addressed":
            result.skipped += 1
            items.append((uidl, None, "not-addressed"))
        else:
            items.append((uidl, raw, None))
            result.fetched += 1
        if len(items) >= pcfg.fetch_batch:
            await store_and_deliver(items)
            items = []
    await store_and_deliver(items)     # the rest, plus retries that are due
    return result


async def run_once(db, ch: ChannelConfig, pcfg: PollerConfig, deliver: Deliver, connect, now: float,
                   flush: Callable[[], Awaitable[None]] = _no_flush) -> PollResult:
    """Connect, poll, disconnect (POP3 commits DELE only at QUIT)."""
    session = await connect(ch)
    try:
        if ch.protocol == "pop3":
            return await poll_pop3(db, session, ch, pcfg, deliver, now, flush)
        return await poll_imap(db, session, ch, pcfg, deliver, now, flush)
    finally:
        await session.logout()


async def wait_idle(session: IMAPSession, timeout: float) -> bool:
    try:
        return await session.idle(timeout)
    except (MailboxError, asyncio.TimeoutError):
        return False
