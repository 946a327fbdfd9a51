//! A fleet: N simulated devices with distinct UUIDs in one process, one task each on a shared
//! tokio runtime, with shared counters and a progress display.
//!
//! Device `i` gets the base UUID with `i` added to its last 4 bytes (big-endian, wrapping), so
//! device 0 is the base UUID itself and runs with the same base are reproducible. Devices start
//! at once, or spread evenly over [`FleetConfig::ramp`]. When every device has been established
//! once, the fleet logs `all N devices established in X.XXs` (measured from the start).
//!
//! With several gateway addresses, device `i` starts at address `i mod n` (after the base
//! config's [`DeviceConfig::first_gateway`]), so that the fleet spreads over them, and the
//! progress shows how many tunnels are established through each address.
//!
//! In a fleet of more than one, each device logs at `debug`; the fleet's summaries are the `info`
//! lines: a progress bar when one is given (stderr is a terminal), periodic lines otherwise.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinSet;
use tracing::Instrument;
use uuid::Uuid;

use super::config::DeviceConfig;
use super::device::{run_device_with_stats, DeviceReport};
use super::error::FleetError;
use super::shutdown::{shutdown_pair, Shutdown};
use super::stats::{Stats, StatsSnapshot};

/// How a fleet shows its progress.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A bar (established / total) with the counters, e.g. from [`progress_bar`].
    Bar(ProgressBar),
    /// A log line at this interval, when something changed.
    Log { every: Duration },
    /// Only the "all established" line.
    Quiet,
}

/// A bar for [`Progress::Bar`] on stderr (drawn only when stderr is a terminal): established /
/// total, then the counters, cut to the terminal's width.
///
/// Log lines written to stderr while it is drawn must go through [`ProgressBar::suspend`] (the
/// `amt-sim` binary's log writer does), or they tear the bar.
pub fn progress_bar(count: u32) -> ProgressBar {
    let bar = ProgressBar::new(u64::from(count));
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len} established; {wide_msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A fleet's settings.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub count: u32,
    /// Every device's settings; its UUID is the base of the fleet's UUIDs.
    pub device: DeviceConfig,
    /// Device `i` starts after `ramp · i / count`.
    pub ramp: Duration,
    pub progress: Progress,
    /// Stop (successfully) once every device has been established.
    pub exit_after_established: bool,
    /// Give each device a TLS session store of its own ([`with_own_sessions`](super::with_own_sessions)),
    /// so that its redials resume its earlier sessions when the gateway allows.
    pub resume_sessions: bool,
    /// How long devices get to disconnect cleanly when the fleet stops.
    pub drain_timeout: Duration,
}

