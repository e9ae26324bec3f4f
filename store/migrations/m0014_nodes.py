"""Several relaybox nodes on one database (docs/operations.md "Cluster").

- ``nodes``: one row per relaybox process (``owner`` = hostname:pid, the ``lease_owner`` its delivery claims
  carry; ``name`` = ``[cluster] node_name`` or the same hostname:pid), its start, its heartbeat and its
  version. A node whose heartbeat is older than the lease time is dead; ``stopped_at`` is set by a clean
  stop. On SQLite the table holds the one node.
- ``leases``: named leases held by one node until ``expires_at`` and renewed by it: ``leader`` (the
  singleton jobs: retention, event webhooks, reaping dead nodes) and ``channel:<name>`` (the node polling
  that inbound channel).
- PostgreSQL only: statement triggers ``NOTIFY relaybox_queue`` after new messages (every node's scheduler
  wakes) and ``NOTIFY relaybox_config`` after a change of the allowlist, the SMTP users or the inbound
  channels, filters and campaigns (payload: the table), delivered at commit to every listening node.
"""

SQL = """
CREATE TABLE nodes (
    owner        TEXT PRIMARY KEY,         -- hostname:pid: the lease_owner of the node's claims
    name         TEXT NOT NULL,            -- [cluster] node_name, else the owner
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    version      TEXT NOT NULL,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    stopped_at   REAL                      -- set by a clean stop
);
CREATE INDEX nodes_heartbeat ON nodes(heartbeat_at);

CREATE TABLE leases (
    name        TEXT PRIMARY KEY,          -- 'leader' | 'channel:<name>'
    owner       TEXT NOT NULL,             -- nodes.owner
    expires_at  REAL NOT NULL,
    acquired_at REAL NOT NULL
);
CREATE INDEX leases_owner ON leases(owner);

CREATE INDEX recipients_sending_owner ON recipients(lease_owner) WHERE status = 'sending';
"""

_CONFIG_TABLES = ("allowlist", "smtp_users", "channels", "filters", "campaigns")

PG_SQL = """
CREATE TABLE nodes (
    owner        TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    host         TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    version      TEXT NOT NULL,
    started_at   DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    stopped_at   DOUBLE PRECISION
);
CREATE INDEX nodes_heartbeat ON nodes(heartbeat_at);

CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL,
    acquired_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX leases_owner ON leases(owner);

CREATE INDEX recipients_sending_owner ON recipients(lease_owner) WHERE status = 'sending';

CREATE FUNCTION relaybox_notify_queue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('relaybox_queue', '');
    RETURN NULL;
END $$;
CREATE TRIGGER messages_notify_queue AFTER INSERT ON messages
    FOR EACH STATEMENT EXECUTE FUNCTION relaybox_notify_queue();

CREATE FUNCTION relaybox_notify_config() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('relaybox_config', TG_TABLE_NAME);
    RETURN NULL;
END $$;
""" + "".join(
    f"CREATE TRIGGER {t}_notify_config AFTER INSERT OR UPDATE OR DELETE ON {t}\n"
    "    FOR EACH STATEMENT EXECUTE FUNCTION relaybox_notify_config();\n"
    for t in _CONFIG_TABLES)
