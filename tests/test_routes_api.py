"""Routes through the running admin API (a real App in the test's loop, real aiosmtpd smarthosts): create,
replace, change, remove with validation and the full test on save, write-only secrets, config routes
read-only; a route created by the API takes the next message without a restart; status and metrics after
deliveries; selection by AUTH user and by X-Relaybox-Route (removed before sending)."""

from __future__ import annotations

import asyncio
import smtplib
import time

import pytest

from tests.admin_support import running, smtp_send
from tests.peers.ports import free_port
from tests.peers.sink import Sink

pytestmark = pytest.mark.component

PW = "Route-Secret-Pw-7731"
APP_PW = "app1-Secret-pw-88"


def hub_body(port: int, **kw) -> dict:
    return {"host": "127.0.0.1", "port": port, "tls": "none", "allow_plaintext_auth": True,
            "username": "relay@org.test", "password": PW, **kw}


async def until(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.1)


@pytest.fixture
async def hub():
    s = await Sink(users={"relay@org.test": PW}, auth_require_tls=False).start()
    yield s
    await s.stop()


async def test_create_change_remove_with_validation_tests_and_secrets(tmp_path, hub):
    config_routes = [{"name": "cfg", "host": "127.0.0.1", "port": hub.port, "tls": "none"}]
    async with running(tmp_path, routes=config_routes) as (app, api):
        st, r = await api.call("POST", "/api/v1/routes",
                               json={"name": "hub", **hub_body(hub.port, from_domains=["org.test"]),
                                     "test_rcpt": "probe@dest.test"})
        assert st == 201, r
        assert r["test"]["result"] == "Connection succeeded" and r["test"]["rcpt"] == "probe@dest.test"
        assert r["source"] == "api" and r["password_set"] and "password" not in r and r["port"] == hub.port
        assert ("RCPT", "probe@dest.test") in [c[:2] for c in hub.commands] and hub.messages == []
        dup = await api.call("POST", "/api/v1/routes", json={"name": "hub", **hub_body(hub.port)})
        assert dup[0] == 409
        for bad, key in (({"port": 70000}, "port"), ({"port": 0}, "port"), ({"tls": "ssl"}, "tls"),
                         ({"name": "Bad Name"}, "name"), ({"from_addresses": ["nope"]}, "from_addresses"),
                         ({"host": "bad host"}, "host"),
                         ({"client_networks": ["10.0.0.0/99"]}, "client_networks"),
                         ({"colour": "blue"}, "colour")):
            st, e = await api.call("POST", "/api/v1/routes?validate=skip",
                                   json={"name": "x1", **hub_body(hub.port), **bad})
            assert st == 422 and key in e["error"]["message"], (bad, e)
        assert (await api.call("GET", "/api/v1/routes/x1"))[0] == 404

        # a wrong password is saved, and the answer says the test failed (Postal-like)
        st, r = await api.call("PATCH", "/api/v1/routes/hub", json={"password": "wrong-" + PW})
        assert st == 200 and r["test"]["step"] == "AUTH", r
        assert r["test"]["result"] == ("Connection failed at AUTH: 535 5.7.8 Authentication credentials"
                                       " invalid")
        st, r = await api.call("PATCH", "/api/v1/routes/hub", json={"password": PW})
        assert r["test"]["ok"]
        # PUT without the password (or with ***) keeps it; the port may fall back to the TLS mode's
        st, r = await api.call("PUT", "/api/v1/routes/hub",
                               json={k: v for k, v in hub_body(hub.port).items() if k != "password"})
        assert st == 200 and r["test"]["ok"] and r["from_domains"] == [] and r["password_set"]
        st, r = await api.call("PATCH", "/api/v1/routes/hub",
                               json={"password": "***", "sender": "app@org.test"})
        assert r["test"]["ok"] and r["test"]["sender"] == "app@org.test"
        # validate=strict: a failed test saves nothing
        st, e = await api.call("PATCH", "/api/v1/routes/hub?validate=strict", json={"port": free_port()})
        assert st == 422 and e["error"]["test"]["step"] == "CONNECT", e
        assert (await api.call("GET", "/api/v1/routes/hub"))[1]["port"] == hub.port
        st, r = await api.call("PATCH", "/api/v1/routes/hub?validate=skip",
                               json={"port": 25, "tls": "implicit"})
        assert st == 200 and r["test"] is None and r["port"] == 25
        st, r = await api.call("PUT", "/api/v1/routes/hub?validate=skip", json={"host": "smtp.hub.test",
                                                                                "tls": "implicit"})
        assert r["port"] == 465 and r["password_set"]     # no port: implicit TLS 465; the password kept

        # one default; config routes are read-only here
        assert (await api.call("POST", "/api/v1/routes?validate=skip",
                               json={"name": "other", **hub_body(hub.port), "default": True}))[0] == 201
        st, e = await api.call("PATCH", "/api/v1/routes/hub?validate=skip", json={"default": True})
        assert st == 409 and "default" in e["error"]["message"]
        assert (await api.call("PATCH", "/api/v1/routes/cfg", json={"port": 2525}))[0] == 409
        assert (await api.call("DELETE", "/api/v1/routes/cfg"))[0] == 409

        st, r = await api.call("GET", "/api/v1/routes")
        assert [(x["name"], x["source"]) for x in r["items"]] == [("cfg", "config"), ("hub", "api"),
                                                                   ("other", "api")]
        assert r["items"][1]["status"] == {"state": "unknown", "last_success_at": None, "last_error": None,
                                           "last_error_at": None, "in_flight": 0, "delivered": 0,
                                           "deferred": 0, "failed": 0, "blocklisted": []}
        raw = await app.store.db.read(lambda c: [row[0] for row in c.execute("SELECT settings FROM routes")])
        assert all(PW not in text for text in raw) and any("rbx1:" in text for text in raw)
        for path in ("/api/v1/routes", "/api/v1/routes/other", "/api/v1/openapi.json"):
            assert PW not in str((await api.call("GET", path))[1])
        st, r = await api.call("DELETE", "/api/v1/routes/other")
        assert st == 200 and r == {"removed": "other"}
        assert (await api.call("DELETE", "/api/v1/routes/other"))[0] == 404
        assert (await api.call("POST", "/api/v1/routes/other/test"))[0] == 404
        st, doc = await api.call("GET", "/api/v1/openapi.json")
        assert {"get", "post"} <= set(doc["paths"]["/api/v1/routes"])
        assert {"put", "patch", "delete", "get"} <= set(doc["paths"]["/api/v1/routes/{name}"])


