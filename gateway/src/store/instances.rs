//! The gateways of a fleet in the store: each registers itself (instance id, the address
//! technicians use for its API, the address other gateways reach it on) and writes a heartbeat.
//! Any gateway marks the tunnels of an instance whose heartbeat stopped as disconnected.
//!
//! A single appliance keeps one row too (itself), so `tether fleet status` works everywhere.

use serde::Serialize;
use time::OffsetDateTime;

use super::{Cols, Stmt, Store, StoreError};

/// What a gateway says of itself when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRegistration {
    pub id: String,
    pub api_addr: Option<String>,
    pub internal_addr: Option<String>,
    pub version: String,
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
    /// Devices the store records as connected through it.
    pub tunnels: u64,
}

impl InstanceRecord {
    /// Running, and its heartbeat is younger than `stale_after`.
    pub fn is_alive(&self, now: OffsetDateTime, stale_after: time::Duration) -> bool {
        self.stopped_at.is_none() && now - self.heartbeat_at < stale_after
    }
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
        tunnels: r.count(7)?,
    })
}

impl Store {
    /// Registers (or re-registers, after a restart) a gateway instance.
    pub async fn register_instance(&self, me: &InstanceRegistration, now: OffsetDateTime) -> Result<(), StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO instances (id, api_addr, internal_addr, version, started_at, heartbeat_at, stopped_at)
                 VALUES ($1, $2, $3, $4, $5, $5, NULL)
             ON CONFLICT (id) DO UPDATE SET api_addr = excluded.api_addr, internal_addr = excluded.internal_addr,
                 version = excluded.version, started_at = excluded.started_at,
                 heartbeat_at = excluded.heartbeat_at, stopped_at = NULL",
        )
        .str(&me.id)
        .text(me.api_addr.clone())
        .text(me.internal_addr.clone())
        .str(&me.version)
        .time(now);
        self.execute(stmt).await.map(drop)
    }

    /// Writes the instance's heartbeat.
    pub async fn heartbeat(&self, id: &str, now: OffsetDateTime) -> Result<(), StoreError> {
        let stmt =
            Stmt::new("UPDATE instances SET heartbeat_at = $2, stopped_at = NULL WHERE id = $1").str(id).time(now);
        self.execute(stmt).await.map(drop)
    }

    /// Records a clean stop.
    pub async fn instance_stopped(&self, id: &str, now: OffsetDateTime) -> Result<(), StoreError> {
        self.execute(Stmt::new("UPDATE instances SET stopped_at = $2 WHERE id = $1").str(id).time(now)).await.map(drop)
    }

    /// Removes an instance that is gone for good (`tether fleet remove`); false if unknown.
    pub async fn remove_instance(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.execute(Stmt::new("DELETE FROM instances WHERE id = $1").str(id)).await? > 0)
    }

    /// Every instance with the number of devices recorded as connected through it.
    pub async fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let stmt = Stmt::new(
            "SELECT i.id, i.api_addr, i.internal_addr, i.version, i.started_at, i.heartbeat_at, i.stopped_at,
                    (SELECT COUNT(*) FROM devices d WHERE d.instance_id = i.id AND d.connected_since IS NOT NULL)
             FROM instances i ORDER BY i.id",
        );
        self.fetch_all(stmt, instance_row).await
    }

    pub async fn instance(&self, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        let stmt = Stmt::new(
            "SELECT i.id, i.api_addr, i.internal_addr, i.version, i.started_at, i.heartbeat_at, i.stopped_at,
                    (SELECT COUNT(*) FROM devices d WHERE d.instance_id = i.id AND d.connected_since IS NOT NULL)
             FROM instances i WHERE i.id = $1",
        )
        .str(id);
        self.fetch_optional(stmt, instance_row).await
    }

    /// Marks as disconnected every device held by another instance whose heartbeat is older than
    /// `stale_before` (it died, or lost the database); the number of devices marked.
    pub async fn reap_stale_instances(
        &self,
        me: &str,
        stale_before: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let stmt = Stmt::new(
            "UPDATE devices SET connected_since = NULL, last_disconnect = $3,
                 last_disconnect_reason = 'its gateway (' || instance_id || ') stopped answering'
             WHERE connected_since IS NOT NULL AND instance_id <> $1
               AND instance_id IN (SELECT id FROM instances WHERE heartbeat_at < $2 OR stopped_at IS NOT NULL)",
        )
        .str(me)
        .time(stale_before)
        .time(now);
        self.execute(stmt).await
    }
}
