//! The live registry: which device has which kind of tunnel on this gateway right now, and the
//! handle through which anyone inside the gateway uses a tunnel, whatever its transport.
//!
//! A tunnel task owns its connection and protocol session; everyone else holds a [`TunnelHandle`]
//! (a bounded command queue) and asks it to open a [`DeviceStream`] to a port, to prove it is
//! alive, or to close. Entries are keyed by device and kind of tunnel, so a PC reachable over CIRA
//! and over the agent keeps both. Who may take a UUID's place is decided in `identity`; this
//! module only offers the atomic operations it needs ([`Registry::try_insert`],
//! [`Registry::replace_if`], [`Registry::remove`] by connection id).
//!
//! What it does not do: persistence (`journal`, `store`), or speak any tunnel protocol (`cira`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::metrics::CloseReason;
pub use crate::metrics::TunnelKind;
use crate::stream::DeviceStream;

/// A request to a tunnel task.
#[derive(Debug)]
pub enum TunnelCommand {
    /// Open a stream to a device port (boxed: every tunnel's command queue holds a block of 32
    /// commands from the start, so the enum's size is paid per idle tunnel).
    Open(Box<OpenRequest>),
    /// Prove the device is alive: answer once it has replied to a fresh keepalive request.
    /// Dropping `reply` unanswered means the tunnel is gone.
    Probe { reply: oneshot::Sender<Liveness> },
    /// Close the tunnel (`Replaced`: a newer connection took the UUID over; `Shutdown`).
    Close { reason: CloseReason },
    /// New support actions or messages wait in the store for this machine (agents; other
    /// tunnels ignore it).
    Deliver,
}

/// A technician's request for a stream to a device port.
#[derive(Debug)]
pub struct OpenRequest {
    pub port: u16,
    /// Who asked, for the device's records (APF's originator address and port).
    pub originator: SocketAddr,
    pub reply: oneshot::Sender<Result<DeviceStream, OpenRefused>>,
}

/// What a liveness probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The device answered.
    Alive,
    /// The tunnel is not in a state to be probed (still in its handshake) or has too many probes
    /// outstanding; the claim is refused rather than risk evicting a live device.
    Busy,
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenRefused {
    #[error("device {0} is not connected to this gateway")]
    NotConnected(Uuid),
    #[error("the device does not forward port {0}")]
    PortNotForwarded(u16),
    #[error("too many channels are open on this device's tunnel")]
    TooManyChannels,
    #[error("the device refused the channel ({0})")]
    DeviceRefused(String),
    /// The PC (or its user) does not allow it: remote help is off, or the port is not in the
    /// agent's local policy. The text says which.
    #[error("{0}")]
    NotAllowed(String),
    #[error("the device did not answer the channel open in time")]
    Timeout,
    #[error("the tunnel closed")]
    TunnelGone,
}

/// A live tunnel, as others see it.
#[derive(Debug, Clone)]
pub struct TunnelHandle {
    /// Unique per connection and increasing in accept order: a newer connection has a larger id.
    pub id: u64,
    pub uuid: Uuid,
    pub kind: TunnelKind,
    pub remote: SocketAddr,
    pub connected_since: OffsetDateTime,
    /// Why the device dialled (APF PROTOCOL_VERSION's trigger reason: 1 the PC user asked for
    /// help, 2 an alert, 4 periodic; 0 when the device does not say).
    pub trigger_reason: u32,
    pub commands: mpsc::Sender<TunnelCommand>,
    pub ports: Arc<Mutex<BTreeSet<u16>>>,
}

impl TunnelHandle {
    pub fn ports(&self) -> Vec<u16> {
        self.ports.lock().map(|p| p.iter().copied().collect()).unwrap_or_default()
    }

    /// Opens a stream to `port` through this tunnel, waiting at most `timeout`.
    pub async fn open_stream(
        &self,
        port: u16,
        originator: SocketAddr,
        timeout: Duration,
    ) -> Result<DeviceStream, OpenRefused> {
        let (reply, answer) = oneshot::channel();
        let request = TunnelCommand::Open(Box::new(OpenRequest { port, originator, reply }));
        let work = async {
            self.commands.send(request).await.map_err(|_| OpenRefused::TunnelGone)?;
            answer.await.map_err(|_| OpenRefused::TunnelGone)?
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| OpenRefused::Timeout)?
    }

    /// Asks the device to prove it is alive within `timeout`. `None`: no answer (dead or gone).
    pub async fn probe(&self, timeout: Duration) -> Option<Liveness> {
        let (reply, answer) = oneshot::channel();
        let work = async {
            self.commands.send(TunnelCommand::Probe { reply }).await.ok()?;
            answer.await.ok()
        };
        tokio::time::timeout(timeout, work).await.ok().flatten()
    }

    /// Tells the tunnel to close; never waits (a full queue is retried from a task).
    pub fn close(&self, reason: CloseReason) {
        if let Err(mpsc::error::TrySendError::Full(command)) = self.commands.try_send(TunnelCommand::Close { reason }) {
            let commands = self.commands.clone();
            tokio::spawn(async move {
                let _ = commands.send(command).await;
            });
        }
    }
}

