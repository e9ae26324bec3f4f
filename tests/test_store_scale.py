"""What one message costs the SQLite writer: the bytes a group-committed batch of enqueues writes.

Each job of a batch runs in its own SAVEPOINT, so every page a job changes that the batch had already
changed is first copied to the sub-journal. Kept in a temp file (SQLite's default once it passes 64 KiB),
that copy went through write syscalls: ~100 KB written per 1 KB message. With the writer's temp store in
memory, what reaches the files is the WAL (and its checkpoints): a few KB per message.
"""

from __future__ import annotations

import asyncio

import pytest

from store import Store
from store.history import MessageFilter
from store.records import NewMessage

pytestmark = pytest.mark.component


def _written() -> int:
    """Bytes this process has written through write syscalls so far (all its threads)."""
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


def _message(i: int) -> NewMessage:
    body = (f"From: app@org.test\r\nSubject: s{i % 7}\r\nMessage-ID: <{i}.x@org.test>\r\n\r\n".encode()
            + b"x" * 900 + b"\r\n")
    return NewMessage("app@org.test", [f"r{i % 500}@d{i % 50}.test"], body, subject=f"s{i % 7}",
                      message_id_header=f"<{i}.x@org.test>")


async def test_a_batch_of_enqueues_writes_a_few_kilobytes_per_message(tmp_path):
    store = Store(str(tmp_path / "scale.db")).open()
    try:
        for start in range(0, 2000, 200):          # warm: tables and indexes past a few pages
            await asyncio.gather(*(store.messages.enqueue(_message(i)) for i in range(start, start + 200)))
        before, batches = _written(), store.db.batches
        count = 2000
        for start in range(2000, 2000 + count, 200):
            await asyncio.gather(*(store.messages.enqueue(_message(i)) for i in range(start, start + 200)))
        per_message = (_written() - before) / count
        assert store.db.batches - batches <= count / 100, "the enqueues were not group-committed"
        # the WAL frames of the rows (1 KB body, message, recipient, event, index and counter pages) and
        # their checkpoint: ~5-7 KB; a sub-journal in a temp file made it ~100 KB
        assert per_message < 25_000, per_message
        assert await store.history.count_matching(MessageFilter()) == 4000
    finally:
        store.close()
