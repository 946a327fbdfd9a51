//! The connection an API or portal request came on, as the handlers see it (an axum extension
//! set by `api::serve`): the client's address, and the connection's place under the caps.
//!
//! What it does not do: count connections (`limits::ConnectionCaps`).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::limits::ConnectionSlot;

/// The connection a request came on: the technician's address, and the connection's place under
/// the caps (a relay holds it for as long as it runs).
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    remote: SocketAddr,
    _slot: Arc<ConnectionSlot>,
}

impl Connection {
    pub(crate) fn new(remote: SocketAddr, slot: ConnectionSlot) -> Connection {
        Connection { remote, _slot: Arc::new(slot) }
    }

    /// The address the request came from (a load balancer's PROXY header's, behind one).
    pub(crate) fn remote_ip(&self) -> std::net::IpAddr {
        self.remote.ip()
    }

    /// The address and port the request came from.
    pub(crate) fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// A connection from `remote` outside any real cap, for in-process requests in tests.
    #[cfg(test)]
    pub(crate) fn for_test(remote: SocketAddr) -> Connection {
        let caps = Arc::new(crate::limits::ConnectionCaps::new(usize::MAX, usize::MAX));
        let slot = caps.try_enter(remote.ip()).expect("an unbounded cap admits");
        Connection::new(remote, slot)
    }
}
