"""Who may relay: the allowlist (CIDR + note + source) and the SMTP AUTH users (scrypt hashes only)."""

from __future__ import annotations

import time
from typing import Callable

from store.sqlite import Database


class AccessStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock
