//! What an attacker does to a gateway, bounded so that a test stops by itself: crowds of silent
//! connections ([`SilentCrowd`]: plain TCP, or TLS that stops after the handshake) from many
//! loopback sources, and storms of wrong API tokens ([`token_storm`]). Also the open-files
//! limits such crowds need, the harness's own and the gateway's.
//!
//! Every loop here is bounded in count and time, and every address is on loopback
//! (127.0.0.0/8, which Linux routes to `lo` whole).
//!
//! What it does not do: judge the gateway (the tests do), or speak APF (`RawDevice` in the tests,
//! `amt-sim`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use crate::api::{random_token, tcp_connect_from, ApiClient, ApiConnection};

/// `count` loopback addresses `127.a.b.1`, `127.a.b.2`, … (at most 254), e.g.
/// `loopback_sources([1, 1], 250)` for 127.1.1.1 … 127.1.1.250.
pub fn loopback_sources(prefix: [u8; 2], count: u8) -> Vec<IpAddr> {
    assert!(count > 0 && count < 255, "1 to 254 sources in one /24");
    (1..=count).map(|last| IpAddr::V4(Ipv4Addr::new(127, prefix[0], prefix[1], last))).collect()
}

/// Raises this process's soft limit on open files to at least `min` (up to the hard limit);
/// returns the soft limit now in force. Children started afterwards inherit it.
pub fn raise_fd_limit(min: u64) -> u64 {
    let now = rlimit::increase_nofile_limit(min).expect("raising RLIMIT_NOFILE");
    assert!(now >= min, "this process may open only {now} files (hard limit); the test needs {min}");
    now
}

/// The open-files limits (soft, hard) of process `pid`, from `/proc/PID/limits`
/// (`u64::MAX` for unlimited).
pub fn open_files_limit(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc/PID/limits");
    let line = text.lines().find(|l| l.starts_with("Max open files")).expect("a Max open files line");
    let mut values = line["Max open files".len()..].split_whitespace().take(2).map(|v| {
        if v == "unlimited" {
            u64::MAX
        } else {
            v.parse().expect("a number in /proc/PID/limits")
        }
    });
    (values.next().expect("the soft limit"), values.next().expect("the hard limit"))
}

/// A `wrap` for [`Gateway::start_at`](crate::Gateway::start_at) that starts the gateway with a
/// soft open-files limit of `soft` (as systemd's default 1024), the hard limit untouched: a
/// gateway that needs more must raise its own.
pub fn with_soft_fd_limit(soft: u64) -> impl Fn(Command) -> Command {
    with_ulimit(format!("-S -n {soft}"))
}

/// A `wrap` for [`Gateway::start_at`](crate::Gateway::start_at) that starts the gateway with an
/// open-files limit of `limit`, soft and hard: it cannot raise its own.
pub fn with_fd_limit(limit: u64) -> impl Fn(Command) -> Command {
    with_ulimit(format!("-n {limit}"))
}

/// A `wrap` that runs the command under `sh -c 'ulimit FLAGS && exec …'`.
fn with_ulimit(flags: String) -> impl Fn(Command) -> Command {
    move |command: Command| {
        let mut wrapped = Command::new("sh");
        wrapped
            .arg("-c")
            .arg(format!("ulimit {flags} && exec \"$0\" \"$@\""))
            .arg(command.get_program())
            .args(command.get_args());
        wrapped
    }
}

/// The CPU time (user and system) process `pid` has used, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')').expect("a command name in /proc/PID/stat") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let per_second = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse::<u64>().ok())
        .unwrap_or(100);
    ticks as f64 / per_second as f64
}

