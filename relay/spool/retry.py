"""The retry schedule: a pure function of (attempts, times, reply text, a random number). No clock inside.

Default (Postfix / KumoMTA style): the first retry 5 minutes after the first failure, then doubling
(5, 10, 20, 40 min, ...), capped at 4000 s, each delay spread by +-``jitter`` (10 %) so a destination that
came back is not hit by the whole queue at once. A recipient whose message is older than ``max_lifetime``
(5 days) is given up: ``expired``. The last retry is pulled in to just before the deadline, so a message
gets one final attempt at the end of its lifetime instead of expiring during a long pause.

A greylisting reply that names its wait ("try again in 300 seconds", "retry in 5 minutes",
"greylisted for 60s") is honoured: the next attempt comes just after that wait, not after the backoff.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_FIRST = 300.0
DEFAULT_CAP = 4000.0
DEFAULT_JITTER = 0.1
DEFAULT_LIFETIME = 5 * 86400.0
GREYLIST_MARGIN = 5.0          # seconds added to a server-named wait
GREYLIST_MAX = 6 * 3600.0      # never trust a named wait beyond this

_UNITS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
          "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
          "h": 3600, "hour": 3600, "hours": 3600}
_WAIT_RE = re.compile(
    r"(?:again|retry|wait|later|greylist\w*|graylist\w*|delayed|after|for)\D{0,20}?"
    r"(\d{1,6})\s*(seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|h)\b",
    re.I,
)


@dataclass(frozen=True)
class RetryPolicy:
    first: float = DEFAULT_FIRST
    cap: float = DEFAULT_CAP
    jitter: float = DEFAULT_JITTER
    max_lifetime: float = DEFAULT_LIFETIME


@dataclass(frozen=True)
class Decision:
    """Either ``expired`` or a ``next_attempt_at`` (absolute time)."""

    expired: bool
    next_attempt_at: float | None = None
    delay: float | None = None
    greylist: bool = False


def backoff(failures: int, policy: RetryPolicy = RetryPolicy(), rand: float = 0.5) -> float:
    """Delay after the ``failures``-th consecutive failure (1-based); ``rand`` in [0, 1) drives the jitter
    (0.5 = no jitter)."""
    n = max(1, int(failures))
    base = policy.first * (2.0 ** min(n - 1, 60))
    base = min(base, policy.cap)
    spread = 1.0 + policy.jitter * (2.0 * min(max(rand, 0.0), 1.0) - 1.0)
    return base * spread


def named_wait(text: str | None) -> float | None:
    """Seconds a greylisting/deferral reply asks us to wait, or None if it names none."""
    if not text:
        return None
    m = _WAIT_RE.search(text)
    if not m:
        return None
    seconds = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if seconds <= 0:
        return None
    return float(min(seconds, GREYLIST_MAX))


def expires_at(created_at: float, policy: RetryPolicy = RetryPolicy()) -> float:
    return created_at + policy.max_lifetime


def is_expired(now: float, created_at: float, policy: RetryPolicy = RetryPolicy()) -> bool:
    return now >= expires_at(created_at, policy)


def next_attempt(now: float, created_at: float, failures: int, reply_text: str | None = None,
                 policy: RetryPolicy = RetryPolicy(), rand: float = 0.5) -> Decision:
    """What to do after a temporary failure at ``now``.

    ``failures`` counts failed attempts including this one; ``created_at`` is when the message was
    accepted. Returns ``Decision(expired=True)`` once the lifetime is used up.
    """
    deadline = expires_at(created_at, policy)
    if now >= deadline:
        return Decision(expired=True)
    wait = named_wait(reply_text)
    if wait is not None:
        delay, grey = wait + GREYLIST_MARGIN, True
    else:
        delay, grey = backoff(failures, policy, rand), False
    at = min(now + delay, deadline - 1.0)     # the final try lands just before the deadline
    if at <= now:                             # that final try was this one
        return Decision(expired=True)
    return Decision(expired=False, next_attempt_at=at, delay=at - now, greylist=grey)
