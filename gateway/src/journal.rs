//! Device records (hello, connect, ports, keepalive, disconnect, UUID conflicts), written to the
//! store by one task, off the tunnels' tasks. Records name the gateway instance that writes them.
//!
//! Nothing here ever makes a tunnel wait: life-cycle events go into a bounded queue with
//! `try_send`, and keepalive stamps into a map that keeps only the newest stamp per device and is
//! written once a second. When the queue is full, the event is dropped and counted, and the device
//! is marked for a resync: the writer later records its state as the live registry sees it, so
//! the record ends up right even though an event was lost. When the stamp map is full, new stamps
//! are dropped and counted. The writer batches what it finds into one transaction.
//!
//! What it does not do: reads (the API reads the store directly) or count drops in the metrics
//! (the callers do, from the return values).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::{channel, Receiver, Sender};
use uuid::Uuid;

use prometheus::IntCounter;

use crate::store::{devices, Stmt, Store};

/// Life-cycle events queued before new ones are dropped (and resynced).
pub const QUEUE: usize = 16 * 1024;
/// Events written per transaction at most.
const BATCH: usize = 1024;
/// How often stamps and resyncs are written when no event wakes the writer.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    Hello { uuid: Uuid, at: OffsetDateTime, remote: SocketAddr },
    Connected { uuid: Uuid, at: OffsetDateTime, remote: SocketAddr },
    Ports { uuid: Uuid, ports: Vec<u16> },
    Disconnected { uuid: Uuid, at: OffsetDateTime, reason: String },
    Conflict { uuid: Uuid, at: OffsetDateTime, live: String, claimant: SocketAddr },
}

impl DeviceEvent {
    fn uuid(&self) -> Uuid {
        match self {
            DeviceEvent::Hello { uuid, .. }
            | DeviceEvent::Connected { uuid, .. }
            | DeviceEvent::Ports { uuid, .. }
            | DeviceEvent::Disconnected { uuid, .. }
            | DeviceEvent::Conflict { uuid, .. } => *uuid,
        }
    }
}

/// A device's live state, as the writer needs it for a resync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveState {
    pub connected_since: OffsetDateTime,
    pub remote: SocketAddr,
    pub ports: Vec<u16>,
}

/// Where the writer looks up live state for a resync (the registry).
pub trait LiveView: Send + Sync {
    fn live_state(&self, uuid: Uuid) -> Option<LiveState>;
}

#[derive(Debug, Default)]
struct Pending {
    stamps: HashMap<Uuid, OffsetDateTime>,
    resync: HashSet<Uuid>,
}

/// The tunnels' side of the journal (cheap to clone).
#[derive(Debug, Clone)]
pub struct Journal {
    tx: Sender<DeviceEvent>,
    pending: Arc<Mutex<Pending>>,
    /// Most stamps and resyncs held between two writes.
    cap: usize,
}