/// How a crowd's connections should talk: not at all, or a TLS handshake and then nothing.
#[derive(Debug, Clone)]
pub enum Silence {
    /// TCP connect, then nothing.
    Tcp,
    /// TCP connect and a complete TLS handshake (trusting the given configuration), then
    /// nothing.
    Tls(Arc<rustls::ClientConfig>, ServerName<'static>),
}

/// What [`SilentCrowd::open`] achieved.
#[derive(Debug, Clone, Default)]
pub struct Opened {
    pub ok: usize,
    /// Connections that failed to connect or to finish the handshake, with a sample of why.
    pub failed: usize,
    pub first_errors: Vec<String>,
    pub elapsed: Duration,
}

#[derive(Debug, Default)]
struct Counts {
    /// Connected (and, for TLS, handshaken) and not closed yet, by either side.
    open: AtomicUsize,
    /// Closed by the gateway (end of stream or error while we were reading).
    closed_by_peer: AtomicUsize,
}

/// Decrements `open` when a connection's task ends, however it ends (aborted included).
struct OpenGuard(Arc<Counts>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Many connections that say nothing, held open on a runtime of their own until dropped
/// ([`SilentCrowd::close_all`] or drop). Each one reads (and discards) whatever the gateway sends,
/// so that the crowd notices when the gateway closes one; it never writes after its handshake.
#[derive(Debug)]
pub struct SilentCrowd {
    runtime: Option<tokio::runtime::Runtime>,
    counts: Arc<Counts>,
    tasks: Vec<JoinHandle<()>>,
}

impl Default for SilentCrowd {
    fn default() -> Self {
        Self::new()
    }
}

impl SilentCrowd {
    pub fn new() -> SilentCrowd {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("silent-crowd")
            .enable_all()
            .build()
            .expect("a tokio runtime for the crowd");
        SilentCrowd { runtime: Some(runtime), counts: Arc::default(), tasks: Vec::new() }
    }

    /// Opens `count` connections to `target` from `sources` in turn, `concurrency` of them being
    /// set up at once; returns once each is open or has failed, or after `timeout` for them all
    /// (those still being set up then are abandoned and count as failed).
    pub fn open(
        &mut self,
        silence: &Silence,
        target: SocketAddr,
        sources: &[IpAddr],
        count: usize,
        concurrency: usize,
        timeout: Duration,
    ) -> Opened {
        assert!(!sources.is_empty(), "at least one source address");
        let runtime = self.runtime.as_ref().expect("the crowd's runtime");
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + timeout);
        let gate = Arc::new(Semaphore::new(concurrency.max(1)));
        let errors = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut ready = Vec::with_capacity(count);
        for i in 0..count {
            let source = sources[i % sources.len()];
            let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
            ready.push(rx);
            let (silence, counts, gate) = (silence.clone(), Arc::clone(&self.counts), Arc::clone(&gate));
            self.tasks.push(runtime.spawn(async move {
                let setup = async {
                    let _permit = gate.acquire_owned().await;
                    let tcp =
                        tcp_connect_from(Some(source), target).await.map_err(|e| format!("{source}: connect: {e}"))?;
                    match silence {
                        Silence::Tcp => Ok(Connection::Tcp(tcp)),
                        Silence::Tls(config, name) => TlsConnector::from(config)
                            .connect(name, tcp)
                            .await
                            .map(|tls| Connection::Tls(Box::new(tls)))
                            .map_err(|e| format!("{source}: TLS handshake: {e}")),
                    }
                };
                let mut connection = match tokio::time::timeout_at(deadline, setup).await {
                    Ok(Ok(connection)) => connection,
                    Ok(Err(why)) => return drop(tx.send(Err(why))),
                    Err(_) => return drop(tx.send(Err(format!("{source}: not set up within {timeout:?}")))),
                };
                counts.open.fetch_add(1, Ordering::SeqCst);
                let _guard = OpenGuard(Arc::clone(&counts));
                let _ = tx.send(Ok(()));
                // Silent from here on: read until the gateway closes, writing nothing.
                connection.drain().await;
                counts.closed_by_peer.fetch_add(1, Ordering::SeqCst);
            }));
        }
        let mut opened = Opened::default();
        runtime.block_on(async {
            let deadline = deadline + Duration::from_secs(1);
            for rx in ready {
                match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(Ok(()))) => opened.ok += 1,
                    Ok(Ok(Err(why))) => {
                        opened.failed += 1;
                        errors.lock().expect("errors").push(why);
                    }
                    Ok(Err(_)) | Err(_) => {
                        opened.failed += 1;
                        errors.lock().expect("errors").push("abandoned: not set up in time".into());
                    }
                }
            }
        });
        opened.first_errors = errors.lock().expect("errors").iter().take(5).cloned().collect();
        opened.elapsed = started.elapsed();
        opened
    }

    /// Connections open now (not closed by the gateway).
    pub fn still_open(&self) -> usize {
        self.counts.open.load(Ordering::SeqCst)
    }

    /// Connections the gateway has closed so far.
    pub fn closed_by_gateway(&self) -> usize {
        self.counts.closed_by_peer.load(Ordering::SeqCst)
    }

    /// Closes every connection (each socket is dropped: FIN to the gateway) and waits until
    /// they are all gone, at most 30 s.
    pub fn close_all(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        let counts = Arc::clone(&self.counts);
        let closed = crate::poll_until(Duration::from_secs(30), || counts.open.load(Ordering::SeqCst) == 0);
        assert!(closed, "{} silent connections were not closed within 30 s", counts.open.load(Ordering::SeqCst));
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for SilentCrowd {
    fn drop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

enum Connection {
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl Connection {
    /// Reads and discards until end of stream or an error.
    async fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            let read = match self {
                Connection::Tcp(s) => s.read(&mut buf).await,
                Connection::Tls(s) => s.read(&mut buf).await,
            };
            if !matches!(read, Ok(n) if n > 0) {
                return;
            }
        }
    }
}

/// Bounds of a [`token_storm`].
#[derive(Debug, Clone, Copy)]
pub struct StormLimits {
    /// Keep-alive connections it spreads its requests over.
    pub connections: usize,
    /// Requests in all, at most.
    pub max_requests: usize,
    /// It stops after this long, whatever it has sent.
    pub max_duration: Duration,
    /// Requests per second over all connections, at most (`None`: as fast as answers come), so
    /// that a storm lasts long enough for what happens during it to be measured.
    pub requests_per_second: Option<u32>,
}

/// What a [`token_storm`] got back.
#[derive(Debug, Clone, Default)]
pub struct StormReport {
    /// The status of each answered request, in the order the answers came.
    pub statuses: Vec<u16>,
    /// 429 answers without a `Retry-After` header.
    pub missing_retry_after: usize,
    /// Requests that got no HTTP answer (connection refused, reset, timed out), with a sample.
    pub failures: usize,
    pub first_failures: Vec<String>,
    /// Connections opened, the first ones included.
    pub connections_opened: usize,
    pub elapsed: Duration,
}

impl StormReport {
    /// How many of the answers after the first `skip` were `status`, and how many answers that is.
    pub fn count_after(&self, skip: usize, status: u16) -> (usize, usize) {
        let rest = self.statuses.get(skip..).unwrap_or(&[]);
        (rest.iter().filter(|&&s| s == status).count(), rest.len())
    }

    pub fn count(&self, status: u16) -> usize {
        self.statuses.iter().filter(|&&s| s == status).count()
    }
}

/// Sends `GET path`, each with a fresh random bearer token that no one created, over
/// `limits.connections` keep-alive connections from `client`'s source, until
/// `limits.max_requests` were sent or `limits.max_duration` passed, paced to
/// `limits.requests_per_second` if set. A connection the gateway closes is opened again (after
/// 10 ms, so a refusing gateway is not spun on).
pub async fn token_storm(client: &ApiClient, path: &str, limits: StormLimits) -> StormReport {
    let started = Instant::now();
    let deadline = started + limits.max_duration;
    let claimed = Arc::new(AtomicUsize::new(0));
    let report = Arc::new(Mutex::new(StormReport::default()));
    let connections = limits.connections.max(1);
    // Each connection sends at most one request per `period`.
    let period =
        limits.requests_per_second.map(|rps| Duration::from_secs_f64(connections as f64 / f64::from(rps.max(1))));
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (client, claimed, report) = (client.clone(), Arc::clone(&claimed), Arc::clone(&report));
            let path = path.to_string();
            tokio::spawn(async move {
                let mut connection: Option<ApiConnection> = None;
                let mut pace = period.map(|p| {
                    let mut interval = tokio::time::interval(p);
                    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    interval
                });
                loop {
                    if let Some(pace) = pace.as_mut() {
                        pace.tick().await;
                    }
                    if Instant::now() >= deadline || claimed.fetch_add(1, Ordering::SeqCst) >= limits.max_requests {
                        break;
                    }
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let attempt = async {
                        if connection.as_ref().is_none_or(ApiConnection::is_closed) {
                            connection = Some(client.connect().await?);
                            report.lock().expect("report").connections_opened += 1;
                        }
                        connection.as_mut().expect("a connection").get(&path, &random_token()).await
                    };
                    let outcome = match tokio::time::timeout(remaining.max(Duration::from_millis(1)), attempt).await {
                        Ok(outcome) => outcome,
                        Err(_) => break, // the storm's time is up
                    };
                    let failed = {
                        let mut r = report.lock().expect("report");
                        match outcome {
                            Ok(response) => {
                                if response.status == 429 && response.retry_after.is_none() {
                                    r.missing_retry_after += 1;
                                }
                                r.statuses.push(response.status);
                                false
                            }
                            Err(err) => {
                                r.failures += 1;
                                if r.first_failures.len() < 5 {
                                    r.first_failures.push(format!("{err:#}"));
                                }
                                true
                            }
                        }
                    };
                    if failed {
                        connection = None;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a storm worker panicked");
    }
    let mut report = Arc::try_unwrap(report)
        .map(|m| m.into_inner().expect("report"))
        .unwrap_or_else(|a| a.lock().expect("report").clone());
    report.elapsed = started.elapsed();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_loopback_and_distinct() {
        let sources = loopback_sources([1, 1], 250);
        assert_eq!(sources.len(), 250);
        assert_eq!(sources[0].to_string(), "127.1.1.1");
        assert_eq!(sources[249].to_string(), "127.1.1.250");
        assert!(sources.iter().all(IpAddr::is_loopback));
    }

    #[test]
    fn this_process_limits_are_readable() {
        let (soft, hard) = open_files_limit(std::process::id());
        assert!(soft <= hard && soft > 0, "{soft} {hard}");
    }

    #[test]
    fn storm_report_counts_after_the_first_answers() {
        let report = StormReport { statuses: vec![401, 401, 429, 429, 401, 429], ..Default::default() };
        assert_eq!(report.count_after(2, 429), (3, 4));
        assert_eq!(report.count(401), 3);
        assert_eq!(report.count_after(10, 429), (0, 0));
    }
}
