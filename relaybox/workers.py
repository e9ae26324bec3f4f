"""Worker processes: ``relaybox run --workers N`` puts every core of one box to work.

One asyncio loop is one core, so N processes share the load:

- the **supervisor** (the process started by ``relaybox run``; systemd's and Docker's main PID) holds the
  database lock, runs migrations, crash recovery and the config seeds once, then starts N workers, each a
  fresh interpreter (``python -m relaybox.cli run ... --worker-slot I``: no fork of a running loop). It
  watches them: a worker that exits is restarted (its leases first go back to the queue, by
  ``lease_owner``), with a backoff when it keeps dying; SIGTERM/SIGINT drain every worker, SIGHUP is
  forwarded. It serves nothing itself.
- every **worker** runs SMTP intake on the same ports (``SO_REUSEPORT``: the kernel spreads connections)
  and a delivery scheduler claiming from the shared store under its own lease owner ``host:pid``.
  Connection limits are the instance's: each worker gets ``ceil(limit / N)`` (``share``).
- **worker 0** also runs the singletons: admin API (and ``/metrics``), inbound poller, tracking listener,
  retention. Counters and histograms of all workers are summed through prometheus_client's multiprocess
  mode (``PROMETHEUS_MULTIPROC_DIR`` = ``<data dir>/metrics.d``, emptied at each start).

Workers die with the supervisor (``PR_SET_PDEATHSIG``), so a ``kill -9`` of the supervisor never leaves a
worker writing to a database whose lock is free.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from relay.config import RelayConfig
from relaybox.logs import FieldTag

log = logging.getLogger("relaybox.workers")

SUPERVISOR_ENV = "RELAYBOX_SUPERVISOR_PID"
READY_FD_ENV = "RELAYBOX_READY_FD"
GO_FD_ENV = "RELAYBOX_GO_FD"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STOP_TIMEOUT = 40.0          # seconds to wait for the workers' drain (systemd: TimeoutStopSec=45)
HEALTHY_AFTER = 30.0         # a worker that lived this long was not crash-looping
BACKOFF_FIRST = 0.5          # seconds before restarting a worker, doubling per quick failure ...
BACKOFF_CAP = 30.0           # ... up to this
POLL = 0.1                   # seconds between looks at the children


@dataclass(frozen=True)
class ProcessConfig:
    workers: int = 0          # worker processes; 0 = one per core (os.cpu_count()); 1 = a single process

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError("process.workers: must be >= 0 (0 = one per core)")


SECTIONS = {"process": ProcessConfig}


def cores() -> int:
    """The cores this process may use: ``os.cpu_count()``, narrowed by its CPU affinity (``taskset``,
    ``docker --cpuset-cpus``) and by a cgroup v2 quota (``docker --cpus``, systemd ``CPUQuota=``)."""
    n = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        n = min(n, len(os.sched_getaffinity(0)) or n)
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max" and int(period) > 0:
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def worker_count(cli: int | None, cfg: ProcessConfig | None) -> int:
    """``--workers`` first, then ``[process] workers``, then the number of cores (``cores()``)."""
    if cli is not None:
        return cli
    if cfg is not None and cfg.workers:
        return cfg.workers
    return cores()


def owner_of(pid: int) -> str:
    """The ``lease_owner`` of a process's delivery claims (the scheduler's default, made explicit)."""
    return f"{socket.gethostname()}:{pid}"


def _part(limit: int, n: int) -> int:
    return max(1, math.ceil(limit / n))


def share(rc: RelayConfig, n: int) -> RelayConfig:
    """One worker's part of the instance's limits: ``ceil(limit / n)``, at least 1, for the connection
    limits of delivery (global, per destination, per-domain overrides) and intake's ``max_sessions``.
    Per-address limits (sessions, connection rate, AUTH throttling) stay per worker."""
    if n <= 1:
        return rc
    d = rc.delivery
    delivery = dataclasses.replace(
        d, concurrency=_part(d.concurrency, n), per_destination=_part(d.per_destination, n),
        per_domain={k: _part(v, n) for k, v in d.per_domain.items()})
    smtp = dataclasses.replace(rc.smtp, max_sessions=_part(rc.smtp.max_sessions, n))
    return dataclasses.replace(rc, delivery=delivery, smtp=smtp)


@dataclass(frozen=True)
class WorkerRole:
    """What one worker process is: its slot (0 runs the singletons) among ``count``."""

    slot: int
    count: int
    ready_fd: int | None = None

    @property
    def singletons(self) -> bool:
        return self.slot == 0

    def ready(self) -> None:
        """Tell the supervisor this worker's listeners are bound (a line on the inherited pipe)."""
        if self.ready_fd is None:
            return
        try:
            os.write(self.ready_fd, b"ready\n")
            os.close(self.ready_fd)
        except OSError:
            pass

    @classmethod
    def from_env(cls, slot: int, count: int) -> "WorkerRole":
        fd = os.environ.pop(READY_FD_ENV, "")
        return cls(slot, count, int(fd) if fd.isdigit() else None)


