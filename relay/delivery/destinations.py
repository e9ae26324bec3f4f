"""Dead destinations are parked, not churned.

When every address of a destination (``route:<name>`` or ``mx:<domain>``) refuses the connection or never
greets, the destination is parked: its recipients are handed back to the queue until the next probe
without an attempt, an event or a result (one UPDATE of their due time, nothing else), and one transaction —
the probe — goes out per destination at the retry schedule (``relay.spool.retry.backoff``: 30 s doubling to
``delivery.retry_cap``). A probe that reaches a server unparks the destination and the waiting recipients
go at once; a failed probe parks it again for the next, longer interval. Lifetimes still apply: a parked
recipient whose time is up fails ``expired`` when it is next claimed.

    dests = Destinations(cap=4000.0, clock=time.time)
    verdict = dests.admit(key, now)        # "send" | "probe" | "wait" (then dests.next_probe(key))
    dests.after(key, outcome_ok, error, now)   # after the transaction of an admitted group
    dests.status()                         # [DestinationStatus] for the API, queue summary, metrics

State is per process (a restart probes at once); with several workers or nodes each parks on its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from relay.errors import DeliveryError
from relay.spool.retry import RetryPolicy, backoff

PROBE_FIRST = 30.0            # seconds from parking to the first probe
PROBE_WAIT = 10.0             # while a probe is in flight, others of the destination wait this long


@dataclass
class Parked:
    key: str
    since: float
    failures: int
    last_error: DeliveryError
    next_probe: float
    probing: bool = False
    waiting: int = 0          # recipients handed back since the last probe


@dataclass(frozen=True)
class DestinationStatus:
    key: str
    down_since: float
    failures: int
    last_error: str
    next_probe: float
    probing: bool
    waiting: int

    def as_dict(self) -> dict[str, object]:
        return {"destination": self.key, "down_since": self.down_since, "failures": self.failures,
                "last_error": self.last_error, "next_probe": self.next_probe, "probing": self.probing,
                "recipients_waiting": self.waiting}


class Destinations:
    def __init__(self, cap: float, clock: Callable[[], float] = time.time):
        self.policy = RetryPolicy(first=PROBE_FIRST, cap=max(PROBE_FIRST, cap), jitter=0.0)
        self.clock = clock
        self._parked: dict[str, Parked] = {}

    def admit(self, key: str, now: float) -> str:
        """Whether a group for ``key`` may go now: ``send`` (not parked), ``probe`` (this group is the
        probe), or ``wait`` (hand it back until ``next_probe(key)``)."""
        p = self._parked.get(key)
        if p is None:
            return "send"
        if p.probing or now < p.next_probe:
            return "wait"
        p.probing = True
        p.waiting = 0
        return "probe"

    def holds(self, key: str) -> bool:
        """Parked right now (for a group admitted earlier that is only now getting a connection slot)."""
        return key in self._parked

    def next_probe(self, key: str, now: float) -> float:
        p = self._parked.get(key)
        if p is None:
            return now
        return now + PROBE_WAIT if p.probing else p.next_probe

    def handed_back(self, key: str, n: int) -> None:
        p = self._parked.get(key)
        if p is not None:
            p.waiting += n

    def after(self, key: str, unreachable: DeliveryError | None, now: float) -> bool:
        """Record a transaction's verdict on the destination: ``unreachable`` is the error when no server
        could be reached at all, None when one answered (whatever it said). Returns True when the
        destination was parked and is free again."""
        p = self._parked.get(key)
        if unreachable is None:
            if p is not None:
                del self._parked[key]
                return True
            return False
        if p is None:
            self._parked[key] = Parked(key, now, 1, unreachable, now + backoff(1, self.policy))
            return False
        p.failures += 1
        p.last_error = unreachable
        p.next_probe = now + backoff(p.failures, self.policy)
        p.probing = False
        return False

    def why(self, key: str) -> tuple[int | None, str | None, str] | None:
        """The reply recorded on a recipient handed back while ``key`` is parked."""
        p = self._parked.get(key)
        if p is None:
            return None
        e = p.last_error
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(p.since))
        return e.code, e.enhanced, f"waiting: {key} unreachable since {since} ({e.text})"

    def release_probe(self, key: str) -> None:
        """A probe that ended without a verdict (cancelled, internal error): the next one may go."""
        p = self._parked.get(key)
        if p is not None:
            p.probing = False

    def status(self) -> list[DestinationStatus]:
        return [DestinationStatus(p.key, p.since, p.failures, f"{p.last_error.code} {p.last_error.enhanced} "
                                  f"{p.last_error.text}", p.next_probe, p.probing, p.waiting)
                for p in sorted(self._parked.values(), key=lambda p: p.since)]

    def __len__(self) -> int:
        return len(self._parked)
