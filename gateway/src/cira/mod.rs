//! The CIRA listener: TLS on 4433, and one task per AMT connection driving an APF
//! [`ServerSession`](protocols::session::ServerSession) (see [`driver`]).
//!
//! Admission before authentication is cheap and bounded: an accepted connection must find a file
//! in the open-files budget ([`crate::files`]; else it is closed at once), its source must pass
//! the connection-rate limit, then find room in the pool of unauthenticated connections (a
//! [`ConnectionCaps`] with a total and a per-source cap, apart from the established tunnels'
//! slots, so that connections that never authenticate can never fill the tunnel slots), then finish its TLS handshake within its
//! timeout; the APF handshake and the authentication wait are bounded by the driver. A tunnel
//! slot is taken only once the device has authenticated. Behind a load balancer listed in
//! `proxy.trusted`, every one of these checks applies to the device's address from the PROXY v2
//! header, read first (bounded by `proxy.header_timeout_ms`).
//!
//! The same port takes Tether agents over TLS where UDP is blocked: the TLS client hello is read
//! first, and one offering ALPN `tether/1` (AMT offers none) is handshaken with the agents' TLS
//! configuration and handed to their session (`agents`), under the agents' own limits. Everything
//! before the hello (file budget, pool, rate, PROXY header) applies to both alike.
//!
//! What it does not do: decide who a device is (`identity`), or the technician's side (`api`).

pub mod driver;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::LazyConfigAcceptor;
use tracing::{debug, info, warn};

use crate::files::{AcceptBackoff, FileGuard, FileUse};
use crate::limits::{CapReached, ConnectionCaps, ConnectionSlot};
use crate::metrics::{HandshakeKind, Listener, RejectReason};
use crate::proxy_header;
use crate::state::Shared;

/// The TLS configurations of the port: AMT's CIRA, and the agents' fallback.
#[derive(Debug, Clone)]
pub struct Acceptors {
    pub cira: Arc<rustls::ServerConfig>,
    pub agents: Arc<crate::agents::Agents>,
}