/// Live tunnels by device and kind.
#[derive(Debug, Default)]
pub struct Registry {
    tunnels: DashMap<(Uuid, TunnelKind), TunnelHandle>,
    next_id: AtomicU64,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh connection id; call in accept order.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers `handle` if its key is free; otherwise returns the tunnel holding it.
    pub fn try_insert(&self, handle: TunnelHandle) -> Result<(), TunnelHandle> {
        match self.tunnels.entry((handle.uuid, handle.kind)) {
            Entry::Occupied(current) => Err(current.get().clone()),
            Entry::Vacant(slot) => {
                slot.insert(handle);
                Ok(())
            }
        }
    }

    /// Puts `handle` in place of the tunnel with connection id `current`, if that one still holds
    /// the key (or the key is free); false if another tunnel took it meanwhile.
    pub fn replace_if(&self, current: u64, handle: TunnelHandle) -> bool {
        match self.tunnels.entry((handle.uuid, handle.kind)) {
            Entry::Occupied(mut slot) if slot.get().id == current => {
                slot.insert(handle);
                true
            }
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) => {
                slot.insert(handle);
                true
            }
        }
    }

    /// Removes the tunnel for this key if it is still the one with `id`.
    pub fn remove(&self, uuid: Uuid, kind: TunnelKind, id: u64) -> bool {
        self.tunnels.remove_if(&(uuid, kind), |_, h| h.id == id).is_some()
    }

    /// Whether the tunnel with connection id `id` holds this key (no handle cloned).
    pub fn holds(&self, uuid: Uuid, kind: TunnelKind, id: u64) -> bool {
        self.tunnels.get(&(uuid, kind)).is_some_and(|h| h.id == id)
    }

    pub fn get(&self, uuid: Uuid, kind: TunnelKind) -> Option<TunnelHandle> {
        self.tunnels.get(&(uuid, kind)).map(|h| h.clone())
    }

    /// Any live tunnel to this device (CIRA first).
    pub fn any(&self, uuid: Uuid) -> Option<TunnelHandle> {
        TunnelKind::ALL.iter().find_map(|kind| self.get(uuid, *kind))
    }

    pub fn len(&self) -> usize {
        self.tunnels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tunnels.is_empty()
    }

    /// Every live tunnel (a snapshot).
    pub fn snapshot(&self) -> Vec<TunnelHandle> {
        self.tunnels.iter().map(|e| e.value().clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(id: u64, uuid: Uuid, kind: TunnelKind) -> (TunnelHandle, mpsc::Receiver<TunnelCommand>) {
        let (commands, rx) = mpsc::channel(4);
        let handle = TunnelHandle {
            id,
            uuid,
            kind,
            remote: "198.18.0.1:1".parse().unwrap(),
            connected_since: OffsetDateTime::now_utc(),
            trigger_reason: 4,
            commands,
            ports: Arc::default(),
        };
        (handle, rx)
    }

    #[test]
    fn a_device_keeps_one_tunnel_of_each_kind() {
        let registry = Registry::new();
        let uuid = Uuid::new_v4();
        let (cira, _a) = handle(1, uuid, TunnelKind::Cira);
        let (agent, _b) = handle(2, uuid, TunnelKind::Agent);
        registry.try_insert(cira).unwrap();
        registry.try_insert(agent).unwrap();
        assert_eq!(registry.len(), 2);
        assert_eq!(registry.any(uuid).unwrap().kind, TunnelKind::Cira);
        assert!(registry.remove(uuid, TunnelKind::Cira, 1));
        assert_eq!(registry.any(uuid).unwrap().kind, TunnelKind::Agent);
    }

    #[test]
    fn only_the_holder_can_be_replaced_or_removed() {
        let registry = Registry::new();
        let uuid = Uuid::new_v4();
        let (first, _a) = handle(1, uuid, TunnelKind::Cira);
        let (second, _b) = handle(2, uuid, TunnelKind::Cira);
        let (third, _c) = handle(3, uuid, TunnelKind::Cira);
        registry.try_insert(first).unwrap();
        assert_eq!(registry.try_insert(second.clone()).unwrap_err().id, 1);
        assert!(registry.replace_if(1, second));
        // The third saw the first holding the UUID; the second took it meanwhile.
        assert!(!registry.replace_if(1, third));
        assert!(!registry.remove(uuid, TunnelKind::Cira, 1));
        assert_eq!(registry.get(uuid, TunnelKind::Cira).unwrap().id, 2);
    }

    #[tokio::test]
    async fn a_probe_to_a_gone_tunnel_is_no_answer() {
        let (h, rx) = handle(1, Uuid::new_v4(), TunnelKind::Cira);
        drop(rx);
        assert_eq!(h.probe(Duration::from_millis(50)).await, None);
        let (h, mut rx) = handle(1, Uuid::new_v4(), TunnelKind::Cira);
        let answer = tokio::spawn(async move { h.probe(Duration::from_secs(5)).await });
        match rx.recv().await {
            Some(TunnelCommand::Probe { reply }) => reply.send(Liveness::Alive).unwrap(),
            other => panic!("{other:?}"),
        }
        assert_eq!(answer.await.unwrap(), Some(Liveness::Alive));
    }
}
