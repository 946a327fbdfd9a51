//! `agents`: N Tether agents (the `tether-agent` library itself, with a synthetic collector)
//! enroll over QUIC, each with K reports waiting in its spool, as after an outage; they connect
//! at once and flush, and the gateway stores each report before acknowledging it. Then the N
//! sessions are held idle. Measured: durable reports per second (acknowledged, so committed to
//! the gateway's store) from the first dial until every spool is empty, and what holding N idle
//! agent sessions costs the gateway (RSS per session, CPU).
//!
//! Each agent keeps its state (key, certificate, spool) in `DIR/agent-NNNNN`, so a second run
//! with the same `--dir` skips enrollment; new agents need one enrollment token each
//! (`tether machine enroll SUBSCRIBER --count N > tokens.txt`). The agents spread over
//! `--sources` loopback addresses, as the AMT scenarios' devices do, so that the gateway's
//! per-source connection rate is not what is measured.
//!
//! What it does not do: start or configure the gateway (`loadtest/bench.sh agents` does), or
//! take its figures from a separate machine: the agents' own disk writes (a spool file per
//! report, removed on its ack) share this machine with the gateway.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::conn::{self, Agent};
use agent::state::StateDir;
use protocols::telemetry::{Antivirus, Backup, Disk, Firewall, FirewallBackend, Reading, Report, Scan, Updates};
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::idle::sample;
use super::progress::Progress;
use super::{source_addr, GatewayProbe, Outcome, ScenarioError};

/// Enrollments in flight at once.
const ENROLL_CONCURRENCY: usize = 32;
/// Agents per source address by default (each dials twice: enrollment, then its session).
pub const AGENTS_PER_SOURCE: u32 = 200;

#[derive(Debug, Clone)]
pub struct AgentsConfig {
    /// The gateway's agent listener, HOST:PORT (UDP).
    pub gateway: String,
    /// The CA the gateway's certificate chains to.
    pub ca: PathBuf,
    /// Where the agents keep their state (`DIR/agent-NNNNN`).
    pub dir: PathBuf,
    /// Enrollment tokens for the agents not enrolled yet.
    pub tokens: Vec<String>,
    pub count: u32,
    /// Reports spooled per agent before it connects.
    pub reports: u32,
    pub hold: Duration,
    pub sources: u32,
    pub timeout: Duration,
    pub gateway_probe: Option<GatewayProbe>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentsReport {
    pub scenario: &'static str,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub count: u32,
    pub sources: u32,
    /// Agents enrolled by this run (the others were enrolled by an earlier run).
    pub enrolled: u32,
    pub enroll_seconds: f64,
    /// Reports waiting in the spools when the agents started.
    pub spooled: u64,
    /// Reports the gateway acknowledged (committed) until every spool was empty.
    pub acknowledged: u64,
    /// From the first dial until every agent had connected once.
    pub all_connected_after_seconds: Option<f64>,
    /// From the first dial until every spool was empty.
    pub flushed_after_seconds: Option<f64>,
    /// `acknowledged ÷ flushed_after_seconds`.
    pub durable_reports_per_second: f64,
    /// The busiest second's acknowledgements.
    pub durable_reports_peak_second: u64,
    pub hold_seconds: f64,
    /// Sessions up at the end of the hold.
    pub connected: u64,
    /// Signed messages the agents verified and kept during the run (a broadcast's reach).
    pub messages_received: u64,
    pub gateway: Option<GatewayFigures>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct GatewayFigures {
    pub rss_baseline_kib: u64,
    pub rss_hold_kib: u64,
    /// (RSS at hold − baseline) ÷ sessions up at hold.
    pub rss_per_session_kib: f64,
    /// CPU time while the spools flushed.
    pub cpu_flush_seconds: f64,
    /// CPU time during the hold, as a share of one core.
    pub cpu_hold_share: f64,
}

/// A synthetic PC's support parameters: every value known and healthy, `now` the time taken.
pub fn synthetic_report(index: u32) -> Report {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Report {
        firewall: Reading::Value(Firewall {
            backend: FirewallBackend::Nftables,
            active: true,
            rules: 12,
            default_deny: true,
        }),
        antivirus: Reading::Value(Antivirus {
            product: "ClamAV".into(),
            running: true,
            updater_running: true,
            signatures_at: Some(now - 3600),
        }),
        last_full_scan: Reading::Value(Scan { finished_at: now - 86_400, threats_found: 0, threats_cleaned: 0 }),
        updates: Reading::Value(Updates {
            pending: index % 4,
            security_pending: 0,
            security_pending_since: None,
            last_success: Some(now - 7200),
        }),
        backup: Reading::Value(Backup { last_snapshot: now - 43_200 }),
        os_version: Reading::Value("Debian GNU/Linux 12 (bookworm)".into()),
        boot_time: Reading::Value(now - 86_400 * 3),
        disk: Reading::Value(Disk { free_bytes: 40 << 30, total_bytes: 250 << 30 }),
        agent_version: env!("CARGO_PKG_VERSION").into(),
    }
}

fn agent_dir(dir: &Path, index: u32) -> PathBuf {
    dir.join(format!("agent-{index:05}"))
}

fn failed(detail: String) -> ScenarioError {
    ScenarioError::Agents(detail)
}

/// Enrolls the agents that have no enrollment yet, one token each; how many it enrolled.
async fn enroll_missing(config: &AgentsConfig, progress: &mut Progress) -> Result<u32, ScenarioError> {
    let mut missing = Vec::new();
    for i in 0..config.count {
        let state = StateDir::open(&agent_dir(&config.dir, i)).map_err(|e| failed(format!("{e:#}")))?;
        if state.enrollment().map_err(|e| failed(format!("{e:#}")))?.is_none() {
            missing.push((i, state));
        }
    }
    if missing.len() > config.tokens.len() {
        return Err(failed(format!(
            "{} agents need enrolling and only {} tokens were given: make more with \
             `tether machine enroll SUBSCRIBER --count {}`",
            missing.len(),
            config.tokens.len(),
            missing.len() - config.tokens.len()
        )));
    }
    let total = missing.len() as u64;
    let permits = Arc::new(Semaphore::new(ENROLL_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for ((index, state), token) in missing.into_iter().zip(config.tokens.iter().cloned()) {
        let (permits, gateway, ca) = (Arc::clone(&permits), config.gateway.clone(), config.ca.clone());
        let local = source_addr(index, config.sources);
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let hostname = format!("loadtest-{index:05}");
            conn::enroll_from(&state, &gateway, &token, Some(&ca), Uuid::new_v4(), &hostname, Some(local))
                .await
                .map_err(|e| format!("agent {index}: {e:#}"))
        });
    }
    let mut done = 0u64;
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(_)) => done += 1,
            Ok(Err(err)) => return Err(failed(format!("enrollment failed: {err}"))),
            Err(err) => return Err(failed(format!("an enrollment task failed: {err}"))),
        }
        progress.set("enroll", done, total, String::new);
    }
    Ok(done as u32)
}