/// Accepts CIRA connections (and agents over TLS) until shutdown.
pub async fn serve(listener: TcpListener, acceptor: Acceptors, shared: Arc<Shared>) {
    let tunnel_slots = Arc::new(Semaphore::new(shared.config.apf.max_tunnels));
    let pending = Arc::new(
        ConnectionCaps::new(shared.config.apf.max_pending_connections, shared.config.apf.max_pending_per_source)
            .with_gauge(shared.metrics.pending_connections().clone()),
    );
    // Connections from a load balancer waiting for their PROXY header: bounded like the pool.
    let header_reads = Arc::new(Semaphore::new(shared.config.apf.max_pending_connections));
    let mut shutdown = shared.shutdown.clone();
    let mut backoff = AcceptBackoff::new(Listener::Cira);
    let mut file_limit_logged: Option<Instant> = None;
    loop {
        let (mut tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    backoff.failed(&err, &shared.metrics).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        backoff.accepted();
        // Near the open-files limit: close at once (the device sees the connection end and
        // retries later), keeping the reserve for the tunnels already held.
        let Some(file) = shared.files.try_take(FileUse::Device) else {
            shared.metrics.connection_rejected(RejectReason::FileLimit);
            if file_limit_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                file_limit_logged = Some(Instant::now());
                warn!(
                    ceiling = shared.files.device_ceiling(),
                    "refusing new device connections: the open-files budget is spent (raise LimitNOFILE)"
                );
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, shared, tunnel_slots, pending) =
            (acceptor.clone(), Arc::clone(&shared), Arc::clone(&tunnel_slots), Arc::clone(&pending));
        if shared.config.proxy.trusted.contains(peer.ip()) {
            // The device's own address comes in the balancer's PROXY header: every limit below
            // applies to it, never to the balancer.
            let Ok(permit) = Arc::clone(&header_reads).try_acquire_owned() else {
                shared.metrics.connection_rejected(RejectReason::PendingFull);
                continue;
            };
            tokio::spawn(async move {
                let timeout = Duration::from_millis(shared.config.proxy.header_timeout_ms);
                let remote = match proxy_header::read_header(&mut tcp, timeout).await {
                    Ok(Some(remote)) => remote,
                    // A health check (LOCAL), or a family without an address.
                    Ok(None) => return,
                    Err(err) => {
                        shared.metrics.connection_rejected(RejectReason::ProxyHeader);
                        return warn!(balancer = %peer, error = %err, "bad PROXY header from a load balancer");
                    }
                };
                drop(permit);
                if let Some(slot) = admit(&shared, &pending, remote) {
                    let id = shared.registry.next_id();
                    handshake(tcp, remote, id, acceptor, shared, slot, tunnel_slots, file).await;
                }
            });
            continue;
        }
        let Some(slot) = admit(&shared, &pending, peer) else { continue };
        // Ids in accept order: a newer connection has a larger id (see `identity::claim`).
        let id = shared.registry.next_id();
        // The handshake in one task, the tunnel in another: the tunnel's task then holds only
        // what an established tunnel needs (docs/benchmarks.md, "Per-tunnel memory").
        tokio::spawn(handshake(tcp, peer, id, acceptor, shared, slot, tunnel_slots, file));
    }
}

/// The cheap checks before TLS: room in the pool of unauthenticated connections, then the
/// source's connection rate. In that order, so that a redial turned away because the pool is full
/// does not spend the source's budget (nor what it may bring back after a restart). A source
/// bringing back the tunnels it held before a restart may have that many in the pool at once,
/// beyond `apf.max_pending_per_source` (a big NAT's devices all redial together).
fn admit(shared: &Shared, pending: &Arc<ConnectionCaps>, remote: SocketAddr) -> Option<ConnectionSlot> {
    // The remembered table is read only when the usual per-source cap is reached.
    let entered = match pending.try_enter(remote.ip()) {
        Err(CapReached::PerSource(_)) => {
            pending.try_enter_allowing(remote.ip(), shared.limiter.remembered_for(remote.ip()) as usize)
        }
        other => other,
    };
    let slot = match entered {
        Ok(slot) => slot,
        Err(cap) => {
            let reason = match cap {
                CapReached::Total(_) => RejectReason::PendingFull,
                CapReached::PerSource(_) => RejectReason::PendingPerSource,
            };
            shared.metrics.connection_rejected(reason);
            debug!(%remote, reason = reason.as_str(), "connection refused: unauthenticated pool full");
            return None;
        }
    };
    if !shared.limiter.allow_connection(remote.ip()) {
        shared.metrics.connection_rejected(RejectReason::ConnectionRate);
        debug!(%remote, "connection refused: over the per-source connection rate");
        return None;
    }
    Some(slot)
}

/// What the TLS handshake made of a connection.
enum Handshaken {
    Cira(tokio_rustls::server::TlsStream<TcpStream>),
    Agent(tokio_rustls::server::TlsStream<TcpStream>, OwnedSemaphorePermit),
    /// An agent, refused: `agents.max_pending` connections are in their handshake already.
    AgentsFull,
}

/// The TLS handshake (with the agents' configuration when the hello offers ALPN `tether/1`),
/// then what drives the connection, in a task of its own that holds `file` until it ends (the
/// tunnel's task then holds only what an established tunnel needs: docs/benchmarks.md,
/// "Per-tunnel memory").
#[allow(clippy::too_many_arguments)]
async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    id: u64,
    acceptors: Acceptors,
    shared: Arc<Shared>,
    pending: ConnectionSlot,
    tunnel_slots: Arc<Semaphore>,
    file: FileGuard,
) {
    let started = Instant::now();
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
        let agent = start.client_hello().alpn().is_some_and(|mut offered| offered.any(|p| p == protocols::tap::ALPN));
        if !agent {
            return Ok(Handshaken::Cira(start.into_stream(Arc::clone(&acceptors.cira)).await?));
        }
        // A place among the agents' pending connections before the handshake's work.
        let Some(permit) = acceptors.agents.try_pending() else { return Ok(Handshaken::AgentsFull) };
        let tls = start.into_stream(Arc::clone(&acceptors.agents.tls)).await?;
        Ok::<_, std::io::Error>(Handshaken::Agent(tls, permit))
    };
    let tls = match tokio::time::timeout(shared.tls_handshake_timeout(), handshake).await {
        Ok(Ok(Handshaken::Cira(tls))) => tls,
        Ok(Ok(Handshaken::Agent(tls, permit))) => {
            debug!(%remote, "an agent over TLS (ALPN tether/1)");
            // The CIRA pool's place goes; the agents' limits hold the connection from here.
            drop(pending);
            let session = Arc::clone(&acceptors.agents).run_tls(tls, remote, shared, permit);
            tokio::spawn(session.map(move |()| drop(file)));
            return;
        }
        Ok(Ok(Handshaken::AgentsFull)) => {
            shared.metrics.connection_rejected(RejectReason::PendingFull);
            return debug!(%remote, "agent over TLS refused: agents.max_pending reached");
        }
        Ok(Err(err)) => {
            shared.metrics.connection_rejected(RejectReason::TlsHandshake);
            return info!(%remote, error = %err, "TLS handshake failed (is the device provisioned with this gateway's CA?)");
        }
        Err(_) => {
            shared.metrics.connection_rejected(RejectReason::TlsHandshake);
            return debug!(%remote, "TLS handshake timed out");
        }
    };
    let kind = match tls.get_ref().1.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => HandshakeKind::Resumed,
        _ => HandshakeKind::Full,
    };
    shared.metrics.tls_handshake(started.elapsed().as_secs_f64(), kind);
    debug!(%remote, "TLS established");
    let tunnel = driver::Tunnel::new(shared, remote, id, pending, tunnel_slots).run(tls);
    tokio::spawn(tunnel.map(move |()| drop(file)));
}
