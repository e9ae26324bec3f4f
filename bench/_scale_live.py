"""The live parts of bench/scale.py: a relaybox process on a database already holding N messages.

- ``smtp_intake``: smtp-source (20 sessions, 1 KB) -> relaybox (delivery off) on that file: what a client
  sees at that queue size.
- ``drain``: relaybox delivering that queue to a Postfix smtp-sink over ``connections`` connections for a
  while; the rate is taken from the store's own status counters (``queue_counts``: no scan). With
  ``crash``, relaybox is then killed (SIGKILL), restarted on the same file, and once every recipient that
  was being sent at the kill has been delivered, the Message-IDs the sink received twice are counted: the
  duplicates the kill caused, against the connections that were open.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench._common import drive  # noqa: E402
from tests.peers.postfix_sink import PostfixSink  # noqa: E402
from tests.peers.relaybox_proc import RelayboxProcess  # noqa: E402

MSGID = re.compile(rb"^Message-ID:\s*<([^>]+)>", re.M | re.I)


def _relaybox(db_path: str, sections: dict) -> RelayboxProcess:
    work = tempfile.mkdtemp(prefix="scale-relay-", dir="/tmp")
    return RelayboxProcess(work, {"storage": {"path": db_path, "min_free": 0.0}, **sections})


def _stop(relay: RelayboxProcess) -> None:
    relay.stop()
    shutil.rmtree(relay.workdir, ignore_errors=True)


def rss_mb(relay: RelayboxProcess) -> float:
    """The relaybox process's peak RSS (VmHWM) so far, MB."""
    assert relay.proc is not None
    try:
        with open(f"/proc/{relay.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def smtp_intake(db_path: str, messages: int) -> tuple[float, float]:
    """SMTP intake rate (msg/s) into a relaybox on ``db_path`` (delivery off) and that relaybox's RSS."""
    relay = _relaybox(db_path, {"delivery": {"enabled": False}})
    try:
        relay.start(timeout=120)
        rate = drive(relay.smtp_port, messages, 1024, sessions=20)
        return rate, rss_mb(relay)
    finally:
        _stop(relay)


def counts(db_path: str) -> dict[str, int]:
    """Recipients per status from the counters the triggers keep (m0009): O(statuses), not O(queue)."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30) as c:
        return {str(s): int(n) for s, n in c.execute("SELECT status, n FROM queue_counts")}


def _sending_ids(db_path: str) -> set[int]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30) as c:
        return {int(r[0]) for r in c.execute("SELECT id FROM recipients WHERE status = 'sending'")}


def _pending(db_path: str, ids: set[int]) -> int:
    """How many of ``ids`` are not delivered (yet)."""
    if not ids:
        return 0
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30) as c:
        left = 0
        chunk = sorted(ids)
        for i in range(0, len(chunk), 500):
            part = chunk[i:i + 500]
            left += int(c.execute(f"SELECT COUNT(*) FROM recipients WHERE id IN ({','.join('?' * len(part))})"
                                  " AND status <> 'delivered'", part).fetchone()[0])
        return left


def _wait(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


@dataclass
class Drain:
    rate: float                 # messages delivered per second during the window
    delivered: int              # in the window
    rss_mb: float
    connections: int
    in_flight_at_kill: int = -1     # recipients 'sending' when killed (-1: no crash test)
    duplicates: int = -1            # Message-IDs the sink received more than once
    received: int = 0               # transactions the sink dumped


def _duplicates(sink_dir: str) -> tuple[int, int]:
    seen: collections.Counter[str] = collections.Counter()
    files = glob.glob(os.path.join(sink_dir, "*"))
    for path in files:
        with open(path, "rb") as fh:
            m = MSGID.search(fh.read(8192))
        if m:
            seen[m.group(1).decode("ascii", "replace")] += 1
    return sum(n - 1 for n in seen.values()), len(files)


def drain(db_path: str, seconds: float, connections: int, crash: bool) -> Drain:
    """Deliver from ``db_path`` to a Postfix smtp-sink for ``seconds`` (after the first delivery)."""
    sink = PostfixSink().start()
    sections = {
        "delivery": {"per_destination": connections, "concurrency": connections, "dsn": False,
                     "poll_interval": "0.2s", "messages_per_connection": 1000, "retry_first": "1s"},
        "[[routes]]": [{"name": "sink", "host": "127.0.0.1", "port": sink.port, "tls": "none",
                        "default": True}],
    }
    relay = _relaybox(db_path, sections)
    try:
        start = counts(db_path).get("delivered", 0)
        relay.start(timeout=180)
        if not _wait(lambda: counts(db_path).get("delivered", 0) > start, 120):
            raise RuntimeError(f"nothing delivered: {relay.log()}")
        d0, t0 = counts(db_path).get("delivered", 0), time.monotonic()
        time.sleep(seconds)
        d1, t1 = counts(db_path).get("delivered", 0), time.monotonic()
        out = Drain(rate=(d1 - d0) / (t1 - t0), delivered=d1 - d0, rss_mb=rss_mb(relay),
                    connections=connections)
        if crash:
            relay.kill()
            flying = _sending_ids(db_path)
            out.in_flight_at_kill = len(flying)
            relay.start(timeout=180)
            if not _wait(lambda: _pending(db_path, flying) == 0, 180):
                raise RuntimeError(f"in flight at the kill, not delivered after the restart: {relay.log()}")
        relay.stop()
        if crash:
            out.duplicates, out.received = _duplicates(sink.dir)
        return out
    finally:
        relay.kill()
        _stop(relay)
        sink.stop()
