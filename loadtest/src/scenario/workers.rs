//! Worker processes that hold the devices, and the parent's handle on them.
//!
//! One process may hold at most its hard limit of open files (here 20,000), and each device holds
//! one socket, so a fleet is split into workers of at most `--per-worker` devices: the parent
//! re-executes its own binary with the hidden `worker` subcommand ([`WORKER_SUBCOMMAND`]) once per
//! slice of device indices. The password travels in the environment (`AMT_SIM_PASSWORD`), never
//! on a command line.
//!
//! A worker raises its soft open-file limit to the hard one, starts its devices (each with its own
//! [`Stats`], its own TLS session store and its source address), and then:
//! - writes one JSON line ([`WorkerLine`]) on stdout every [`REPORT_EVERY`], and at once when
//!   every device of its slice is back after a `mark`;
//! - reads commands on stdin, one per line: `mark` (count from now which devices get established
//!   again: [`WorkerLine::back`]), `drop` (`mark`, then a network blip: every connection drops and
//!   its device redials at once), `stop` (disconnect every device and exit). End of input is
//!   `stop` too, so a worker never outlives its parent's pipe.
//!
//! The parent ([`Workers`]) sums the last line of every worker ([`Workers::total`]), sends
//! commands to all, and treats a worker that exits or writes garbage as an error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::progress::Progress;
use super::{source_addr, DeviceArgs, ScenarioError};
use crate::amt::{
    blip_pair, client_config, default_server_name, device_uuid, run_device_with_stats, server_name, shutdown_pair,
    with_own_sessions, DeviceConfig, Echo, ExposeService, Services, Stats, StatsSnapshot, Trust,
};

/// The hidden subcommand of `tether-loadtest` that runs a worker.
pub const WORKER_SUBCOMMAND: &str = "worker";
/// How often a worker reports.
pub const REPORT_EVERY: Duration = Duration::from_millis(250);
/// How often a worker checks whether its devices are back (after `mark`).
const BACK_CHECK_EVERY: Duration = Duration::from_millis(25);
/// How long devices get to disconnect when a worker stops.
const DRAIN: Duration = Duration::from_secs(5);
/// The APF port the exposed echo is reached on (the echo port).
pub const ECHO_PORT: u32 = 7;

/// A worker's command line (the parent builds it; not for people).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub gateway: String,
    #[arg(long)]
    pub ca: PathBuf,
    #[arg(long)]
    pub server_name: Option<String>,
    #[arg(long)]
    pub username: String,
    #[arg(long, env = "AMT_SIM_PASSWORD", hide_env_values = true)]
    pub password: String,
    /// The fleet's base UUID (device i has the base plus i).
    #[arg(long)]
    pub uuid: Uuid,
    /// The fleet index of this worker's first device.
    #[arg(long)]
    pub first: u32,
    #[arg(long)]
    pub count: u32,
    /// Source addresses of the whole fleet (device i uses number i mod K).
    #[arg(long)]
    pub sources: u32,
    /// Carry channels to port 7 to this TCP address.
    #[arg(long)]
    pub expose: Option<SocketAddr>,
    #[arg(long, default_value_t = 4096)]
    pub window: u32,
    /// Spread this worker's first dials over this long.
    #[arg(long, default_value_t = 0)]
    pub ramp_ms: u64,
}

/// One report of a worker: its devices' counters summed, and after `mark`, how many are back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerLine {
    #[serde(flatten)]
    pub stats: StatsSnapshot,
    /// Devices established again since the last `mark` (0 before any).
    pub back: u64,
}

impl std::ops::Deref for WorkerLine {
    type Target = StatsSnapshot;

    fn deref(&self) -> &StatsSnapshot {
        &self.stats
    }
}

impl WorkerLine {
    fn new(stats: StatsSnapshot, back: u64) -> Self {
        Self { stats, back }
    }

    fn add(&mut self, o: &WorkerLine) {
        self.stats += o.stats;
        self.back += o.back;
    }
}

