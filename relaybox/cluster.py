"""Several relaybox nodes on one PostgreSQL database (``storage.url``); on SQLite the same code runs for the
one node (docs/operations.md "Cluster").

Each relaybox process is a node: a row of ``store.nodes`` keyed by ``hostname:pid`` (the ``lease_owner``
of its delivery claims), named by ``[cluster] node_name``. ``Cluster`` (one per ``App``)

- beats every ``heartbeat`` (default a third of ``lease``): its heartbeat, and the renewal of the leases it
  holds, in one write. A node silent for ``lease`` is dead;
- holds the ``leader`` lease on exactly one node: the singleton jobs (retention, event webhooks, reaping
  dead nodes) run only where ``is_leader()`` is true, and a dead leader's lease is taken over by another
  node within ``lease``;
- gives the poller its channels (``channels``): each inbound channel is polled by the node holding its
  ``channel:<name>`` lease, taken over within ``lease`` (+ one heartbeat) when that node dies;
- as leader, returns the recipients claimed by dead nodes to the queue (``store.nodes.recover_dead``);
- on PostgreSQL listens (``store.postgres.Notifications``) for new messages (the scheduler wakes) and for
  config changes of other nodes (the allowlist and SMTP users are re-read at once).

Why a lease row and not ``pg_advisory_lock``: a session lock lives on one connection, and this store's
connections are a group-commit writer and a reader pool that reconnect on their own (a dropped connection
would silently drop leadership, and a dedicated connection per lock would be needed); a lease row works the
same on SQLite, is visible to ``relaybox nodes`` and ``GET /api/v1/nodes``, and survives a connection
pooler in transaction mode. Its cost is one small write per heartbeat per node.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge

from relay.configtypes import Duration
from store.postgres import redact

log = logging.getLogger("relaybox.cluster")

# worker processes report through prometheus_client's multiprocess mode: the most recent live value
NODES_ALIVE = Gauge("relaybox_nodes_alive", "Nodes whose heartbeat is younger than the lease",
                    multiprocess_mode="livemostrecent")
NODE_INFO = Gauge("relaybox_node_info", "Known nodes: 1 alive, 0 dead or stopped",
                  ["node", "owner", "version"], multiprocess_mode="livemostrecent")
LEADER_GAUGE = Gauge("relaybox_cluster_leader", "1 while this process holds the leader lease",
                     multiprocess_mode="livemax")
FORGET_AFTER = 86400.0        # rows of nodes dead this long (holding nothing) are removed


@dataclass(frozen=True)
class ClusterConfig:
    node_name: str = ""                  # shown in `relaybox nodes`; default hostname:pid
    lease: Duration = Duration(15)       # a node silent this long is dead; its leases are taken over
    heartbeat: Duration = Duration(0)    # 0: lease / 3

    def __post_init__(self) -> None:
        if float(self.lease) < 1:
            raise ValueError("cluster.lease: at least 1s")
        if float(self.heartbeat) < 0 or float(self.heartbeat) >= float(self.lease):
            raise ValueError("cluster.heartbeat: expected 0 (lease / 3) or less than cluster.lease")

    @property
    def interval(self) -> float:
        return float(self.heartbeat) or float(self.lease) / 3


SECTIONS = {"cluster": ClusterConfig}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("relaybox")
    except PackageNotFoundError:
        return "unknown"




def _dead_here(owner: str) -> bool:
    """A lease owner ``hostname:pid`` of this machine whose process is gone (a kill -9, a crash, a stop that
    ran out of time): its claims need not wait for the lease, even if it never registered as a node."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:              # it exists (another user's process): leave it to its lease
        return False
    return False


