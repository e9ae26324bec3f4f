"""store.nodes (migration 0014) on both backends: the nodes registry, named leases taken by one owner at a
time, recovery of dead nodes' claims; and, on PostgreSQL, the LISTEN connection of store/postgres.py."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from store import StorageError, Store
from store.nodes import LEADER, Registration
from store.postgres import CONFIG_CHANNEL, QUEUE_CHANNEL, RECONNECTED, Notifications
from store.records import NewMessage

pytestmark = pytest.mark.component

TTL = 15.0


def reg(owner: str, name: str | None = None) -> Registration:
    host, _, pid = owner.partition(":")
    return Registration(owner=owner, name=name or owner, host=host, pid=int(pid), version="0.1.0")


def msg(n: int, rcpts=("a@x.test",)) -> NewMessage:
    return NewMessage(sender="app@org.test", recipients=list(rcpts),
                      body=f"Subject: {n}\r\n\r\nhi\r\n".encode())


async def test_a_lease_has_one_owner_until_it_expires(open_store, clock):
    s = open_store()
    await s.nodes.register(reg("a:1"))
    await s.nodes.register(reg("b:2"))
    assert await s.nodes.acquire("a:1", {LEADER, "channel:x"}, TTL) == {LEADER, "channel:x"}
    assert await s.nodes.acquire("b:2", {LEADER, "channel:x", "channel:y"}, TTL) == {"channel:y"}
    clock.t += TTL - 1
    assert await s.nodes.beat("a:1", TTL, {LEADER, "channel:x"}) == {LEADER, "channel:x"}    # renewed
    clock.t += TTL - 1
    assert await s.nodes.acquire("b:2", {LEADER}, TTL) == set()         # renewed above: still a's
    clock.t += 2
    assert await s.nodes.acquire("b:2", {LEADER}, TTL) == {LEADER}      # expired: b takes it
    assert await s.nodes.beat("a:1", TTL, {LEADER, "channel:x"}) == {"channel:x"}   # a learns it lost it
    leases = {le.name: le for le in await s.nodes.leases()}
    assert leases[LEADER].owner == "b:2" and leases[LEADER].acquired_at == clock.t
    assert await s.nodes.release("a:1", {"channel:x"}) == 1
    assert await s.nodes.acquire("b:2", {"channel:x"}, TTL) == {"channel:x"}   # released: free at once


async def test_concurrent_takers_get_each_lease_once(open_store):
    s = open_store()
    owners = [f"n:{i}" for i in range(8)]
    got = await asyncio.gather(*(s.nodes.acquire(o, {LEADER, "channel:c"}, TTL) for o in owners))
    assert sum(LEADER in g for g in got) == 1 and sum("channel:c" in g for g in got) == 1


async def test_listing_says_who_is_alive_and_what_it_holds(open_store, clock):
    s = open_store()
    await s.nodes.register(reg("mx1:10", "mx1"))
    await s.nodes.register(reg("mx2:20", "mx2"))
    await s.nodes.acquire("mx1:10", {LEADER, "channel:support"}, TTL)
    await s.messages.enqueue(msg(1, ("a@x.test", "b@x.test")))
    await s.messages.claim("mx2:20", lease=300)
    nodes = {n.name: n for n in await s.nodes.list_nodes(TTL)}
    assert nodes["mx1"].alive and nodes["mx1"].leader and nodes["mx1"].channels == ("support",)
    assert nodes["mx2"].sending == 2 and not nodes["mx2"].leader
    clock.t += TTL / 2
    await s.nodes.beat("mx1:10", TTL, {LEADER, "channel:support"})
    clock.t += TTL / 2 + 1
    nodes = {n.name: n for n in await s.nodes.list_nodes(TTL)}
    assert nodes["mx1"].alive and not nodes["mx2"].alive          # mx2's heartbeat is older than TTL
    assert [n.name for n in await s.nodes.list_nodes(TTL)] == ["mx1", "mx2"]
    assert nodes["mx1"].as_dict()["channels"] == ["support"]
    await s.nodes.leave("mx1:10")
    [gone] = [n for n in await s.nodes.list_nodes(TTL) if n.name == "mx1"]
    assert not gone.alive and gone.stopped_at is not None and gone.leases == ()


async def test_claims_of_a_dead_node_go_back_to_the_queue_once(open_store, clock):
    s = open_store()
    await s.nodes.register(reg("dead:1"))
    await s.nodes.register(reg("live:2"))
    q1 = await s.messages.enqueue(msg(1))
    [c1] = await s.messages.claim("dead:1", lease=300, limit=1)
    q2 = await s.messages.enqueue(msg(2))
    [c2] = await s.messages.claim("live:2", lease=300, limit=1)
    q3 = await s.messages.enqueue(msg(3))
    await s.messages.claim("unregistered:3", lease=300, limit=1)       # not a node: left to its lease
    await s.nodes.acquire("dead:1", {"channel:x"}, TTL)
    assert {c1.message.id, c2.message.id} == {q1, q2}
    assert await s.nodes.recover_dead(TTL) == {"requeued": 0, "poisoned": 0, "leases_dropped": 0}
    clock.t += TTL + 1
    await s.nodes.beat("live:2", TTL)
    stats = await s.nodes.recover_dead(TTL)
    assert stats == {"requeued": 1, "poisoned": 0, "leases_dropped": 1}
    assert [r.status for r in await s.messages.recipients(q1)] == ["queued"]
    assert [r.status for r in await s.messages.recipients(q2)] == ["sending"]
    assert [r.status for r in await s.messages.recipients(q3)] == ["sending"]
    assert (await s.nodes.recover_dead(TTL))["requeued"] == 0           # once
    events = await s.history.events(message_id=q1)
    assert any(e.actor == "cluster" and e.reason == "recovered-lease" for e in events)
    assert await s.nodes.acquire("live:2", {"channel:x"}, TTL) == {"channel:x"}


async def test_a_message_interrupted_poison_limit_times_fails(open_store, clock):
    s = open_store()
    qid = await s.messages.enqueue(msg(1))
    for i in range(3):
        owner = f"crashy:{i}"
        await s.nodes.register(reg(owner))
        assert await s.messages.claim(owner, lease=300)
        clock.t += TTL + 1
        await s.nodes.recover_dead(TTL, poison_limit=3)
    [r] = await s.messages.recipients(qid)
    assert r.status == "failed" and r.reason == "poison"


async def test_forget_keeps_nodes_that_still_hold_claims(open_store, clock):
    s = open_store()
    await s.nodes.register(reg("old:1"))
    await s.nodes.register(reg("older:2"))
    await s.messages.enqueue(msg(1))
    await s.messages.claim("old:1", lease=300)
    clock.t += 7200
    assert await s.nodes.forget(3600) == 1
    assert [n.owner for n in await s.nodes.list_nodes(TTL)] == ["old:1"]


# ---- PostgreSQL: notifications between nodes ---------------------------------------------------------------

class Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[str, str]] = []
        self.cond = threading.Condition()

    def __call__(self, channel: str, payload: str) -> None:
        with self.cond:
            self.got.append((channel, payload))
            self.cond.notify_all()

    def wait_for(self, item: tuple[str, str], timeout: float = 5.0) -> float:
        start = time.monotonic()
        with self.cond:
            ok = self.cond.wait_for(lambda: item in self.got, timeout)
        assert ok, f"{item} not received: {self.got}"
        return time.monotonic() - start


async def test_postgresql_notifies_enqueues_and_config_changes(postgres_server, tmp_path):
    url = postgres_server.create_database()
    s = Store(url, key_file=str(tmp_path / "k")).open()
    inbox = Inbox()
    listener = s.db.listen([QUEUE_CHANNEL, CONFIG_CHANNEL], inbox)
    try:
        await asyncio.to_thread(inbox.wait_for, (RECONNECTED, ""))
        await s.messages.enqueue(msg(1))
        took = await asyncio.to_thread(inbox.wait_for, (QUEUE_CHANNEL, ""))
        await s.access.add_allowlist("10.1.0.0/16", "test")
        await asyncio.to_thread(inbox.wait_for, (CONFIG_CHANNEL, "allowlist"))
        assert took < 1.0
        before = len(inbox.got)
        await s.kv.set("x", "y")                         # not a notified table
        await s.messages.claim("w:1")                    # nor a claim
        await asyncio.sleep(0.6)
        assert len(inbox.got) == before
    finally:
        listener.stop()
        s.close()
        postgres_server.drop_database(url)


async def test_notifications_reconnect_when_the_connection_is_killed(postgres_server, tmp_path):
    import psycopg

    url = postgres_server.create_database()
    s = Store(url, key_file=str(tmp_path / "k")).open()
    inbox = Inbox()
    listener = Notifications(url, [QUEUE_CHANNEL], inbox).start()
    try:
        await asyncio.to_thread(inbox.wait_for, (RECONNECTED, ""))
        with psycopg.connect(postgres_server.url(), autocommit=True) as admin:    # the server drops it
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE application_name = 'relaybox-listen' AND datname = %s",
                          (url.rsplit("/", 1)[1],))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and inbox.got.count((RECONNECTED, "")) < 2:
            await asyncio.sleep(0.05)
        assert inbox.got.count((RECONNECTED, "")) == 2 and listener.connected
        inbox.got.clear()
        await s.messages.enqueue(msg(2))
        await asyncio.to_thread(inbox.wait_for, (QUEUE_CHANNEL, ""))
    finally:
        listener.stop()
        s.close()
        postgres_server.drop_database(url)


# ---- relaybox.cluster over a real store (SQLite: the one node) --------------------------------------------

class FakeApp:
    """What Cluster reads of the App: the store, the settings' [cluster] section, spool, policy, scheduler."""

    def __init__(self, store: Store, name: str, singletons: bool = True):
        from relaybox.cluster import ClusterConfig

        self.store = store
        self.singletons = singletons
        self.settings = type("S", (), {"section": staticmethod(
            lambda n: ClusterConfig(node_name=name, lease=3, heartbeat=0.5) if n == "cluster" else None)})()
        self.refreshes = 0
        self.wakes = 0
        app = self

        class Policy:
            async def refresh(self) -> None:
                app.refreshes += 1
                await asyncio.sleep(0.05)                 # a read of the allowlist takes a while

        class Scheduler:
            owner = None

            def notify(self) -> None:
                app.wakes += 1

        self.policy, self.scheduler = Policy(), Scheduler()


