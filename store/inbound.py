"""The inbound poller's tables: channels, filters, campaigns, checkpoints, inbound messages and the quarantine."""

from __future__ import annotations

import time
from typing import Callable

from store.sqlite import Database


class InboundStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock
