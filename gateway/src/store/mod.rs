//! The store: one async interface over two databases, SQLite (the default: `DATA_DIR/tether.db`,
//! WAL) and PostgreSQL (`--database postgres://…`, shared by a fleet of gateways), through sqlx
//! with a connection pool.
//!
//! Every query is written once, in the SQL both databases accept (`$1` parameters, `ON CONFLICT
//! … DO UPDATE`, `RETURNING`), as a [`Stmt`]; the schema differs only in its migrations
//! (`migrations.rs`, one list per database). Times are stored as milliseconds since the epoch.
//! The tables live in one module each: `devices` (device records, pins, MPS accounts), `tokens`,
//! `instances` (the gateways of a fleet), `redirections` (AMT redirection sessions relayed),
//! `remote` (the remote fix's actions and sessions), `lan` (LAN hosts and adopted LAN PCs),
//! `sources` (the tunnels busy source addresses held), `sessions` (the portal's sign-ins), `agents` (enrollment tokens, agents' certificates and
//! hellos, telemetry reports), `health` (each machine's meter, its changes, alerts sent),
//! `support` (signed support actions and messages to PC users, and their deliveries); and
//! the accounts of `docs/accounts.md`:
//! `accounts` (users, subscribers, subscriptions, machines), `contacts` (support contacts' life
//! cycle), `emails` (email changes waiting for their link), `audit` (the append-only audit log)
//! and `access` (what the policy module needs to know of a principal); their read-then-write
//! transitions run in a `tx` transaction; and `outbox`, the mail waiting for an SMTP server.
//!
//! What it does not do: decide who may do what (`policy`), know which devices are live
//! (`registry`), or queue the device records written on the tunnels' behalf (`journal`).
//! Passwords are hashed with `auth`'s helpers, off the runtime, before they reach a statement.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row};
use time::OffsetDateTime;

mod access;
mod accounts;
#[cfg(test)]
mod accounts_tests;
mod agents;
mod aggregates;
mod audit;
mod contacts;
pub(crate) mod devices;
mod directory;
mod emails;
mod health;
mod instances;
mod lan;
mod migrations;
mod moves;
mod outbox;
#[cfg(test)]
mod outbox_tests;
mod redirections;
mod remote;
mod root_visitors;
mod sessions;
mod silos;
#[cfg(test)]
mod silos_tests;
mod sources;
mod support;
#[cfg(test)]
mod support_tests;
#[cfg(test)]
pub(crate) mod tests;
mod tokens;
mod tx;

pub use accounts::{
    AccountError, MachineRecord, NewSubscriber, Registered, SubscriberPii, SubscriberRecord, SubscriptionStatus,
    UserRecord, OPERATOR,
};
pub use agents::{
    AgentHello, AgentRecord, CertStanding, NewAgentCert, NewEnrollmentToken, RedeemError, Redeemed, TelemetryRecord,
    MAX_REPORTS,
};
pub use aggregates::{SiloTally, StoredAggregates, TalliedClient, MAX_TALLIED};
pub use audit::{AuditAction, AuditRecord, NewAudit, MAX_AUDIT};
pub use contacts::{Acceptance, ContactRecord, ContactState, EndedContact, Invitation, Removal};
pub use devices::{DeviceAuth, DevicePage, DeviceRecord, MAX_PAGE};
pub use directory::SubscriberListing;
pub use emails::EmailChanged;
pub use health::{DeliveryRecord, HealthChange, HealthRecord, NewDelivery, MAX_CHANGES};
pub use instances::{InstanceRecord, InstanceRegistration, RegisterError};
pub use lan::{LanAdoption, LanHost, MAX_LAN_ROWS};
pub use moves::{ClientHistory, MoveRecord, MAX_MOVES};
pub use outbox::{MailState, NewMail, OutboxMail, OutboxRecord, MAX_MAIL_BATCH, MAX_MAIL_ERROR};
pub use redirections::{NewRedirection, RedirOutcome, RedirectionEnd, RedirectionRecord, MAX_REDIRECTIONS};
pub use remote::{ActionRecord, AmtAccess, ClosedSession, NewAction, RescueRecord, MAX_ACTIONS};
pub use root_visitors::{root_username, RootGrant};
pub use sessions::{NewSession, SessionRecord, MAX_SESSIONS_PER_USER};
pub use silos::{
    choose as choose_silo, EntitlementChange, EntitlementRecord, NewSilo, SiloClient, SiloError, SiloRecord,
    DEFAULT_TIER, SERVICE_SUPPORT,
};
pub use sources::SourceTunnels;
pub use support::{
    ActionOutcome, Deliverable, MessageDelivery, NewSupportAction, NewSupportMessage, SupportAction, SupportMessage,
    MAX_SUPPORT_ROWS,
};
pub use tokens::{TokenRecord, TokenScope};
pub(crate) use tx::{is_unique_violation, Tx};

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL database, by URL (`postgres://user:password@host:port/db?sslmode=…`).
    Postgres(String),
}

