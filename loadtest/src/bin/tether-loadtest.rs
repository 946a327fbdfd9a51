//! tether-loadtest: load and latency tools for Tether and the relays it is compared with.
//!
//! Probes, against any TCP echo:
//! - `echo --listen ADDR`: a TCP echo server (what the latency figures bounce off, behind any
//!   relay: direct, socat, rathole, or Tether with `amt-sim --expose`).
//! - `rtt --connect ADDR [--size 64|1-64] [--count 2000] [--warmup 200]`: small messages
//!   ping-ponged one at a time over one connection; p50/p99/p99.9 and max of the round trip, in µs.
//! - `push --connect ADDR [--mib 256]`: bytes written to an echo while it is read back at the same
//!   time (both directions busy at once); the rate each way.
//!
//! Scenarios, against a running gateway (module `loadtest::scenario`; the devices live in worker
//! processes of at most `--per-worker`, spread over `--sources` loopback addresses):
//! - `idle --count N --hold SECS`: N devices admitted and held; handshakes/s, failures, the
//!   gateway's RSS per tunnel and CPU (`--gateway-pid`), the kernel's slab.
//! - `storm --count N [--restart-cmd CMD]`: every tunnel drops at once (a blip, or the command
//!   restarting the gateway); time until all are back, how many gave up, resumed handshakes.
//! - `bulk --streams M --mib X --data-dir DIR`: M `tether forward` streams to device echoes, X MiB
//!   each way at once per stream; per-stream and aggregate throughput, gateway CPU per GB.
//! - `latency --busy K --idle L --data-dir DIR`: K round-trip loops of SOL-sized messages beside
//!   L idle devices; p50/p99/p99.9/max over all loops.
//! - `agents --gateway HOST:PORT --ca FILE --dir DIR --count N [--tokens FILE] [--reports K]`:
//!   N Tether agents (in this process) each flush K spooled reports at once over QUIC, then are
//!   held idle; durable reports per second, the gateway's RSS per session and CPU.
//!
//! Each prints a summary, or one JSON object with `--json`, and exits with 1 when the scenario
//! fell short (e.g. not every device admitted). Every loop is bounded in count and time
//! (`--timeout`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loadtest::scenario::traffic::{echo_server, push, rtt, Sizes};
use loadtest::scenario::{
    agents, bulk, idle, latency, progress::Progress, run_worker, storm, DeviceArgs, GatewayProbe, Outcome, Percentiles,
    RunArgs, TechnicianArgs, WorkerArgs,
};
use serde::Serialize;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "tether-loadtest", version, about = "Load and latency tools for Tether")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A TCP echo server, until interrupted.
    Echo {
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
    },
    /// Pushes MIB mebibytes through ADDR (which must echo) while reading them back.
    Push {
        #[arg(long, value_name = "ADDR")]
        connect: SocketAddr,
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65536))]
        mib: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Round trips of small messages through ADDR (which must echo).
    Rtt {
        #[arg(long, value_name = "ADDR")]
        connect: SocketAddr,
        /// Bytes per message (SOL keystrokes are 1 to 64), or MIN-MAX drawn per message.
        #[arg(long, default_value = "64")]
        size: Sizes,
        /// Round trips measured.
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
        count: u32,
        /// Round trips before measuring (connections and windows warm up).
        #[arg(long, default_value_t = 200)]
        warmup: u32,
        /// Give up after this many seconds in all.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// N devices admitted and held idle for SECS.
    Idle {
        #[command(flatten)]
        devices: DeviceArgs,
        #[command(flatten)]
        run: RunArgs,
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        count: u32,
        #[arg(long, default_value_t = 10, value_name = "SECS")]
        hold: u64,
    },
    /// N devices established, then every tunnel drops at once and every device redials.
    Storm {
        #[command(flatten)]
        devices: DeviceArgs,
        #[command(flatten)]
        run: RunArgs,
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        count: u32,
        /// Restart the gateway with this shell command instead of the devices dropping their
        /// connections (timed from its start; the devices redial with their normal back-off).
        #[arg(long, value_name = "SHELL CMD")]
        restart_cmd: Option<String>,
    },
    /// M technician streams through the gateway to device echoes, X MiB each way at once.
    Bulk {
        #[command(flatten)]
        devices: DeviceArgs,
        #[command(flatten)]
        technician: TechnicianArgs,
        #[command(flatten)]
        run: RunArgs,
        #[arg(long, default_value_t = 4, value_name = "M", value_parser = clap::value_parser!(u32).range(1..=1000))]
        streams: u32,
        #[arg(long, default_value_t = 64, value_name = "X", value_parser = clap::value_parser!(u64).range(1..=65536))]
        mib: u64,
        /// The devices' channel window (granted back in quarters).
        #[arg(long, default_value_t = 256 * 1024, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..))]
        window: u32,
    },
    /// K round-trip loops of SOL-sized messages beside L idle devices.
    Latency {
        #[command(flatten)]
        devices: DeviceArgs,
        #[command(flatten)]
        technician: TechnicianArgs,
        #[command(flatten)]
        run: RunArgs,
        #[arg(long, default_value_t = 4, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=1000))]
        busy: u32,
        #[arg(long, default_value_t = 0, value_name = "L")]
        idle: u32,
        /// Bytes per message, or MIN-MAX drawn per message.
        #[arg(long, default_value = "64")]
        size: Sizes,
        /// Round trips measured per loop.
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
        count: u32,
        #[arg(long, default_value_t = 200)]
        warmup: u32,
    },
    /// N Tether agents flush K spooled reports each at once over QUIC, then are held idle.
    Agents {
        /// The gateway's agent listener (UDP).
        #[arg(long, value_name = "HOST:PORT")]
        gateway: String,
        /// The CA the gateway's certificate chains to (DATA_DIR/tls/ca.pem).
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
        /// Where the agents keep their state; a later run with the same DIR reuses them.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Enrollment tokens, one per line, for the agents DIR does not hold yet
        /// (`tether machine enroll SUBSCRIBER --count N`).
        #[arg(long, value_name = "FILE")]
        tokens: Option<PathBuf>,
        #[command(flatten)]
        run: RunArgs,
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: u32,
        /// Reports waiting in each agent's spool when it connects (the gateway takes a burst of
        /// 200 per connection at once, then 20 a second).
        #[arg(long, default_value_t = 100, value_name = "K", value_parser = clap::value_parser!(u32).range(0..=10_000))]
        reports: u32,
        /// Loopback source addresses the agents spread over (default: one per 200 agents).
        #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=60_000))]
        sources: Option<u32>,
        /// How long the sessions are held idle after the flush.
        #[arg(long, default_value_t = 10, value_name = "SECS")]
        hold: u64,
    },
    /// A worker process of a scenario (started by the scenarios themselves).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tether-loadtest: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tether-loadtest: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let exe = || std::env::current_exe().context("the path of this binary (to start workers)");
    match args.command {
        Command::Echo { listen } => {
            let (addr, task) = echo_server(listen).await?;
            println!("echo listening on {addr}");
            task.await.context("the echo server")?;
        }
        Command::Push { connect, mib, timeout, json } => {
            let bytes = mib * 1024 * 1024;
            let pushed = tokio::time::timeout(Duration::from_secs(timeout), push(connect, bytes))
                .await
                .with_context(|| format!("not done within {timeout} s"))??;
            let rate = bytes as f64 / pushed.seconds;
            if json {
                println!(
                    "{{\"bytes\":{bytes},\"seconds\":{:.3},\"bits_per_second\":{:.0}}}",
                    pushed.seconds,
                    rate * 8.0
                );
            } else {
                println!(
                    "{mib} MiB each way at once in {:.2} s: {:.0} MiB/s each way",
                    pushed.seconds,
                    rate / 1048576.0
                );
            }
        }
        Command::Rtt { connect, size, count, warmup, timeout, json } => {
            let work = rtt(connect, size, count, warmup);
            let mut rtts = tokio::time::timeout(Duration::from_secs(timeout), work)
                .await
                .with_context(|| format!("not done within {timeout} s"))??;
            let p = Percentiles::of(&mut rtts);
            if json {
                let size = if size.min == size.max { size.min.to_string() } else { format!("\"{size}\"") };
                println!(
                    "{{\"size\":{size},\"count\":{},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1}}}",
                    p.samples, p.p50_us, p.p99_us, p.p999_us, p.max_us
                );
            } else {
                println!(
                    "{} round trips of {size} bytes: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs",
                    p.samples, p.p50_us, p.p99_us, p.p999_us, p.max_us
                );
            }
        }
        Command::Idle { devices, run, count, hold } => {
            let config = idle::IdleConfig {
                plan: devices.plan(exe()?, count, 500),
                hold: Duration::from_secs(hold),
                timeout: timeout(&run, 600),
                gateway: probe(&run)?,
            };
            let report = idle::run(config, &mut Progress::new()).await?;
            return Ok(finish(&report, &report.outcome, run.json));
        }
        Command::Storm { devices, run, count, restart_cmd } => {
            let config = storm::StormConfig {
                plan: devices.plan(exe()?, count, storm::DEVICES_PER_SOURCE),
                restart_cmd,
                timeout: timeout(&run, 600),
                gateway: probe(&run)?,
            };
            let report = storm::run(config, &mut Progress::new()).await?;
            return Ok(finish(&report, &report.outcome, run.json));
        }
        Command::Bulk { devices, technician, run, streams, mib, window } => {
            let exe = exe()?;
            let mut plan = devices.plan(exe.clone(), streams, 500);
            plan.window = window;
            let config = bulk::BulkConfig {
                plan,
                mib,
                tether: technician.tether_bin(&exe),
                data_dir: technician.data_dir,
                timeout: timeout(&run, 600),
                gateway: probe(&run)?,
            };
            let report = bulk::run(config, &mut Progress::new()).await?;
            return Ok(finish(&report, &report.outcome, run.json));
        }
        Command::Latency { devices, technician, run, busy, idle, size, count, warmup } => {
            let exe = exe()?;
            let config = latency::LatencyConfig {
                plan: devices.plan(exe.clone(), busy + idle, 500),
                busy,
                sizes: size,
                count,
                warmup,
                tether: technician.tether_bin(&exe),
                data_dir: technician.data_dir,
                timeout: timeout(&run, 600),
                gateway: probe(&run)?,
            };
            let report = latency::run(config, &mut Progress::new()).await?;
            return Ok(finish(&report, &report.outcome, run.json));
        }
        Command::Agents { gateway, ca, dir, tokens, run, count, reports, sources, hold } => {
            let tokens = match tokens {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("reading the tokens in {}", path.display()))?
                    .lines()
                    .map(str::trim)
                    .filter(|l| l.starts_with("tte_"))
                    .map(str::to_string)
                    .collect(),
                None => Vec::new(),
            };
            let config = agents::AgentsConfig {
                gateway,
                ca,
                dir,
                tokens,
                count,
                reports,
                hold: Duration::from_secs(hold),
                sources: sources.unwrap_or_else(|| count.div_ceil(agents::AGENTS_PER_SOURCE).max(1)),
                timeout: timeout(&run, 600),
                gateway_probe: probe(&run)?,
            };
            let report = agents::run(config, &mut Progress::new()).await?;
            return Ok(finish(&report, &report.outcome, run.json));
        }
        Command::Worker(args) => run_worker(args).await?,
    }
    Ok(ExitCode::SUCCESS)
}

fn timeout(run: &RunArgs, default_secs: u64) -> Duration {
    Duration::from_secs(run.timeout.unwrap_or(default_secs))
}

fn probe(run: &RunArgs) -> anyhow::Result<Option<GatewayProbe>> {
    run.gateway_pid.map(GatewayProbe::new).transpose().context("--gateway-pid")
}

/// Prints the report (JSON or summary); failure when the scenario fell short.
fn finish<R: Serialize + std::fmt::Display>(report: &R, outcome: &Outcome, json: bool) -> ExitCode {
    if json {
        match serde_json::to_string(report) {
            Ok(text) => println!("{text}"),
            Err(err) => eprintln!("tether-loadtest: cannot write the report as JSON: {err}"),
        }
    } else {
        println!("{report}");
    }
    match outcome {
        Outcome::Ok => ExitCode::SUCCESS,
        Outcome::Incomplete(why) => {
            eprintln!("tether-loadtest: the scenario fell short: {why}");
            ExitCode::FAILURE
        }
    }
}
