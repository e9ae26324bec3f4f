"""The delivery scheduler: claims due recipients, groups them, delivers with bounded concurrency, records.

    scheduler = Scheduler(spool, relay_config)        # relay_config: relay.config.RelayConfig
    await scheduler.start()                           # background loop in the running event loop
    scheduler.notify()                                # optional: something was enqueued, look now
    await scheduler.stop(timeout=30)                  # finish in-flight transactions, release the rest
    stats = await scheduler.run_burst()               # tests: deliver until nothing is due, then return

Each round claims due recipients with a lease (``Spool.claim``) and, per message, checks what needs no
network first: expired (``delivery.max_lifetime`` since acceptance or send-at -> ``failed``/``expired``),
suppressed (the suppression list, read with the claim round -> ``failed``/``suppressed``), invalid
addresses. The rest is
grouped by destination (``route:<name>`` or ``mx:<domain>``): one SMTP transaction per message and
destination, under a global connection limit and a per-destination one (``delivery.per_destination``,
overrides in ``delivery.per_domain``). Results go back through ``Spool.complete`` with the next attempt time
from ``relay.spool.retry``; bounced/failed recipients trigger one DSN to the envelope sender
(``relay.notices.reports``).

A slow or dead destination cannot starve the others: claims stop at a bound of recipients in flight, a
destination holds at most ``10 x`` its connection limit (at least half the in-flight bound) of them; the
excess goes straight back to the queue without an attempt, and after a connection failure a destination
is "down" for 30 s, during which its
recipients are deferred at once instead of waiting for timeouts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import socket
import time
from collections import Counter
from dataclasses import replace
from typing import Any, Callable, Coroutine

from relay.bounces.record import delivery_failure, rules_of
from relay.config import RelayConfig, RouteConfig
from relay.delivery import metrics
from relay.delivery.attempt import Delivery, Outcome
from relay.delivery.destinations import Destinations
from relay.delivery.route_book import RouteStatus
from relay.envelope import address_error
from relay.errors import ConnectError, DeliveryError
from relay.maillog import mail_line
from relay.notices.reports import Batch, Reports
from relay.spool.retry import RetryPolicy, expires_at, next_attempt
from relay.spool.spool import AttemptLog, Claim, Message, Recipient, RecipientResult, Spool
from store import StorageError
from store.bounces import DeliveryFailure

log = logging.getLogger("relay.delivery.scheduler")

BACKLOG_FACTOR = 10           # recipients held per destination = factor x its connection limit
SATURATED_RECHECK = 0.25      # seconds: how long claims pause while a destination is at its backlog cap
SATURATED_RECHECK_MAX = 2.0   # ... at most, after rechecks that found only more work for full destinations
PROBE_MIN = 8                 # recipients claimed at least by a round that ends such a pause early
CLAIM_GATHER = 0.02           # seconds between claim rounds while work trickles in
PREFETCH_MAX_BODY = 256_000   # bodies up to this size are read with the claim round, not one by one
PREFETCH_BYTES = 32_000_000   # at most this much body data per round
RECORD_RETRIES = (0.5, 1.0, 2.0, 4.0, 8.0)   # seconds between tries to record a transaction's results


@functools.lru_cache(maxsize=8)
def _seconds(kind: str) -> Any:
    """The transaction-duration histogram of a destination kind (mx, route: a handful), looked up once."""
    return metrics.TRANSACTION_SECONDS.labels(kind)


class Scheduler:
    def __init__(self, spool: Spool, config: RelayConfig, *, delivery: Delivery | None = None,
                 clock: Callable[[], float] = time.time, rng: Callable[[], float] = random.random,
                 owner: str | None = None):
        self.spool = spool
        self.config = config
        self.delivery = delivery or Delivery(config, refresh_tokens=spool.store.kv)   # rotated OAuth2 tokens
        self.clock = clock
        self.rng = rng
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self._apply(config)
        self.reports = Reports(spool, config.delivery, self.delivery.helo, clock, self.notify)
        self._dest_sems: dict[str, asyncio.Semaphore] = {}
        self._backlog: Counter[str] = Counter()
        self.destinations = Destinations(float(config.delivery.retry_cap), clock)
        self._unrecorded: list[tuple[Message, list[tuple[Recipient, RecipientResult]], AttemptLog | None,
                                     Batch]] = []
        self._storage_error: str | None = None
        self._in_flight: set[int] = set()
        self._down = -1                     # destinations parked, as last written to the gauge
        self._unfinished: set[int] = set()
        self._saturated: set[str] = set()
        self._saturated_at = 0.0
        self._recheck = SATURATED_RECHECK   # the pause between probes (_claim_limit)
        self._probe = False                 # this round's claim is a probe past full destinations
        self._full = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._bodies: dict[str, asyncio.Future[bytes | None]] = {}
        self._msg_refs: Counter[str] = Counter()
        self._framed: set[str] = set()   # handed-off bodies intake found framed (Delivery.deliver)
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._queue_empty = False    # the last claim round found nothing due: new mail may skip the queue
        self.stats: Counter[str] = Counter()
        self.route_status = RouteStatus(clock)   # results per route (relay.delivery.route_book attaches)

    def _apply(self, config: RelayConfig) -> None:
        d = config.delivery
        self.policy = RetryPolicy(d.retry_first, d.retry_cap, d.retry_jitter, d.max_lifetime)
        self._global = asyncio.Semaphore(d.concurrency)
        self.max_in_flight = max(d.claim_batch * 4, d.concurrency * 4)
        self.rules = rules_of(config.bounces)

    async def reload(self, config: RelayConfig) -> None:
        """SIGHUP: new routes, DKIM keys, resolver and retry settings (connection limits need a restart)."""
        self.delivery.reconfigure(config)
        self.config = config
        self.rules = rules_of(config.bounces)
        self.reports.config = config.delivery
        self.reports.reporting_mta = self.delivery.helo
        self.policy = RetryPolicy(config.delivery.retry_first, config.delivery.retry_cap,
                                  config.delivery.retry_jitter, config.delivery.max_lifetime)

    # ---- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._stopping = False
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="relay-scheduler")

    def notify(self) -> None:
        self._wake.set()

    async def stop(self, timeout: float = 30.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        if self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        unfinished = self._unfinished | self._in_flight
        if unfinished:        # cancelled mid-delivery: back to the queue (at-least-once)
            metrics.REQUEUED.inc(len(unfinished))
            await self._release(sorted(unfinished), self.clock())
            self._in_flight.clear()
            self._unfinished.clear()
        await self.delivery.close()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._flush_unrecorded()
                got = await self._round()
                self._storage_state(None)
            except StorageError as exc:     # a full disk, a database that went away: one line per change
                self._storage_state(exc)
                got = 0
            except Exception:  # noqa: BLE001 - a bug: log, wait, go on
                log.exception("scheduler round failed")
                got = 0
            await self.delivery.pool.prune()
            if got and len(self._in_flight) < self.max_in_flight:
                # more may be due: look again soon, but let a few arrivals gather so that claims (one write
                # transaction each) stay batched under a steady stream
                await asyncio.sleep(0 if got >= self.config.delivery.claim_batch else CLAIM_GATHER)
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.delivery.poll_interval)
            except asyncio.TimeoutError:
                pass

    async def run_burst(self, max_seconds: float = 60.0) -> dict[str, int]:
        """Deliver until nothing is due and nothing is in flight (arq's burst mode), then return stats."""
        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline:
            try:
                await self._flush_unrecorded()
            except StorageError as exc:
                self._storage_state(exc)
                break
            got = await self._round()
            if self._tasks:
                await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED,
                                   timeout=max(0.0, deadline - time.monotonic()))
            elif not got:
                break
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        return dict(self.stats)

    # ---- one round -------------------------------------------------------------------------------
    def _claim_limit(self, room: int) -> int:
        """How many recipients this round claims (0: none). After a round had to hand recipients back (a
        destination at its backlog cap: ``_saturated``), a claim takes at most what the fullest of those
        destinations has room for, and only once they drained to half their cap, or after a pause (so
        other destinations behind them are still served): a probe of at least PROBE_MIN, at most a quarter
        batch. When most of a probe went back again (the queue holds little but mail for the full
        destinations) the pause doubles, up to SATURATED_RECHECK_MAX. Each hand-back is two writes of the
        queue for nothing: claiming whole batches every 0.25 s under a sustained backlog on PostgreSQL
        handed back 47,769 recipients for 10,440 messages and cut delivery from ~330 to ~50 msg/s."""
        batch = min(self.config.delivery.claim_batch, room)
        if not self._saturated:
            return batch
        free = min(self._backlog_cap(k) - self._backlog[k] for k in self._saturated)
        if all(self._backlog[k] <= self._backlog_cap(k) // 2 for k in self._saturated):
            self._recheck = SATURATED_RECHECK
            return min(batch, free)
        if time.monotonic() - self._saturated_at >= self._recheck:
            self._saturated_at = time.monotonic()        # the next probe after another pause
            self._probe = True
            return min(batch, max(PROBE_MIN, min(free, self.config.delivery.claim_batch // 4)))
        return 0

    async def _round(self) -> int:
        room = self.max_in_flight - len(self._in_flight)
        if room <= 0:
            self._full = True            # _transaction wakes the loop once half the room is free again
            return 0
        limit = self._claim_limit(room)
        if not limit:
            return 0
        d = self.config.delivery
        now = self.clock()
        claims = await self.spool.claim(self.owner, limit=limit, lease=d.lease, now=now)
        self._queue_empty = not claims
        if not claims:
            self._saturated.clear()
            self._probe = False
            return 0
        suppressed, bodies = await self._prefetch(claims, now)
        n = 0
        handed_back = self.stats["requeued_backlog"]
        for claim in claims:
            n += self._dispatch(claim, now, suppressed, bodies)
        self._after_claim(sum(len(c.recipients) for c in claims), limit,
                          self.stats["requeued_backlog"] - handed_back)
        metrics.IN_FLIGHT.set(len(self._in_flight))
        return n

    def _after_claim(self, claimed: int, limit: int, handed_back: int) -> None:
        """A probe that went back mostly doubles the pause; one that found other work resets it. Less due
        than asked for: the backlog is in memory now, the queue holds no pressure, claims are whole again."""
        if self._probe:
            self._probe = False
            self._recheck = (min(self._recheck * 2, SATURATED_RECHECK_MAX) if 2 * handed_back > claimed
                             else SATURATED_RECHECK)
        if claimed < limit and not handed_back:
            self._saturated.clear()
            self._recheck = SATURATED_RECHECK

    # ---- new mail from intake (Spool.handoff) ------------------------------------------------------
    def handoff_lease(self) -> tuple[str, float] | None:
        """(owner, lease) while this scheduler takes new mail straight from intake: it is running, has
        room, and its last claim round found the queue empty (older mail is never overtaken by newer mail
        for long: once a round claims something, new mail waits in the queue again until it drains)."""
        if (self._stopping or self._loop_task is None or not self._queue_empty or self._full
                or self._saturated or self._unrecorded or self._storage_error is not None
                or len(self._in_flight) >= self.max_in_flight // 2):
            return None
        return self.owner, float(self.config.delivery.lease)

    def take(self, claim: Claim, body: bytes, suppressed: set[str], framed: bool = False) -> None:
        """A message intake stored leased to us (``handoff_lease``): into delivery as a claim would.
        ``framed``: intake found the body needing no line-end repair or dot-stuffing."""
        if self._stopping:       # stop() began while it was being stored: it hands these back
            self._unfinished.update(r.id for r in claim.recipients)
            return
        self._dispatch(claim, self.clock(), suppressed, {claim.message.id: body})
        if framed and claim.message.id in self._msg_refs:     # forgotten with the body (_finish)
            self._framed.add(claim.message.id)
        metrics.IN_FLIGHT.set(len(self._in_flight))

    async def _prefetch(self, claims: list[Claim], now: float) -> tuple[set[str], dict[str, bytes]]:
        """One reader round trip per round: suppressed addresses and the bodies of small messages."""
        addrs = {r.address for c in claims for r in c.recipients}
        small, budget = [], PREFETCH_BYTES
        for c in claims:
            size = c.message.size
            if size <= PREFETCH_MAX_BODY and size <= budget and c.message.id not in self._bodies:
                small.append(c.message.id)
                budget -= size
        return await self.spool.prefetch(addrs, small, now)

    def _dispatch(self, claim: Claim, now: float, suppressed: set[str], bodies: dict[str, bytes]) -> int:
        """Start the work for one claimed message; returns how many recipients were taken on."""
        msg = claim.message
        rcpts = [r for r in claim.recipients if r.id not in self._in_flight]
        if not rcpts:
            return 0
        self._in_flight.update(r.id for r in rcpts)
        if msg.id in bodies and msg.id not in self._bodies:
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(bodies[msg.id])
            self._bodies[msg.id] = fut
        final, live = self._precheck(msg, rcpts, now, suppressed)
        route = self.delivery.route_for(msg) if live else None
        groups: dict[str, list[Recipient]] = {}
        for r in live:
            groups.setdefault(self.delivery.destination_key(route, r), []).append(r)
        busy = {k for k in groups if self._backlog[k] >= self._backlog_cap(k)}
        report = self.reports.batch(msg, len(groups) - len(busy) + (1 if final else 0))
        if final:
            self._spawn(self._record(msg, final, None, report))
        parked, probes = self._hold_parked(groups, busy, now, report)
        for key, group in groups.items():
            if key in busy:
                self.stats["requeued_backlog"] += len(group)
                metrics.REQUEUED.inc(len(group))
                self._saturated.add(key)
                self._saturated_at = time.monotonic()
                self._spawn(self._requeue(group, now))
                continue
            self._backlog[key] += 1
            self._msg_refs[msg.id] += 1
            self._spawn(self._transaction(msg, group, key, route, report, key in probes))
        return len(rcpts) - parked - sum(len(groups[k]) for k in busy)

    def _precheck(self, msg: Message, rcpts: list[Recipient], now: float,
                  suppressed: set[str]) -> tuple[list[tuple[Recipient, RecipientResult]], list[Recipient]]:
        """What needs no network: expired, suppressed, invalid recipients end here; the rest go on."""
        final: list[tuple[Recipient, RecipientResult]] = []
        deadline = expires_at(max(msg.created_at, msg.send_at or 0), self.policy)
        live = []
        for r in rcpts:
            if now >= deadline:
                final.append((r, self._expired(r, None)))
            elif r.address.lower() in suppressed:
                final.append((r, RecipientResult(r.id, "failed", None, "5.7.1",
                                                 "recipient is on the suppression list",
                                                 reason="suppressed")))
            elif why := address_error(r.address):     # never to DNS or the wire (CR/LF, lists)
                final.append((r, RecipientResult(r.id, "failed", 553, "5.1.3", f"invalid address: {why}",
                                                 reason="invalid")))
            else:
                live.append(r)
        return final, live

    def _hold_parked(self, groups: dict[str, list[Recipient]], busy: set[str], now: float,
                     report: Batch) -> tuple[int, set[str]]:
        """Groups for parked destinations go back until the next probe (removed from ``groups``); returns
        how many recipients that was and which groups are probes."""
        parked = 0
        probes: set[str] = set()
        for key, group in list(groups.items()):
            verdict = "busy" if key in busy else self.destinations.admit(key, now)
            if verdict == "probe":
                probes.add(key)
            if verdict == "wait":
                self.destinations.handed_back(key, len(group))
                self.stats["parked"] += len(group)
                metrics.PARKED.inc(len(group))
                self._spawn(self._requeue(group, self.destinations.next_probe(key, now),
                                          self.destinations.why(key)))
                del groups[key]
                report.parts -= 1
                parked += len(group)
        return parked, probes

    def _backlog_cap(self, key: str) -> int:
        """Transactions one destination may hold (running or waiting for a connection slot)."""
        return max(self.delivery.concurrency_for(key) * BACKLOG_FACTOR, self.max_in_flight // 2)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- a transaction ---------------------------------------------------------------------------
    async def _transaction(self, msg: Message, rcpts: list[Recipient], key: str, route: RouteConfig | None,
                           report: Batch, probe: bool = False) -> None:
        ids = [r.id for r in rcpts]
        try:
            await self._deliver_and_record(msg, rcpts, key, route, report, probe)
        except asyncio.CancelledError:
            self._unfinished.update(ids)     # stop(): handed back to the queue after the cancellation
            self.destinations.release_probe(key)
            raise
        except Exception as exc:  # noqa: BLE001 - a bug dead-letters nothing: defer and go on
            log.exception("delivery of %s failed unexpectedly", msg.id)
            self.destinations.release_probe(key)
            err = DeliveryError(451, "4.3.0", f"internal error: {type(exc).__name__}", True)
            try:
                await self._record(msg, [(r, self._result(msg, r, Outcome({r.id: err}))) for r in rcpts],
                                   None, report)
            except Exception:  # noqa: BLE001 - storage down: the lease expires and recovery requeues
                log.exception("could not record the failure of %s", msg.id)
        finally:
            self._backlog[key] -= 1
            if key in self._saturated and self._backlog[key] <= self._backlog_cap(key) // 2:
                self._wake.set()
            if self._full and len(self._in_flight) <= self.max_in_flight // 2:
                self._full = False
                self._wake.set()
            self._in_flight.difference_update(ids)
            metrics.IN_FLIGHT.set(len(self._in_flight))
            self._msg_refs[msg.id] -= 1
            if self._msg_refs[msg.id] <= 0:
                del self._msg_refs[msg.id]
                self._bodies.pop(msg.id, None)
                self._framed.discard(msg.id)

    async def _deliver_and_record(self, msg: Message, rcpts: list[Recipient], key: str,
                                  route: RouteConfig | None, report: Batch, probe: bool) -> None:
        """One SMTP transaction and its durable result, inside the destination's connection slot. The
        connection goes back to the pool only after the result is committed, so a connection never starts
        a transaction while the previous one is unrecorded: a kill -9 duplicates at most one message per
        open connection (the one whose 250 arrived but whose result was not yet on disk)."""
        sem = self._dest_sems.setdefault(key, asyncio.Semaphore(self.delivery.concurrency_for(key)))
        async with self._global, sem:
            if not probe and self.destinations.holds(key):     # parked while this group waited for a slot
                await self._park(rcpts, key, report)
                return
            self.route_status.begin(route)
            try:
                outcome = await self._attempt(msg, rcpts, key, route)
            finally:
                self.route_status.end(route)
            self._note_down(key, outcome)
            recorded = False
            try:
                pairs = [(r, self._result(msg, r, outcome)) for r in rcpts]
                self.route_status.record(route, outcome, pairs)
                recorded = await self._record_durably(msg, pairs, outcome.attempt, report)
            finally:
                await self.delivery.finished(key, outcome, recorded=recorded)

    async def _park(self, rcpts: list[Recipient], key: str, report: Batch) -> None:
        now = self.clock()
        self.destinations.handed_back(key, len(rcpts))
        self.stats["parked"] += len(rcpts)
        metrics.PARKED.inc(len(rcpts))
        await self.reports.record(report, [], None)      # this part of the round ends without results
        await self.spool.release_claims([r.id for r in rcpts], self.destinations.next_probe(key, now),
                                        self.destinations.why(key))

    async def _record_durably(self, msg: Message, pairs: list[tuple[Recipient, RecipientResult]],
                              attempt: AttemptLog | None, report: Batch) -> bool:
        """Record the results of a transaction that happened, retrying while the store refuses (a full
        disk, a busy database): a result written late is better than a delivery repeated. After
        RECORD_RETRIES the results wait in memory (their recipients stay in flight here) and the scheduler
        writes them before it claims anything once the store accepts writes again: no lease is left to
        expire and no delivery is repeated, unless the process dies meanwhile."""
        for delay in RECORD_RETRIES:
            try:
                await self._record(msg, pairs, attempt, report)
                return True
            except StorageError as exc:
                self._storage_state(exc)
                await asyncio.sleep(delay)
        ids = [r.id for r, _ in pairs]
        self._in_flight.update(ids)            # not claimed again by this scheduler while they wait
        self._unrecorded.append((msg, pairs, attempt, report))
        metrics.UNRECORDED.set(sum(len(p) for _, p, _, _ in self._unrecorded))
        return False

    async def _flush_unrecorded(self) -> None:
        """Write the results that could not be written when they happened (oldest first)."""
        while self._unrecorded:
            msg, pairs, attempt, report = self._unrecorded[0]
            await self._record(msg, pairs, attempt, report)      # raises StorageError while refused
            self._unrecorded.pop(0)
            self._in_flight.difference_update(r.id for r, _ in pairs)
            metrics.UNRECORDED.set(sum(len(p) for _, p, _, _ in self._unrecorded))
            log.info("results of %s recorded after the store accepted writes again", msg.id)

    def _storage_state(self, exc: StorageError | None) -> None:
        """One log line when the store starts refusing writes and one when it accepts them again."""
        if exc is not None and self._storage_error is None:
            log.error("storage refuses writes (%s): delivery results wait in memory, claims pause", exc)
        elif exc is None and self._storage_error is not None:
            log.info("storage accepts writes again: delivery resumes")
        self._storage_error = None if exc is None else str(exc)

    async def _attempt(self, msg: Message, rcpts: list[Recipient], key: str,
                       route: RouteConfig | None) -> Outcome:
        metrics.TRANSACTIONS_ACTIVE.inc()
        try:
            body = await self._body(msg.id)
            if body is None:
                err = DeliveryError(554, "5.3.0", "message body is no longer retained", False,
                                    status="failed", reason="body-missing")
                return Outcome({r.id: err for r in rcpts}, route=key)
            started = time.monotonic()
            outcome = await self.delivery.deliver(msg, rcpts, body, route, framed=msg.id in self._framed)
            _seconds(key.split(":", 1)[0]).observe(time.monotonic() - started)
            return outcome
        finally:
            metrics.TRANSACTIONS_ACTIVE.dec()

    def _note_down(self, key: str, outcome: Outcome) -> None:
        """The transaction's verdict on its destination: unreachable (no server answered: every address
        refused or never greeted) parks it; any server reached unparks it."""
        errs = list(outcome.results.values())
        first = errs[0] if errs else None
        now = self.clock()
        if not outcome.connected and first is not None and all(
                isinstance(e, ConnectError) and e.stage in ("connect", "greeting") for e in errs):
            self.destinations.after(key, first, now)
            log.warning("destination %s unreachable (%s %s %s): parked until %s", key, first.code,
                        first.enhanced, first.text, time.strftime("%H:%M:%S", time.gmtime(
                            self.destinations.next_probe(key, now))))
        elif outcome.connected:
            if self.destinations.after(key, None, now):
                log.info("destination %s reachable again: unparked", key)
                self._wake.set()
        else:
            self.destinations.release_probe(key)
        down = len(self.destinations)
        if down != self._down:              # written when it changes: this runs after every transaction
            self._down = down
            metrics.DESTINATIONS_DOWN.set(down)

    async def _body(self, message_id: str) -> bytes | None:
        fut = self._bodies.get(message_id)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._bodies[message_id] = fut
            try:
                fut.set_result(await self.spool.body(message_id))
            except Exception as exc:  # noqa: BLE001
                fut.set_exception(exc)
                self._bodies.pop(message_id, None)
                raise
        return await fut

    # ---- results ---------------------------------------------------------------------------------
    def _expired(self, r: Recipient, err: DeliveryError | None) -> RecipientResult:
        days = self.policy.max_lifetime / 86400
        last = f"; last error: {err.code} {err.enhanced} {err.text}" if err else (
            f"; last error: {r.last_code} {r.last_enhanced} {r.last_text}"
            if r.last_code else "")
        return RecipientResult(r.id, "failed", err.code if err else r.last_code, "4.4.7",
                               f"delivery time expired after {days:g} days{last}", reason="expired")

    def _result(self, msg: Message, r: Recipient, outcome: Outcome) -> RecipientResult:
        err = outcome.results.get(r.id)
        route = outcome.route
        if err is None:
            code, enh, text = outcome.replies.get(r.id, (250, "2.0.0", "OK"))
            return RecipientResult(r.id, "delivered", code, enh, text, route=route)
        if err.temporary:
            now = self.clock()
            start = max(msg.created_at, msg.send_at or 0)
            decision = next_attempt(now, start, r.attempts + 1, err.text, self.policy,
                                    self.rng())
            if decision.expired:
                return self._expired(r, err)
            return RecipientResult(r.id, "deferred", err.code, err.enhanced, err.text,
                                   next_attempt_at=decision.next_attempt_at, route=route)
        status = err.status if err.status in ("bounced", "failed") else "bounced"
        return RecipientResult(r.id, status, err.code, err.enhanced, err.text, reason=err.reason,
                               route=route)

    def _classified(self, msg: Message, pairs: list[tuple[Recipient, RecipientResult]],
                    attempt: AttemptLog | None) -> tuple[list[tuple[Recipient, RecipientResult]],
                                                         list[DeliveryFailure]]:
        """One classification path for every failure at delivery: each bounced/failed recipient becomes a
        bounce of source ``delivery`` (reason, hard/soft, status, diagnostic, remote MTA), and a recipient
        with no reason of its own gets the bounce reason (what the Outbox and the history show)."""
        out, failures = [], []
        for r, res in pairs:
            if res.status in ("bounced", "failed"):
                f = delivery_failure(msg.id, r.id, r.address, res.code, res.enhanced, res.text, res.reason,
                                     (attempt.host or "") if attempt else "",
                                     transcript=attempt.transcript if attempt else ())
                failures.append(f)
                if res.reason is None and f.report.lines[0].reason:
                    res = replace(res, reason=f.report.lines[0].reason)
            out.append((r, res))
        return out, failures

    async def _record(self, msg: Message, pairs: list[tuple[Recipient, RecipientResult]],
                      attempt: AttemptLog | None,
                      batch: Batch) -> None:
        local = pairs               # the DSN tells a remote reply from a local reason by res.reason
        pairs, failures = self._classified(msg, pairs, attempt)
        results = [res for _, res in pairs]
        try:
            if failures:      # results, attempt, bounce rows and suppression: one write
                await self.spool.store.bounces.complete_delivery(results, attempt=attempt, failures=failures,
                                                                 rules=self.rules)
            else:
                await self.spool.complete(results, attempt=attempt)
        finally:
            if attempt is None:
                self._in_flight.difference_update(res.recipient_id for res in results)
        for r, res in pairs:
            self.stats[res.status] += 1
            mode = self.config.delivery.log_results
            if mode == "all" or (mode == "failures" and res.status != "delivered"):
                self._log_result(msg, r, res, attempt)
        if failures:
            self.stats["bounce_records"] += len(failures)
        await self.reports.record(batch, local, attempt.host if attempt else None)
        self.stats["dsn"] = self.reports.sent

    def _log_result(self, msg: Message, r: Recipient, res: RecipientResult,
                    attempt: AttemptLog | None) -> None:
        """One line per delivery result, like Postfix's maillog: queue id, recipient domain, relay host and
        IP, reply, delay since acceptance, TLS."""
        relay = f"{attempt.host}[{attempt.ip or ''}]" if attempt and attempt.host else "none"
        tls = "-" if attempt is None or attempt.tls is None else ("yes" if attempt.tls else "no")
        delay = max(0.0, self.clock() - max(msg.created_at, msg.send_at or 0))
        reply = " ".join(str(x) for x in (res.code, res.enhanced, res.text) if x)
        domain = r.address.rpartition("@")[2].lower()
        mail_line(log, f"result queue_id={msg.id} to_domain={domain} relay={relay}"
                       f" status={res.status} reason={res.reason or '-'} delay={delay:.1f}s tls={tls}"
                       f" reply={reply[:300]!r}", msg.id)

    async def _requeue(self, rcpts: list[Recipient], at: float,
                       why: tuple[int | None, str | None, str] | None = None) -> None:
        try:
            await self.spool.release_claims([r.id for r in rcpts], at, why)
        finally:
            self._in_flight.difference_update(r.id for r in rcpts)

    async def _release(self, ids: list[int], at: float) -> None:
        """Back to the queue without an attempt (``store.messages.MessageStore.release``)."""
        await self.spool.release_claims(ids, at)
