"""Core spool schema: messages, bodies, recipients, events, attempts, allowlist, SMTP users, kv."""

SQL = """
CREATE TABLE kv (
    key   TEXT PRIMARY KEY,
    value TEXT
);
INSERT INTO kv(key, value) VALUES ('ping', '0');

CREATE TABLE messages (
    id            TEXT PRIMARY KEY,          -- queue id: short, unique, time-sortable
    created_at    REAL NOT NULL,
    sender        TEXT NOT NULL,             -- envelope MAIL FROM ('' for <>)
    from_header   TEXT,
    subject       TEXT,
    message_id    TEXT,                      -- the Message-ID header
    client_ip     TEXT,
    client_helo   TEXT,
    auth_user     TEXT,
    size          INTEGER NOT NULL,
    body_sha256   TEXT NOT NULL,
    send_at       REAL,                      -- scheduled sending
    held          INTEGER NOT NULL DEFAULT 0,
    crash_count   INTEGER NOT NULL DEFAULT 0 -- processing started but never finished (poison counter)
);
CREATE INDEX messages_created ON messages(created_at);
CREATE INDEX messages_sender ON messages(sender);
CREATE INDEX messages_msgid ON messages(message_id);

CREATE TABLE bodies (
    message_id TEXT PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    data       BLOB NOT NULL
);

CREATE TABLE recipients (
    id              INTEGER PRIMARY KEY,
    message_id      TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    address         TEXT NOT NULL,
    domain          TEXT NOT NULL,
    status          TEXT NOT NULL,   -- scheduled queued sending delivered deferred bounced failed cancelled
    reason          TEXT,            -- e.g. expired, suppressed, poison, nullmx, invalid
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    leased_until    REAL,
    lease_owner     TEXT,
    last_code       INTEGER,
    last_enhanced   TEXT,
    last_text       TEXT,
    route           TEXT,
    updated_at      REAL NOT NULL
);
CREATE INDEX recipients_due ON recipients(status, next_attempt_at);
CREATE INDEX recipients_msg ON recipients(message_id);
CREATE INDEX recipients_addr ON recipients(address);
CREATE INDEX recipients_lease ON recipients(leased_until) WHERE status = 'sending';

CREATE TABLE events (
    id           INTEGER PRIMARY KEY,
    at           REAL NOT NULL,
    message_id   TEXT NOT NULL,
    recipient_id INTEGER,
    status       TEXT NOT NULL,
    actor        TEXT NOT NULL,   -- smtp, scheduler, delivery, admin:<token name>, bounce, system
    reason       TEXT,
    details      TEXT             -- JSON
);
CREATE INDEX events_msg ON events(message_id);
CREATE INDEX events_at ON events(at);

CREATE TABLE attempts (
    id           INTEGER PRIMARY KEY,
    message_id   TEXT NOT NULL,
    started_at   REAL NOT NULL,
    ended_at     REAL,
    route        TEXT,
    host         TEXT,
    ip           TEXT,
    tls          INTEGER,
    result       TEXT,            -- delivered / deferred / bounced / failed (per transaction summary)
    recipients   TEXT,            -- JSON list of recipient ids in this transaction
    transcript   TEXT             -- JSON list of {"at","dir","line"} (server replies and commands, no body)
);
CREATE INDEX attempts_msg ON attempts(message_id);

CREATE TABLE allowlist (
    cidr       TEXT PRIMARY KEY,
    note       TEXT,
    source     TEXT NOT NULL DEFAULT 'api',   -- config | api | cli
    created_at REAL NOT NULL
);

CREATE TABLE smtp_users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,              -- scrypt$N$r$p$salt$hash
    note          TEXT,
    source        TEXT NOT NULL DEFAULT 'api',
    created_at    REAL NOT NULL
);
"""

# PostgreSQL: the same schema (DOUBLE PRECISION times, BIGINT identities, BYTEA blobs)
PG_SQL = """
CREATE TABLE kv (
    key   TEXT PRIMARY KEY,
    value TEXT
);
INSERT INTO kv(key, value) VALUES ('ping', '0');

CREATE TABLE messages (
    id            TEXT PRIMARY KEY,          -- queue id: short, unique, time-sortable
    created_at    DOUBLE PRECISION NOT NULL,
    sender        TEXT NOT NULL,             -- envelope MAIL FROM ('' for <>)
    from_header   TEXT,
    subject       TEXT,
    message_id    TEXT,                      -- the Message-ID header
    client_ip     TEXT,
    client_helo   TEXT,
    auth_user     TEXT,
    size          BIGINT NOT NULL,
    body_sha256   TEXT NOT NULL,
    send_at       DOUBLE PRECISION,                      -- scheduled sending
    held          BIGINT NOT NULL DEFAULT 0,
    crash_count   BIGINT NOT NULL DEFAULT 0 -- processing started but never finished (poison counter)
);
CREATE INDEX messages_created ON messages(created_at);
CREATE INDEX messages_sender ON messages(sender);
CREATE INDEX messages_msgid ON messages(message_id);

CREATE TABLE bodies (
    message_id TEXT PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    data       BYTEA NOT NULL
);
-- stored as they are, like SQLite (no pglz on every intake; mail is mostly compressed or base64 already)
ALTER TABLE bodies ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE recipients (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id      TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    address         TEXT NOT NULL,
    domain          TEXT NOT NULL,
    status          TEXT NOT NULL,   -- scheduled queued sending delivered deferred bounced failed cancelled
    reason          TEXT,            -- e.g. expired, suppressed, poison, nullmx, invalid
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    leased_until    DOUBLE PRECISION,
    lease_owner     TEXT,
    last_code       BIGINT,
    last_enhanced   TEXT,
    last_text       TEXT,
    route           TEXT,
    updated_at      DOUBLE PRECISION NOT NULL
);
CREATE INDEX recipients_due ON recipients(status, next_attempt_at);
CREATE INDEX recipients_msg ON recipients(message_id);
CREATE INDEX recipients_addr ON recipients(address);
CREATE INDEX recipients_lease ON recipients(leased_until) WHERE status = 'sending';

CREATE TABLE events (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           DOUBLE PRECISION NOT NULL,
    message_id   TEXT NOT NULL,
    recipient_id BIGINT,
    status       TEXT NOT NULL,
    actor        TEXT NOT NULL,   -- smtp, scheduler, delivery, admin:<token name>, bounce, system
    reason       TEXT,
    details      TEXT             -- JSON
);
CREATE INDEX events_msg ON events(message_id);
CREATE INDEX events_at ON events(at);

CREATE TABLE attempts (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id   TEXT NOT NULL,
    started_at   DOUBLE PRECISION NOT NULL,
    ended_at     DOUBLE PRECISION,
    route        TEXT,
    host         TEXT,
    ip           TEXT,
    tls          BIGINT,
    result       TEXT,            -- delivered / deferred / bounced / failed (per transaction summary)
    recipients   TEXT,            -- JSON list of recipient ids in this transaction
    transcript   TEXT             -- JSON list of {"at","dir","line"} (server replies and commands, no body)
);
CREATE INDEX attempts_msg ON attempts(message_id);

CREATE TABLE allowlist (
    cidr       TEXT PRIMARY KEY,
    note       TEXT,
    source     TEXT NOT NULL DEFAULT 'api',   -- config | api | cli
    created_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE smtp_users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,              -- scrypt$N$r$p$salt$hash
    note          TEXT,
    source        TEXT NOT NULL DEFAULT 'api',
    created_at    DOUBLE PRECISION NOT NULL
);
"""