impl FleetConfig {
    pub fn new(device: DeviceConfig, count: u32) -> Self {
        Self {
            count,
            device,
            ramp: Duration::ZERO,
            progress: Progress::Log { every: Duration::from_secs(5) },
            exit_after_established: false,
            resume_sessions: false,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// What a fleet did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetReport {
    pub count: u32,
    /// From the start until every device had been established once.
    pub all_established_after: Option<Duration>,
    pub stats: StatsSnapshot,
}

/// The UUID of device `index` of a fleet whose base UUID is `base`.
pub fn device_uuid(base: Uuid, index: u32) -> Uuid {
    let mut bytes = *base.as_bytes();
    let mut last = [0u8; 4];
    last.copy_from_slice(&bytes[12..]);
    let last = u32::from_be_bytes(last).wrapping_add(index);
    bytes[12..].copy_from_slice(&last.to_be_bytes());
    Uuid::from_bytes(bytes)
}

/// Runs `config.count` devices until `shutdown` fires, until all are established (with
/// [`FleetConfig::exit_after_established`]), or until a device stops with an error (the
/// gateway refused its credentials and [`DeviceConfig::stop_on_auth_failure`] is set).
pub async fn run_fleet(config: FleetConfig, mut shutdown: Shutdown) -> Result<FleetReport, FleetError> {
    let count = config.count;
    if count == 0 {
        return Err(FleetError::Empty);
    }
    let stats = Arc::new(Stats::default());
    let (stop_devices, devices_shutdown) = shutdown_pair();
    let start = Instant::now();
    let level = if count > 1 { tracing::Level::DEBUG } else { config.device.log_level };
    let base = config.device.uuid;
    let gateways: Vec<String> = config.device.gateways.iter().map(|g| g.addr.clone()).collect();
    let mut tasks = JoinSet::new();
    for index in 0..count {
        let mut device = config.device.clone();
        device.uuid = device_uuid(base, index);
        if config.resume_sessions {
            device.tls = super::with_own_sessions(&device.tls);
        }
        device.log_level = level;
        device.first_gateway = first_gateway(config.device.first_gateway, index, gateways.len());
        let delay = config.ramp.mul_f64(f64::from(index) / f64::from(count));
        let stats = stats.clone();
        let mut device_shutdown = devices_shutdown.clone();
        let span = tracing::info_span!("device", uuid = %device.uuid);
        tasks.spawn(
            async move {
                if !delay.is_zero() {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = device_shutdown.wait() => return Ok(DeviceReport::default()),
                    }
                }
                run_device_with_stats(device, stats, device_shutdown).await
            }
            .instrument(span),
        );
    }
    if count > 1 {
        tracing::info!(
            "started {count} devices (UUIDs {} … {}) against {}{}",
            device_uuid(base, 0),
            device_uuid(base, count - 1),
            if gateways.len() > 1 {
                format!("{} (device i starts at address i mod {})", gateways.join(", "), gateways.len())
            } else {
                gateways.join(", ")
            },
            if config.ramp.is_zero() { String::new() } else { format!(", ramp {:.1}s", config.ramp.as_secs_f64()) }
        );
    }

    let mut display = Display::new(config.progress, count, gateways);
    let mut all_established_after = None;
    let mut error = None;
    let mut reported_auth_failures = 0;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + display.tick(), display.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut ticked = false;
        tokio::select! {
            () = shutdown.wait() => break,
            () = stats.changed() => {}
            _ = tick.tick() => ticked = true,
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Ok(_))) => {}
                Some(Ok(Err(err))) => {
                    error = Some(FleetError::Device(err));
                    break;
                }
                Some(Err(err)) => {
                    error = Some(FleetError::Task(err.to_string()));
                    break;
                }
            },
        }
        let snapshot = stats.snapshot();
        display.update(&snapshot, &stats.established_per_gateway(), ticked);
        if ticked && snapshot.auth_failures > reported_auth_failures && count > 1 {
            tracing::warn!(
                "{} authentication failures so far: the gateway refuses the devices' credentials \
                 (check --username and --password)",
                snapshot.auth_failures
            );
            reported_auth_failures = snapshot.auth_failures;
        }
        if all_established_after.is_none() && snapshot.ever_established >= u64::from(count) {
            let elapsed = start.elapsed();
            all_established_after = Some(elapsed);
            display.println(&format!("all {count} devices established in {:.2}s", elapsed.as_secs_f64()));
            if config.exit_after_established {
                break;
            }
        }
    }

    stop_devices.trigger();
    let drain = async {
        while let Some(joined) = tasks.join_next().await {
            if let Ok(Err(err)) = joined {
                error.get_or_insert(FleetError::Device(err));
            }
        }
    };
    if tokio::time::timeout(config.drain_timeout, drain).await.is_err() {
        tracing::warn!("{} devices did not stop within {:?}; aborting them", tasks.len(), config.drain_timeout);
        tasks.abort_all();
    }
    let snapshot = stats.snapshot();
    display.finish(&snapshot);
    match error {
        Some(err) => Err(err),
        None => Ok(FleetReport { count, all_established_after, stats: snapshot }),
    }
}

/// The index of the gateway address device `index` of a fleet dials first, when the fleet's
/// config says `base` and there are `gateways` addresses.
fn first_gateway(base: usize, index: u32, gateways: usize) -> usize {
    let index = usize::try_from(index).unwrap_or(usize::MAX);
    base.wrapping_add(index) % gateways.max(1)
}

/// The progress bar or the periodic log lines.
struct Display {
    progress: Progress,
    count: u32,
    /// The gateway addresses, for the per-address counts (shown when there are several).
    gateways: Vec<String>,
    last_logged: Option<(StatsSnapshot, Vec<u64>)>,
}

