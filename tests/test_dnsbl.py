"""Blocklist awareness against a real DNS server: dnsmasq serves a DNSBL zone (``ZONE``), relay.dnsbl asks it
the RFC 5782 questions (reversed octets, IPv6 nibbles), and the state shows in the gauge, the log, the admin
API (through a real App, so the relaybox hook is exercised), the CLI and the route's zones. Also: a remote
rejection naming a blocklist is recorded as reason ``blocked`` with the zone and the address in its text."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys

import pytest
from prometheus_client import REGISTRY

from relay.bounces.record import delivery_failure, from_reply
from relay.config import DeliveryConfig, DnsblConfig, RelayConfig, RouteConfig
from relay.dnsbl import DnsblChecker, check_pair, make_resolver, query_name, targets
from tests.admin_support import RO_TOKEN, running
from tests.peers.dnsmasq import DnsmasqServer
from tests.peers.ports import free_port

pytestmark = pytest.mark.integration

LISTED = "203.0.113.5"
CLEAN = "203.0.113.6"
REFUSED = "203.0.113.7"            # the zone answers 127.255.255.254: "query refused", not a listing
V6 = "2001:db8::25"
V6_NAME = "5.2.0.0." + "0.0.0.0." * 5 + "8.b.d.0.1.0.0.2"   # 2001:0db8:0:0:0:0:0:0025
TXT = "Listed for spam; see http://bl.test/lookup?ip=203.0.113.5"

ZONE = {
    "5.113.0.203.bl.test": {"A": ["127.0.0.4"], "TXT": [TXT]},   # dnsmasq: one A per name
    V6_NAME + ".bl.test": {"A": ["127.0.0.3"], "TXT": ["IPv6 listed"]},
    "7.113.0.203.bl.test": {"A": ["127.255.255.254"]},
    "5.113.0.203.quiet.test": {"A": ["127.0.0.10"]},        # listed without a TXT record
    "servfail.test": "SERVFAIL",                             # every question in it times out upstream
}


def relay(dns, *, ips=(LISTED,), zones=("bl.test",), routes=(), timeout=2.0, **kw) -> RelayConfig:
    cfg = DnsblConfig(enabled=True, zones=list(zones), sending_ips=list(ips), learn=False, timeout=timeout,
                      **kw)
    delivery = DeliveryConfig(nameservers=[dns.host], dns_port=dns.port, dns_timeout=3)
    return RelayConfig(delivery=delivery, routes=list(routes), dnsbl=cfg)


def gauge(ip: str, zone: str) -> float | None:
    return REGISTRY.get_sample_value("relaybox_dnsbl_listed", {"ip": ip, "zone": zone})


def test_query_names_reverse_octets_and_nibbles():
    assert query_name("192.0.2.99", "zen.spamhaus.org.") == "99.2.0.192.zen.spamhaus.org"
    assert query_name(V6, "BL.test") == f"{V6_NAME}.bl.test"
    assert len(query_name("::1", "z.test").split(".")) == 32 + 2


async def test_listed_with_codes_and_txt_reason_and_not_listed(dns_server, caplog):
    caplog.set_level(logging.INFO, logger="relay.dnsbl")
    checker = DnsblChecker(relay(dns_server, ips=(LISTED, CLEAN)), clock=lambda: 1000.0)
    out = {s.ip: s for s in await checker.check_now()}
    hit, clean = out[LISTED], out[CLEAN]
    assert (hit.status, hit.codes, hit.text, hit.since, hit.routes) == \
        ("listed", ("127.0.0.4",), TXT, 1000.0, ("mx",))
    assert (clean.status, clean.codes, clean.text) == ("clear", (), "")
    assert gauge(LISTED, "bl.test") == 1 and gauge(CLEAN, "bl.test") == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "relay.dnsbl"]
    assert lines == [f"dnsbl: {LISTED} is LISTED by bl.test (127.0.0.4; routes mx): {TXT}"]
    assert checker.zones_listing("mx") == ["bl.test"] and checker.zones_listing("other") == []
    # the same state again: no new log line, "since" stays at the first sighting
    caplog.clear()
    checker.clock = lambda: 2000.0
    again = {s.ip: s for s in await checker.check_now()}[LISTED]
    assert (again.since, again.last_checked) == (1000.0, 2000.0)
    assert not [r for r in caplog.records if r.name == "relay.dnsbl"]


async def test_listed_without_txt_and_ipv6_nibble_form(dns_server):
    resolver = make_resolver(relay(dns_server).dnsbl, relay(dns_server))
    assert await check_pair(resolver, LISTED, "quiet.test") == ("listed", ("127.0.0.10",), "")
    assert await check_pair(resolver, V6, "bl.test") == ("listed", ("127.0.0.3",), "IPv6 listed")
    assert await check_pair(resolver, "2001:db8::26", "bl.test") == ("clear", (), "")


async def test_delisting_is_noticed_and_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="relay.dnsbl")
    port = free_port()
    with DnsmasqServer({"5.113.0.203.bl.test": {"A": ["127.0.0.2"]}}, port=port) as dns:
        checker = DnsblChecker(relay(dns), clock=lambda: 10.0)
        [first] = await checker.check_now()
    assert first.listed and gauge(LISTED, "bl.test") == 1
    with DnsmasqServer({}, port=port):               # the zone dropped the entry: NXDOMAIN now
        checker.clock = lambda: 20.0
        [after] = await checker.check_now()
    assert (after.status, after.since, after.codes) == ("clear", 20.0, ())
    assert gauge(LISTED, "bl.test") == 0 and checker.zones_listing("mx") == []
    msgs = [r.getMessage() for r in caplog.records if r.name == "relay.dnsbl"]
    assert msgs[-1] == f"dnsbl: {LISTED} is no longer listed by bl.test (delisted; routes mx)"
    assert caplog.records[-1].levelno == logging.WARNING


async def test_resolver_down_servfail_and_refusal_are_unknown_not_listed(dns_server, caplog):
    dead = DeliveryConfig(nameservers=["127.0.0.1"], dns_port=free_port(), dns_timeout=1)
    cfg = DnsblConfig(enabled=True, zones=["bl.test"], sending_ips=[LISTED], learn=False, timeout=1)
    [down] = await DnsblChecker(RelayConfig(delivery=dead, dnsbl=cfg)).check_now()
    assert (down.status, down.listed) == ("unknown", False) and "no answer for" in down.text
    assert gauge(LISTED, "bl.test") == 0
    assert any("unknown" in r.getMessage() for r in caplog.records if r.name == "relay.dnsbl")
    # the same zone through the working resolver lists it: the resolver, not the zone, was the problem
    resolver = make_resolver(relay(dns_server).dnsbl, relay(dns_server))
    assert (await check_pair(resolver, LISTED, "bl.test"))[0] == "listed"
    status, _codes, text = await check_pair(resolver, LISTED, "servfail.test")
    assert status == "unknown" and "timeout or SERVFAIL" in text
    status, codes, text = await check_pair(resolver, REFUSED, "bl.test")
    assert (status, codes) == ("unknown", ("127.255.255.254",)) and "refused" in text


def test_targets_learned_per_route_only_when_public():
    routes = [RouteConfig(name="hub", host="smarthost.test", port=587),
              RouteConfig(name="lan", host="10.0.0.9", port=25)]
    learned = {"smarthost.test": "1.2.3.20", "10.0.0.9": "10.0.0.2", "192.0.2.1": "1.2.3.21",
               "2001:db8::1": None}
    cfg = DnsblConfig(enabled=True, zones=["bl.test"], sending_ips=["203.0.113.5"])
    got = targets(cfg, RelayConfig(routes=routes, dnsbl=cfg), lambda host, port: learned[host])
    assert got == {"203.0.113.5": ("hub", "lan", "mx"), "1.2.3.20": ("hub",), "1.2.3.21": ("mx",)}
    # with a default route nothing goes direct to MX: no "mx" anywhere; learn off: only the configured ones
    routes[0] = RouteConfig(name="hub", host="smarthost.test", port=587, default=True)
    got = targets(cfg, RelayConfig(routes=routes, dnsbl=cfg), lambda host, port: learned[host])
    assert got == {"203.0.113.5": ("hub", "lan"), "1.2.3.20": ("hub",)}
    off = DnsblConfig(enabled=True, zones=["bl.test"], sending_ips=["203.0.113.5"], learn=False)
    assert targets(off, RelayConfig(routes=routes, dnsbl=off), lambda h, p: "1.2.3.99") == \
        {"203.0.113.5": ("hub", "lan")}


def test_config_is_checked():
    from relay.configtypes import ConfigError
    from relaybox.settings import parse

    with pytest.raises(ConfigError) as exc:
        parse({"dnsbl": {"enabled": True, "zones": [], "interval": "1m"}})
    assert "dnsbl.zones: at least one zone" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        parse({"dnsbl": {"zones": ["bl.test"], "sending_ips": ["not-an-ip"]}})
    assert "dnsbl.sending_ips: not an IP address: 'not-an-ip'" in str(exc.value)
    assert parse({"dnsbl": {"zones": ["bl.test"], "interval": "10m"}}).relay.dnsbl.interval == 600


async def test_checker_loop_runs_at_the_interval_and_not_when_off(dns_server):
    off = DnsblChecker(RelayConfig())
    await asyncio.wait_for(off.run(), 1)              # returns at once: nothing configured
    assert off.resolver is None and off.snapshot() == []
    times = iter(range(100))
    checker = DnsblChecker(relay(dns_server, interval=1), clock=lambda: float(next(times)))
    task = asyncio.get_running_loop().create_task(checker.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if checker.checked_at is not None and checker.checked_at >= 1:
                break
    finally:
        task.cancel()
    assert checker.checked_at is not None and checker.checked_at >= 1   # two rounds, a second apart
    [s] = checker.snapshot()
    assert (s.status, s.since) == ("listed", 0.0)


async def test_admin_api_shows_listings_and_checks_now(tmp_path, dns_server):
    route = {"name": "hub", "host": "127.0.0.1", "port": 2525, "tls": "none", "default": True}
    extra = {"dnsbl": {"enabled": True, "zones": ["bl.test", "quiet.test"], "sending_ips": [LISTED, CLEAN],
                       "learn": True, "interval": "1h", "timeout": "2s"},
             "delivery": {"nameservers": [dns_server.host], "dns_port": dns_server.port},
             "routes": [route]}
    async with running(tmp_path, **extra) as (app, api):
        for _ in range(100):                          # the first round runs at start
            if app.dnsbl.checked_at is not None:
                break
            await asyncio.sleep(0.05)
        status, body = await api.call("GET", "/api/v1/blocklists")
        assert status == 200 and body["enabled"] is True and body["zones"] == ["bl.test", "quiet.test"]
        assert body["summary"] == {"listed": 2, "clear": 2, "unknown": 0}
        first = body["items"][0]                      # listed pairs first
        assert (first["ip"], first["zone"], first["status"], first["text"], first["routes"]) == \
            (LISTED, "bl.test", "listed", TXT, ["hub"])
        assert first["since"].endswith("Z") and first["codes"] == ["127.0.0.4"]
        # 127.0.0.1 (learned toward the smarthost) is not public: not checked
        assert {i["ip"] for i in body["items"]} == {LISTED, CLEAN}
        assert app.dnsbl.zones_listing("hub") == ["bl.test", "quiet.test"]
        status, body = await api.call("GET", "/api/v1/routes/hub")
        assert status == 200 and body["status"]["blocklisted"] == ["bl.test", "quiet.test"]
        # a route added through the API is checked at the next round (the checker reads the live routes)
        status, _ = await api.call("POST", "/api/v1/routes", params={"validate": "skip"},
                                   json={"name": "second", "host": "127.0.0.1", "port": 2526, "tls": "none",
                                         "from_domains": ["second.test"]})
        assert status == 201
        assert (await api.call("GET", "/api/v1/routes/second"))[1]["status"]["blocklisted"] == []
        status, body = await api.call("POST", "/api/v1/blocklists/check")
        assert status == 200 and body["summary"]["listed"] == 2
        assert body["items"][0]["routes"] == ["hub", "second"]
        status, body = await api.call("GET", "/api/v1/routes")
        assert {r["name"]: r["status"]["blocklisted"] for r in body["items"]} == \
            {"hub": ["bl.test", "quiet.test"], "second": ["bl.test", "quiet.test"]}
        status, _ = await api.call("POST", "/api/v1/blocklists/check", token=RO_TOKEN.split(":", 1)[1])
        assert status == 403
        status, metrics = await api.call("GET", "/metrics")
        assert f'relaybox_dnsbl_listed{{ip="{LISTED}",zone="bl.test"}} 1.0' in metrics.decode()


async def test_admin_api_when_off(tmp_path):
    async with running(tmp_path) as (_app, api):
        status, body = await api.call("GET", "/api/v1/blocklists")
        assert (status, body["enabled"], body["items"]) == (200, False, [])
        status, body = await api.call("POST", "/api/v1/blocklists/check")
        assert status == 409 and body["error"]["code"] == "conflict" and "[dnsbl]" in body["error"]["message"]


def test_cli_checks_now_and_exits_1_when_listed(tmp_path, dns_server):
    conf = tmp_path / "relaybox.toml"
    conf.write_text(f'[storage]\npath = "{tmp_path}/r.db"\n[delivery]\nnameservers = ["{dns_server.host}"]\n'
                    f'dns_port = {dns_server.port}\n[dnsbl]\nzones = ["bl.test"]\n'
                    f'sending_ips = ["{LISTED}"]\nlearn = false\ntimeout = "2s"\n')
    cmd = [sys.executable, "-m", "relaybox.cli", "-c", str(conf), "blocklists"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert f"LISTED   {LISTED}" in out.stdout and TXT in out.stdout
    out = subprocess.run(cmd + ["--ip", CLEAN, "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    [row] = json.loads(out.stdout)
    assert (row["ip"], row["zone"], row["status"], row["listed"]) == (CLEAN, "bl.test", "clear", False)
    out = subprocess.run(cmd + ["--zone", "bad zone"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "dnsbl.zones" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("text, zone, ip", [
    ("Service unavailable; Client host [203.0.113.5] blocked using zen.spamhaus.org", "zen.spamhaus.org",
     "203.0.113.5"),
    ("5.7.1 Client host rejected: 203.0.113.5 is listed on b.barracudacentral.org", "b.barracudacentral.org",
     "203.0.113.5"),
    ("rejected because 2001:db8::25 is in a black list at bl.spamcop.net", "bl.spamcop.net", "2001:db8::25"),
])
def test_remote_rejection_naming_a_blocklist_is_blocked_with_zone_and_ip(text, zone, ip):
    [r] = from_reply("x@dst.test", 554, "5.7.1", text).recipients
    assert (r.reason, r.kind, r.status) == ("blocked", "soft", "5.7.1")
    line = delivery_failure("Q", 1, "x@dst.test", 554, "5.7.1", text).report.lines[0]
    assert line.reason == "blocked" and zone in line.diagnostic and ip in line.diagnostic


async def test_blocklist_rejection_recorded_by_complete_delivery(tmp_path):
    from relay.envelope import NewMessage
    from relay.spool.spool import Spool
    from store import Store
    from store.records import RecipientResult

    store = Store(str(tmp_path / "s.db")).open()
    try:
        spool = Spool(store)
        qid = await spool.enqueue(NewMessage(sender="a@src.test", recipients=["x@dst.test"],
                                             body=b"Subject: x\r\n\r\nhi\r\n"), actor="smtp")
        [claim] = await spool.claim(owner="t", limit=10, lease=60)
        rid = claim.recipients[0].id
        text = "5.7.1 Service unavailable; Client host [203.0.113.5] blocked using zen.spamhaus.org"
        f = delivery_failure(qid, rid, "x@dst.test", 554, "5.7.1", text, None, "mx.dst.test")
        await store.bounces.complete_delivery([RecipientResult(rid, "bounced", 554, "5.7.1", text,
                                                               reason="blocked")], attempt=None, failures=[f])
        [b] = await store.bounces.list({"message_id": qid})
        assert (b.reason, b.kind, b.status) == ("blocked", "soft", "5.7.1")
        assert "zen.spamhaus.org" in b.diagnostic and "203.0.113.5" in b.diagnostic
    finally:
        store.close()


async def test_an_address_no_longer_learned_is_forgotten(dns_server):
    learned = ["1.2.3.20"]
    route = RouteConfig(name="hub", host="smarthost.test", port=587, default=True)
    rc = relay(dns_server, ips=(), routes=[route])
    rc = RelayConfig(delivery=rc.delivery, routes=rc.routes,
                     dnsbl=DnsblConfig(enabled=True, zones=["bl.test"], learn=True, timeout=2))
    checker = DnsblChecker(rc, learn=lambda host, port: learned[0] if learned else None)
    [s] = await checker.check_now()
    assert (s.ip, s.status, s.routes) == ("1.2.3.20", "clear", ("hub",)) and gauge("1.2.3.20", "bl.test") == 0
    learned.clear()                                   # the route now leaves from a private address
    assert await checker.check_now() == [] and gauge("1.2.3.20", "bl.test") is None


async def test_a_round_asks_at_most_a_few_questions_at_a_time_and_rounds_do_not_overlap():
    import dns.resolver

    from relay import dnsbl

    class CountingResolver:
        def __init__(self):
            self.now = self.peak = self.asked = 0

        async def resolve(self, name, rdtype, search=False):
            self.now += 1
            self.asked += 1
            self.peak = max(self.peak, self.now)
            await asyncio.sleep(0.01)
            self.now -= 1
            raise dns.resolver.NXDOMAIN()

    ips = [f"198.51.100.{i}" for i in range(1, 31)]
    cfg = DnsblConfig(enabled=True, zones=["a.test", "b.test"], sending_ips=ips, learn=False)
    resolver = CountingResolver()
    checker = DnsblChecker(RelayConfig(dnsbl=cfg), resolver=resolver)
    first, second = await asyncio.gather(checker.check_now(), checker.check_now())
    assert len(first) == len(second) == 60 and resolver.asked == 120
    assert resolver.peak == dnsbl.CONCURRENCY      # never more: the two rounds ran one after the other