impl Location {
    /// `url` (from `--database`, `TETHER_DATABASE_URL` or `database_url`) if given, else the
    /// data dir's SQLite file. `sqlite:PATH` names another SQLite file.
    pub fn resolve(url: Option<&str>, data_dir: &Path) -> Result<Location, StoreError> {
        match url.map(str::trim).filter(|u| !u.is_empty()) {
            None => Ok(Location::Sqlite(data_dir.join("tether.db"))),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Location::Postgres(url.to_string()))
            }
            Some(url) => match url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
                Some(path) if !path.is_empty() => Ok(Location::Sqlite(PathBuf::from(path))),
                // Only the scheme: the rest may hold a password.
                _ => Err(StoreError::BadUrl(url.split(':').next().unwrap_or("").to_string())),
            },
        }
    }

    /// For messages and logs: the file, or the database's user, host, port and name (never a
    /// password, nor the URL's other parameters).
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(path) => path.display().to_string(),
            Location::Postgres(url) => redact(url),
        }
    }
}

/// `postgres://USER@HOST:PORT/DB` from a URL, without anything secret in it.
fn redact(url: &str) -> String {
    match PgConnectOptions::from_str(url) {
        Ok(options) => format!(
            "postgres://{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("")
        ),
        Err(_) => "a PostgreSQL URL that does not parse".to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "a database URL of scheme {0:?} is not one this gateway understands; use postgres://USER:PASSWORD@HOST:PORT/DB \
         or sqlite:PATH"
    )]
    BadUrl(String),
    #[error("cannot create the store {path}: {source}; check that the data dir exists and is writable")]
    Create { path: PathBuf, source: std::io::Error },
    #[error(
        "cannot open the store {location}: {source}; check that the file is a Tether database (SQLite) or that \
         the server is up and the URL, user and password are right (PostgreSQL)"
    )]
    Open { location: String, source: sqlx::Error },
    #[error("the store {location}: {source}")]
    Database { location: String, source: sqlx::Error },
    #[error("a token named {0:?} exists already; pick another name")]
    TokenExists(String),
    #[error(
        "{location} was written by a newer Tether (schema {found}, this one knows {known}); upgrade tether, or \
         restore a backup made by this version"
    )]
    TooNew { location: String, found: i64, known: i64 },
    #[error(
        "{location} has schema {found} and this Tether needs {known}; run `tether db migrate` (the gateway \
         migrates by itself when it starts)"
    )]
    Outdated { location: String, found: i64, known: i64 },
    #[error("{0}")]
    Backup(String),
}

/// One statement and its arguments, in the SQL both databases accept.
#[derive(Debug, Clone)]
pub(crate) struct Stmt {
    sql: &'static str,
    args: Vec<Arg>,
}

#[derive(Debug, Clone)]
enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
    Bool(bool),
}

impl Stmt {
    pub(crate) fn new(sql: &'static str) -> Stmt {
        Stmt { sql, args: Vec::new() }
    }

    pub(crate) fn int(mut self, value: impl Into<Option<i64>>) -> Stmt {
        self.args.push(Arg::Int(value.into()));
        self
    }

    pub(crate) fn text(mut self, value: impl Into<Option<String>>) -> Stmt {
        self.args.push(Arg::Text(value.into()));
        self
    }

    pub(crate) fn str(self, value: &str) -> Stmt {
        self.text(value.to_string())
    }

    pub(crate) fn time(self, at: OffsetDateTime) -> Stmt {
        self.int(millis(at))
    }

    pub(crate) fn bool(mut self, value: bool) -> Stmt {
        self.args.push(Arg::Bool(value));
        self
    }

    fn query<DB: sqlx::Database>(&self) -> sqlx::query::Query<'_, DB, DB::Arguments>
    where
        for<'t> Option<i64>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
        for<'t> Option<String>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
        for<'t> bool: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    {
        let mut query = sqlx::query::<DB>(self.sql);
        for arg in &self.args {
            query = match arg {
                Arg::Int(v) => query.bind(*v),
                Arg::Text(v) => query.bind(v.clone()),
                Arg::Bool(v) => query.bind(*v),
            };
        }
        query
    }
}

