//! The scenarios of `tether-loadtest`, run against a gateway that is already running: many AMT
//! devices held idle ([`idle`]), every tunnel dropping and redialling at once ([`storm`]), bulk
//! streams from technicians to device echo services ([`bulk`]), and the round trip of SOL-sized
//! messages while other devices sit idle ([`latency`]); and Tether agents over QUIC flushing
//! their spools and then held idle ([`agents`]).
//!
//! The devices are the [`crate::amt`] simulator's (real TLS and APF, keepalives at the interval
//! the gateway sets), held by worker processes ([`workers`]: one process may not hold more open
//! files than its hard limit, so a fleet of N is split into processes of at most
//! `--per-worker`), each device bound to one of many 127.0.0.0/8 source addresses
//! ([`source_addr`]), so that neither the ephemeral ports of one address nor the gateway's
//! per-source connection limit caps the fleet. The technician side is `tether forward` (one per
//! stream) and the byte movers of [`traffic`]. The gateway's memory and CPU come from /proc
//! ([`procfs`]) when its pid is given.
//!
//! What this does not do: start or configure the gateway (the caller does; see
//! `loadtest/bench.sh` for the recipe), or judge the figures: each scenario reports what it saw
//! and whether it reached its goal ([`Outcome`]).

pub mod agents;
pub mod bulk;
pub mod error;
pub mod idle;
pub mod latency;
pub mod procfs;
pub mod progress;
pub mod storm;
pub mod traffic;
pub mod workers;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

pub use error::ScenarioError;
pub use procfs::GatewayProbe;
pub use workers::{run_worker, FleetPlan, WorkerArgs, Workers};

/// Most source addresses (127.1.0.1 onwards, 254 per /24).
pub const MAX_SOURCES: u32 = 254 * 256 * 100;

/// The device side of every scenario: where the devices dial and as whom.
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// The gateway's CIRA listener.
    #[arg(long, value_name = "HOST:PORT")]
    pub gateway: String,
    /// The CA certificate the gateway's certificate chains to (DATA_DIR/tls/ca.pem).
    #[arg(long, value_name = "FILE")]
    pub ca: PathBuf,
    /// The name the gateway's certificate must match (default: the host of --gateway).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// The CIRA (MPS) username.
    #[arg(long, env = "AMT_SIM_USERNAME", value_name = "USER")]
    pub username: String,
    /// The CIRA (MPS) password.
    #[arg(long, env = "AMT_SIM_PASSWORD", hide_env_values = true, value_name = "PASS")]
    pub password: String,
    /// The first device's UUID; device i has it plus i in its last 4 bytes (default: random).
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<Uuid>,
    /// Source addresses the devices spread over (127.1.0.1, 127.1.0.2, …; device i uses
    /// number i mod K). Default: one per 500 devices (one per 250 for storm), the gateway's
    /// per-source connection burst.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..i64::from(MAX_SOURCES)))]
    pub sources: Option<u32>,
    /// Most devices per worker process (each device holds one open file).
    #[arg(long, default_value_t = 8000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=18_000))]
    pub per_worker: u32,
    /// Spread the devices' first dials evenly over this many seconds.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub ramp: f64,
}

/// What every scenario takes besides the devices.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The gateway's process id: its RSS and CPU time are read from /proc/PID.
    #[arg(long, value_name = "PID")]
    pub gateway_pid: Option<u32>,
    /// Print the report as one JSON object instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Bound on the whole run, in seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

/// The technician side of bulk and latency: `tether forward` on the gateway's machine.
#[derive(Debug, Clone, clap::Args)]
pub struct TechnicianArgs {
    /// The `tether` binary (default: `tether` next to this one).
    #[arg(long, value_name = "BIN")]
    pub tether: Option<PathBuf>,
    /// The gateway's data dir (`tether --data-dir DIR forward …` reads its API address and
    /// token there).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
}

impl DeviceArgs {
    /// The plan for `count` devices: UUID base chosen, sources defaulted to one per
    /// `per_source` devices. `exe` is the binary that has the hidden `worker` subcommand.
    pub fn plan(&self, exe: PathBuf, count: u32, per_source: u32) -> FleetPlan {
        FleetPlan {
            exe,
            device: self.clone(),
            uuid: self.uuid.unwrap_or_else(Uuid::new_v4),
            count,
            sources: self.sources.unwrap_or_else(|| count.div_ceil(per_source.max(1)).max(1)),
            expose: None,
            window: 4096,
            ramp: Duration::from_secs_f64(self.ramp.max(0.0)),
        }
    }
}

impl TechnicianArgs {
    /// The `tether` binary: `--tether`, else `tether` next to `exe`.
    pub fn tether_bin(&self, exe: &std::path::Path) -> PathBuf {
        self.tether.clone().unwrap_or_else(|| exe.with_file_name("tether"))
    }
}

/// The source address of device `index` when the fleet spreads over `sources` addresses:
/// 127.1.0.1 … 127.1.0.254, 127.1.1.1 …, so that none ends in .0 or .255.
pub fn source_addr(index: u32, sources: u32) -> IpAddr {
    let s = index % sources.clamp(1, MAX_SOURCES);
    let second = 1 + s / (254 * 256);
    let third = (s / 254) % 256;
    let fourth = 1 + s % 254;
    IpAddr::V4(Ipv4Addr::new(127, second as u8, third as u8, fourth as u8))
}

/// Whether a scenario reached its goal, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", content = "reason", rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Incomplete(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// Percentiles of round trips, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    /// Of `samples` (sorted in place); nearest-rank on the sorted samples.
    pub fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let at = |p: f64| {
            let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
            samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        Self {
            samples: samples.len(),
            p50_us: at(0.5),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: samples.last().map_or(0.0, |d| d.as_secs_f64() * 1e6),
        }
    }
}

/// Local address of a TCP listener bound to 127.0.0.1 by the OS.
pub(crate) fn loopback_any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_skip_network_and_broadcast_octets() {
        assert_eq!(source_addr(0, 38).to_string(), "127.1.0.1");
        assert_eq!(source_addr(37, 38).to_string(), "127.1.0.38");
        assert_eq!(source_addr(38, 38).to_string(), "127.1.0.1", "device 38 shares the first source");
        assert_eq!(source_addr(253, 1000).to_string(), "127.1.0.254");
        assert_eq!(source_addr(254, 1000).to_string(), "127.1.1.1");
        assert_eq!(source_addr(254 * 256, MAX_SOURCES).to_string(), "127.2.0.1");
        assert_eq!(source_addr(5, 0).to_string(), "127.1.0.1", "at least one source");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=1000).rev().map(Duration::from_micros).collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!(p.samples, 1000);
        let rounded = [p.p50_us, p.p99_us, p.p999_us, p.max_us].map(f64::round);
        assert_eq!(rounded, [501.0, 990.0, 999.0, 1000.0]);
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
    }
}
