"""The recipients' address index in blocks of recipient ids (migration 0015): a search by recipient finds
the rows of every block, through the index, and a database migrated from before 0015 keeps its rows
searchable."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from store import Store
from store.history import MessageFilter, _where
from store.migrations.m0015_address_blocks import BLOCK_SHIFT
from store.records import NewMessage

pytestmark = pytest.mark.component


def _msg(rcpt: str) -> NewMessage:
    return NewMessage("app@org.test", [rcpt], b"Subject: s\r\n\r\nbody\r\n", subject="s")


async def _jump(store: Store, qid: str, block: int) -> None:
    """Move the recipient of ``qid`` to the start of ``block``: the next recipient ids follow it."""
    await store.db.write(lambda c: c.execute("UPDATE recipients SET id = ? WHERE message_id = ?",
                                             (block << BLOCK_SHIFT, qid)))


async def _found(store: Store, term: str) -> list[str]:
    page = await store.history.list_messages(MessageFilter(recipient=term), limit=50, order="asc")
    return [item.message.id for item in page.items]


async def test_a_recipient_search_finds_its_rows_in_every_block(tmp_path):
    store = Store(str(tmp_path / "blocks.db")).open()
    try:
        wanted = [await store.messages.enqueue(_msg("alpha@x.test"))]          # block 0
        for block in (2, 5):                                                   # a gap: block 1 is empty
            await _jump(store, await store.messages.enqueue(_msg("filler@y.test")), block)
            wanted.append(await store.messages.enqueue(_msg("alpha@x.test")))
            await store.messages.enqueue(_msg("beta@x.test"))
        blocks = await store.db.read(lambda c: sorted({r[0] >> BLOCK_SHIFT for r in c.execute(
            "SELECT r.id FROM recipients r WHERE address = 'alpha@x.test'")}))
        assert blocks == [0, 2, 5]
        assert await _found(store, "alpha@") == wanted
        assert await _found(store, "ALPHA@X.") == wanted                      # case-insensitive
        assert len(await _found(store, "beta@x")) == 2
        assert await _found(store, "gamma@") == []

        def plan(c: sqlite3.Connection) -> str:
            clauses, args = _where(MessageFilter(recipient="alpha@"), c)
            rows = c.execute("EXPLAIN QUERY PLAN SELECT m.id FROM messages m WHERE " + " AND ".join(clauses),
                             args).fetchall()
            return " | ".join(str(r[3]) for r in rows)
        assert "USING COVERING INDEX recipients_addr_block" in await store.db.read(plan)
    finally:
        store.close()


async def test_a_database_from_before_the_blocks_is_migrated_and_searchable(tmp_path):
    path = str(tmp_path / "old.db")
    store = Store(path).open()
    ids = [await store.messages.enqueue(_msg(f"old{i}@past.test")) for i in range(5)]
    store.close()
    with sqlite3.connect(path) as c:                # back to 0013's index, as a database before 0015 has
        c.execute("DROP INDEX recipients_addr_block")
        c.execute("CREATE INDEX recipients_addr ON recipients(address, message_id)")
        c.execute("DELETE FROM schema_migrations WHERE version = 15")
    store = Store(path).open()
    try:
        assert await _found(store, "old3@") == [ids[3]]
        assert len(await _found(store, "@past.test")) == 5
        names = await store.db.read(lambda c: {r[0] for r in c.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'recipients'")})
        assert "recipients_addr_block" in names and "recipients_addr" not in names
    finally:
        store.close()


async def _claim_cost(store: Store, queued: int) -> int:
    """SQLite VM steps (in units of 100) of picking the next 20 recipients to claim with ``queued`` due."""
    from store.messages import _due

    have = await store.db.read(lambda c: c.execute("SELECT COUNT(*) FROM recipients").fetchone()[0])
    for start in range(have, queued, 500):
        await asyncio.gather(*(store.messages.enqueue(_msg(f"r{i}@d{i % 7}.test"))
                               for i in range(start, min(start + 500, queued))))

    def steps(c: sqlite3.Connection) -> int:
        count = [0]

        def tick() -> int:
            count[0] += 1
            return 0
        c.set_progress_handler(tick, 100)
        try:
            assert len(_due(c, time.time() + 1, 20)) == 20
        finally:
            c.set_progress_handler(None, 0)
        return count[0]
    return await store.db.read(steps)


async def test_picking_the_recipients_to_claim_costs_the_same_with_a_big_queue(tmp_path):
    store = Store(str(tmp_path / "claim.db")).open()
    try:
        small = await _claim_cost(store, 200)
        big = await _claim_cost(store, 6000)
        # read in the status index's order: ~the 20 rows taken, not every due one sorted (30x as many)
        assert big <= 2 * small + 5, (small, big)
        held = (await store.messages.claim("t", limit=1, lease=60))[0].message.id
        await store.messages.release([r.id for r in await store.messages.recipients(held)], 0.0)
        assert await store.messages.set_held(held, True)
        claimed = await store.messages.claim("t", limit=50, lease=60)
        assert len(claimed) == 50 and held not in {c.message.id for c in claimed}
    finally:
        store.close()
