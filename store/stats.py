"""Figures for metrics and health computed from the store: gauges at scrape time and tails of events/attempts by id."""

from __future__ import annotations

import time
from typing import Callable

from store.sqlite import Database


class Stats:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock
