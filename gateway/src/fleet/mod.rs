//! Several gateways sharing one PostgreSQL store: each one's identity in the fleet (its instance
//! id), its heartbeat, and the reaper that marks the tunnels of a dead gateway disconnected.
//!
//! Each gateway writes its heartbeat every `fleet.heartbeat_interval_secs`. Any gateway marks the
//! devices held by an instance whose heartbeat is older than `fleet.stale_after_secs` as
//! disconnected, so a gateway killed with `kill -9` never leaves its devices listed as connected
//! for longer than that bound (plus one heartbeat interval). A gateway that starts marks only its
//! own stale tunnels (from its previous run) as disconnected.
//!
//! What it does not do: carry requests between gateways (`fleet::peers` asks, `fleet::link`
//! answers), or keep the keys the gateways share (`fleet::keys`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::state::Shared;

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

/// Heartbeats and reaps dead instances' tunnels until shutdown; records a clean stop.
pub async fn heartbeat(shared: Arc<Shared>) {
    let fleet = &shared.config.fleet;
    let interval = Duration::from_secs(fleet.heartbeat_interval_secs.max(1));
    let stale_after = time::Duration::seconds(fleet.stale_after_secs as i64);
    let mut shutdown = shared.shutdown.clone();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = async { let _ = shutdown.wait_for(|stopping| *stopping).await; } => break,
        }
        let now = OffsetDateTime::now_utc();
        let result = async {
            shared.store.heartbeat(&shared.instance, now).await?;
            shared.store.reap_stale_instances(&shared.instance, now - stale_after, now).await
        }
        .await;
        match result {
            Ok(0) => failing = false,
            Ok(reaped) => {
                failing = false;
                info!(devices = reaped, "marked devices of a gateway that stopped answering as disconnected");
            }
            Err(err) if !failing => {
                failing = true;
                warn!(error = %err, "cannot write this gateway's heartbeat to the store; retrying");
            }
            Err(_) => {}
        }
    }
    if let Err(err) = shared.store.instance_stopped(&shared.instance, OffsetDateTime::now_utc()).await {
        warn!(error = %err, "cannot record this gateway's stop in the store");
    }
}