async def test_cluster_leads_holds_channels_and_hands_them_over(store):
    from relaybox.cluster import Cluster

    a, b = Cluster(FakeApp(store, "a")), Cluster(FakeApp(store, "b"))
    b.owner = "other-host:1"                       # a second node on the same database
    worker = Cluster(FakeApp(store, "w", singletons=False))
    worker.owner = "other-host:2"
    await a.start()
    await b.start()
    await worker.start()
    try:
        assert a.is_leader() and not b.is_leader() and not worker.is_leader()
        assert await a.channels({"sales", "support"}) == {"sales", "support"}
        assert await b.channels({"sales", "support"}) == set()
        assert await a.channels({"sales"}) == {"sales"}          # support given back at once
        assert await b.channels({"sales", "support"}) == {"support"}
        listing = {n.name: n for n in await store.nodes.list_nodes(3)}
        assert listing["a"].leader and listing["a"].channels == ("sales",)
        assert listing["b"].channels == ("support",) and listing["w"].alive
    finally:
        await a.stop()                              # clean stop: leases released, node marked stopped
    assert await b.channels({"sales", "support"}) == {"sales", "support"}
    await asyncio.sleep(0.7)                        # b's next heartbeat takes the free leader lease
    assert b.is_leader() and not worker.is_leader()
    listing = {n.name: n for n in await store.nodes.list_nodes(3)}
    assert not listing["a"].alive and listing["a"].stopped_at is not None
    await b.stop()
    await worker.stop()


