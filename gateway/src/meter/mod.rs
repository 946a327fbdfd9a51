//! The health meter at work: rates a machine each time its agent's report is stored, and once a
//! minute the machines whose agent went quiet (stale) and the AMT PCs without an agent (online or
//! offline from their CIRA tunnel); stores every change; and alerts the subscriber's active
//! contacts by their preferences ([`alerting`]), through the outbox (mail, and webhooks posted by
//! [`webhook`]).
//!
//! The rules and the alert decisions are pure code in [`crate::health`]; this module only feeds
//! them and acts on what they say. Changes are stored compare-and-set on the previous meter, so
//! that two gateways of a fleet rating the same machine at once record (and alert) one change.

pub mod alerting;
pub mod webhook;

#[cfg(test)]
mod meter_test;

use std::collections::BTreeMap;

use base64::Engine;
use protocols::telemetry::Report;
use time::OffsetDateTime;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::health::{self, Meter};
use crate::metrics::{HealthState, StoreTask};
use crate::state::Shared;
use crate::store::StoreError;

/// Quiet agents rated per sweep at most (the rest in the next minute).
const SWEEP_BATCH: i64 = 10_000;

/// One change of a machine's meter, stored.
#[derive(Debug, Clone)]
pub struct Change {
    pub uuid: Uuid,
    pub change_id: i64,
    /// `None`: the machine had no meter before.
    pub before: Option<Meter>,
    pub after: Meter,
    pub at: OffsetDateTime,
}

/// The stored meter of `uuid` and its reasons' JSON as stored (for the compare-and-set).
async fn stored(shared: &Shared, uuid: Uuid) -> Result<Option<(Meter, String)>, StoreError> {
    Ok(shared.store.health(uuid).await?.map(|record| {
        let reasons: Vec<health::Reason> = serde_json::from_str(&record.reasons).unwrap_or_default();
        let health = health::Health::parse(&record.health).unwrap_or(health::Health::Green);
        (Meter { health, reasons }, record.reasons)
    }))
}

/// Stores `after` as `uuid`'s meter; the change, if it is one (and this gateway recorded it).
async fn record(shared: &Shared, uuid: Uuid, after: Meter, now: OffsetDateTime) -> Result<Option<Change>, StoreError> {
    let previous = stored(shared, uuid).await?;
    let changed = previous.as_ref().is_none_or(|(before, _)| !before.same_as(&after));
    let reasons = serde_json::to_string(&after.reasons).unwrap_or_else(|_| "[]".into());
    let expected = previous.as_ref().map(|(_, json)| json.as_str());
    let id = shared.store.set_health(uuid, expected, after.health.as_str(), &reasons, changed, now).await?;
    Ok(id.map(|change_id| Change { uuid, change_id, before: previous.map(|(m, _)| m), after, at: now }))
}

/// Rates machine `uuid` on the report just stored, and alerts on a change.
pub async fn report_stored(shared: &Shared, uuid: Uuid, report: &Report, taken_at: OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    let config = &shared.config;
    let meter = health::evaluate(
        &config.health,
        report,
        taken_at.unix_timestamp(),
        Some(now.unix_timestamp()),
        config.agents.heartbeat_secs,
        now.unix_timestamp(),
    );
    match record(shared, uuid, meter, now).await {
        Ok(Some(change)) => alerting::alert(shared, vec![change]).await,
        Ok(None) => {}
        Err(err) => {
            shared.metrics.store_error(StoreTask::Health);
            warn!(%uuid, error = %err, "cannot store a machine's health meter")
        }
    }
}

/// The once-a-minute round: quiet agents turn stale, AMT PCs without an agent online/offline.
/// Changes of one round go to alerting together (so that many machines going stale at once make
/// one summary per contact).
/// Counts the machines per health meter into `tether_machines_health` (at start, and after
/// each sweep).
pub async fn count(shared: &Shared) {
    match shared.store.health_counts().await {
        Ok(counts) => {
            let counts: Vec<_> = counts
                .into_iter()
                .filter_map(|(state, n)| {
                    let state = HealthState::ALL.iter().find(|s| s.as_str() == state)?;
                    Some((*state, n))
                })
                .collect();
            shared.metrics.machines_health(&counts);
        }
        Err(err) => {
            shared.metrics.store_error(StoreTask::Health);
            warn!(error = %err, "cannot count the machines per health state");
        }
    }
}

