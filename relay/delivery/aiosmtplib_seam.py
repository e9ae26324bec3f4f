"""The one place relaybox changes aiosmtplib's behaviour from outside: the framing of DATA, made fast.

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

Both give results identical to aiosmtplib's for every input (``tests/test_aiosmtplib_seam.py`` compares
them on random and hostile bodies). If aiosmtplib changes these internals, delete this module and the
``install()`` call: nothing else depends on it.
"""

from __future__ import annotations

import re
from typing import Any

import aiosmtplib.protocol as _protocol

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


_installed = False


def install() -> None:
    """Idempotent; called by ``relay.delivery.transport`` at import."""
    global _installed
    if _installed:
        return
    _protocol.normalize_message_line_endings = normalize_message_line_endings
    _protocol.PERIOD_REGEX = _LineStartDots()          # type: ignore[assignment]
    _installed = True