/// A result row, whichever database it came from.
pub(crate) trait Cols {
    fn int(&self, i: usize) -> sqlx::Result<Option<i64>>;
    fn text(&self, i: usize) -> sqlx::Result<Option<String>>;
    fn bool(&self, i: usize) -> sqlx::Result<bool>;

    fn count(&self, i: usize) -> sqlx::Result<u64> {
        Ok(self.int(i)?.unwrap_or(0).max(0) as u64)
    }

    fn time(&self, i: usize) -> sqlx::Result<Option<OffsetDateTime>> {
        Ok(from_millis(self.int(i)?))
    }

    fn string(&self, i: usize) -> sqlx::Result<String> {
        Ok(self.text(i)?.unwrap_or_default())
    }
}

macro_rules! impl_cols {
    ($row:ty) => {
        impl Cols for $row {
            fn int(&self, i: usize) -> sqlx::Result<Option<i64>> {
                self.try_get(i)
            }
            fn text(&self, i: usize) -> sqlx::Result<Option<String>> {
                self.try_get(i)
            }
            fn bool(&self, i: usize) -> sqlx::Result<bool> {
                self.try_get(i)
            }
        }
    };
}
impl_cols!(SqliteRow);
impl_cols!(PgRow);

/// Runs `$body` with `$pool` bound to whichever pool the store has (the same code, checked
/// against each database's types).
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

#[derive(Debug, Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Tuning of the pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    /// Connections at most (PostgreSQL; SQLite uses a few: one writer at a time anyway).
    pub max_connections: u32,
    /// How long a query waits for a free connection.
    pub acquire_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self { max_connections: 16, acquire_timeout: Duration::from_secs(10) }
    }
}

/// The store (cheap to clone: the pool is shared).
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    location: Location,
}

/// Whether [`Store::open`] brings the schema up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrate {
    /// Apply missing migrations (the gateway at start, `tether db migrate`).
    Yes,
    /// Refuse an outdated schema (`tether db check`).
    No,
}

/// What `tether db check` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    pub database: String,
    pub kind: &'static str,
    pub server_version: String,
    pub schema_version: i64,
    pub schema_known: i64,
    pub integrity: String,
    pub devices: u64,
    pub tokens: u64,
    pub instances: u64,
}

