"""MX resolution against a real dnsmasq on a high loopback port."""

import random

import pytest

from relay.delivery.mx import MXResolver
from relay.errors import DNSError

pytestmark = pytest.mark.integration

# served by the dns_server fixture of tests/conftest.py
ZONE = {
    "multi.test": {"MX": [(20, "backup.multi.test"), (10, "a.multi.test"), (10, "b.multi.test"),
                          (10, "c.multi.test"), (30, "d.multi.test"), (40, "e.multi.test"),
                          (50, "f.multi.test")]},
    "a.multi.test": {"A": ["127.0.0.1"]},
    "b.multi.test": {"A": ["127.0.0.2"]},
    "backup.multi.test": {"A": ["127.0.0.3"], "AAAA": ["::1"]},
    "nomx.test": {"A": ["127.0.0.9"]},
    "null.test": {"MX": [(0, ".")]},
    "noaddr.test": {"TXT": ["just text"]},
    "broken.test": "SERVFAIL",
}


def resolver(server, seed=1, timeout=2.0):
    return MXResolver(["127.0.0.1"], server.port, timeout=timeout, rng=random.Random(seed))


async def test_mx_sorted_by_preference_random_among_equals_at_most_five(dns_server):
    orders = set()
    for seed in range(12):
        hosts = await resolver(dns_server, seed).lookup("multi.test")
        assert [h.preference for h in hosts] == [10, 10, 10, 20, 30]
        assert {h.name for h in hosts[:3]} == {"a.multi.test", "b.multi.test", "c.multi.test"}
        assert hosts[3].name == "backup.multi.test"
        orders.add(tuple(h.name for h in hosts[:3]))
    assert len(orders) > 1, "equal-preference hosts must be shuffled"


async def test_host_addresses_a_and_aaaa(dns_server):
    r = resolver(dns_server)
    assert await r.resolve_host("backup.multi.test") == ["127.0.0.3", "::1"]
    with pytest.raises(DNSError) as ei:
        await r.resolve_host("nonexistent.multi.test")
    assert ei.value.enhanced == "5.1.2"


async def test_implicit_mx_when_no_mx_record(dns_server):
    hosts = await resolver(dns_server).lookup("nomx.test")
    assert [(h.name, h.addresses) for h in hosts] == [("nomx.test", ["127.0.0.9"])]


async def test_null_mx_is_permanent_failed_5_1_10(dns_server):
    with pytest.raises(DNSError) as ei:
        await resolver(dns_server).lookup("null.test")
    e = ei.value
    assert (e.code, e.enhanced, e.temporary, e.status, e.reason) == (556, "5.1.10", False, "failed", "nullmx")


async def test_nxdomain_is_permanent_bounced_5_1_2(dns_server):
    with pytest.raises(DNSError) as ei:
        await resolver(dns_server).lookup("does-not-exist.test")
    e = ei.value
    assert (e.code, e.enhanced, e.temporary, e.status) == (550, "5.1.2", False, "bounced")


async def test_no_mx_and_no_address_is_permanent(dns_server):
    with pytest.raises(DNSError) as ei:
        await resolver(dns_server).lookup("noaddr.test")
    assert ei.value.status == "bounced" and ei.value.enhanced == "5.1.2"


async def test_servfail_or_timeout_is_temporary_deferred(dns_server):
    with pytest.raises(DNSError) as ei:
        await resolver(dns_server, timeout=1.0).lookup("broken.test")
    e = ei.value
    assert e.temporary and e.status == "deferred" and e.enhanced == "4.4.3"


async def test_unreachable_resolver_is_temporary():
    from tests.peers.ports import free_port

    r = MXResolver(["127.0.0.1"], free_port(), timeout=1.0)
    with pytest.raises(DNSError) as ei:
        await r.lookup("multi.test")
    assert ei.value.temporary


async def test_address_literal_needs_no_dns():
    r = MXResolver(["127.0.0.1"], 9, timeout=0.5)
    hosts = await r.lookup("[127.0.0.1]")
    assert hosts[0].addresses == ["127.0.0.1"]
    assert (await r.lookup("[IPv6:::1]"))[0].addresses == ["::1"]
