"""Bearer tokens: loaded from the config and an optional token file, compared in constant time.

Every configured token is compared (``hmac.compare_digest``) on every request, so the time taken does not
tell which token, or which prefix, was close. Token values never leave this module: the rest of the API
sees only the token's name (``"name:secret"``) or a fingerprint of it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass

from admin_api.config import AdminConfig

log = logging.getLogger("admin_api.auth")


@dataclass(frozen=True)
class Token:
    name: str
    secret: bytes
    readonly: bool


def _parse(entry: str, readonly: bool) -> Token | None:
    entry = entry.strip()
    if not entry:
        return None
    name, sep, secret = entry.partition(":")
    if not sep or not secret:
        secret, name = entry, "token-" + hashlib.sha256(entry.encode()).hexdigest()[:8]
    return Token(name=name, secret=secret.encode(), readonly=readonly)


def load_tokens(cfg: AdminConfig) -> list[Token]:
    """Tokens of the config plus the token file (one per line, ``#`` comments, trailing `` ro``)."""
    out = [t for t in (_parse(e, False) for e in cfg.tokens) if t]
    out += [t for t in (_parse(e, True) for e in cfg.readonly_tokens) if t]
    if cfg.token_file:
        try:
            with open(cfg.token_file, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except OSError as exc:
            raise ValueError(f"admin.token_file: cannot read {cfg.token_file}: {exc.strerror}") from None
        for line in lines:
            line = line.split("#", 1)[0].strip()
            ro = line.endswith(" ro")
            tok = _parse(line[:-3] if ro else line, ro)
            if tok:
                out.append(tok)
    short = [t.name for t in out if len(t.secret) < 16]
    if short:
        log.warning("admin tokens shorter than 16 characters: %s", ", ".join(short))
    return out


class Authenticator:
    """Checks bearer tokens. With a token file, the file is re-read when it changes (checked at most every
    ``recheck`` seconds), so tokens rotate without a restart; a file that became unreadable keeps the
    previous tokens (and logs why)."""

    def __init__(self, tokens: list[Token], cfg: AdminConfig | None = None, recheck: float = 5.0):
        self.tokens = tokens
        self.cfg = cfg
        self.recheck = recheck
        self._checked = time.monotonic()
        self._mtime = self._stat()

    def _stat(self) -> float | None:
        if self.cfg is None or not self.cfg.token_file:
            return None
        try:
            return os.stat(self.cfg.token_file).st_mtime
        except OSError:
            return None

    def _maybe_reload(self) -> None:
        if self.cfg is None or not self.cfg.token_file:
            return
        now = time.monotonic()
        if now - self._checked < self.recheck:
            return
        self._checked = now
        mtime = self._stat()
        if mtime is None or mtime == self._mtime:
            return
        try:
            self.tokens = load_tokens(self.cfg)
            self._mtime = mtime
            log.info("admin tokens reloaded from %s (%d tokens)", self.cfg.token_file, len(self.tokens))
        except ValueError as exc:
            log.error("admin tokens not reloaded, keeping the previous ones: %s", exc)

    def check(self, header: str | None) -> Token | None:
        """The token matching an ``Authorization: Bearer ...`` header, or None."""
        self._maybe_reload()
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        # aiohttp decodes header bytes as UTF-8 with surrogateescape: take the bytes back as they were sent
        # (invalid UTF-8 then simply matches no token: 401, never an encoding error)
        presented = value.strip().encode("utf-8", "surrogateescape")
        found = None
        for tok in self.tokens:          # no early exit: constant work whichever token matches
            if hmac.compare_digest(presented, tok.secret):
                found = tok
        return found
