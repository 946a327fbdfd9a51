//! The schema, one list of migrations per database: migration `i` takes the schema from version
//! `i` to `i + 1`. Append new migrations to both lists; never edit a released one.
//!
//! SQLite keeps its version in `PRAGMA user_version` (as every Tether before PostgreSQL did, so
//! that existing data dirs upgrade in place); PostgreSQL in the one-row table `tether_schema`,
//! changed under an advisory lock so that gateways starting together migrate once.
//!
//! Both databases hold the same tables and columns. PostgreSQL's flags are BOOLEAN, its ids
//! BIGSERIAL, its UUID columns `COLLATE "C"` (so that pages follow the same order as on SQLite).

use sqlx::{PgPool, SqlitePool};

pub(super) const SQLITE: &[&str] = &[
    "
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE devices (
    uuid TEXT PRIMARY KEY,
    registered INTEGER NOT NULL DEFAULT 0,
    password_hash TEXT,
    first_seen INTEGER,
    last_hello INTEGER,
    last_keepalive INTEGER,
    connected_since INTEGER,
    remote_addr TEXT,
    ports TEXT NOT NULL DEFAULT '',
    last_disconnect INTEGER,
    last_disconnect_reason TEXT,
    duplicate_count INTEGER NOT NULL DEFAULT 0,
    last_duplicate_at INTEGER,
    duplicate_note TEXT
);
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
",
    "
CREATE TABLE mps_accounts (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
INSERT INTO mps_accounts (username, password_hash, created_at)
    SELECT u.value, h.value, CAST(strftime('%s', 'now') AS INTEGER) * 1000
    FROM settings u, settings h WHERE u.key = 'mps_username' AND h.key = 'mps_password_hash';
DELETE FROM settings WHERE key IN ('mps_username', 'mps_password_hash');
ALTER TABLE devices ADD COLUMN pinned_credential TEXT;
ALTER TABLE devices ADD COLUMN conflict_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN last_conflict_at INTEGER;
ALTER TABLE devices ADD COLUMN conflict_note TEXT;
-- AUTOINCREMENT: a token created after a revoked one never gets its id, which the daemon uses
-- to end the revoked token's relays.
CREATE TABLE tokens_v2 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    scope TEXT NOT NULL DEFAULT 'attach',
    expires_at INTEGER
);
INSERT INTO tokens_v2 (id, name, hash, created_at) SELECT id, name, hash, created_at FROM tokens;
DROP TABLE tokens;
ALTER TABLE tokens_v2 RENAME TO tokens;
",
    "
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    api_addr TEXT,
    internal_addr TEXT,
    version TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    stopped_at INTEGER,
    run_id TEXT NOT NULL DEFAULT ''
);
ALTER TABLE devices ADD COLUMN instance_id TEXT;
CREATE INDEX devices_instance ON devices (instance_id) WHERE instance_id IS NOT NULL;
",
    // v4: AMT redirection sessions seen by the relay tap (`redirections.rs`).
    "
CREATE TABLE redirections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL,
    kind TEXT NOT NULL,
    technician TEXT NOT NULL,
    device_user TEXT,
    port INTEGER NOT NULL,
    instance TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    outcome TEXT NOT NULL,
    bytes_to_device INTEGER NOT NULL DEFAULT 0,
    bytes_from_device INTEGER NOT NULL DEFAULT 0,
    transcript TEXT
);
CREATE INDEX redirections_device ON redirections (uuid, started_at);
CREATE INDEX redirections_open ON redirections (instance) WHERE ended_at IS NULL;
",
    // v5: WS-MAN actions audited, AMT access per device, remote-fix sessions (`remote.rs`).
    "
CREATE TABLE device_actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL,
    at INTEGER NOT NULL,
    token_id INTEGER,
    technician TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL,
    message TEXT,
    instance TEXT NOT NULL
);
CREATE INDEX device_actions_device ON device_actions (uuid, at);
CREATE TABLE amt_access (
    uuid TEXT PRIMARY KEY,
    amt_user TEXT,
    sealed_password TEXT,
    tls_pin TEXT,
    updated_at INTEGER NOT NULL
);
CREATE TABLE remote_sessions (
    uuid TEXT PRIMARY KEY,
    rescue_found TEXT,
    rescue_by TEXT,
    rescue_at INTEGER,
    closed_at INTEGER,
    closed_by TEXT,
    close_message TEXT
);
",
    // v6: the appliance's LAN: hosts its scans found, and the AMT PCs adopted as devices (`lan.rs`).
    "