pub async fn sweep(shared: &Shared) {
    let now = OffsetDateTime::now_utc();
    let rules = &shared.config.health;
    let heartbeat = shared.config.agents.heartbeat_secs;
    let mut changes = Vec::new();
    if rules.stale_heartbeats > 0 {
        let quiet_for = time::Duration::seconds(i64::from(rules.stale_heartbeats) * i64::from(heartbeat));
        let quiet = match shared.store.quiet_agents(now - quiet_for, SWEEP_BATCH).await {
            Ok(quiet) => quiet,
            Err(err) => {
                shared.metrics.store_error(StoreTask::Health);
                return warn!(error = %err, "health sweep: cannot list quiet agents");
            }
        };
        for uuid in quiet {
            match stale_meter(shared, uuid, now).await {
                Ok(Some(meter)) => match record(shared, uuid, meter, now).await {
                    Ok(Some(change)) => changes.push(change),
                    Ok(None) => {}
                    Err(err) => {
                        shared.metrics.store_error(StoreTask::Health);
                        warn!(%uuid, error = %err, "health sweep: cannot store a meter")
                    }
                },
                Ok(None) => {}
                Err(err) => {
                    shared.metrics.store_error(StoreTask::Health);
                    warn!(%uuid, error = %err, "health sweep: cannot read a report")
                }
            }
        }
    }
    match shared.store.amt_only_machines().await {
        Ok(machines) => {
            for (uuid, connected_since, last_disconnect) in machines {
                let online = connected_since.is_some();
                let last = connected_since.or(last_disconnect).map(|t| t.unix_timestamp());
                let meter = health::evaluate_amt(rules, online, last, now.unix_timestamp());
                let unchanged = matches!(stored(shared, uuid).await, Ok(Some((before, _))) if before.same_as(&meter));
                if unchanged {
                    continue;
                }
                match record(shared, uuid, meter, now).await {
                    Ok(Some(change)) => changes.push(change),
                    Ok(None) => {}
                    Err(err) => {
                        shared.metrics.store_error(StoreTask::Health);
                        warn!(%uuid, error = %err, "health sweep: cannot store a meter")
                    }
                }
            }
        }
        Err(err) => {
            shared.metrics.store_error(StoreTask::Health);
            warn!(error = %err, "health sweep: cannot list AMT machines")
        }
    }
    if !changes.is_empty() {
        debug!(changes = changes.len(), "health sweep");
        alerting::alert(shared, changes).await;
    }
}

/// The meter of a quiet agent: its newest report rated at `now` (stale by then).
async fn stale_meter(shared: &Shared, uuid: Uuid, now: OffsetDateTime) -> Result<Option<Meter>, StoreError> {
    let Some(latest) = shared.store.latest_report(uuid).await? else {
        return Ok(None);
    };
    let Some(report) = decode_stored(&latest.report) else {
        return Ok(None);
    };
    let last_report = shared.store.agent(uuid).await?.and_then(|a| a.last_report).unwrap_or(latest.received_at);
    Ok(Some(health::evaluate(
        &shared.config.health,
        &report,
        latest.taken_at.unix_timestamp(),
        Some(last_report.unix_timestamp()),
        shared.config.agents.heartbeat_secs,
        now.unix_timestamp(),
    )))
}

/// A report as the store keeps it (its wire encoding, base64), decoded.
pub fn decode_stored(text: &str) -> Option<Report> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    protocols::telemetry::decode_report(&bytes).ok()
}

/// Changes grouped by the subscriber their machine belongs to (`None`: enrolled by none).
pub(crate) async fn by_subscriber(shared: &Shared, changes: Vec<Change>) -> BTreeMap<Option<i64>, Vec<Change>> {
    let mut out: BTreeMap<Option<i64>, Vec<Change>> = BTreeMap::new();
    for change in changes {
        let subscriber = match shared.store.machine(change.uuid).await {
            Ok(machine) => machine.map(|m| m.subscriber_id),
            Err(err) => {
                warn!(uuid = %change.uuid, error = %err, "cannot read a machine's subscriber: no alert for this change");
                continue;
            }
        };
        out.entry(subscriber).or_default().push(change);
    }
    out
}
