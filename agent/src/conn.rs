//! The agent's connection to its gateways: QUIC (quinn) with ALPN `tether/1`, else TLS over TCP
//! on the same port ([`crate::link`]), the machine's certificate as the client certificate, one
//! control stream.
//!
//! - [`enroll`]: one connection without a client certificate: `Enroll` with a one-time token and
//!   a certificate request for a key made here, `Enrolled` back.
//! - [`Agent::run`]: the service. Dials the gateways in order (moving on when one is down, so a
//!   fleet needs no UDP load balancer), says hello, takes the signed configuration (verified
//!   with the key pinned at enrollment; a bad signature keeps the defaults), then reports on the
//!   heartbeat: each report is spooled before it is sent and forgotten only on its ack. Lost
//!   connections are redialled with jittered exponential back-off (1 s doubling to 60 s); while
//!   no gateway answers, reports go on being taken on the heartbeat into the spool, and the next
//!   connection sends them, oldest first.
//!
//! Beyond reports, a session carries support actions, messages for the PC user and relayed
//! sessions (`conn/support.rs`, with [`crate::actions`], [`crate::inbox`] and [`crate::relay`]), under
//! the PC's local policy ([`crate::policy`]).
//!
//! QUIC keepalives go every `keepalive_secs` (15 s by default): shorter than the 30 s after which
//! many NATs forget a UDP mapping. When the agent's public address changes (a NAT rebinding, a
//! new network), QUIC migrates the connection: the session goes on.

use std::future::Future;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use protocols::tap::{self, Capabilities, CloseCode, ConfigBody, Message, SignDomain, Signed, SiloKeyBody};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::actions::Actions;
use crate::collect::Collect;
use crate::inbox::Inbox;
use crate::link::{self, Control, Link, CONNECT_TIMEOUT};
use crate::policy::LocalPolicy;
use crate::relay::Relay;
use crate::spool::Spool;
use crate::state::{set_mode, write_durable, AgentState, Enrollment, SavedConfig, StateDir, Status};

pub mod content;
mod moves;
mod support;

use support::Work;

/// Defaults used until the gateway's signed configuration says otherwise.
pub const DEFAULT_HEARTBEAT_SECS: u32 = 300;
pub const DEFAULT_KEEPALIVE_SECS: u32 = 15;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How a session with a gateway ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    /// The gateway or the connection ended it: dial again.
    Ended,
    /// The agent is stopping.
    Stopped,
}

/// `HOST[:PORT]` (port 4433 when left out), with the name the server certificate must carry.
pub fn resolve(gateway: &str) -> Result<(SocketAddr, String)> {
    let (host, port) = match gateway.rsplit_once(':') {
        // A bare IPv6 address (colons, no brackets): no port.
        Some((host, _)) if !host.ends_with(']') && host.contains(':') => (gateway, tap::DEFAULT_PORT),
        Some((host, port)) => (host, port.parse().with_context(|| format!("{gateway}: the port is not a number"))?),
        None => (gateway, tap::DEFAULT_PORT),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    Ok((addr, host.to_string()))
}

/// The roots the gateway's server certificate must chain to: `ca_pem` when given, else the
/// system's.
fn roots(ca_pem: Option<&Path>) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading the gateway CA {}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(cert.with_context(|| format!("{} is not PEM", path.display()))?)?;
            }
            if roots.is_empty() {
                bail!("{} holds no certificate", path.display());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                bail!("the system has no trusted roots; give the gateway's CA with --ca FILE");
            }
        }
    }
    Ok(roots)
}

/// A close from the gateway, as an error the user can act on.
fn closed(code: CloseCode, text: &str) -> anyhow::Error {
    match code {
        CloseCode::Revoked => {
            anyhow!("the gateway revoked this machine's certificate: {text}; enroll again with a new token")
        }
        CloseCode::EnrollRefused => anyhow!("enrollment refused: {text}"),
        CloseCode::Unauthenticated => anyhow!("the gateway does not accept this machine's certificate: {text}"),
        other => anyhow!("the gateway closed the connection ({other:?}): {text}"),
    }
}

