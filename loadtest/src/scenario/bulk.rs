//! `bulk`: M technician streams through the gateway, each to its own device's echo service,
//! each pushing X MiB while reading them back (both directions busy at once).
//!
//! Device side: M devices (one stream each) whose port 7 is carried over TCP to an echo server
//! this scenario starts ([`ExposeService`](crate::amt::ExposeService)), with a large channel
//! window (`--window`, 256 KiB by default, granted back in quarters). Technician side: one
//! `tether forward UUID 7` per device on the gateway's machine, and [`push`] through each.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use super::idle::sample;
use super::progress::Progress;
use super::traffic::{echo_server, push, Pushed, TetherForward};
use super::workers::ECHO_PORT;
use super::{loopback_any, FleetPlan, GatewayProbe, Outcome, ScenarioError, Workers};

#[derive(Debug, Clone)]
pub struct BulkConfig {
    /// One device per stream; its `expose` is set here.
    pub plan: FleetPlan,
    pub mib: u64,
    pub tether: PathBuf,
    pub data_dir: PathBuf,
    pub timeout: Duration,
    pub gateway: Option<GatewayProbe>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BulkReport {
    pub scenario: &'static str,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub streams: usize,
    pub window: u32,
    pub mib_per_stream: u64,
    pub per_stream: Vec<Pushed>,
    /// Bytes each way of all streams ÷ the time from the first start to the last end.
    pub aggregate_mib_per_second_each_way: f64,
    pub aggregate_gbit_per_second_each_way: f64,
    pub gateway_cpu_seconds: Option<f64>,
    /// Gateway CPU seconds per 10⁹ bytes carried, both directions counted.
    pub gateway_cpu_seconds_per_gb: Option<f64>,
}

pub async fn run(mut config: BulkConfig, progress: &mut Progress) -> Result<BulkReport, ScenarioError> {
    let started = Instant::now();
    let deadline = started + config.timeout;
    let (echo, echo_task) = echo_server(loopback_any()).await?;
    config.plan.expose = Some(echo);
    let mut workers = Workers::spawn(&config.plan)?;
    let result = streams(&config, &mut workers, progress, deadline).await;
    workers.stop().await;
    echo_task.abort();
    progress.finish();
    result
}

async fn streams(
    config: &BulkConfig,
    workers: &mut Workers,
    progress: &mut Progress,
    deadline: Instant,
) -> Result<BulkReport, ScenarioError> {
    let count = config.plan.count;
    let mut report = BulkReport {
        scenario: "bulk",
        outcome: Outcome::Ok,
        streams: count as usize,
        window: config.plan.window,
        mib_per_stream: config.mib,
        per_stream: Vec::new(),
        aggregate_mib_per_second_each_way: 0.0,
        aggregate_gbit_per_second_each_way: 0.0,
        gateway_cpu_seconds: None,
        gateway_cpu_seconds_per_gb: None,
    };
    if workers.establish(Instant::now(), deadline, progress, |_| {}).await?.is_none() {
        report.outcome = Outcome::Incomplete("not every device was established within the timeout".into());
        return Ok(report);
    }
    let mut forwards = Vec::with_capacity(count as usize);
    for i in 0..count {
        forwards.push(TetherForward::start(&config.tether, &config.data_dir, config.plan.uuid_of(i), ECHO_PORT).await?);
    }
    progress.println(&format!("{count} streams of {} MiB each way at once", config.mib));
    let bytes = config.mib * 1024 * 1024;
    let cpu_before = sample(config.gateway.as_ref())?;
    let t0 = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, forward) in forwards.iter().enumerate() {
        let addr = forward.addr;
        tasks.spawn(async move { (i, push(addr, bytes).await) });
    }
    let mut per_stream: Vec<Option<Result<Pushed, ScenarioError>>> = (0..count).map(|_| None).collect();
    let wait = async {
        while let Some(joined) = tasks.join_next().await {
            if let Ok((i, result)) = joined {
                per_stream[i] = Some(result);
            }
        }
    };
    let finished = tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), wait).await.is_ok();
    let wall = t0.elapsed().as_secs_f64();
    let cpu_after = sample(config.gateway.as_ref())?;
    drop(forwards);
    let mut total = 0u64;
    for (i, result) in per_stream.into_iter().enumerate() {
        match result {
            Some(Ok(pushed)) => {
                total += pushed.bytes_sent;
                if pushed.bytes_received != pushed.bytes_sent && report.outcome.is_ok() {
                    report.outcome = Outcome::Incomplete(format!(
                        "stream {i}: {} bytes came back for {} sent",
                        pushed.bytes_received, pushed.bytes_sent
                    ));
                }
                report.per_stream.push(pushed);
            }
            Some(Err(err)) => {
                return Err(match err {
                    ScenarioError::Traffic { detail, .. } => ScenarioError::Traffic { stream: i, detail },
                    other => other,
                })
            }
            None if finished => return Err(ScenarioError::Traffic { stream: i, detail: "its task failed".into() }),
            None => {
                report.outcome = Outcome::Incomplete(format!("stream {i} not done within the timeout"));
            }
        }
    }
    report.aggregate_mib_per_second_each_way = total as f64 / 1048576.0 / wall.max(1e-9);
    report.aggregate_gbit_per_second_each_way = total as f64 * 8.0 / 1e9 / wall.max(1e-9);
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        let cpu = b.cpu_seconds - a.cpu_seconds;
        report.gateway_cpu_seconds = Some(cpu);
        report.gateway_cpu_seconds_per_gb = Some(cpu / (2.0 * total as f64 / 1e9).max(1e-12));
    }
    Ok(report)
}

impl fmt::Display for BulkReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "bulk: {} streams of {} MiB each way at once (device window {} bytes)",
            self.streams, self.mib_per_stream, self.window
        )?;
        for (i, s) in self.per_stream.iter().enumerate() {
            writeln!(f, "  stream {i}: {:.1} MiB/s each way ({:.2}s)", s.mib_per_second(), s.seconds)?;
        }
        writeln!(
            f,
            "  aggregate: {:.1} MiB/s each way ({:.2} Gbit/s)",
            self.aggregate_mib_per_second_each_way, self.aggregate_gbit_per_second_each_way
        )?;
        if let (Some(cpu), Some(per_gb)) = (self.gateway_cpu_seconds, self.gateway_cpu_seconds_per_gb) {
            writeln!(f, "  gateway CPU {cpu:.2}s: {per_gb:.2}s per GB carried (both directions counted)")?;
        }
        match &self.outcome {
            Outcome::Ok => write!(f, "  ok"),
            Outcome::Incomplete(why) => write!(f, "  INCOMPLETE: {why}"),
        }
    }
}
