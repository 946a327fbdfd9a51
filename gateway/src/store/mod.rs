//! The SQLite store (`DATA_DIR/tether.db`, WAL): MPS accounts, devices (registration, the
//! credential each UUID is pinned to, life-cycle record, UUID conflict reports), and API
//! tokens (hashed; in `tokens`).
//!
//! Calls are synchronous and short (one statement each); async callers use `spawn_blocking` or
//! the `journal` thread. The schema is versioned with `PRAGMA user_version`. What it does not do:
//! hash passwords (`auth`) or know which devices are live (`registry`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

mod tokens;
pub use tokens::{TokenRecord, TokenScope};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the device store {path}: {source}; check that the data dir is writable and that the file \
         is a Tether database"
    )]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("cannot create the device store {path}: {source}; check that the data dir exists and is writable")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("device store {path}: {source}")]
    Database { path: PathBuf, source: rusqlite::Error },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("a token named {0:?} exists already; pick another name")]
    TokenExists(String),
    #[error(
        "{path} was written by a newer Tether (schema {found}, this one knows {known}); upgrade tether, or restore \
         a backup of the file made by this version"
    )]
    TooNew { path: PathBuf, found: i64, known: i64 },
    #[error("the store lock is poisoned (an earlier panic); restart the gateway")]
    Poisoned,
}

/// What the store knows of one device. Password hashes are never part of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceRecord {
    pub uuid: Uuid,
    /// Added by an operator (`tether device add`), rather than first seen on the wire.
    pub registered: bool,
    pub has_password: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub first_seen: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_hello: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_keepalive: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub connected_since: Option<OffsetDateTime>,
    pub remote_addr: Option<String>,
    pub ports: Vec<u16>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_disconnect: Option<OffsetDateTime>,
    pub last_disconnect_reason: Option<String>,
    /// Replacements flagged as two machines sharing the UUID, by gateways before device identity
    /// was enforced; such claims are now refused and counted in `conflict_count`.
    pub duplicate_count: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_duplicate_at: Option<OffsetDateTime>,
    pub duplicate_note: Option<String>,
    /// The credential the UUID is bound to (`account:USER` or `device`), under the `pinned` policy.
    pub pinned_credential: Option<String>,
    /// Claims for this UUID refused because its tunnel was live and answering.
    pub conflict_count: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_conflict_at: Option<OffsetDateTime>,
    pub conflict_note: Option<String>,
}

/// What admission needs to know of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAuth {
    /// Added by an operator.
    pub registered: bool,
    /// Its own MPS password, if the operator set one.
    pub password_hash: Option<String>,
    /// The credential it is pinned to (`account:USER` or `device`).
    pub pinned: Option<String>,
}

/// The schema, one migration per version: migration `i` takes `user_version` from `i` to `i + 1`.
/// Append new migrations; never edit a released one.
const MIGRATIONS: &[&str] = &[
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
];

const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(crate) fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub(crate) fn from_millis(ms: Option<i64>) -> Option<OffsetDateTime> {
    ms.and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
}

fn ports_text(ports: &[u16]) -> String {
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

fn add_device(c: &Connection, uuid: Uuid, password_hash: Option<&str>) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO devices (uuid, registered, password_hash, pinned_credential)
             VALUES (?1, 1, ?2, CASE WHEN ?2 IS NULL THEN NULL ELSE 'device' END)
         ON CONFLICT(uuid) DO UPDATE SET registered = 1, password_hash = excluded.password_hash,
             pinned_credential = CASE WHEN excluded.password_hash IS NULL THEN pinned_credential ELSE 'device' END",
    )?
    .execute(params![uuid.to_string(), password_hash])
    .map(drop)
}

// The device-record writes, as functions of a connection, so that the journal can batch them in
// one transaction; the `Store` methods of the same names run one each.

pub(crate) fn record_hello(c: &Connection, uuid: Uuid, at: OffsetDateTime, remote: SocketAddr) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO devices (uuid, first_seen, last_hello, remote_addr) VALUES (?1, ?2, ?2, ?3)
         ON CONFLICT(uuid) DO UPDATE SET first_seen = COALESCE(first_seen, excluded.first_seen),
             last_hello = excluded.last_hello, remote_addr = excluded.remote_addr",
    )?
    .execute(params![uuid.to_string(), millis(at), remote.to_string()])
    .map(drop)
}