/// Runs a worker: the devices of `args`, reporting on stdout and obeying stdin (see the module
/// doc), until `stop` or the end of stdin.
pub async fn run_worker(args: WorkerArgs) -> Result<(), ScenarioError> {
    raise_open_files();
    let tls = client_config(&Trust::CaFile(args.ca.clone()))?;
    let name = server_name(args.server_name.as_deref().unwrap_or_else(|| default_server_name(&args.gateway)))?;
    let mut base = DeviceConfig::new(&args.gateway, name, Arc::clone(&tls), args.uuid, &args.username, &args.password);
    base.log_level = tracing::Level::DEBUG;
    let (blip, blip_signal) = blip_pair();
    base.blip = Some(blip_signal);
    if let Some(addr) = args.expose {
        base.window = args.window.max(1);
        base.adjust_step = (args.window / 4).max(1);
        base.services = Services::none().with_shared(ECHO_PORT, Arc::new(ExposeService::new(addr))).with_fallback(Echo);
        base.ports.push(ECHO_PORT);
    }
    let (stop, shutdown) = shutdown_pair();
    let mut tasks = JoinSet::new();
    let mut devices: Vec<Arc<Stats>> = Vec::with_capacity(args.count as usize);
    let ramp = Duration::from_millis(args.ramp_ms);
    for k in 0..args.count {
        let index = args.first + k;
        let mut device = base.clone();
        device.uuid = device_uuid(args.uuid, index);
        device.source = Some(source_addr(index, args.sources));
        device.tls = with_own_sessions(&tls);
        let stats = Arc::new(Stats::default());
        devices.push(Arc::clone(&stats));
        let delay = ramp.mul_f64(f64::from(k) / f64::from(args.count.max(1)));
        let mut shutdown = shutdown.clone();
        tasks.spawn(async move {
            if !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.wait() => return,
                }
            }
            if let Err(err) = run_device_with_stats(device, stats, shutdown).await {
                tracing::warn!("{err}");
            }
        });
    }

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    // Each device's establishments at the last `mark`, while one is counted.
    let mut marked: Option<Vec<u64>> = None;
    let mut all_back_reported = false;
    let mut report = tokio::time::interval(REPORT_EVERY);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut check = tokio::time::interval(BACK_CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let mut due = false;
        tokio::select! {
            line = stdin.next_line() => match line {
                Ok(Some(line)) => match line.trim() {
                    "mark" | "drop" => {
                        marked = Some(devices.iter().map(|d| d.snapshot().establishments).collect());
                        all_back_reported = false;
                        if line.trim() == "drop" {
                            blip.fire();
                        }
                        due = true;
                    }
                    "stop" => break,
                    other => tracing::warn!("worker: unknown command {other:?}"),
                },
                Ok(None) | Err(_) => break,
            },
            _ = report.tick() => due = true,
            _ = check.tick(), if marked.is_some() && !all_back_reported => {}
        }
        let back = marked.as_ref().map_or(0, |at| back_since(&devices, at));
        if marked.is_some() && !all_back_reported && back == u64::from(args.count) {
            all_back_reported = true;
            due = true;
        }
        if due {
            let line = WorkerLine::new(sum(&devices), back);
            let mut text = serde_json::to_string(&line).unwrap_or_default();
            text.push('\n');
            if stdout.write_all(text.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
                break; // the parent is gone
            }
        }
    }
    stop.trigger();
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN, drain).await.is_err() {
        tasks.abort_all();
    }
    Ok(())
}

/// The devices established again since the establishments counted in `at`.
fn back_since(devices: &[Arc<Stats>], at: &[u64]) -> u64 {
    devices.iter().zip(at).filter(|(d, &n)| d.snapshot().establishments > n).count() as u64
}

fn sum(devices: &[Arc<Stats>]) -> StatsSnapshot {
    let mut total = StatsSnapshot::default();
    for d in devices {
        total += d.snapshot();
    }
    total
}

/// The counters for a progress line.
pub fn describe(t: &WorkerLine) -> String {
    format!(
        "established; handshakes {}, connect failures {}, auth failures {}, reconnects {}",
        t.connections, t.connect_failures, t.auth_failures, t.reconnects
    )
}

/// Raises the soft open-file limit to the hard one (a warning when it cannot).
pub fn raise_open_files() {
    if let Err(err) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!("cannot raise the open-file limit: {err}");
    }
}

