"""SMTP AUTH abuse controls: password hashing off the event loop, failure throttling per address and user.

- ``Hasher``: a small thread pool for scrypt (``hashlib.scrypt`` releases the GIL), bounded: at most
  ``workers`` hashes run and at most ``queue`` wait; beyond that ``Busy`` (the session answers 454 4.7.0)
  so that a flood of AUTH attempts can neither block the loop nor queue unbounded work.
- ``AuthThrottle``: failed attempts counted per client address and per user name over a window. Each
  failure's answer waits ``delay * 2**(n-1)`` (n = the larger of the two counts, capped); ``lockout_after``
  failures lock that address or user out for ``lockout`` (AUTH answered 454 without checking anything). A
  success clears both counts. Memory is bounded (``max_keys``; expired entries are pruned).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from prometheus_client import Counter, Gauge

from relay.config import SMTPConfig

AUTH_ATTEMPTS = Counter("relaybox_smtp_auth_attempts", "SMTP AUTH attempts, by result", ["result"])
AUTH_LOCKED = Gauge("relaybox_smtp_auth_locked_keys", "Addresses and user names locked out of AUTH",
                    multiprocess_mode="livesum")          # worker processes: each throttles its own sessions
AUTH_HASH_QUEUE = Gauge("relaybox_smtp_auth_hash_pending", "Password verifications running or waiting",
                        multiprocess_mode="livesum")


class Busy(Exception):
    """More password verifications are waiting than ``auth_queue`` allows."""


class Hasher:
    def __init__(self, workers: int, queue: int):
        self.limit = workers + queue
        self.pending = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="relaybox-auth")

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.pending >= self.limit:
            raise Busy()
        self.pending += 1
        AUTH_HASH_QUEUE.inc()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self.pending -= 1
            AUTH_HASH_QUEUE.dec()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Failures:
    times: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class AuthThrottle:
    def __init__(self, *, delay: float, delay_cap: float, window: float, lockout_after: int,
                 lockout: float, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self.delay, self.delay_cap, self.window = delay, delay_cap, window
        self.lockout_after, self.lockout = lockout_after, lockout
        self.clock = clock
        self.max_keys = max_keys
        self._keys: dict[str, _Failures] = {}
        AUTH_LOCKED.set_function(self.locked_count)       # computed at scrape time

    @classmethod
    def from_config(cls, cfg: SMTPConfig) -> "AuthThrottle":
        return cls(delay=float(cfg.auth_failure_delay), delay_cap=float(cfg.auth_failure_delay_cap),
                   window=float(cfg.auth_failure_window), lockout_after=cfg.auth_lockout_after,
                   lockout=float(cfg.auth_lockout))

    @staticmethod
    def _names(ip: str, user: str | None) -> list[str]:
        return [f"ip:{ip}"] + ([f"user:{user.lower()}"] if user else [])

    def locked(self, ip: str, user: str | None = None) -> float:
        """Seconds left of a lockout of this address or user (0 = not locked)."""
        now = self.clock()
        left = 0.0
        for k in self._names(ip, user):
            f = self._keys.get(k)
            if f is not None and f.locked_until > now:
                left = max(left, f.locked_until - now)
        return left

    def failed(self, ip: str, user: str | None) -> float:
        """Record one failure; returns how long its answer should wait."""
        now = self.clock()
        if len(self._keys) >= self.max_keys:
            self._prune(now)
        worst = 0
        for k in self._names(ip, user):
            f = self._keys.setdefault(k, _Failures())
            f.times = [t for t in f.times if t > now - self.window][-self.lockout_after:] + [now]
            if len(f.times) >= self.lockout_after and f.locked_until <= now:
                f.locked_until = now + self.lockout
            worst = max(worst, len(f.times))
        return min(self.delay * 2 ** (worst - 1), self.delay_cap) if worst else 0.0

    def succeeded(self, ip: str, user: str | None) -> None:
        for k in self._names(ip, user):
            self._keys.pop(k, None)

    def locked_count(self) -> int:
        now = self.clock()
        return sum(1 for f in self._keys.values() if f.locked_until > now)

    def _prune(self, now: float) -> None:
        for k in [k for k, f in self._keys.items() if f.locked_until <= now and
                  (not f.times or f.times[-1] <= now - self.window)]:
            del self._keys[k]
        while len(self._keys) >= self.max_keys:          # still full: forget the oldest entries first
            del self._keys[next(iter(self._keys))]