pub(crate) fn record_connected(
    c: &Connection,
    uuid: Uuid,
    at: OffsetDateTime,
    remote: SocketAddr,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO devices (uuid, first_seen, connected_since, remote_addr) VALUES (?1, ?2, ?2, ?3)
         ON CONFLICT(uuid) DO UPDATE SET first_seen = COALESCE(first_seen, excluded.first_seen),
             connected_since = excluded.connected_since, remote_addr = excluded.remote_addr, ports = ''",
    )?
    .execute(params![uuid.to_string(), millis(at), remote.to_string()])
    .map(drop)
}

pub(crate) fn record_ports(c: &Connection, uuid: Uuid, ports: &[u16]) -> rusqlite::Result<()> {
    c.prepare_cached("UPDATE devices SET ports = ?2 WHERE uuid = ?1")?
        .execute(params![uuid.to_string(), ports_text(ports)])
        .map(drop)
}

pub(crate) fn record_keepalive(c: &Connection, uuid: Uuid, at: OffsetDateTime) -> rusqlite::Result<()> {
    c.prepare_cached("UPDATE devices SET last_keepalive = ?2 WHERE uuid = ?1")?
        .execute(params![uuid.to_string(), millis(at)])
        .map(drop)
}

pub(crate) fn record_disconnect(c: &Connection, uuid: Uuid, at: OffsetDateTime, reason: &str) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE devices SET connected_since = NULL, last_disconnect = ?2, last_disconnect_reason = ?3
         WHERE uuid = ?1",
    )?
    .execute(params![uuid.to_string(), millis(at), reason])
    .map(drop)
}

/// A claim for a live device's UUID was refused: `live` holds the tunnel, `claimant` asked.
pub(crate) fn record_conflict(
    c: &Connection,
    uuid: Uuid,
    at: OffsetDateTime,
    live: SocketAddr,
    claimant: SocketAddr,
) -> rusqlite::Result<()> {
    let note = format!(
        "a connection from {claimant} claimed this UUID while the device was connected and answering from {live}; \
         it was refused (an impostor, or a second machine with the same UUID)"
    );
    c.prepare_cached(
        "INSERT INTO devices (uuid, conflict_count, last_conflict_at, conflict_note) VALUES (?1, 1, ?2, ?3)
         ON CONFLICT(uuid) DO UPDATE SET conflict_count = conflict_count + 1,
             last_conflict_at = excluded.last_conflict_at, conflict_note = excluded.conflict_note",
    )?
    .execute(params![uuid.to_string(), millis(at), note])
    .map(drop)
}

/// The store: one SQLite connection behind a mutex (`Send + Sync`). Every method is one short
/// statement; async callers use `spawn_blocking`.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

/// Creates the database file readable by its owner only (it holds password and token hashes);
/// SQLite gives the `-wal` and `-shm` files the same mode.
#[cfg(unix)]
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path).map(drop)
}