class WorkerTag(FieldTag):
    """``worker=<slot>`` on every log line of a worker (a ``key=value`` in text, a key in JSON)."""

    def __init__(self, slot: int):
        super().__init__(worker=slot)
        self.slot = slot


def die_with_supervisor() -> None:
    """The kernel kills this worker when the supervisor dies (Linux ``PR_SET_PDEATHSIG``); a worker whose
    supervisor is already gone exits at once."""
    expected = os.environ.get(SUPERVISOR_ENV, "")
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)      # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            log.warning("cannot ask to die with the supervisor (prctl unavailable)")
    if expected.isdigit() and os.getppid() != int(expected):
        os._exit(1)


def metrics_dir(rc: RelayConfig) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(rc.storage.path)), "metrics.d")


def restart_delay(failures: int, lived: float, was_ready: bool) -> tuple[int, float]:
    """(quick failures in a row, seconds before the restart) for a worker that exited after ``lived`` s:
    one that never got ready or died within HEALTHY_AFTER counts as one more quick failure, doubling the
    delay up to BACKOFF_CAP; one that ran well starts the count again."""
    failures = failures + 1 if lived < HEALTHY_AFTER or not was_ready else 1
    return failures, min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (failures - 1))


def _describe(rc: int) -> str:
    return f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"


class Slot:
    """One worker position: the running process (if any) and its restart bookkeeping."""

    def __init__(self, index: int):
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_r: int | None = None
        self.ready = False
        self.started_at = 0.0
        self.failures = 0
        self.restart_at: float | None = None


