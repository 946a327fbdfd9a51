//! The live registry: which device (by UUID) has a tunnel on this gateway right now, and the
//! handles technicians use to open channels through it.
//!
//! A tunnel task owns its TLS stream and APF session; everyone else talks to it through a
//! [`TunnelHandle`] (a bounded command queue). A newer tunnel for the same UUID replaces the older
//! one, which is told to close ("last connection wins", as Open AMT's MPS does).
//!
//! What it does not do: persistence (see `journal` and `store`) or the relay loop (see `relay`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use protocols::session::ChannelId;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

/// Bytes a technician may queue towards a device channel beyond what the device's window takes.
pub const CHANNEL_SEND_BUDGET: usize = 256 * 1024;

/// A request to a tunnel task.
#[derive(Debug)]
pub enum TunnelCommand {
    /// Open a channel to a forwarded device port.
    Open { port: u32, originator: SocketAddr, reply: oneshot::Sender<Result<ChannelEnd, OpenRefused>> },
    /// Data for the device. `permit` holds `data.len()` bytes of the channel's send budget
    /// until the session has taken the bytes.
    Data { ch: ChannelId, data: Bytes, permit: OwnedSemaphorePermit },
    /// The technician passed on `n` bytes received from the device: grant window.
    Consumed { ch: ChannelId, n: usize },
    /// The technician will send no more data.
    Eof { ch: ChannelId },
    /// The technician side is gone.
    Close { ch: ChannelId },
    /// A newer tunnel for the same UUID took over: close this one.
    Replaced,
}

/// Why a channel could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenRefused {
    #[error("device {0} is not connected to this gateway")]
    NotConnected(Uuid),
    #[error("the device does not forward port {0}")]
    PortNotForwarded(u32),
    #[error("too many channels are open on this device's tunnel")]
    TooManyChannels,
    #[error("the device refused the channel ({0})")]
    DeviceRefused(String),
    #[error("the device did not answer the channel open in time")]
    Timeout,
    #[error("the tunnel closed")]
    TunnelGone,
}

/// What flows from the device to the technician on one channel.
#[derive(Debug)]
pub enum ChannelMessage {
    Data(Bytes),
    /// The device will send no more data.
    Eof,
    /// The channel is closed.
    Closed,
}

/// The technician's end of an open channel.
#[derive(Debug)]
pub struct ChannelEnd {
    pub port: u32,
    /// From the device. Unbounded in messages, but the bytes in it never exceed the window the
    /// gateway advertised: credit returns only through [`ChannelSender::consumed`].
    pub rx: mpsc::UnboundedReceiver<ChannelMessage>,
    pub tx: ChannelSender,
}

/// Sends to the device on one channel, with backpressure. When the last clone is dropped the
/// channel is closed, so that a technician side that goes away without a word (a failed
/// WebSocket upgrade, a panic) never leaves a channel open in the tunnel.
#[derive(Debug, Clone)]
pub struct ChannelSender {
    ch: ChannelId,
    commands: mpsc::Sender<TunnelCommand>,
    budget: Arc<Semaphore>,
    _close_on_drop: Arc<CloseOnDrop>,
}

#[derive(Debug)]
struct CloseOnDrop {
    ch: ChannelId,
    commands: mpsc::Sender<TunnelCommand>,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        // Closing twice is harmless; a full queue means the tunnel is busy, so wait in a task.
        if let Err(mpsc::error::TrySendError::Full(command)) =
            self.commands.try_send(TunnelCommand::Close { ch: self.ch })
        {
            let commands = self.commands.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = commands.send(command).await;
                });
            }
        }
    }
}

impl ChannelSender {
    pub fn new(ch: ChannelId, commands: mpsc::Sender<TunnelCommand>) -> Self {
        let close_on_drop = Arc::new(CloseOnDrop { ch, commands: commands.clone() });
        Self { ch, commands, budget: Arc::new(Semaphore::new(CHANNEL_SEND_BUDGET)), _close_on_drop: close_on_drop }
    }

    /// Queues data for the device, waiting while the channel's budget is used up.
    pub async fn send(&self, mut data: Bytes) -> Result<(), OpenRefused> {
        while !data.is_empty() {
            let n = data.len().min(CHANNEL_SEND_BUDGET);
            let chunk = data.split_to(n);
            let permit =
                Arc::clone(&self.budget).acquire_many_owned(n as u32).await.map_err(|_| OpenRefused::TunnelGone)?;
            self.commands
                .send(TunnelCommand::Data { ch: self.ch, data: chunk, permit })
                .await
                .map_err(|_| OpenRefused::TunnelGone)?;
        }
        Ok(())
    }

    /// Grants the device window for `n` bytes the technician has passed on.
    pub async fn consumed(&self, n: usize) -> Result<(), OpenRefused> {
        self.commands.send(TunnelCommand::Consumed { ch: self.ch, n }).await.map_err(|_| OpenRefused::TunnelGone)
    }

    pub async fn eof(&self) {
        let _ = self.commands.send(TunnelCommand::Eof { ch: self.ch }).await;
    }

    pub async fn close(&self) {
        let _ = self.commands.send(TunnelCommand::Close { ch: self.ch }).await;
    }
}

/// A live tunnel, as others see it.
#[derive(Debug, Clone)]
pub struct TunnelHandle {
    /// Unique per connection, so that a stale tunnel never removes its successor.
    pub id: u64,
    pub uuid: Uuid,
    pub remote: SocketAddr,
    pub connected_since: OffsetDateTime,
    pub commands: mpsc::Sender<TunnelCommand>,
    pub ports: Arc<Mutex<BTreeSet<u16>>>,
    /// How many tunnels in a row replaced their predecessor for this UUID within
    /// [`FLAP_WINDOW`]: a high count means two machines keep claiming one UUID.
    pub flaps: u32,
}

/// Replacements closer together than this count as flapping.
pub const FLAP_WINDOW: Duration = Duration::from_secs(300);
/// Consecutive quick replacements that make a UUID a suspected duplicate.
pub const FLAPS_FOR_DUPLICATE: u32 = 3;

impl TunnelHandle {
    pub fn ports(&self) -> Vec<u16> {
        self.ports.lock().map(|p| p.iter().copied().collect()).unwrap_or_default()
    }

    /// Opens a channel to `port` through this tunnel, waiting at most `timeout`.
    pub async fn open_channel(
        &self,
        port: u32,
        originator: SocketAddr,
        timeout: Duration,
    ) -> Result<ChannelEnd, OpenRefused> {
        let (reply, answer) = oneshot::channel();
        let request = TunnelCommand::Open { port, originator, reply };
        let work = async {
            self.commands.send(request).await.map_err(|_| OpenRefused::TunnelGone)?;
            answer.await.map_err(|_| OpenRefused::TunnelGone)?
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| OpenRefused::Timeout)?
    }
}

/// Live tunnels by UUID.
#[derive(Debug, Default)]
pub struct Registry {
    tunnels: DashMap<Uuid, TunnelHandle>,
    next_id: AtomicU64,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a tunnel; returns the one it replaces, if any.
    pub fn insert(&self, handle: TunnelHandle) -> Option<TunnelHandle> {
        self.tunnels.insert(handle.uuid, handle)
    }

    /// Removes the tunnel for `uuid` if it is still the one with `id`.
    pub fn remove(&self, uuid: Uuid, id: u64) -> bool {
        self.tunnels.remove_if(&uuid, |_, h| h.id == id).is_some()
    }

    pub fn get(&self, uuid: &Uuid) -> Option<TunnelHandle> {
        self.tunnels.get(uuid).map(|h| h.clone())
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
