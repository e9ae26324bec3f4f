"""kill -9 of a real relaybox during POP3 syncs (after = delete): each message is DELEted right after its
acceptance is durable, and one accepted in a session cut before QUIT (the server rolled its DELE back) is
DELEted at the next session. The mailbox ends empty; every message is in the campaign exactly once."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.peers.dovecot import Dovecot
from tests.peers.relaybox_proc import RelayboxProcess

pytestmark = pytest.mark.integration

USER = "pop@org.test"
TOTAL = 300


def message(i: int) -> bytes:
    return (f"From: c{i}@cust.test\r\nTo: {USER}\r\nSubject: pop {i}\r\nMessage-ID: <p{i}@cust.test>\r\n\r\n"
            + "body line\r\n" * 40).encode()


def fill(dc: Dovecot, n: int) -> None:
    """n messages written straight into the Maildir (APPEND one by one would take a minute)."""
    root = os.path.join(dc.mail, USER, "Maildir")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i in range(n):
        with open(os.path.join(root, "new", f"{1700000000 + i}.M{i}P1.test"), "wb") as fh:
            fh.write(message(i))
    for dirpath, _, files in os.walk(os.path.join(dc.mail, USER)):
        shutil.chown(dirpath, "nobody", "nogroup")
        for f in files:
            shutil.chown(os.path.join(dirpath, f), "nobody", "nogroup")


def delivered(maildir: str) -> list[str]:
    new = os.path.join(maildir, "new")
    if not os.path.isdir(new):
        return []
    out = []
    for name in os.listdir(new):
        with open(os.path.join(new, name), "rb") as fh:
            head = fh.read(300)
        out.append(head.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode())
    return out


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what()
        time.sleep(0.02)


def test_kill_9_during_pop3_sync_leaves_nothing_on_the_server(tmp_path):
    dc = Dovecot(users={USER: "pw"}).start()
    relay = None
    try:
        fill(dc, TOTAL)
        assert len(dc.uids(USER, "pw")) == TOTAL
        maildir = str(tmp_path / "desk")
        relay = RelayboxProcess(str(tmp_path / "relay"), {
            "delivery": {"enabled": False},
            "poller": {"fetch_batch": 10, "parallel_deliveries": 4},
            "[[campaigns]]": [{"name": "desk", "kind": "maildir", "path": maildir}],
            "[[channels]]": [{"name": "pop", "host": "127.0.0.1", "port": dc.pop3_port, "tls": "none",
                              "protocol": "pop3", "after": "delete", "user": USER, "password": "pw",
                              "default_campaign": "desk", "poll_interval": "1s"}],
        })
        on_server = []
        for target in (40, 110, 190):            # three sessions cut in the middle of the sync
            relay.start()
            wait_for(lambda t=target: len(delivered(maildir)) >= t, 60,
                     lambda: f"only {len(delivered(maildir))} delivered: {relay.log()}")
            relay.kill()
            on_server.append(len(dc.uids(USER, "pw")))
        # the kills landed before QUIT: what the cut sessions DELEted is still on the server
        assert on_server[0] > TOTAL - len(delivered(maildir)), on_server
        relay.start()
        wait_for(lambda: len(delivered(maildir)) >= TOTAL and dc.uids(USER, "pw") == [], 60,
                 lambda: f"{len(delivered(maildir))} delivered, {len(dc.uids(USER, 'pw'))} left on the"
                         f" server: {relay.log()}")
        assert relay.stop() == 0
        got = sorted(delivered(maildir), key=lambda s: int(s.split()[1]))
        assert got == [f"pop {i}" for i in range(TOTAL)]          # nothing lost, nothing twice
        assert dc.uids(USER, "pw") == []
    finally:
        if relay is not None:
            relay.stop()         # a failed assertion above must not leave our relaybox running
        dc.stop()
