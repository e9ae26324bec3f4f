"""``relaybox run --workers N``: a supervisor and N worker processes on one database (relaybox/workers.py).

relaybox runs as a real subprocess with two workers, delivering to a real Postfix smtp-sink:
(1) both workers accept on the one SMTP port and deliver, /metrics sums their intake counters;
(2) kill -9 of a worker while a backlog drains: it is restarted, its leases go back to the queue at once,
    everything is delivered (a duplicate at most per open connection), nothing stays ``sending``;
(3) SIGTERM to the supervisor: every process drains and exits 0.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.peers.postfix_sink import PostfixSink
from tests.peers.relaybox_proc import REPO, RelayboxProcess

pytestmark = pytest.mark.integration

WORKERS = 2
SESSIONS = 8                         # parallel SMTP clients of the kill -9 test
CONNECTIONS = 4                      # delivery.per_destination of the instance (2 per worker)
MSGID = re.compile(rb"^Message-ID: <(w\d+)@workers\.test>", re.M | re.I)
ACCEPTED_BY = re.compile(r"accepted queue_id=\S+ .* worker=(\d+)")
DELIVERED_BY = re.compile(r"result queue_id=\S+ .*status=delivered.* worker=(\d+)")


class WorkersProcess(RelayboxProcess):
    """relaybox started as ``relaybox run --workers N`` (the supervisor is ``self.proc``)."""

    def __init__(self, workdir: str, sections: dict, workers: int = WORKERS):
        super().__init__(workdir, sections)
        self.workers = workers

    def start(self, timeout: float = 120.0) -> "WorkersProcess":
        env = dict(os.environ, PYTHONPATH=REPO)
        self._log = open(self.log_path, "ab")
        cmd = [sys.executable, "-m", "relaybox.cli", "run", "--config", self.config_path,
               "--workers", str(self.workers)]
        self.proc = subprocess.Popen(cmd,
                                     cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        if not _wait(lambda: self.proc.poll() is not None or "relaybox started: supervisor" in self.log(),
                     timeout):
            raise RuntimeError(f"relaybox did not start: {self.log()}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"relaybox exited with {self.proc.returncode}: {self.log()}")
        return self

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        return children(self.proc.pid)

    def full_log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()


def children(ppid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == ppid and fields[0] != "Z":
            out.append(int(name))
    return sorted(out)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _rows(relay: RelayboxProcess, sql: str) -> list[tuple]:
    """A query on the instance's database, SQLite file or PostgreSQL (storage.url)."""
    url = relay.sections["storage"].get("url")
    if url:
        import psycopg

        with psycopg.connect(url) as c:
            return [tuple(r) for r in c.execute(sql).fetchall()]
    with sqlite3.connect(f"file:{relay.db_path}?mode=ro", uri=True, timeout=30) as c:
        return c.execute(sql).fetchall()


def _statuses(relay: RelayboxProcess) -> dict[str, int]:
    return dict(_rows(relay, "SELECT status, COUNT(*) FROM recipients GROUP BY status"))


def _arrived(sink: PostfixSink) -> collections.Counter[str]:
    seen: collections.Counter[str] = collections.Counter()
    for dump in sink.dumps():
        m = MSGID.search(dump)
        if m:
            seen[m.group(1).decode()] += 1
    return seen


def _message(n: int, size: int = 400) -> bytes:
    return (f"From: app@workers.test\r\nTo: rcpt@dst.test\r\nSubject: {n}\r\n"
            f"Message-ID: <w{n}@workers.test>\r\n\r\n{'x' * size}\r\n").encode()


