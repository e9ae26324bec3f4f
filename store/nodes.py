"""The nodes registry and named leases: several relaybox processes on one database (migration 0014).

    nodes = store.nodes
    await nodes.register(Registration(owner="mx1:4242", name="mx1", host="mx1", pid=4242, version="0.1.0"))
    held = await nodes.beat("mx1:4242", ttl=15.0, renew={"leader", "channel:support"})   # heartbeat
    got = await nodes.acquire("mx1:4242", {"channel:sales"}, ttl=15.0)    # the ones now ours
    await nodes.release("mx1:4242", {"channel:sales"})
    stats = await nodes.recover_dead(ttl=15.0, poison_limit=3)             # leases of dead nodes
    listing = await nodes.list_nodes(ttl=15.0)                                # -> list[Node]
    await nodes.leave("mx1:4242")                                          # a clean stop

A node is alive while its heartbeat is younger than the lease time ``ttl`` and it has not stopped. A lease
(``leader``, ``channel:<name>``) is one row; taking it is one upsert that succeeds only when the row is
ours or has expired, so two nodes asking at once never both get it (PostgreSQL: the row lock of the
conflicting upsert, then the ``WHERE`` seen on the committed row). Times are the nodes' clocks: keep them
synchronized (NTP), the skew well under ``ttl``.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from store.errors import guarded
from store.messages import add_event, set_status
from store.postgres import dialect
from store.sqlite import Database
from store.states import Status

Conn = sqlite3.Connection
LEADER = "leader"
CHANNEL_PREFIX = "channel:"


@dataclass(frozen=True)
class Registration:
    """What a starting node says about itself."""

    owner: str          # hostname:pid, the lease_owner of its claims
    name: str           # [cluster] node_name, else the owner
    host: str
    pid: int
    version: str


@dataclass(frozen=True)
class Lease:
    name: str
    owner: str
    expires_at: float
    acquired_at: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Node:
    owner: str
    name: str
    host: str
    pid: int
    version: str
    started_at: float
    heartbeat_at: float
    stopped_at: float | None
    alive: bool
    leases: tuple[str, ...]       # the leases it holds, unexpired
    sending: int                  # its recipients in 'sending' (claims not yet completed)

    @property
    def leader(self) -> bool:
        return LEADER in self.leases

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(n[len(CHANNEL_PREFIX):] for n in self.leases if n.startswith(CHANNEL_PREFIX))

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["leases"] = list(self.leases)
        out["leader"] = self.leader
        out["channels"] = list(self.channels)
        return out


def _node(r: Mapping[str, Any], now: float, ttl: float, leases: dict[str, list[str]],
          sending: dict[str, int]) -> Node:
    alive = r["stopped_at"] is None and r["heartbeat_at"] >= now - ttl
    return Node(owner=r["owner"], name=r["name"], host=r["host"], pid=int(r["pid"]), version=r["version"],
                started_at=float(r["started_at"]), heartbeat_at=float(r["heartbeat_at"]),
                stopped_at=None if r["stopped_at"] is None else float(r["stopped_at"]), alive=alive,
                leases=tuple(sorted(leases.get(r["owner"], ()))), sending=int(sending.get(r["owner"], 0)))


def _take(conn: Conn, owner: str, names: Iterable[str], ttl: float, now: float) -> set[str]:
    """Take or renew each lease: the row is created, or updated when it is ours or expired."""
    got: set[str] = set()
    for name in sorted(set(names)):
        row = conn.execute(
            "INSERT INTO leases(name, owner, expires_at, acquired_at) VALUES (?,?,?,?)"
            " ON CONFLICT(name) DO UPDATE SET owner=excluded.owner, expires_at=excluded.expires_at,"
            " acquired_at=CASE WHEN leases.owner = excluded.owner THEN leases.acquired_at"
            "                  ELSE excluded.acquired_at END"
            " WHERE leases.owner = excluded.owner OR leases.expires_at < excluded.acquired_at"
            " RETURNING name", (name, owner, now + ttl, now)).fetchone()
        if row is not None:
            got.add(name)
    return got


def _dead_sending(conn: Conn, now: float, ttl: float) -> list[Mapping[str, Any]]:
    """Recipients in 'sending' whose lease owner is a registered node that died or stopped. Owners that
    never registered (a process without the cluster component) are left to their lease's expiry."""
    return conn.execute(
        "SELECT r.id, r.message_id, r.lease_owner FROM recipients r JOIN nodes n ON n.owner = r.lease_owner"
        " WHERE r.status = 'sending' AND (n.stopped_at IS NOT NULL OR n.heartbeat_at < ?)"
        " ORDER BY r.id"
        # PostgreSQL: rows a claim holds right now are skipped (they are that claim's, not the dead node's)
        + (" FOR UPDATE OF r SKIP LOCKED" if dialect(conn) == "postgresql" else ""),
        (now - ttl,)).fetchall()


