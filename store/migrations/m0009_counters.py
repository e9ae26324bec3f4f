"""Counters kept with the writes, so nothing on a scrape or a summary scans the queue.

- ``queue_counts``: recipients per status, maintained by triggers on ``recipients`` (insert, status change,
  delete — cascaded deletes from ``messages`` fire them too), so every path that writes a recipient keeps
  it exact; backfilled from the existing rows.
- ``recipients_waiting_msg``: a partial index on the message ids of recipients waiting for delivery
  (queue ids sort by creation time), so "the oldest waiting message" is one index probe.
- ``messages_held``: a partial index, so counting held messages costs the held ones only.
"""

SQL = """
CREATE TABLE queue_counts (
    status TEXT PRIMARY KEY,
    n      INTEGER NOT NULL
);
INSERT INTO queue_counts(status, n) SELECT status, COUNT(*) FROM recipients GROUP BY status;

CREATE TRIGGER recipients_count_insert AFTER INSERT ON recipients BEGIN
    INSERT INTO queue_counts(status, n) VALUES (NEW.status, 1)
        ON CONFLICT(status) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER recipients_count_update AFTER UPDATE OF status ON recipients
    WHEN OLD.status <> NEW.status BEGIN
    UPDATE queue_counts SET n = n - 1 WHERE status = OLD.status;
    INSERT INTO queue_counts(status, n) VALUES (NEW.status, 1)
        ON CONFLICT(status) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER recipients_count_delete AFTER DELETE ON recipients BEGIN
    UPDATE queue_counts SET n = n - 1 WHERE status = OLD.status;
END;

CREATE INDEX recipients_waiting_msg ON recipients(message_id)
    WHERE status IN ('queued', 'deferred', 'sending');
CREATE INDEX messages_held ON messages(held) WHERE held = 1;
"""

# PostgreSQL: the same counters, the triggers as one plpgsql function (statement order as above)
PG_SQL = """
CREATE TABLE queue_counts (
    status TEXT PRIMARY KEY,
    n      BIGINT NOT NULL
);
INSERT INTO queue_counts(status, n) SELECT status, COUNT(*) FROM recipients GROUP BY status;

CREATE FUNCTION recipients_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE queue_counts SET n = n - 1 WHERE status = OLD.status;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO queue_counts AS q (status, n) VALUES (NEW.status, 1)
            ON CONFLICT (status) DO UPDATE SET n = q.n + 1;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER recipients_count_insert AFTER INSERT ON recipients
    FOR EACH ROW EXECUTE FUNCTION recipients_count();
CREATE TRIGGER recipients_count_update AFTER UPDATE OF status ON recipients
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION recipients_count();
CREATE TRIGGER recipients_count_delete AFTER DELETE ON recipients
    FOR EACH ROW EXECUTE FUNCTION recipients_count();

CREATE INDEX recipients_waiting_msg ON recipients(message_id)
    WHERE status IN ('queued', 'deferred', 'sending');
CREATE INDEX messages_held ON messages(held) WHERE held = 1;
"""
