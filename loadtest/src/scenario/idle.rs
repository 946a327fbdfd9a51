//! `idle`: N devices dial (real TLS and APF), are held established for a while with nothing but
//! keepalives, and disconnect. What it costs the gateway: how fast it admits them (handshakes
//! per second), its memory per tunnel above its baseline, the kernel's slab, and its CPU time
//! while admitting and while holding.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::procfs::{slab_kib, ProcSample};
use super::progress::Progress;
use super::workers::{describe, WorkerLine};
use super::{FleetPlan, GatewayProbe, Outcome, ScenarioError, Workers};

#[derive(Debug, Clone)]
pub struct IdleConfig {
    pub plan: FleetPlan,
    /// How long the established fleet is held.
    pub hold: Duration,
    /// Bound on the whole run.
    pub timeout: Duration,
    pub gateway: Option<GatewayProbe>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub scenario: &'static str,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub count: u32,
    pub workers: usize,
    pub sources: u32,
    pub hold_seconds: f64,
    /// Established at the end of the hold.
    pub admitted: u64,
    /// From the first dial until every device had been established once.
    pub all_admitted_after_seconds: Option<f64>,
    /// Established tunnels, one sample per second from the first dial.
    pub admitted_per_second: Vec<u64>,
    /// TLS handshakes per second until all were admitted: mean, and the busiest second.
    pub handshakes_per_second_mean: f64,
    pub handshakes_per_second_peak: u64,
    pub failures: Failures,
    pub gateway: Option<GatewayFigures>,
    /// Kernel slab (/proc/meminfo) before the first dial and at the end of the hold, KiB.
    pub slab_kib_before: Option<u64>,
    pub slab_kib_hold: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Failures {
    /// TCP connects or TLS handshakes that failed.
    pub connect: u64,
    /// Times the gateway refused the credentials.
    pub auth: u64,
    /// Dials after a device's first.
    pub reconnects: u64,
}

impl From<&WorkerLine> for Failures {
    fn from(t: &WorkerLine) -> Self {
        Self { connect: t.connect_failures, auth: t.auth_failures, reconnects: t.reconnects }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct GatewayFigures {
    pub rss_baseline_kib: u64,
    pub rss_hold_kib: u64,
    /// (RSS at hold − baseline) ÷ tunnels established at hold.
    pub rss_per_tunnel_kib: f64,
    /// CPU time from the first dial until all were admitted.
    pub cpu_ramp_seconds: f64,
    /// CPU time during the hold.
    pub cpu_hold_seconds: f64,
}

/// Runs the scenario; an error only when it could not run (a worker died, the gateway's
/// process vanished), else a report saying whether every device was admitted.
pub async fn run(config: IdleConfig, progress: &mut Progress) -> Result<IdleReport, ScenarioError> {
    let count = config.plan.count;
    let baseline = sample(config.gateway.as_ref())?;
    let slab_kib_before = slab_kib();
    let started = Instant::now();
    let deadline = started + config.timeout;
    let mut workers = Workers::spawn(&config.plan)?;
    let mut seconds = PerSecond::default();
    let ramp = workers.establish(started, deadline, progress, |t| seconds.push(t)).await?;
    let ramp_phase = started.elapsed();
    let at_ramp = workers.total();
    let ramp_sample = sample(config.gateway.as_ref())?;
    let mut outcome = Outcome::Ok;
    let mut held = Duration::ZERO;
    match ramp {
        Some(after) => {
            progress.println(&format!("all {count} devices established in {:.2}s; holding", after.as_secs_f64()));
            let hold_from = Instant::now();
            let hold_until = (hold_from + config.hold).min(deadline);
            let mut next_second = started + Duration::from_secs(seconds.admitted.len() as u64 + 1);
            while Instant::now() < hold_until {
                workers.update(next_second.min(hold_until)).await?;
                let total = workers.total();
                while Instant::now() >= next_second {
                    seconds.push(&total);
                    next_second += Duration::from_secs(1);
                }
                progress.set("holding", total.established, u64::from(count), || describe(&total));
            }
            held = hold_from.elapsed();
            if held + Duration::from_millis(100) < config.hold {
                outcome = Outcome::Incomplete(format!("the timeout cut the hold to {:.1}s", held.as_secs_f64()));
            }
        }
        None => {
            outcome = Outcome::Incomplete(format!(
                "{} of {count} devices established within the timeout",
                at_ramp.ever_established
            ))
        }
    }
    let at_hold = workers.total();
    let hold_sample = sample(config.gateway.as_ref())?;
    let slab_kib_hold = slab_kib();
    if outcome.is_ok() && at_hold.established < u64::from(count) {
        outcome = Outcome::Incomplete(format!("{} of {count} established at the end of the hold", at_hold.established));
    }
    let report_workers = workers.len();
    progress.set("stopping", at_hold.established, u64::from(count), || describe(&at_hold));
    workers.stop().await;
    progress.finish();

    let ramp_seconds = ramp.map(|d| d.as_secs_f64());
    let gateway = match (baseline, ramp_sample, hold_sample) {
        (Some(b), Some(r), Some(h)) => Some(GatewayFigures {
            rss_baseline_kib: b.rss_kib,
            rss_hold_kib: h.rss_kib,
            rss_per_tunnel_kib: h.rss_kib.saturating_sub(b.rss_kib) as f64 / at_hold.established.max(1) as f64,
            cpu_ramp_seconds: r.cpu_seconds - b.cpu_seconds,
            cpu_hold_seconds: h.cpu_seconds - r.cpu_seconds,
        }),
        _ => None,
    };
    Ok(IdleReport {
        scenario: "idle",
        outcome,
        count,
        workers: report_workers,
        sources: config.plan.sources,
        hold_seconds: held.as_secs_f64(),
        admitted: at_hold.established,
        all_admitted_after_seconds: ramp_seconds,
        // Over the admission phase (all of it when not every device got in).
        handshakes_per_second_mean: at_ramp.connections as f64 / ramp_phase.as_secs_f64().max(1e-3),
        handshakes_per_second_peak: seconds.handshakes.iter().copied().max().unwrap_or(0),
        admitted_per_second: seconds.admitted,
        failures: Failures::from(&at_hold),
        gateway,
        slab_kib_before,
        slab_kib_hold,
    })
}

/// The one-second samples.
#[derive(Debug, Default)]
struct PerSecond {
    admitted: Vec<u64>,
    handshakes: Vec<u64>,
    last_handshakes: u64,
}

impl PerSecond {
    fn push(&mut self, t: &WorkerLine) {
        self.admitted.push(t.established);
        self.handshakes.push(t.connections.saturating_sub(self.last_handshakes));
        self.last_handshakes = t.connections;
    }
}

/// The gateway's figures now, if it is watched; an error once its process is gone.
pub(crate) fn sample(probe: Option<&GatewayProbe>) -> Result<Option<ProcSample>, ScenarioError> {
    match probe {
        None => Ok(None),
        Some(probe) => probe
            .sample()
            .map(Some)
            .ok_or_else(|| ScenarioError::Gateway { pid: probe.pid, detail: "it exited during the run".into() }),
    }
}

impl fmt::Display for IdleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "idle: {} devices from {} sources in {} workers, held {:.1}s",
            self.count, self.sources, self.workers, self.hold_seconds
        )?;
        match self.all_admitted_after_seconds {
            Some(s) => {
                writeln!(f, "  all established after {s:.2}s; {} established at the end of the hold", self.admitted)?
            }
            None => writeln!(f, "  NOT all established; {} at the end", self.admitted)?,
        }
        writeln!(
            f,
            "  handshakes/s: mean {:.0}, peak {}; failures: connect {}, auth {}, reconnects {}",
            self.handshakes_per_second_mean,
            self.handshakes_per_second_peak,
            self.failures.connect,
            self.failures.auth,
            self.failures.reconnects
        )?;
        if let Some(g) = &self.gateway {
            writeln!(
                f,
                "  gateway RSS {} KiB -> {} KiB: {:.1} KiB per tunnel; CPU {:.2}s admitting, {:.2}s holding",
                g.rss_baseline_kib, g.rss_hold_kib, g.rss_per_tunnel_kib, g.cpu_ramp_seconds, g.cpu_hold_seconds
            )?;
        }
        if let (Some(a), Some(b)) = (self.slab_kib_before, self.slab_kib_hold) {
            writeln!(f, "  kernel slab {a} KiB -> {b} KiB ({:+} KiB)", b as i64 - a as i64)?;
        }
        match &self.outcome {
            Outcome::Ok => write!(f, "  ok"),
            Outcome::Incomplete(why) => write!(f, "  INCOMPLETE: {why}"),
        }
    }
}
