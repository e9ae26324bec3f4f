"""placeholder"""
from __future__ import annotations

import time
from typing import Callable

from store.sqlite import Database


class MessageStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time, *, poison_limit: int = 3):
        self.db = db
        self.clock = clock
        self.poison_limit = poison_limit
