"""Substring search of the message list (recipient, sender, subject) through trigram indexes.

SQLite: the values searched repeat (a newsletter goes to the same addresses every week, an application sends
from a few senders with a few subjects), so the index holds each *distinct* value once, with the number of
rows carrying it: ``search_addresses``, ``search_senders``, ``search_subjects`` (id, value, n). Triggers on
``recipients`` and ``messages`` count a value up on insert (an upsert: one B-tree step when it is known) and
down on delete, removing it at zero; only a value seen for the first time is tokenized into the FTS5
table over it (``..._fts``, ``trigram`` tokenizer, case-insensitive, external content: the index only, no
copy of the text; the rowid is the value's INTEGER PRIMARY KEY, stable through VACUUM). A search finds the
matching values through the rarest trigram of the term, checks them with LIKE, and then, knowing from
``n`` how many rows carry them, either looks those rows up by value (``recipients_addr``,
``messages_sender`` and the ``messages_subject`` index added here, all covering the lookup) or, for a
common term, walks the messages newest first (``store.history``).

PostgreSQL: ``pg_trgm`` GIN indexes on the same columns serve ``ILIKE '%term%'`` (the extension ships in
the server package of Debian's postgresql-15; ``CREATE EXTENSION`` needs the database owner's CREATE
right, pg_trgm being a trusted extension). Without the extension the migration still applies: the
searches stay correct, only unindexed.
"""

_KINDS = (("addresses", "recipients", "address"), ("senders", "messages", "sender"),
          ("subjects", "messages", "subject"))


def _tables() -> str:
    out = []
    for kind, _, _ in _KINDS:
        out.append(f"""
CREATE TABLE search_{kind} (
    id    INTEGER PRIMARY KEY,
    value TEXT NOT NULL UNIQUE,
    n     INTEGER NOT NULL
);
CREATE VIRTUAL TABLE search_{kind}_fts USING fts5(value, content = 'search_{kind}', content_rowid = 'id',
                                                 tokenize = 'trigram');
CREATE TRIGGER search_{kind}_new AFTER INSERT ON search_{kind} BEGIN
    INSERT INTO search_{kind}_fts(rowid, value) VALUES (NEW.id, NEW.value);
END;
CREATE TRIGGER search_{kind}_gone AFTER DELETE ON search_{kind} BEGIN
    INSERT INTO search_{kind}_fts(search_{kind}_fts, rowid, value) VALUES ('delete', OLD.id, OLD.value);
END;
""")
    return "".join(out)


def _counting() -> str:
    out = []
    for kind, table, column in _KINDS:
        nonempty = f"NEW.{column} <> ''"
        out.append(f"""
INSERT INTO search_{kind}(value, n)
    SELECT {column}, COUNT(*) FROM {table} WHERE COALESCE({column}, '') <> '' GROUP BY {column};
CREATE TRIGGER {table}_{kind}_in AFTER INSERT ON {table} WHEN {nonempty} BEGIN
    INSERT INTO search_{kind}(value, n) VALUES (NEW.{column}, 1)
        ON CONFLICT(value) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER {table}_{kind}_out AFTER DELETE ON {table} WHEN OLD.{column} <> '' BEGIN
    UPDATE search_{kind} SET n = n - 1 WHERE value = OLD.{column};
    DELETE FROM search_{kind} WHERE value = OLD.{column} AND n <= 0;
END;
""")
    return "".join(out)


# Lookups by value read only the index: recipients_addr and messages_sender (migration 0001) gain the
# column a lookup returns, and the new subject index has it too (it comes first: the backfill below groups
# by it). Every other query that used the old single-column indexes is served by the new ones as well.
# (Migration 0015 replaces recipients_addr by the same columns in blocks of recipient ids, so intake at a
# large queue dirties no more index pages than at a small one; the lookups go through that.)
SQL = """
DROP INDEX recipients_addr;
CREATE INDEX recipients_addr ON recipients(address, message_id);
DROP INDEX messages_sender;
CREATE INDEX messages_sender ON messages(sender, id);
CREATE INDEX messages_subject ON messages(subject, id);
""" + _tables() + _counting()

PG_SQL = """
DO $$
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'pg_trgm is not available (%); substring searches stay unindexed', SQLERRM;
    END;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        EXECUTE 'CREATE INDEX IF NOT EXISTS recipients_address_trgm ON recipients'
                ' USING gin (address gin_trgm_ops)';
        EXECUTE 'CREATE INDEX IF NOT EXISTS messages_sender_trgm ON messages USING gin (sender gin_trgm_ops)';
        EXECUTE 'CREATE INDEX IF NOT EXISTS messages_subject_trgm ON messages'
                ' USING gin (subject gin_trgm_ops)';
    END IF;
END;
$$;
"""
