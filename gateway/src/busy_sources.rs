//! The gateway's memory of busy source addresses across a restart: every minute and at shutdown
//! it records, from the registry, how many CIRA tunnels each source holds (those with at least
//! [`MIN_TUNNELS`]); at start it reads what every gateway of the store recorded in the last day
//! and lets each source bring that many back at once, beyond its burst, for [`WINDOW`]
//! (`limits::Limiter::remember`). So 10,000 PCs behind one NAT come back together after a
//! restart, while a source the gateway never saw keeps the small default burst.
//!
//! What a source held is proven: only authenticated tunnels are in the registry.

use std::collections::HashMap;
use std::time::Duration;

use time::OffsetDateTime;
use tracing::{info, warn};

use crate::limits::Source;
use crate::metrics::TunnelKind;
use crate::state::Shared;
use crate::store::SourceTunnels;

/// How long after a start the remembered sources may exceed their burst.
pub const WINDOW: Duration = Duration::from_secs(600);

/// Sources holding fewer tunnels than this are not recorded: the default burst covers them.
pub const MIN_TUNNELS: u64 = 8;

/// Records older than this are not read (a gateway of the fleet that has gone).
const MAX_AGE: time::Duration = time::Duration::days(1);

/// The sources holding at least [`MIN_TUNNELS`] CIRA tunnels now, the busiest first, at most
/// `limits.max_tracked_sources` of them. Soon after a start, what a remembered source has not
/// brought back yet counts too: a gateway restarted again in the middle of a storm does not
/// forget the devices still on their way.
fn busy_now(shared: &Shared) -> Vec<SourceTunnels> {
    let mut held: HashMap<Source, u64> = HashMap::new();
    for (source, left) in shared.limiter.remembered_left() {
        *held.entry(source).or_default() += u64::from(left);
    }
    for tunnel in shared.registry.snapshot() {
        if tunnel.kind == TunnelKind::Cira {
            *held.entry(Source::from(tunnel.remote.ip())).or_default() += 1;
        }
    }
    let mut busy: Vec<SourceTunnels> = held
        .into_iter()
        .filter(|(_, tunnels)| *tunnels >= MIN_TUNNELS)
        .map(|(source, tunnels)| SourceTunnels { source: source.to_string(), tunnels })
        .collect();
    busy.sort_unstable_by(|a, b| b.tunnels.cmp(&a.tunnels).then_with(|| a.source.cmp(&b.source)));
    busy.truncate(shared.config.limits.max_tracked_sources);
    busy
}

/// Replaces this gateway's record of its busy sources with what it holds now.
pub async fn save(shared: &Shared) {
    let busy = busy_now(shared);
    if let Err(err) = shared.store.save_source_tunnels(&shared.instance, OffsetDateTime::now_utc(), &busy).await {
        warn!(error = %err, "cannot record the busy source addresses (after a restart, they get only the default burst)");
    }
}

/// Grants the sources recorded in the last day what they held (see the module doc).
pub async fn remember(shared: &Shared) {
    let since = OffsetDateTime::now_utc() - MAX_AGE;
    let limit = u32::try_from(shared.config.limits.max_tracked_sources).unwrap_or(u32::MAX);
    let recorded = match shared.store.source_tunnels(since, limit).await {
        Ok(recorded) => recorded,
        Err(err) => {
            warn!(error = %err, "cannot read the busy source addresses of the last run: every source gets the default burst");
            return;
        }
    };
    let held = recorded.iter().filter_map(|r| {
        let source = r.source.parse::<Source>().ok()?;
        Some((source, u32::try_from(r.tunnels).unwrap_or(u32::MAX)))
    });
    let (sources, tunnels) = shared.limiter.remember(held, WINDOW);
    if sources > 0 {
        info!(
            sources,
            tunnels,
            window_secs = WINDOW.as_secs(),
            "sources that held many tunnels before may bring them back at once, beyond their burst"
        );
    }
}
