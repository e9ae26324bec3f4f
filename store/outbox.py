"""Event webhooks: endpoints' cursors over the events table and the deliveries to each endpoint."""

from __future__ import annotations

import time
from typing import Callable

from store.sqlite import Database


class WebhookOutbox:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock
