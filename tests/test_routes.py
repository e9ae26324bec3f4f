"""Route selection by From address/domain; `relaybox routes test NAME` against a real aiosmtpd smarthost."""

import asyncio
import os
import sys

import pytest

from relay.config import RouteConfig
from relay.delivery.routes import RouteError, Router
from tests.peers.relaybox_proc import write_config
from tests.peers.sink import Sink

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_route_selection_order():
    routes = [RouteConfig("m365", "smtp.office365.com", from_domains=["corp.test"]),
              RouteConfig("ceo", "smtp.gmail.com", from_addresses=["Boss@Corp.test"]),
              RouteConfig("isp", "mail.isp.test", default=True)]
    r = Router(routes)
    assert r.route_for({"from_header": '"The Boss" <boss@corp.test>', "sender": "x@y.test"}).name == "ceo"
    assert r.route_for({"from_header": "Ann <ann@corp.test>", "sender": ""}).name == "m365"
    assert r.route_for({"from_header": "ann@sales.corp.test", "sender": ""}).name == "m365"   # subdomain
    assert r.route_for({"from_header": None, "sender": "bob@corp.test"}).name == "m365"       # envelope
    assert r.route_for({"from_header": "x@else.test", "sender": "x@else.test"}).name == "isp"
    assert Router(routes[:2]).route_for({"from_header": "x@else.test", "sender": ""}) is None    # MX
    with pytest.raises(RouteError):
        Router([RouteConfig("a", "h", default=True), RouteConfig("b", "h", default=True)])
    with pytest.raises(ValueError):
        RouteConfig("bad", "h", tls="ssl")


async def run_cli(cfg, *args):
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "relaybox.cli", "-c", str(cfg), *args,
                                             cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(p.communicate(), 30)
    return p.returncode, out.decode()


async def test_routes_test_command_reports_success_and_the_servers_exact_reply(tmp_path):
    hub = await Sink(tls=True, users={"relay": "Pa55-word"}).start()
    cfg = tmp_path / "relaybox.toml"
    route = {"host": "127.0.0.1", "port": hub.port, "tls": "starttls", "tls_verify": False,
             "username": "relay"}
    write_config(str(cfg), {"smtp": {"hostname": "relay.test"}, "storage": {"path": str(tmp_path / "db")},
                            "[[routes]]": [{"name": "good", **route, "password": "Pa55-word"},
                                           {"name": "badpw", **route, "password": "nope-wrong"},
                                           {"name": "verify", **{**route, "tls_verify": True},
                                            "password": "Pa55-word"}]})
    rc, out = await run_cli(cfg, "routes", "test", "good")
    assert rc == 0, out
    assert "C: STARTTLS" in out and "S: 235 2.7.0 Authentication successful" in out
    assert out.strip().splitlines()[-1] == "Connection succeeded" and "Pa55" not in out
    assert "C: MAIL FROM:<postmaster@relay.test>" in out and "C: RSET" in out
    rc, out = await run_cli(cfg, "routes", "test", "badpw")
    assert rc == 1 and "nope" not in out
    assert "Connection failed at AUTH: 535 5.7.8 Authentication credentials invalid" in out
    rc, out = await run_cli(cfg, "routes", "test", "verify")
    assert rc == 1 and "CERTIFICATE_VERIFY_FAILED" in out
    assert "Connection failed at STARTTLS: 421 4.7.5 TLS failure" in out
    rc, out = await run_cli(cfg, "routes", "test", "missing")
    assert rc == 2 and "no route named 'missing'" in out
    rc, out = await run_cli(cfg, "routes", "list")
    assert rc == 0 and "good: 127.0.0.1" in out and "Pa55" not in out
    await hub.stop()


def test_config_problems_names_bad_keys_and_routes(tmp_path):
    from relay.config import DKIMConfig, DKIMKeyConfig, RelayConfig
    from relay.delivery.attempt import config_problems

    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    keys = {"a.test": DKIMKeyConfig("s", str(tmp_path / "no")), "b.test": DKIMKeyConfig("s", str(bad))}
    cfg = RelayConfig(dkim=DKIMConfig(enabled=True, domains=keys),
                      routes=[RouteConfig("x", "h", default=True), RouteConfig("x", "h")])
    problems = config_problems(cfg)
    assert any("dkim.domains.a.test.key_file: No such file" in p for p in problems), problems
    assert any("duplicate route names: x" in p for p in problems), problems
    assert config_problems(RelayConfig()) == []
