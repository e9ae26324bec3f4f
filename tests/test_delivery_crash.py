"""kill -9 during the drain of a backlog duplicates at most one message per open connection.

A backlog is spooled, relaybox delivers it to a real Postfix smtp-sink (each transaction dumped to a file)
over a bounded number of connections, and is SIGKILLed in the middle of the drain. After a restart on the
same database everything is delivered; a message arrives twice only when the next hop had accepted it but
its result was not yet durable — at most one such transaction per open connection, because a connection
carries its next transaction only after the previous result is committed (relay/delivery/scheduler.py
``_deliver_and_record``).
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import sqlite3
import time

import pytest

from relay.envelope import NewMessage
from relay.spool.spool import Spool
from store import Store
from tests.peers.postfix_sink import PostfixSink
from tests.peers.relaybox_proc import RelayboxProcess

pytestmark = pytest.mark.integration

BACKLOG = 1500
CONNECTIONS = 4               # delivery.per_destination: connections open towards the sink
KILL_AT = 500                 # dumps at the sink when relaybox is killed
MSGID = re.compile(rb"^Message-ID: <(m\d+)@crash\.test>", re.M | re.I)


def _spool_backlog(db_path: str) -> None:
    async def fill() -> None:
        store = Store(db_path).open()
        spool = Spool(store)
        try:
            for start in range(0, BACKLOG, 250):
                await asyncio.gather(*(spool.enqueue(NewMessage(
                    "app@crash.test", ["rcpt@dst.test"],
                    f"From: app@crash.test\r\nTo: rcpt@dst.test\r\nSubject: {n}\r\n"
                    f"Message-ID: <m{n}@crash.test>\r\n\r\n{'x' * 400}\r\n".encode(),
                    from_header="app@crash.test")) for n in range(start, min(start + 250, BACKLOG))))
        finally:
            store.close()

    asyncio.run(fill())


def _statuses(db_path: str) -> dict[str, int]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as c:
        return dict(c.execute("SELECT status, COUNT(*) FROM recipients GROUP BY status").fetchall())


def _arrived(sink: PostfixSink) -> collections.Counter[str]:
    seen: collections.Counter[str] = collections.Counter()
    for dump in sink.dumps():
        m = MSGID.search(dump)
        if m:
            seen[m.group(1).decode()] += 1
    return seen


def _wait(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_kill_during_drain_duplicates_at_most_one_message_per_connection(tmp_path):
    sink = PostfixSink().start()
    sections = {
        "delivery": {"per_destination": CONNECTIONS, "concurrency": CONNECTIONS, "dsn": False,
                     "poll_interval": "0.2s", "messages_per_connection": 1000, "retry_first": "1s"},
        "[[routes]]": [{"name": "sink", "host": "127.0.0.1", "port": sink.port, "tls": "none",
                        "default": True}],
    }
    relay = RelayboxProcess(str(tmp_path / "relay"), sections)
    try:
        _spool_backlog(relay.db_path)
        relay.start()
        assert _wait(lambda: len(os.listdir(sink.dir)) >= KILL_AT, 60), relay.log()
        relay.kill()
        before = _statuses(relay.db_path)
        assert before.get("delivered", 0) < BACKLOG, "the drain ended before the kill: nothing was tested"
        relay.start()
        assert _wait(lambda: _statuses(relay.db_path).get("delivered") == BACKLOG, 120), \
            (_statuses(relay.db_path), relay.log())
        assert relay.stop() == 0
        arrived = _arrived(sink)
        assert set(arrived) == {f"m{n}" for n in range(BACKLOG)}          # nothing lost
        duplicates = sum(n - 1 for n in arrived.values())
        assert duplicates <= CONNECTIONS, (duplicates, before)
        with open(relay.log_path, encoding="utf-8", errors="replace") as fh:
            assert "crash recovery" in fh.read()    # the kill left leases, returned at the restart
    finally:
        relay.kill()
        sink.stop()
