"""Allowlist and AUTH users: CIDR matching (IPv4, IPv6, mapped), scrypt hashes, config seeds."""

import pytest

from relay.intake import policy
from store import Store
from store.access import Conflict

pytestmark = pytest.mark.component


def test_cidr_matching_ipv4_ipv6_and_mapped():
    p = policy.Policy()
    p.set_snapshot(["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"], {})
    assert p.ip_allowed("10.1.2.3") and p.ip_allowed("2001:db8::25") and p.ip_allowed("127.0.0.1")
    assert p.ip_allowed("::ffff:10.9.9.9")          # IPv4-mapped IPv6 peer
    assert not p.ip_allowed("11.0.0.1") and not p.ip_allowed("2001:db9::1") and not p.ip_allowed("127.0.0.2")
    assert not p.ip_allowed("not-an-ip")


def test_default_deny():
    assert not policy.Policy().ip_allowed("127.0.0.1")


def test_passwords_are_hashed_and_verified():
    h = policy.hash_password("pw one")
    assert h.startswith("scrypt$") and "pw one" not in h
    assert policy.verify_password("pw one", h) and not policy.verify_password("pw two", h)
    p = policy.Policy()
    p.set_snapshot([], {"app": h})
    assert p.check_login("app", "pw one") and p.check_login("app", "pw one")   # second hit is cached
    assert not p.check_login("app", "nope") and not p.check_login("ghost", "pw one")


def test_bad_cidr_is_a_clear_error():
    with pytest.raises(ValueError, match="not an IP network: '10.0.0.300/8'"):
        policy.parse_cidr("10.0.0.300/8")


async def test_config_seed_follows_config_but_keeps_api_entries(tmp_path):
    store = Store(str(tmp_path / "p.db")).open()
    try:
        access = store.access
        await access.seed(["127.0.0.1/32", "10.0.0.0/8"], [])
        await access.add_allowlist("192.0.2.0/24", "app servers", "api")
        await access.seed(["127.0.0.1/32"], [("u", policy.hash_password("x"))])
        rows = {e.cidr: e.source for e in await access.list_allowlist()}
        assert rows == {"127.0.0.1/32": "config", "192.0.2.0/24": "api"}
        users = await access.list_users()
        assert [u.username for u in users] == ["u"] and "password_hash" not in users[0].as_dict()
    finally:
        store.close()


async def test_access_store_adds_removes_and_feeds_the_policy(tmp_path):
    store = Store(str(tmp_path / "p.db")).open()
    try:
        access = store.access
        entry = await access.add_allowlist("10.1.2.3/8", None, "cli")
        assert (entry.cidr, entry.note, entry.source) == ("10.0.0.0/8", None, "cli")
        again = await access.add_allowlist("10.0.0.0/8", "apps", "api")     # upsert: note only
        assert (again.note, again.source, again.created_at) == ("apps", "cli", entry.created_at)
        with pytest.raises(Conflict):
            await access.add_allowlist("10.0.0.0/8", exist_ok=False)
        with pytest.raises(ValueError, match="not an IP network"):
            await access.add_allowlist("10.0.0.300/8")
        await access.set_user("app", policy.hash_password("pw one"), "billing")
        with pytest.raises(ValueError):
            await access.set_user("a b", "x")
        p = policy.Policy(access)
        await p.refresh()
        assert p.ip_allowed("10.9.9.9") and p.check_login("app", "pw one")
        assert await access.remove_allowlist("10.0.0.0/8") and not await access.remove_allowlist("10.0.0.0/8")
        assert await access.remove_user("app") and not await access.remove_user("app")
        await p.refresh()
        assert not p.ip_allowed("10.9.9.9") and not p.check_login("app", "pw one")
    finally:
        store.close()