/// Enrolls this PC: makes its key, spends `token`, and keeps what the gateway gives.
pub async fn enroll(
    state: &StateDir,
    gateway: &str,
    token: &str,
    ca: Option<&Path>,
    uuid: Uuid,
    hostname: &str,
) -> Result<Enrollment> {
    enroll_from(state, gateway, token, ca, uuid, hostname, None).await
}

/// [`enroll`] from local address `local` (any when `None`; a load generator spreads its agents
/// over many).
pub async fn enroll_from(
    state: &StateDir,
    gateway: &str,
    token: &str,
    ca: Option<&Path>,
    uuid: Uuid,
    hostname: &str,
    local: Option<IpAddr>,
) -> Result<Enrollment> {
    let (addr, server_name) = resolve(gateway)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("making the machine's key")?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
        .serialize_request(&key)
        .context("making the certificate request")?;
    let tls = link::tls_client(roots(ca)?, None)?;
    let keepalive = Duration::from_secs(DEFAULT_KEEPALIVE_SECS.into());
    let (link, mut control) = link::dial(addr, &server_name, tls, keepalive, local)
        .await
        .with_context(|| format!("connecting to {gateway}"))?;
    control
        .write(&Message::Enroll {
            token: token.to_string(),
            uuid,
            hostname: hostname.to_string(),
            csr_der: csr.der().to_vec().into(),
        })
        .await?;
    let reply =
        tokio::time::timeout(CONNECT_TIMEOUT, control.read()).await.context("no answer to the enrollment")??;
    let (cert_der, signing_key, gateways) = match reply {
        Message::Enrolled { cert_der, ca_der: _, signing_key, gateways } => (cert_der, signing_key, gateways),
        Message::Close { code, text } => return Err(closed(code, &text)),
        other => bail!("the gateway answered the enrollment with {other:?}"),
    };
    link.close("enrolled").await;

    write_durable(&state.path("key.pem"), key.serialize_pem().as_bytes(), 0o600)?;
    let cert_pem = pem_block("CERTIFICATE", &cert_der);
    write_durable(&state.path("cert.pem"), cert_pem.as_bytes(), 0o644)?;
    match ca {
        Some(path) => {
            let pem = std::fs::read(path)?;
            write_durable(&state.path("gateway-ca.pem"), &pem, 0o644)?;
        }
        None => {
            let _ = std::fs::remove_file(state.path("gateway-ca.pem"));
        }
    }
    // A root's maintenance certificate names the silo that serves this machine: dial it, and
    // never the root (it serves no agents).
    let mut list = match own_entitlement(&cert_der).map(|e| e.location) {
        Some(location) => {
            info!(silo = %location, "enrolled through the root; served by the maintenance silo at {location}");
            vec![location]
        }
        None => vec![gateway.to_string()],
    };
    for other in gateways {
        if !list.contains(&other) {
            list.push(other);
        }
    }
    let enrollment = Enrollment {
        uuid,
        gateways: list,
        signing_key: hex::encode(signing_key),
        enrolled_at: time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    state.save_enrollment(&enrollment)?;
    let _ = std::fs::remove_file(state.path("config.json"));
    // A move to another silo left unfinished belongs to the enrollment it came with.
    let _ = std::fs::remove_file(state.path(moves::HANDOVER_FILE));
    set_mode(&state.path("key.pem"), 0o600)?;
    Ok(enrollment)
}

/// Whether `signed` is the root's (`root_key`) certification of a signing key for the silo that
/// `cert_der` (this machine's certificate) names, still valid at `now`; the certified key.
fn check_silo_key(root_key: &[u8], signed: &Signed, cert_der: &[u8], now: i64) -> Result<SiloKeyBody, String> {
    if !crate::signature::verifies(root_key, SignDomain::SiloKey, signed) {
        return Err("it is not signed by the root's key pinned at enrollment".into());
    }
    let body = SiloKeyBody::decode(&signed.payload).map_err(|e| format!("it does not decode: {e}"))?;
    let Some(mine) = own_entitlement(cert_der) else {
        return Err("this machine's certificate names no silo".into());
    };
    if body.silo != mine.silo {
        return Err(format!("it is for silo {}, and this machine is served by {}", body.silo, mine.silo));
    }
    if now >= body.not_after {
        return Err("the root's certification of it has ended".into());
    }
    Ok(body)
}

/// The maintenance entitlement this machine's certificate carries (`None`: an ordinary agent
/// certificate, or an entitlement that does not decode).
fn own_entitlement(cert_der: &[u8]) -> Option<protocols::entitlement::Entitlement> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, x509) = X509Certificate::from_der(cert_der).ok()?;
    let sans = x509.subject_alternative_name().ok()??;
    sans.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => protocols::entitlement::Entitlement::from_urn(uri)?.ok(),
        _ => None,
    })
}

