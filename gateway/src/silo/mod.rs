//! Silos (`docs/silos.md`): the role this gateway plays in a distributed delivery.
//!
//! - **all** (the default): one gateway (or one fleet) does everything, as before.
//! - **root**: registration, subscribers and their personal data, entitlements, the registry of
//!   maintenance silos. It enrolls machines, gives each to a maintenance silo and issues it a
//!   *maintenance certificate*: the machine's own key, certified by the root's agent CA, carrying
//!   the entitlement (service, tier, the silo, where it is, the subscriber's opaque id, until
//!   when; [`protocols::entitlement`]). It publishes the serials it revoked, signed.
//! - **maintenance**: tunnels, telemetry, health, actions. It admits a client by its certificate
//!   alone (the chain to the root's agent CA, this silo's name, an accepted tier, the expiry, the
//!   root's last revocation list), so it never needs the root to be up. It keeps no personal data.
//!
//! A maintenance silo joins a root with a [`Bundle`] that the root writes (`tether silo add`) and
//! the silo imports (`tether silo join`): the root's agent CA, its API's TLS CA and its signing
//! key, all public.

pub mod actions;
pub mod aggregates;
pub mod maintenance;
pub mod moves;
pub mod signin;

pub use maintenance::{
    certify_silo_key, check_name, join, joined, write_bundle, Admitted, Bundle, Maintenance, Refusal, RevocationList,
    Role, SignedRevocations, Silo, MAX_REVOKED, REVOCATIONS_PATH,
};

use std::sync::Arc;
use std::time::Duration;

use protocols::entitlement::Entitlement;
use time::OffsetDateTime;

use tracing::{info, warn};
use uuid::Uuid;

/// The entitlement a machine of a subscriber with `entitlement` gets at silo `silo`: it ends with
/// the certificate (`lifetime` from `now`) or the subscriber's entitlement, whichever is first.
/// Refused when the subscriber's entitlement has ended.
pub fn grant(
    entitlement: crate::store::EntitlementRecord,
    silo: &crate::store::SiloRecord,
    lifetime: time::Duration,
    now: OffsetDateTime,
) -> Result<Entitlement, &'static str> {
    let mut until = now + lifetime;
    if let Some(end) = entitlement.valid_until {
        if end <= now {
            return Err("the subscriber's entitlement has ended");
        }
        until = until.min(end);
    }
    Ok(Entitlement {
        service: entitlement.service,
        tier: entitlement.tier,
        silo: silo.name.clone(),
        location: silo.location.clone(),
        subscriber: entitlement.opaque_id,
        not_after: until.unix_timestamp(),
    })
}

/// Runs `work` every `every` (the first at once), until shutdown.
async fn on_schedule<F, Fut>(shared: &crate::state::Shared, every: Duration, mut work: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut shutdown = shared.shutdown.clone();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        work().await;
    }
}

/// Every `every`, until shutdown: pulls the root's revocation list (closing the live sessions of
/// newly revoked certificates), then the moves out of this silo (a connected client of a new one
/// is handed over at once), reports the moves it took over that the root has not heard of, and
/// exchanges actions with the root (`actions`: results up, the root's signed actions down).
pub async fn pull_revocations(shared: Arc<crate::state::Shared>, maintenance: Arc<Maintenance>, every: Duration) {
    on_schedule(&shared, every, || async {
        match maintenance.pull().await {
            Ok(fresh) => {
                if !fresh.is_empty() {
                    info!(count = fresh.len(), "the root revoked certificates; closing their sessions");
                    close_revoked(&shared, &maintenance);
                }
            }
            Err(err) => {
                warn!(error = %format!("{err:#}"), "cannot pull the root's revocation list; keeping the last one")
            }
        }
        match moves::pull(&maintenance, &shared.store).await {
            Ok(fresh) => {
                for uuid in fresh {
                    info!(%uuid, "the root moves a client of this silo to another");
                    crate::support::nudge(&shared, uuid);
                }
            }
            Err(err) => warn!(error = %format!("{err:#}"), "cannot pull the root's moves; trying again later"),
        }
        if let Err(err) = moves::report(&maintenance, &shared.store, &shared.agent_keys).await {
            warn!(error = %format!("{err:#}"), "cannot report moves to the root; trying again later");
        }
        match actions::exchange(&maintenance, &shared.store, &shared.agent_keys).await {
            Ok(fresh) => {
                for uuid in fresh {
                    crate::support::nudge(&shared, uuid);
                }
            }
            Err(err) => warn!(error = %format!("{err:#}"), "cannot exchange actions with the root; trying again later"),
        }
    })
    .await
}

/// Sends the root this silo's aggregates every `every`, until shutdown.
pub async fn push_aggregates(shared: Arc<crate::state::Shared>, maintenance: Arc<Maintenance>, every: Duration) {
    on_schedule(&shared, every, || async {
        if let Err(err) = aggregates::push(&maintenance, &shared.store, &shared.agent_keys).await {
            warn!(error = %format!("{err:#}"), "cannot send the root this silo's aggregates; trying again later");
        }
    })
    .await
}

/// Closes every live agent session whose certificate is revoked.
fn close_revoked(shared: &crate::state::Shared, maintenance: &Maintenance) {
    let revoked: Vec<Uuid> = match maintenance.admitted.lock() {
        Ok(mut admitted) => {
            let uuids = admitted.iter().filter(|(_, serial)| maintenance.is_revoked(serial)).map(|(u, _)| *u).collect();
            admitted.retain(|_, serial| !maintenance.is_revoked(serial));
            uuids
        }
        Err(_) => Vec::new(),
    };
    for uuid in revoked {
        if let Some(handle) = shared.registry.get(uuid, crate::metrics::TunnelKind::Agent) {
            handle.close(crate::metrics::CloseReason::AuthFailed);
        }
    }
}
