"""Bounce records (sync replies, DSN/ARF reports) and the suppression list."""

from __future__ import annotations

import time
from typing import Callable

from store.sqlite import Database


class BounceStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock
