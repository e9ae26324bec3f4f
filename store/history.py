"""Read side of the spool for admins: message lists with filters and cursors, one message with its recipients, events and attempts, queue summaries (qshape)."""

from __future__ import annotations

import time
from typing import Callable

from store.sqlite import Database


class History:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock
