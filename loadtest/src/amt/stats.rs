//! Counters shared by the devices of a fleet (atomics; one [`Stats`] per fleet), and the guards
//! that keep the "now" gauges right however a connection ends.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;

/// Live counters of one or many devices. Gauges say "now"; the rest only grow.
#[derive(Debug, Default)]
pub struct Stats {
    /// Gauge: devices with a TLS connection up.
    connected: AtomicU64,
    /// Gauge: devices whose tunnel is established (every forward answered).
    established: AtomicU64,
    /// Devices that were established at least once.
    ever_established: AtomicU64,
    /// Tunnels established (first ones and again after a drop).
    establishments: AtomicU64,
    /// TLS connections made (first ones and reconnects).
    connections: AtomicU64,
    /// Connection attempts after a device's first one.
    reconnects: AtomicU64,
    /// Attempts that failed before the tunnel started (TCP, TLS, DNS).
    connect_failures: AtomicU64,
    /// Times the gateway refused a device's credentials.
    auth_failures: AtomicU64,
    /// TLS connections whose handshake resumed an earlier session.
    resumed: AtomicU64,
    /// Channels the gateway opened and a service accepted.
    channels_opened: AtomicU64,
    /// Gauges by gateway address (the index into the devices' `gateways`): tunnels established
    /// through it. Touched once per establishment and once per drop, so a lock is cheap enough.
    established_via: Mutex<Vec<u64>>,
    /// Wakes the fleet's monitor on every change that matters to it.
    changed: Notify,
}

/// A copy of [`Stats`] at one moment (also a worker's report line, as JSON).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    pub connected: u64,
    pub established: u64,
    pub ever_established: u64,
    pub establishments: u64,
    pub connections: u64,
    pub reconnects: u64,
    pub connect_failures: u64,
    pub auth_failures: u64,
    pub resumed: u64,
    pub channels_opened: u64,
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connected {}, reconnects {}, connect failures {}, auth failures {}, channels {}",
            self.connected, self.reconnects, self.connect_failures, self.auth_failures, self.channels_opened
        )
    }
}

impl std::ops::AddAssign for StatsSnapshot {
    /// Sums the counters of several devices or fleets.
    fn add_assign(&mut self, other: Self) {
        self.connected += other.connected;
        self.established += other.established;
        self.ever_established += other.ever_established;
        self.establishments += other.establishments;
        self.connections += other.connections;
        self.reconnects += other.reconnects;
        self.connect_failures += other.connect_failures;
        self.auth_failures += other.auth_failures;
        self.resumed += other.resumed;
        self.channels_opened += other.channels_opened;
    }
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connected: get(&self.connected),
            established: get(&self.established),
            ever_established: get(&self.ever_established),
            establishments: get(&self.establishments),
            connections: get(&self.connections),
            reconnects: get(&self.reconnects),
            connect_failures: get(&self.connect_failures),
            auth_failures: get(&self.auth_failures),
            resumed: get(&self.resumed),
            channels_opened: get(&self.channels_opened),
        }
    }

    /// Tunnels established now through each gateway address, by its index in the devices'
    /// `gateways` (as long as the highest index seen so far; missing ones are 0).
    pub fn established_per_gateway(&self) -> Vec<u64> {
        self.established_via.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Completes after the next change (or at once if one happened since the last call).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    fn bump(&self, counter: &AtomicU64, notify: bool) {
        counter.fetch_add(1, Ordering::Relaxed);
        if notify {
            self.changed.notify_one();
        }
    }

    pub(crate) fn reconnect(&self) {
        self.bump(&self.reconnects, false);
    }

    pub(crate) fn connect_failure(&self) {
        self.bump(&self.connect_failures, false);
    }

    pub(crate) fn auth_failure(&self) {
        self.bump(&self.auth_failures, true);
    }

    pub(crate) fn resumed(&self) {
        self.bump(&self.resumed, false);
    }

    pub(crate) fn channel_opened(&self) {
        self.bump(&self.channels_opened, false);
    }

    /// Counts a TLS connection up until the guard drops.
    pub(crate) fn connected(&self) -> GaugeGuard<'_> {
        self.bump(&self.connections, false);
        self.bump(&self.connected, true);
        GaugeGuard { stats: self, gauge: &self.connected }
    }

    /// Counts a tunnel established through gateway address `gateway` until the guard drops;
    /// `first` when it is this device's first.
    pub(crate) fn established(&self, first: bool, gateway: usize) -> EstablishedGuard<'_> {
        self.established.fetch_add(1, Ordering::Relaxed);
        self.establishments.fetch_add(1, Ordering::Relaxed);
        if first {
            self.ever_established.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut via = self.established_via.lock().unwrap_or_else(PoisonError::into_inner);
            if via.len() <= gateway {
                via.resize(gateway + 1, 0);
            }
            via[gateway] += 1;
        }
        self.changed.notify_one();
        EstablishedGuard { gauge: GaugeGuard { stats: self, gauge: &self.established }, gateway }
    }
}

/// Decrements a gauge when dropped.
#[derive(Debug)]
pub(crate) struct GaugeGuard<'a> {
    stats: &'a Stats,
    gauge: &'a AtomicU64,
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(1, Ordering::Relaxed);
        self.stats.changed.notify_one();
    }
}

/// Counts a tunnel as established (in total and through its gateway address) until dropped.
#[derive(Debug)]
pub(crate) struct EstablishedGuard<'a> {
    gauge: GaugeGuard<'a>,
    gateway: usize,
}

impl Drop for EstablishedGuard<'_> {
    fn drop(&mut self) {
        let mut via = self.gauge.stats.established_via.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = via.get_mut(self.gateway) {
            *n = n.saturating_sub(1);
        }
        // `gauge` drops after this, and notifies.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_follow_guards() {
        let stats = Stats::default();
        {
            let _c = stats.connected();
            let _e = stats.established(true, 0);
            let s = stats.snapshot();
            assert_eq!((s.connected, s.established, s.ever_established, s.connections), (1, 1, 1, 1));
        }
        let _e = stats.established(false, 0);
        let s = stats.snapshot();
        assert_eq!((s.connected, s.established, s.ever_established, s.connections), (0, 1, 1, 1));
    }

    #[test]
    fn established_is_counted_per_gateway() {
        let stats = Stats::default();
        assert_eq!(stats.established_per_gateway(), Vec::<u64>::new());
        let a = stats.established(true, 2);
        let b = stats.established(true, 0);
        let c = stats.established(true, 2);
        assert_eq!(stats.established_per_gateway(), [1, 0, 2]);
        drop(a);
        drop(b);
        assert_eq!(stats.established_per_gateway(), [0, 0, 1]);
        drop(c);
        assert_eq!(stats.established_per_gateway(), [0, 0, 0]);
        assert_eq!(stats.snapshot().established, 0);
    }
}
