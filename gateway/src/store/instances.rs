//! The gateways of a fleet in the store: each registers itself (instance id, the address
//! technicians use for its API, the address other gateways reach it on, and a random id of this
//! run) and writes a heartbeat. Any gateway marks the tunnels of an instance whose heartbeat
//! stopped as disconnected.
//!
//! Heartbeats are stamped and judged by the *database's* clock, never a gateway's own: gateways
//! whose clocks disagree still agree on who is alive. A second process starting under an
//! instance id whose heartbeat is fresh, from another run, is refused (two gateways under one id
//! would end each other's device records).
//!
//! A single appliance keeps one row too (itself), so `tether fleet status` works everywhere.

use serde::Serialize;
use time::OffsetDateTime;

use super::{Cols, Stmt, Store, StoreError};

/// The database's clock in milliseconds since the epoch, per database.
macro_rules! sqlite_now {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
    };
}
macro_rules! postgres_now {
    () => {
        "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
    };
}

/// One statement for both databases, the database's clock between its parts: `with_now!(a, b)`
/// is `a NOW b`, as a pair (SQLite's, PostgreSQL's).
macro_rules! with_now {
    ($($part:literal),+ $(,)?) => {
        with_now!(@join [$($part),+])
    };
    (@join [$first:literal $(, $rest:literal)*]) => {
        (
            concat!($first $(, sqlite_now!(), $rest)*),
            concat!($first $(, postgres_now!(), $rest)*),
        )
    };
}

/// What a gateway says of itself when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRegistration {
    pub id: String,
    pub api_addr: Option<String>,
    pub internal_addr: Option<String>,
    pub version: String,
    /// Random per process: tells this run from another process under the same id.
    pub run_id: String,
}

/// One gateway, as `tether fleet status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceRecord {
    pub id: String,
    pub api_addr: Option<String>,
    pub internal_addr: Option<String>,
    pub version: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub heartbeat_at: OffsetDateTime,
    /// Set when the gateway stopped cleanly.
    #[serde(with = "time::serde::rfc3339::option")]
    pub stopped_at: Option<OffsetDateTime>,
    /// How old its heartbeat is, by the database's clock.
    pub heartbeat_age_ms: i64,
    /// Devices the store records as connected through it.
    pub tunnels: u64,
    #[serde(skip)]
    pub run_id: String,
}

impl InstanceRecord {
    /// Running, and its heartbeat is younger than `stale_after`.
    pub fn is_alive(&self, stale_after: std::time::Duration) -> bool {
        self.stopped_at.is_none() && u128::try_from(self.heartbeat_age_ms).unwrap_or(0) < stale_after.as_millis()
    }
}

