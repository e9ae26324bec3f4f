"""Who may relay: the allowlist of CIDRs and the SMTP AUTH users, both kept in the store (``store.access``).

The SMTP hooks must not do I/O, so the policy keeps an in-memory snapshot and refreshes it from the
store (after an admin change, and every few seconds so offline CLI changes apply without a restart).
Passwords are stored as scrypt hashes; a successful verification is remembered (keyed by a process-local
HMAC of user and password, never the password itself) so AUTH does not cost 50 ms every session.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import ipaddress
import logging
import os
from typing import Any, Awaitable, Callable, Iterable

from relay.tasks import cancel_and_wait
from store.access import AccessStore, parse_cidr

__all__ = ["Policy", "hash_password", "parse_cidr", "verify_password"]

log = logging.getLogger("relay.intake.policy")

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt${n}${r}${p}${salt}${dk}".format(
        salt=base64.b64encode(salt).decode(), dk=base64.b64encode(dk).decode(), **_SCRYPT)


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, dk = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), dklen=32,
                             n=int(n), r=int(r), p=int(p))
        return hmac.compare_digest(got, base64.b64decode(dk))
    except (ValueError, TypeError):
        return False


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """A hash with the parameters of real ones, made once: an unknown user costs the same one scrypt run."""
    return hash_password(base64.b64encode(os.urandom(12)).decode())


def _verify_or_dummy(password: str, stored: str | None) -> bool:
    if stored is None:
        verify_password(password, _dummy_hash())
        return False
    return verify_password(password, stored)


Runner = Callable[..., Awaitable[Any]]


class Policy:
    """In-memory snapshot used by the SMTP hooks."""

    def __init__(self, access: AccessStore | None = None, refresh_every: float = 5.0):
        self.access = access
        self.refresh_every = refresh_every
        self.networks: list = []
        self._allowed: dict[str, bool] = {}      # ip_allowed's answers for this snapshot, by address text
        self.users: dict[str, str] = {}
        self._verified: set[bytes] = set()
        self._key = os.urandom(32)
        self._task: asyncio.Task | None = None

    def set_snapshot(self, cidrs: Iterable[str], users: dict[str, str]) -> None:
        self.networks = [parse_cidr(c) for c in cidrs]
        self._allowed = {}
        if users != self.users:
            self._verified.clear()
        self.users = dict(users)

    async def refresh(self) -> None:
        if self.access is None:
            return
        snap = await self.access.snapshot()
        self.set_snapshot(snap.cidrs, dict(snap.users))

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_every)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - keep the last good snapshot
                log.exception("allowlist refresh failed; keeping the previous snapshot")

    def ip_allowed(self, ip: str) -> bool:
        """Whether ``ip`` is in the allow-list; answers are kept per snapshot (parsing an address and
        testing every network cost ~10 us, asked at connect and at each RCPT), at most 4,096 of them."""
        known = self._allowed.get(ip)
        if known is None:
            known = self._ip_allowed(ip)
            if len(self._allowed) >= 4096:
                self._allowed = {}
            self._allowed[ip] = known
        return known

    def _ip_allowed(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(addr.version == n.version and addr in n for n in self.networks)

    def _token(self, username: str, password: str, stored: str) -> bytes:
        return hmac.new(self._key, f"{username}\0{password}\0{stored}".encode("utf-8", "surrogatepass"),
                        "sha256").digest()

    def check_login(self, username: str, password: str) -> bool:
        """Synchronous check (CLI, tests). The SMTP intake uses ``verify_login`` (off the event loop)."""
        stored = self.users.get(username)
        if stored is not None and self._token(username, password, stored) in self._verified:
            return True
        ok = _verify_or_dummy(password, stored)     # one scrypt run, known user or not
        if ok and stored is not None:
            self._verified.add(self._token(username, password, stored))
        return ok

    async def verify_login(self, username: str, password: str, run: Runner) -> bool:
        """``check_login`` with the hash computed by ``run(fn, *args)`` (the intake's bounded thread pool).
        A verification already made in this process (same user, password and hash) is answered at once."""
        stored = self.users.get(username)
        if stored is not None and self._token(username, password, stored) in self._verified:
            return True
        ok = bool(await run(_verify_or_dummy, password, stored))
        if ok and stored is not None:
            self._verified.add(self._token(username, password, stored))
        return ok