class Supervisor:
    """Starts, watches, restarts and stops the workers (see the module's docstring)."""

    def __init__(self, settings, count: int, passthrough: list[str]):
        self.settings = settings
        self.count = count
        self.passthrough = passthrough
        self.app: Any = None            # relaybox.app.App for storage only: lock, migrations, recovery,
        self._go: int | None = None     # seeds, lease reclaims; _go: the pipe that lets the workers open it
        self.slots = [Slot(i) for i in range(count)]
        self.stopping = asyncio.Event()
        self.metrics_dir = metrics_dir(settings.relay)
        self.restarts = 0

    # ---- start -----------------------------------------------------------------------------------
    async def run(self) -> int:
        from relaybox import lifecycle

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward_hup)
        from store import lock

        rc = self.settings.relay
        held = None if rc.storage.url else lock.acquire(rc.storage.path)   # before anything else is touched
        self._reset_metrics()
        # the workers start importing at once (the slow part of a start) and wait for the go, sent once the
        # store is migrated and recovered here; a supervisor that cannot open it closes the pipe instead
        go_r, self._go = os.pipe()
        for slot in self.slots:
            self._spawn(slot, go_r)
        os.close(go_r)
        try:
            from relaybox.app import App

            self.app = App(self.settings)
            self.app.lock = held
            await self.app.open_storage()
            os.write(self._go, b"g" * self.count)
        except BaseException:
            for slot in self.slots:          # they have not touched anything yet
                if slot.proc is not None:
                    slot.proc.kill()
                    slot.proc.wait()
            if held is not None:
                held.release()
            raise
        finally:
            os.close(self._go)
        try:
            failed = await self._wait_ready()
            if failed is not None:
                return failed
            bound = ", ".join(self.settings.relay.smtp.listen)
            log.info("relaybox started: supervisor pid %d, %d workers (pids %s)", os.getpid(), self.count,
                     ", ".join(str(s.proc.pid) for s in self.slots if s.proc))
            lifecycle.ready(f"accepting mail on {bound} with {self.count} workers")
            await self._watch()
            log.info("shutting down: draining %d workers", self.count)
            lifecycle.stopping()
            return await self._stop_all()
        finally:
            await self._close()

    def _reset_metrics(self) -> None:
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        os.makedirs(self.metrics_dir, mode=0o700, exist_ok=True)

    def _spawn(self, slot: Slot, go: int | None = None) -> None:
        r, w = os.pipe()
        os.set_blocking(r, False)
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)          # only the supervisor talks to systemd
        env.pop(GO_FD_ENV, None)
        env.update({SUPERVISOR_ENV: str(os.getpid()), READY_FD_ENV: str(w), MULTIPROC_ENV: self.metrics_dir})
        if go is not None:
            env[GO_FD_ENV] = str(go)
        cmd = [sys.executable, "-m", "relaybox.cli", "run", "--config", os.path.abspath(self.settings.path),
               "--workers", str(self.count), "--worker-slot", str(slot.index), *self.passthrough]
        try:
            slot.proc = subprocess.Popen(cmd, env=env, pass_fds=(w,) if go is None else (w, go),
                                         stdin=subprocess.DEVNULL)
        finally:
            os.close(w)
        slot.ready_r, slot.ready, slot.restart_at = r, False, None
        slot.started_at = time.monotonic()

    def _check_ready(self, slot: Slot) -> None:
        if slot.ready or slot.ready_r is None:
            return
        try:
            data = os.read(slot.ready_r, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data.startswith(b"ready"):
            slot.ready = True
        os.close(slot.ready_r)
        slot.ready_r = None

    async def _wait_ready(self) -> int | None:
        """Until every worker is ready; a worker that exits first fails the start (its own error is in the
        log): the others are stopped and its exit status is returned."""
        while not all(s.ready for s in self.slots):
            for slot in self.slots:
                self._check_ready(slot)
                assert slot.proc is not None
                rc = slot.proc.poll()
                if rc is not None:
                    log.error("worker %d (pid %d) failed to start: %s", slot.index, slot.proc.pid,
                              _describe(rc))
                    await self._stop_all()
                    return rc if rc in (1, 2) else 1
            if self.stopping.is_set():
                return await self._stop_all()
            await asyncio.sleep(POLL)
        return None

    # ---- watch -----------------------------------------------------------------------------------
    async def _watch(self) -> None:
        while not self.stopping.is_set():
            now = time.monotonic()
            for slot in self.slots:
                if slot.proc is None:
                    if slot.restart_at is not None and now >= slot.restart_at:
                        self._spawn(slot)
                        log.info("worker %d restarted (pid %d)", slot.index,
                                 slot.proc.pid if slot.proc else 0)
                    continue
                self._check_ready(slot)
                rc = slot.proc.poll()
                if rc is not None:
                    await self._exited(slot, rc, now)
            try:
                await asyncio.wait_for(self.stopping.wait(), POLL)
            except asyncio.TimeoutError:
                pass

    async def _exited(self, slot: Slot, rc: int, now: float) -> None:
        """A worker died: its leases back to the queue, its live gauges dropped, a restart planned."""
        assert slot.proc is not None
        pid = slot.proc.pid
        slot.proc = None
        if slot.ready_r is not None:
            os.close(slot.ready_r)
            slot.ready_r = None
        returned = await self._reclaim(pid)
        lived = now - slot.started_at
        slot.failures, delay = restart_delay(slot.failures, lived, slot.ready)
        slot.restart_at = now + delay
        self.restarts += 1
        level = logging.ERROR if slot.failures >= 3 else logging.WARNING
        log.log(level, "worker %d (pid %d) %s after %.1f s; %d leases returned to the queue; restarting in"
                " %.1f s%s", slot.index, pid, _describe(rc), lived, returned, delay,
                f" ({slot.failures} quick failures in a row)" if slot.failures >= 3 else "")

    async def _reclaim(self, pid: int) -> int:
        try:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self.metrics_dir)
        except OSError:
            pass
        owner = owner_of(pid)
        try:
            stats = await self.app.store.messages.recover(owner=owner)
            nodes = getattr(self.app.store, "nodes", None)
            if nodes is not None:       # its cluster leases (leader, channels) free at once, not after ttl
                await nodes.leave(owner)
        except Exception as exc:  # noqa: BLE001 - the lease expires anyway; the next start recovers it
            log.error("could not return the leases of worker pid %d: %s", pid, exc)
            return 0
        if stats.get("poisoned"):
            log.warning("worker pid %d: %d poison items failed", pid, stats["poisoned"])
        return int(stats.get("requeued", 0))

    def _forward_hup(self) -> None:
        from relaybox import lifecycle

        lifecycle.reloading()
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGHUP)
        log.info("SIGHUP forwarded to the workers (each reloads its config)")
        lifecycle.ready("reloaded")

    # ---- stop ------------------------------------------------------------------------------------
    async def _until_started(self, live: list[Slot], deadline: float) -> None:
        """A worker still starting is let finish its start before it is told to stop: a SIGTERM while it
        imports would kill it by the default action (it has no handler yet) instead of draining it."""
        while time.monotonic() < deadline:
            for slot in live:
                self._check_ready(slot)
            if all(s.ready or s.ready_r is None or s.proc is None or s.proc.poll() is not None
                   for s in live):
                return
            await asyncio.sleep(POLL)

    async def _stop_all(self) -> int:
        """SIGTERM to every worker (each drains: 421 to new sessions, DATA commits, deliveries end), then
        wait; a worker still alive after STOP_TIMEOUT is killed and its leases returned."""
        live = [s for s in self.slots if s.proc is not None]
        deadline = time.monotonic() + STOP_TIMEOUT
        await self._until_started(live, deadline)
        for slot in live:
            assert slot.proc is not None
            if slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGTERM)
        status = 0
        for slot in live:
            assert slot.proc is not None
            while slot.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(POLL)
            if slot.proc.poll() is None:
                log.error("worker %d (pid %d) did not drain in %.0f s: killed", slot.index, slot.proc.pid,
                          STOP_TIMEOUT)
                slot.proc.kill()
                slot.proc.wait()
                await self._reclaim(slot.proc.pid)
            rc = slot.proc.returncode
            if rc != 0:
                log.error("worker %d (pid %d) stopped with %s", slot.index, slot.proc.pid, _describe(rc))
                status = 1
            if slot.ready_r is not None:
                os.close(slot.ready_r)
                slot.ready_r = None
            slot.proc = None
        return status

    async def _close(self) -> None:
        if self.app is None:
            return
        self.app.store.close()
        if self.app.lock is not None:
            self.app.lock.release()
        log.info("relaybox stopped (%d worker restarts)", self.restarts)


def run_supervisor(settings, count: int, passthrough: list[str]) -> int:
    import uvloop

    return uvloop.run(Supervisor(settings, count, passthrough).run())


def run_worker(settings, slot: int, count: int) -> int:
    """One worker process (started by the supervisor, never by hand)."""
    import uvloop

    from relaybox.app import App
    from relaybox.lifecycle import EARLY_SIGNALS

    die_with_supervisor()
    for handler in logging.getLogger().handlers:
        handler.addFilter(WorkerTag(slot))
    go = os.environ.pop(GO_FD_ENV, "")
    if go.isdigit():            # the first start: imported; wait until the supervisor has opened the store
        started = os.read(int(go), 1) == b"g"
        os.close(int(go))
        if not started:         # it could not (its error is in the log)
            return 1
    if EARLY_SIGNALS:
        return 0                # told to stop before it started: nothing was accepted
    return uvloop.run(App(settings, worker=WorkerRole.from_env(slot, count)).run())
