"""schemathesis against a running relaybox: the OpenAPI document matches what the server does (status codes,
content types, response schemas, auth enforced, schema-violating input rejected, never a 5xx)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.peers.ports import free_port
from tests.peers.relaybox_proc import REPO, RelayboxProcess

pytestmark = pytest.mark.integration

TOKEN = "fuzz:schemathesis-token-0123456789"


@pytest.fixture
def relay(tmp_path):
    port = free_port()
    p = RelayboxProcess(str(tmp_path), {"admin": {"listen": f"127.0.0.1:{port}", "tokens": [TOKEN]}}).start()
    p.admin_port = port
    yield p
    assert p.stop() == 0


def test_schemathesis_finds_no_mismatch(relay):
    cmd = [sys.executable, "-c",
           "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
           "run",
           f"http://127.0.0.1:{relay.admin_port}/api/v1/openapi.json",
           "-H", f"Authorization: Bearer {TOKEN.split(':', 1)[1]}",
           # semantic checks beyond JSON Schema (a CIDR that does not parse, an empty bulk filter without
           # "all") are 422 by design, so "schema-valid request rejected" is not a finding here
           "--checks", "all", "--exclude-checks", "positive_data_acceptance",
           "--phases", "examples,coverage,fuzzing", "--max-examples", "6", "--seed", "1", "-w", "1",
           "--suppress-health-check", "filter_too_much", "--no-color"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=relay.workdir,
                       env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert " passed" in r.stdout
    with open(relay.log_path, encoding="utf-8", errors="replace") as fh:
        log = fh.read()
    assert "Traceback" not in log and "malformed HTTP request refused" in log
    assert not any(c in log for c in "\x00\x01\x02\x1b")     # no control characters from fuzzed paths