CREATE TABLE lan_hosts (
    instance TEXT NOT NULL,
    mac TEXT NOT NULL,
    ip TEXT NOT NULL,
    interface TEXT NOT NULL,
    amt INTEGER NOT NULL DEFAULT 0,
    amt_version TEXT,
    provisioning TEXT,
    amt_ports TEXT NOT NULL DEFAULT '',
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (instance, mac)
);
CREATE TABLE lan_devices (
    uuid TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    ip TEXT NOT NULL,
    mac TEXT,
    tls_pin TEXT,
    plain_ports INTEGER NOT NULL DEFAULT 0,
    adopted_at INTEGER NOT NULL,
    adopted_by TEXT NOT NULL,
    UNIQUE (instance, ip)
);
",
    // v7: how many tunnels each busy source address held (`sources.rs`), so that a big NAT may
    // bring them all back at once after a restart.
    "
CREATE TABLE source_tunnels (
    instance TEXT NOT NULL,
    source TEXT NOT NULL,
    tunnels INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (instance, source)
);
",
];

pub(super) const POSTGRES: &[&str] = &[
    "
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE mps_accounts (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE devices (
    uuid TEXT COLLATE \"C\" PRIMARY KEY,
    registered BOOLEAN NOT NULL DEFAULT FALSE,
    password_hash TEXT,
    first_seen BIGINT,
    last_hello BIGINT,
    last_keepalive BIGINT,
    connected_since BIGINT,
    remote_addr TEXT,
    ports TEXT NOT NULL DEFAULT '',
    last_disconnect BIGINT,
    last_disconnect_reason TEXT,
    duplicate_count BIGINT NOT NULL DEFAULT 0,
    last_duplicate_at BIGINT,
    duplicate_note TEXT,
    pinned_credential TEXT,
    conflict_count BIGINT NOT NULL DEFAULT 0,
    last_conflict_at BIGINT,
    conflict_note TEXT,
    instance_id TEXT
);
CREATE INDEX devices_instance ON devices (instance_id) WHERE instance_id IS NOT NULL;
-- BIGSERIAL: a sequence never hands out an id twice, which the gateways use to end a revoked
-- token's relays.
CREATE TABLE tokens (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    scope TEXT NOT NULL DEFAULT 'attach',
    expires_at BIGINT
);
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    api_addr TEXT,
    internal_addr TEXT,
    version TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    stopped_at BIGINT,
    run_id TEXT NOT NULL DEFAULT ''
);
",
    // v2: AMT redirection sessions seen by the relay tap (`redirections.rs`).
    "
CREATE TABLE redirections (
    id BIGSERIAL PRIMARY KEY,
    uuid TEXT COLLATE \"C\" NOT NULL,
    kind TEXT NOT NULL,
    technician TEXT NOT NULL,
    device_user TEXT,
    port BIGINT NOT NULL,
    instance TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    outcome TEXT NOT NULL,
    bytes_to_device BIGINT NOT NULL DEFAULT 0,
    bytes_from_device BIGINT NOT NULL DEFAULT 0,
    transcript TEXT
);
CREATE INDEX redirections_device ON redirections (uuid, started_at);
CREATE INDEX redirections_open ON redirections (instance) WHERE ended_at IS NULL;
",
    // v3: WS-MAN actions audited, AMT access per device, remote-fix sessions (`remote.rs`).
    "
CREATE TABLE device_actions (
    id BIGSERIAL PRIMARY KEY,
    uuid TEXT COLLATE \"C\" NOT NULL,
    at BIGINT NOT NULL,
    token_id BIGINT,
    technician TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL,
    message TEXT,
    instance TEXT NOT NULL
);
CREATE INDEX device_actions_device ON device_actions (uuid, at);
CREATE TABLE amt_access (
    uuid TEXT COLLATE \"C\" PRIMARY KEY,
    amt_user TEXT,
    sealed_password TEXT,
    tls_pin TEXT,
    updated_at BIGINT NOT NULL
);
CREATE TABLE remote_sessions (
    uuid TEXT COLLATE \"C\" PRIMARY KEY,
    rescue_found TEXT,
    rescue_by TEXT,
    rescue_at BIGINT,
    closed_at BIGINT,
    closed_by TEXT,
    close_message TEXT
);
",
    // v4: the appliance's LAN: hosts its scans found, and the AMT PCs adopted as devices (`lan.rs`).
    "
CREATE TABLE lan_hosts (
    instance TEXT NOT NULL,
    mac TEXT NOT NULL,
    ip TEXT NOT NULL,
    interface TEXT NOT NULL,
    amt BOOLEAN NOT NULL DEFAULT FALSE,
    amt_version TEXT,
    provisioning TEXT,
    amt_ports TEXT NOT NULL DEFAULT '',
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    PRIMARY KEY (instance, mac)
);
CREATE TABLE lan_devices (
    uuid TEXT COLLATE \"C\" PRIMARY KEY,
    instance TEXT NOT NULL,
    ip TEXT NOT NULL,
    mac TEXT,
    tls_pin TEXT,
    plain_ports BOOLEAN NOT NULL DEFAULT FALSE,
    adopted_at BIGINT NOT NULL,
    adopted_by TEXT NOT NULL,
    UNIQUE (instance, ip)
);
",
    // v5: how many tunnels each busy source address held (`sources.rs`), so that a big NAT may
    // bring them all back at once after a restart.
    "
CREATE TABLE source_tunnels (
    instance TEXT NOT NULL,
    source TEXT NOT NULL,
    tunnels BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (instance, source)
);
",
];

