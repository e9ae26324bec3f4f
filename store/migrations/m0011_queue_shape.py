"""The queue's shape kept with the writes: recipients waiting per (domain, status, creation slot), so
``queue summary`` (qshape) reads one row per domain and 8-second slot instead of every queued recipient.

The slot is the first 7 characters of the queue id: ids are Crockford base32 of 48-bit milliseconds then
32 bits, so those characters are the creation time in milliseconds >> 13 (8.192 s). The triggers need only
the recipient row itself (no lookup of the message), so cascaded deletes keep the counts exact too. Only
the active statuses are counted; rows that fell to zero are removed by retention.
"""

ACTIVE = "('scheduled', 'queued', 'deferred', 'sending')"

SQL = f"""
CREATE TABLE queue_shape (
    domain TEXT NOT NULL,
    status TEXT NOT NULL,
    slot   TEXT NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (domain, status, slot)
);
INSERT INTO queue_shape(domain, status, slot, n)
    SELECT domain, status, substr(message_id, 1, 7), COUNT(*) FROM recipients
    WHERE status IN {ACTIVE} GROUP BY domain, status, substr(message_id, 1, 7);

CREATE TRIGGER recipients_shape_insert AFTER INSERT ON recipients
    WHEN NEW.status IN {ACTIVE} BEGIN
    INSERT INTO queue_shape(domain, status, slot, n)
        VALUES (NEW.domain, NEW.status, substr(NEW.message_id, 1, 7), 1)
        ON CONFLICT(domain, status, slot) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER recipients_shape_leave AFTER UPDATE OF status ON recipients
    WHEN OLD.status <> NEW.status AND OLD.status IN {ACTIVE} BEGIN
    UPDATE queue_shape SET n = n - 1
        WHERE domain = OLD.domain AND status = OLD.status AND slot = substr(OLD.message_id, 1, 7);
END;

CREATE TRIGGER recipients_shape_enter AFTER UPDATE OF status ON recipients
    WHEN OLD.status <> NEW.status AND NEW.status IN {ACTIVE} BEGIN
    INSERT INTO queue_shape(domain, status, slot, n)
        VALUES (NEW.domain, NEW.status, substr(NEW.message_id, 1, 7), 1)
        ON CONFLICT(domain, status, slot) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER recipients_shape_delete AFTER DELETE ON recipients
    WHEN OLD.status IN {ACTIVE} BEGIN
    UPDATE queue_shape SET n = n - 1
        WHERE domain = OLD.domain AND status = OLD.status AND slot = substr(OLD.message_id, 1, 7);
END;
"""

PG_SQL = f"""
CREATE TABLE queue_shape (
    domain TEXT NOT NULL,
    status TEXT NOT NULL,
    slot   TEXT NOT NULL,
    n      BIGINT NOT NULL,
    PRIMARY KEY (domain, status, slot)
);
INSERT INTO queue_shape(domain, status, slot, n)
    SELECT domain, status, substr(message_id, 1, 7), COUNT(*) FROM recipients
    WHERE status IN {ACTIVE} GROUP BY domain, status, substr(message_id, 1, 7);

CREATE FUNCTION recipients_shape() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status IN {ACTIVE} THEN
        UPDATE queue_shape SET n = n - 1
            WHERE domain = OLD.domain AND status = OLD.status AND slot = substr(OLD.message_id, 1, 7);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status IN {ACTIVE} THEN
        INSERT INTO queue_shape AS q (domain, status, slot, n)
            VALUES (NEW.domain, NEW.status, substr(NEW.message_id, 1, 7), 1)
            ON CONFLICT (domain, status, slot) DO UPDATE SET n = q.n + 1;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER recipients_shape_insert AFTER INSERT ON recipients
    FOR EACH ROW EXECUTE FUNCTION recipients_shape();
CREATE TRIGGER recipients_shape_update AFTER UPDATE OF status ON recipients
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION recipients_shape();
CREATE TRIGGER recipients_shape_delete AFTER DELETE ON recipients
    FOR EACH ROW EXECUTE FUNCTION recipients_shape();
"""