async def test_cluster_notifications_refresh_the_policy_and_wake_the_scheduler(store):
    from relaybox.cluster import Cluster

    app = FakeApp(store, "a")
    c = Cluster(app)
    await c.start()
    try:
        c._notified(QUEUE_CHANNEL, "")
        c._notified(CONFIG_CHANNEL, "allowlist")
        c._notified(CONFIG_CHANNEL, "smtp_users")          # before the refresh ran: the same refresh
        c._notified(CONFIG_CHANNEL, "campaigns")           # nothing cached: no refresh
        await asyncio.sleep(0.02)
        assert app.wakes == 1 and app.refreshes == 1
        c._notified(CONFIG_CHANNEL, "allowlist")           # during the refresh: one more after it
        await asyncio.sleep(0.2)
        assert app.refreshes == 2
        c._notified(RECONNECTED, "")                       # after an outage: everything again
        await asyncio.sleep(0.1)
        assert app.wakes == 2 and app.refreshes == 3
    finally:
        await c.stop()


async def test_cluster_keeps_its_channels_while_the_store_fails_until_the_lease_ends(store):
    from relaybox.cluster import Cluster

    c = Cluster(FakeApp(store, "a"))
    await c.start()
    try:
        assert await c.channels({"x"}) == {"x"}
        store.db.fail_commits = OSError("disk gone")
        assert await c.channels({"x"}) == {"x"}            # not renewed, not expired either
        await asyncio.sleep(3.0 - 0.5 + 0.1)               # lease minus the heartbeat margin
        assert await c.channels({"x"}) == set() and not c.is_leader()
        assert c.error is not None and "disk gone" in c.error
        store.db.fail_commits = None
        assert await c.channels({"x"}) == {"x"}
    finally:
        store.db.fail_commits = None
        await c.stop()