async def test_test_action_runs_mail_rcpt_rset_and_reports_the_refusal(tmp_path, hub):
    hub.faults.rcpt["nobody@dest.test"] = "550 5.1.1 <nobody@dest.test>: Recipient address rejected"
    async with running(tmp_path, routes=[{"name": "cfg", **hub_body(hub.port)}]) as (app, api):
        st, r = await api.call("POST", "/api/v1/routes/cfg/test", json={"rcpt": "nobody@dest.test"})
        assert st == 200 and not r["ok"] and r["step"] == "RCPT", r
        assert r["result"] == ("Connection failed at RCPT: 550 5.1.1 <nobody@dest.test>: Recipient address"
                               " rejected")
        st, r = await api.call("POST", "/api/v1/routes/cfg/test", json={"rcpt": "ok@dest.test", "send": True})
        assert r["ok"] and r["sent"] and hub.messages[-1].rcpts == ["ok@dest.test"]
        st, r = await api.call("POST", "/api/v1/routes/cfg/test", json={"rcpt": "a@b.test\r\nQUIT"})
        assert st == 422
        assert PW not in str(r)


async def test_an_api_route_takes_the_next_message_and_its_status_follows(tmp_path, hub):
    async with running(tmp_path, scheduler=True) as (app, api):
        st, r = await api.call("POST", "/api/v1/routes?validate=skip",
                               json={"name": "status-hub", **hub_body(hub.port), "default": True})
        assert st == 201
        code, _ = await asyncio.to_thread(smtp_send, app.smtp_port, "app@org.test", ["a@dest.test"],
                                          subject="first")
        assert code == 250
        assert await until(lambda: asyncio.sleep(0, hub.messages)), "not delivered through the new route"
        assert hub.messages[0].auth_user == "relay@org.test"

        async def status(pred):
            async def check():
                s = (await api.call("GET", "/api/v1/routes/status-hub"))[1]["status"]
                return s if pred(s) else None
            return await until(check)
        s = await status(lambda s: s["delivered"] == 1)
        assert s and s["state"] == "up" and s["last_success_at"] and s["in_flight"] == 0, s

        await api.call("PATCH", "/api/v1/routes/status-hub?validate=skip", json={"password": "wrong-" + PW})
        code, _ = await asyncio.to_thread(smtp_send, app.smtp_port, "app@org.test", ["b@dest.test"],
                                          subject="second")
        assert code == 250
        s = await status(lambda s: s["deferred"] == 1)
        assert s and s["state"] == "failing", s
        assert s["last_error"] == "535 5.7.8 Authentication credentials invalid" and s["last_error_at"]
        st, text = await api.call("GET", "/metrics")
        text = text.decode()
        assert 'relaybox_route_up{route="status-hub"} 0.0' in text
        assert 'relaybox_route_results_total{result="delivered",route="status-hub"} 1.0' in text
        assert 'relaybox_route_results_total{result="deferred",route="status-hub"} 1.0' in text
        await app.routes.flush()                     # the status survives in the store
        stored = await app.store.routes.get("status-hub")
        assert (stored.delivered, stored.deferred, stored.state) == (1, 1, "failing")
        assert stored.last_error == "535 5.7.8 Authentication credentials invalid"


