"""The intake rejection log's buffer: what SMTP refused, written in batches off the protocol hooks.

    log = RejectionLog(store.rejections, cfg)          # cfg: SMTPConfig (rejection_log_* settings)
    log.note(client_ip=..., auth_user=..., sender=..., recipient=..., command="RCPT", reply="550 5.7.1 ...")
    await log.start() ... await log.stop()             # a task writes the buffer every second; stop flushes

``note`` is synchronous and does no I/O: it folds the refusal into a bounded in-memory buffer (one entry
per client, reason, sender and minute, with a count; beyond ``smtp.rejection_log_buffer`` entries new ones
are dropped and counted), so a flood or a slow disk can never slow or break intake. The task writes the
buffer through ``store.rejections`` (one write a second at most) and prunes by age and row count once a
minute. A write that fails is logged and dropped: the log is for explanation, not for accounting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any, Callable

from prometheus_client import Counter

from store.rejections import NewRejection, RejectionStore

log = logging.getLogger("relay.intake.rejections")

LOGGED = Counter("relaybox_smtp_rejections_logged",
                 "Refusals at SMTP time kept in the rejection log, by reason", ["reason"])
DROPPED = Counter("relaybox_smtp_rejections_dropped", "Refusals not logged: the in-memory buffer was full")
FIELD_MAX = 256             # characters kept of a sender, recipient, user or reply text
FLUSH_INTERVAL = 1.0
PRUNE_INTERVAL = 60.0
_REPLY = re.compile(r"^(\d{3})[ -](?:([245]\.\d{1,3}\.\d{1,3})\s+)?(.*)$", re.S)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def bounded(text: str | None, limit: int = FIELD_MAX) -> str:
    """At most ``limit`` characters, control characters escaped (\\r, \\n, \\x00 -> visible text)."""
    s = (text or "")[: limit * 2]
    s = _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), s)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def reason_of(code: int, enhanced: str, text: str, command: str) -> str:
    """A short bounded word for a refusal (a metric label and a filter)."""
    low = text.lower()
    if command == "AUTH" or code == 535 or enhanced == "5.7.8":
        return "auth_locked" if code == 454 or "too many" in low else "auth_failed"
    if "relay" in low and enhanced == "5.7.1":
        return "relay_denied"
    if code == 421:
        return "too_many_connections" if "too many" in low else "unavailable"
    if enhanced == "5.1.3":
        return "bad_recipient"
    if enhanced == "5.1.7":
        return "bad_sender"
    if enhanced == "5.1.1":
        return "unknown_recipient"
    if enhanced == "5.3.4" or code == 552:
        return "too_big"
    if enhanced == "4.5.3":
        return "too_many_recipients"
    if enhanced.startswith("4.3."):
        return "storage"
    if enhanced.startswith("5.6.") or command == "DATA" and code >= 500:
        return "content"
    if enhanced.startswith("5.5.") or code in (500, 501, 503, 555):
        return "syntax"
    return "other"


class RejectionLog:
    def __init__(self, store: RejectionStore, cfg: Any, *, clock: Callable[[], float] | None = None):
        self.store = store
        self.clock = clock or store.clock          # the store's clock: retention and rows agree
        self.keep = float(getattr(cfg, "rejection_log_keep", 7 * 86400))
        self.max_rows = int(getattr(cfg, "rejection_log_max_rows", 100_000))
        self.max_entries = int(getattr(cfg, "rejection_log_buffer", 10_000))
        self._buf: dict[tuple[str, str, str, int], dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_prune = 0.0
        self._failing = False

    # ---- the hooks' side: no I/O --------------------------------------------------------------------
    def note(self, *, client_ip: str, reply: str, command: str = "", auth_user: str = "", sender: str = "",
             recipient: str = "") -> None:
        m = _REPLY.match(reply.strip())
        if not m:
            return
        code, enhanced, text = int(m.group(1)), m.group(2) or "", m.group(3)
        reason = reason_of(code, enhanced, text, command)
        now = self.clock()
        sender = bounded(sender)
        key = (client_ip, reason, sender, int(now // 60))
        entry = self._buf.get(key)
        if entry is not None:
            entry["count"] += 1
            entry["last_at"] = now
            LOGGED.labels(reason).inc()
            return
        if len(self._buf) >= self.max_entries:
            DROPPED.inc()
            return
        LOGGED.labels(reason).inc()
        self._buf[key] = {"at": now, "last_at": now, "count": 1, "client_ip": client_ip, "code": code,
                          "reason": reason, "auth_user": bounded(auth_user), "sender": sender,
                          "recipient": bounded(recipient), "command": command, "enhanced": enhanced,
                          "text": bounded(text)}

    def pending(self) -> int:
        return len(self._buf)

    # ---- the task ----------------------------------------------------------------------------------
    async def flush(self) -> int:
        """Write what is buffered (one write); returns the entries written."""
        if not self._buf:
            return 0
        batch, self._buf = list(self._buf.values()), {}
        await self.store.add([NewRejection(**e) for e in batch])
        return len(batch)

    async def _once(self) -> None:
        try:
            await self.flush()
            now = self.clock()
            if now - self._last_prune >= PRUNE_INTERVAL:
                self._last_prune = now
                await self.store.prune(keep=self.keep, max_rows=self.max_rows)
            if self._failing:
                self._failing = False
                log.info("rejection log: writing again")
        except Exception as exc:  # noqa: BLE001 - never let the log take intake down
            if not self._failing:           # one line per change, not one a second
                log.warning("rejection log: could not write, refusals are dropped (%s: %s)",
                            type(exc).__name__, exc)
            self._failing = True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            await self._once()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="rejection-log")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._once()
