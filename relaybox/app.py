"""Build everything from the settings and run it in one asyncio loop (uvloop).

Start order follows a message's life: storage (lock, migrations, crash recovery) -> policy -> SMTP intake
-> delivery scheduler -> inbound poller -> admin API. Stop order is the reverse, with a drain: SIGTERM or
SIGINT stops accepting (421 to new sessions), lets sessions in DATA commit, lets in-flight deliveries end
(up to a timeout, leases are then released by recovery at the next start), and exits 0.
SIGHUP reloads what can change without a restart (allowlist and user seeds, log level).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import shutil
import signal
import time

from prometheus_client import Gauge

from admin_api.server import AdminServer
from poller.runner import PollerService
from relay.bounces import record as bounce_record
from relay.bounces import verp
from relay.config import TrackingConfig
from relay.delivery.route_book import RouteBook
from relay.delivery.scheduler import Scheduler
from relay.dnsbl import DnsblChecker
from relay.intake.listener import BounceIntake, Listener
from relay.intake.policy import Policy, hash_password
from relay.spool.spool import Spool
from relay.tracking.listener import TrackingListener
from relaybox import lifecycle, logs
from relaybox.cluster import Cluster
from relaybox.settings import Settings, load
from relaybox.workers import WorkerRole, owner_of, share
from store import Store, lock
from store.errors import Conflict

log = logging.getLogger("relaybox")

STORAGE_BELOW_FLOOR = Gauge("relaybox_storage_below_floor",
                            "1 while free space is below storage.min_free (intake refuses with 452)",
                            multiprocess_mode="livemax")     # worker processes: 1 if any worker sees it


class DiskMonitor:
    """Free space of the spool's filesystem against ``storage.min_free``, read at most every 0.1 s (at every
    MAIL FROM and by /readyz, /metrics).

    The floor holds before the disk is full: it applies to the free space minus a reserve for the mail
    already being received (three times ``smtp.max_message_size``: body, WAL and checkpoint copies), so the
    last message accepted above the floor still fits. Only intake refuses below it (452 4.3.1); delivery,
    which frees space, goes on. Each change of state is one log line and the gauge
    ``relaybox_storage_below_floor``, not a line per refused session.
    """

    INTERVAL = 0.1

    def __init__(self, path: str, min_free: float, reserve: int = 0):
        self.dir = os.path.dirname(os.path.abspath(path)) or "."
        self.min_free = min_free
        self.reserve = reserve
        self._at = 0.0
        self._ok = True
        self.free_ratio = 1.0
        self.free_bytes = 0

    def ok(self) -> bool:
        now = time.monotonic()
        if now - self._at > self.INTERVAL:
            self._at = now
            self._check()
        return self._ok

    def _check(self) -> None:
        try:
            usage = shutil.disk_usage(self.dir)
        except OSError as exc:
            self._set(False, f"cannot read free space of {self.dir}: {exc}")
            return
        self.free_bytes = usage.free
        self.free_ratio = usage.free / usage.total if usage.total else 0.0
        usable = (usage.free - self.reserve) / usage.total if usage.total else 0.0
        detail = (f"{usage.free / 1e6:.1f} MB free, floor {self.min_free:.0%}"
                  f" + {self.reserve / 1e6:.0f} MB reserve")
        self._set(self.min_free <= 0 or usable >= self.min_free, detail)

    def _set(self, ok: bool, detail: str) -> None:
        if ok != self._ok:
            if ok:
                log.info("storage space back above the floor (%s): accepting mail again", detail)
            else:
                log.warning("storage space below the floor (%s): new mail gets 452 4.3.1, delivery goes on",
                            detail)
        self._ok = ok
        STORAGE_BELOW_FLOOR.set(0 if ok else 1)


class App:
    """The whole relay in one process, or one worker of several (``worker``, see relaybox/workers.py): a
    worker takes its share of the connection limits, skips the lock, recovery and seeds (its supervisor
    did them) and runs the singletons (poller, admin API, tracking, retention) only in slot 0."""

    def __init__(self, settings: Settings, worker: WorkerRole | None = None):
        self.settings = settings
        self.worker = worker
        self.singletons = worker is None or worker.singletons
        if worker is not None:
            settings.relay = share(settings.relay, worker.count)
        rc = settings.relay
        self.store = Store(rc.storage.location(), poison_limit=rc.storage.poison_limit,
                           key_file=rc.storage.key_file(), commit_delay=rc.storage.commit_delay)
        self.db = self.store.db   # transitional: every caller moves to self.store.<aggregate>
        self.spool = Spool(self.store)
        self.policy = Policy(self.store.access)
        self.disk = DiskMonitor(rc.storage.path, rc.storage.min_free, 3 * int(rc.smtp.max_message_size))
        self.listener: Listener | None = None
        self.scheduler: Scheduler | None = None
        self.routes = RouteBook(self.store)    # routes of the store, live for delivery; status per route
        self.poller: PollerService | None = None
        self.admin: AdminServer | None = None
        self.tracking: TrackingListener | None = None
        self.lock: lock.DatabaseLock | None = None
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.started_at = time.time()
        self.cluster = Cluster(self)   # nodes registry, leader and channel leases (relaybox/cluster.py)

    # ---- start -----------------------------------------------------------------------------------
    async def open_storage(self) -> None:
        """The database lock (SQLite), migrations, crash recovery and the config seeds: once per instance,
        by the single process or by the supervisor of the workers; a worker only opens the store."""
        rc = self.settings.relay
        if self.worker is not None:
            self.store.open()
            return
        if not rc.storage.url and self.lock is None:   # one instance per SQLite file (a workers' supervisor
            self.lock = lock.acquire(rc.storage.path)   # may hold it already); PostgreSQL serves many nodes
        self.store.open()
        stats = await self.cluster.recover()   # PostgreSQL: only the claims of dead nodes
        if stats.get("requeued") or stats.get("poisoned"):
            log.warning("crash recovery: %d leases returned to the queue, %d poison items failed",
                        stats["requeued"], stats["poisoned"])
        await self.apply_seeds()
        await self.routes.seed(rc.routes)

    async def start(self) -> None:
        rc = self.settings.relay
        await self.open_storage()
        if self.worker is not None:          # the supervisor seeded the routes (open_storage)
            await self.routes.refresh(force=True)
        await self.routes.start()
        await self.policy.start()
        self.listener = Listener(rc.smtp, self.spool, self.policy, disk_ok=self.disk.ok,
                                 bounces=self._bounce_intake(), reuse_port=self.worker is not None)
        await self.listener.start()
        # [dnsbl]: sending addresses vs blocklists, per live route (run() returns when off)
        self.dnsbl = DnsblChecker(rc, routes=lambda: self.routes.router.by_name.values())
        if self.singletons:             # one checker per instance: its state is the admin API's
            self._tasks.append(asyncio.get_running_loop().create_task(self.dnsbl.run()))
        await self._start_services()
        if self.singletons:
            self._tasks.append(asyncio.get_running_loop().create_task(self._retention_loop()))
        if self.worker is not None:
            log.info("worker %d of %d started (pid %d, database %s)", self.worker.slot, self.worker.count,
                     os.getpid(), rc.storage.path)
            self.worker.ready()
            return
        log.info("relaybox started (pid %d, database %s)", os.getpid(), rc.storage.path)
        lifecycle.ready(f"accepting mail on {', '.join(f'{h}:{p}' for h, p in self.listener.bound)}")

    async def _retention_loop(self, every: float = 3600.0) -> None:
        """Prune finished messages in small batches: bodies after storage.body_days, metadata after
        storage.meta_days, then give the space back 2,000 pages at a time. Small batches keep each write
        transaction short (intake never waits long)."""
        st = self.settings.relay.storage
        while True:
            if not self.cluster.is_leader():       # several nodes on one database: the leader's job
                await asyncio.sleep(min(every, 60.0))
                continue
            try:
                pruned = 0
                while n := await self.spool.prune(st.body_days, st.meta_days, batch=500):
                    pruned += n
                    await asyncio.sleep(0.2)
                while pruned and await self.store.compact(2000):   # give the space back, a bit at a time
                    await asyncio.sleep(0.2)
            except Exception:  # noqa: BLE001 - retention must never take the relay down
                log.exception("retention pass failed; will retry")
            await asyncio.sleep(every)

    def _bounce_intake(self) -> BounceIntake | None:
        """relaybox as the MX of its VERP bounce domain: reports are parsed and recorded, never relayed."""
        bounces = self.settings.relay.bounces
        if not bounces.domain:
            return None
        store = self.store.bounces
        return BounceIntake(
            in_domain=lambda addr: bounce_record.for_bounce_domain(bounces, addr),
            valid=verp.make_rcpt_hook(bounces),
            process=lambda raw, rcpt: bounce_record.process(store, bounces, raw, source="smtp", rcpt=rcpt))

    async def _start_services(self) -> None:
        """Delivery, the inbound poller, the admin listener and the tracking listener, in that order."""
        await self.cluster.start()             # before the singletons: leadership settled
        if not self.settings.relay.delivery.enabled:
            log.warning("delivery.enabled = false: messages are accepted and queued, not delivered")
        else:
            self.scheduler = Scheduler(self.spool, self.settings.relay, owner=owner_of(os.getpid()))
            self.routes.attach(self.scheduler)
            await self.scheduler.start()
            self.spool.on_enqueue.append(self.scheduler.notify)
            self.spool.handoff = self.scheduler     # new mail skips the claim round while the queue is empty
        if not self.singletons:
            return
        sink = bounce_record.make_sink(self.store.bounces, self.settings.relay)
        self.poller = PollerService(self.store, self.settings, spool=self.spool, bounce_sink=sink,
                                    leases=self.cluster)
        await self.poller.start()
        self._first_run_token()
        self.admin = AdminServer(self)
        await self.admin.start()
        if self.settings.relay.tracking.enabled:    # its own socket and public URL, never the admin API's
            self.tracking = TrackingListener(self.settings.relay.tracking, self.store.tracking)
            await self.tracking.start()

    async def _reload_tracking(self, cfg: TrackingConfig) -> bool:
        """The listener follows [tracking] on SIGHUP (delivery already signs with the reloaded keys): started
        when enabled, stopped when disabled, keys and limits reloaded otherwise (listen needs a restart)."""
        try:
            if cfg.enabled and self.tracking is None:
                listener = TrackingListener(cfg, self.store.tracking)
                await listener.start()
                self.tracking = listener
            elif not cfg.enabled and self.tracking is not None:
                await self.tracking.stop()
                self.tracking = None
            elif self.tracking is not None:
                self.tracking.reload(cfg)         # also when only the secret_file's lines changed
            else:
                return False
        except (OSError, ValueError) as exc:
            log.error("tracking listener not reloaded: %s", exc)
            return False
        self.settings.relay = dataclasses.replace(self.settings.relay, tracking=cfg)
        return True

    def _first_run_token(self) -> None:
        """A first run must be usable: with no admin token configured at all, one is generated into
        ``admin.token`` beside the database (0600, reused at later starts) and the admin section points its
        ``token_file`` there. The log names the file, never the secret."""
        admin = self.settings.section("admin")
        if admin is None or not admin.enabled or admin.tokens or admin.readonly_tokens or admin.token_file:
            return
        path = os.path.join(os.path.dirname(os.path.abspath(self.settings.relay.storage.path)), "admin.token")
        if not os.path.exists(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write("# generated at the first start: an admin token (name:secret); keep it private\n"
                         f"admin:{secrets.token_urlsafe(32)}\n")
            log.warning("no admin token configured: generated one in %s (sign in to the console with it)",
                        path)
        self.settings.extra["admin"] = dataclasses.replace(admin, token_file=path)

    async def apply_seeds(self) -> None:
        smtp = self.settings.relay.smtp
        users = []
        for u in smtp.users:
            users.append((u.username, u.password_hash or hash_password(u.password)))
        await self.store.access.seed(smtp.allowlist, users)

    # ---- run / stop ------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        if lifecycle.EARLY_SIGNALS:      # a stop signal came while the process was still starting
            self.stopping.set()
        await self.start()
        await self.stopping.wait()
        log.info("shutting down: draining")
        await self.stop()
        return 0

    async def stop(self, timeout: float = 30.0) -> None:
        if self.worker is None:
            lifecycle.stopping()
        for task in self._tasks:
            task.cancel()
        if self.listener is not None:
            await self.listener.drain(timeout)
        for comp in (self.tracking, self.admin, self.poller, self.scheduler, self.routes):
            if comp is not None:
                try:
                    await comp.stop()
                except Exception:  # noqa: BLE001 - keep shutting the rest down
                    log.exception("error while stopping %s", type(comp).__name__)
        await self.cluster.stop()
        await self.policy.stop()
        self.store.close()
        if self.lock is not None:
            self.lock.release()
        log.info("relaybox stopped")

    async def reload(self) -> None:
        """SIGHUP: re-read the config file and apply what can change without a restart."""
        notify = self.worker is None          # a worker's supervisor speaks to systemd
        if notify:
            lifecycle.reloading()
        try:
            new = load(self.settings.path)
        except Exception as exc:  # noqa: BLE001 - a bad edit must not kill a running relay
            log.error("reload failed, keeping the running config: %s", exc)
            if notify:
                lifecycle.ready("reload failed; running with the previous config")
            return
        if self.worker is not None:
            new.relay = share(new.relay, self.worker.count)
        logs.register_settings_secrets(new)
        old_smtp = self.settings.relay.smtp
        changed = []
        if list(new.relay.smtp.allowlist) != list(old_smtp.allowlist):
            changed.append("allowlist")
        if new.relay.smtp.users != old_smtp.users:
            changed.append("users")
        # listeners keep their sockets and limits (a restart changes those); seeds and policy apply now
        self.settings.relay = dataclasses.replace(self.settings.relay, smtp=new.relay.smtp)
        await self.apply_seeds()
        await self.policy.refresh()
        if new.log.level != self.settings.log.level:
            logs.set_level(new.log.level)
            changed.append("log.level")
        self.settings.log = new.log
        if self.scheduler is not None:
            await self.scheduler.reload(new.relay)
            changed.append("routes/dkim")
        try:
            await self.routes.seed(new.relay.routes)     # at once after the reload: store routes stay live
        except Conflict as exc:
            log.error("routes not reloaded: %s", exc)
        if self.singletons and await self._reload_tracking(new.relay.tracking):
            changed.append("tracking")
        log.info("reloaded config: %s", ", ".join(changed) if changed else "nothing changed")
        if notify:
            lifecycle.ready("reloaded")


def run(settings: Settings) -> int:
    """The process's event loop is uvloop's (a declared dependency)."""
    import uvloop

    return uvloop.run(App(settings).run())