/// What the parent starts: `count` devices in workers of at most `device.per_worker`.
#[derive(Debug, Clone)]
pub struct FleetPlan {
    /// The binary with the hidden `worker` subcommand (this one: `std::env::current_exe()`).
    pub exe: PathBuf,
    pub device: DeviceArgs,
    /// The fleet's base UUID.
    pub uuid: Uuid,
    pub count: u32,
    pub sources: u32,
    /// Channels to port 7 of every device are carried to this address (an echo).
    pub expose: Option<SocketAddr>,
    /// The devices' channel window (with `expose`).
    pub window: u32,
    pub ramp: Duration,
}

impl FleetPlan {
    /// The UUID of device `index`.
    pub fn uuid_of(&self, index: u32) -> Uuid {
        device_uuid(self.uuid, index)
    }

    /// The slices of device indices, one per worker: `(first, count)`, as even as can be.
    pub fn slices(&self) -> Vec<(u32, u32)> {
        let workers = self.count.div_ceil(self.device.per_worker.max(1)).max(1);
        let (each, extra) = (self.count / workers, self.count % workers);
        let mut first = 0;
        (0..workers)
            .map(|w| {
                let count = each + u32::from(w < extra);
                let slice = (first, count);
                first += count;
                slice
            })
            .collect()
    }
}

/// The parent's handle on its workers. Dropping it kills them.
#[derive(Debug)]
pub struct Workers {
    workers: Vec<Worker>,
    lines: mpsc::Receiver<(usize, Result<WorkerLine, String>)>,
    latest: Vec<Option<WorkerLine>>,
    /// Devices in all.
    pub count: u32,
}

