//! Aggregates (`docs/silos.md`, "Aggregates"): a maintenance silo counts its clients (by meter,
//! reason, tier and subscriber's opaque id; connected; alerts and actions of the last day) and
//! sends the counts to its root on a schedule, signed with its key. The root keeps each silo's
//! last ones and shows them, and their sum, in its API (`GET /api/v1/silos`) and
//! `tether silo aggregates`. Nothing in them names a person.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::moves::{send_report, verify_report, ReportError, SiloReport};
use super::Maintenance;
use crate::agents::keys::AgentKeys;
use crate::health::Reason;
use crate::store::{SiloTally, Store, StoredAggregates};

/// Where a root takes a silo's signed aggregates.
pub const AGGREGATES_PATH: &str = "/silo/v1/aggregates";
/// Subscribers, tiers and reasons an aggregate names at most (a root refuses more).
const MAX_KEYS: usize = 100_000;
/// The window of the alert and action counts.
const WINDOW: time::Duration = time::Duration::hours(24);

/// Machines by the state of their meter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Counts {
    pub machines: u64,
    pub green: u64,
    pub yellow: u64,
    pub red: u64,
    /// Not rated yet (no report).
    pub unrated: u64,
}

impl Counts {
    fn count(&mut self, health: Option<&str>) {
        self.machines += 1;
        match health {
            Some("green") => self.green += 1,
            Some("yellow") => self.yellow += 1,
            Some("red") => self.red += 1,
            _ => self.unrated += 1,
        }
    }

    fn add(&mut self, other: &Counts) {
        self.machines += other.machines;
        self.green += other.green;
        self.yellow += other.yellow;
        self.red += other.red;
        self.unrated += other.unrated;
    }
}

/// What a silo counts of its clients.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Aggregates {
    pub silo: String,
    /// When the silo counted (Unix seconds).
    pub issued_at: i64,
    pub machines: Counts,
    /// Machines connected now.
    pub connected: u64,
    /// Machines per reason of their meter (a machine counts once per reason it has).
    pub reasons: BTreeMap<String, u64>,
    pub tiers: BTreeMap<String, Counts>,
    /// By the subscriber's opaque id.
    pub subscribers: BTreeMap<String, Counts>,
    /// Alerts sent, and support actions made, in the last 24 hours.
    pub alerts_24h: u64,
    pub actions_24h: u64,
}

impl Aggregates {
    /// Adds another silo's counts (the root's sum across silos).
    pub fn add(&mut self, other: &Aggregates) {
        self.issued_at = self.issued_at.max(other.issued_at);
        self.machines.add(&other.machines);
        self.connected += other.connected;
        for (reason, n) in &other.reasons {
            *self.reasons.entry(reason.clone()).or_default() += n;
        }
        for (tier, counts) in &other.tiers {
            self.tiers.entry(tier.clone()).or_default().add(counts);
        }
        for (subscriber, counts) in &other.subscribers {
            self.subscribers.entry(subscriber.clone()).or_default().add(counts);
        }
        self.alerts_24h += other.alerts_24h;
        self.actions_24h += other.actions_24h;
    }
}

/// Counts what the store read (`tally`) as silo `silo` at `now`.
pub fn count(silo: &str, tally: &SiloTally, now: OffsetDateTime) -> Aggregates {
    let mut out = Aggregates {
        silo: silo.to_string(),
        issued_at: now.unix_timestamp(),
        alerts_24h: tally.alerts,
        actions_24h: tally.actions,
        ..Aggregates::default()
    };
    for client in &tally.clients {
        let health = client.health.as_deref();
        out.machines.count(health);
        out.tiers.entry(client.tier.clone()).or_default().count(health);
        out.subscribers.entry(client.subscriber.clone()).or_default().count(health);
        if client.connected {
            out.connected += 1;
        }
        let reasons: Vec<Reason> =
            client.reasons.as_deref().and_then(|r| serde_json::from_str(r).ok()).unwrap_or_default();
        for reason in reasons {
            *out.reasons.entry(reason.code.as_str().to_string()).or_default() += 1;
        }
    }
    out
}

/// Counts this silo's clients and sends the counts to the root, signed.
pub async fn push(maintenance: &Maintenance, store: &Store, keys: &AgentKeys) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    let tally = store.silo_tally(now - WINDOW).await?;
    let aggregates = count(maintenance.name(), &tally, now);
    send_report(maintenance, keys, AGGREGATES_PATH, &aggregates).await.context("sending aggregates to the root")?;
    Ok(())
}