def _send(port: int, numbers: list[int], sessions: int, per_session: int, size: int = 400) -> list[int]:
    """Send the messages over ``sessions`` parallel clients, each opening a new connection every
    ``per_session`` messages (new connections are what the kernel spreads over the workers). Returns the
    numbers that got a 250."""
    acked: list[int] = []
    lock = threading.Lock()
    chunks = [numbers[i::sessions] for i in range(sessions)]

    def client(chunk: list[int]) -> None:
        todo = list(chunk)
        deadline = time.monotonic() + 120
        while todo and time.monotonic() < deadline:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                    s.ehlo("client.workers.test")
                    for _ in range(per_session):
                        if not todo:
                            break
                        s.sendmail("app@workers.test", ["rcpt@dst.test"], _message(todo[0], size))
                        with lock:
                            acked.append(todo.pop(0))
            except (OSError, smtplib.SMTPException):    # its worker was killed: send it again elsewhere
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return acked


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def _scrape(relay: RelayboxProcess) -> str:
    token = next(x for x in open(os.path.join(relay.workdir, "admin.token")).read().splitlines()
                 if x and not x.startswith("#")).split(":", 1)[1]
    req = urllib.request.Request(f"http://127.0.0.1:{relay.admin_port}/metrics",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode()


ZONE = {"dst.test": {"MX": [(10, "mx.dst.test")]}, "mx.dst.test": {"A": ["127.0.0.1"]}}


def _try_scrape(relay: RelayboxProcess) -> str | None:
    try:
        return _scrape(relay)
    except OSError:
        return None


def _sections(sink: PostfixSink, dns, storage: dict | None = None) -> dict:
    """Direct MX delivery: dnsmasq answers dst.test's MX with 127.0.0.1, where the sink listens."""
    return {
        "storage": storage or {},
        "delivery": {"per_destination": CONNECTIONS, "concurrency": CONNECTIONS, "dsn": False,
                     "poll_interval": "0.2s", "messages_per_connection": 1000, "retry_first": "1s",
                     "mx_port": sink.port, "nameservers": ["127.0.0.1"], "dns_port": dns.port},
        "smtp": {"max_connection_rate_per_ip": 0},
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request):
    """The instance's storage section: the SQLite file (default) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield {}
        return
    server = request.getfixturevalue("postgres_server")
    url = server.create_database()
    yield {"url": url}
    server.drop_database(url)


@pytest.fixture
def sink():
    s = PostfixSink().start()
    yield s
    s.stop()


def test_two_workers_share_the_port_deliver_everything_and_sum_their_metrics(tmp_path, sink, dns_server,
                                                                            storage):
    relay = WorkersProcess(str(tmp_path / "relay"), _sections(sink, dns_server, storage))
    try:
        relay.start()
        pids = relay.worker_pids()
        assert len(pids) == WORKERS and relay.proc.pid not in pids, pids
        total = 400
        acked = _send(relay.smtp_port, list(range(total)), sessions=8, per_session=5)
        assert sorted(acked) == list(range(total))
        assert _wait(lambda: _statuses(relay).get("delivered") == total, 90), \
            (_statuses(relay), relay.log())
        assert _wait(lambda: len(_arrived(sink)) == total, 10)
        assert set(_arrived(sink)) == {f"w{n}" for n in range(total)}
        log = relay.full_log()
        accepted = collections.Counter(ACCEPTED_BY.findall(log))
        delivered = collections.Counter(DELIVERED_BY.findall(log))
        # both workers took sessions on the one port and both delivered from the shared queue
        assert set(accepted) == {"0", "1"} and sum(accepted.values()) == total, accepted
        assert set(delivered) == {"0", "1"} and sum(delivered.values()) >= total, delivered
        # /metrics (served by worker 0 only) counts the intake of every worker
        assert _metric(_scrape(relay), "relaybox_smtp_accepted_messages_total") == total
        # SIGHUP to the supervisor: forwarded, every worker reloads its config
        relay.proc.send_signal(signal.SIGHUP)
        assert _wait(lambda: {f"worker={n}" for n in range(WORKERS)} <= set(
            re.findall(r"reloaded config: .* (worker=\d+)", relay.log())), 30), relay.log()
        assert relay.worker_pids() == pids            # nobody crashed
    finally:
        assert relay.stop() == 0


def test_kill_9_of_a_worker_requeues_its_leases_and_restarts_it(tmp_path, sink, dns_server, storage):
    backlog = 600 if storage else 1200          # PostgreSQL commits are slower here: a smaller backlog
    relay = WorkersProcess(str(tmp_path / "relay"), _sections(sink, dns_server, storage))
    try:
        relay.start()
        pids = relay.worker_pids()
        # the backlog comes in while delivery drains it: both workers hold leases when one is killed
        acked: list[int] = []
        sender = threading.Thread(target=lambda: acked.extend(_send(relay.smtp_port, list(range(backlog)),
                                                                    SESSIONS, 50)))
        sender.start()
        assert _wait(lambda: len(os.listdir(sink.dir)) >= backlog // 4, 90), relay.log()
        victim = pids[1]
        os.kill(victim, signal.SIGKILL)
        assert _wait(lambda: len(relay.worker_pids()) == WORKERS and victim not in relay.worker_pids(), 60), \
            relay.log()
        sender.join(120)
        assert _wait(lambda: _statuses(relay).get("delivered", 0) >= backlog, 120), \
            (_statuses(relay), relay.log())
        log = relay.full_log()
        rows = _rows(relay, "SELECT subject FROM messages")
        stored = collections.Counter(f"w{subject}" for (subject,) in rows)
        statuses = _statuses(relay)
        # every stored message is delivered, nothing is stuck in 'sending'
        assert statuses == {"delivered": sum(stored.values())}, statuses
        assert _wait(lambda: sum(_arrived(sink).values()) >= sum(stored.values()), 10)
        arrived = _arrived(sink)
        assert set(arrived) == set(stored) == {f"w{n}" for n in range(backlog)}   # every message arrived
        assert len(set(acked)) == backlog                                          # and was acknowledged
        # a delivery whose result the kill cut off is sent again: at most one per open connection
        duplicates = sum(arrived[k] - stored[k] for k in arrived)
        assert 0 <= duplicates <= CONNECTIONS, (duplicates, arrived.most_common(5))
        killed = rf"worker 1 \(pid {victim}\) killed by signal 9 .* leases returned to the queue"
        assert re.search(killed, log), log[-3000:]
        assert "worker 1 restarted" in log
        assert relay.proc.poll() is None and alive(pids[0])    # the others went on
        # worker 0 (admin API, /metrics) killed too: back on its port, and the intake counter still counts
        # every acceptance, the dead workers' included
        os.kill(pids[0], signal.SIGKILL)
        assert _wait(lambda: len(relay.worker_pids()) == WORKERS and pids[0] not in relay.worker_pids()
                     and "worker 0 restarted" in relay.log(), 60), relay.log()
        logged = len(re.findall(r"accepted queue_id=", relay.full_log()))
        committed = len(_rows(relay, "SELECT id FROM messages"))
        assert _wait(lambda: _try_scrape(relay) is not None, 60), relay.log()
        counted = _metric(_try_scrape(relay) or "", "relaybox_smtp_accepted_messages_total")
        # an acceptance is the commit, then the counter, then the log line: a kill -9 between two of them
        # (at most one per SMTP session open at the kill) leaves the counter between the others
        assert logged <= counted <= committed <= logged + 2 * SESSIONS, (logged, counted, committed)
    finally:
        assert relay.stop() == 0


def test_sigterm_drains_every_process_and_exits_0(tmp_path, sink, dns_server):
    relay = WorkersProcess(str(tmp_path / "relay"), _sections(sink, dns_server))
    relay.start()
    pids = relay.worker_pids()
    assert len(pids) == WORKERS
    # a session in the middle of DATA when SIGTERM comes: its message still commits
    s = smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30)
    s.ehlo("client.workers.test")
    s.mail("app@workers.test")
    s.rcpt("rcpt@dst.test")
    assert s.docmd("DATA")[0] == 354
    s.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
    started = time.monotonic()
    relay.proc.send_signal(signal.SIGTERM)
    assert _wait(lambda: relay.log().count("shutting down: draining worker=") == WORKERS, 10), relay.log()
    for _ in range(4):      # new sessions, whichever worker the kernel picks, are told to come back later
        with socket.create_connection(("127.0.0.1", relay.smtp_port), timeout=5) as late:
            assert late.recv(200).startswith(b"421 4.3.2")
    s.send(b"second half\r\n.\r\n")
    code, reply = s.getreply()
    s.close()
    assert code == 250, reply
    rc = relay.proc.wait(45)
    assert rc == 0, relay.log()
    assert time.monotonic() - started < 40
    assert not any(alive(p) for p in pids)
    assert relay.full_log().count("relaybox stopped worker=") == WORKERS
    with socket.socket() as probe:                 # nobody listens on the port any more
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)      # (closed sessions in TIME_WAIT)
        probe.bind(("127.0.0.1", relay.smtp_port))
        probe.listen()
    assert _rows(relay, "SELECT COUNT(*) FROM messages WHERE subject='in flight'") == [(1,)]
    relay.stop()