impl Journal {
    /// Starts the writer task (on the current tokio runtime); it ends once every `Journal` clone
    /// is dropped, after writing what was queued (await the handle to wait for that). `cap`
    /// bounds the stamp and resync sets (the number of tunnels the gateway may hold is a good
    /// value); `instance` is this gateway's instance id; `errors` counts the writes the store
    /// failed (`tether_store_errors_total{task="journal"}`).
    pub fn start(
        store: Store,
        live: Arc<dyn LiveView>,
        cap: usize,
        instance: String,
        errors: IntCounter,
    ) -> (Journal, tokio::task::JoinHandle<()>) {
        let (tx, rx) = channel::<DeviceEvent>(QUEUE);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let writer = Writer { store, live, pending: Arc::clone(&pending), instance, errors };
        let handle = tokio::spawn(writer.run(rx));
        (Journal { tx, pending, cap: cap.max(16) }, handle)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a life-cycle event. Never waits: false if the queue was full (the event is dropped
    /// and the device will be resynced from the live registry).
    pub fn record(&self, event: DeviceEvent) -> bool {
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(event)) => {
                let mut pending = self.pending();
                if pending.resync.len() < self.cap {
                    pending.resync.insert(event.uuid());
                }
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Has the writer record these devices as the live registry sees them (after the store may
    /// have lost track of them). Bounded like the other pending sets.
    pub fn resync(&self, uuids: impl IntoIterator<Item = Uuid>) {
        let mut pending = self.pending();
        for uuid in uuids {
            if pending.resync.len() >= self.cap {
                break;
            }
            pending.resync.insert(uuid);
        }
    }

    /// Notes a keepalive; only the newest per device is written. False if dropped (map full).
    pub fn stamp(&self, uuid: Uuid, at: OffsetDateTime) -> bool {
        let mut pending = self.pending();
        if pending.stamps.len() >= self.cap && !pending.stamps.contains_key(&uuid) {
            return false;
        }
        pending.stamps.insert(uuid, at);
        true
    }
}

struct Writer {
    errors: IntCounter,
    store: Store,
    live: Arc<dyn LiveView>,
    pending: Arc<Mutex<Pending>>,
    instance: String,
}

impl Writer {
    async fn run(self, mut rx: Receiver<DeviceEvent>) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            // `drained`: nothing older than what is in hand waits in the queue, so a resync (the
            // live state now) cannot be overwritten by a stale queued event.
            let (open, drained) = match tokio::time::timeout(FLUSH_INTERVAL, rx.recv()).await {
                Ok(Some(event)) => {
                    batch.push(event);
                    let mut drained = false;
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(event) => batch.push(event),
                            Err(_) => {
                                drained = true;
                                break;
                            }
                        }
                    }
                    (true, drained)
                }
                Err(_elapsed) => (true, true),
                Ok(None) => (false, true),
            };
            self.write(&mut batch, drained).await;
            if !open {
                return;
            }
        }
    }

    async fn write(&self, batch: &mut Vec<DeviceEvent>, drained: bool) {
        let (stamps, resync) = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let resync = if drained { std::mem::take(&mut pending.resync) } else { HashSet::new() };
            (std::mem::take(&mut pending.stamps), resync)
        };
        if batch.is_empty() && stamps.is_empty() && resync.is_empty() {
            return;
        }
        let now = OffsetDateTime::now_utc();
        let me = self.instance.as_str();
        let resynced: Vec<(Uuid, Option<LiveState>)> =
            resync.into_iter().map(|uuid| (uuid, self.live.live_state(uuid))).collect();
        let mut stmts: Vec<Stmt> = batch.iter().map(|event| statement(event, me)).collect();
        stmts.extend(stamps.iter().map(|(uuid, at)| devices::keepalive(*uuid, *at)));
        for (uuid, live) in &resynced {
            match live {
                Some(live) => {
                    stmts.push(devices::connected(*uuid, live.connected_since, live.remote, me));
                    stmts.push(devices::ports(*uuid, &live.ports, me));
                }
                None => stmts.push(devices::disconnected(
                    *uuid,
                    now,
                    "disconnected (recorded late: the store's queue was full)",
                    me,
                )),
            }
        }
        if let Err(err) = self.store.record(&stmts).await {
            self.errors.inc();
            tracing::error!(error = %err, events = batch.len(),
                "could not record device events in the store; the devices will be rewritten from their live state");
            // Nothing of the transaction was written: resync every device it touched from the
            // live registry next time, and keep the stamps.
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let touched = batch.iter().map(DeviceEvent::uuid).chain(resynced.into_iter().map(|(uuid, _)| uuid));
            pending.resync.extend(touched);
            for (uuid, at) in stamps {
                pending.stamps.entry(uuid).or_insert(at);
            }
        }
        batch.clear();
    }
}