#[derive(Debug)]
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Workers {
    /// Starts the workers of `plan`.
    pub fn spawn(plan: &FleetPlan) -> Result<Self, ScenarioError> {
        if plan.count == 0 {
            return Err(ScenarioError::Invalid("a fleet needs at least one device".into()));
        }
        let slices = plan.slices();
        let (tx, lines) = mpsc::channel(64);
        let mut workers = Vec::with_capacity(slices.len());
        for (index, &(first, count)) in slices.iter().enumerate() {
            let d = &plan.device;
            let mut command = tokio::process::Command::new(&plan.exe);
            command
                .arg(WORKER_SUBCOMMAND)
                .args(["--gateway", &d.gateway, "--username", &d.username])
                .arg("--ca")
                .arg(&d.ca)
                .args(["--uuid", &plan.uuid.to_string(), "--first", &first.to_string()])
                .args(["--count", &count.to_string(), "--sources", &plan.sources.to_string()])
                .args(["--window", &plan.window.to_string()])
                .args(["--ramp-ms", &(plan.ramp.as_millis() as u64).to_string()])
                .env("AMT_SIM_PASSWORD", &d.password)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            if let Some(name) = &d.server_name {
                command.args(["--server-name", name]);
            }
            if let Some(addr) = plan.expose {
                command.args(["--expose", &addr.to_string()]);
            }
            let mut child = command
                .spawn()
                .map_err(ScenarioError::io(format!("starting worker {index} ({})", plan.exe.display())))?;
            let stdout =
                child.stdout.take().ok_or_else(|| ScenarioError::Worker { index, detail: "no stdout".into() })?;
            let stdin = child.stdin.take();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                loop {
                    let item = match lines.next_line().await {
                        Ok(Some(line)) => serde_json::from_str::<WorkerLine>(&line)
                            .map_err(|err| format!("wrote a line that is not a report ({err}): {line:?}")),
                        Ok(None) => Err("exited (end of its output)".to_owned()),
                        Err(err) => Err(format!("reading its output: {err}")),
                    };
                    let failed = item.is_err();
                    if tx.send((index, item)).await.is_err() || failed {
                        return;
                    }
                }
            });
            workers.push(Worker { child, stdin });
        }
        let latest = vec![None; workers.len()];
        Ok(Self { workers, lines, latest, count: plan.count })
    }

    /// How many worker processes.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Waits until a report arrives or `until`, then takes every report already there. Fails
    /// when a worker exited or wrote garbage.
    pub async fn update(&mut self, until: Instant) -> Result<(), ScenarioError> {
        let deadline = tokio::time::Instant::from_std(until);
        let mut next = match tokio::time::timeout_at(deadline, self.lines.recv()).await {
            Err(_) => return Ok(()),
            Ok(next) => next,
        };
        loop {
            match next {
                None => return Err(ScenarioError::Worker { index: 0, detail: "every worker is gone".into() }),
                Some((index, Ok(line))) => self.latest[index] = Some(line),
                Some((index, Err(detail))) => return Err(ScenarioError::Worker { index, detail }),
            }
            next = match self.lines.try_recv() {
                Ok(item) => Some(item),
                Err(mpsc::error::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
        }
    }

    /// The last reports summed (workers that have not reported yet count as zero).
    pub fn total(&self) -> WorkerLine {
        let mut total = WorkerLine::default();
        for line in self.latest.iter().flatten() {
            total.add(line);
        }
        total
    }

    /// Whether every worker reported since the last [`Workers::forget`].
    pub fn all_reported(&self) -> bool {
        self.latest.iter().all(Option::is_some)
    }

    /// Forgets the last reports (so that [`Workers::total`] shows only newer ones).
    pub fn forget(&mut self) {
        self.latest.iter_mut().for_each(|l| *l = None);
    }

    /// Sends a command line (`mark`, `drop`, `stop`) to every worker.
    pub async fn send(&mut self, command: &str) -> Result<(), ScenarioError> {
        for (index, worker) in self.workers.iter_mut().enumerate() {
            let Some(stdin) = worker.stdin.as_mut() else { continue };
            let line = format!("{command}\n");
            if let Err(err) = stdin.write_all(line.as_bytes()).await {
                return Err(ScenarioError::Worker { index, detail: format!("cannot send {command:?}: {err}") });
            }
            let _ = stdin.flush().await;
        }
        Ok(())
    }

    /// Waits until every device has been established once, or until `deadline`; calls
    /// `each_second` with the totals once a second from `started`, and shows progress. Returns
    /// when all were established, measured from `started`.
    pub async fn establish(
        &mut self,
        started: Instant,
        deadline: Instant,
        progress: &mut Progress,
        mut each_second: impl FnMut(&WorkerLine),
    ) -> Result<Option<Duration>, ScenarioError> {
        let count = u64::from(self.count);
        let mut next_second = started + Duration::from_secs(1);
        loop {
            self.update(next_second.min(deadline)).await?;
            let total = self.total();
            let now = Instant::now();
            while now >= next_second {
                each_second(&total);
                next_second += Duration::from_secs(1);
            }
            progress.set("establishing", total.established, count, || describe(&total));
            if total.ever_established >= count {
                return Ok(Some(now - started));
            }
            if now >= deadline {
                return Ok(None);
            }
        }
    }

    /// Stops every worker (`stop`, then its stdin closed), waiting up to `DRAIN` plus a little
    /// for each; kills those that do not exit.
    pub async fn stop(mut self) {
        let _ = self.send("stop").await;
        for worker in &mut self.workers {
            worker.stdin = None;
        }
        for worker in &mut self.workers {
            let waited = tokio::time::timeout(DRAIN + Duration::from_secs(2), worker.child.wait()).await;
            if waited.is_err() {
                let _ = worker.child.kill().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(count: u32, per_worker: u32) -> FleetPlan {
        let device = DeviceArgs {
            gateway: "127.0.0.1:1".into(),
            ca: "ca.pem".into(),
            server_name: None,
            username: "u".into(),
            password: "p".into(),
            uuid: None,
            sources: None,
            per_worker,
            ramp: 0.0,
        };
        device.plan("exe".into(), count, 500)
    }

    #[test]
    fn fleets_split_evenly_into_workers_of_at_most_per_worker() {
        assert_eq!(plan(19_000, 8000).slices(), [(0, 6334), (6334, 6333), (12_667, 6333)]);
        assert_eq!(plan(8000, 8000).slices(), [(0, 8000)]);
        assert_eq!(plan(1, 8000).slices(), [(0, 1)]);
        assert_eq!(plan(5, 2).slices(), [(0, 2), (2, 2), (4, 1)]);
        assert_eq!(plan(19_000, 8000).sources, 38);
    }

    #[test]
    fn worker_lines_round_trip_and_sum() {
        let stats = StatsSnapshot { established: 3, resumed: 2, ..StatsSnapshot::default() };
        let mut a = WorkerLine { stats, back: 1 };
        let text = serde_json::to_string(&a).unwrap();
        let b: WorkerLine = serde_json::from_str(&text).unwrap();
        a.add(&b);
        assert_eq!((a.established, a.resumed, a.back), (6, 4, 2));
    }
}
