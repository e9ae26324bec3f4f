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

from poller import store
from poller.config import ChannelConfig, PollerConfig
from poller.imap import IMAPSession, MailboxError
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
                            result: PollResult) -> None:
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


def uid_set(uids: list[int]) -> str:
    """[1,2,3,7,9,10] -> "1:3,7,9:10" (one short command for a whole batch)."""
    out, start, prev = [], None, None
    for u in sorted(uids):
        if start is None:
            start = prev = u
        elif u == prev + 1:
            prev = u
        else:
            out.append(f"{start}:{prev}" if prev != start else str(start))
            start = prev = u
    if start is not None:
        out.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(out)


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
                          result: PollResult, now: float, flush: Callable[[], Awaitable[None]]) -> None:
    """Deliver stored rows to their campaign, then act on the mailbox, in batches: each batch's campaign
    results commit in one transaction (after ``flush`` made the targets durable, e.g. Maildir directory
    fsync), and its mailbox actions go out as one command per folder."""
    seen: set[int] = set()
    while True:
        rows = [r for r in await db.read(lambda c: store.pending(c, ch.name, now, limit=100)) if r["id"] not in seen]
        if not rows:
            return
        commits, to_act = [], []
        for row in rows:
            seen.add(row["id"])
            if row["status"] == "received":
                raw = await db.read(lambda c, i=row["id"]: store.raw_of(c, i))
                if raw is None:
                    continue
                commit = await deliver(ch, row["id"], raw)
                if commit is None:
                    continue
                result.delivered += 1
                if getattr(commit, "immediate", False):   # slow targets (webhooks): record each at once
                    await db.write(commit)
                else:
                    commits.append(commit)
            to_act.append(row)
        if commits:
            await flush()
            await db.write(lambda c: [fn(c) for fn in commits])
        if to_act:
            try:
                done = await act(to_act)
            except MailboxError as exc:
                result.errors.append(f"mailbox action: {exc}")
                done = []
            if done:
                await db.write(lambda c: [store.mark_done(c, r["id"]) for r in done])


async def _no_flush() -> None:
    return None


async def poll_imap(db, session: IMAPSession, ch: ChannelConfig, pcfg: PollerConfig, deliver: Deliver,
                    now: float, flush: Callable[[], Awaitable[None]] = _no_flush) -> PollResult:
    result = PollResult()
    for folder in await imap_folders(session, ch):
        await fetch_imap_folder(db, session, ch, folder, pcfg, result)
    async def act(rows: list[dict]) -> list[dict]:
        done: list[dict] = []
        by_folder: dict[str, list[dict]] = {}
        for row in rows:
            by_folder.setdefault(row["folder"], []).append(row)
        for folder, items in by_folder.items():
            cp = await db.read(lambda c: store.checkpoint(c, ch.name, folder))
            current = [r for r in items if cp is not None and cp[0] == r["uidvalidity"]]
            if current:
                await imap_actions(session, ch, folder, [int(r["uid"]) for r in current])
            done += items         # rows of an old UIDVALIDITY: the server renumbered them, nothing to do
        return done

    await process_pending(db, ch, deliver, act, result, now, flush)
    return result


async def poll_pop3(db, session: POP3Session, ch: ChannelConfig, pcfg: PollerConfig, deliver: Deliver,
                    now: float, flush: Callable[[], Awaitable[None]] = _no_flush) -> PollResult:
    result = PollResult()
    listing = await session.uidl()
    known = await db.read(lambda c: store.seen_uidls(c, ch.name))
    for uidl, num in listing.items():
        if uidl in known:
            continue
        raw = await session.retr(num)
        if skip_reason(ch, raw, pcfg) == "not-addressed":
            result.skipped += 1
            await db.write(lambda c, u=uidl: store.store_fetched(c, ch.name, "POP3", 0, [(u, None, "not-addressed")],
                                                                  None, False))
            continue
        await db.write(lambda c, u=uidl, r=raw: store.store_fetched(c, ch.name, "POP3", 0, [(u, r, None)], None,
                                                                     False))
        result.fetched += 1

    async def act(rows: list[dict]) -> list[dict]:
        for row in rows:
            if ch.after == "delete" and row["uid"] in listing:
                await session.dele(listing[row["uid"]])
        return rows

    await process_pending(db, ch, deliver, act, result, now, flush)
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
