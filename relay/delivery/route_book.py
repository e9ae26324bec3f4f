"""The routes of the store as the delivery engine uses them, and how delivery through each goes.

    book = RouteBook(store)                      # store.Store, opened
    await book.seed(config.routes)               # [[routes]] upserted (start, SIGHUP); the Router rebuilt
    book.attach(scheduler)                       # the scheduler's Delivery routes by book.router and
                                                 # reports its results to book.status
    await book.start()                           # every second: the store's routes version (a change by
                                                 # the CLI in another process is live within a second)
    await book.refresh(force=True)               # the admin API after a change: live at once
    views = await book.views()                   # settings (no password) + status, for the API and CLI
    await book.stop()                            # the status not yet written is written

Status per route (``RouteStatus``, in memory; written to ``store.routes`` every ``flush_every`` seconds):
``state`` (``up`` after a transaction that delivered, or one whose session worked and only recipients or
content were refused; ``failing`` after one that could not connect, secure, authenticate or get MAIL FROM
accepted), ``last_success_at``, ``last_error`` (the server's words), ``in_flight`` transactions, and result
counters ``delivered`` / ``deferred`` / ``failed`` (bounced or failed). Metrics:
``relaybox_route_up{route}`` (1 up, 0 failing) and ``relaybox_route_results_total{route,result}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge

from relay.config import RouteConfig
from relay.delivery.routes import Router, route_from_settings, route_settings
from relay.errors import DeliveryError
from store.records import Recipient, RecipientResult
from store.routes import RouteDelta, StoredRoute

if TYPE_CHECKING:
    from relay.delivery.attempt import Outcome
    from store import Store

log = logging.getLogger("relay.delivery.route_book")

ROUTE_UP = Gauge("relaybox_route_up", "1 when the route's last transaction worked, 0 when it failed "
                 "(connect, TLS, AUTH or MAIL FROM)", ["route"],
                 multiprocess_mode="livemin")     # worker processes: 0 if any worker saw it failing
ROUTE_RESULTS = PromCounter("relaybox_route_results_total", "Recipient results through a smarthost route",
                            ["route", "result"])
FAILING_STAGES = (None, "dns", "connect", "greeting", "ehlo", "starttls", "auth", "mail")


@dataclass
class _Pending:
    """What one route saw since its status was last written."""

    counts: Counter[str] = field(default_factory=Counter)
    state: str | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None

    def delta(self, name: str) -> RouteDelta:
        return RouteDelta(name, delivered=self.counts["delivered"], deferred=self.counts["deferred"],
                          failed=self.counts["failed"], state=self.state,
                          last_success_at=self.last_success_at, last_error=self.last_error,
                          last_error_at=self.last_error_at)


class RouteStatus:
    """Results per route, from the scheduler's hook (``begin`` / ``end`` around a transaction, ``record``
    with its results). Cheap and synchronous: no I/O on the delivery path."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.in_flight: Counter[str] = Counter()
        self._pending: dict[str, _Pending] = {}
        # the metric children per route (labels() is a locked dict lookup, ~1 us, twice per transaction)
        # and the route_up value last published: the gauge is written when it changes, not every time
        self._results: dict[tuple[str, str], Any] = {}
        self._up: dict[str, tuple[Any, int]] = {}

    def begin(self, route: RouteConfig | None) -> None:
        if route is not None:
            self.in_flight[route.name] += 1

    def end(self, route: RouteConfig | None) -> None:
        if route is not None and self.in_flight[route.name] > 0:
            self.in_flight[route.name] -= 1

    def record(self, route: RouteConfig | None, outcome: "Outcome",
               pairs: Sequence[tuple[Recipient, RecipientResult]]) -> None:
        if route is None:
            return
        p = self._pending.setdefault(route.name, _Pending())
        now = self.clock()
        for _, res in pairs:
            result = "failed" if res.status in ("bounced", "failed") else res.status
            p.counts[result] += 1
            child = self._results.get((route.name, result))
            if child is None:
                child = self._results[(route.name, result)] = ROUTE_RESULTS.labels(route.name, result)
            child.inc()
        errors = [e for e in outcome.results.values() if isinstance(e, DeliveryError)]
        if any(res.status == "delivered" for _, res in pairs):
            p.state, p.last_success_at = "up", now
        elif errors and outcome.attempt is not None:
            p.state = "failing" if errors[0].stage in FAILING_STAGES else "up"
        if errors and outcome.attempt is not None:
            p.last_error, p.last_error_at = f"{errors[0].code} {errors[0].enhanced} {errors[0].text}", now
        if p.state is not None:
            self._publish_up(route.name, 1 if p.state == "up" else 0)

    def _publish_up(self, name: str, value: int) -> None:
        known = self._up.get(name)
        if known is not None and known[1] == value:
            return
        child = known[0] if known is not None else ROUTE_UP.labels(name)
        child.set(value)
        self._up[name] = (child, value)

    def take(self) -> list[RouteDelta]:
        """The pending deltas, handed over for writing (``give_back`` if the write failed)."""
        pending, self._pending = self._pending, {}
        return [p.delta(name) for name, p in pending.items()]

    def give_back(self, deltas: Iterable[RouteDelta]) -> None:
        for d in deltas:
            p = self._pending.setdefault(d.name, _Pending())
            p.counts.update({"delivered": d.delivered, "deferred": d.deferred, "failed": d.failed})
            p.state = p.state or d.state
            p.last_success_at = max(filter(None, (p.last_success_at, d.last_success_at)), default=None)
            if d.last_error_at and (p.last_error_at or 0) < d.last_error_at:
                p.last_error, p.last_error_at = d.last_error, d.last_error_at

    def view(self, stored: StoredRoute) -> dict[str, Any]:
        """The route's status: stored figures plus what was not written yet."""
        p = self._pending.get(stored.name, _Pending())
        last_success = max(filter(None, (stored.last_success_at, p.last_success_at)), default=None)
        err, err_at = stored.last_error, stored.last_error_at
        if p.last_error_at and (err_at or 0) < p.last_error_at:
            err, err_at = p.last_error, p.last_error_at
        return {"state": p.state or stored.state or "unknown", "last_success_at": last_success,
                "last_error": err, "last_error_at": err_at, "in_flight": self.in_flight[stored.name],
                "delivered": stored.delivered + p.counts["delivered"],
                "deferred": stored.deferred + p.counts["deferred"],
                "failed": stored.failed + p.counts["failed"]}

    def forget(self, names: Iterable[str]) -> None:
        for name in names:
            self._pending.pop(name, None)
            self.in_flight.pop(name, None)
            self._up.pop(name, None)
            for result in ("delivered", "deferred", "failed"):
                self._results.pop((name, result), None)
                try:
                    ROUTE_RESULTS.remove(name, result)
                except KeyError:
                    pass
            try:
                ROUTE_UP.remove(name)
            except KeyError:
                pass


