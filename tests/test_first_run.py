"""A first run is usable without editing files: with no admin token configured, relaybox generates one
(0600, beside the database, reused at the next start), says where, and never logs the secret."""

from __future__ import annotations

import json
import os
import stat
import urllib.error
import urllib.request

import pytest

from tests.peers.relaybox_proc import RelayboxProcess

pytestmark = pytest.mark.integration


def _get(port: int, path: str, token: str | None) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            json.loads(resp.read())
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_first_start_generates_an_admin_token_file(tmp_path):
    relay = RelayboxProcess(str(tmp_path / "relay"))
    path = os.path.join(os.path.dirname(relay.db_path), "admin.token")
    try:
        relay.start()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        line = next(x for x in open(path).read().splitlines() if x and not x.startswith("#"))
        name, secret = line.split(":", 1)
        assert name == "admin" and len(secret) >= 32
        assert _get(relay.admin_port, "/api/v1/messages", None) == 401
        assert _get(relay.admin_port, "/api/v1/messages", secret) == 200
        assert path in relay.log() and secret not in relay.log()
        assert relay.stop() == 0
        relay.start()                                   # the same token at the next start
        assert open(path).read().count("admin:") == 1
        assert _get(relay.admin_port, "/api/v1/messages", secret) == 200
    finally:
        relay.stop()