/// An arbitrary constant naming Tether's migration lock among the database's advisory locks.
const PG_LOCK: i64 = 0x7465_7468_6572;

pub(super) async fn version_sqlite(pool: &SqlitePool) -> sqlx::Result<i64> {
    sqlx::query_scalar("PRAGMA user_version").fetch_one(pool).await
}

pub(super) async fn version_postgres(pool: &PgPool) -> sqlx::Result<i64> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('tether_schema') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Ok(0);
    }
    sqlx::query_scalar("SELECT version FROM tether_schema").fetch_optional(pool).await.map(|v| v.unwrap_or(0))
}

pub(super) async fn migrate_sqlite(pool: &SqlitePool) -> sqlx::Result<usize> {
    let mut applied = 0;
    loop {
        // IMMEDIATE: the write lock first, so that a CLI command and the gateway migrating at
        // once queue (busy_timeout) instead of failing on a lock upgrade.
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let version: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&mut *tx).await?;
        let Some(migration) = SQLITE.get(usize::try_from(version).unwrap_or(usize::MAX)) else {
            return Ok(applied);
        };
        sqlx::raw_sql(*migration).execute(&mut *tx).await?;
        // PRAGMA takes no parameters; the value is our own integer.
        let set = format!("PRAGMA user_version = {}", version + 1);
        sqlx::raw_sql(sqlx::AssertSqlSafe(set)).execute(&mut *tx).await?;
        tx.commit().await?;
        applied += 1;
        tracing::info!(version = version + 1, "migrated the SQLite store");
    }
}

pub(super) async fn migrate_postgres(pool: &PgPool) -> sqlx::Result<usize> {
    let mut applied = 0;
    loop {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(PG_LOCK).execute(&mut *tx).await?;
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS tether_schema (version BIGINT NOT NULL)").execute(&mut *tx).await?;
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM tether_schema").fetch_optional(&mut *tx).await?;
        let version = version.unwrap_or(0);
        let Some(migration) = POSTGRES.get(usize::try_from(version).unwrap_or(usize::MAX)) else {
            tx.commit().await?;
            return Ok(applied);
        };
        sqlx::raw_sql(*migration).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM tether_schema").execute(&mut *tx).await?;
        sqlx::query("INSERT INTO tether_schema (version) VALUES ($1)").bind(version + 1).execute(&mut *tx).await?;
        tx.commit().await?;
        applied += 1;
        tracing::info!(version = version + 1, "migrated the PostgreSQL store");
    }
}
