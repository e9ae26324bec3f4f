"""Sending delivery reports from the scheduler: one DSN per message and dispatch round for its bounced or
failed recipients, and at most one delay notice per message (``relay.notices.dsn`` builds them).

    reports = Reports(spool, delivery_config, reporting_mta, clock)
    batch = reports.batch(message, parts)       # per dispatched message; parts = transactions (+ checks)
    await reports.record(batch, pairs, host)    # after each part's Spool.complete; sends when the last is in
"""

from __future__ import annotations

import logging
from typing import Callable

from relay.notices import dsn
from relay.spool.spool import Message, Recipient, RecipientResult, Spool

log = logging.getLogger("relay.notices.reports")


class Batch:
    """The bounced/failed recipients of one message over one dispatch round."""

    def __init__(self, message: Message, parts: int):
        self.message = message
        self.parts = parts
        self.failed: list[dsn.FailedRecipient] = []


class Reports:
    def __init__(self, spool: Spool, config, reporting_mta: str, clock: Callable[[], float],
                 on_enqueue: Callable[[], None] | None = None):
        self.spool = spool
        self.config = config              # relay.config.DeliveryConfig
        self.reporting_mta = reporting_mta
        self.clock = clock
        self.on_enqueue = on_enqueue
        self.sent = 0

    def batch(self, message: Message, parts: int) -> Batch:
        return Batch(message, parts)

    async def record(self, batch: Batch, pairs: list[tuple[Recipient, RecipientResult]],
                     host: str | None) -> None:
        """One part of the round is recorded: collect failures; send the DSN when the round is complete."""
        msg = batch.message
        batch.parts -= 1
        for r, res in pairs:
            if res.status in ("bounced", "failed"):
                remote = host if res.code and res.reason is None else None
                batch.failed.append(dsn.FailedRecipient(r.address, res.status, res.enhanced, res.code,
                                                        res.text, remote, res.reason))
        if batch.parts <= 0 and batch.failed and self.config.dsn and dsn.should_notify(msg):
            await self.send(msg, batch.failed)
        if self.config.delay_notice:
            late = [(r, res) for r, res in pairs if res.status == "deferred"]
            start = max(msg.created_at, msg.send_at or 0)
            if late and self.clock() - start >= self.config.delay_notice_after and dsn.should_notify(msg):
                await self.delayed(msg, late)

    async def delayed(self, msg: Message, late: list[tuple[Recipient, RecipientResult]]) -> None:
        """At most one "delayed" report per message (the store keeps the marker)."""
        try:
            if not await self.spool.first_delay_notice(msg.id):
                return
        except Exception:  # noqa: BLE001 - a report is best effort; the recipients' state is recorded
            log.exception("could not record the delay notice of %s", msg.id)
            return
        items = [dsn.FailedRecipient(r.address, "deferred", res.enhanced, res.code, res.text, None, None)
                 for r, res in late]
        await self.send(msg, items, action="delayed")

    async def send(self, msg: Message, items: list[dsn.FailedRecipient], action: str = "failed") -> None:
        try:
            original = await self.spool.body(msg.id)
            new = dsn.new_message(msg, items, original, reporting_mta=self.reporting_mta, action=action)
            if new is not None:
                await self.spool.enqueue(new, actor="dsn")
                self.sent += 1
                if self.on_enqueue:
                    self.on_enqueue()
        except Exception:  # noqa: BLE001 - the recipients' status is recorded; the report is best effort
            log.exception("could not enqueue the DSN for %s", msg.id)
