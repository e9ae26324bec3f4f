"""The one place relaybox changes aiosmtpd's behaviour from outside: two speed-ups, installed explicitly.

aiosmtpd has no hooks for these, so ``install()`` replaces two names inside the ``aiosmtpd.smtp`` module
only (never globally):

- ``sanitized_log``: aiosmtpd sanitizes the arguments of every per-command log line before the logger
  decides to drop it; ours skips that work when the level is disabled (~7 us a command).
- ``inspect`` / ``dir``: ``SMTP.__init__`` introspects the protocol object and the handler on every
  connection (~0.3 ms); ours caches the names per type (300 -> 42 us per connection, ``bench/intake.py``).

Both keep aiosmtpd's results identical; ``tests/test_intake*.py`` run through them. If aiosmtpd changes
these internals, delete this module and the ``install()`` call: nothing else depends on it.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import aiosmtpd.smtp as _aiosmtpd_smtp

_sanitized_log = _aiosmtpd_smtp.sanitized_log


def _quiet_sanitized_log(func: Any, msg: str, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd sanitizes the arguments of every per-command debug/info line before the logger decides to
    drop it (~7 us a command); skip that work when the level is disabled."""
    level = logging.DEBUG if getattr(func, "__name__", "") == "debug" else logging.INFO
    if _aiosmtpd_smtp.log.isEnabledFor(level):
        _sanitized_log(func, msg, *args, **kwargs)




class _CachedIntrospection:
    """aiosmtpd's SMTP.__init__ introspects the protocol object and the handler on every connection
    (``inspect.getmembers`` over all attributes, ``dir()`` twice, ``inspect.signature``): ~0.3 ms per
    connection, the biggest per-connection cost for clients that connect per message. The *names* it
    looks for (``auth_*``, ``handle_*``, ``smtp_*``) are class attributes, so we cache them per type and
    still bind every method to the new instance. Used only inside aiosmtpd.smtp's namespace."""

    def __init__(self) -> None:
        self._members: dict[type, list[str]] = {}
        self._dirs: dict[type, list[str]] = {}
        self._sigs: dict[Any, Any] = {}

    def getmembers(self, obj: Any, predicate: Any = None) -> list[tuple[str, Any]]:
        names = self._members.get(type(obj))
        if names is None:
            found = inspect.getmembers(obj)
            names = self._members[type(obj)] = [n for n, _ in found if n.startswith("auth_")]
        return [(n, getattr(obj, n)) for n in names]       # aiosmtpd only keeps the auth_* members

    def dir(self, obj: Any) -> list[str]:
        names = self._dirs.get(type(obj))
        if names is None:
            names = self._dirs[type(obj)] = [n for n in dir(obj) if n.startswith(("handle_", "smtp_"))]
        return names

    def signature(self, fn: Any) -> inspect.Signature:
        key = getattr(fn, "__func__", fn)
        sig = self._sigs.get(key)
        if sig is None:
            sig = self._sigs[key] = inspect.signature(fn)
        return sig

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)


_installed = False


def install() -> None:
    """Put both speed-ups into aiosmtpd.smtp's namespace (idempotent; called before the first listener)."""
    global _installed
    if _installed:
        return
    introspection = _CachedIntrospection()
    ns: Any = _aiosmtpd_smtp
    ns.sanitized_log = _quiet_sanitized_log
    ns.inspect = introspection
    ns.dir = introspection.dir          # shadows the builtin inside aiosmtpd.smtp only
    _installed = True
