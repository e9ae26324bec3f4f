"""Prometheus for real: the alert rules pass promtool (syntax and a unit test per alert), and a Prometheus
started by the test scrapes a running relaybox's /metrics with a read-only bearer token."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from tests.peers.ports import free_port
from tests.peers.relaybox_proc import RelayboxProcess

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = os.path.join(REPO, "conf", "prometheus", "alerts.yml")
RULE_TESTS = os.path.join(REPO, "tests", "data", "prometheus", "alerts_test.yml")


def _tool(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not os.path.exists(path):
        pytest.fail(f"{name} missing (Debian prometheus; see .ci/install-peers.sh)", pytrace=False)
    return path


def test_alert_rules_pass_promtool_check_and_unit_tests():
    check = subprocess.run([_tool("promtool"), "check", "rules", RULES], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 11 rules found" in check.stdout, check.stdout + check.stderr
    unit = subprocess.run([_tool("promtool"), "test", "rules", RULE_TESTS], capture_output=True, text=True,
                          cwd=os.path.dirname(RULE_TESTS))
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def _query(port: int, q: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())["data"]["result"]


def test_a_real_prometheus_scrapes_metrics_with_a_read_only_token(tmp_path):
    token = "ro-scrape-token-5521"
    relay = RelayboxProcess(str(tmp_path / "relay"), {"admin": {"readonly_tokens": [f"prometheus:{token}"]}})
    relay.start()
    prom_port = free_port()
    (tmp_path / "token").write_text(token)
    (tmp_path / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{RULES}"]
scrape_configs:
  - job_name: relaybox
    metrics_path: /metrics
    authorization: {{type: Bearer, credentials_file: "{tmp_path / 'token'}"}}
    static_configs: [{{targets: ["127.0.0.1:{relay.admin_port}"]}}]
""")
    prom = subprocess.Popen([_tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
    try:
        deadline, up, queue = time.monotonic() + 40, [], []
        while time.monotonic() < deadline:
            try:
                up = _query(prom_port, 'up{job="relaybox"}')
                queue = _query(prom_port, 'relaybox_queue_recipients{job="relaybox"}')
            except OSError:
                pass
            if up and up[0]["value"][1] == "1" and queue:
                break
            time.sleep(0.5)
        assert up and up[0]["value"][1] == "1", (tmp_path / "prometheus.log").read_text()[-2000:]
        assert {r["metric"]["status"] for r in queue} >= {"queued", "deferred", "delivered"}
        with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/api/v1/rules", timeout=5) as resp:
            groups = json.loads(resp.read())["data"]["groups"]
        assert {r["name"] for g in groups for r in g["rules"]} >= {"RelayboxQueueGrowing", "RelayboxDiskLow",
                                                                  "RelayboxDestinationDown"}
    finally:
        prom.send_signal(signal.SIGTERM)
        try:
            prom.wait(15)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(5)
        relay.stop()
