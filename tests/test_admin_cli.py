"""``relaybox queue ...`` against a real ``relaybox run`` process (through its admin API), then offline."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
import time

import pytest

from tests.peers.ports import free_port
from tests.peers.relaybox_proc import REPO, RelayboxProcess

pytestmark = pytest.mark.integration

TOKEN = "ops:cli-test-token-0123456789"


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    admin_port, dead = free_port(), free_port()
    p = RelayboxProcess(str(d), {
        "admin": {"listen": f"127.0.0.1:{admin_port}", "tokens": [TOKEN]},
        # deliveries go to a closed port: recipients end up deferred, the queue stays inspectable
        "[[routes]]": [{"name": "nowhere", "host": "127.0.0.1", "port": dead, "tls": "none",
                        "default": True}],
        "delivery": {"connect_timeout": "1s"},
    }).start()
    p.admin_port = admin_port
    yield p
    p.stop()


def cli(relay, *args, offline=False, check=True):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("RELAYBOX_API_TOKEN", None)
    cmd = [sys.executable, "-m", "relaybox.cli", "--config", relay.config_path, "queue", *args]
    if offline:
        cmd.append("--offline")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=relay.workdir, timeout=60)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def send(relay, rcpts, subject):
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=10) as s:
        s.sendmail("app@org.test", rcpts, f"From: app@org.test\r\nSubject: {subject}\r\n\r\nhi\r\n")


def test_queue_commands_through_the_api_and_offline(relay):
    send(relay, ["a@slow.test", "b@slow.test"], "first")
    send(relay, ["c@fast.test"], "second")
    send(relay, ["d@slow.test"], "third")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:       # let the scheduler try once (connection refused -> deferred)
        items = json.loads(cli(relay, "list", "--json").stdout)["items"]
        statuses = [m["status"] for m in items]
        if len(items) == 3 and "deferred" in statuses and set(statuses) <= {"deferred", "queued"}:
            break
        time.sleep(0.2)
    assert [m["subject"] for m in items] == ["third", "second", "first"]
    # tried and deferred, or (the dead route parked after the first refusal) waiting for its probe
    assert all(m["status"] in ("deferred", "queued") for m in items), items

    human = cli(relay, "list").stdout
    assert human.splitlines()[0].split() == ["ID", "CREATED", "STATUS", "SENDER", "RECIPIENTS", "SUBJECT"]
    assert "a@slow.test +1" in human
    s = cli(relay, "summary").stdout.splitlines()
    assert sum(int(kv.split("=")[1]) for kv in s[0].split()) == 4 and "sending" not in s[0]
    assert s[1].split()[:4] == ["DOMAIN", "TOTAL", "0-5m", "5-10m"]
    assert s[2].split()[:3] == ["TOTAL", "4", "4"] and s[3].split()[:3] == ["slow.test", "3", "3"]
    # the dead route is parked: shown with its error and next probe
    parked = next(i for i, line in enumerate(s) if "destination(s) parked" in line)
    assert s[parked + 2].split()[0] == "route:nowhere" and "421" in s[parked + 2]

    out = json.loads(cli(relay, "hold", "--domain", "slow.test", "--json").stdout)
    assert (out["matched"], out["affected"]) == (2, 2)
    held = json.loads(cli(relay, "list", "--held", "--json").stdout)["items"]
    assert sorted(m["subject"] for m in held) == ["first", "third"]
    second = next(m["id"] for m in items if m["subject"] == "second")
    r = cli(relay, "cancel", second)
    assert f"{second}: cancel (1 affected)" in r.stdout
    r = cli(relay, "cancel", second, check=False)
    assert r.returncode == 1 and "409" in r.stderr
    assert r.stderr.strip() == (f"{second}: no pending recipient (scheduled, queued or deferred) to cancel"
                                " (409 conflict)")
    r = cli(relay, "cancel", check=False)
    assert r.returncode == 2 and "--all" in r.stderr
    shown = json.loads(cli(relay, "show", second, "--json").stdout)
    assert shown["status"] == "cancelled" and shown["events"][-1]["actor"] == "admin:ops"
    assert "cancelled" in cli(relay, "show", second).stdout

    # offline, on the database file, beside the running process
    r = cli(relay, "list", "--status", "cancelled", "--json", offline=True)
    assert [m["id"] for m in json.loads(r.stdout)["items"]] == [second]
    r = cli(relay, "delete", second, offline=True)
    assert "delete (1 affected)" in r.stdout
    r = cli(relay, "show", second, check=False)
    assert r.returncode == 1 and "no message" in r.stderr
    assert TOKEN.split(":")[1] not in r.stdout + r.stderr


def test_falls_back_to_the_database_when_nothing_answers(relay, tmp_path):
    cfg = tmp_path / "other.toml"
    cfg.write_text(f'[storage]\npath = "{relay.db_path}"\n[admin]\nlisten = "127.0.0.1:{free_port()}"\n'
                   f'tokens = ["{TOKEN}"]\n')
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "-m", "relaybox.cli", "--config", str(cfg), "queue", "summary",
                        "--json"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "working on the database" in r.stderr
    assert json.loads(r.stdout)["counts"]["deferred"] >= 1


def test_a_wrong_token_is_an_error_not_a_silent_fallback(relay):
    env = dict(os.environ, PYTHONPATH=REPO, RELAYBOX_API_TOKEN="not-the-token")
    r = subprocess.run([sys.executable, "-m", "relaybox.cli", "--config", relay.config_path, "queue", "list"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "refused" in r.stderr and "401" in r.stderr
    assert "not-the-token" not in r.stderr