/// The gateways to dial, in order. Read again each time: a move to another silo changes them.
fn gateways(state: &StateDir, enrollment: &Enrollment) -> Vec<String> {
    let enrolled = state.enrollment().ok().flatten().map(|e| e.gateways);
    let mut list = enrolled.unwrap_or_else(|| enrollment.gateways.clone());
    // The silo the certificate names comes first (a move interrupted between writing the
    // certificate and the gateways still gets there).
    if let Some(location) = moves::held_cert(state).ok().and_then(|der| own_entitlement(&der)).map(|e| e.location) {
        list.retain(|g| g != &location);
        list.insert(0, location);
    }
    if let Ok(Some(saved)) = state.config() {
        for gateway in saved.gateways {
            if !list.contains(&gateway) {
                list.push(gateway);
            }
        }
    }
    list
}

/// The TLS client of this machine: its certificate and key, trusting the gateway CA kept at
/// enrollment (else the system's roots).
fn tls_client(state: &StateDir) -> Result<Arc<rustls::ClientConfig>> {
    let ca = state.path("gateway-ca.pem");
    let roots = roots(ca.exists().then_some(ca.as_path()))?;
    let cert_pem = std::fs::read(state.path("cert.pem")).context("reading cert.pem")?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice()).collect::<Result<Vec<_>, _>>()?;
    let key_pem = std::fs::read(state.path("key.pem")).context("reading key.pem")?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())?.context("key.pem holds no key")?;
    link::tls_client(roots, Some((chain, key)))
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The running agent.
pub struct Agent {
    state: StateDir,
    enrollment: Enrollment,
    signing_key: Vec<u8>,
    source: Arc<dyn Collect>,
    spool: Spool,
    hostname: String,
    os: String,
    /// The local address to dial from (any when `None`).
    local: Option<IpAddr>,
    /// When the last report was taken (online or offline).
    last_report: Mutex<Option<Instant>>,
    /// Reports acknowledged by a gateway since start.
    acked: AtomicU64,
    /// A gateway session is up (past its welcome).
    connected: AtomicBool,
    /// Support actions: the local policy, the replay ledger, the results spool.
    actions: Actions,
    /// Messages and instructions for the PC user.
    inbox: Inbox,
    /// Relayed sessions.
    relay: Relay,
    /// Messages kept since start.
    messages_received: AtomicU64,
    /// The signing key of the maintenance silo of this session, once the root's certification of
    /// it checked out ([`Message::SiloKey`]): its configuration and its messages verify with it. Never
    /// actions.
    silo_key: Mutex<Option<[u8; 32]>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("uuid", &self.enrollment.uuid).finish_non_exhaustive()
    }
}

/// The configuration in force: the gateway's verified one, else the defaults.
fn effective(saved: Option<&SavedConfig>) -> (u32, u32) {
    match saved {
        Some(c) => (c.heartbeat_secs.max(5), c.keepalive_secs.clamp(1, 25)),
        None => (DEFAULT_HEARTBEAT_SECS, DEFAULT_KEEPALIVE_SECS),
    }
}