fn statement(event: &DeviceEvent, me: &str) -> Stmt {
    match event {
        DeviceEvent::Hello { uuid, at, remote } => devices::hello(*uuid, *at, *remote),
        DeviceEvent::Connected { uuid, at, remote } => devices::connected(*uuid, *at, *remote, me),
        DeviceEvent::Ports { uuid, ports } => devices::ports(*uuid, ports, me),
        DeviceEvent::Disconnected { uuid, at, reason } => devices::disconnected(*uuid, *at, reason, me),
        DeviceEvent::Conflict { uuid, at, live, claimant } => devices::conflict(*uuid, *at, live, *claimant),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_counter() -> IntCounter {
        IntCounter::new("journal_errors", "test").unwrap()
    }

    struct Live(Mutex<HashMap<Uuid, LiveState>>);

    impl LiveView for Live {
        fn live_state(&self, uuid: Uuid) -> Option<LiveState> {
            self.0.lock().unwrap().get(&uuid).cloned()
        }
    }

    #[tokio::test]
    async fn events_and_stamps_reach_the_store_and_a_full_queue_resyncs_from_the_registry() {
        let (_dir, store) = crate::store::tests::sqlite().await;
        let live = Arc::new(Live(Mutex::default()));
        // A journal whose writer is not running yet: fill its queue by hand.
        let (tx, rx) = channel(2);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let journal = Journal { tx, pending: Arc::clone(&pending), cap: 16 };
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let remote: SocketAddr = "198.18.0.1:1".parse().unwrap();
        let t0 = OffsetDateTime::now_utc();
        assert!(journal.record(DeviceEvent::Hello { uuid: a, at: t0, remote }));
        assert!(journal.record(DeviceEvent::Connected { uuid: a, at: t0, remote }));
        // Full: b's connect is dropped, and b is resynced from what the registry says.
        assert!(!journal.record(DeviceEvent::Connected { uuid: b, at: t0, remote }));
        live.0.lock().unwrap().insert(b, LiveState { connected_since: t0, remote, ports: vec![16992, 16994] });
        for _ in 0..100 {
            assert!(journal.stamp(a, t0));
        }
        assert_eq!(pending.lock().unwrap().stamps.len(), 1, "stamps are coalesced");
        for _ in 0..20 {
            journal.stamp(Uuid::new_v4(), t0);
        }
        assert!(!journal.stamp(Uuid::new_v4(), t0), "the stamp map is bounded");
        drop(journal);
        let writer = Writer { store: store.clone(), live, pending, instance: "gw-a".into(), errors: test_counter() };
        writer.run(rx).await;
        let ra = store.device(a).await.unwrap().unwrap();
        assert!(ra.connected_since.is_some() && ra.last_keepalive.is_some());
        assert_eq!(ra.instance.as_deref(), Some("gw-a"));
        let rb = store.device(b).await.unwrap().unwrap();
        assert_eq!((rb.connected_since.is_some(), rb.ports.clone()), (true, vec![16992, 16994]));
    }

    #[tokio::test]
    async fn a_resync_is_never_overwritten_by_an_older_queued_event() {
        let (_dir, store) = crate::store::tests::sqlite().await;
        let live = Arc::new(Live(Mutex::default()));
        let (tx, rx) = channel(3000);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let journal = Journal { tx, pending: Arc::clone(&pending), cap: 16 };
        let remote: SocketAddr = "198.18.0.1:1".parse().unwrap();
        let t0 = OffsetDateTime::now_utc();
        let x = Uuid::new_v4();
        for _ in 0..1500 {
            assert!(journal.record(DeviceEvent::Hello { uuid: Uuid::new_v4(), at: t0, remote }));
        }
        assert!(journal.record(DeviceEvent::Connected { uuid: x, at: t0, remote }));
        while journal.record(DeviceEvent::Hello { uuid: Uuid::new_v4(), at: t0, remote }) {}
        // X disconnects while the queue is full: dropped, resynced (X is not live any more).
        assert!(!journal.record(DeviceEvent::Disconnected { uuid: x, at: t0, reason: "gone".into() }));
        drop(journal);
        Writer { store: store.clone(), live, pending, instance: "gw-a".into(), errors: test_counter() }.run(rx).await;
        let r = store.device(x).await.unwrap().unwrap();
        assert!(r.connected_since.is_none(), "X is recorded as connected");
    }
}
