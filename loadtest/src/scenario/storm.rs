//! `storm`: N devices established, then every tunnel drops at one moment and every device
//! redials at once; how long until all N are established again, and how many gave up (were not
//! back before the run's timeout).
//!
//! Two triggers:
//! - a network blip (default): the devices drop their own connections at once (no DISCONNECT,
//!   no close_notify; see [`crate::amt::blip`]) and redial at once, with no back-off for that
//!   first redial; the gateway keeps running, so its CPU time during the storm is measured;
//! - `--restart-cmd`: a shell command that restarts the gateway; the devices see their tunnels
//!   end and redial with their normal back-off (1 s doubling to 30 s, with jitter). Timed from
//!   the command's start.
//!
//! Each device keeps its own TLS session store across redials, so a gateway that resumes
//! sessions can resume them; the report counts the resumed handshakes. The default source
//! addresses are one per 250 devices, so that the admission and the storm together fit in the
//! gateway's per-source burst (500) without waiting for its tokens to refill.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::idle::sample;
use super::progress::Progress;
use super::{FleetPlan, GatewayProbe, Outcome, ScenarioError, Workers};

/// Source addresses per this many devices, by default (see the module doc).
pub const DEVICES_PER_SOURCE: u32 = 250;

#[derive(Debug, Clone)]
pub struct StormConfig {
    pub plan: FleetPlan,
    /// `sh -c` this to restart the gateway, instead of the blip.
    pub restart_cmd: Option<String>,
    /// Bound on the whole run.
    pub timeout: Duration,
    pub gateway: Option<GatewayProbe>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub scenario: &'static str,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub count: u32,
    pub workers: usize,
    pub sources: u32,
    /// `blip` or `restart`.
    pub trigger: &'static str,
    /// Until every device was established the first time.
    pub established_after_seconds: Option<f64>,
    /// Devices established again after the trigger, and those that were not by the end.
    pub back: u64,
    pub gave_up: u64,
    /// From the trigger until all were back.
    pub all_back_after_seconds: Option<f64>,
    /// Devices back, one sample per second from the trigger.
    pub back_per_second: Vec<u64>,
    /// During the storm: TLS handshakes, of them resumed, and failures.
    pub handshakes: u64,
    pub resumed: u64,
    pub connect_failures: u64,
    pub auth_failures: u64,
    /// The gateway's CPU time from the trigger until all were back (blip only: a restart
    /// replaces the process).
    pub gateway_cpu_seconds: Option<f64>,
    pub restart: Option<Restart>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    pub command: String,
    /// Its exit code (`None`: killed by a signal, or still running at the end).
    pub exit_code: Option<i32>,
    pub seconds: Option<f64>,
}