/// Runs the scenario; an error only when it could not run (no tokens, an enrollment refused,
/// the gateway's process gone), else a report saying whether every spool was flushed.
pub async fn run(config: AgentsConfig, progress: &mut Progress) -> Result<AgentsReport, ScenarioError> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let enroll_started = Instant::now();
    let enrolled = enroll_missing(&config, progress).await?;
    let enroll_seconds = enroll_started.elapsed().as_secs_f64();
    if enrolled > 0 {
        progress.println(&format!("{enrolled} agents enrolled in {enroll_seconds:.1}s"));
    }

    // Each agent's spool gets its reports, as if it had been offline.
    let mut agents = Vec::with_capacity(config.count as usize);
    let mut spooled = 0u64;
    for i in 0..config.count {
        let state = StateDir::open(&agent_dir(&config.dir, i)).map_err(|e| failed(format!("{e:#}")))?;
        let waiting = agent::spool::Spool::new(state.spool_dir()).len() as u64;
        let source: Arc<dyn agent::collect::Collect> = Arc::new(move || synthetic_report(i));
        let agent = Agent::new(state, source, format!("loadtest-{i:05}"), "tether-loadtest".into())
            .map_err(|e| failed(format!("agent {i}: {e:#}")))?
            .bind_from(source_addr(i, config.sources));
        for _ in 0..config.reports {
            agent.spool_report().await.map_err(|e| failed(format!("agent {i}: {e:#}")))?;
        }
        spooled += waiting + u64::from(config.reports);
        agents.push(Arc::new(agent));
        progress.set("spool", u64::from(i) + 1, u64::from(config.count), String::new);
    }
    // On connecting, each agent also takes a report at once (its first heartbeat).
    let target = spooled + u64::from(config.count);

    let baseline = sample(config.gateway_probe.as_ref())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let deadline = started + config.timeout;
    let mut tasks = JoinSet::new();
    for agent in &agents {
        let (agent, mut stop) = (Arc::clone(agent), stop_rx.clone());
        tasks.spawn(async move {
            let _ = agent
                .run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        });
    }
    let count = u64::from(config.count);
    let mut all_connected = None;
    let mut flushed = None;
    let mut per_second = Vec::new();
    let mut last_acked = 0u64;
    let mut next_second = started + Duration::from_secs(1);
    let mut flush_sample = None;
    while flushed.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let acked: u64 = agents.iter().map(|a| a.acked()).sum();
        let up = agents.iter().filter(|a| a.is_connected()).count() as u64;
        if all_connected.is_none() && up == count {
            all_connected = Some(started.elapsed());
        }
        while Instant::now() >= next_second {
            per_second.push(acked - last_acked);
            last_acked = acked;
            next_second += Duration::from_secs(1);
        }
        if acked >= target && agents.iter().all(|a| a.acked() > 0) {
            flushed = Some((started.elapsed(), acked));
            flush_sample = sample(config.gateway_probe.as_ref())?;
        }
        progress.set("flush", acked.min(target), target, || format!("{up}/{count} connected"));
    }
    let mut outcome = Outcome::Ok;
    let mut held = Duration::ZERO;
    let mut connected = agents.iter().filter(|a| a.is_connected()).count() as u64;
    let mut hold_sample = None;
    match flushed {
        Some((after, acked)) => {
            progress.println(&format!(
                "{acked} reports acknowledged in {:.2}s ({:.0}/s); holding {count} sessions",
                after.as_secs_f64(),
                acked as f64 / after.as_secs_f64().max(1e-3)
            ));
            let hold_from = Instant::now();
            let hold_until = (hold_from + config.hold).min(deadline);
            while Instant::now() < hold_until {
                tokio::time::sleep(Duration::from_millis(500).min(hold_until - Instant::now())).await;
                connected = agents.iter().filter(|a| a.is_connected()).count() as u64;
                progress.set("hold", connected, count, || format!("{:.0}s", hold_from.elapsed().as_secs_f64()));
            }
            held = hold_from.elapsed();
            hold_sample = sample(config.gateway_probe.as_ref())?;
            if held + Duration::from_millis(100) < config.hold {
                outcome = Outcome::Incomplete(format!("the timeout cut the hold to {:.1}s", held.as_secs_f64()));
            } else if connected < count {
                outcome = Outcome::Incomplete(format!("{connected} of {count} sessions up at the end of the hold"));
            }
        }
        None => {
            let acked: u64 = agents.iter().map(|a| a.acked()).sum();
            outcome = Outcome::Incomplete(format!("{acked} of {target} reports acknowledged within the timeout"));
        }
    }
    let messages_received = agents.iter().map(|a| a.messages_received()).sum();
    let _ = stop_tx.send(true);
    progress.set("stopping", 0, count, String::new);
    let stopping = tokio::time::timeout(Duration::from_secs(15), async { while tasks.join_next().await.is_some() {} });
    if stopping.await.is_err() {
        tasks.abort_all();
    }
    progress.finish();

    let (flushed_after, acknowledged) = flushed.map_or((None, 0), |(d, a)| (Some(d.as_secs_f64()), a));
    let gateway = match (baseline, flush_sample, hold_sample) {
        (Some(b), Some(f), Some(h)) => Some(GatewayFigures {
            rss_baseline_kib: b.rss_kib,
            rss_hold_kib: h.rss_kib,
            rss_per_session_kib: h.rss_kib.saturating_sub(b.rss_kib) as f64 / connected.max(1) as f64,
            cpu_flush_seconds: f.cpu_seconds - b.cpu_seconds,
            cpu_hold_share: (h.cpu_seconds - f.cpu_seconds) / held.as_secs_f64().max(1e-3),
        }),
        _ => None,
    };
    Ok(AgentsReport {
        scenario: "agents",
        outcome,
        count: config.count,
        sources: config.sources,
        enrolled,
        enroll_seconds,
        spooled,
        acknowledged,
        all_connected_after_seconds: all_connected.map(|d| d.as_secs_f64()),
        flushed_after_seconds: flushed_after,
        durable_reports_per_second: flushed_after.map_or(0.0, |s| acknowledged as f64 / s.max(1e-3)),
        durable_reports_peak_second: per_second.iter().copied().max().unwrap_or(0),
        hold_seconds: held.as_secs_f64(),
        connected,
        messages_received,
        gateway,
    })
}

