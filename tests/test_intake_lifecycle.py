"""Storage failure answers 451 and stores nothing; SIGTERM finishes sessions in DATA and exits 0."""

import asyncio
import signal
import smtplib
import socket
import sqlite3
import time

import aiosmtplib
import pytest

from relay.config import SMTPConfig
from relay.db import Database
from relay.listener import Listener
from relay.policy import Policy
from relay.queue import Spool
from tests.peers.ports import free_port
from tests.peers.relaybox_proc import RelayboxProcess


async def test_failed_commit_answers_451_and_nothing_is_stored(tmp_path):
    db = Database(str(tmp_path / "s.db")).open()
    policy = Policy()
    policy.set_snapshot(["127.0.0.1/32"], {})
    port = free_port()
    listener = Listener(SMTPConfig(listen=[f"127.0.0.1:{port}"]), Spool(db), policy)
    await listener.start()
    try:
        db.fail_commits = OSError("No space left on device")
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        with pytest.raises(aiosmtplib.SMTPDataError) as exc:
            await client.sendmail("app@org.test", ["a@x.test"], b"Subject: x\r\n\r\nbody\r\n")
        assert exc.value.code == 451 and exc.value.message.startswith("4.3.0")
        db.fail_commits = None
        _, reply = await client.sendmail("app@org.test", ["a@x.test"], b"Subject: y\r\n\r\nbody\r\n")
        assert reply.startswith("2.0.0 Ok: queued as")
        await client.quit()
        assert await db.read(lambda c: [r[0] for r in c.execute("SELECT subject FROM messages")]) == ["y"]
    finally:
        await listener.drain(1)
        db.close()


def test_sigterm_drains_session_in_data_and_exits_0(tmp_path):
    relay = RelayboxProcess(str(tmp_path)).start()
    s = smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=10)
    s.ehlo("t")
    s.mail("app@org.test")
    s.rcpt("a@example.test")
    assert s.docmd("DATA")[0] == 354
    s.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
    relay.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # let the signal handler run
    # a new session during the drain is told to come back later
    late = socket.create_connection(("127.0.0.1", relay.smtp_port), timeout=5)
    assert late.recv(200).startswith(b"421 4.3.2")
    late.close()
    s.send(b"second half\r\n.\r\n")
    code, reply = s.getreply()
    assert code == 250, reply
    s.close()
    assert relay.proc.wait(30) == 0
    with sqlite3.connect(relay.db_path) as c:
        assert c.execute("SELECT COUNT(*) FROM messages WHERE subject='in flight'").fetchone()[0] == 1
