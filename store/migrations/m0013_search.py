"""Substring search of the message list (recipient, sender, subject) through trigram indexes.

SQLite: FTS5 tables with the ``trigram`` tokenizer (case-insensitive), one per searched column, so a
trigram's list holds only that column's rows:

- ``recipients_search(address)``: external content over ``recipients`` (rowid = ``recipients.id``, an
  INTEGER PRIMARY KEY, stable through VACUUM): the index only, no copy of the text.
- ``senders_search(sender)`` and ``subjects_search(subject)``: one row per message, keyed by the id of its
  first recipient (messages have no stable integer key; recipients are only ever deleted with their
  message), holding their own copy of the text so a cascaded delete can remove the row by rowid alone.

Triggers on ``recipients`` keep all three: ``store.messages.insert_message`` writes the message before its
recipients, so the first recipient's insert copies the message's sender and Subject (which never change
after intake); the recipients' delete (the cascade of a message's) removes their rows. ``store.history``
looks the rarest trigram of a term up and checks the candidates with LIKE (docs/admin-api.md, search).

PostgreSQL: ``pg_trgm`` GIN indexes on the same columns serve ``ILIKE '%term%'`` (the extension ships in
the server package of Debian's postgresql-15; ``CREATE EXTENSION`` needs the database owner's CREATE
right, pg_trgm being a trusted extension). Without the extension the migration still applies: the
searches stay correct, only unindexed.
"""

SQL = """
CREATE VIRTUAL TABLE recipients_search USING fts5(address, content = 'recipients', content_rowid = 'id',
                                                  tokenize = 'trigram');
CREATE VIRTUAL TABLE senders_search USING fts5(sender, tokenize = 'trigram');
CREATE VIRTUAL TABLE subjects_search USING fts5(subject, tokenize = 'trigram');

INSERT INTO recipients_search(recipients_search) VALUES ('rebuild');
INSERT INTO senders_search(rowid, sender)
    SELECT MIN(r.id), m.sender FROM messages m JOIN recipients r ON r.message_id = m.id
    WHERE m.sender <> '' GROUP BY m.id;
INSERT INTO subjects_search(rowid, subject)
    SELECT MIN(r.id), m.subject FROM messages m JOIN recipients r ON r.message_id = m.id
    WHERE COALESCE(m.subject, '') <> '' GROUP BY m.id;

CREATE TRIGGER recipients_search_insert AFTER INSERT ON recipients BEGIN
    INSERT INTO recipients_search(rowid, address) VALUES (NEW.id, NEW.address);
    INSERT INTO senders_search(rowid, sender)
        SELECT NEW.id, m.sender FROM messages m WHERE m.id = NEW.message_id AND m.sender <> ''
        AND NOT EXISTS (SELECT 1 FROM recipients o WHERE o.message_id = NEW.message_id AND o.id < NEW.id);
    INSERT INTO subjects_search(rowid, subject)
        SELECT NEW.id, m.subject FROM messages m WHERE m.id = NEW.message_id AND COALESCE(m.subject, '') <> ''
        AND NOT EXISTS (SELECT 1 FROM recipients o WHERE o.message_id = NEW.message_id AND o.id < NEW.id);
END;

CREATE TRIGGER recipients_search_delete AFTER DELETE ON recipients BEGIN
    INSERT INTO recipients_search(recipients_search, rowid, address) VALUES ('delete', OLD.id, OLD.address);
    DELETE FROM senders_search WHERE rowid = OLD.id;
    DELETE FROM subjects_search WHERE rowid = OLD.id;
END;

CREATE TRIGGER recipients_search_address AFTER UPDATE OF address ON recipients BEGIN
    INSERT INTO recipients_search(recipients_search, rowid, address) VALUES ('delete', OLD.id, OLD.address);
    INSERT INTO recipients_search(rowid, address) VALUES (NEW.id, NEW.address);
END;
"""

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
