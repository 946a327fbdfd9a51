//! The health meter's tables: each machine's meter now (`health`), every change of it
//! (`health_changes`), what each support contact was last alerted of per machine
//! (`alert_state`, so that an alert is never repeated while nothing changed and a resolved
//! notice goes only to those who were alerted), and every alert delivery (`alert_deliveries`, each
//! pointing at its outbox row, which says whether and when it went out).
//!
//! The meter's reasons are kept as JSON (`[{"code", "health", "text"}]`). What it does not do:
//! evaluate a meter or decide who is alerted (`health`, `meter`).

use time::OffsetDateTime;
use uuid::Uuid;

use super::{Cols, Stmt, Store, StoreError};

/// Changes a listing returns at most.
pub const MAX_CHANGES: i64 = 1000;

/// A machine's meter as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HealthRecord {
    pub uuid: Uuid,
    /// `green`, `yellow` or `red`.
    pub health: String,
    /// JSON array of the reasons.
    pub reasons: String,
    /// Since when the meter has been this.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub evaluated_at: OffsetDateTime,
}

/// One change of a machine's meter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HealthChange {
    pub id: i64,
    pub uuid: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub health: String,
    pub previous: Option<String>,
    pub reasons: String,
}

/// An alert delivery to record.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub change_id: Option<i64>,
    /// `None` for a summary of several machines.
    pub uuid: Option<Uuid>,
    pub contact_id: i64,
    /// `email` or `webhook`.
    pub channel: &'static str,
    /// `raised`, `changed`, `resolved` or `stale_summary`.
    pub kind: &'static str,
    pub health: String,
    pub outbox_id: i64,
    pub at: OffsetDateTime,
}

/// A recorded delivery, with its outbox row's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryRecord {
    pub id: i64,
    pub uuid: Option<Uuid>,
    pub contact_id: i64,
    pub channel: String,
    pub kind: String,
    pub health: String,
    pub recipient: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub gave_up_at: Option<OffsetDateTime>,
    pub attempts: u64,
    pub last_error: Option<String>,
}

fn health_row(r: &dyn Cols) -> sqlx::Result<HealthRecord> {
    Ok(HealthRecord {
        uuid: r.string(0)?.parse().unwrap_or_default(),
        health: r.string(1)?,
        reasons: r.string(2)?,
        since: r.time(3)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        evaluated_at: r.time(4)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
    })
}

pub(super) fn change_row(r: &dyn Cols) -> sqlx::Result<HealthChange> {
    Ok(HealthChange {
        id: r.int(0)?.unwrap_or_default(),
        uuid: r.string(1)?.parse().unwrap_or_default(),
        at: r.time(2)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        health: r.string(3)?,
        previous: r.text(4)?,
        reasons: r.string(5)?,
    })
}

impl Store {
    pub async fn health(&self, uuid: Uuid) -> Result<Option<HealthRecord>, StoreError> {
        let stmt = Stmt::new("SELECT uuid, health, reasons, since, evaluated_at FROM health WHERE uuid = $1")
            .text(uuid.to_string());
        self.fetch_optional(stmt, health_row).await
    }

    /// Every stored meter (the stale sweep reads them).
    pub async fn all_health(&self) -> Result<Vec<HealthRecord>, StoreError> {
        self.fetch_all(Stmt::new("SELECT uuid, health, reasons, since, evaluated_at FROM health"), health_row).await
    }

