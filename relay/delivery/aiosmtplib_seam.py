"""The one place relaybox changes aiosmtplib's behaviour from outside: the framing of DATA, made fast, and
PIPELINING (RFC 2920, ``PipeliningProtocol`` below: MAIL, RCPT and DATA in one write).

aiosmtplib frames every message body with two regular-expression passes
(``protocol.execute_data_command``): ``LINE_ENDINGS_REGEX.sub`` turns lone CR / LF into CRLF and
``PERIOD_REGEX`` (``(?m)^\\.``) doubles a dot at the start of each line. On a 100 KB body the two cost
~2-4 ms, more than everything else relaybox does with that message on the delivery side
(``bench/e2e_postfix.py`` at 100 KB). relaybox's bodies are CRLF-clean already (intake normalises bare CR
and LF or refuses them: ``relay/intake/data.py``), so ``install()`` replaces the two names inside the
``aiosmtplib.protocol`` module only with byte-string equivalents that run at C speed:

- ``normalize_message_line_endings``: three ``bytes.count`` passes prove the body has no lone CR or LF
  (then it is only given its final CRLF); any other body goes through aiosmtplib's own regex, unchanged.
- ``PERIOD_REGEX``: an object whose ``sub(b"..", body)`` doubles a dot at the start of the body and after
  every LF, which is exactly what ``(?m)^\\.`` matches in Python's ``re`` (``^`` in MULTILINE mode matches at
  the start and after each ``\\n``); ``bytes.replace`` instead of a regex scan.

A body intake found framed (``relay.framing``: CRLF only, no line starting with a dot, known from its own
checks) skips both: ``PipeliningProtocol.send_body(framed=True)`` writes it as it is, after the fields
delivery puts in front (``prefix``, checked), without joining them into one copy.

Both give results identical to aiosmtplib's for every input (``tests/test_aiosmtplib_seam.py`` compares
them on random and hostile bodies). If aiosmtplib changes these internals, delete this module and the
``install()`` call: nothing else depends on it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, cast

import aiosmtplib.protocol as _protocol
import aiosmtplib.smtp as _smtp
from aiosmtplib.errors import SMTPReadTimeoutError, SMTPServerDisconnected
from aiosmtplib.response import SMTPResponse

from relay.framing import is_framed

_original_normalize = _protocol.normalize_message_line_endings
_ORIGINAL_PERIOD_REGEX: re.Pattern[bytes] = _protocol.PERIOD_REGEX


def normalize_message_line_endings(message: bytes) -> bytes:
    crlf = message.count(b"\r\n")
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:   # a lone CR or LF somewhere
        return _original_normalize(message)
    return message if message.endswith(b"\r\n") else message + b"\r\n"


class _LineStartDots:
    """Stands in for ``re.compile(rb"(?m)^\\.")`` in the one call aiosmtplib makes: ``sub(b"..", data)``."""

    pattern = _ORIGINAL_PERIOD_REGEX.pattern

    def sub(self, repl: bytes, data: bytes, count: int = 0) -> bytes:
        if repl != b".." or count:                    # not the call this stands in for: the real regex
            return _ORIGINAL_PERIOD_REGEX.sub(repl, data, count)
        out = data.replace(b"\n.", b"\n..")
        return b"." + out if out.startswith(b".") else out

    def __getattr__(self, name: str) -> Any:          # anything else aiosmtplib might ask of the pattern
        return getattr(_ORIGINAL_PERIOD_REGEX, name)


# --- PIPELINING (RFC 2920) ---------------------------------------------------------------------------
# aiosmtplib sends one command and waits for its reply; data that arrives while no command is waiting is
# dropped (a guard against unsolicited server output). For a pipelined MAIL/RCPT/DATA group the replies
# to the later commands may arrive together with the first one or right after it, so during a group
# (``expecting`` > 0) this protocol keeps them in the buffer for the reads that follow. Outside a group
# it behaves exactly as aiosmtplib's.

class PipeliningProtocol(_protocol.SMTPProtocol):
    expecting = 0       # replies still owed to the commands of a pipelined group

    def data_received(self, data: bytes) -> None:
        waiter = self._response_waiter
        if self.expecting and waiter is not None and (not self._response_pending or waiter.done()):
            self._buffer.extend(data)       # a reply to a command already sent: the next read takes it
            return
        super().data_received(data)

    async def read_response(self, timeout: float | None = None) -> SMTPResponse:
        """aiosmtplib's ``read_response`` with a timer instead of ``asyncio.wait_for`` (which, on 3.11,
        wraps the wait in a future and a callback of its own: ~10 us, three to five times per message):
        the same reply, the same ``SMTPReadTimeoutError`` when none comes in ``timeout``."""
        waiter = self._response_waiter
        if waiter is None:
            raise SMTPServerDisconnected("Connection lost")
        self._response_pending = True
        timer = None
        if timeout is not None and not waiter.done():
            timer = self._loop.call_later(timeout, _time_out, waiter)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._response_pending = False
            # as aiosmtplib: no new waiter once disconnected
            self._response_waiter = None if self.transport is None else self._loop.create_future()

    async def next_reply(self, timeout: float | None) -> SMTPResponse:
        """The next reply of the group: from the buffer when it came with an earlier one."""
        buffered = self._read_response_from_buffer()
        if buffered is not None:
            return buffered
        return await self.read_response(timeout=timeout)

    async def pipeline(self, commands: list[bytes], timeout: float | None) -> list[SMTPResponse]:
        """Send ``commands`` (no CRLF) in one write and return their replies in order."""
        for cmd in commands:
            if _protocol.COMMAND_INJECTION_REGEX.search(cmd):
                raise ValueError("Command arg contains a prohibited control character")
        if self._command_lock is None:
            raise SMTPServerDisconnected("Server not connected")
        async with self._command_lock:
            self.expecting = len(commands)
            try:
                self._response_pending = True
                self.write(b"".join(c + b"\r\n" for c in commands))
                replies = []
                for _ in commands:
                    replies.append(await self.next_reply(timeout))
                    self.expecting -= 1
                return replies
            finally:
                self.expecting = 0

    async def send_body(self, body: bytes, timeout: float | None, *, framed: bool = False,
                        prefix: bytes = b"") -> SMTPResponse:
        """After a 354 to a pipelined DATA: ``prefix`` + ``body``, dot-stuffed and terminated, and the final
        reply. ``framed``: the caller knows the body needs neither line-end repair nor dot-stuffing (intake
        checked it, see ``relay.intake.data.check_and_clean``), so its bytes go out as they are: two scans
        and a copy less per message (~0.25 ms at 100 KB). ``prefix`` (the fields delivery adds, e.g.
        DKIM-Signature) is checked here; one that is not framed, or a body without its final CRLF, takes the
        general path."""
        if self._command_lock is None:
            raise SMTPServerDisconnected("Server not connected")
        parts = None
        if framed and body.endswith(b"\r\n") and is_framed(prefix):
            parts = [prefix, body, b".\r\n"] if prefix else [body, b".\r\n"]
        else:
            whole = prefix + body if prefix else body
            message = b""
            if whole:
                message = _protocol.PERIOD_REGEX.sub(b"..", _protocol.normalize_message_line_endings(whole))
        async with self._command_lock:
            self._response_pending = True
            if parts is None:
                self.write(message + b".\r\n")
            else:
                transport = self.transport
                if transport is None or transport.is_closing():
                    raise SMTPServerDisconnected("Connection lost")
                cast(asyncio.WriteTransport, transport).writelines(parts)   # the body is not copied again
            return await self.read_response(timeout=timeout)


def _time_out(waiter: asyncio.Future[SMTPResponse]) -> None:
    if not waiter.done():
        waiter.set_exception(SMTPReadTimeoutError("Timed out waiting for server response"))


_installed = False


def install() -> None:
    """Idempotent; called by ``relay.delivery.transport`` at import."""
    global _installed
    if _installed:
        return
    _protocol.normalize_message_line_endings = normalize_message_line_endings
    _protocol.PERIOD_REGEX = _LineStartDots()          # type: ignore[assignment]
    _smtp.SMTPProtocol = PipeliningProtocol             # type: ignore[misc]
    _installed = True
