//! Silo aggregates (`docs/silos.md`, "Aggregates"): what a maintenance silo counts of its
//! clients (by subscriber's opaque id, tier, meter and reason; alerts and actions), and the last
//! aggregates each silo sent its root. No personal data is read or kept.
//!
//! What it does not do: sum or sign (`silo::aggregates`).

use time::OffsetDateTime;

use super::{Stmt, Store, StoreError};

/// Clients a tally reads at most.
pub const MAX_TALLIED: i64 = 1_000_000;

/// One client as a tally reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TalliedClient {
    /// The subscriber's opaque id.
    pub subscriber: String,
    pub tier: String,
    /// `green`, `yellow`, `red`; `None`: not rated yet.
    pub health: Option<String>,
    /// The meter's reasons (JSON), when rated.
    pub reasons: Option<String>,
    pub connected: bool,
}

/// What a maintenance silo counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiloTally {
    pub clients: Vec<TalliedClient>,
    /// Alerts sent, and support actions made, since the tally's `since`.
    pub alerts: u64,
    pub actions: u64,
}

/// A silo's aggregates as its root keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAggregates {
    pub silo: String,
    pub issued_at: OffsetDateTime,
    pub received_at: OffsetDateTime,
    /// The aggregates' JSON, as the silo signed it.
    pub payload: String,
}

impl Store {
    /// This maintenance silo's clients with their meter, and the alerts and actions since `since`.
    pub async fn silo_tally(&self, since: OffsetDateTime) -> Result<SiloTally, StoreError> {
        let clients = Stmt::new(
            "SELECT c.subscriber, c.tier, h.health, h.reasons, a.connected_since
             FROM silo_clients c LEFT JOIN health h ON h.uuid = c.uuid LEFT JOIN agents a ON a.uuid = c.uuid
             ORDER BY c.uuid LIMIT $1",
        )
        .int(MAX_TALLIED);
        let clients = self
            .fetch_all(clients, |r| {
                Ok(TalliedClient {
                    subscriber: r.string(0)?,
                    tier: r.string(1)?,
                    health: r.text(2)?,
                    reasons: r.text(3)?,
                    connected: r.int(4)?.is_some(),
                })
            })
            .await?;
        let count = |sql: &'static str| {
            let stmt = Stmt::new(sql).time(since);
            async move { self.fetch_optional(stmt, |r| r.count(0)).await.map(Option::unwrap_or_default) }
        };
        let alerts = count("SELECT COUNT(*) FROM alert_deliveries WHERE created_at >= $1").await?;
        let actions = count("SELECT COUNT(*) FROM support_actions WHERE created_at >= $1").await?;
        Ok(SiloTally { clients, alerts, actions })
    }

    /// Keeps silo `silo`'s aggregates, unless newer ones are kept already (root). Whether they
    /// were kept.
    pub async fn put_silo_aggregates(&self, aggregates: &StoredAggregates) -> Result<bool, StoreError> {
        let stmt = Stmt::new(
            "INSERT INTO silo_aggregates (silo, issued_at, received_at, payload) VALUES ($1, $2, $3, $4)
             ON CONFLICT (silo) DO UPDATE SET issued_at = $2, received_at = $3, payload = $4
             WHERE silo_aggregates.issued_at <= $2",
        )
        .str(&aggregates.silo)
        .time(aggregates.issued_at)
        .time(aggregates.received_at)
        .str(&aggregates.payload);
        Ok(self.execute(stmt).await? > 0)
    }

    /// The last aggregates of every silo that sent some, by silo (root).
    pub async fn silo_aggregates(&self) -> Result<Vec<StoredAggregates>, StoreError> {
        let stmt = Stmt::new("SELECT silo, issued_at, received_at, payload FROM silo_aggregates ORDER BY silo");
        self.fetch_all(stmt, |r| {
            Ok(StoredAggregates {
                silo: r.string(0)?,
                issued_at: r.time(1)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
                received_at: r.time(2)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
                payload: r.string(3)?,
            })
        })
        .await
    }
}
