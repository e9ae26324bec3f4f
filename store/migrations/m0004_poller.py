"""Inbound poller: channels (mailboxes), campaigns (targets), filters, checkpoints, inbound messages."""

SQL = """
CREATE TABLE campaigns (
    name        TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,              -- maildir | webhook | smtp
    settings    TEXT NOT NULL DEFAULT '{}', -- JSON: path | url, secret, timeout | forward_to, sender
    created_at  REAL NOT NULL
);

CREATE TABLE channels (
    name              TEXT PRIMARY KEY,
    settings          TEXT NOT NULL,        -- JSON of ChannelConfig (secrets included; never printed)
    enabled           INTEGER NOT NULL DEFAULT 1,
    last_poll_at      REAL,
    last_success_at   REAL,
    last_error        TEXT,
    fetched           INTEGER NOT NULL DEFAULT 0,
    routed            INTEGER NOT NULL DEFAULT 0,
    quarantined       INTEGER NOT NULL DEFAULT 0,
    oauth_refresh     TEXT,                 -- rotated refresh token (OAuth2)
    created_at        REAL NOT NULL
);

CREATE TABLE filters (
    id         INTEGER PRIMARY KEY,
    channel    TEXT NOT NULL REFERENCES channels(name) ON DELETE CASCADE,
    position   INTEGER NOT NULL,
    field      TEXT NOT NULL,                -- sender | subject | body | to | header:NAME
    op         TEXT NOT NULL,                -- contains | equals | regex
    value      TEXT NOT NULL,
    campaign   TEXT NOT NULL
);
CREATE INDEX filters_channel ON filters(channel, position);

CREATE TABLE checkpoints (
    channel     TEXT NOT NULL,
    folder      TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    last_uid    INTEGER NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (channel, folder)
);

CREATE TABLE inbound (
    id           INTEGER PRIMARY KEY,
    channel      TEXT NOT NULL,
    folder       TEXT NOT NULL,
    uidvalidity  INTEGER NOT NULL,           -- 0 for POP3
    uid          TEXT NOT NULL,              -- IMAP UID or POP3 UIDL
    message_id   TEXT,
    sha256       TEXT NOT NULL,
    size         INTEGER NOT NULL,
    raw          BLOB,
    status       TEXT NOT NULL,              -- received | delivered | done | quarantined | duplicate
    campaign     TEXT,
    filter_id    INTEGER,
    tries        INTEGER NOT NULL DEFAULT 0,
    next_try_at  REAL NOT NULL DEFAULT 0,
    last_error   TEXT,
    result       TEXT,                       -- target's answer (queue id, file name, HTTP status)
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    UNIQUE (channel, folder, uidvalidity, uid)
);
CREATE INDEX inbound_pending ON inbound(channel, status, next_try_at);
CREATE INDEX inbound_dedupe ON inbound(channel, sha256);
"""

# PostgreSQL: the same schema (DOUBLE PRECISION times, BIGINT identities, BYTEA blobs)
PG_SQL = """
CREATE TABLE campaigns (
    name        TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,              -- maildir | webhook | smtp
    settings    TEXT NOT NULL DEFAULT '{}', -- JSON: path | url, secret, timeout | forward_to, sender
    created_at  DOUBLE PRECISION NOT NULL
);

CREATE TABLE channels (
    name              TEXT PRIMARY KEY,
    settings          TEXT NOT NULL,        -- JSON of ChannelConfig (secrets included; never printed)
    enabled           BIGINT NOT NULL DEFAULT 1,
    last_poll_at      DOUBLE PRECISION,
    last_success_at   DOUBLE PRECISION,
    last_error        TEXT,
    fetched           BIGINT NOT NULL DEFAULT 0,
    routed            BIGINT NOT NULL DEFAULT 0,
    quarantined       BIGINT NOT NULL DEFAULT 0,
    oauth_refresh     TEXT,                 -- rotated refresh token (OAuth2)
    created_at        DOUBLE PRECISION NOT NULL
);

CREATE TABLE filters (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel    TEXT NOT NULL REFERENCES channels(name) ON DELETE CASCADE,
    position   BIGINT NOT NULL,
    field      TEXT NOT NULL,                -- sender | subject | body | to | header:NAME
    op         TEXT NOT NULL,                -- contains | equals | regex
    value      TEXT NOT NULL,
    campaign   TEXT NOT NULL
);
CREATE INDEX filters_channel ON filters(channel, position);

CREATE TABLE checkpoints (
    channel     TEXT NOT NULL,
    folder      TEXT NOT NULL,
    uidvalidity BIGINT NOT NULL,
    last_uid    BIGINT NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (channel, folder)
);

CREATE TABLE inbound (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel      TEXT NOT NULL,
    folder       TEXT NOT NULL,
    uidvalidity  BIGINT NOT NULL,           -- 0 for POP3
    uid          TEXT NOT NULL,              -- IMAP UID or POP3 UIDL
    message_id   TEXT,
    sha256       TEXT NOT NULL,
    size         BIGINT NOT NULL,
    raw          BYTEA,
    status       TEXT NOT NULL,              -- received | delivered | done | quarantined | duplicate
    campaign     TEXT,
    filter_id    BIGINT,
    tries        BIGINT NOT NULL DEFAULT 0,
    next_try_at  DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_error   TEXT,
    result       TEXT,                       -- target's answer (queue id, file name, HTTP status)
    created_at   DOUBLE PRECISION NOT NULL,
    updated_at   DOUBLE PRECISION NOT NULL,
    UNIQUE (channel, folder, uidvalidity, uid)
);
CREATE INDEX inbound_pending ON inbound(channel, status, next_try_at);
CREATE INDEX inbound_dedupe ON inbound(channel, sha256);
"""