    /// How many machines have each stored meter (`green`, `yellow`, `red`): the metrics' count.
    pub async fn health_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        fn decode(r: &dyn Cols) -> sqlx::Result<(String, u64)> {
            Ok((r.string(0)?, r.count(1)?))
        }
        self.fetch_all(Stmt::new("SELECT health, COUNT(*) FROM health GROUP BY health"), decode).await
    }

    /// Stores machine `uuid`'s meter at `now`, if the stored one is still `expected` (its
    /// reasons JSON as read; `None`: no meter yet). A `changed` meter also appends a change,
    /// whose id is returned; an unchanged one only refreshes the reasons' texts (ages move on)
    /// and the evaluation time. `Ok(None)` for a change another gateway of the fleet made first.
    pub async fn set_health(
        &self,
        uuid: Uuid,
        expected: Option<&str>,
        health: &str,
        reasons: &str,
        changed: bool,
        now: OffsetDateTime,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.begin().await?;
        let written = match expected {
            None => {
                tx.execute(
                    Stmt::new(
                        "INSERT INTO health (uuid, health, reasons, since, evaluated_at) VALUES ($1, $2, $3, $4, $4)
                         ON CONFLICT (uuid) DO NOTHING",
                    )
                    .text(uuid.to_string())
                    .str(health)
                    .str(reasons)
                    .time(now),
                )
                .await?
            }
            Some(expected) if changed => {
                tx.execute(
                    Stmt::new(
                        "UPDATE health SET health = $2, reasons = $3, since = $4, evaluated_at = $4
                         WHERE uuid = $1 AND reasons = $5",
                    )
                    .text(uuid.to_string())
                    .str(health)
                    .str(reasons)
                    .time(now)
                    .str(expected),
                )
                .await?
            }
            Some(expected) => {
                tx.execute(
                    Stmt::new("UPDATE health SET reasons = $2, evaluated_at = $3 WHERE uuid = $1 AND reasons = $4")
                        .text(uuid.to_string())
                        .str(reasons)
                        .time(now)
                        .str(expected),
                )
                .await?;
                tx.commit().await?;
                return Ok(None);
            }
        };
        if written == 0 {
            return Ok(None);
        }
        let previous = Stmt::new("SELECT health FROM health_changes WHERE uuid = $1 ORDER BY at DESC, id DESC LIMIT 1")
            .text(uuid.to_string());
        let previous = tx.fetch_optional(previous, |r| r.text(0)).await?.flatten();
        let insert = Stmt::new(
            "INSERT INTO health_changes (uuid, at, health, previous, reasons) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .text(uuid.to_string())
        .time(now)
        .str(health)
        .text(previous)
        .str(reasons);
        let id = tx.fetch_optional(insert, |r| r.int(0)).await?.flatten();
        tx.commit().await?;
        Ok(id)
    }

    /// Agents silent since before `before` whose meter does not say stale yet (the stale
    /// sweep's candidates), at most `limit`.
    pub async fn quiet_agents(&self, before: OffsetDateTime, limit: i64) -> Result<Vec<Uuid>, StoreError> {
        let stmt = Stmt::new(
            "SELECT a.uuid FROM agents a LEFT JOIN health h ON h.uuid = a.uuid
             WHERE a.last_report IS NOT NULL AND a.last_report < $1
               AND (h.reasons IS NULL OR h.reasons NOT LIKE '%\"stale\"%')
             ORDER BY a.last_report LIMIT $2",
        )
        .time(before)
        .int(limit);
        self.fetch_all(stmt, |r| Ok(r.string(0)?.parse().unwrap_or_default())).await
    }

    /// Enrolled machines with a CIRA device record and no agent: (UUID, connected since, last
    /// disconnect), for their online/offline meter.
    pub async fn amt_only_machines(
        &self,
    ) -> Result<Vec<(Uuid, Option<OffsetDateTime>, Option<OffsetDateTime>)>, StoreError> {
        let stmt = Stmt::new(
            "SELECT m.uuid, d.connected_since, d.last_disconnect FROM machines m
             JOIN devices d ON d.uuid = m.uuid LEFT JOIN agents a ON a.uuid = m.uuid
             WHERE a.uuid IS NULL",
        );
        self.fetch_all(stmt, |r| Ok((r.string(0)?.parse().unwrap_or_default(), r.time(1)?, r.time(2)?))).await
    }

    /// Machine `uuid`'s meter changes since `since`, newest first.
    pub async fn health_changes(&self, uuid: Uuid, since: OffsetDateTime) -> Result<Vec<HealthChange>, StoreError> {
        let stmt = Stmt::new(
            "SELECT id, uuid, at, health, previous, reasons FROM health_changes WHERE uuid = $1 AND at >= $2
             ORDER BY at DESC, id DESC LIMIT $3",
        )
        .text(uuid.to_string())
        .time(since)
        .int(MAX_CHANGES);
        self.fetch_all(stmt, change_row).await
    }

    /// What contact `contact_id` was last alerted of for machine `uuid` (`green` after a resolved
    /// notice); `None`: never.
    pub async fn last_alerted(&self, contact_id: i64, uuid: Uuid) -> Result<Option<String>, StoreError> {
        let stmt = Stmt::new("SELECT last_alerted FROM alert_state WHERE contact_id = $1 AND uuid = $2")
            .int(contact_id)
            .text(uuid.to_string());
        Ok(self.fetch_optional(stmt, |r| r.text(0)).await?.flatten())
    }

    /// Records that contact `contact_id` was alerted of `health` for machine `uuid`.
    pub async fn set_last_alerted(
        &self,
        contact_id: i64,
        uuid: Uuid,
        health: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.execute(
            Stmt::new(
                "INSERT INTO alert_state (contact_id, uuid, last_alerted, at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (contact_id, uuid) DO UPDATE SET last_alerted = $3, at = $4",
            )
            .int(contact_id)
            .text(uuid.to_string())
            .str(health)
            .time(now),
        )
        .await
        .map(drop)
    }

    pub async fn record_delivery(&self, delivery: &NewDelivery) -> Result<(), StoreError> {
        self.execute(
            Stmt::new(
                "INSERT INTO alert_deliveries (change_id, uuid, contact_id, channel, kind, health, outbox_id, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .int(delivery.change_id)
            .text(delivery.uuid.map(|u| u.to_string()))
            .int(delivery.contact_id)
            .str(delivery.channel)
            .str(delivery.kind)
            .str(&delivery.health)
            .int(delivery.outbox_id)
            .time(delivery.at),
        )
        .await
        .map(drop)
    }

    /// The alert deliveries about machine `uuid` since `since`, newest first, with where each is.
    pub async fn deliveries(&self, uuid: Uuid, since: OffsetDateTime) -> Result<Vec<DeliveryRecord>, StoreError> {
        let stmt = Stmt::new(
            "SELECT d.id, d.uuid, d.contact_id, d.channel, d.kind, d.health, o.recipient, d.created_at, o.sent_at,
                    o.gave_up_at, o.attempts, o.last_error
             FROM alert_deliveries d JOIN mail_outbox o ON o.id = d.outbox_id
             WHERE d.uuid = $1 AND d.created_at >= $2 ORDER BY d.created_at DESC, d.id DESC LIMIT $3",
        )
        .text(uuid.to_string())
        .time(since)
        .int(MAX_CHANGES);
        self.fetch_all(stmt, |r| {
            Ok(DeliveryRecord {
                id: r.int(0)?.unwrap_or_default(),
                uuid: r.text(1)?.and_then(|u| u.parse().ok()),
                contact_id: r.int(2)?.unwrap_or_default(),
                channel: r.string(3)?,
                kind: r.string(4)?,
                health: r.string(5)?,
                recipient: r.string(6)?,
                created_at: r.time(7)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
                delivered_at: r.time(8)?,
                gave_up_at: r.time(9)?,
                attempts: r.count(10)?,
                last_error: r.text(11)?,
            })
        })
        .await
    }
}
