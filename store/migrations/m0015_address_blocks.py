"""The recipients' address index in blocks of 32,768 rows, so intake at 1M queued costs what it costs at 0.

``recipients_addr`` (address, message_id; migration 0013) put every new recipient at its address's place
in one B-tree: with the queue at a million, each insert of a group commit lands on a page of its own, so a
batch of 200 messages dirtied ~200 index pages (WAL and checkpoint writes, and page-cache misses, none of
which a small queue has): the enqueue rate at 1M was 20-25% below the rate at 0. Keyed by the row's
block first (``id >> 15``: recipient ids only grow), a new recipient goes into the newest block, a region
of at most 32,768 entries that stays in the page cache whatever the size of the queue.

A lookup by value names the blocks: ``(id >> 15) IN (lo..hi)`` from the first to the last recipient id
(``store.history``), one B-tree probe per block and value (31 blocks at 1M recipients). Rows deleted by
retention leave empty blocks behind, which cost a probe each until the ids move on.

PostgreSQL keeps 0013's index (its shared buffers hold it; the search there is pg_trgm's): nothing to do.
"""

BLOCK_SHIFT = 15

SQL = f"""
CREATE INDEX recipients_addr_block ON recipients(id >> {BLOCK_SHIFT}, address, message_id);
DROP INDEX recipients_addr;
"""

PG_SQL = ""
