"""Durability under kill -9: every message that got 250 survives byte-identical; nothing else appears.

relaybox runs as a real subprocess; 4 concurrent SMTP clients send mixed sizes (1 KB .. 120 KB); the test
SIGKILLs the process at several points under load, restarts it on the same database, and goes on.
"""

from __future__ import annotations

import hashlib
import random
import smtplib
import sqlite3
import threading
import time

import pytest

from tests.peers.relaybox_proc import RelayboxProcess

pytestmark = pytest.mark.integration

CLIENTS = 4
KILL_AFTER = (300, 900, 1500)     # cumulative acknowledged messages at which the process is killed
TOTAL = 2100


class Load:
    def __init__(self):
        self.lock = threading.Lock()
        self.acked: dict[str, tuple[str, bytes]] = {}   # token -> (queue id, sha256 of sent bytes)
        self.sent: dict[str, bytes] = {}
        self.inflight: set[str] = set()
        self.counter = 0

    def next_token(self) -> str:
        with self.lock:
            self.counter += 1
            return f"T{self.counter:06d}"


def make_message(token: str, rng: random.Random) -> bytes:
    size = rng.choice([1_000, 5_000, 20_000, 120_000])
    line = (token * 20)[:76].encode()
    body = b"\r\n".join([line] * (size // 78))
    return (f"From: app@org.test\r\nTo: rcpt@example.test\r\nSubject: {token}\r\n"
            f"Date: Mon, 23 Nov 2026 07:00:00 +0000\r\nMessage-ID: <{token}@org.test>\r\n\r\n").encode() \
        + body + b"\r\n"


def client_loop(port: int, load: Load, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    s = None
    while not stop.is_set():
        token = load.next_token()
        msg = make_message(token, rng)
        with load.lock:
            load.sent[token] = msg
            load.inflight.add(token)
        try:
            if s is None:
                s = smtplib.SMTP("127.0.0.1", port, timeout=10)
                s.ehlo("crash.test")
            s.mail("app@org.test")
            s.rcpt("rcpt@example.test")
            code, reply = s.data(msg)
            if code == 250:
                qid = reply.decode().rsplit(" ", 1)[1]
                with load.lock:
                    load.acked[token] = (qid, hashlib.sha256(msg).hexdigest())
                    load.inflight.discard(token)
            else:
                raise AssertionError(f"unexpected reply {code} {reply!r}")
        except (OSError, smtplib.SMTPException):
            s = None
            stop.wait(0.05)


def test_kill_9_under_load_loses_no_acknowledged_message(tmp_path):
    relay = RelayboxProcess(str(tmp_path)).start()
    load = Load()
    kills = 0
    try:
        for kill_at in KILL_AFTER + (TOTAL,):
            stop = threading.Event()
            threads = [threading.Thread(target=client_loop, args=(relay.smtp_port, load, stop,
                                                                  i * 7919 + kills))
                       for i in range(CLIENTS)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 120
            while len(load.acked) < kill_at and all(t.is_alive() for t in threads):
                assert time.monotonic() < deadline, f"load stalled at {len(load.acked)}: {relay.log()}"
                stop.wait(0.01)
            if kill_at != TOTAL:
                relay.kill()          # SIGKILL mid-load: clients are in the middle of transactions
                kills += 1
            stop.set()
            for t in threads:
                t.join(30)
            if kill_at != TOTAL:
                relay.start()
    finally:
        assert relay.stop() == 0

    assert kills == 3 and len(load.acked) >= 2000
    with sqlite3.connect(relay.db_path) as c:
        rows = c.execute("SELECT m.id, m.subject, b.data FROM messages m JOIN bodies b ON b.message_id = m.id"
                         " WHERE m.sender = 'app@org.test'"
                         ).fetchall()
    by_token = {}
    for qid, subject, data in rows:
        by_token.setdefault(subject, []).append((qid, bytes(data)))
    missing = [t for t in load.acked if t not in by_token]
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:5]}"
    for token, (qid, digest) in load.acked.items():
        stored = dict(by_token[token])[qid]
        # stored = our Received + X-Relaybox-ID lines followed by exactly the bytes the client sent
        assert hashlib.sha256(stored[stored.index(b"From: app@org.test"):]).hexdigest() == digest, token
    unacked = set(by_token) - set(load.acked)
    # only transactions cut by a kill may be stored without the client having seen the 250 (at most one
    # per client per kill); nothing the client never sent or gave up on before DATA ended can appear
    assert unacked <= load.inflight
    assert len(unacked) <= CLIENTS * kills
    assert all(len(v) == 1 for v in by_token.values()), "a message was stored twice"
