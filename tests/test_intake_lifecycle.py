"""Storage failure answers 451 and stores nothing; SIGTERM finishes sessions in DATA and exits 0."""

import signal
import smtplib
import socket
import sqlite3
import time

import aiosmtplib
import pytest

from relay.config import SMTPConfig
from relay.intake.listener import Listener
from relay.intake.policy import Policy
from relay.spool.spool import Spool
from store import Store
from tests.peers.ports import free_port
from tests.peers.relaybox_proc import RelayboxProcess

pytestmark = pytest.mark.integration


async def test_failed_commit_answers_451_and_nothing_is_stored(tmp_path):
    db = Store(str(tmp_path / "s.db")).open()
    policy = Policy()
    policy.set_snapshot(["127.0.0.1/32"], {})
    port = free_port()
    listener = Listener(SMTPConfig(listen=[f"127.0.0.1:{port}"]), Spool(db), policy)
    await listener.start()
    try:
        db.db.fail_commits = OSError("No space left on device")
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        with pytest.raises(aiosmtplib.SMTPDataError) as exc:
            await client.sendmail("app@org.test", ["a@x.test"], b"Subject: x\r\n\r\nbody\r\n")
        assert exc.value.code == 451 and exc.value.message.startswith("4.3.0")
        db.db.fail_commits = None
        _, reply = await client.sendmail("app@org.test", ["a@x.test"], b"Subject: y\r\n\r\nbody\r\n")
        assert reply.startswith("2.0.0 Ok: queued as")
        await client.quit()
        assert await db.db.read(lambda c: [r[0] for r in c.execute("SELECT subject FROM messages")]) == ["y"]
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


def test_sighup_reloads_allowlist_seed_and_implicit_tls(tmp_path):
    from tests.peers.certs import make_cert
    from tests.peers.relaybox_proc import write_config

    cert, key = make_cert(str(tmp_path / "tls"))
    tls_port = free_port()
    relay = RelayboxProcess(str(tmp_path), {
        "smtp": {"implicit_tls_listen": [f"127.0.0.1:{tls_port}"]},
        "smtp.tls": {"cert_file": cert, "key_file": key},
    }).start()
    try:
        s = smtplib.SMTP("127.0.0.1", relay.smtp_port, source_address=("127.0.0.5", 0), timeout=10)
        s.ehlo("t")
        s.mail("app@org.test")
        assert s.rcpt("a@example.test")[0] == 550
        s.quit()
        relay.sections["smtp"]["allowlist"] = ["127.0.0.1/32", "::1/128", "127.0.0.5/32"]
        write_config(relay.config_path, relay.sections)
        relay.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded config: allowlist" not in relay.log():
            assert time.monotonic() < deadline, relay.log()
            time.sleep(0.1)
        s = smtplib.SMTP("127.0.0.1", relay.smtp_port, source_address=("127.0.0.5", 0), timeout=10)
        s.ehlo("t")
        s.mail("app@org.test")
        assert s.rcpt("a@example.test")[0] == 250
        s.quit()
        import ssl
        t = smtplib.SMTP_SSL("127.0.0.1", tls_port, context=ssl._create_unverified_context(), timeout=10)
        t.ehlo("t")
        assert "starttls" not in t.esmtp_features and "auth" in t.esmtp_features
        assert t.sendmail("app@org.test", ["a@example.test"], b"Subject: 465\r\n\r\nx\r\n") == {}
        t.quit()
    finally:
        assert relay.stop() == 0
