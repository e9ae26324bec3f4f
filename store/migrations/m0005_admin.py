"""Event webhooks: per-endpoint cursor over ``events`` and status, and the delivery outbox with retries.

``events`` stays the durable source: the dispatcher turns new events (id > cursor) into
``webhook_deliveries`` rows and advances the cursor in the same transaction, so an event is neither lost
nor queued twice across crashes.
"""

SQL = """
CREATE TABLE webhook_endpoints (
    name                 TEXT PRIMARY KEY,
    cursor               INTEGER NOT NULL,          -- last events.id considered
    last_success_at      REAL,
    last_failure_at      REAL,
    last_error           TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    delivered            INTEGER NOT NULL DEFAULT 0,
    failed               INTEGER NOT NULL DEFAULT 0,
    created_at           REAL NOT NULL
);

CREATE TABLE webhook_deliveries (
    id              INTEGER PRIMARY KEY,
    endpoint        TEXT NOT NULL,
    event_id        INTEGER NOT NULL,
    event_type      TEXT NOT NULL,
    message_id      TEXT NOT NULL,
    payload         TEXT NOT NULL,                 -- the JSON body, fixed when the event is queued
    state           TEXT NOT NULL,                 -- pending | delivered | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    created_at      REAL NOT NULL,                 -- when the event happened (max_age counts from here)
    last_status     INTEGER,
    last_error      TEXT,
    updated_at      REAL NOT NULL,
    UNIQUE (endpoint, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(state, next_attempt_at);
CREATE INDEX webhook_deliveries_msg ON webhook_deliveries(endpoint, message_id, event_type);
"""

# PostgreSQL: the same schema (DOUBLE PRECISION times, BIGINT identities, BYTEA blobs)
PG_SQL = """
CREATE TABLE webhook_endpoints (
    name                 TEXT PRIMARY KEY,
    cursor               BIGINT NOT NULL,          -- last events.id considered
    last_success_at      DOUBLE PRECISION,
    last_failure_at      DOUBLE PRECISION,
    last_error           TEXT,
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    delivered            BIGINT NOT NULL DEFAULT 0,
    failed               BIGINT NOT NULL DEFAULT 0,
    created_at           DOUBLE PRECISION NOT NULL
);

CREATE TABLE webhook_deliveries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint        TEXT NOT NULL,
    event_id        BIGINT NOT NULL,
    event_type      TEXT NOT NULL,
    message_id      TEXT NOT NULL,
    payload         TEXT NOT NULL,                 -- the JSON body, fixed when the event is queued
    state           TEXT NOT NULL,                 -- pending | delivered | failed
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    created_at      DOUBLE PRECISION NOT NULL, -- when the event happened (max_age counts from here)
    last_status     BIGINT,
    last_error      TEXT,
    updated_at      DOUBLE PRECISION NOT NULL,
    UNIQUE (endpoint, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(state, next_attempt_at);
CREATE INDEX webhook_deliveries_msg ON webhook_deliveries(endpoint, message_id, event_type);
"""