impl fmt::Display for AgentsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "agents: {} agents from {} sources ({} enrolled now, in {:.1}s), {} reports spooled",
            self.count, self.sources, self.enrolled, self.enroll_seconds, self.spooled
        )?;
        match (self.flushed_after_seconds, self.all_connected_after_seconds) {
            (Some(s), connected) => writeln!(
                f,
                "  {} reports acknowledged (durable) in {s:.2}s: {:.0} reports/s, peak second {}; all connected after {}",
                self.acknowledged,
                self.durable_reports_per_second,
                self.durable_reports_peak_second,
                connected.map_or("—".into(), |c| format!("{c:.2}s"))
            )?,
            (None, _) => writeln!(f, "  NOT flushed within the timeout")?,
        }
        writeln!(f, "  held {:.1}s: {} of {} sessions up", self.hold_seconds, self.connected, self.count)?;
        if self.messages_received > 0 {
            writeln!(f, "  messages received and kept by the agents: {}", self.messages_received)?;
        }
        if let Some(g) = &self.gateway {
            writeln!(
                f,
                "  gateway RSS {} KiB -> {} KiB: {:.1} KiB per session; CPU {:.2}s flushing, {:.2}% of a core holding",
                g.rss_baseline_kib,
                g.rss_hold_kib,
                g.rss_per_session_kib,
                g.cpu_flush_seconds,
                g.cpu_hold_share * 100.0
            )?;
        }
        match &self.outcome {
            Outcome::Ok => write!(f, "  ok"),
            Outcome::Incomplete(why) => write!(f, "  INCOMPLETE: {why}"),
        }
    }
}