impl Display {
    fn new(progress: Progress, count: u32, gateways: Vec<String>) -> Self {
        if let Progress::Bar(bar) = &progress {
            bar.set_length(u64::from(count));
        }
        Self { progress, count, gateways, last_logged: None }
    }

    /// `via A 3, B 2; ` (tunnels established through each address), empty with one address.
    fn per_gateway(&self, established: &[u64]) -> String {
        if self.gateways.len() < 2 {
            return String::new();
        }
        let counts: Vec<String> = self
            .gateways
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("{addr} {}", established.get(i).copied().unwrap_or(0)))
            .collect();
        format!("via {}; ", counts.join(", "))
    }

    fn tick(&self) -> Duration {
        match &self.progress {
            Progress::Bar(_) => Duration::from_millis(250),
            Progress::Log { every } => (*every).max(Duration::from_millis(100)),
            Progress::Quiet => Duration::from_secs(1),
        }
    }

    fn update(&mut self, snapshot: &StatsSnapshot, per_gateway: &[u64], ticked: bool) {
        let changed = || self.last_logged.as_ref().is_none_or(|(s, p)| s != snapshot || p != per_gateway);
        match &self.progress {
            Progress::Bar(bar) => {
                bar.set_position(snapshot.established);
                bar.set_message(format!("{}{snapshot}", self.per_gateway(per_gateway)));
            }
            Progress::Log { .. } if ticked && self.count > 1 && changed() => {
                tracing::info!(
                    "established {}/{}; {}{snapshot}",
                    snapshot.established,
                    self.count,
                    self.per_gateway(per_gateway)
                );
                self.last_logged = Some((*snapshot, per_gateway.to_vec()));
            }
            Progress::Log { .. } | Progress::Quiet => {}
        }
    }

    /// An `info` line. With a bar, the log writer is expected to suspend it (see
    /// [`progress_bar`]); suspending here as well would deadlock.
    fn println(&self, line: &str) {
        tracing::info!("{line}");
    }

    fn finish(&self, snapshot: &StatsSnapshot) {
        if let Progress::Bar(bar) = &self.progress {
            // Leave the last picture (the devices have disconnected by now).
            bar.abandon();
        }
        if self.count > 1 {
            tracing::info!("stopped {} devices; {snapshot}", self.count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_uuids_are_the_base_plus_the_index() {
        let base: Uuid = "12345678-9abc-def0-1234-56789abc0000".parse().unwrap();
        assert_eq!(device_uuid(base, 0), base);
        assert_eq!(device_uuid(base, 1).to_string(), "12345678-9abc-def0-1234-56789abc0001");
        assert_eq!(device_uuid(base, 0x1_0000).to_string(), "12345678-9abc-def0-1234-56789abd0000");
        let top: Uuid = "12345678-9abc-def0-1234-5678ffffffff".parse().unwrap();
        assert_eq!(device_uuid(top, 1).to_string(), "12345678-9abc-def0-1234-567800000000");
    }

    #[test]
    fn devices_start_at_their_index_mod_the_addresses() {
        let firsts: Vec<usize> = (0..5).map(|i| first_gateway(0, i, 2)).collect();
        assert_eq!(firsts, [0, 1, 0, 1, 0]);
        let firsts: Vec<usize> = (0..4).map(|i| first_gateway(2, i, 3)).collect();
        assert_eq!(firsts, [2, 0, 1, 2]);
        assert_eq!(first_gateway(0, 7, 1), 0);
    }

    #[test]
    fn per_gateway_counts_show_with_several_addresses() {
        let one = Display::new(Progress::Quiet, 3, vec!["a:1".into()]);
        assert_eq!(one.per_gateway(&[3]), "");
        let two = Display::new(Progress::Quiet, 3, vec!["a:1".into(), "b:2".into()]);
        assert_eq!(two.per_gateway(&[2, 1]), "via a:1 2, b:2 1; ");
        assert_eq!(two.per_gateway(&[2]), "via a:1 2, b:2 0; ");
    }
}
