"""relaybox on PostgreSQL (``storage.url``), as a process: SMTP in, delivery out, the CLI on the same
database. The store contract suite covers the aggregates; this covers the wiring."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
import time

import pytest

from tests.peers.postfix_sink import PostfixSink
from tests.peers.relaybox_proc import RelayboxProcess

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_relaybox_runs_on_postgresql_and_delivers(tmp_path, postgres_server):
    url = postgres_server.create_database()
    sink = PostfixSink().start()
    relay = RelayboxProcess(str(tmp_path / "relay"), {
        "storage": {"url": url},
        "smtp": {"allowlist": ["127.0.0.1/32"]},
        "[[routes]]": [{"name": "sink", "host": "127.0.0.1", "port": sink.port, "tls": "none",
                        "default": True}],
    })
    try:
        relay.start()
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=10) as s:
            for n in range(5):
                s.sendmail("app@org.test", [f"r{n}@dst.test"],
                           f"Subject: pg {n}\r\nMessage-ID: <pg{n}@org.test>\r\n\r\nhello\r\n".encode())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(sink.dumps()) < 5:
            time.sleep(0.1)
        assert len(sink.dumps()) == 5, relay.log()
        assert relay.stop() == 0
        assert not os.path.exists(relay.db_path)          # nothing went to a SQLite file
        out = subprocess.run([sys.executable, "-m", "relaybox.cli", "--config", relay.config_path, "queue",
                              "list", "--offline", "--json"], capture_output=True, text=True, cwd=REPO,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        items = json.loads(out.stdout)["items"]
        assert sorted(m["subject"] for m in items) == [f"pg {n}" for n in range(5)]
        assert {m["status"] for m in items} == {"delivered"}
    finally:
        relay.kill()
        sink.stop()
        postgres_server.drop_database(url)
