//! Device life-cycle records (hello, connect, ports, keepalive, disconnect, duplicate UUIDs),
//! written to the store off the tunnels' hot path by one blocking thread, in arrival order.
//!
//! Tunnel tasks hand events to a bounded queue; when the store falls behind, they wait (so a slow
//! disk slows new handshakes instead of growing memory). What it does not do: reads (the API
//! reads the store directly).

use std::net::SocketAddr;
use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::store::Store;

/// Events queued before tunnel tasks wait for the store.
const QUEUE: usize = 16 * 1024;

#[derive(Debug)]
pub enum DeviceEvent {
    Hello { uuid: Uuid, at: OffsetDateTime, remote: SocketAddr },
    Connected { uuid: Uuid, at: OffsetDateTime, remote: SocketAddr },
    Ports { uuid: Uuid, ports: Vec<u16> },
    Keepalive { uuid: Uuid, at: OffsetDateTime },
    Disconnected { uuid: Uuid, at: OffsetDateTime, reason: String },
    Duplicate { uuid: Uuid, at: OffsetDateTime, previous: SocketAddr, newer: SocketAddr },
}

#[derive(Debug, Clone)]
pub struct Journal {
    tx: mpsc::Sender<DeviceEvent>,
}

impl Journal {
    /// Starts the writer thread. It ends when every `Journal` clone is dropped, after writing
    /// what was queued; `join` waits for that.
    pub fn start(store: Arc<Store>) -> std::io::Result<(Journal, std::thread::JoinHandle<()>)> {
        let (tx, mut rx) = mpsc::channel::<DeviceEvent>(QUEUE);
        let handle = std::thread::Builder::new().name("tether-journal".into()).spawn(move || {
            while let Some(event) = rx.blocking_recv() {
                if let Err(err) = apply(&store, &event) {
                    tracing::error!(error = %err, ?event, "could not record a device event in the store");
                }
            }
        })?;
        Ok((Journal { tx }, handle))
    }

    pub async fn record(&self, event: DeviceEvent) {
        if self.tx.send(event).await.is_err() {
            tracing::warn!("device event dropped: the journal is shut down");
        }
    }
}

fn apply(store: &Store, event: &DeviceEvent) -> Result<(), crate::store::StoreError> {
    match event {
        DeviceEvent::Hello { uuid, at, remote } => store.record_hello(*uuid, *at, *remote),
        DeviceEvent::Connected { uuid, at, remote } => store.record_connected(*uuid, *at, *remote),
        DeviceEvent::Ports { uuid, ports } => store.record_ports(*uuid, ports),
        DeviceEvent::Keepalive { uuid, at } => store.record_keepalive(*uuid, *at),
        DeviceEvent::Disconnected { uuid, at, reason } => store.record_disconnect(*uuid, *at, reason),
        DeviceEvent::Duplicate { uuid, at, previous, newer } => store.record_duplicate(*uuid, *at, *previous, *newer),
    }
}