/// A silo's aggregates (root): kept when its key signed them, they name it, and they are
/// newer than those kept.
pub async fn take(store: &Store, report: &SiloReport) -> Result<(), ReportError> {
    verify_report(store, report).await?;
    let aggregates: Aggregates =
        serde_json::from_str(&report.payload).map_err(|e| ReportError::Malformed(e.to_string()))?;
    if aggregates.silo != report.silo {
        return Err(ReportError::Malformed(format!("signed by {} and saying it is {}", report.silo, aggregates.silo)));
    }
    let keys = aggregates.subscribers.len() + aggregates.tiers.len() + aggregates.reasons.len();
    if keys > MAX_KEYS {
        return Err(ReportError::Malformed(format!("{keys} subscribers, tiers and reasons, more than {MAX_KEYS}")));
    }
    let issued_at = OffsetDateTime::from_unix_timestamp(aggregates.issued_at)
        .map_err(|_| ReportError::Malformed("its time is out of range".into()))?;
    let stored = StoredAggregates {
        silo: report.silo.clone(),
        issued_at,
        received_at: OffsetDateTime::now_utc(),
        payload: report.payload.clone(),
    };
    store.put_silo_aggregates(&stored).await?;
    Ok(())
}

/// Each silo's last aggregates as the root keeps them, with when they came, and their sum.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AcrossSilos {
    pub silos: Vec<SiloAggregates>,
    /// The sum over the silos (`silo` is empty).
    pub total: Aggregates,
}

/// One silo's last aggregates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SiloAggregates {
    /// When the root received them (Unix seconds).
    pub received_at: i64,
    pub aggregates: Aggregates,
}

/// The aggregates the root keeps, and their sum.
pub async fn across(store: &Store) -> Result<AcrossSilos, crate::store::StoreError> {
    let mut out = AcrossSilos::default();
    for stored in store.silo_aggregates().await? {
        // Checked when taken; one that no longer parses is left out.
        let Ok(aggregates) = serde_json::from_str::<Aggregates>(&stored.payload) else { continue };
        out.total.add(&aggregates);
        out.silos.push(SiloAggregates { received_at: stored.received_at.unix_timestamp(), aggregates });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TalliedClient;

    fn client(subscriber: &str, tier: &str, health: Option<&str>, reasons: &str, connected: bool) -> TalliedClient {
        TalliedClient {
            subscriber: subscriber.into(),
            tier: tier.into(),
            health: health.map(Into::into),
            reasons: health.map(|_| reasons.to_string()),
            connected,
        }
    }

    #[test]
    fn clients_are_counted_by_meter_reason_tier_and_subscriber_and_silos_add_up() {
        let av = r#"[{"code":"antivirus_off","health":"red","text":"x"},{"code":"firewall_off","health":"yellow","text":"y"}]"#;
        let tally = SiloTally {
            clients: vec![
                client("s1", "standard", Some("green"), "[]", true),
                client("s1", "standard", Some("red"), av, true),
                client("s2", "gold", None, "", false),
            ],
            alerts: 3,
            actions: 1,
        };
        let a = count("silo-a", &tally, OffsetDateTime::from_unix_timestamp(100).unwrap());
        assert_eq!(a.machines, Counts { machines: 3, green: 1, yellow: 0, red: 1, unrated: 1 });
        assert_eq!(a.connected, 2);
        assert_eq!(a.reasons.get("antivirus_off"), Some(&1));
        assert_eq!(a.reasons.get("firewall_off"), Some(&1));
        assert_eq!(a.tiers["gold"].unrated, 1);
        assert_eq!(a.subscribers["s1"], Counts { machines: 2, green: 1, yellow: 0, red: 1, unrated: 0 });
        assert_eq!((a.alerts_24h, a.actions_24h, a.issued_at), (3, 1, 100));

        let mut total = Aggregates::default();
        total.add(&a);
        total.add(&count(
            "silo-b",
            &SiloTally { clients: vec![client("s1", "standard", Some("yellow"), "[]", false)], ..SiloTally::default() },
            OffsetDateTime::from_unix_timestamp(50).unwrap(),
        ));
        assert_eq!(total.machines.machines, 4);
        assert_eq!(total.subscribers["s1"].machines, 3);
        assert_eq!((total.issued_at, total.alerts_24h), (100, 3));
    }
}