def _submit(port: int, *, login: tuple[str, str] | None = None, headers: str = "", subject: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo("client.test")
        if login:
            s.login(*login)
        s.mail("app@org.test")
        s.rcpt("r@dest.test")
        code, _ = s.data((f"From: App <app@org.test>\r\nTo: r@dest.test\r\nSubject: {subject}\r\n{headers}"
                          f"Message-ID: <{subject}@org.test>\r\n\r\nhello\r\n").encode())
        return code


async def test_selection_by_auth_user_and_by_header_which_is_removed(tmp_path):
    by_user, by_header, by_domain = [await Sink().start() for _ in range(3)]
    smtp = {"users": [{"username": "app1", "password": APP_PW}], "require_tls_for_auth": False}
    try:
        async with running(tmp_path, scheduler=True, smtp=smtp) as (app, api):
            for name, sink, extra in (("by-user", by_user, {"auth_users": ["app1"]}),
                                      ("by-header", by_header, {}),
                                      ("by-domain", by_domain, {"from_domains": ["org.test"]})):
                st, r = await api.call("POST", "/api/v1/routes?validate=skip",
                                       json={"name": name, "host": "127.0.0.1", "port": sink.port,
                                             "tls": "none", **extra})
                assert st == 201, r
            assert await asyncio.to_thread(_submit, app.smtp_port, login=("app1", APP_PW), subject="u") == 250
            assert await asyncio.to_thread(_submit, app.smtp_port, subject="h",
                                           headers="X-Relaybox-Route: By-Header\r\n") == 250
            assert await asyncio.to_thread(_submit, app.smtp_port, subject="d") == 250
            for sink, subject in ((by_user, b"Subject: u"), (by_header, b"Subject: h"),
                                  (by_domain, b"Subject: d")):
                assert await until(lambda s=sink: asyncio.sleep(0, s.messages)), subject
                [m] = sink.messages
                assert subject in m.data
            assert b"x-relaybox-route" not in by_header.messages[0].data.lower()
            st, r = await api.call("GET", "/api/v1/routes/resolve",
                                   params={"from": "app@org.test", "auth_user": "app1"})
            assert r["route"] == "by-user"
            st, r = await api.call("GET", "/api/v1/routes/resolve", params={"from": "app@org.test"})
            assert r["route"] == "by-domain"
    finally:
        for s in (by_user, by_header, by_domain):
            await s.stop()


async def test_a_reload_seeds_the_config_routes_and_the_api_shows_them(tmp_path, hub):
    from relaybox.app import App
    from relaybox.settings import load
    from tests.admin_support import TOKEN, Api
    from tests.peers.relaybox_proc import write_config

    smtp_port, admin_port = free_port(), free_port()
    path = str(tmp_path / "relaybox.toml")

    def conf(routes: list[dict]) -> None:
        write_config(path, {"smtp": {"listen": [f"127.0.0.1:{smtp_port}"], "hostname": "relay.test"},
                            "storage": {"path": str(tmp_path / "relaybox.db"), "min_free": 0.0},
                            "admin": {"listen": f"127.0.0.1:{admin_port}", "tokens": [TOKEN]},
                            "[[routes]]": routes})

    conf([{"name": "old", "host": "127.0.0.1", "port": hub.port, "tls": "none"}])
    app = App(load(path))
    await app.start()
    api = Api(f"http://127.0.0.1:{admin_port}", TOKEN)
    try:
        st, _ = await api.call("POST", "/api/v1/routes?validate=skip",
                               json={"name": "mine", "host": "127.0.0.1", "port": hub.port, "tls": "none"})
        assert st == 201
        conf([{"name": "new", "host": "127.0.0.1", "port": hub.port, "tls": "none", "default": True}])
        await app.reload()
        st, r = await api.call("GET", "/api/v1/routes")
        assert [(x["name"], x["source"]) for x in r["items"]] == [("mine", "api"), ("new", "config")]
        assert app.routes.router.default is not None and app.routes.router.default.name == "new"
        assert app.scheduler is not None and app.scheduler.delivery.router is app.routes.router
    finally:
        await api.close()
        await app.stop(timeout=5)
