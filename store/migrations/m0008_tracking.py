"""Open and click tracking: one row per tracked recipient that was opened, one per (recipient, URL) clicked.

Both reference the recipient and the message with ON DELETE CASCADE: retention (``store.messages.prune``)
and an admin delete remove tracking data together with the message's metadata.
"""

SQL = """
CREATE TABLE tracking_opens (
    recipient_id    INTEGER PRIMARY KEY REFERENCES recipients(id) ON DELETE CASCADE,
    message_id      TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    first_at        REAL NOT NULL,             -- first open of any kind
    last_at         REAL NOT NULL,
    opens           INTEGER NOT NULL,          -- every recorded load of the pixel
    human_opens     INTEGER NOT NULL,          -- loads nothing marked as a machine's
    machine_opens   INTEGER NOT NULL,
    human_first_at  REAL,                      -- first open not marked as a machine's (NULL: none yet)
    last_user_agent TEXT,                      -- truncated; the client address is never stored
    last_reason     TEXT                       -- why the last machine open was one (prefetch, apple-mpp, ...)
);
CREATE INDEX tracking_opens_msg ON tracking_opens(message_id);

CREATE TABLE tracking_clicks (
    recipient_id    INTEGER NOT NULL REFERENCES recipients(id) ON DELETE CASCADE,
    message_id      TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    url             TEXT NOT NULL,
    first_at        REAL NOT NULL,
    last_at         REAL NOT NULL,
    clicks          INTEGER NOT NULL,
    machine_clicks  INTEGER NOT NULL,
    PRIMARY KEY (recipient_id, url)
);
CREATE INDEX tracking_clicks_msg ON tracking_clicks(message_id);
"""

# PostgreSQL: the same schema (DOUBLE PRECISION times, BIGINT identities, BYTEA blobs)
PG_SQL = """
CREATE TABLE tracking_opens (
    recipient_id    BIGINT PRIMARY KEY REFERENCES recipients(id) ON DELETE CASCADE,
    message_id      TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    first_at        DOUBLE PRECISION NOT NULL,             -- first open of any kind
    last_at         DOUBLE PRECISION NOT NULL,
    opens           BIGINT NOT NULL,          -- every recorded load of the pixel
    human_opens     BIGINT NOT NULL,          -- loads nothing marked as a machine's
    machine_opens   BIGINT NOT NULL,
    human_first_at  DOUBLE PRECISION, -- first open not marked as a machine's (NULL: none yet)
    last_user_agent TEXT,                      -- truncated; the client address is never stored
    last_reason     TEXT                       -- why the last machine open was one (prefetch, apple-mpp, ...)
);
CREATE INDEX tracking_opens_msg ON tracking_opens(message_id);

CREATE TABLE tracking_clicks (
    recipient_id    BIGINT NOT NULL REFERENCES recipients(id) ON DELETE CASCADE,
    message_id      TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    url             TEXT NOT NULL,
    first_at        DOUBLE PRECISION NOT NULL,
    last_at         DOUBLE PRECISION NOT NULL,
    clicks          BIGINT NOT NULL,
    machine_clicks  BIGINT NOT NULL,
    PRIMARY KEY (recipient_id, url)
);
CREATE INDEX tracking_clicks_msg ON tracking_clicks(message_id);
"""