impl Agent {
    /// The agent of the enrolled state dir `state`, under the local policy in
    /// `STATE_DIR/policy.toml` (the defaults when there is none; [`Agent::with_policy`] sets
    /// another). An action left running by a previous process gets its result (interrupted).
    pub fn new(state: StateDir, source: Arc<dyn Collect>, hostname: String, os: String) -> Result<Agent> {
        let enrollment = state.require_enrollment()?;
        let signing_key = hex::decode(&enrollment.signing_key).ok().filter(|k| k.len() == 32).with_context(|| {
            format!("{}: the signing key is damaged; enroll again", state.path("enrollment.json").display())
        })?;
        let spool = Spool::new(state.spool_dir());
        let policy = LocalPolicy::load(&LocalPolicy::default_path(state.root()))?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let relay = Relay::new(state.clone(), policy.forward.ports.clone());
        let actions = Actions::open(&state, signing_key.clone(), enrollment.uuid, policy, now)?;
        let inbox = Inbox::open(&state)?;
        Ok(Agent {
            state,
            enrollment,
            signing_key,
            source,
            spool,
            hostname,
            os,
            local: None,
            last_report: Mutex::new(None),
            acked: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            actions,
            inbox,
            relay,
            messages_received: AtomicU64::new(0),
            silo_key: Mutex::new(None),
        })
    }

    /// Runs under `policy` instead of `STATE_DIR/policy.toml`'s.
    pub fn with_policy(mut self, policy: LocalPolicy) -> Agent {
        self.relay = Relay::new(self.state.clone(), policy.forward.ports.clone());
        self.actions.set_policy(policy);
        self
    }

    /// The local policy in force.
    pub fn policy(&self) -> &LocalPolicy {
        self.actions.policy()
    }

    /// Messages for the PC user kept since this agent started (copies not counted).
    pub fn messages_received(&self) -> u64 {
        self.messages_received.load(Ordering::Relaxed)
    }

    /// Dials from `local` (a load generator spreads its agents over many source addresses).
    pub fn bind_from(mut self, local: IpAddr) -> Agent {
        self.local = Some(local);
        self
    }

    /// The machine's UUID.
    pub fn uuid(&self) -> Uuid {
        self.enrollment.uuid
    }

    /// Reports acknowledged by a gateway since this agent started.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Whether a gateway session is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Takes a report into the spool without sending it (as while offline); its sequence.
    pub async fn spool_report(&self) -> Result<u64> {
        let (seq, _) = self.next_report().await?;
        Ok(seq)
    }

    /// Waits `pause` while offline, taking a report into the spool whenever a heartbeat comes
    /// due, so that an outage leaves a gap in nothing but delivery time.
    async fn wait_offline(&self, pause: Duration) -> Result<()> {
        let end = Instant::now() + pause;
        loop {
            let heartbeat = Duration::from_secs(effective(self.state.config().ok().flatten().as_ref()).0.into());
            let last = *self.last_report.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.map_or_else(Instant::now, |at| at + heartbeat);
            if due >= end {
                tokio::time::sleep_until(end).await;
                return Ok(());
            }
            tokio::time::sleep_until(due).await;
            let (seq, _) = self.next_report().await?;
            debug!(seq, "offline: report kept in the spool");
        }
    }

    /// Runs until `stop` resolves; a session open then is closed first.
    pub async fn run(&self, stop: impl Future<Output = ()>) -> Result<()> {
        let (mut work, queue, finished) = support::channels();
        tokio::select! {
            result = self.dial(stop, &mut work) => result,
            () = self.action_worker(queue, finished) => Ok(()),
        }
    }