def stored_routes(routes: Iterable[RouteConfig], source: str = "config") -> list[StoredRoute]:
    return [StoredRoute(r.name, route_settings(r), source=source) for r in routes]


def usable(stored: Sequence[StoredRoute]) -> list[RouteConfig]:
    """The stored routes as RouteConfigs; one that no longer validates is left out, with an error."""
    out = []
    for s in stored:
        try:
            out.append(route_from_settings(s.settings))
        except (TypeError, ValueError) as exc:
            log.error("route %s in the store is not usable, skipped: %s", s.name, exc)
    return out


class RouteBook:
    def __init__(self, store: "Store", *, interval: float = 1.0, flush_every: float = 2.0,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.interval = interval
        self.flush_every = flush_every
        self.status = RouteStatus(clock)
        self.router = Router([])
        self.version: int | None = None
        self._scheduler: Any = None
        self._task: asyncio.Task[None] | None = None

    # ---- wiring ----------------------------------------------------------------------------------
    def attach(self, scheduler: Any) -> None:
        """The scheduler's Delivery routes by this book, and its results come here."""
        self._scheduler = scheduler
        scheduler.route_status = self.status
        self.apply()

    def apply(self) -> None:
        """Put this book's Router into the scheduler's Delivery (again: after its SIGHUP reconfigure)."""
        if self._scheduler is not None:
            self._scheduler.delivery.router = self.router

    async def seed(self, config_routes: Sequence[RouteConfig]) -> list[str]:
        """The config's routes upserted into the store (start and SIGHUP); config routes no longer in the
        config removed. Raises store.routes.DefaultTaken when the config's default meets an API one."""
        self.apply()               # before the first await: a SIGHUP's reconfigure never shows alone
        gone = await self.store.routes.seed(stored_routes(config_routes))
        if gone:
            log.info("routes removed from the config, removed from the store: %s", ", ".join(gone))
        await self.refresh(force=True)
        return gone

    async def refresh(self, force: bool = False) -> bool:
        """Rebuild the Router when the store's routes changed (or ``force``); True when rebuilt."""
        version = await self.store.routes.version()
        if not force and version == self.version:
            return False
        routes = usable(await self.store.routes.list())
        old = dict(self.router.by_name)
        self.router = Router(routes)              # the store allows one default, names are unique
        self.version = version
        self.apply()
        self.status.forget(set(old) - set(self.router.by_name))
        pool = getattr(getattr(self._scheduler, "delivery", None), "pool", None)
        for name, before in old.items():          # sessions of a changed route never carry on
            if pool is not None and self.router.by_name.get(name) != before:
                pool.drop(f"route:{name}")
        return True

    # ---- the loop --------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.version is None:
            await self.refresh(force=True)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="route-book")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self.flush()
        except Exception as exc:  # noqa: BLE001 - stopping: the counters since the last write are lost
            log.warning("route status not written at stop: %s", exc)

    async def _run(self) -> None:
        last_flush = time.monotonic()
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
                if time.monotonic() - last_flush >= self.flush_every:
                    last_flush = time.monotonic()
                    await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the store is down: keep the routes we have
                log.warning("routes not refreshed: %s", exc)

    async def flush(self) -> None:
        deltas = self.status.take()
        try:
            await self.store.routes.record_status(deltas)
        except Exception:
            self.status.give_back(deltas)
            raise

    # ---- views -----------------------------------------------------------------------------------
    async def views(self) -> list[tuple[StoredRoute, dict[str, Any]]]:
        return [(s, self.status.view(s)) for s in await self.store.routes.list()]
