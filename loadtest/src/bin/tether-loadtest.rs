//! tether-loadtest: load and latency tools for Tether and the relays it is compared with.
//!
//! - `echo --listen ADDR`: a TCP echo server (what the latency figures bounce off, behind any
//!   relay: direct, socat, rathole, or Tether with `amt-sim --expose`).
//! - `rtt --connect ADDR [--size 64] [--count 2000] [--warmup 200]`: small messages ping-ponged
//!   one at a time over one connection; p50/p99/p99.9 and max of the round trip, in µs.
//! - `push --connect ADDR [--mib 256]`: bytes written to an echo while it is read back at the same
//!   time (both directions busy at once); the rate each way.
//!
//! Every loop is bounded in count and time (`--timeout`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
        /// Bytes per message (SOL keystrokes are 1 to 64).
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
        size: u32,
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
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tether-loadtest: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tether-loadtest: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Echo { listen } => echo(listen).await,
        Command::Push { connect, mib, timeout, json } => {
            let bytes = mib * 1024 * 1024;
            let elapsed = tokio::time::timeout(Duration::from_secs(timeout), push(connect, bytes))
                .await
                .with_context(|| format!("not done within {timeout} s"))??;
            let rate = bytes as f64 / elapsed.as_secs_f64();
            if json {
                println!(
                    "{{\"bytes\":{bytes},\"seconds\":{:.3},\"bits_per_second\":{:.0}}}",
                    elapsed.as_secs_f64(),
                    rate * 8.0
                );
            } else {
                println!(
                    "{mib} MiB each way at once in {:.2} s: {:.0} MiB/s each way",
                    elapsed.as_secs_f64(),
                    rate / 1048576.0
                );
            }
            Ok(())
        }
        Command::Rtt { connect, size, count, warmup, timeout, json } => {
            let work = rtt(connect, size as usize, count, warmup);
            let rtts = tokio::time::timeout(Duration::from_secs(timeout), work)
                .await
                .with_context(|| format!("not done within {timeout} s"))??;
            report(&rtts, size, json);
            Ok(())
        }
    }
}

async fn echo(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    println!("echo listening on {}", listener.local_addr()?);
    loop {
        let (mut socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        tokio::spawn(async move {
            let (mut reader, mut writer) = socket.split();
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
        });
    }
}

/// Writes `bytes` while reading them back; how long until the last byte came back.
async fn push(addr: SocketAddr, bytes: u64) -> anyhow::Result<Duration> {
    let socket = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let (mut reader, mut writer) = socket.into_split();
    let started = Instant::now();
    let write = tokio::spawn(async move {
        let block = vec![0xA5u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            writer.write_all(&block[..n]).await?;
            left -= n as u64;
        }
        writer.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    while got < bytes {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            bail!("the echo ended after {got} of {bytes} bytes");
        }
        got += n as u64;
    }
    write.await.context("the writer")??;
    Ok(started.elapsed())
}

async fn rtt(addr: SocketAddr, size: usize, count: u32, warmup: u32) -> anyhow::Result<Vec<Duration>> {
    let mut socket = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    socket.set_nodelay(true)?;
    let message = vec![0x5Au8; size];
    let mut back = vec![0u8; size];
    let mut rtts = Vec::with_capacity(count as usize);
    for i in 0..warmup + count {
        let started = Instant::now();
        socket.write_all(&message).await?;
        socket.read_exact(&mut back).await.context("the echo ended early")?;
        if back != message {
            bail!("the echo changed the message");
        }
        if i >= warmup {
            rtts.push(started.elapsed());
        }
    }
    Ok(rtts)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

fn report(rtts: &[Duration], size: u32, json: bool) {
    let mut sorted = rtts.to_vec();
    sorted.sort_unstable();
    let (p50, p99, p999) = (percentile(&sorted, 0.5), percentile(&sorted, 0.99), percentile(&sorted, 0.999));
    let max = sorted.last().map_or(0.0, |d| d.as_secs_f64() * 1e6);
    if json {
        println!(
            "{{\"size\":{size},\"count\":{},\"p50_us\":{p50:.1},\"p99_us\":{p99:.1},\"p999_us\":{p999:.1},\"max_us\":{max:.1}}}",
            sorted.len()
        );
    } else {
        println!(
            "{} round trips of {size} bytes: p50 {p50:.0} µs, p99 {p99:.0} µs, p99.9 {p999:.0} µs, max {max:.0} µs",
            sorted.len()
        );
    }
}
