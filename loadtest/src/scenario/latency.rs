//! `latency`: the round trip of SOL-sized messages through the gateway while it holds many idle
//! tunnels. K busy devices each carry one round-trip loop (one message at a time, from
//! `tether forward` to the device's echo and back); L more devices sit idle (keepalives only).
//! Percentiles are over the round trips of all K loops together.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use super::idle::sample;
use super::progress::Progress;
use super::traffic::{echo_server, rtt, Sizes, TetherForward};
use super::workers::ECHO_PORT;
use super::{loopback_any, FleetPlan, GatewayProbe, Outcome, Percentiles, ScenarioError, Workers};

#[derive(Debug, Clone)]
pub struct LatencyConfig {
    /// The busy devices are the first `busy` of the plan's; the rest are idle.
    pub plan: FleetPlan,
    pub busy: u32,
    pub sizes: Sizes,
    /// Round trips measured per loop, after `warmup`.
    pub count: u32,
    pub warmup: u32,
    pub tether: PathBuf,
    pub data_dir: PathBuf,
    pub timeout: Duration,
    pub gateway: Option<GatewayProbe>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub scenario: &'static str,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub busy: u32,
    pub idle: u32,
    /// Message size in bytes, or `MIN-MAX` drawn per message.
    pub size: String,
    pub count_per_loop: u32,
    /// Over all loops.
    #[serde(flatten)]
    pub all: Percentiles,
    pub per_loop: Vec<Percentiles>,
    /// The gateway's CPU time while the loops ran, and its RSS at the end (with its pid).
    pub gateway_cpu_seconds: Option<f64>,
    pub gateway_rss_kib: Option<u64>,
}

pub async fn run(mut config: LatencyConfig, progress: &mut Progress) -> Result<LatencyReport, ScenarioError> {
    if config.busy == 0 || config.busy > config.plan.count {
        return Err(ScenarioError::Invalid(format!("--busy must be 1 to the fleet's {} devices", config.plan.count)));
    }
    let deadline = Instant::now() + config.timeout;
    let (echo, echo_task) = echo_server(loopback_any()).await?;
    config.plan.expose = Some(echo);
    let mut workers = Workers::spawn(&config.plan)?;
    let result = loops(&config, &mut workers, progress, deadline).await;
    workers.stop().await;
    echo_task.abort();
    progress.finish();
    result
}

async fn loops(
    config: &LatencyConfig,
    workers: &mut Workers,
    progress: &mut Progress,
    deadline: Instant,
) -> Result<LatencyReport, ScenarioError> {
    let mut report = LatencyReport {
        scenario: "latency",
        outcome: Outcome::Ok,
        busy: config.busy,
        idle: config.plan.count - config.busy,
        size: config.sizes.to_string(),
        count_per_loop: config.count,
        all: Percentiles::default(),
        per_loop: Vec::new(),
        gateway_cpu_seconds: None,
        gateway_rss_kib: None,
    };
    if workers.establish(Instant::now(), deadline, progress, |_| {}).await?.is_none() {
        report.outcome = Outcome::Incomplete("not every device was established within the timeout".into());
        return Ok(report);
    }
    let mut forwards = Vec::with_capacity(config.busy as usize);
    for i in 0..config.busy {
        forwards.push(TetherForward::start(&config.tether, &config.data_dir, config.plan.uuid_of(i), ECHO_PORT).await?);
    }
    progress.println(&format!(
        "{} round-trip loops of {} messages ({} bytes) beside {} idle devices",
        config.busy, config.count, config.sizes, report.idle
    ));
    let cpu_before = sample(config.gateway.as_ref())?;
    let mut tasks = JoinSet::new();
    for (i, forward) in forwards.iter().enumerate() {
        let (addr, sizes, count, warmup) = (forward.addr, config.sizes, config.count, config.warmup);
        tasks.spawn(async move { (i, rtt(addr, sizes, count, warmup).await) });
    }
    let mut per_loop: Vec<Option<Vec<Duration>>> = vec![None; forwards.len()];
    let wait = async {
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, Ok(rtts))) => per_loop[i] = Some(rtts),
                Ok((i, Err(err))) => {
                    return Err(match err {
                        ScenarioError::Traffic { detail, .. } => ScenarioError::Traffic { stream: i, detail },
                        other => other,
                    })
                }
                Err(err) => return Err(ScenarioError::Traffic { stream: 0, detail: format!("a loop's task: {err}") }),
            }
        }
        Ok(())
    };
    match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), wait).await {
        Ok(result) => result?,
        Err(_) => report.outcome = Outcome::Incomplete("the loops were not done within the timeout".into()),
    }
    let cpu_after = sample(config.gateway.as_ref())?;
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        report.gateway_cpu_seconds = Some(b.cpu_seconds - a.cpu_seconds);
        report.gateway_rss_kib = Some(b.rss_kib);
    }
    drop(forwards);
    let mut all = Vec::new();
    for rtts in per_loop.iter_mut().flatten() {
        all.extend_from_slice(rtts);
        report.per_loop.push(Percentiles::of(rtts));
    }
    report.all = Percentiles::of(&mut all);
    Ok(report)
}

impl fmt::Display for LatencyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "latency: {} busy devices × {} round trips of {} bytes, beside {} idle devices",
            self.busy, self.count_per_loop, self.size, self.idle
        )?;
        let p = &self.all;
        writeln!(
            f,
            "  {} round trips: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs",
            p.samples, p.p50_us, p.p99_us, p.p999_us, p.max_us
        )?;
        if let (Some(cpu), Some(rss)) = (self.gateway_cpu_seconds, self.gateway_rss_kib) {
            writeln!(f, "  gateway CPU {cpu:.2}s during the loops, RSS {rss} KiB")?;
        }
        match &self.outcome {
            Outcome::Ok => write!(f, "  ok"),
            Outcome::Incomplete(why) => write!(f, "  INCOMPLETE: {why}"),
        }
    }
}