class Cluster:
    def __init__(self, app: Any):
        from store.nodes import CHANNEL_PREFIX, LEADER
        from store.postgres import is_url

        self.app = app
        self.store = app.store
        self.cfg: ClusterConfig = app.settings.section("cluster") or ClusterConfig()
        self.ttl = float(self.cfg.lease)
        self.interval = self.cfg.interval
        self.owner = f"{socket.gethostname()}:{os.getpid()}"     # the Scheduler's default lease owner
        self.name = self.cfg.node_name or self.owner
        self.shared = is_url(self.store.path)                     # PostgreSQL: other nodes may exist
        self._leader, self._prefix = LEADER, CHANNEL_PREFIX
        self._held: dict[str, float] = {}          # lease -> monotonic time until which it is ours
        self._task: asyncio.Task[None] | None = None
        self._notes: Any = None
        self._refresh: asyncio.Task[None] | None = None
        self._refresh_again = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._beats = 0
        self._started = False
        # worker processes (relaybox/workers.py): every worker is a node, but only the one running the
        # singletons (retention, webhooks, poller) may lead
        self.candidate = bool(getattr(app, "singletons", True))
        self.error: str | None = None               # the last heartbeat's failure, None once one succeeds

    # ---- lifecycle -------------------------------------------------------------------------------
    async def recover(self) -> dict[str, int]:
        """Crash recovery at start. SQLite (one process, under its lock): every lease is a dead one's
        (``Spool.recover``). PostgreSQL: only the claims of nodes that are dead or stopped go back (other
        nodes are delivering theirs), with the same poison accounting."""
        if not self.shared:
            stats: dict[str, int] = await self.app.spool.recover()
            return stats
        stats = await self.store.nodes.recover_dead(self.ttl, self.store.messages.poison_limit)
        # this machine's dead processes, at once (a live node's heartbeat outweighs a pid this namespace
        # cannot see: containers sharing the host's name)
        alive = {n.owner for n in await self.store.nodes.list_nodes(self.ttl) if n.alive}
        for owner in await self.store.nodes.sending_owners():
            if owner not in alive and _dead_here(owner):
                for key, n in (await self.store.messages.recover(owner=owner)).items():
                    stats[key] = stats.get(key, 0) + n
        return stats

    async def start(self) -> None:
        from store.nodes import Registration

        self._loop = asyncio.get_running_loop()
        scheduler = getattr(self.app, "scheduler", None)
        self.owner = getattr(scheduler, "owner", None) or self.owner
        await self.store.nodes.register(Registration(
            owner=self.owner, name=self.name, host=socket.gethostname(), pid=os.getpid(), version=version()))
        await self.beat()                           # leadership settled before the singleton jobs start
        listen = getattr(self.store.db, "listen", None)
        if self.shared and listen is not None:
            from store.postgres import CONFIG_CHANNEL, QUEUE_CHANNEL

            self._notes = listen([QUEUE_CHANNEL, CONFIG_CHANNEL], self._from_thread)
        self._task = self._loop.create_task(self._run(), name="cluster-heartbeat")
        self._started = True
        log.info("node %s (%s) joined: lease %.0fs, heartbeat %.1fs, %s", self.name, self.owner, self.ttl,
                 self.interval, "leader" if self.is_leader() else "member")

    async def stop(self) -> None:
        if not self._started:                 # storage only (a workers' supervisor): never joined
            return
        self._started = False
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._notes is not None:
            await asyncio.to_thread(self._notes.stop)
            self._notes = None
        if self._refresh is not None:
            self._refresh.cancel()
        self._held.clear()
        LEADER_GAUGE.set(0)
        try:
            await self.store.nodes.leave(self.owner)     # others take the leases over at once
        except Exception as exc:  # noqa: BLE001 - the leases then expire by themselves
            log.warning("node %s: could not release its leases (they expire in %.0fs): %s", self.name,
                        self.ttl, redact(str(exc)))

    # ---- what the rest asks ------------------------------------------------------------------------
    def is_leader(self) -> bool:
        return self._holds(self._leader)

    def _holds(self, lease: str) -> bool:
        return self._held.get(lease, 0.0) > time.monotonic()

    async def channels(self, wanted: set[str]) -> set[str]:
        """The poller's hook: of the enabled channels ``wanted``, those this node polls now (leases taken or
        renewed); leases of channels no longer wanted are given back. Storage down: the channels whose lease
        has not run out yet (no other node can take them meanwhile)."""
        names = {self._prefix + n for n in wanted}
        gone = {n for n in self._held if n.startswith(self._prefix)} - names
        started = time.monotonic()
        try:
            if gone:
                await self.store.nodes.release(self.owner, gone)
                for n in gone:
                    self._held.pop(n, None)
            got = await self.store.nodes.acquire(self.owner, names, self.ttl)
        except Exception as exc:  # noqa: BLE001 - the poller keeps what it holds until the lease ends
            log.warning("node %s: channel leases not renewed: %s", self.name, redact(str(exc)))
            return {n[len(self._prefix):] for n in names if self._holds(n)}
        self._keep(names, got, started)
        return {n[len(self._prefix):] for n in got}

    def _keep(self, asked: set[str], got: set[str], started: float) -> None:
        until = started + self.ttl - self.interval       # a heartbeat's margin for the others' clocks
        for n in asked - got:
            self._held.pop(n, None)
        for n in got:
            self._held[n] = until

    def status(self) -> dict[str, Any]:
        return {"node": self.name, "owner": self.owner, "leader": self.is_leader(),
                "leases": sorted(n for n in self._held if self._holds(n)), "error": self.error,
                "notifications": None if self._notes is None else bool(self._notes.connected)}

    # ---- heartbeat ---------------------------------------------------------------------------------
    async def beat(self) -> None:
        started = time.monotonic()
        renew = {n for n in self._held if self._holds(n)} | ({self._leader} if self.candidate else set())
        got = await self.store.nodes.beat(self.owner, self.ttl, renew)
        was_leader = self.is_leader()
        self._keep(renew, got, started)
        if self.is_leader() != was_leader:
            log.info("node %s is %s", self.name, "the leader now" if self.is_leader() else "no longer leader")
        LEADER_GAUGE.set(1 if self.is_leader() else 0)
        if self.error is not None:
            log.info("node %s: heartbeat written again", self.name)
        self.error = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
                if self.is_leader():
                    await self._lead()
                await self._metrics()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be away; try again next beat
                if self.error is None:
                    log.warning("node %s: heartbeat failed (leases run out in %.0fs unless renewed): %s",
                                self.name, self.ttl, redact(str(exc)))
                self.error = redact(str(exc))
                LEADER_GAUGE.set(1 if self.is_leader() else 0)

    async def _lead(self) -> None:
        """The leader's duties: claims of dead nodes back to the queue; old rows of dead nodes removed."""
        stats = await self.store.nodes.recover_dead(self.ttl, self.store.messages.poison_limit)
        if stats.get("requeued") or stats.get("poisoned"):
            log.warning("node %s: recipients of dead nodes back to the queue: %d requeued, %d poison",
                        self.name, stats["requeued"], stats["poisoned"])
            self._wake_scheduler()
        self._beats += 1
        if self._beats % 100 == 1:
            await self.store.nodes.forget(FORGET_AFTER)

    async def _metrics(self) -> None:
        nodes = await self.store.nodes.list_nodes(self.ttl)
        NODES_ALIVE.set(sum(n.alive for n in nodes))
        NODE_INFO.clear()
        for n in nodes:
            NODE_INFO.labels(n.name, n.owner, n.version).set(1 if n.alive else 0)

    # ---- notifications (PostgreSQL) ----------------------------------------------------------------
    def _from_thread(self, channel: str, payload: str) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._notified, channel, payload)

    def _notified(self, channel: str, payload: str) -> None:
        from store.postgres import CONFIG_CHANNEL, QUEUE_CHANNEL, RECONNECTED

        if channel in (QUEUE_CHANNEL, RECONNECTED):
            self._wake_scheduler()
        if channel == RECONNECTED or (channel == CONFIG_CHANNEL and payload in ("allowlist", "smtp_users")):
            self._refresh_policy()

    def _wake_scheduler(self) -> None:
        scheduler = getattr(self.app, "scheduler", None)
        if scheduler is not None:
            scheduler.notify()

    def _refresh_policy(self) -> None:
        """Re-read the allowlist and users; notifications during a refresh make one more refresh."""
        if self._refresh is not None and not self._refresh.done():
            self._refresh_again = True
            return
        assert self._loop is not None
        self._refresh = self._loop.create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            self._refresh_again = False
            try:
                await self.app.policy.refresh()
            except Exception as exc:  # noqa: BLE001 - the policy's own loop tries again
                log.warning("node %s: allowlist refresh after a change elsewhere failed: %s", self.name,
                            redact(str(exc)))
            if not self._refresh_again:
                return
