"""The spool: what intake, delivery, the poller and the admin API call to queue and move messages.

The rows live in the store (``store.messages``: every status change through the state machine, an event
per change, group commit); the spool adds what is not storage: wake-ups of the scheduler after each
durable enqueue, and the admin vocabulary (hold/release).

    spool = Spool(store)                                  # store.Store, opened
    qid = await spool.enqueue(NewMessage(...), actor="smtp")   # durable on return; the scheduler wakes
    claims = await spool.claim(owner, limit=100, lease=300.0)  # -> list[Claim] (frozen records)
    await spool.complete([RecipientResult(...)], attempt=AttemptLog(...))
    await spool.cancel(qid) / retry_now / resend / hold / release / delete / mark_bounced
    await spool.schedule(qid, at) / send_now(qid)           # pending recipients: a new time
    stats = await spool.recover()                         # at start: leases back, poison items failed
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol

from store import Store
from store.messages import QueueError
from store.records import AttemptLog, Claim, Message, NewMessage, Recipient, RecipientResult

__all__ = ["AttemptLog", "Claim", "Handoff", "Message", "NewMessage", "QueueError", "Recipient",
           "RecipientResult", "Spool"]


class Handoff(Protocol):
    """The delivery scheduler of this process, taking new mail straight from intake (no claim round)."""

    def handoff_lease(self) -> tuple[str, float] | None:
        """(lease owner, lease seconds) when it takes a new message now; None to leave it to the queue."""

    def take(self, claim: Claim, body: bytes, suppressed: set[str], framed: bool = False) -> None:
        """A message stored with its recipients leased to this scheduler (``suppressed``: those of its
        addresses on the suppression list): deliver it. ``framed``: ``NewMessage.framed``."""


class Spool:
    def __init__(self, store: Store):
        self.store = store
        self.messages = store.messages
        # called (no arguments, in the loop) after each durable enqueue: the scheduler wakes at once
        self.on_enqueue: list[Callable[[], None]] = []
        # the local scheduler, when it takes new mail directly (relay.delivery.scheduler.Scheduler)
        self.handoff: Handoff | None = None

    def _woken(self) -> None:
        for cb in self.on_enqueue:
            cb()

    # ---- intake ----------------------------------------------------------------------------------
    async def enqueue(self, msg: NewMessage, actor: str = "smtp") -> str:
        """Durable on return. When the local scheduler has room and nothing older waits, the message is
        stored already leased to it and handed over with its body (one write instead of an enqueue, a
        claim and a body read; the lease is recovered like any claim after a crash)."""
        taker = self.handoff.handoff_lease() if self.handoff is not None else None
        if taker is None:
            qid = await self.messages.enqueue(msg, actor)
            self._woken()
            return qid
        got = await self.messages.enqueue_claimed(msg, *taker, actor=actor)
        if got is None:             # scheduled or held: stored as enqueue() stores it
            self._woken()
        elif self.handoff is not None:
            self.handoff.take(got[0], msg.body, got[1], msg.framed)
        return msg.queue_id

    async def enqueue_once(self, msg: NewMessage, actor: str) -> tuple[str, bool]:
        """Idempotent enqueue keyed by ``msg.queue_id`` (a redelivery after a crash finds it stored)."""
        qid, created = await self.messages.enqueue_once(msg, actor)
        if created:
            self._woken()
        return qid, created

    # ---- delivery side ---------------------------------------------------------------------------
    async def claim(self, owner: str, *, limit: int = 100, lease: float = 300.0,
                    now: float | None = None) -> list[Claim]:
        return await self.messages.claim(owner, limit=limit, lease=lease, now=now)

    async def body(self, message_id: str) -> bytes | None:
        return await self.messages.body(message_id)

    async def prefetch(self, addresses: set[str], body_ids: list[str],
                       now: float | None = None) -> tuple[set[str], dict[str, bytes]]:
        return await self.messages.prefetch(addresses, body_ids, now)

    async def complete(self, results: Iterable[RecipientResult], *, attempt: AttemptLog | None = None,
                       actor: str = "delivery") -> None:
        await self.messages.complete(results, attempt=attempt, actor=actor)

    async def defer(self, recipient_ids: list[int], next_attempt_at: float, code: int | None = None,
                    enhanced: str | None = None, text: str | None = None, actor: str = "delivery") -> None:
        await self.complete([RecipientResult(r, "deferred", code, enhanced, text, next_attempt_at)
                             for r in recipient_ids], actor=actor)

    async def fail(self, recipient_ids: list[int], reason: str, code: int | None = None,
                   enhanced: str | None = None, text: str | None = None, actor: str = "delivery") -> None:
        await self.complete([RecipientResult(r, "failed", code, enhanced, text, reason=reason)
                             for r in recipient_ids], actor=actor)

    async def release_claims(self, ids: list[int], at: float,
                             why: tuple[int | None, str | None, str] | None = None) -> int:
        return await self.messages.release(ids, at, why)

    async def mark_bounced(self, recipient_id: int, code: int | None, enhanced: str | None, text: str | None,
                           reason: str | None, actor: str = "bounce") -> bool:
        return await self.messages.mark_bounced(recipient_id, code, enhanced, text, reason, actor)

    async def first_delay_notice(self, message_id: str) -> bool:
        return await self.messages.mark_delay_notice(message_id)

    # ---- admin operations --------------------------------------------------------------------------
    async def cancel(self, message_id: str, recipient_ids: list[int] | None = None,
                     actor: str = "admin") -> int:
        return await self.messages.cancel(message_id, recipient_ids, actor)

    async def retry_now(self, message_id: str, actor: str = "admin") -> int:
        return await self.messages.retry_now(message_id, actor)

    async def schedule(self, message_id: str, at: float, actor: str = "admin") -> int:
        """Pending recipients wait until ``at`` (the scheduler wakes: an earlier time than it knew)."""
        n = await self.messages.schedule(message_id, at, actor)
        if n:
            self._woken()
        return n

    async def send_now(self, message_id: str, actor: str = "admin") -> int:
        n = await self.messages.send_now(message_id, actor)
        if n:
            self._woken()
        return n

    async def resend(self, message_id: str, recipient_ids: list[int] | None = None,
                     actor: str = "admin") -> int:
        return await self.messages.resend(message_id, recipient_ids, actor)

    async def hold(self, message_id: str, actor: str = "admin") -> bool:
        return await self.messages.set_held(message_id, True, actor)

    async def release(self, message_id: str, actor: str = "admin") -> bool:
        return await self.messages.set_held(message_id, False, actor)

    async def delete(self, message_id: str, actor: str = "admin") -> bool:
        return await self.messages.delete(message_id, actor)

    # ---- crash recovery and retention ----------------------------------------------------------------
    async def recover(self) -> dict[str, int]:
        return await self.messages.recover()

    async def prune(self, body_days: float, meta_days: float, batch: int = 500) -> int:
        return await self.messages.prune(body_days, meta_days, batch)
