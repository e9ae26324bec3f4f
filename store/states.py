"""The recipient state machine: the statuses of the spool and the one function that changes them.

Every status change of a recipient goes through ``transition(current, new)``, which returns ``new`` or
raises ``IllegalTransition``; the store calls it before each UPDATE of ``recipients.status`` and writes an
``events`` row in the same transaction. The allowed moves (a message's status is derived from its
recipients with ``message_status``)::

    (new)      -> scheduled | queued
    scheduled  -> queued (retry now) | sending (due) | cancelled | bounced (report of an earlier chain)
    queued     -> queued (retry now) | sending | cancelled | bounced (report of an earlier chain)
    deferred   -> queued (retry now) | sending | cancelled | bounced (report of an earlier chain)
    sending    -> delivered | deferred | bounced | failed | queued (lease returned) | sending (lease expired)
    delivered  -> bounced (asynchronous bounce) | queued (resend)
    bounced    -> bounced (another report) | queued (resend)
    failed     -> bounced (a report after giving up) | queued (resend)
    cancelled  -> queued (resend)
"""

from __future__ import annotations


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


NEW = ""   # the "current" status of a recipient that does not exist yet

ALLOWED: dict[str, frozenset[str]] = {
    NEW: frozenset({Status.SCHEDULED, Status.QUEUED}),
    Status.SCHEDULED: frozenset({Status.QUEUED, Status.SENDING, Status.CANCELLED, Status.BOUNCED}),
    Status.QUEUED: frozenset({Status.QUEUED, Status.SENDING, Status.CANCELLED, Status.BOUNCED}),
    Status.DEFERRED: frozenset({Status.QUEUED, Status.SENDING, Status.CANCELLED, Status.BOUNCED}),
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


def message_status(statuses: list[str]) -> str:
    """Derive a message's status from its recipients' (the 'least final' one wins)."""
    order = ("sending", "queued", "deferred", "scheduled", "failed", "bounced", "delivered", "cancelled")
    present = set(statuses)
    for s in order:
        if s in present:
            return s
    return "unknown"
