"""The broker's PostgreSQL schema: the same tables and columns as SQLite's (store.sqlite_schema, at its
latest version) in PostgreSQL's types, and its migrations (schema_version counts the steps done)."""

# Each step brings a database from version N to N+1; store.postgres runs them in one transaction under
# a transaction-scoped advisory lock, so brokers that start at once migrate it once.
MIGRATIONS = [
    """
    CREATE TABLE renters (name TEXT PRIMARY KEY, created DOUBLE PRECISION NOT NULL,
                          tmux INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE renter_keys (
        fingerprint TEXT PRIMARY KEY, renter TEXT NOT NULL REFERENCES renters(name), key TEXT NOT NULL,
        added DOUBLE PRECISION NOT NULL);
    CREATE TABLE hosts (
        name TEXT PRIMARY KEY, fingerprint TEXT UNIQUE, key TEXT, invited DOUBLE PRECISION NOT NULL,
        joined DOUBLE PRECISION, last_seen DOUBLE PRECISION, banned DOUBLE PRECISION NOT NULL DEFAULT 0,
        inventory TEXT, inventory_error TEXT);
    CREATE TABLE tokens (
        hash TEXT PRIMARY KEY, host TEXT NOT NULL, expires DOUBLE PRECISION NOT NULL, used DOUBLE PRECISION);
    CREATE TABLE leases (
        id TEXT PRIMARY KEY, renter TEXT NOT NULL, host TEXT NOT NULL, image TEXT NOT NULL,
        state TEXT NOT NULL, created DOUBLE PRECISION NOT NULL, ends_at DOUBLE PRECISION NOT NULL,
        container TEXT, error TEXT, gpus TEXT NOT NULL DEFAULT '[]', gpu_name TEXT,
        price BIGINT NOT NULL DEFAULT 0, fee_percent BIGINT NOT NULL DEFAULT 0, held BIGINT NOT NULL DEFAULT 0,
        started DOUBLE PRECISION, ended DOUBLE PRECISION, extensions BIGINT NOT NULL DEFAULT 0,
        host_ended DOUBLE PRECISION, host_ends_at DOUBLE PRECISION);
    CREATE INDEX leases_renter ON leases(renter, state);
    CREATE INDEX leases_host ON leases(host, state);
    CREATE TABLE uptime (host TEXT NOT NULL, up DOUBLE PRECISION NOT NULL, down DOUBLE PRECISION);
    CREATE INDEX uptime_host ON uptime(host, up);
    CREATE TABLE txs (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, key TEXT NOT NULL UNIQUE,
                      kind TEXT NOT NULL, lease TEXT, renter TEXT, created DOUBLE PRECISION NOT NULL, memo TEXT);
    CREATE INDEX txs_lease ON txs(lease);
    CREATE TABLE entries (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                          tx BIGINT NOT NULL REFERENCES txs(id), account TEXT COLLATE "C" NOT NULL,
                          amount BIGINT NOT NULL);
    CREATE INDEX entries_account ON entries(account);
    CREATE INDEX entries_tx ON entries(tx);
    CREATE TABLE lease_downs (lease TEXT NOT NULL, down DOUBLE PRECISION NOT NULL, up DOUBLE PRECISION,
                              PRIMARY KEY (lease, down));
    """,
    """
    ALTER TABLE leases ADD COLUMN broker TEXT;
    CREATE TABLE brokers (id TEXT PRIMARY KEY, ssh TEXT, tunnel TEXT, peer TEXT, peer_key TEXT,
                          started DOUBLE PRECISION NOT NULL, heartbeat DOUBLE PRECISION NOT NULL,
                          draining INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE host_owners (host TEXT PRIMARY KEY, broker TEXT NOT NULL, epoch BIGINT NOT NULL,
                              expires DOUBLE PRECISION NOT NULL);
    """,
    """
    CREATE TABLE renter_sessions (broker TEXT NOT NULL, renter TEXT NOT NULL, n BIGINT NOT NULL,
                                  PRIMARY KEY (broker, renter));
    """,
    """
    ALTER TABLE leases ADD COLUMN reason TEXT;
    ALTER TABLE hosts ADD COLUMN owner TEXT;
    CREATE TABLE signup_codes (hash TEXT PRIMARY KEY, created DOUBLE PRECISION NOT NULL, used DOUBLE PRECISION,
                               renter TEXT);
    CREATE TABLE vouchers (hash TEXT PRIMARY KEY, amount BIGINT NOT NULL, created DOUBLE PRECISION NOT NULL,
                           expires DOUBLE PRECISION, redeemed DOUBLE PRECISION, renter TEXT);
    """,
    """
    ALTER TABLE leases ADD COLUMN auto BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE leases ADD COLUMN auto_note TEXT;
    ALTER TABLE leases ADD COLUMN workspace TEXT;
    ALTER TABLE leases ADD COLUMN disk_gb DOUBLE PRECISION NOT NULL DEFAULT 0;
    ALTER TABLE signup_codes ADD COLUMN expires DOUBLE PRECISION;
    """,
]