impl Store {
    /// Opens the store at `location` (creating a SQLite file with mode 0600 if missing).
    pub async fn open(location: &Location, migrate: Migrate, pool: PoolOptions) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open { location: location.describe(), source };
        let db = match location {
            Location::Sqlite(path) => {
                if !path.exists() {
                    create_private(path).map_err(|source| StoreError::Create { path: path.clone(), source })?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
                    .statement_cache_capacity(64)
                    .disable_statement_logging();
                // WAL: readers go on beside the one writer; more connections would only queue on
                // SQLite's write lock.
                let pool = SqlitePoolOptions::new()
                    .max_connections(pool.max_connections.clamp(1, 4))
                    .acquire_timeout(pool.acquire_timeout)
                    .connect_with(options)
                    .await
                    .map_err(open_err)?;
                Db::Sqlite(pool)
            }
            Location::Postgres(url) => {
                let options = PgConnectOptions::from_str(url)
                    .map_err(open_err)?
                    .application_name("tether")
                    .disable_statement_logging();
                let pool = PgPoolOptions::new()
                    .max_connections(pool.max_connections.max(1))
                    .acquire_timeout(pool.acquire_timeout)
                    .connect_with(options)
                    .await
                    .map_err(open_err)?;
                Db::Postgres(pool)
            }
        };
        let store = Store { db, location: location.clone() };
        let (found, known) = store.schema_version().await?;
        if found > known {
            return Err(StoreError::TooNew { location: location.describe(), found, known });
        }
        match migrate {
            Migrate::Yes => {
                store.migrate().await?;
            }
            Migrate::No if found < known => {
                return Err(StoreError::Outdated { location: location.describe(), found, known });
            }
            Migrate::No => {}
        }
        Ok(store)
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    fn err(&self, source: sqlx::Error) -> StoreError {
        StoreError::Database { location: self.location.describe(), source }
    }

    /// Runs one statement; the number of rows it changed.
    pub(crate) async fn execute(&self, stmt: Stmt) -> Result<u64, StoreError> {
        let result = on_pool!(self, pool => stmt.query().execute(pool).await.map(|r| r.rows_affected()));
        result.map_err(|e| self.err(e))
    }

    /// Runs statements in one transaction: all of them or none.
    pub(crate) async fn execute_all(&self, stmts: &[Stmt]) -> Result<(), StoreError> {
        if stmts.is_empty() {
            return Ok(());
        }
        let result: sqlx::Result<()> = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            for stmt in stmts {
                stmt.query().execute(&mut *tx).await?;
            }
            tx.commit().await
        }
        .await);
        result.map_err(|e| self.err(e))
    }

    /// Runs a query; each row through `decode`.
    pub(crate) async fn fetch_all<T>(
        &self,
        stmt: Stmt,
        decode: fn(&dyn Cols) -> sqlx::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let result = on_pool!(self, pool => stmt
            .query()
            .fetch_all(pool)
            .await
            .and_then(|rows| rows.iter().map(|r| decode(r)).collect::<sqlx::Result<Vec<T>>>()));
        result.map_err(|e| self.err(e))
    }

    /// Runs a query; its first row (if any) through `decode`.
    pub(crate) async fn fetch_optional<T>(
        &self,
        stmt: Stmt,
        decode: fn(&dyn Cols) -> sqlx::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        let result = on_pool!(self, pool => stmt
            .query()
            .fetch_optional(pool)
            .await
            .and_then(|row| row.as_ref().map(|r| decode(r)).transpose()));
        result.map_err(|e| self.err(e))
    }

    /// The schema version found, and the one this build knows.
    pub async fn schema_version(&self) -> Result<(i64, i64), StoreError> {
        let (found, known) = match &self.db {
            Db::Sqlite(pool) => (migrations::version_sqlite(pool).await, migrations::SQLITE.len()),
            Db::Postgres(pool) => (migrations::version_postgres(pool).await, migrations::POSTGRES.len()),
        };
        Ok((found.map_err(|e| self.err(e))?, known as i64))
    }

    /// Applies missing migrations, each in its own transaction (PostgreSQL: under an advisory
    /// lock, so that gateways starting together migrate once). The number applied.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let result = match &self.db {
            Db::Sqlite(pool) => migrations::migrate_sqlite(pool).await,
            Db::Postgres(pool) => migrations::migrate_postgres(pool).await,
        };
        result.map_err(|e| self.err(e))
    }

    /// Connectivity, schema, integrity (SQLite's `integrity_check`) and row counts.
    pub async fn check(&self) -> Result<CheckReport, StoreError> {
        let (schema_version, schema_known) = self.schema_version().await?;
        let (kind, version_sql, integrity) = match &self.db {
            Db::Sqlite(pool) => {
                let rows: Vec<(String,)> =
                    sqlx::query_as("PRAGMA integrity_check").fetch_all(pool).await.map_err(|e| self.err(e))?;
                ("sqlite", "SELECT sqlite_version()", rows.into_iter().map(|r| r.0).collect::<Vec<_>>().join("; "))
            }
            Db::Postgres(_) => ("postgres", "SHOW server_version", "ok (checked by the server)".to_string()),
        };
        let server_version = self.fetch_optional(Stmt::new(version_sql), |r| r.string(0)).await?.unwrap_or_default();
        let count = |sql| async move {
            self.fetch_optional(Stmt::new(sql), |r| r.count(0)).await.map(Option::unwrap_or_default)
        };
        Ok(CheckReport {
            database: self.location.describe(),
            kind,
            server_version,
            schema_version,
            schema_known,
            integrity,
            devices: count("SELECT COUNT(*) FROM devices").await?,
            tokens: count("SELECT COUNT(*) FROM tokens").await?,
            instances: count("SELECT COUNT(*) FROM instances").await?,
        })
    }

    /// An online-consistent copy of a SQLite store at `dest` (`VACUUM INTO`: one read
    /// transaction, so writers go on and the copy is a single point in time). PostgreSQL is
    /// backed up with `pg_dump` instead.
    pub async fn copy_sqlite_to(&self, dest: &Path) -> Result<(), StoreError> {
        let Db::Sqlite(pool) = &self.db else {
            return Err(StoreError::Backup(format!(
                "the store is PostgreSQL ({}): back it up with pg_dump (see docs/fleet.md)",
                self.location.describe()
            )));
        };
        let dest = dest.to_str().ok_or_else(|| StoreError::Backup(format!("{} is not UTF-8", dest.display())))?;
        sqlx::query("VACUUM INTO $1").bind(dest.to_string()).execute(pool).await.map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Closes the pool, waiting for queries in flight.
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

/// The PostgreSQL migrations, in order: for tests that build a database of an earlier schema
/// and upgrade it (SQLite's are tested inside the crate).
#[doc(hidden)]
pub fn postgres_migrations() -> &'static [&'static str] {
    migrations::POSTGRES
}

pub(crate) fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub(crate) fn from_millis(ms: Option<i64>) -> Option<OffsetDateTime> {
    ms.and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
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