/// Refusals of a registration.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(
        "another gateway runs as instance {id} (its heartbeat is {age_ms} ms old): two gateways under one id would \
         end each other's device records. Stop the other one, or give this one its own id (fleet.instance_id, or \
         delete DATA_DIR/instance-id)"
    )]
    InUse { id: String, age_ms: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn instance_row(r: &dyn Cols) -> sqlx::Result<InstanceRecord> {
    Ok(InstanceRecord {
        id: r.string(0)?,
        api_addr: r.text(1)?,
        internal_addr: r.text(2)?,
        version: r.string(3)?,
        started_at: r.time(4)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        heartbeat_at: r.time(5)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        stopped_at: r.time(6)?,
        heartbeat_age_ms: r.int(7)?.unwrap_or(i64::MAX),
        tunnels: r.count(8)?,
        run_id: r.string(9)?,
    })
}

const SELECT: (&str, &str) = with_now!(
    "SELECT i.id, i.api_addr, i.internal_addr, i.version, i.started_at, i.heartbeat_at, i.stopped_at, ",
    " - i.heartbeat_at,
            (SELECT COUNT(*) FROM devices d WHERE d.instance_id = i.id AND d.connected_since IS NOT NULL), i.run_id
     FROM instances i WHERE i.id = $1 OR $1 = '' ORDER BY i.id"
);

impl Store {
    fn pick(&self, (sqlite, postgres): (&'static str, &'static str)) -> &'static str {
        if self.is_postgres() {
            postgres
        } else {
            sqlite
        }
    }

    /// Registers (or re-registers, after a restart) a gateway instance; refused while another
    /// run of the same id beats within `stale_after`.
    pub async fn register_instance(
        &self,
        me: &InstanceRegistration,
        stale_after: std::time::Duration,
    ) -> Result<(), RegisterError> {
        if let Some(current) = self.instance(&me.id).await? {
            if current.run_id != me.run_id && current.is_alive(stale_after) {
                return Err(RegisterError::InUse { id: me.id.clone(), age_ms: current.heartbeat_age_ms });
            }
        }
        const UPSERT: (&str, &str) = with_now!(
            "INSERT INTO instances (id, api_addr, internal_addr, version, started_at, heartbeat_at, stopped_at, run_id)
                 VALUES ($1, $2, $3, $4, ",
            ", ",
            ", NULL, $5)
             ON CONFLICT (id) DO UPDATE SET api_addr = excluded.api_addr, internal_addr = excluded.internal_addr,
                 version = excluded.version, started_at = excluded.started_at,
                 heartbeat_at = excluded.heartbeat_at, stopped_at = NULL, run_id = excluded.run_id"
        );
        let stmt = Stmt::new(self.pick(UPSERT))
            .str(&me.id)
            .text(me.api_addr.clone())
            .text(me.internal_addr.clone())
            .str(&me.version)
            .str(&me.run_id);
        self.execute(stmt).await?;
        Ok(())
    }

    /// Writes this run's heartbeat; false if the row is gone or another run holds it.
    pub async fn heartbeat(&self, id: &str, run_id: &str) -> Result<bool, StoreError> {
        const BEAT: (&str, &str) =
            with_now!("UPDATE instances SET heartbeat_at = ", ", stopped_at = NULL WHERE id = $1 AND run_id = $2");
        Ok(self.execute(Stmt::new(self.pick(BEAT)).str(id).str(run_id)).await? > 0)
    }

    /// Records a clean stop (of this run only).
    pub async fn instance_stopped(&self, id: &str, run_id: &str) -> Result<(), StoreError> {
        const STOP: (&str, &str) = with_now!("UPDATE instances SET stopped_at = ", " WHERE id = $1 AND run_id = $2");
        self.execute(Stmt::new(self.pick(STOP)).str(id).str(run_id)).await.map(drop)
    }

    /// Removes an instance that is gone for good (`tether fleet remove`); false if unknown.
    pub async fn remove_instance(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.execute(Stmt::new("DELETE FROM instances WHERE id = $1").str(id)).await? > 0)
    }

    /// Every instance with the number of devices recorded as connected through it.
    pub async fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        self.fetch_all(Stmt::new(self.pick(SELECT)).str(""), instance_row).await
    }

    pub async fn instance(&self, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        if id.is_empty() {
            return Ok(None);
        }
        self.fetch_optional(Stmt::new(self.pick(SELECT)).str(id), instance_row).await
    }

    /// Marks as disconnected every device held by another instance whose heartbeat is older than
    /// `stale_after` (it died, or lost the database) or that stopped; the number marked.
    pub async fn reap_stale_instances(&self, me: &str, stale_after: std::time::Duration) -> Result<u64, StoreError> {
        const REAP: (&str, &str) = with_now!(
            "UPDATE devices SET connected_since = NULL, last_disconnect = ",
            ",
                 last_disconnect_reason = 'its gateway (' || instance_id || ') stopped answering'
             WHERE connected_since IS NOT NULL AND instance_id <> $1
               AND instance_id IN (SELECT id FROM instances WHERE heartbeat_at < ",
            " - $2 OR stopped_at IS NOT NULL)"
        );
        let stale_ms = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
        self.execute(Stmt::new(self.pick(REAP)).str(me).int(stale_ms)).await
    }
}
