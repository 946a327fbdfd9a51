//! The CIRA listener: TLS on 4433, and one task per AMT connection driving an APF
//! [`ServerSession`](protocols::session::ServerSession) (see [`driver`]).
//!
//! Admission before authentication is cheap and bounded: a source must pass the connection-rate
//! limit, then find room in the pool of unauthenticated connections ([`PendingPool`]: a total
//! and a per-source cap, apart from the established tunnels' slots, so that connections that
//! never authenticate can never fill the tunnel slots), then finish its TLS handshake within its
//! timeout; the APF handshake and the authentication wait are bounded by the driver. A tunnel
//! slot is taken only once the device has authenticated.
//!
//! What it does not do: decide who a device is (`identity`), or the technician's side (`api`).

pub mod driver;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::limits::Source;
use crate::metrics::RejectReason;
use crate::state::Shared;

/// Accepts CIRA connections until shutdown.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let tunnel_slots = Arc::new(Semaphore::new(shared.config.apf.max_tunnels));
    let pending = Arc::new(PendingPool::new(
        shared.config.apf.max_pending_connections,
        shared.config.apf.max_pending_per_source,
        shared.metrics.pending_connections().clone(),
    ));
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
            Err(reason) => {
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
    pending: PendingSlot,
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

/// The pool of connections that have not authenticated yet: at most `max_total`, and at most
/// `max_per_source` from one IPv4 address or IPv6 /64.
#[derive(Debug)]
pub struct PendingPool {
    max_total: usize,
    max_per_source: usize,
    state: Mutex<PoolState>,
    gauge: IntGauge,
}

#[derive(Debug, Default)]
struct PoolState {
    total: usize,
    per_source: HashMap<Source, usize>,
}

impl PendingPool {
    pub fn new(max_total: usize, max_per_source: usize, gauge: IntGauge) -> Self {
        Self { max_total, max_per_source, state: Mutex::default(), gauge }
    }

    /// A place in the pool for a connection from `ip`, held until the slot is dropped.
    pub fn try_enter(self: &Arc<Self>, ip: IpAddr) -> Result<PendingSlot, RejectReason> {
        let source = Source::from(ip);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.total >= self.max_total {
            return Err(RejectReason::PendingFull);
        }
        let count = state.per_source.entry(source).or_insert(0);
        if *count >= self.max_per_source {
            return Err(RejectReason::PendingPerSource);
        }
        *count += 1;
        state.total += 1;
        self.gauge.inc();
        Ok(PendingSlot { pool: Some(Arc::clone(self)), source })
    }

    /// Connections in the pool now.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).total
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A place in the [`PendingPool`]; dropping it (or [`PendingSlot::leave`]) frees it.
#[derive(Debug)]
pub struct PendingSlot {
    pool: Option<Arc<PendingPool>>,
    source: Source,
}

impl PendingSlot {
    /// Leaves the pool (the connection authenticated, or ended).
    pub fn leave(&mut self) {
        let Some(pool) = self.pool.take() else { return };
        let mut state = pool.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.total = state.total.saturating_sub(1);
        if let Some(count) = state.per_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                state.per_source.remove(&self.source);
            }
        }
        pool.gauge.dec();
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_caps_each_source_and_the_total_and_frees_on_drop() {
        let gauge = IntGauge::new("test_pending", "test").unwrap();
        let pool = Arc::new(PendingPool::new(5, 2, gauge.clone()));
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        let mut held = vec![pool.try_enter(a).unwrap(), pool.try_enter(a).unwrap()];
        assert_eq!(pool.try_enter(a).unwrap_err(), RejectReason::PendingPerSource);
        held.push(pool.try_enter(b).unwrap());
        held.push(pool.try_enter(b).unwrap());
        held.push(pool.try_enter("198.18.0.3".parse().unwrap()).unwrap());
        assert_eq!(pool.try_enter("198.18.0.4".parse().unwrap()).unwrap_err(), RejectReason::PendingFull);
        assert_eq!(gauge.get(), 5);
        held[0].leave();
        held[0].leave();
        assert_eq!(pool.len(), 4);
        assert!(pool.try_enter(a).is_ok());
        drop(held);
        assert!(pool.is_empty() && gauge.get() == 0);
        assert!(pool.state.lock().unwrap().per_source.is_empty());
    }
}