pub async fn run(config: StormConfig, progress: &mut Progress) -> Result<StormReport, ScenarioError> {
    let count = config.plan.count;
    let started = Instant::now();
    let deadline = started + config.timeout;
    let mut workers = Workers::spawn(&config.plan)?;
    let established = workers.establish(started, deadline, progress, |_| {}).await?;
    let mut report = StormReport {
        scenario: "storm",
        outcome: Outcome::Ok,
        count,
        workers: workers.len(),
        sources: config.plan.sources,
        trigger: if config.restart_cmd.is_some() { "restart" } else { "blip" },
        established_after_seconds: established.map(|d| d.as_secs_f64()),
        back: 0,
        gave_up: u64::from(count),
        all_back_after_seconds: None,
        back_per_second: Vec::new(),
        handshakes: 0,
        resumed: 0,
        connect_failures: 0,
        auth_failures: 0,
        gateway_cpu_seconds: None,
        restart: None,
    };
    if established.is_none() {
        let total = workers.total();
        report.outcome = Outcome::Incomplete(format!(
            "{} of {count} devices established within the timeout",
            total.ever_established
        ));
        workers.stop().await;
        progress.finish();
        return Ok(report);
    }
    progress.println(&format!(
        "all {count} devices established in {:.2}s; the storm ({})",
        established.unwrap_or_default().as_secs_f64(),
        report.trigger
    ));
    // Fresh reports from every worker, so that the counters before the storm are current.
    workers.forget();
    while !workers.all_reported() && Instant::now() < deadline {
        workers.update(Instant::now() + Duration::from_millis(100)).await?;
    }
    let before = workers.total();
    let cpu_before = sample(config.gateway.as_ref())?;
    let trigger_at = Instant::now();
    let mut restart = None;
    match &config.restart_cmd {
        None => workers.send("drop").await?,
        Some(command) => {
            workers.send("mark").await?;
            let child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(command)
                .kill_on_drop(true)
                .spawn()
                .map_err(ScenarioError::io(format!("running --restart-cmd {command:?}")))?;
            restart = Some(child);
        }
    }
    // `back` in the reports before the trigger is 0; forget them anyway.
    workers.forget();
    let mut next_second = trigger_at + Duration::from_secs(1);
    let mut restart_exit = None;
    let mut all_back = None;
    let mut cpu_after = None;
    loop {
        workers.update(next_second.min(deadline)).await?;
        let total = workers.total();
        let now = Instant::now();
        while now >= next_second {
            report.back_per_second.push(total.back);
            next_second += Duration::from_secs(1);
        }
        if let Some(child) = &mut restart {
            if let Ok(Some(status)) = child.try_wait() {
                restart_exit = Some((status.code(), trigger_at.elapsed()));
                restart = None;
            }
        }
        progress.set("storm: back", total.back, u64::from(count), || {
            format!("established {}, handshakes {}, resumed {}", total.established, total.connections, total.resumed)
        });
        if workers.all_reported() && total.back >= u64::from(count) {
            all_back = Some(now - trigger_at);
            cpu_after = if config.restart_cmd.is_none() { sample(config.gateway.as_ref())? } else { None };
            break;
        }
        if now >= deadline {
            break;
        }
    }
    let after = workers.total();
    workers.stop().await;
    progress.finish();
    if let Some(mut child) = restart.take() {
        // Still running: give it a moment, then leave it (kill_on_drop).
        if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            restart_exit = Some((status.code(), trigger_at.elapsed()));
        }
    }
    report.back = after.back.min(u64::from(count));
    report.gave_up = u64::from(count) - report.back;
    report.all_back_after_seconds = all_back.map(|d| d.as_secs_f64());
    report.handshakes = after.connections.saturating_sub(before.connections);
    report.resumed = after.resumed.saturating_sub(before.resumed);
    report.connect_failures = after.connect_failures.saturating_sub(before.connect_failures);
    report.auth_failures = after.auth_failures.saturating_sub(before.auth_failures);
    report.gateway_cpu_seconds = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => Some(b.cpu_seconds - a.cpu_seconds),
        _ => None,
    };
    report.restart = config.restart_cmd.as_ref().map(|command| Restart {
        command: command.clone(),
        exit_code: restart_exit.and_then(|(code, _)| code),
        seconds: restart_exit.map(|(_, d)| d.as_secs_f64()),
    });
    if report.gave_up > 0 {
        report.outcome =
            Outcome::Incomplete(format!("{} of {count} devices were not back before the timeout", report.gave_up));
    } else if report.restart.as_ref().is_some_and(|r| r.exit_code != Some(0)) {
        report.outcome = Outcome::Incomplete("the restart command did not exit with 0".into());
    }
    Ok(report)
}

impl fmt::Display for StormReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "storm ({}): {} devices from {} sources in {} workers",
            self.trigger, self.count, self.sources, self.workers
        )?;
        if let Some(s) = self.established_after_seconds {
            writeln!(f, "  all established first in {s:.2}s")?;
        }
        match self.all_back_after_seconds {
            Some(s) => writeln!(f, "  all {} back {s:.2}s after the trigger", self.back)?,
            None => writeln!(f, "  {} back, {} gave up (not back before the timeout)", self.back, self.gave_up)?,
        }
        writeln!(
            f,
            "  during the storm: {} handshakes ({} resumed), {} connect failures, {} auth failures",
            self.handshakes, self.resumed, self.connect_failures, self.auth_failures
        )?;
        if let Some(cpu) = self.gateway_cpu_seconds {
            writeln!(f, "  gateway CPU {cpu:.2}s during the storm")?;
        }
        if let Some(r) = &self.restart {
            writeln!(f, "  restart command {:?}: exit {:?} after {:?}s", r.command, r.exit_code, r.seconds)?;
        }
        match &self.outcome {
            Outcome::Ok => write!(f, "  ok"),
            Outcome::Incomplete(why) => write!(f, "  INCOMPLETE: {why}"),
        }
    }
}
