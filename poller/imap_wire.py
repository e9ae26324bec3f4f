"""aioimaplib's response reader, made linear: the one seam where the poller replaces library code.

aioimaplib 2.0 reads a server response recursively, one call per line, each call taking
``data.partition(CRLF)`` of the rest of the chunk (a copy of everything after the line), and formats every
received chunk for a debug log even when that log is off. A ``FetchCommand`` rescans all the lines it
holds after each new one. With a batch of small messages that is quadratic in the batch: on a 10,000
message sync it cost more CPU than everything else in the poller together.

``Protocol`` reads the same grammar with an offset into the chunk (no copies, no recursion: also no stack
overflow on a chunk of a few thousand short lines), and ``FetchCommand`` counts parentheses as lines arrive.
What they hand to the commands (lines, literals, tags) is what aioimaplib's own reader hands them:
everything else (commands, IDLE, states) stays aioimaplib's.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import aioimaplib
from aioimaplib.aioimaplib import Command, IncompleteRead, literal_data_re

log = logging.getLogger("aioimaplib.aioimaplib")

CRLF = b"\r\n"


class Protocol(aioimaplib.IMAP4ClientProtocol):
    incomplete_line: bytes
    current_command: Any

    def data_received(self, d: bytes) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Received : %s", d)
        data = self.incomplete_line + d if self.incomplete_line else d
        try:
            self._handle_responses(data, self._handle_line, self.current_command)
            self.incomplete_line = b""
            self.current_command = None
        except IncompleteRead as incomplete_read:
            self.current_command = incomplete_read.cmd
            self.incomplete_line = incomplete_read.data

    def _handle_responses(self, data: bytes, line_handler: Callable[[bytes, Any], Any],
                          current_cmd: Any = None) -> None:
        """aioimaplib's ``_handle_responses`` as a loop over an offset (same steps, same order)."""
        pos, end = 0, len(data)
        while True:
            if pos >= end:
                if self.pending_sync_command is not None:
                    self.pending_sync_command.flush()
                if current_cmd is not None and current_cmd.wait_data():
                    raise IncompleteRead(current_cmd)
                return
            if current_cmd is not None and current_cmd.wait_literal_data():
                missing = current_cmd._expected_size - len(current_cmd._resp_literal_data)
                current_cmd.append_literal_data(data[pos:pos + missing])
                pos = min(end, pos + missing)
                if current_cmd.wait_literal_data():
                    raise IncompleteRead(current_cmd)
            eol = data.find(CRLF, pos)
            if eol < 0:
                raise IncompleteRead(current_cmd, data[pos:])
            line = data[pos:eol]
            pos = eol + 2
            cmd = line_handler(line, current_cmd)
            begin_literal = literal_data_re.match(line)
            if begin_literal:
                if cmd is None:
                    cmd = Command("NIL", "unused")
                cmd.begin_literal_data(int(begin_literal.group("size")))
                current_cmd = cmd
            elif cmd is not None and cmd.wait_data():
                current_cmd = cmd
            else:
                current_cmd = None


class FetchCommand(aioimaplib.FetchCommand):
    """``wait_data`` as aioimaplib defines it (the parentheses of the lines since the last ``n FETCH (``
    line balance; literals do not count), kept up to date line by line instead of recomputed."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self._scanned = 0
        self._depth = 0

    def wait_data(self) -> bool:
        lines = self._resp_lines
        for line in lines[self._scanned:]:
            if isinstance(line, bytes):        # a literal is a bytearray: not counted
                if self.FETCH_MESSAGE_DATA_RE.match(line):
                    self._depth = 0
                self._depth += line.count(b"(") - line.count(b")")
        self._scanned = len(lines)
        return self._depth != 0
