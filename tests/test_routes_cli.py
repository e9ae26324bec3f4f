"""``relaybox routes add/edit/list/show/test/remove`` as real processes on one database, against a real
aiosmtpd smarthost; a running relaybox (App) follows a change made by the CLI within a second."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import pytest

from tests.admin_support import running
from tests.peers.relaybox_proc import write_config
from tests.peers.sink import Sink

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PW = "Cli-Route-Pw-4410"


async def cli(cfg, *args, stdin: str | None = None) -> tuple[int, str]:
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "relaybox.cli", "-c", str(cfg), "routes",
                                             *args, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(p.communicate(stdin.encode() if stdin else None), 60)
    return p.returncode, out.decode()


@pytest.fixture
async def hub():
    s = await Sink(users={"relay@org.test": PW}, auth_require_tls=False).start()
    yield s
    await s.stop()


def config(tmp_path, **sections) -> str:
    cfg = tmp_path / "relaybox.toml"
    write_config(str(cfg), {"smtp": {"hostname": "relay.test"}, "storage": {"path": str(tmp_path / "db")},
                            **sections})
    return str(cfg)


async def test_add_edit_list_show_test_remove(tmp_path, hub):
    cfg = config(tmp_path)
    base = ["--host", "127.0.0.1", "--port", str(hub.port), "--tls", "none", "--allow-plaintext-auth",
            "--username", "relay@org.test", "--password-stdin", "--from-domain", "org.test"]
    rc, out = await cli(cfg, "add", "hub", *base, "--rcpt", "probe@dest.test", stdin=PW + "\n")
    assert rc == 0 and out.splitlines() == ["Connection succeeded", "route hub added"], out
    assert ("RCPT", "probe@dest.test") in [c[:2] for c in hub.commands]
    rc, out = await cli(cfg, "add", "hub", *base, stdin=PW + "\n")
    assert rc == 2 and "exists" in out
    # a wrong password: saved, and said so; --strict: not saved
    rc, out = await cli(cfg, "add", "bad", *base, stdin="wrong-pw\n")
    assert rc == 0 and out.splitlines() == [
        "Connection failed at AUTH: 535 5.7.8 Authentication credentials invalid",
        "route bad added (its test failed)"], out
    rc, out = await cli(cfg, "add", "strict", *base, "--strict", stdin="wrong-pw\n")
    assert rc == 1 and "not saved (--strict)" in out
    rc, out = await cli(cfg, "add", "Bad_Name", "--host", "h.test", "--no-test")
    assert rc == 2 and "routes.Bad_Name.name: expected a slug" in out
    rc, out = await cli(cfg, "add", "np", "--host", "h.test", "--port", "70000", "--no-test")
    assert rc == 2 and "routes.np.port: expected 1 to 65535" in out
    # edit: only what is given changes; the password stays
    rc, out = await cli(cfg, "edit", "hub", "--default", "--sender", "app@org.test")
    assert rc == 0 and out.splitlines() == ["Connection succeeded", "route hub saved"], out
    rc, out = await cli(cfg, "show", "hub", "--json")
    shown = json.loads(out)
    assert shown["default"] and shown["sender"] == "app@org.test" and shown["password_set"]
    assert shown["from_domains"] == ["org.test"] and shown["source"] == "api" and PW not in out
    rc, out = await cli(cfg, "list")
    assert rc == 0 and "hub (default): 127.0.0.1:" in out and "[api] state=unknown" in out and PW not in out
    assert "bad: 127.0.0.1" in out and "strict" not in out
    # the full test: MAIL FROM the route's sender, RCPT refused with the server's words
    hub.faults.rcpt["nobody@dest.test"] = "550 5.1.1 <nobody@dest.test>: User unknown"
    rc, out = await cli(cfg, "test", "hub", "--rcpt", "nobody@dest.test")
    assert rc == 1 and "C: MAIL FROM:<app@org.test>" in out and PW not in out
    assert out.strip().splitlines()[-1] == ("Connection failed at RCPT: 550 5.1.1 <nobody@dest.test>: User"
                                            " unknown")
    rc, out = await cli(cfg, "test", "hub", "--rcpt", "ok@dest.test", "--send", "-q")
    assert rc == 0 and out.strip().splitlines()[-1] == "Connection succeeded (test message accepted)"
    assert f"route hub: 127.0.0.1 port {hub.port} (none)" in out
    assert hub.messages[-1].rcpts == ["ok@dest.test"]
    rc, out = await cli(cfg, "remove", "bad")
    assert rc == 0 and "route bad removed" in out
    rc, out = await cli(cfg, "remove", "bad")
    assert rc == 2 and "no route named 'bad'" in out
    rc, out = await cli(cfg, "test", "bad")
    assert rc == 2 and "no route named 'bad' (routes: hub)" in out


async def test_the_default_port_is_shown_and_config_routes_are_read_only(tmp_path):
    cfg = config(tmp_path, **{"[[routes]]": [{"name": "m365", "host": "127.0.0.1", "tls": "implicit"}]})
    rc, out = await cli(cfg, "list")
    assert rc == 0 and "m365: 127.0.0.1:465 tls=implicit" in out and "None" not in out, out
    rc, out = await cli(cfg, "test", "m365", "--timeout", "2", "-q")
    assert rc == 1 and "route m365: 127.0.0.1 port 465 (implicit)" in out
    assert "Connection failed at CONNECT: " in out
    async with running(tmp_path, routes=[{"name": "m365", "host": "127.0.0.1", "tls": "implicit"}],
                       storage={"path": str(tmp_path / "db")}):
        pass                                          # a start seeds the config's routes into the store
    rc, out = await cli(cfg, "edit", "m365", "--port", "2465", "--no-test")
    assert rc == 2 and "defined in the config file" in out
    rc, out = await cli(cfg, "remove", "m365")
    assert rc == 2 and "defined in the config file" in out


async def test_a_running_relaybox_follows_a_cli_change_within_a_second(tmp_path, hub):
    async with running(tmp_path) as (app, api):
        cfg = config(tmp_path, storage={"path": app.settings.relay.storage.path})
        assert app.routes.router.get("live") is None
        rc, out = await cli(cfg, "add", "live", "--host", "127.0.0.1", "--port", str(hub.port),
                            "--tls", "none", "--from-domain", "org.test", "--no-test")
        assert rc == 0, out
        changed = time.monotonic()
        while app.routes.router.get("live") is None and time.monotonic() - changed < 5:
            await asyncio.sleep(0.05)
        assert app.routes.router.get("live") is not None
        assert time.monotonic() - changed < 1.5          # polled every second (+ the scheduling slack)
        st, r = await api.call("GET", "/api/v1/routes/resolve", params={"from": "a@org.test"})
        assert r["route"] == "live"
        rc, out = await cli(cfg, "remove", "live")
        assert rc == 0
        changed = time.monotonic()
        while app.routes.router.get("live") is not None and time.monotonic() - changed < 5:
            await asyncio.sleep(0.05)
        assert app.routes.router.get("live") is None
