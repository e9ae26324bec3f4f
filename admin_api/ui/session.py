"""Console sessions: a signed-in admin or read-only token becomes a random session id in an HttpOnly,
SameSite=Strict cookie (Secure under TLS). Sessions live in memory (a restart signs everyone out), expire
after ``IDLE`` seconds without a request and ``LIFETIME`` seconds after sign-in, and end as soon as the
token they were opened with is no longer configured (the token file rotates). Each session has its own
CSRF token, checked (constant time) on every POST. The token itself is never kept: only its name, whether
it is read-only and a SHA-256 fingerprint to notice its removal."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

COOKIE = "relaybox_session"
LOGIN_COOKIE = "relaybox_login"      # CSRF of the sign-in form (before there is a session)
IDLE = 3600.0
LIFETIME = 8 * 3600.0
MAX_SESSIONS = 1000


def fingerprint(secret: bytes) -> str:
    return hashlib.sha256(secret).hexdigest()


@dataclass
class Session:
    id: str
    name: str                 # the token's name: the actor of what the session does ("admin:<name>")
    readonly: bool
    token_fp: str
    csrf: str
    created: float
    seen: float
    flashes: list[tuple[str, str]] = field(default_factory=list)   # (kind, text) shown on the next page

    def flash(self, kind: str, text: str) -> None:
        self.flashes = [*self.flashes[-4:], (kind, text)]

    def take_flashes(self) -> list[tuple[str, str]]:
        out, self.flashes = self.flashes, []
        return out

    def csrf_ok(self, presented: Any) -> bool:
        return isinstance(presented, str) and hmac.compare_digest(presented.encode(), self.csrf.encode())


class Sessions:
    def __init__(self, clock=time.time) -> None:
        self._by_id: dict[str, Session] = {}
        self.clock = clock

    def open(self, token: Any) -> Session:
        now = self.clock()
        self._expire(now)
        while len(self._by_id) >= MAX_SESSIONS:          # the oldest go first
            self._by_id.pop(next(iter(self._by_id)))
        s = Session(secrets.token_urlsafe(32), token.name, bool(token.readonly), fingerprint(token.secret),
                    secrets.token_urlsafe(32), now, now)
        self._by_id[s.id] = s
        return s

    def get(self, sid: str | None, tokens: list[Any]) -> Session | None:
        """The live session of a cookie value, or None (unknown, expired, or its token was removed)."""
        if not sid:
            return None
        s = self._by_id.get(sid)
        if s is None:
            return None
        now = self.clock()
        alive = any(t.name == s.name and bool(t.readonly) == s.readonly
                    and hmac.compare_digest(fingerprint(t.secret), s.token_fp) for t in tokens)
        if not alive or now - s.seen > IDLE or now - s.created > LIFETIME:
            self._by_id.pop(sid, None)
            return None
        s.seen = now
        return s

    def close(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    def _expire(self, now: float) -> None:
        dead = [k for k, s in self._by_id.items() if now - s.seen > IDLE or now - s.created > LIFETIME]
        for k in dead:
            del self._by_id[k]