    /// Sessions with the gateways, one after the other, until `stop` resolves.
    async fn dial(&self, stop: impl Future<Output = ()>, work: &mut Work) -> Result<()> {
        tokio::pin!(stop);
        let mut backoff = Duration::from_secs(1);
        let mut start = 0usize;
        loop {
            let gateways = self.gateways();
            let mut connected = false;
            for i in 0..gateways.len() {
                let gateway = &gateways[(start + i) % gateways.len()];
                match self.session(gateway, &mut connected, work, &mut stop).await {
                    Ok(SessionEnd::Stopped) => return Ok(()),
                    Ok(SessionEnd::Ended) => {}
                    Err(err) => {
                        warn!(%gateway, error = %format!("{err:#}"), "gateway session ended");
                        self.note_error(&format!("{gateway}: {err:#}"));
                    }
                }
                if connected {
                    // It worked here: come back to this gateway first.
                    start = (start + i) % gateways.len();
                    break;
                }
            }
            if connected {
                backoff = Duration::from_secs(1);
            }
            let jittered = backoff.mul_f64(0.5 + rand::random::<f64>());
            debug!(wait = ?jittered, "redialling after a pause");
            tokio::select! {
                result = self.wait_offline(jittered) => {
                    if let Err(err) = result {
                        warn!(error = %format!("{err:#}"), "cannot keep a report while offline");
                    }
                }
                _ = &mut stop => return Ok(()),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn gateways(&self) -> Vec<String> {
        gateways(&self.state, &self.enrollment)
    }

    fn note_error(&self, error: &str) {
        let mut status = self.state.status().ok().flatten().unwrap_or_default();
        status.connected_to = None;
        status.connected_since = None;
        status.last_error = Some(error.to_string());
        status.pid = std::process::id();
        let _ = self.state.save_status(&status);
    }

    fn tls_client(&self) -> Result<Arc<rustls::ClientConfig>> {
        tls_client(&self.state)
    }

    /// Verifies a signed configuration with the pinned key; `None` (and a warning) if it fails.
    fn verify_config(&self, signed: &Signed) -> Option<ConfigBody> {
        let silo_key = self.silo_key.lock().ok().and_then(|k| *k);
        let by_silo = silo_key.is_some_and(|key| crate::signature::verifies(&key, SignDomain::Config, signed));
        if !by_silo && !crate::signature::verifies(&self.signing_key, SignDomain::Config, signed) {
            warn!(
                "the gateway's configuration is signed neither by the key pinned at enrollment nor by a silo key the \
                 root certified: keeping the defaults"
            );
            return None;
        }
        match ConfigBody::decode(&signed.payload) {
            Ok(body) => Some(body),
            Err(err) => {
                warn!(error = %err, "the signed configuration does not decode: keeping the defaults");
                None
            }
        }
    }

    /// A maintenance silo's [`Message::SiloKey`]: its key is trusted for this session's
    /// configuration when the root (the key pinned at enrollment) certified it for the silo this
    /// machine's certificate names, and the certification has not ended.
    fn on_silo_key(&self, signed: &Signed) {
        let trusted = self.check_silo_key(signed, time::OffsetDateTime::now_utc().unix_timestamp());
        match &trusted {
            Ok(body) => info!(silo = %body.silo, "the silo's signing key is certified by the root"),
            Err(why) => warn!("refusing the silo's signing key: {why}; its configuration will be refused"),
        }
        if let Ok(mut key) = self.silo_key.lock() {
            *key = trusted.ok().map(|body| body.key);
        }
    }

    fn check_silo_key(&self, signed: &Signed, now: i64) -> Result<SiloKeyBody, String> {
        let cert = std::fs::read(self.state.path("cert.pem")).map_err(|e| format!("reading cert.pem: {e}"))?;
        let der = rustls_pemfile::certs(&mut cert.as_slice())
            .next()
            .and_then(|c| c.ok())
            .ok_or("cert.pem holds no certificate")?;
        check_silo_key(&self.signing_key, signed, &der, now)
    }

    /// One session with `gateway`, until it ends or `stop` resolves. The connection is closed
    /// either way, so that the gateway sees the agent go at once, not at its idle timeout.
    async fn session<S: Future<Output = ()> + Unpin>(
        &self,
        gateway: &str,
        connected: &mut bool,
        work: &mut Work,
        stop: &mut S,
    ) -> Result<SessionEnd> {
        // A silo key holds for the session that showed it.
        if let Ok(mut key) = self.silo_key.lock() {
            *key = None;
        }
        let saved = self.state.config().ok().flatten();
        let (heartbeat, keepalive) = effective(saved.as_ref());
        let (addr, server_name) = resolve(gateway)?;
        let keepalive = Duration::from_secs(keepalive.into());
        let dial = link::dial(addr, &server_name, self.tls_client()?, keepalive, self.local);
        let (link, mut control) = tokio::select! {
            dialled = dial => dialled?,
            () = &mut *stop => return Ok(SessionEnd::Stopped),
        };
        let result = tokio::select! {
            ended = self.greet(&link, &mut control, gateway, heartbeat, keepalive, connected, work) => {
                ended.map(|()| SessionEnd::Ended)
            }
            () = &mut *stop => Ok(SessionEnd::Stopped),
        };
        link.close(match result {
            Ok(SessionEnd::Stopped) => "stopping",
            Ok(SessionEnd::Ended) => "session ended",
            Err(_) => "error",
        })
        .await;
        result
    }

    /// Hello, welcome, then the session; `connected` once welcomed.
    #[allow(clippy::too_many_arguments)] // one call site; the session's parts, passed down
    async fn greet(
        &self,
        link: &Link,
        control: &mut Control,
        gateway: &str,
        heartbeat: u32,
        keepalive: Duration,
        connected: &mut bool,
        work: &mut Work,
    ) -> Result<()> {
        let consent = self.state.state()?.remote_help;
        let mut capabilities = Capabilities::TELEMETRY | Capabilities::ACTIONS | Capabilities::MESSAGES;
        if !link.needs_pings() {
            // QUIC: the gateway can open a stream per relayed session (TLS has the one stream).
            capabilities |= Capabilities::RELAY;
        }
        control
            .write(&Message::Hello {
                uuid: self.enrollment.uuid,
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                hostname: self.hostname.clone(),
                os: self.os.clone(),
                capabilities,
                remote_help: consent,
            })
            .await?;
        match tokio::time::timeout(CONNECT_TIMEOUT, control.read()).await.context("no welcome from the gateway")?? {
            // The heartbeat comes in the signed configuration that follows, not from here.
            Message::Welcome { .. } => {}
            Message::Close { code, text } => return Err(closed(code, &text)),
            other => bail!("the gateway answered the hello with {other:?}"),
        }
        *connected = true;
        self.connected.store(true, Ordering::Relaxed);
        let result = self.serve(link, control, gateway, heartbeat, keepalive, consent, work).await;
        self.connected.store(false, Ordering::Relaxed);
        result
    }

    /// A session past its welcome: sends what the spools hold (reports, then action results and
    /// message states), then a report on each heartbeat, and acts on what the gateway sends,
    /// until the connection ends.
    #[allow(clippy::too_many_arguments)] // one call site; the session's parts, passed down
    async fn serve(
        &self,
        link: &Link,
        control: &mut Control,
        gateway: &str,
        mut heartbeat: u32,
        keepalive: Duration,
        mut consent: bool,
        work: &mut Work,
    ) -> Result<()> {
        let since = time::OffsetDateTime::now_utc().unix_timestamp();
        info!(%gateway, remote = %link.remote(), transport = %link.transport(), uuid = %self.enrollment.uuid, "connected");
        let mut status = Status {
            connected_to: Some(gateway.to_string()),
            connected_since: Some(since),
            pid: std::process::id(),
            ..Status::default()
        };
        let _ = self.state.save_status(&status);

        // What the last connection left unacknowledged, oldest first: reports, then results.
        Agent::forget_finished(work);
        for seq in self.spool.sequences()? {
            if let Some(frame) = self.spool.frame(seq) {
                control.write_raw(&frame).await?;
            }
        }
        self.resend_support(control).await?;
        self.send_handover(control).await?;
        let mut tick = tokio::time::interval(Duration::from_secs(heartbeat.into()));
        let mut consent_check = tokio::time::interval(Duration::from_secs(2));
        let mut ping = tokio::time::interval(keepalive);
        let mut last_heard = Instant::now();
        // The status file is rewritten on an ack at most once a second (a spool flushed after an
        // outage acks many at once); one left unsaved is saved on the next consent check.
        let mut status_saved = Instant::now();
        let mut status_dirty = false;
        loop {
            tokio::select! {
                message = control.read() => match message.inspect(|_| last_heard = Instant::now())? {
                    Message::Ack { seq } => {
                        self.spool.acknowledged(seq)?;
                        self.acked.fetch_add(1, Ordering::Relaxed);
                        status.last_ack = Some(time::OffsetDateTime::now_utc().unix_timestamp());
                        status_dirty = true;
                        if status_saved.elapsed() >= Duration::from_secs(1) {
                            let _ = self.state.save_status(&status);
                            (status_saved, status_dirty) = (Instant::now(), false);
                        }
                        debug!(seq, "report acknowledged");
                    }
                    Message::Config(signed) => {
                        if let Some(body) = self.verify_config(&signed) {
                            let new_heartbeat = body.heartbeat_secs.max(5);
                            self.state.save_config(&SavedConfig {
                                issued_at: body.issued_at,
                                heartbeat_secs: body.heartbeat_secs,
                                keepalive_secs: body.keepalive_secs,
                                gateways: body.gateways,
                            })?;
                            if new_heartbeat != heartbeat {
                                heartbeat = new_heartbeat;
                                tick = tokio::time::interval(Duration::from_secs(heartbeat.into()));
                            }
                            info!(heartbeat_secs = heartbeat, "configuration from the gateway applied (signature verified)");
                        }
                    }
                    Message::SiloKey(signed) => self.on_silo_key(&signed),
                    Message::Action(signed) => self.on_action(control, &signed, work).await?,
                    Message::Message(signed) => self.on_message(control, &signed).await?,
                    Message::Receipt { id } => {
                        self.on_receipt(id);
                        self.handover_received(id);
                    }
                    Message::Move { cert_der, handover } => {
                        if self.on_move(&cert_der, &handover)? {
                            // Dial the new silo (the loop reads the new gateways).
                            return Ok(());
                        }
                    }
                    Message::Ping { nonce } => control.write(&Message::Pong { nonce }).await?,
                    Message::Pong { .. } | Message::Welcome { .. } => {}
                    Message::Close { code, text } => return Err(closed(code, &text)),
                    other => debug!(message = ?other, "ignoring a message this agent does not act on"),
                },
                _ = tick.tick() => {
                    let (_, frame) = self.next_report().await?;
                    control.write_raw(&frame).await?;
                }
                Some(finished) = work.done.recv() => self.send_finished(control, finished).await?,
                (send, recv) = link.accept_stream() => self.relay.spawn(recv, send),
                _ = consent_check.tick() => {
                    if status_dirty {
                        let _ = self.state.save_status(&status);
                        (status_saved, status_dirty) = (Instant::now(), false);
                    }
                    let now = self.state.state()?.remote_help;
                    if now != consent {
                        consent = now;
                        control.write(&Message::RemoteHelp { enabled: now }).await?;
                        info!(enabled = now, "told the gateway of the PC user's consent to remote help");
                    }
                    self.send_states(control, false).await?;
                }
                _ = ping.tick(), if link.needs_pings() => {
                    control.write(&Message::Ping { nonce: rand::random() }).await?;
                }
                () = link.silent(last_heard) => bail!("nothing heard from the gateway within {:?}", link::IDLE_TIMEOUT),
                reason = link.closed() => bail!("connection lost: {reason}"),
            }
        }
    }

    /// Collects, numbers and spools a report; its sequence and frame.
    async fn next_report(&self) -> Result<(u64, Vec<u8>)> {
        *self.last_report.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let report = self.source.collect().await;
        let mut state: AgentState = self.state.state()?;
        let seq = state.next_seq;
        state.next_seq += 1;
        self.state.save_state(&state)?;
        let message = Message::Report { seq, taken_at: time::OffsetDateTime::now_utc().unix_timestamp(), report };
        Ok((seq, self.spool.keep(seq, &message)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_addresses_take_the_default_port() {
        assert_eq!(resolve("127.0.0.1").unwrap(), ("127.0.0.1:4433".parse().unwrap(), "127.0.0.1".to_string()));
        assert_eq!(resolve("127.0.0.1:9").unwrap(), ("127.0.0.1:9".parse().unwrap(), "127.0.0.1".to_string()));
        assert_eq!(resolve("[::1]:9").unwrap(), ("[::1]:9".parse().unwrap(), "::1".to_string()));
        assert!(resolve("127.0.0.1:port").is_err());
    }

    #[test]
    fn a_silo_key_counts_only_when_the_root_certified_it_for_this_machines_silo() {
        use crate::signature::testing;
        let entitlement = protocols::entitlement::Entitlement {
            service: "support".into(),
            tier: "standard".into(),
            silo: "silo-a".into(),
            location: "127.0.0.1:4433".into(),
            subscriber: uuid::Uuid::new_v4().to_string(),
            not_after: 2_000_000_000,
        };
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(entitlement.to_urn().unwrap().try_into().unwrap())];
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap().der().to_vec();
        let root = testing::key();
        let body = |silo: &str, not_after: i64| {
            let mut out = bytes::BytesMut::new();
            SiloKeyBody { silo: silo.into(), key: [5; 32], issued_at: 0, not_after }.encode(&mut out);
            out.to_vec()
        };
        let good = testing::sign(&root, SignDomain::SiloKey, body("silo-a", 100));
        assert_eq!(check_silo_key(&testing::public(&root), &good, &cert, 99).map(|b| b.key), Ok([5; 32]));
        // Ended, for another silo, by another key, in another domain, tampered: refused.
        assert!(check_silo_key(&testing::public(&root), &good, &cert, 100).unwrap_err().contains("ended"));
        let other_silo = testing::sign(&root, SignDomain::SiloKey, body("silo-b", 100));
        assert!(check_silo_key(&testing::public(&root), &other_silo, &cert, 99).unwrap_err().contains("silo-b"));
        let rogue = testing::sign(&testing::key(), SignDomain::SiloKey, body("silo-a", 100));
        assert!(check_silo_key(&testing::public(&root), &rogue, &cert, 99).is_err());
        let config_domain = testing::sign(&root, SignDomain::Config, body("silo-a", 100));
        assert!(check_silo_key(&testing::public(&root), &config_domain, &cert, 99).is_err());
        let mut tampered = good.clone();
        let mut payload = tampered.payload.to_vec();
        payload[10] ^= 1;
        tampered.payload = payload.into();
        assert!(check_silo_key(&testing::public(&root), &tampered, &cert, 99).is_err());
        // A machine whose certificate names no silo trusts no silo key.
        let plain = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().self_signed(&key).unwrap();
        assert!(check_silo_key(&testing::public(&root), &good, plain.der(), 99).unwrap_err().contains("names no silo"));
    }

    #[test]
    fn pem_blocks_read_back() {
        let der: Vec<u8> = (0..=255u8).collect();
        let pem = pem_block("CERTIFICATE", &der);
        let back = rustls_pemfile::certs(&mut pem.as_bytes()).next().unwrap().unwrap();
        assert_eq!(back.as_ref(), der.as_slice());
    }

    #[test]
    fn the_defaults_hold_until_a_verified_config_and_are_clamped() {
        assert_eq!(effective(None), (DEFAULT_HEARTBEAT_SECS, DEFAULT_KEEPALIVE_SECS));
        let saved = SavedConfig { issued_at: 0, heartbeat_secs: 1, keepalive_secs: 90, gateways: vec![] };
        assert_eq!(effective(Some(&saved)), (5, 25));
    }
}
