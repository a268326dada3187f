"""The broker's SQLite schema and its migrations (PRAGMA user_version counts the steps done)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS renters (name TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS renter_keys (
    fingerprint TEXT PRIMARY KEY, renter TEXT NOT NULL REFERENCES renters(name), key TEXT NOT NULL,
    added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (
    name TEXT PRIMARY KEY, fingerprint TEXT UNIQUE, key TEXT, invited REAL NOT NULL,
    joined REAL, last_seen REAL, banned INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY, host TEXT NOT NULL, expires REAL NOT NULL, used REAL);
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY, renter TEXT NOT NULL, host TEXT NOT NULL, image TEXT NOT NULL,
    state TEXT NOT NULL, created REAL NOT NULL, ends_at REAL NOT NULL, container TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS leases_renter ON leases(renter, state);
"""

# Each step brings a database from version N to N+1 (PRAGMA user_version).
MIGRATIONS = [
    """
    ALTER TABLE leases ADD COLUMN gpus TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE leases ADD COLUMN gpu_name TEXT;
    ALTER TABLE leases ADD COLUMN price INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE leases ADD COLUMN fee_percent INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE leases ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE leases ADD COLUMN started REAL;
    ALTER TABLE leases ADD COLUMN ended REAL;
    ALTER TABLE leases ADD COLUMN extensions INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE hosts ADD COLUMN inventory TEXT;
    CREATE TABLE uptime (host TEXT NOT NULL, up REAL NOT NULL, down REAL);
    CREATE INDEX uptime_host ON uptime(host, up);
    CREATE TABLE txs (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, lease TEXT,
                      renter TEXT, created REAL NOT NULL, memo TEXT);
    CREATE TABLE entries (tx INTEGER NOT NULL REFERENCES txs(id), account TEXT NOT NULL,
                          amount INTEGER NOT NULL);
    CREATE INDEX entries_account ON entries(account);
    """,
    """
    ALTER TABLE leases ADD COLUMN host_ended REAL;
    ALTER TABLE hosts ADD COLUMN inventory_error TEXT;
    UPDATE leases SET host_ended = COALESCE(ended, created) WHERE state IN ('ended', 'purged');
    """,
    """
    ALTER TABLE leases ADD COLUMN host_ends_at REAL;
    UPDATE leases SET host_ends_at = ends_at WHERE state = 'active';
    UPDATE leases SET host_ended = COALESCE(ended, created) WHERE state = 'failed';
    CREATE TABLE lease_downs (lease TEXT NOT NULL, down REAL NOT NULL, up REAL, PRIMARY KEY (lease, down));
    """,
    """
    ALTER TABLE renters ADD COLUMN tmux INTEGER NOT NULL DEFAULT 0;
    """,
    """
    ALTER TABLE leases ADD COLUMN broker TEXT;
    CREATE TABLE brokers (id TEXT PRIMARY KEY, ssh TEXT, tunnel TEXT, peer TEXT, peer_key TEXT,
                          started REAL NOT NULL, heartbeat REAL NOT NULL, draining INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE host_owners (host TEXT PRIMARY KEY, broker TEXT NOT NULL, epoch INTEGER NOT NULL,
                              expires REAL NOT NULL);
    """,
    """
    CREATE TABLE renter_sessions (broker TEXT NOT NULL, renter TEXT NOT NULL, n INTEGER NOT NULL,
                                  PRIMARY KEY (broker, renter));
    """,
    """
    ALTER TABLE leases ADD COLUMN reason TEXT;
    ALTER TABLE hosts ADD COLUMN owner TEXT;
    CREATE TABLE signup_codes (hash TEXT PRIMARY KEY, created REAL NOT NULL, used REAL, renter TEXT);
    CREATE TABLE vouchers (hash TEXT PRIMARY KEY, amount INTEGER NOT NULL, created REAL NOT NULL, expires REAL,
                           redeemed REAL, renter TEXT);
    """,
    """
    ALTER TABLE leases ADD COLUMN auto INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE leases ADD COLUMN auto_note TEXT;
    ALTER TABLE leases ADD COLUMN workspace TEXT;
    ALTER TABLE leases ADD COLUMN disk_gb REAL NOT NULL DEFAULT 0;
    ALTER TABLE signup_codes ADD COLUMN expires REAL;
    """,
]
