"""Bounces (every parsed or unparsed report, one row per recipient) and the suppression list."""

SQL = """
CREATE TABLE bounces (
    id            INTEGER PRIMARY KEY,
    at            REAL NOT NULL,
    message_id    TEXT,                     -- queue id, when correlated
    recipient_id  INTEGER,                  -- recipients.id, when correlated
    address       TEXT NOT NULL DEFAULT '', -- the failed / complaining address (lower case)
    category      TEXT NOT NULL,            -- bounce | feedback | autoreply | delivered | unknown
    action        TEXT,                     -- failed | delayed | ... (DSN Action)
    reason        TEXT,                     -- userunknown, mailboxfull, ... feedback, vacation
    kind          TEXT,                     -- hard | soft | '' (not a bounce)
    status        TEXT,                     -- enhanced status code (RFC 3463)
    replycode     TEXT,
    diagnostic    TEXT,
    remote_mta    TEXT,
    source        TEXT NOT NULL,            -- smtp (bounce domain) | channel (poller) | delivery (5xx)
    correlation   TEXT,                     -- verp | relaybox-id | message-id | address | '' (none)
    effect        TEXT,                     -- what relaybox did: bounced, suppressed, counted, ignored, ...
    raw_ref       TEXT,                     -- where the raw report is (channel message id, file) if known
    unparsed      TEXT,                     -- why it could not be parsed ('' when it was)
    raw           BLOB                      -- the first 64 KiB of an unparsed/unknown report, for admins
);
CREATE INDEX bounces_at ON bounces(at);
CREATE INDEX bounces_addr ON bounces(address, at);
CREATE INDEX bounces_msg ON bounces(message_id);

CREATE TABLE suppressions (
    address     TEXT PRIMARY KEY,           -- lower case
    reason      TEXT NOT NULL,              -- userunknown, hostunknown, feedback, soft-limit, manual, ...
    kind        TEXT NOT NULL,              -- hard | soft | complaint | manual
    source      TEXT NOT NULL,              -- bounce | complaint | cli | api | ...
    created_at  REAL NOT NULL,
    expires_at  REAL,                       -- NULL = never
    note        TEXT,
    bounce_id   INTEGER                     -- the bounces row that caused it, if any
);
CREATE INDEX suppressions_expires ON suppressions(expires_at);
"""

# PostgreSQL: the same schema (DOUBLE PRECISION times, BIGINT identities, BYTEA blobs)
PG_SQL = """
CREATE TABLE bounces (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            DOUBLE PRECISION NOT NULL,
    message_id    TEXT,                     -- queue id, when correlated
    recipient_id  BIGINT,                  -- recipients.id, when correlated
    address       TEXT NOT NULL DEFAULT '', -- the failed / complaining address (lower case)
    category      TEXT NOT NULL,            -- bounce | feedback | autoreply | delivered | unknown
    action        TEXT,                     -- failed | delayed | ... (DSN Action)
    reason        TEXT,                     -- userunknown, mailboxfull, ... feedback, vacation
    kind          TEXT,                     -- hard | soft | '' (not a bounce)
    status        TEXT,                     -- enhanced status code (RFC 3463)
    replycode     TEXT,
    diagnostic    TEXT,
    remote_mta    TEXT,
    source        TEXT NOT NULL,            -- smtp (bounce domain) | channel (poller) | delivery (5xx)
    correlation   TEXT,                     -- verp | relaybox-id | message-id | address | '' (none)
    effect        TEXT,                     -- what relaybox did: bounced, suppressed, counted, ignored, ...
    raw_ref       TEXT,                     -- where the raw report is (channel message id, file) if known
    unparsed      TEXT,                     -- why it could not be parsed ('' when it was)
    raw           BYTEA                      -- the first 64 KiB of an unparsed/unknown report, for admins
);
CREATE INDEX bounces_at ON bounces(at);
CREATE INDEX bounces_addr ON bounces(address, at);
CREATE INDEX bounces_msg ON bounces(message_id);

CREATE TABLE suppressions (
    address     TEXT PRIMARY KEY,           -- lower case
    reason      TEXT NOT NULL,              -- userunknown, hostunknown, feedback, soft-limit, manual, ...
    kind        TEXT NOT NULL,              -- hard | soft | complaint | manual
    source      TEXT NOT NULL,              -- bounce | complaint | cli | api | ...
    created_at  DOUBLE PRECISION NOT NULL,
    expires_at  DOUBLE PRECISION,                       -- NULL = never
    note        TEXT,
    bounce_id   BIGINT                     -- the bounces row that caused it, if any
);
CREATE INDEX suppressions_expires ON suppressions(expires_at);
"""
