//! Several gateways sharing one PostgreSQL store: each one's identity in the fleet (its instance
//! id), its heartbeat, and the reaper that marks the tunnels of a dead gateway disconnected.
//!
//! Each gateway writes its heartbeat every `fleet.heartbeat_interval_secs` (stamped by the
//! database's clock). Any gateway marks the devices held by an instance whose heartbeat is older
//! than `fleet.stale_after_secs` as disconnected, so a gateway killed with `kill -9` never leaves its devices listed as connected
//! for longer than that bound (plus one heartbeat interval). A gateway that starts marks only its
//! own stale tunnels (from its previous run) as disconnected.
//!
//! What it does not do: carry requests between gateways (`fleet::peers` asks, `fleet::link`
//! answers), or keep the keys the gateways share (`fleet::keys`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tracing::{error, info, warn};

use crate::metrics::{InstanceState, StoreTask};
use crate::state::Shared;
use crate::store::InstanceRegistration;

pub mod keys;
pub mod link;
pub mod peers;

pub use crate::config::valid_instance_id;

/// The instance id: the configured one, else `DATA_DIR/instance-id`, made at first start as
/// `gw-` and 8 random hex digits (so that a restarted gateway knows its own stale tunnels).
pub fn instance_id(data_dir: &Path, configured: Option<&str>) -> Result<String> {
    if let Some(id) = configured {
        return Ok(id.to_string());
    }
    let path = data_dir.join("instance-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim().to_string();
            anyhow::ensure!(
                valid_instance_id(&id),
                "{} holds {id:?}, which is not an instance id; delete the file to get a new one",
                path.display()
            );
            Ok(id)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("gw-{:08x}", rand::random::<u32>());
            std::fs::write(&path, format!("{id}\n")).with_context(|| format!("writing {}", path.display()))?;
            Ok(id)
        }
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// Counts the fleet's gateways by state into `tether_fleet_instances` (each heartbeat).
async fn count_instances(shared: &Shared, stale_after: Duration) -> Result<(), crate::store::StoreError> {
    let mut counts = Vec::new();
    for instance in shared.store.instances().await? {
        let state = if instance.stopped_at.is_some() {
            InstanceState::Stopped
        } else if instance.is_alive(stale_after) {
            InstanceState::Live
        } else {
            InstanceState::Missing
        };
        counts.push((state, 1));
    }
    shared.metrics.fleet_instances(&counts);
    Ok(())
}

/// Heartbeats and reaps dead instances' tunnels until shutdown; records a clean stop.
///
/// After a gap in its own heartbeats as long as `fleet.stale_after_secs` (the database was away,
/// or this machine paused), other gateways may have marked this one's devices disconnected: every
/// live tunnel is then written again from the registry.
pub async fn heartbeat(shared: Arc<Shared>, me: InstanceRegistration) {
    let fleet = &shared.config.fleet;
    let interval = Duration::from_secs(fleet.heartbeat_interval_secs.max(1));
    let stale_after = Duration::from_secs(fleet.stale_after_secs);
    let mut shutdown = shared.shutdown.clone();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut last_beat = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = async { let _ = shutdown.wait_for(|stopping| *stopping).await; } => break,
        }
        let result = async {
            if !shared.store.heartbeat(&me.id, &me.run_id).await? {
                // Removed from the fleet while running, or another run took the id.
                warn!(instance = %me.id, "this gateway's instance record was gone or taken; registering again");
                if let Err(err) = shared.store.register_instance(&me, stale_after).await {
                    error!(error = %err, "cannot register this gateway again");
                    return Ok(None);
                }
            }
            let reaped = shared.store.reap_stale_instances(&me.id, stale_after).await?;
            // Sessions relayed by a gateway that stopped answering are over too.
            let ended = shared.store.end_stale_instance_redirections(&me.id, stale_after).await?;
            if ended > 0 {
                info!(sessions = ended, "ended the redirection sessions of a gateway that stopped answering");
            }
            count_instances(&shared, stale_after).await?;
            Ok(Some(reaped))
        }
        .await;
        match result {
            Ok(reaped) => {
                failing = false;
                if last_beat.elapsed() >= stale_after {
                    let live: Vec<_> = shared.registry.snapshot().into_iter().map(|t| t.uuid).collect();
                    warn!(tunnels = live.len(), gap_secs = last_beat.elapsed().as_secs(),
                        "this gateway's heartbeat was away longer than fleet.stale_after_secs; rewriting its tunnels' records");
                    shared.journal.resync(live);
                }
                last_beat = Instant::now();
                if let Some(reaped @ 1..) = reaped {
                    info!(devices = reaped, "marked devices of a gateway that stopped answering as disconnected");
                }
            }
            Err::<_, crate::store::StoreError>(err) if !failing => {
                failing = true;
                shared.metrics.store_error(StoreTask::Heartbeat);
                warn!(error = %err, "cannot write this gateway's heartbeat to the store; retrying");
            }
            Err(_) => shared.metrics.store_error(StoreTask::Heartbeat),
        }
    }
    if let Err(err) = shared.store.instance_stopped(&me.id, &me.run_id).await {
        warn!(error = %err, "cannot record this gateway's stop in the store");
    }
}
