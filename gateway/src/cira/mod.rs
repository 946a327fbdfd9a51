//! The CIRA listener: TLS on 4433, and one task per AMT connection driving an APF
//! [`ServerSession`](protocols::session::ServerSession) (see [`driver`]).
//!
//! Admission before authentication is cheap and bounded: a source must pass the connection-rate
//! limit, then find room in the pool of unauthenticated connections (a [`ConnectionCaps`] with a total
//! and a per-source cap, apart from the established tunnels' slots, so that connections that
//! never authenticate can never fill the tunnel slots), then finish its TLS handshake within its
//! timeout; the APF handshake and the authentication wait are bounded by the driver. A tunnel
//! slot is taken only once the device has authenticated.
//!
//! What it does not do: decide who a device is (`identity`), or the technician's side (`api`).

pub mod driver;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::limits::{CapReached, ConnectionCaps, ConnectionSlot};
use crate::metrics::RejectReason;
use crate::state::Shared;

/// Accepts CIRA connections until shutdown.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let tunnel_slots = Arc::new(Semaphore::new(shared.config.apf.max_tunnels));
    let pending = Arc::new(
        ConnectionCaps::new(shared.config.apf.max_pending_connections, shared.config.apf.max_pending_per_source)
            .with_gauge(shared.metrics.pending_connections().clone()),
    );
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %err, "CIRA accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        if !shared.limiter.allow_connection(remote.ip()) {
            shared.metrics.connection_rejected(RejectReason::ConnectionRate);
            debug!(%remote, "connection refused: over the per-source connection rate");
            continue;
        }
        let slot = match pending.try_enter(remote.ip()) {
            Ok(slot) => slot,
            Err(cap) => {
                let reason = match cap {
                    CapReached::Total(_) => RejectReason::PendingFull,
                    CapReached::PerSource(_) => RejectReason::PendingPerSource,
                };
                shared.metrics.connection_rejected(reason);
                debug!(%remote, reason = reason.as_str(), "connection refused: unauthenticated pool full");
                continue;
            }
        };
        // Ids in accept order: a newer connection has a larger id (see `identity::claim`).
        let id = shared.registry.next_id();
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        let tunnel_slots = Arc::clone(&tunnel_slots);
        tokio::spawn(async move {
            handle_connection(tcp, remote, id, acceptor, shared, slot, tunnel_slots).await;
        });
    }
}

async fn handle_connection(
    tcp: TcpStream,
    remote: SocketAddr,
    id: u64,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    pending: ConnectionSlot,
    tunnel_slots: Arc<Semaphore>,
) {
    let started = Instant::now();
    let tls = match tokio::time::timeout(shared.tls_handshake_timeout(), acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            shared.metrics.connection_rejected(RejectReason::TlsHandshake);
            info!(%remote, error = %err, "TLS handshake failed (is the device provisioned with this gateway's CA?)");
            return;
        }
        Err(_) => {
            shared.metrics.connection_rejected(RejectReason::TlsHandshake);
            debug!(%remote, "TLS handshake timed out");
            return;
        }
    };
    shared.metrics.tls_handshake(started.elapsed().as_secs_f64());
    debug!(%remote, "TLS established");
    driver::Tunnel::new(shared, remote, id, pending, tunnel_slots).run(tls).await;
}
