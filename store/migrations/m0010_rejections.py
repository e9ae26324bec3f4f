"""Failures explained: the attempt a delivery-time bounce came from, and the intake rejection log.

- ``bounces.attempt_id``: the ``attempts`` row (SMTP transaction) a synchronous rejection at delivery was
  read from (NULL for reports that arrived later, and for local refusals: expired, suppressed, invalid).
- ``rejections``: transactions and recipients refused at SMTP time ("outgoing traffic errors"), one row per
  client + reason + sender and minute with a count (a flood is one row), pruned by age and by row count
  (``smtp.rejection_log`` settings; ``store.rejections``).
"""

SQL = """
ALTER TABLE bounces ADD COLUMN attempt_id INTEGER;

CREATE TABLE rejections (
    id          INTEGER PRIMARY KEY,
    first_at    REAL NOT NULL,
    last_at     REAL NOT NULL,
    count       INTEGER NOT NULL DEFAULT 1,
    client_ip   TEXT NOT NULL DEFAULT '',
    auth_user   TEXT NOT NULL DEFAULT '',
    sender      TEXT NOT NULL DEFAULT '',      -- MAIL FROM as given ('' before MAIL or for <>)
    recipient   TEXT NOT NULL DEFAULT '',      -- the RCPT argument as typed (bounded, escaped)
    command     TEXT NOT NULL DEFAULT '',      -- CONNECT | AUTH | MAIL | RCPT | DATA
    code        INTEGER NOT NULL,
    enhanced    TEXT NOT NULL DEFAULT '',
    reason      TEXT NOT NULL,                 -- relay_denied, bad_recipient, syntax, too_big, auth_failed...
    text        TEXT NOT NULL DEFAULT ''       -- the reply we sent
);
CREATE INDEX rejections_last ON rejections(last_at);
CREATE INDEX rejections_flood ON rejections(client_ip, reason, sender, last_at);
CREATE INDEX rejections_sender ON rejections(sender);
"""

# PostgreSQL: the same schema (DOUBLE PRECISION times, BIGINT identities)
PG_SQL = """
ALTER TABLE bounces ADD COLUMN attempt_id BIGINT;

CREATE TABLE rejections (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    first_at    DOUBLE PRECISION NOT NULL,
    last_at     DOUBLE PRECISION NOT NULL,
    count       BIGINT NOT NULL DEFAULT 1,
    client_ip   TEXT NOT NULL DEFAULT '',
    auth_user   TEXT NOT NULL DEFAULT '',
    sender      TEXT NOT NULL DEFAULT '',      -- MAIL FROM as given ('' before MAIL or for <>)
    recipient   TEXT NOT NULL DEFAULT '',      -- the RCPT argument as typed (bounded, escaped)
    command     TEXT NOT NULL DEFAULT '',      -- CONNECT | AUTH | MAIL | RCPT | DATA
    code        BIGINT NOT NULL,
    enhanced    TEXT NOT NULL DEFAULT '',
    reason      TEXT NOT NULL,                 -- relay_denied, bad_recipient, syntax, too_big, auth_failed...
    text        TEXT NOT NULL DEFAULT ''       -- the reply we sent
);
CREATE INDEX rejections_last ON rejections(last_at);
CREATE INDEX rejections_flood ON rejections(client_ip, reason, sender, last_at);
CREATE INDEX rejections_sender ON rejections(sender);
"""
