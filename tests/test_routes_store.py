"""store.routes contract on every backend of STORE_BACKENDS (SQLite, PostgreSQL): create, replace, delete,
config seeds, one default, write-only passwords encrypted at rest, the change version, the status written by
the delivery engine, and the route a message named (messages.route_hint)."""

from __future__ import annotations

import pytest

from store.records import NewMessage
from store.routes import (
    DefaultTaken,
    RouteDelta,
    RouteExists,
    RouteMissing,
    RouteReadOnly,
    StoredRoute,
)

pytestmark = pytest.mark.component

PW = "route-secret-Qx19"


def hub(name: str = "hub", **kw) -> StoredRoute:
    return StoredRoute(name, {"host": "smtp.hub.test", "port": 587, "username": "relay", "password": PW,
                              "from_domains": ["org.test"], **kw})


async def test_create_get_list_replace_delete_and_the_version(open_store, clock):
    s = open_store()
    assert await s.routes.version() == 0 and await s.routes.list() == []
    created = await s.routes.create(hub())
    assert created.source == "api" and created.settings["password"] == PW and created.created_at == clock.t
    v1 = await s.routes.version()
    assert v1 > 0
    with pytest.raises(RouteExists):
        await s.routes.create(hub())
    clock.t += 10
    replaced = await s.routes.replace(hub(port=2525))
    assert replaced.settings["port"] == 2525 and replaced.updated_at == clock.t
    assert replaced.created_at == created.created_at
    assert await s.routes.version() > v1
    with pytest.raises(RouteMissing):
        await s.routes.replace(hub("nope"))
    await s.routes.create(hub("alpha"))
    assert [r.name for r in await s.routes.list()] == ["alpha", "hub"]
    assert await s.routes.delete("alpha") and not await s.routes.delete("alpha")
    s.close()
    s2 = open_store()                                   # a restart keeps everything
    again = await s2.routes.get("hub")
    assert again is not None and again.settings["port"] == 2525 and again.settings["password"] == PW
    assert await s2.routes.get("alpha") is None


async def test_one_default_at_most(open_store):
    s = open_store()
    await s.routes.create(hub("a", default=True))
    with pytest.raises(DefaultTaken):
        await s.routes.create(hub("b", default=True))
    await s.routes.create(hub("b"))
    with pytest.raises(DefaultTaken):
        await s.routes.replace(hub("b", default=True))
    await s.routes.replace(hub("a"))                    # a gives the default up: b may take it
    assert (await s.routes.replace(hub("b", default=True))).default


async def test_seed_upserts_config_routes_and_removes_the_ones_gone(open_store):
    s = open_store()
    await s.routes.create(hub("api-route"))
    assert await s.routes.seed([hub("cfg1"), hub("cfg2")]) == []
    rows = {r.name: r.source for r in await s.routes.list()}
    assert rows == {"api-route": "api", "cfg1": "config", "cfg2": "config"}
    with pytest.raises(RouteReadOnly):
        await s.routes.replace(hub("cfg1", port=25))
    with pytest.raises(RouteReadOnly):
        await s.routes.delete("cfg1")
    assert (await s.routes.replace(hub("cfg1", port=25), allow_config=True)).settings["port"] == 25
    v = await s.routes.version()
    assert await s.routes.seed([hub("cfg2", port=465)]) == ["cfg1"]        # cfg1 left the config
    assert await s.routes.version() > v
    assert {r.name for r in await s.routes.list()} == {"api-route", "cfg2"}
    assert (await s.routes.get("cfg2")).settings["port"] == 465
    await s.routes.create(hub("dflt", default=True))
    with pytest.raises(DefaultTaken):                   # the config's default meets an API one: nothing saved
        await s.routes.seed([hub("cfg3", default=True)])
    assert await s.routes.get("cfg3") is None and await s.routes.get("cfg2") is not None


async def test_password_is_encrypted_at_rest(open_store):
    s = open_store()
    await s.routes.create(hub())
    raw = await s.db.read(lambda conn: conn.execute("SELECT settings FROM routes WHERE name='hub'")
                          .fetchone()[0])
    assert PW not in raw and "rbx1:" in raw and "smtp.hub.test" in raw


async def test_status_deltas_add_up_and_newer_wins(open_store):
    s = open_store()
    await s.routes.create(hub())
    v = await s.routes.version()
    await s.routes.record_status([RouteDelta("hub", delivered=3, deferred=1, state="up",
                                             last_success_at=100.0),
                                  RouteDelta("gone", delivered=5)])           # a removed route: skipped
    await s.routes.record_status([RouteDelta("hub", failed=2, state="failing",
                                             last_error="535 5.7.8 Authentication credentials invalid",
                                             last_error_at=200.0),
                                  RouteDelta("hub", last_success_at=50.0,    # older than the stored one
                                             last_error="old", last_error_at=150.0)])
    r = await s.routes.get("hub")
    assert (r.delivered, r.deferred, r.failed, r.state) == (3, 1, 2, "failing")
    assert r.last_success_at == 100.0 and r.last_error_at == 200.0
    assert r.last_error == "535 5.7.8 Authentication credentials invalid"
    assert await s.routes.version() == v                # status is not a settings change
    await s.routes.replace(hub(port=25))
    assert (await s.routes.get("hub")).delivered == 3   # a save keeps the status


async def test_a_message_keeps_the_route_it_named(open_store):
    s = open_store()
    qid = await s.messages.enqueue(NewMessage(sender="app@org.test", recipients=["a@x.test"],
                                              body=b"Subject: x\r\n\r\nhi\r\n", auth_user="app1",
                                              client_ip="10.1.2.3", route_hint="hub"))
    m = await s.messages.get(qid)
    assert (m.route_hint, m.auth_user, m.client_ip) == ("hub", "app1", "10.1.2.3")
    plain = await s.messages.enqueue(NewMessage(sender="app@org.test", recipients=["a@x.test"],
                                                body=b"Subject: y\r\n\r\nhi\r\n"))
    assert (await s.messages.get(plain)).route_hint is None
