"""The recipient state machine: the statuses of the spool and the one function that changes them.

Every status change of a recipient goes through ``transition(current, new)``, which returns ``new`` or
raises ``IllegalTransition``; the store calls it before each UPDATE of ``recipients.status`` and writes an
``events`` row in the same transaction. The allowed moves (a message's status is derived from its
recipients with ``message_status``)::

    (new)      -> scheduled | queued
    scheduled  -> queued (send now) | scheduled (rescheduled) | sending (due) | cancelled
                  | bounced (report of an earlier chain)
    queued     -> queued (retry now) | scheduled (scheduled later) | sending | cancelled | bounced
    deferred   -> queued (retry now) | scheduled (scheduled later) | sending | cancelled | bounced
    sending    -> delivered | deferred | bounced | failed | queued (lease returned) | sending (lease expired)
    delivered  -> bounced (asynchronous bounce) | queued (resend)
    bounced    -> bounced (another report) | queued (resend)
    failed     -> bounced (a report after giving up) | queued (resend)
    cancelled  -> queued (resend)
"""

from __future__ import annotations

from typing import Mapping


class Status:
    """Per-recipient status. A message's status is derived from its recipients."""

    SCHEDULED = "scheduled"   # send-at in the future
    QUEUED = "queued"         # due now
    SENDING = "sending"       # leased by a delivery worker
    DELIVERED = "delivered"   # 2xx from the next hop
    DEFERRED = "deferred"     # 4xx / network / DNS trouble; retried later
    BOUNCED = "bounced"       # 5xx at delivery or an asynchronous bounce (may follow delivered)
    FAILED = "failed"         # gave up: expired, suppressed, null MX, invalid, poison
    CANCELLED = "cancelled"   # by an admin, only before sending

    ALL = ("scheduled", "queued", "sending", "delivered", "deferred", "bounced", "failed", "cancelled")
    FINAL = frozenset({"delivered", "bounced", "failed", "cancelled"})
    ACTIVE = frozenset({"scheduled", "queued", "sending", "deferred"})
    DUE = ("queued", "deferred", "scheduled")   # statuses a scheduler may claim once next_attempt_at passed
    RESULTS = frozenset({"delivered", "deferred", "bounced", "failed"})   # what a delivery attempt ends in
    # waiting for an attempt: what cancel, schedule and send-now act on ('sending' is in an attempt now)
    PENDING = ("scheduled", "queued", "deferred")
    # the Outbox: a message with a recipient in one of these is not (or not fully) delivered
    OUTBOX = ("scheduled", "queued", "sending", "deferred", "failed", "bounced")


NEW = ""   # the "current" status of a recipient that does not exist yet

ALLOWED: dict[str, frozenset[str]] = {
    NEW: frozenset({Status.SCHEDULED, Status.QUEUED}),
    Status.SCHEDULED: frozenset({Status.QUEUED, Status.SCHEDULED, Status.SENDING, Status.CANCELLED,
                                 Status.BOUNCED}),
    Status.QUEUED: frozenset({Status.QUEUED, Status.SCHEDULED, Status.SENDING, Status.CANCELLED,
                              Status.BOUNCED}),
    Status.DEFERRED: frozenset({Status.QUEUED, Status.SCHEDULED, Status.SENDING, Status.CANCELLED,
                                Status.BOUNCED}),
    Status.SENDING: frozenset({Status.DELIVERED, Status.DEFERRED, Status.BOUNCED, Status.FAILED,
                               Status.QUEUED, Status.SENDING}),
    Status.DELIVERED: frozenset({Status.BOUNCED, Status.QUEUED}),
    Status.BOUNCED: frozenset({Status.BOUNCED, Status.QUEUED}),
    Status.FAILED: frozenset({Status.BOUNCED, Status.QUEUED}),
    Status.CANCELLED: frozenset({Status.QUEUED}),
}


class IllegalTransition(ValueError):
    """A status change the state machine does not allow (a bug in the caller, never user input)."""

    def __init__(self, current: str, new: str):
        super().__init__(f"illegal recipient transition {current or '(new)'} -> {new}")
        self.current = current
        self.new = new


def can_transition(current: str, new: str) -> bool:
    return new in ALLOWED.get(current, frozenset())


def transition(current: str, new: str) -> str:
    """The one place a recipient's status changes: returns ``new`` or raises ``IllegalTransition``."""
    if not can_transition(current, new):
        raise IllegalTransition(current, new)
    return new


# the one text for "not now, it is in an SMTP transaction" (cancel, delete, schedule, send-now refused)
BEING_DELIVERED = "it is being delivered now; wait for the attempt to end"
NOTHING_PENDING = "no pending recipient (scheduled, queued or deferred)"
SUMMARY_ORDER = ("scheduled", "queued", "sending", "deferred", "delivered", "bounced", "failed", "cancelled")


def status_summary(counts: Mapping[str, int]) -> str:
    """Where a message's recipients stand, as an admin reads it: ``delivered`` when they all share one
    status, else the counts in a fixed order (``2 delivered, 1 bounced``)."""
    present = [(s, counts[s]) for s in SUMMARY_ORDER if counts.get(s)]
    present += [(s, n) for s, n in sorted(counts.items()) if n and s not in SUMMARY_ORDER]
    if not present:
        return "no recipients"
    if len(present) == 1:
        return present[0][0]
    return ", ".join(f"{n} {s}" for s, n in present)


def box_of(counts: Mapping[str, int]) -> str | None:
    """``outbox`` when any recipient is not (yet) delivered, ``sent`` when every recipient is delivered
    (cancelled ones aside), None for a message whose recipients were all cancelled."""
    if any(counts.get(s) for s in Status.OUTBOX):
        return "outbox"
    return "sent" if counts.get(Status.DELIVERED) else None


def message_status(statuses: list[str]) -> str:
    """Derive a message's status from its recipients' (the 'least final' one wins)."""
    order = ("sending", "queued", "deferred", "scheduled", "failed", "bounced", "delivered", "cancelled")
    present = set(statuses)
    for s in order:
        if s in present:
            return s
    return "unknown"
