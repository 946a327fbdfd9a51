//! What the LAN tools keep in the daemon (`Shared::lan`): the recent scans with their progress,
//! and the command queue of each adopted PC's tunnel task.
//!
//! What it does not do: run scans (`scan`) or tunnels (`tunnel`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use ipnetwork::Ipv4Network;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::LanError;
use crate::registry::TunnelCommand;
use crate::store::LanHost;

/// Scans kept in memory for `GET /api/v1/lan/scans/{id}` (the newest; their hosts are also in
/// the store).
const KEPT_SCANS: usize = 16;

/// A scan's progress and, once done, what it found.
#[derive(Debug, Clone, Serialize)]
pub struct ScanStatus {
    pub id: u64,
    pub interface: String,
    pub cidr: String,
    /// `running`, `done` or `failed`.
    pub state: &'static str,
    /// `arp`, `ping`, `probe`, then `done`.
    pub phase: &'static str,
    /// Addresses asked in the ARP sweep so far, of `total`.
    pub swept: usize,
    pub total: usize,
    /// Live hosts found so far, and those probed.
    pub live: usize,
    pub probed: usize,
    pub amt: usize,
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub elapsed_ms: u64,
    /// Every live host found, once the scan is done.
    pub hosts: Vec<LanHost>,
}

/// One scan, shared by the task running it and the API reading its progress.
#[derive(Debug)]
pub struct Scan {
    status: Mutex<ScanStatus>,
    pub(super) started: Instant,
}

impl Scan {
    fn new(id: u64, interface: &str, cidr: Ipv4Network, total: usize) -> Scan {
        Scan {
            status: Mutex::new(ScanStatus {
                id,
                interface: interface.to_owned(),
                cidr: cidr.to_string(),
                state: "running",
                phase: "arp",
                swept: 0,
                total,
                live: 0,
                probed: 0,
                amt: 0,
                error: None,
                started_at: OffsetDateTime::now_utc(),
                elapsed_ms: 0,
                hosts: Vec::new(),
            }),
            started: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ScanStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn update(&self, change: impl FnOnce(&mut ScanStatus)) {
        let mut status = self.lock();
        change(&mut status);
        status.elapsed_ms = self.started.elapsed().as_millis() as u64;
    }

    pub fn id(&self) -> u64 {
        self.lock().id
    }

    pub fn interface(&self) -> String {
        self.lock().interface.clone()
    }

    pub fn running(&self) -> bool {
        self.lock().state == "running"
    }

    /// A copy of the progress (with the elapsed time up to now while it runs).
    pub fn status(&self) -> ScanStatus {
        let mut status = self.lock().clone();
        if status.state == "running" {
            status.elapsed_ms = self.started.elapsed().as_millis() as u64;
        }
        status
    }
}

/// The LAN tools' state in the daemon: recent scans, and the task of each adopted PC.
#[derive(Debug, Default)]
pub struct Lan {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_scan: u64,
    scans: VecDeque<Arc<Scan>>,
    /// Each adopted PC's tunnel task, by UUID (whether its PC is reachable or not).
    tunnels: HashMap<Uuid, mpsc::Sender<TunnelCommand>>,
}

impl Lan {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new scan on `interface`, unless one is running there.
    pub(super) fn start_scan(&self, interface: &str, cidr: Ipv4Network, total: usize) -> Result<Arc<Scan>, LanError> {
        let mut inner = self.lock();
        if let Some(running) = inner.scans.iter().find(|s| s.interface() == interface && s.running()) {
            return Err(LanError::Busy(interface.to_owned(), running.id()));
        }
        inner.next_scan += 1;
        let scan = Arc::new(Scan::new(inner.next_scan, interface, cidr, total));
        inner.scans.push_back(Arc::clone(&scan));
        while inner.scans.len() > KEPT_SCANS {
            // The oldest finished one goes; running scans stay (at most one per interface).
            match inner.scans.iter().position(|s| !s.running()) {
                Some(i) => drop(inner.scans.remove(i)),
                None => break,
            }
        }
        Ok(scan)
    }

    /// The scan with this id, while it is kept.
    pub fn scan(&self, id: u64) -> Option<Arc<Scan>> {
        self.lock().scans.iter().find(|s| s.id() == id).cloned()
    }

    pub(super) fn add_tunnel(&self, uuid: Uuid, commands: mpsc::Sender<TunnelCommand>) {
        self.lock().tunnels.insert(uuid, commands);
    }

    pub(super) fn remove_tunnel(&self, uuid: Uuid, commands: &mpsc::Sender<TunnelCommand>) {
        let mut inner = self.lock();
        if inner.tunnels.get(&uuid).is_some_and(|c| c.same_channel(commands)) {
            inner.tunnels.remove(&uuid);
        }
    }

    /// Ends the tunnel task of an adopted PC (it was forgotten); whether one ran.
    pub fn stop_tunnel(&self, uuid: Uuid) -> bool {
        let Some(commands) = self.lock().tunnels.remove(&uuid) else {
            return false;
        };
        let close = TunnelCommand::Close { reason: crate::metrics::CloseReason::Shutdown };
        if commands.try_send(close).is_err() {
            // A full queue: the task is busy, and the dropped sender ends it once it is drained.
            tracing::debug!(%uuid, "LAN tunnel's queue is full; it ends when the queue drains");
        }
        true
    }

    /// Adopted PCs whose tunnel task runs.
    pub fn tunnels(&self) -> usize {
        self.lock().tunnels.len()
    }
}
