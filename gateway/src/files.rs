//! Open files as a budget. Every tunnel, pending connection and technician connection holds a
//! file descriptor, and a process may hold only so many (its `RLIMIT_NOFILE`). At start the
//! gateway raises its soft limit to the hard one and logs the ceiling ([`raise_limit`]); then
//! every accepted socket takes a [`FileGuard`] from the [`FileBudget`] for as long as it lives.
//! Near the limit, new devices are refused cleanly (accepted and closed at once, counted as
//! `file_limit`), so that the files kept in reserve stay free for what the tunnels already held
//! need: the store, logs, outgoing connections, and technicians (who may use half the reserve,
//! so an operator can still reach the API of a gateway that devices filled). An accept loop that
//! meets `EMFILE` anyway backs off ([`AcceptBackoff`]) instead of spinning.
//!
//! What it does not do: count files it did not hand out (the reserve absorbs those), or refuse
//! outgoing connections (those fail with their own error).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::metrics::{AcceptError, Listener, Metrics};

/// Raises the soft open-files limit to the hard one (systemd starts services with 1,024) and
/// returns the soft limit now in force, logging it.
pub fn raise_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            if limit < 8192 {
                warn!(
                    limit,
                    "only {limit} open files allowed: raise the hard limit (LimitNOFILE=) for thousands of devices"
                );
            } else {
                info!(limit, "open files limit");
            }
            limit
        }
        Err(err) => {
            let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
            warn!(error = %err, limit, "could not raise the open files limit");
            limit
        }
    }
}

/// Who asks for a file: devices stop at the ceiling, technicians may use half of the reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileUse {
    Device,
    Technician,
}

/// The files the listeners may hand out: the limit minus a reserve.
#[derive(Debug)]
pub struct FileBudget {
    limit: usize,
    reserve: usize,
    used: AtomicUsize,
}

impl FileBudget {
    /// A budget under an open-files `limit`, keeping `reserved` files free (at most a quarter
    /// of a small limit).
    pub fn new(limit: u64, reserved: usize) -> Arc<Self> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let reserve = reserved.min(limit / 4);
        Arc::new(Self { limit, reserve, used: AtomicUsize::new(0) })
    }

    /// A budget that never refuses (in-process tests).
    pub fn unlimited() -> Arc<Self> {
        Self::new(u64::MAX, 0)
    }

    /// The most files devices may hold.
    pub fn device_ceiling(&self) -> usize {
        self.limit.saturating_sub(self.reserve)
    }

    fn ceiling(&self, user: FileUse) -> usize {
        match user {
            FileUse::Device => self.device_ceiling(),
            FileUse::Technician => self.limit.saturating_sub(self.reserve / 2),
        }
    }

    /// Files handed out now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// One file for an accepted socket, or `None` when `user`'s share is spent.
    pub fn try_take(self: &Arc<Self>, user: FileUse) -> Option<FileGuard> {
        let ceiling = self.ceiling(user);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| (used < ceiling).then_some(used + 1))
            .ok()
            .map(|_| FileGuard { budget: Arc::clone(self) })
    }

    /// Logs what the budget allows, once at start.
    pub fn log(&self) {
        info!(
            limit = self.limit,
            devices = self.device_ceiling(),
            reserved = self.reserve,
            "open files: up to {} device connections (tunnels and pending); {} files kept for the store, \
             logs, outgoing connections and technicians",
            self.device_ceiling(),
            self.reserve
        );
    }
}

/// One accepted socket's file; dropping it gives the file back.
#[derive(Debug)]
pub struct FileGuard {
    budget: Arc<FileBudget>,
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The back-off of an accept loop after a failed `accept`: 10 ms doubling to 1 s while failures
/// repeat, back to the start after a success. Out of files (`EMFILE`, `ENFILE`), accepting again
/// at once would fail again at once: the connection stays in the kernel's backlog meanwhile.
#[derive(Debug)]
pub struct AcceptBackoff {
    listener: Listener,
    next: Duration,
    last_warning: Option<Instant>,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const WARN_EVERY: Duration = Duration::from_secs(10);

impl AcceptBackoff {
    pub fn new(listener: Listener) -> Self {
        Self { listener, next: FIRST_BACKOFF, last_warning: None }
    }

    /// After a successful accept.
    pub fn accepted(&mut self) {
        self.next = FIRST_BACKOFF;
    }

    /// Counts a failed accept, warns at most every 10 s, and sleeps before the next try.
    pub async fn failed(&mut self, err: &std::io::Error, metrics: &Metrics) {
        let kind = AcceptError::of(err);
        metrics.accept_failed(self.listener, kind);
        if self.last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            self.last_warning = Some(Instant::now());
            let listener = self.listener.as_str();
            match kind {
                AcceptError::OutOfFiles => warn!(
                    listener,
                    error = %err,
                    "out of open files: new connections wait in the backlog (raise LimitNOFILE, or lower the \
                     connection caps)"
                ),
                AcceptError::Other => warn!(listener, error = %err, "accept failed"),
            }
        }
        tokio::time::sleep(self.next_delay()).await;
    }

    /// The wait before the next try, doubling the one after it.
    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_stop_at_the_ceiling_and_technicians_may_use_half_the_reserve() {
        let budget = FileBudget::new(100, 20);
        assert_eq!(budget.device_ceiling(), 80);
        let devices: Vec<_> = (0..80).map(|_| budget.try_take(FileUse::Device).expect("under the ceiling")).collect();
        assert!(budget.try_take(FileUse::Device).is_none());
        let technicians: Vec<_> =
            (0..10).map(|_| budget.try_take(FileUse::Technician).expect("in the technicians' share")).collect();
        assert!(budget.try_take(FileUse::Technician).is_none());
        assert_eq!(budget.in_use(), 90);
        drop(technicians);
        drop(devices);
        assert_eq!(budget.in_use(), 0);
        assert!(budget.try_take(FileUse::Device).is_some());
    }

    #[test]
    fn a_small_limit_keeps_at_most_a_quarter_in_reserve() {
        assert_eq!(FileBudget::new(400, 256).device_ceiling(), 300);
        assert_eq!(FileBudget::new(20_000, 256).device_ceiling(), 19_744);
    }

    #[test]
    fn the_backoff_doubles_to_a_second_and_starts_again_after_a_success() {
        let mut backoff = AcceptBackoff::new(Listener::Cira);
        let waits: Vec<u128> = (0..9).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.accepted();
        assert_eq!(backoff.next_delay().as_millis(), 10);
    }

    #[test]
    fn running_out_of_files_is_told_apart() {
        assert_eq!(AcceptError::of(&std::io::Error::from_raw_os_error(24)), AcceptError::OutOfFiles);
        assert_eq!(AcceptError::of(&std::io::Error::from_raw_os_error(23)), AcceptError::OutOfFiles);
        assert_eq!(AcceptError::of(&std::io::Error::from_raw_os_error(104)), AcceptError::Other);
    }
}
