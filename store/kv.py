"""Small named values (cursors, flags) in the kv table."""

from __future__ import annotations

import time
from typing import Callable

from store.sqlite import Database


class KeyValue:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock
