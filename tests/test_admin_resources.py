"""Routes, DKIM keys and the "no secret in any answer" sweep, through the running admin API."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from relay.delivery import dkim
from tests.admin_support import running

pytestmark = pytest.mark.component

ROUTE_PW = "route-password-Zq81"
HOOK_SECRET = "hook-secret-Xy71"
USER_PW = "smtp-user-password-Pk55"


def _key(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "org.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return key, str(path)


async def test_routes_dkim_and_no_secrets_anywhere(tmp_path):
    key, key_file = _key(tmp_path)
    extra = {
        "routes": [{"name": "m365", "host": "smtp.office365.test", "port": 587, "username": "relay@org.test",
                    "password": ROUTE_PW, "from_domains": ["org.test"]},
                   {"name": "isp", "host": "mail.isp.test", "default": True}],
        "dkim": {"enabled": True, "default_domain": "org.test",
                 "domains": {"org.test": {"selector": "s1", "key_file": key_file}}},
        "webhooks": [{"name": "crm", "url": "http://127.0.0.1:9/hook", "secret": HOOK_SECRET}],
        "smtp": {"users": [{"username": "app1", "password": USER_PW}]},
    }
    async with running(tmp_path, **extra) as (app, api):
        st, body = await api.call("GET", "/api/v1/routes")
        assert st == 200 and [r["name"] for r in body["items"]] == ["isp", "m365"]   # by name
        m365 = body["items"][1]
        assert m365["auth"] and m365["username"] == "relay@org.test" and "password" not in m365
        st, r = await api.call("GET", "/api/v1/routes/resolve", params={"from": "Billing@Org.test"})
        assert r["route"] == "m365"
        st, r = await api.call("GET", "/api/v1/routes/resolve", params={"from": "x@elsewhere.test"})
        assert r["route"] == "isp"
        assert (await api.call("GET", "/api/v1/routes/nope"))[0] == 404
        assert (await api.call("GET", "/api/v1/routes/resolve", params={"from": "nobody"}))[0] == 400

        st, body = await api.call("GET", "/api/v1/dkim/keys")
        assert st == 200 and body["enabled"]
        [org] = body["items"]
        assert org["dns_name"] == "s1._domainkey.org.test" and org["algorithm"] == "ed25519-sha256"
        assert org["dns_record"] == dkim.dns_record(key) and org["default"]

        # sweep every GET endpoint without path parameters: no secret of any kind in any answer
        st, doc = await api.call("GET", "/api/v1/openapi.json")
        secrets = [ROUTE_PW, HOOK_SECRET, USER_PW, api.token, "scrypt$", "PRIVATE KEY"]
        for path, ops in doc["paths"].items():
            if "get" not in ops or "{" in path:
                continue
            st, body = await api.call("GET", path,
                                      params={"from": "a@org.test"} if "resolve" in path else None)
            text = body.decode() if isinstance(body, bytes) else str(body)
            for s in secrets:
                assert s not in text, (path, s)
        for path in ("/api/v1/routes/m365", "/api/v1/webhooks/crm/deliveries"):
            st, body = await api.call("GET", path)
            assert st == 200 and not any(s in str(body) for s in secrets)


async def test_route_smtp_test_action(tmp_path):
    from tests.peers.ports import free_port
    from tests.peers.sink import Sink

    sink = await Sink(users={"relay@org.test": ROUTE_PW}, auth_require_tls=False).start()
    routes = [{"name": "good", "host": "127.0.0.1", "port": sink.port, "tls": "none",
               "allow_plaintext_auth": True, "username": "relay@org.test",
               "password": ROUTE_PW},
              {"name": "badpw", "host": "127.0.0.1", "port": sink.port, "tls": "none",
               "allow_plaintext_auth": True, "username": "relay@org.test",
               "password": "wrong-" + ROUTE_PW},
              {"name": "closed", "host": "127.0.0.1", "port": free_port(), "tls": "none"}]
    try:
        async with running(tmp_path, routes=routes, delivery={"connect_timeout": "2s"}) as (app, api):
            st, body = await api.call("POST", "/api/v1/routes/good/test")
            assert st == 200 and body["ok"] and body["result"] == "Connection succeeded", body
            assert any("235" in str(t.get("line", t)) for t in body["transcript"])
            st, body = await api.call("POST", "/api/v1/routes/badpw/test")
            assert st == 200 and not body["ok"], body
            assert body["result"].startswith("Connection failed at AUTH: 535"), body
            st, body = await api.call("POST", "/api/v1/routes/closed/test")
            assert st == 200 and not body["ok"]
            assert (await api.call("POST", "/api/v1/routes/nope/test"))[0] == 404
            assert ROUTE_PW not in str(body)
            import base64
            for name in ("good", "badpw"):
                st, body = await api.call("POST", f"/api/v1/routes/{name}/test")
                text = str(body)
                assert ROUTE_PW not in text and base64.b64encode(ROUTE_PW.encode()).decode() not in text
    finally:
        await sink.stop()