def _recover_dead(conn: Conn, now: float, ttl: float, poison_limit: int) -> dict[str, int]:
    """Recipients leased by dead nodes go back to the queue (event 'recovered-lease', actor 'cluster'); a
    message whose processing was interrupted ``poison_limit`` times fails as 'poison' (as at a restart)."""
    stats = {"requeued": 0, "poisoned": 0}
    rows = _dead_sending(conn, now, ttl)
    crashes: dict[str, int] = {}
    for r in rows:
        mid = r["message_id"]
        if mid not in crashes:      # poison accounting: this interruption counts (claims do not write it)
            got = conn.execute("UPDATE messages SET crash_count = crash_count + 1 WHERE id=?"
                               " RETURNING crash_count", (mid,)).fetchone()
            crashes[mid] = int(got[0]) if got else 0
        if crashes[mid] >= poison_limit:
            set_status(conn, r["id"], Status.SENDING, Status.FAILED, now,
                       "reason='poison', leased_until=NULL, lease_owner=NULL")
            add_event(conn, now, mid, r["id"], Status.FAILED, "cluster", "poison",
                      {"text": f"processing was interrupted {poison_limit} times", "node": r["lease_owner"]})
            stats["poisoned"] += 1
        else:
            set_status(conn, r["id"], Status.SENDING, Status.QUEUED, now,
                       "leased_until=NULL, lease_owner=NULL")
            add_event(conn, now, mid, r["id"], Status.QUEUED, "cluster", "recovered-lease",
                      {"node": r["lease_owner"]})
            stats["requeued"] += 1
    cur = conn.execute("DELETE FROM leases WHERE owner IN (SELECT owner FROM nodes"
                       " WHERE stopped_at IS NOT NULL OR heartbeat_at < ?)", (now - ttl,))
    stats["leases_dropped"] = max(0, cur.rowcount)
    return stats


class NodeStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock

    async def register(self, reg: Registration) -> None:
        """The node's row, (re)started now."""
        now = self.clock()
        await self.db.write(guarded(lambda c: c.execute(
            "INSERT INTO nodes(owner, name, host, pid, version, started_at, heartbeat_at)"
            " VALUES (?,?,?,?,?,?,?)"
            " ON CONFLICT(owner) DO UPDATE SET name=excluded.name, host=excluded.host, pid=excluded.pid,"
            " version=excluded.version, started_at=excluded.started_at, heartbeat_at=excluded.heartbeat_at,"
            " stopped_at=NULL", (reg.owner, reg.name, reg.host, reg.pid, reg.version, now, now))))

    async def beat(self, owner: str, ttl: float, renew: Iterable[str] = ()) -> set[str]:
        """Heartbeat and renewal of the leases in ``renew`` in one write; returns those still ours."""
        now = self.clock()
        names = set(renew)

        def _do(conn: Conn) -> set[str]:
            conn.execute("UPDATE nodes SET heartbeat_at=?, stopped_at=NULL WHERE owner=?", (now, owner))
            return _take(conn, owner, names, ttl, now)
        return await self.db.write(guarded(_do))

    async def acquire(self, owner: str, names: Iterable[str], ttl: float) -> set[str]:
        """Take the leases that are free or expired (renew ours); returns every one of ``names`` now ours."""
        now = self.clock()
        wanted = set(names)
        if not wanted:
            return set()
        return await self.db.write(guarded(lambda c: _take(c, owner, wanted, ttl, now)))

    async def release(self, owner: str, names: Iterable[str] | None = None) -> int:
        """Give leases back at once (all of the owner's when ``names`` is None)."""
        wanted = None if names is None else sorted(set(names))

        def _do(conn: Conn) -> int:
            if wanted is None:
                return max(0, conn.execute("DELETE FROM leases WHERE owner=?", (owner,)).rowcount)
            n = 0
            for name in wanted:
                cur = conn.execute("DELETE FROM leases WHERE owner=? AND name=?", (owner, name))
                n += max(0, cur.rowcount)
            return n
        if wanted == []:
            return 0
        return await self.db.write(guarded(_do))

    async def leave(self, owner: str) -> None:
        """A clean stop: every lease released, the node marked stopped (others see it gone at once)."""
        now = self.clock()

        def _do(conn: Conn) -> None:
            conn.execute("DELETE FROM leases WHERE owner=?", (owner,))
            conn.execute("UPDATE nodes SET stopped_at=? WHERE owner=?", (now, owner))
        await self.db.write(guarded(_do))

    async def recover_dead(self, ttl: float, poison_limit: int = 3) -> dict[str, int]:
        """Recipients leased by dead or stopped nodes back to the queue, their leases dropped."""
        now = self.clock()
        return await self.db.write(guarded(lambda c: _recover_dead(c, now, ttl, poison_limit)))

    async def forget(self, older_than: float) -> int:
        """Rows of nodes dead for longer than ``older_than`` seconds (and holding nothing) are removed."""
        cutoff = self.clock() - older_than
        return await self.db.write(guarded(lambda c: max(0, c.execute(
            "DELETE FROM nodes WHERE heartbeat_at < ? AND NOT EXISTS (SELECT 1 FROM recipients r WHERE"
            " r.status='sending' AND r.lease_owner = nodes.owner)", (cutoff,)).rowcount)))

    async def list_nodes(self, ttl: float) -> list[Node]:
        """Every known node, alive ones first (then by name), with its leases and recipients in sending."""
        now = self.clock()

        def _q(conn: Conn) -> list[Node]:
            leases: dict[str, list[str]] = {}
            for r in conn.execute("SELECT name, owner FROM leases WHERE expires_at >= ?", (now,)):
                leases.setdefault(r["owner"], []).append(r["name"])
            sending = {r[0]: int(r[1]) for r in conn.execute(
                "SELECT lease_owner, COUNT(*) FROM recipients"
                " WHERE status='sending' AND lease_owner IS NOT NULL GROUP BY lease_owner")}
            rows = conn.execute("SELECT * FROM nodes ORDER BY name, owner").fetchall()
            nodes = [_node(r, now, ttl, leases, sending) for r in rows]
            return sorted(nodes, key=lambda n: (not n.alive, n.name, n.owner))
        return await self.db.read(guarded(_q))

    async def sending_owners(self) -> list[str]:
        """The lease owners of recipients in 'sending' (registered as nodes or not)."""
        def _q(conn: Conn) -> list[str]:
            return [r[0] for r in conn.execute(
                "SELECT DISTINCT lease_owner FROM recipients"
                " WHERE status='sending' AND lease_owner IS NOT NULL ORDER BY lease_owner")]
        return await self.db.read(guarded(_q))

    async def leases(self) -> list[Lease]:
        """Every lease row (expired ones included), by name."""
        def _q(conn: Conn) -> list[Lease]:
            return [Lease(r["name"], r["owner"], float(r["expires_at"]), float(r["acquired_at"]))
                    for r in conn.execute("SELECT * FROM leases ORDER BY name")]
        return await self.db.read(guarded(_q))
