"""relaybox as a real process delivering to a real MTA: Postfix's smtp-sink found through dnsmasq MX
records, DKIM on; and a kill -9 in the middle of DATA, after which the restarted relay delivers every
message (at least once; duplicates only for transactions in flight at the kill)."""

from __future__ import annotations

import json
import os
import smtplib
import sqlite3
import time

import dkim as dkimpy
import pytest

from tests.peers.dnsmasq import DnsmasqServer
from tests.peers.postfix_sink import PostfixSink
from tests.peers.relaybox_proc import RelayboxProcess

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def statuses(db_path: str) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return dict(conn.execute("SELECT status, COUNT(*) FROM recipients GROUP BY status").fetchall())
    finally:
        conn.close()


def wait_for(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def send(port: int, n: int, tag: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        for i in range(n):
            msg = (f"From: Shop <news@src.test>\r\nTo: user{i}@dst.test\r\nSubject: {tag} {i}\r\n"
                   f"Message-ID: <{tag}-{i}@src.test>\r\n\r\nbody {tag}-{i}\r\n").encode()
            c.sendmail("news@src.test", [f"user{i}@dst.test"], msg)


@pytest.fixture
def keyfile(tmp_path):
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "relaybox.cli", "dkim", "keygen", "src.test", "e2e", "--dir",
                    str(tmp_path)], cwd=ROOT, check=True, capture_output=True)
    path = tmp_path / "src.test.e2e.key"
    from cryptography.hazmat.primitives import serialization

    from relay.delivery.dkim import dns_record

    key = serialization.load_pem_private_key(path.read_bytes(), None)
    return str(path), dns_record(key)


def relay_sections(dns, sink, keyfile):
    return {
        "delivery": {"mx_port": sink.port, "nameservers": ["127.0.0.1"], "dns_port": dns.port,
                     "poll_interval": 0.1, "connect_timeout": 5, "command_timeout": 10},
        "dkim": {"enabled": True},
        'dkim.domains."src.test"': {"selector": "e2e", "key_file": keyfile[0]},
    }


def test_delivers_through_mx_to_postfix_smtp_sink_with_dkim(tmp_path, keyfile):
    zone = {"dst.test": {"MX": [(10, "mx.dst.test")]}, "mx.dst.test": {"A": ["127.0.0.1"]}}
    sink = PostfixSink().start()
    with DnsmasqServer(zone) as dns:
        relay = RelayboxProcess(str(tmp_path / "relay"), relay_sections(dns, sink, keyfile)).start()
        try:
            send(relay.smtp_port, 3, "happy")
            assert wait_for(lambda: statuses(relay.db_path).get("delivered") == 3), relay.log()
            assert wait_for(lambda: len(sink.dumps()) == 3)
        finally:
            relay.stop()
    dumps = sink.dumps()
    sink.stop()
    for d in dumps:
        assert b"X-Mail-Args: <news@src.test>" in d
        message = d.split(b"\nReceived: from", 1)[1]
        message = b"Received: from" + message
        assert b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=src.test; s=e2e;" in message
        crlf = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        assert dkimpy.verify(crlf, dnsfunc=lambda name, timeout=5: keyfile[1].encode()), message[:400]
    conn = sqlite3.connect(relay.db_path)
    rows = conn.execute("SELECT host, ip, tls, result, transcript FROM attempts").fetchall()
    conn.close()
    assert len(rows) == 3 and {r[0] for r in rows} == {"mx.dst.test"}
    assert {r[3] for r in rows} == {"delivered"}
    lines = [e["line"] for e in json.loads(rows[0][4])]
    assert any(x.startswith("220 ") and "ESMTP" in x for x in lines), lines
    assert any(x.startswith("RCPT TO:<user") for x in lines)


def test_kill_9_during_data_then_restart_delivers_everything(tmp_path, keyfile):
    zone = {"dst.test": {"MX": [(10, "mx.dst.test")]}, "mx.dst.test": {"A": ["127.0.0.1"]}}
    slow = PostfixSink(data_delay=30).start()
    with DnsmasqServer(zone) as dns:
        sections = relay_sections(dns, slow, keyfile)
        sections["delivery"]["lease"] = 600
        relay = RelayboxProcess(str(tmp_path / "relay"), sections).start()
        send(relay.smtp_port, 5, "crash")
        assert wait_for(lambda: statuses(relay.db_path).get("sending") == 5), statuses(relay.db_path)
        time.sleep(0.5)                   # the DATA of each transaction is now waiting for the sink
        relay.kill()
        assert statuses(relay.db_path) == {"sending": 5}
        slow.stop(cleanup=False)
        fast = PostfixSink(port=slow.port)
        fast.dir = slow.dir
        fast.start()
        relay.start()
        try:
            assert wait_for(lambda: statuses(relay.db_path).get("delivered") == 5), relay.log()
        finally:
            relay.stop()
        subjects = [line for d in fast.dumps() for line in d.split(b"\n")
                    if line.startswith(b"Subject: crash")]
        fast.stop()
    assert sorted(set(subjects)) == [f"Subject: crash {i}".encode() for i in range(5)]
    assert len(subjects) <= 10        # at most the transactions in flight at the kill are duplicated