#[cfg(not(unix))]
fn create_private(_: &Path) -> std::io::Result<()> {
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
        if !path.exists() {
            create_private(path).map_err(|source| StoreError::Create { path: path.to_path_buf(), source })?;
        }
        let mut conn = Connection::open(path).map_err(open_err)?;
        let version = Self::prepare(&mut conn).map_err(open_err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew { path: path.to_path_buf(), found: version, known: SCHEMA_VERSION });
        }
        for (from, migration) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
            let tx = conn.transaction().map_err(open_err)?;
            tx.execute_batch(migration).map_err(open_err)?;
            tx.pragma_update(None, "user_version", from as i64 + 1).map_err(open_err)?;
            tx.commit().map_err(open_err)?;
        }
        Ok(Store { path: path.to_path_buf(), conn: Mutex::new(conn) })
    }

    /// Sets the connection up; returns the schema version found.
    fn prepare(conn: &mut Connection) -> rusqlite::Result<i64> {
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.set_prepared_statement_cache_capacity(32);
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds the MPS account `username`, or gives it a new password hash.
    pub fn set_mps_account(&self, username: &str, password_hash: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO mps_accounts (username, password_hash, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(username) DO UPDATE SET password_hash = excluded.password_hash",
                params![username, password_hash, millis(OffsetDateTime::now_utc())],
            )
            .map(drop)
        })
    }

    /// Removes an MPS account; false if there was none by that name.
    pub fn remove_mps_account(&self, username: &str) -> Result<bool, StoreError> {
        self.with(|c| c.execute("DELETE FROM mps_accounts WHERE username = ?1", [username]).map(|n| n > 0))
    }

    /// The MPS account names, sorted.
    pub fn mps_accounts(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            c.prepare("SELECT username FROM mps_accounts ORDER BY username")?.query_map([], |r| r.get(0))?.collect()
        })
    }

    /// The password hash of one MPS account.
    pub fn mps_account_hash(&self, username: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            c.prepare_cached("SELECT password_hash FROM mps_accounts WHERE username = ?1")?
                .query_row([username], |r| r.get(0))
                .optional()
        })
    }

    /// Registers a device (or updates its password; `None` clears a device password). A device
    /// given its own password is pinned to it: the operator has said which credential it uses.
    pub fn add_device(&self, uuid: Uuid, password_hash: Option<&str>) -> Result<(), StoreError> {
        self.with(|c| add_device(c, uuid, password_hash))
    }

    /// Registers many devices in one transaction (`tether device import`); `progress` is called
    /// after each.
    pub fn add_devices(
        &self,
        devices: &[(Uuid, Option<String>)],
        mut progress: impl FnMut(usize),
    ) -> Result<(), StoreError> {
        self.batch(|tx| {
            for (i, (uuid, hash)) in devices.iter().enumerate() {
                add_device(tx, *uuid, hash.as_deref())?;
                progress(i + 1);
            }
            Ok(())
        })
    }

    /// Forgets a device entirely (registration, password, pin, history); false if unknown.
    pub fn remove_device(&self, uuid: Uuid) -> Result<bool, StoreError> {
        self.with(|c| c.execute("DELETE FROM devices WHERE uuid = ?1", [uuid.to_string()]).map(|n| n > 0))
    }

    /// What admission needs to know of a UUID (`None`: never seen nor registered).
    pub fn device_auth(&self, uuid: Uuid) -> Result<Option<DeviceAuth>, StoreError> {
        self.with(|c| {
            c.prepare_cached("SELECT registered, password_hash, pinned_credential FROM devices WHERE uuid = ?1")?
                .query_row([uuid.to_string()], |r| {
                    Ok(DeviceAuth { registered: r.get(0)?, password_hash: r.get(1)?, pinned: r.get(2)? })
                })
                .optional()
        })
    }

    /// Pins `uuid` to `credential` unless it is pinned already; returns the pin in force.
    pub fn pin_device(&self, uuid: Uuid, credential: &str) -> Result<String, StoreError> {
        self.with(|c| {
            c.prepare_cached(
                "INSERT INTO devices (uuid, pinned_credential) VALUES (?1, ?2)
                 ON CONFLICT(uuid) DO UPDATE SET
                     pinned_credential = COALESCE(pinned_credential, excluded.pinned_credential)",
            )?
            .execute(params![uuid.to_string(), credential])?;
            c.prepare_cached("SELECT pinned_credential FROM devices WHERE uuid = ?1")?
                .query_row([uuid.to_string()], |r| r.get(0))
        })
    }

    /// Runs `f` in one transaction (committed if it returns `Ok`).
    pub fn batch<T>(&self, f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let database = |source| StoreError::Database { path: self.path.clone(), source };
        let tx = conn.transaction().map_err(database)?;
        let value = f(&tx).map_err(database)?;
        tx.commit().map_err(database)?;
        Ok(value)
    }

    /// Runs `f` on the connection (for the other store modules).
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        f(&conn).map_err(|source| StoreError::Database { path: self.path.clone(), source })
    }

    pub fn record_hello(&self, uuid: Uuid, at: OffsetDateTime, remote: SocketAddr) -> Result<(), StoreError> {
        self.with(|c| record_hello(c, uuid, at, remote))
    }

    pub fn record_connected(&self, uuid: Uuid, at: OffsetDateTime, remote: SocketAddr) -> Result<(), StoreError> {
        self.with(|c| record_connected(c, uuid, at, remote))
    }

    pub fn record_ports(&self, uuid: Uuid, ports: &[u16]) -> Result<(), StoreError> {
        self.with(|c| record_ports(c, uuid, ports))
    }

    pub fn record_keepalive(&self, uuid: Uuid, at: OffsetDateTime) -> Result<(), StoreError> {
        self.with(|c| record_keepalive(c, uuid, at))
    }

    pub fn record_disconnect(&self, uuid: Uuid, at: OffsetDateTime, reason: &str) -> Result<(), StoreError> {
        self.with(|c| record_disconnect(c, uuid, at, reason))
    }

    pub fn record_conflict(
        &self,
        uuid: Uuid,
        at: OffsetDateTime,
        live: SocketAddr,
        claimant: SocketAddr,
    ) -> Result<(), StoreError> {
        self.with(|c| record_conflict(c, uuid, at, live, claimant))
    }

    pub fn mark_all_disconnected(&self, at: OffsetDateTime, reason: &str) -> Result<usize, StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE devices SET connected_since = NULL, last_disconnect = ?1, last_disconnect_reason = ?2
                 WHERE connected_since IS NOT NULL",
                params![millis(at), reason],
            )
        })
    }

    pub fn list_devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.with(|c| {
            c.prepare_cached(&format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY uuid"))?
                .query_map([], device_row)?
                .collect()
        })
    }

    pub fn device(&self, uuid: Uuid) -> Result<Option<DeviceRecord>, StoreError> {
        self.with(|c| {
            c.prepare_cached(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE uuid = ?1"))?
                .query_row([uuid.to_string()], device_row)
                .optional()
        })
    }
}