async def test_recovery_at_start_on_postgresql_returns_only_dead_processes_claims(postgres_server, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from relaybox.cluster import Cluster

    url = postgres_server.create_database()
    s = Store(url, key_file=str(tmp_path / "k")).open()
    try:
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
        host = socket.gethostname()
        owners = {"dead_here": f"{host}:{int(gone.stdout)}",      # this machine, process gone
                  "alive_here": f"{host}:{os.getppid()}",         # this machine, process running
                  "node_elsewhere": "mx2:4242",                    # a live node of another machine
                  "unknown_elsewhere": "mx3:77"}                   # not registered: its lease decides
        await s.nodes.register(reg("mx2:4242"))
        qids = {}
        for key, owner in owners.items():
            qids[key] = await s.messages.enqueue(msg(len(qids)))
            assert await s.messages.claim(owner, limit=1, lease=300)
        stats = await Cluster(FakeApp(s, "me")).recover()
        assert stats["requeued"] == 1
        got = {k: [r.status for r in await s.messages.recipients(q)] for k, q in qids.items()}
        assert got == {"dead_here": ["queued"], "alive_here": ["sending"], "node_elsewhere": ["sending"],
                       "unknown_elsewhere": ["sending"]}
    finally:
        s.close()
        postgres_server.drop_database(url)


async def test_retention_runs_only_on_the_leader(store):
    from relay.config import StorageConfig
    from relaybox.app import App
    from relaybox.cluster import Cluster

    class Node(FakeApp):
        def __init__(self, name: str, owner: str):
            super().__init__(store, name)
            self.cluster = Cluster(self)
            self.cluster.owner = owner
            self.settings.relay = type("R", (), {"storage": StorageConfig()})()
            self.prunes = 0
            node = self

            class Spool:
                async def prune(self, body_days, meta_days, batch=500) -> int:
                    node.prunes += 1
                    return 0

            self.spool = Spool()

    a, b = Node("a", "host-a:1"), Node("b", "host-b:2")
    await a.cluster.start()
    await b.cluster.start()
    loops = [asyncio.create_task(App._retention_loop(n, every=0.05)) for n in (a, b)]   # type: ignore[arg-type]
    try:
        await asyncio.sleep(0.4)
        assert a.prunes >= 3 and b.prunes == 0          # b waits for the leadership, pruning nothing
    finally:
        for t in loops:
            t.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await a.cluster.stop()
        await b.cluster.stop()


async def test_postgresql_reads_survive_connections_the_server_dropped(postgres_server, tmp_path):
    import psycopg

    url = postgres_server.create_database()
    s = Store(url, key_file=str(tmp_path / "k"), readers=2).open()
    try:
        await s.nodes.register(reg("a:1"))
        await asyncio.gather(*(s.nodes.list_nodes(TTL) for _ in range(8)))      # every reader connected
        with psycopg.connect(postgres_server.url(), autocommit=True) as admin:    # as after a restart
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                          " AND application_name = 'relaybox'", (url.rsplit("/", 1)[1],))
        got = await asyncio.gather(*(s.nodes.list_nodes(TTL) for _ in range(8)))
        assert all([n.owner for n in nodes] == ["a:1"] for nodes in got)
    finally:
        s.close()
        postgres_server.drop_database(url)


async def test_postgresql_a_write_that_swallows_a_failed_statement_is_not_reported_as_committed(
        postgres_server, tmp_path):
    """On PostgreSQL a failed statement aborts the whole transaction, and COMMIT then answers ROLLBACK
    without an error: a write function that catches the failure and returns must not be told that it
    (or the writes sharing its commit) got through."""
    import psycopg

    url = postgres_server.create_database()
    s = Store(url, key_file=str(tmp_path / "k")).open()
    try:
        def swallow(fetch: bool):
            def fn(conn):
                conn.execute("INSERT INTO kv(key, value) VALUES ('swallowed', '1')")
                try:
                    cur = conn.execute("SELECT no_such_column FROM kv")
                    if fetch:                   # the failure seen (and ignored) inside the write
                        cur.fetchone()
                except psycopg.Error:
                    pass
                return "ok"
            return fn

        for fetch in (True, False):
            with pytest.raises(StorageError, match="aborted|no_such_column"):
                await s.db.write(swallow(fetch))
            assert await s.kv.get("swallowed") is None
        await s.kv.set("after", "2")                       # the writer goes on with the next write
        assert await s.kv.get("after") == "2"
    finally:
        s.close()
        postgres_server.drop_database(url)
