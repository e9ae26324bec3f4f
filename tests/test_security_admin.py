"""Admin API hardening, one test per class: no 500 for any malformed request (every route, raw bytes too),
bounded JSON (depth, lone surrogates), invalid UTF-8 in Authorization -> 401, TLS, and the refusal to listen
off loopback in plain HTTP unless the config says so."""

from __future__ import annotations

import asyncio
import re
import ssl
import types

import aiohttp
import pytest

from admin_api.app import collect_routes
from admin_api.common import json_problem
from admin_api.config import AdminConfig, is_loopback
from relaybox.checks import problems
from relaybox.commands.run import cmd_check
from relaybox.settings import parse
from tests.admin_support import TOKEN, running
from tests.peers.certs import make_cert

pytestmark = pytest.mark.component

SECRET = TOKEN.split(":", 1)[1]


def concrete(path: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, path)


async def raw_http(port: int, request: bytes) -> int:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(request)
    await w.drain()
    line = await asyncio.wait_for(r.readline(), 10)
    w.close()
    return int(line.split()[1])


async def test_no_route_answers_500_to_malformed_input(tmp_path):
    async with running(tmp_path, admin={"max_body_size": 2_000_000}) as (app, api):
        deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
        deep_list = b'{"a":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        bodies = [deep, deep_list, b'{"name": "\\ud800", "cidr": "\\udfff"}', b'{"\\ud800": 1}',
                  b"\xff\xfe{", b'{"n": ' + b"9" * 5000 + b"}", b"[]", b'"x"', b"{", b"null"]
        seen: list[tuple[str, str, int]] = []
        for route in collect_routes():
            for value in ("%ff%fe", "..%2f..%2fetc", "x" * 300, "0"):
                path = concrete(route.path, value)
                for body in (bodies if route.method in ("POST", "PUT", "PATCH") else [None]):
                    st, _ = await api.call(route.method, path, data=body,
                                           headers={"Content-Type": "application/json"},
                                           params={"limit": "\udcff", "cursor": "%ff", "status": "\x00"})
                    seen.append((route.method, path[:40], st))
        bad = [s for s in seen if s[2] >= 500]
        assert not bad, bad[:10]
        assert len(seen) > 100
        # the deep body on a write endpoint is a 400 bad_json, not a RecursionError
        st, body = await api.call("POST", "/api/v1/allowlist", data=deep,
                                  headers={"Content-Type": "application/json"})
        assert st == 400 and body["error"]["code"] == "bad_json" and "deeper" in body["error"]["message"]


async def test_authorization_header_of_invalid_utf8_is_401(tmp_path):
    async with running(tmp_path) as (app, api):
        port = int(api.base.rsplit(":", 1)[1])
        for header in (b"Bearer \xff\xfe\xfd", b"\xff\xfe", b"Bearer " + SECRET.encode() + b"\xff",
                       b"Bearer \xc3(", b"Basic \x80"):
            st = await raw_http(port, b"GET /api/v1/queue/summary HTTP/1.1\r\nHost: x\r\nAuthorization: "
                                + header + b"\r\nConnection: close\r\n\r\n")
            assert st == 401, header
        st = await raw_http(port, b"GET /api/v1/queue/summary HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                            SECRET.encode() + b"\r\nConnection: close\r\n\r\n")
        assert st == 200
        # bytes aiohttp's parser refuses are a 400 too, never a 500
        for raw in (b"GET /api/\xff HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
                    b"\xff\xfe / HTTP/1.1\r\n\r\n"):
            assert 400 <= await raw_http(port, raw) < 500


def test_json_problem_is_iterative_and_checks_every_string():
    deep: dict = {}
    node = deep
    for _ in range(50_000):                        # far beyond the recursion limit: still no recursion
        node["a"] = {}
        node = node["a"]
    assert "deeper" in (json_problem(deep) or "")
    assert json_problem({"a": [{"b": ["x\ud800"]}]}) and json_problem({"k\udfff": 1})
    assert json_problem({"a": [1, 2, {"b": "fine é"}], "n": None}) is None


async def test_admin_tls_serves_https_only(tmp_path):
    cert, key = make_cert(str(tmp_path / "tls"))
    async with running(tmp_path, admin={"tls_cert_file": cert, "tls_key_file": key}) as (app, api):
        https = api.base.replace("http://", "https://")
        ctx = ssl.create_default_context(cafile=cert)
        async with aiohttp.ClientSession() as s:
            async with s.get(https + "/api/v1/queue/summary", ssl=ctx,
                             headers={"Authorization": f"Bearer {SECRET}"}) as r:
                assert r.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with s.get(api.base + "/healthz") as r:
                    await r.read()


def test_off_loopback_without_tls_is_refused_unless_explicit(tmp_path, capsys):
    assert is_loopback("127.0.0.1:8025") and is_loopback("[::1]:8025") and is_loopback("localhost:1")
    assert not any(is_loopback(a) for a in ("0.0.0.0:8025", "[::]:8025", "10.0.0.5:8025", "admin.lan:80"))
    cert, key = make_cert(str(tmp_path / "tls"))
    base = {"storage": {"path": str(tmp_path / "db")}}
    bad = parse({**base, "admin": {"listen": "0.0.0.0:8025"}})
    assert any("not a loopback address" in p and "allow_insecure_listen" in p for p in problems(bad))
    assert not [p for p in problems(parse({**base, "admin": {"listen": "0.0.0.0:8025",
                                                             "allow_insecure_listen": True}}))
                if "admin" in p]
    assert not [p for p in problems(parse({**base, "admin": {"listen": "0.0.0.0:8025", "tls_cert_file": cert,
                                                             "tls_key_file": key}}))
                if "admin" in p]
    # check-config says so (and `relaybox run` refuses the same list before starting anything)
    conf = tmp_path / "relaybox.toml"
    conf.write_text('[admin]\nlisten = "0.0.0.0:8025"\n[storage]\npath = "%s"\n' % (tmp_path / "db"))
    assert cmd_check(types.SimpleNamespace(file=str(conf), config=None)) == 2
    assert "not a loopback address" in capsys.readouterr().out
    with pytest.raises(ValueError, match="go together"):
        AdminConfig(tls_cert_file=cert)


async def test_admin_server_itself_does_not_listen_insecurely(tmp_path):
    from admin_api.server import AdminServer

    settings = parse({"admin": {"listen": "0.0.0.0:0"}, "storage": {"path": str(tmp_path / "db")}})
    server = AdminServer(types.SimpleNamespace(settings=settings))
    await server.start()
    assert server.runner is None and server.bound == []