const DEVICE_COLUMNS: &str = "uuid, registered, password_hash IS NOT NULL, first_seen, last_hello, last_keepalive, \
     connected_since, remote_addr, ports, last_disconnect, last_disconnect_reason, duplicate_count, \
     last_duplicate_at, duplicate_note, pinned_credential, conflict_count, last_conflict_at, conflict_note";

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRecord> {
    let uuid: String = r.get(0)?;
    let ports: String = r.get(8)?;
    Ok(DeviceRecord {
        uuid: Uuid::parse_str(&uuid).unwrap_or_default(),
        registered: r.get(1)?,
        has_password: r.get(2)?,
        first_seen: from_millis(r.get(3)?),
        last_hello: from_millis(r.get(4)?),
        last_keepalive: from_millis(r.get(5)?),
        connected_since: from_millis(r.get(6)?),
        remote_addr: r.get(7)?,
        ports: ports.split(',').filter_map(|p| p.parse().ok()).collect(),
        last_disconnect: from_millis(r.get(9)?),
        last_disconnect_reason: r.get(10)?,
        duplicate_count: r.get::<_, i64>(11)?.max(0) as u64,
        last_duplicate_at: from_millis(r.get(12)?),
        duplicate_note: r.get(13)?,
        pinned_credential: r.get(14)?,
        conflict_count: r.get::<_, i64>(15)?.max(0) as u64,
        last_conflict_at: from_millis(r.get(16)?),
        conflict_note: r.get(17)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("tether.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn a_device_life_cycle_is_recorded() {
        let (_dir, store) = store();
        let uuid = Uuid::new_v4();
        let remote: SocketAddr = "198.18.0.2:40000".parse().unwrap();
        let t0 = OffsetDateTime::now_utc();
        store.record_hello(uuid, t0, remote).unwrap();
        store.record_connected(uuid, t0, remote).unwrap();
        store.record_ports(uuid, &[16993, 16992, 16992]).unwrap();
        store.record_keepalive(uuid, t0).unwrap();
        let d = store.device(uuid).unwrap().unwrap();
        assert_eq!(d.ports, vec![16992, 16993]);
        assert!(d.connected_since.is_some() && d.last_hello.is_some() && d.first_seen.is_some());
        assert_eq!(d.remote_addr.as_deref(), Some("198.18.0.2:40000"));
        assert!(!d.registered);
        store.record_disconnect(uuid, t0, "idle").unwrap();
        let d = store.device(uuid).unwrap().unwrap();
        assert!(d.connected_since.is_none());
        assert_eq!(d.last_disconnect_reason.as_deref(), Some("idle"));
        store.record_connected(uuid, t0, remote).unwrap();
        assert_eq!(store.mark_all_disconnected(t0, "gateway restarted").unwrap(), 1);
        store.record_conflict(uuid, t0, remote, "198.18.0.3:1".parse().unwrap()).unwrap();
        let d = store.device(uuid).unwrap().unwrap();
        assert_eq!(d.conflict_count, 1);
        assert!(d.conflict_note.unwrap().contains("198.18.0.3"));
        let json = serde_json::to_value(store.list_devices().unwrap()).unwrap();
        assert!(json[0]["last_hello"].is_string());
    }

    #[test]
    fn reopening_keeps_data_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tether.db");
        let uuid = Uuid::new_v4();
        {
            let store = Store::open(&path).unwrap();
            store.add_device(uuid, None).unwrap();
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let store = Store::open(&path).unwrap();
        assert!(store.device(uuid).unwrap().unwrap().registered);
        store.with(|c| c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)).unwrap();
        drop(store);
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
        assert!(err.to_string().contains("tether.db"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tether.db");
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        let err = Store::open(&path).unwrap_err().to_string();
        assert!(err.contains("tether.db") && err.contains("cannot open"), "{err}");
        let err = Store::open(&dir.path().join("missing-dir/tether.db")).unwrap_err().to_string();
        assert!(err.contains("missing-dir"), "{err}");
    }

    #[test]
    fn password_hashes_never_leave_the_store_in_records() {
        let (_dir, store) = store();
        let uuid = Uuid::new_v4();
        store.add_device(uuid, Some("$argon2id$secret-hash")).unwrap();
        let record = store.device(uuid).unwrap().unwrap();
        assert!(record.has_password);
        let json = serde_json::to_string(&store.list_devices().unwrap()).unwrap();
        assert!(!json.contains("secret-hash"), "{json}");
        store.add_device(uuid, None).unwrap();
        assert!(!store.device(uuid).unwrap().unwrap().has_password);
        assert_eq!(store.device_auth(uuid).unwrap().unwrap().password_hash, None);
    }

    #[test]
    fn times_round_trip_to_the_millisecond_and_serialize_as_rfc3339() {
        let (_dir, store) = store();
        let uuid = Uuid::new_v4();
        // 2024-05-06T07:08:09.123456Z
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_714_979_289_123_456_000).unwrap();
        store.record_hello(uuid, at, "[2001:db8::1]:4433".parse().unwrap()).unwrap();
        let record = store.device(uuid).unwrap().unwrap();
        assert_eq!(record.last_hello, OffsetDateTime::from_unix_timestamp_nanos(1_714_979_289_123_000_000).ok());
        assert_eq!(record.first_seen, record.last_hello);
        assert_eq!(record.remote_addr.as_deref(), Some("[2001:db8::1]:4433"));
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["last_hello"], "2024-05-06T07:08:09.123Z");
        assert!(json["connected_since"].is_null());
        // A later hello keeps first_seen.
        store.record_hello(uuid, at + time::Duration::hours(1), "198.18.0.1:1".parse().unwrap()).unwrap();
        assert_eq!(store.device(uuid).unwrap().unwrap().first_seen, record.first_seen);
    }

    #[test]
    fn devices_are_listed_in_uuid_order() {
        let (_dir, store) = store();
        let mut uuids: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
        for uuid in &uuids {
            store.record_hello(*uuid, OffsetDateTime::now_utc(), "198.18.0.1:1".parse().unwrap()).unwrap();
        }
        uuids.sort();
        let listed: Vec<Uuid> = store.list_devices().unwrap().into_iter().map(|d| d.uuid).collect();
        assert_eq!(listed, uuids);
    }

    #[test]
    fn accounts_devices_pins_and_tokens() {
        let (_dir, store) = store();
        assert!(store.mps_accounts().unwrap().is_empty());
        store.set_mps_account("admin", "h1").unwrap();
        store.set_mps_account("other", "h2").unwrap();
        store.set_mps_account("admin", "h3").unwrap();
        assert_eq!(store.mps_accounts().unwrap(), ["admin", "other"]);
        assert_eq!(store.mps_account_hash("admin").unwrap().as_deref(), Some("h3"));
        assert!(store.remove_mps_account("other").unwrap() && !store.remove_mps_account("other").unwrap());
        assert_eq!(store.mps_account_hash("other").unwrap(), None);

        let uuid = Uuid::new_v4();
        assert_eq!(store.device_auth(uuid).unwrap(), None);
        // The first pin holds; a later one does not replace it.
        assert_eq!(store.pin_device(uuid, "account:admin").unwrap(), "account:admin");
        assert_eq!(store.pin_device(uuid, "account:other").unwrap(), "account:admin");
        assert!(!store.device_auth(uuid).unwrap().unwrap().registered);
        // An operator's device password re-pins the device to it; clearing it keeps the pin.
        store.add_device(uuid, Some("dh")).unwrap();
        let auth = store.device_auth(uuid).unwrap().unwrap();
        assert_eq!(
            auth,
            DeviceAuth { registered: true, password_hash: Some("dh".into()), pinned: Some("device".into()) }
        );
        store.add_device(uuid, None).unwrap();
        assert_eq!(store.device_auth(uuid).unwrap().unwrap().pinned.as_deref(), Some("device"));
        assert!(store.remove_device(uuid).unwrap() && !store.remove_device(uuid).unwrap());

        let many: Vec<(Uuid, Option<String>)> = (0..50).map(|i| (Uuid::new_v4(), Some(format!("h{i}")))).collect();
        let mut seen = 0;
        store.add_devices(&many, |n| seen = n).unwrap();
        assert_eq!(seen, 50);
        assert_eq!(store.device_auth(many[49].0).unwrap().unwrap().password_hash.as_deref(), Some("h49"));

        let local = store.create_or_replace_token("local", "a").unwrap();
        assert_eq!(store.create_or_replace_token("local", "b").unwrap(), local);
        assert_eq!(store.token_by_hash("a").unwrap(), None);
        assert_eq!(store.token_by_hash("b").unwrap().unwrap().scope, TokenScope::Attach);
    }

    #[test]
    fn conflicts_are_recorded_with_both_addresses() {
        let (_dir, store) = store();
        let uuid = Uuid::new_v4();
        let t0 = OffsetDateTime::now_utc();
        store.record_conflict(uuid, t0, "198.18.0.1:1".parse().unwrap(), "198.18.0.2:2".parse().unwrap()).unwrap();
        store.record_conflict(uuid, t0, "198.18.0.1:1".parse().unwrap(), "198.18.0.3:3".parse().unwrap()).unwrap();
        let d = store.device(uuid).unwrap().unwrap();
        assert_eq!(d.conflict_count, 2);
        let note = d.conflict_note.unwrap();
        assert!(note.contains("198.18.0.1:1") && note.contains("198.18.0.3:3"), "{note}");
    }

    #[test]
    fn a_version_1_store_keeps_its_mps_account_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tether.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(
                "INSERT INTO settings VALUES ('mps_username', 'tether'), ('mps_password_hash', 'h');
                 INSERT INTO tokens (name, hash, created_at) VALUES ('alice', 'th', 0);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.mps_accounts().unwrap(), ["tether"]);
        assert_eq!(store.mps_account_hash("tether").unwrap().as_deref(), Some("h"));
        let token = store.token_by_hash("th").unwrap().unwrap();
        assert_eq!((token.scope, token.expires_at), (TokenScope::Attach, None));
    }
}
