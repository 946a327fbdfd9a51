//! Rate limits (governor): new connections per source address, failed authentications per source
//! and per UUID (with back-off), and API requests per token.
//!
//! Sources are keyed by IPv4 address or IPv6 /64, so one abusive source never shuts others out,
//! and the defaults let a few hundred PCs behind one NAT reconnect at once after a restart. Every
//! table is bounded (`max_tracked_sources`). What it does not do: count (that is `metrics`).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub connections_per_second_per_source: u32,
    pub connection_burst_per_source: u32,
    pub auth_failures_per_minute: u32,
    pub auth_failure_burst: u32,
    pub api_requests_per_second: u32,
    pub api_burst: u32,
    pub max_tracked_sources: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            connections_per_second_per_source: 20,
            connection_burst_per_source: 500,
            auth_failures_per_minute: 6,
            auth_failure_burst: 10,
            api_requests_per_second: 50,
            api_burst: 200,
            max_tracked_sources: 100_000,
        }
    }
}

/// The key for a source address: the address itself for IPv4, its /64 for IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(u32::from(v4)),
                None => Source::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AuthKey {
    Source(Source),
    Device(Uuid),
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

pub struct Limiter {
    max_tracked: usize,
    connections: DefaultKeyedRateLimiter<Source>,
    auth_failures: DefaultKeyedRateLimiter<AuthKey>,
    api: DefaultKeyedRateLimiter<i64>,
    /// Keys in back-off, until when.
    blocked: Mutex<std::collections::HashMap<AuthKey, Instant>>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("max_tracked", &self.max_tracked).finish_non_exhaustive()
    }
}

impl Limiter {
    pub fn new(cfg: &LimitsConfig) -> Limiter {
        let connections = Quota::per_second(nonzero(cfg.connections_per_second_per_source))
            .allow_burst(nonzero(cfg.connection_burst_per_source));
        let auth =
            Quota::per_minute(nonzero(cfg.auth_failures_per_minute)).allow_burst(nonzero(cfg.auth_failure_burst));
        let api = Quota::per_second(nonzero(cfg.api_requests_per_second)).allow_burst(nonzero(cfg.api_burst));
        Limiter {
            max_tracked: cfg.max_tracked_sources.max(16),
            connections: DefaultKeyedRateLimiter::keyed(connections),
            auth_failures: DefaultKeyedRateLimiter::keyed(auth),
            api: DefaultKeyedRateLimiter::keyed(api),
            blocked: Mutex::default(),
        }
    }

    /// Whether a new connection from `source` may proceed.
    pub fn allow_connection(&self, source: IpAddr) -> bool {
        if self.connections.len() >= self.max_tracked {
            self.connections.retain_recent();
        }
        self.connections.check_key(&Source::from(source)).is_ok()
    }

    /// Records a failed authentication; returns the back-off the source or UUID is now under.
    pub fn auth_failed(&self, source: IpAddr, uuid: Option<Uuid>) -> Option<Duration> {
        if self.auth_failures.len() >= self.max_tracked {
            self.auth_failures.retain_recent();
        }
        let now = DefaultClock::default().now();
        let mut longest: Option<Duration> = None;
        let keys = std::iter::once(AuthKey::Source(source.into())).chain(uuid.map(AuthKey::Device));
        for key in keys {
            if let Err(not_until) = self.auth_failures.check_key(&key) {
                let wait = not_until.wait_time_from(now);
                longest = Some(longest.map_or(wait, |l| l.max(wait)));
                self.block(key, wait);
            }
        }
        longest
    }

    fn block(&self, key: AuthKey, wait: Duration) {
        let Ok(mut blocked) = self.blocked.lock() else { return };
        if blocked.len() >= self.max_tracked {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
            if blocked.len() >= self.max_tracked {
                // Still full of live entries: forget the oldest half rather than grow.
                let mut entries: Vec<(AuthKey, Instant)> = blocked.drain().collect();
                entries.sort_by_key(|(_, until)| std::cmp::Reverse(*until));
                entries.truncate(self.max_tracked / 2);
                blocked.extend(entries);
            }
        }
        blocked.insert(key, Instant::now() + wait);
    }

    /// Whether this source or UUID is in back-off now, and for how long still.
    pub fn auth_blocked(&self, source: IpAddr, uuid: Option<Uuid>) -> Option<Duration> {
        let blocked = self.blocked.lock().ok()?;
        let now = Instant::now();
        let keys = std::iter::once(AuthKey::Source(source.into())).chain(uuid.map(AuthKey::Device));
        keys.filter_map(|k| blocked.get(&k).copied()).filter(|until| *until > now).map(|until| until - now).max()
    }

    /// Whether an API request with this token may proceed.
    pub fn allow_api(&self, token_id: i64) -> bool {
        self.api.check_key(&token_id).is_ok()
    }

    /// Forgets idle keys; call every minute or so.
    pub fn housekeeping(&self) {
        self.connections.retain_recent();
        self.connections.shrink_to_fit();
        self.auth_failures.retain_recent();
        self.auth_failures.shrink_to_fit();
        self.api.retain_recent();
        if let Ok(mut blocked) = self.blocked.lock() {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_over_its_burst_does_not_shut_out_another() {
        let cfg =
            LimitsConfig { connections_per_second_per_source: 1, connection_burst_per_source: 5, ..Default::default() };
        let limiter = Limiter::new(&cfg);
        let abusive: IpAddr = "198.18.0.9".parse().unwrap();
        let other: IpAddr = "198.18.0.10".parse().unwrap();
        assert_eq!((0..10).filter(|_| limiter.allow_connection(abusive)).count(), 5);
        assert!(limiter.allow_connection(other));
    }

    #[test]
    fn a_nat_of_hundreds_reconnects_at_once_with_the_defaults() {
        let limiter = Limiter::new(&LimitsConfig::default());
        let office: IpAddr = "198.18.0.1".parse().unwrap();
        assert!((0..400).all(|_| limiter.allow_connection(office)));
    }

    #[test]
    fn ipv6_sources_are_grouped_by_64() {
        let cfg =
            LimitsConfig { connections_per_second_per_source: 1, connection_burst_per_source: 1, ..Default::default() };
        let limiter = Limiter::new(&cfg);
        assert!(limiter.allow_connection("2001:db8:1:2::1".parse().unwrap()));
        assert!(!limiter.allow_connection("2001:db8:1:2::ffff".parse().unwrap()));
        assert!(limiter.allow_connection("2001:db8:1:3::1".parse().unwrap()));
    }

    #[test]
    fn repeated_auth_failures_put_source_and_uuid_in_back_off() {
        let cfg = LimitsConfig { auth_failures_per_minute: 1, auth_failure_burst: 3, ..Default::default() };
        let limiter = Limiter::new(&cfg);
        let source: IpAddr = "198.18.0.7".parse().unwrap();
        let uuid = Uuid::new_v4();
        for _ in 0..3 {
            assert_eq!(limiter.auth_failed(source, Some(uuid)), None);
        }
        assert!(limiter.auth_blocked(source, Some(uuid)).is_none());
        let wait = limiter.auth_failed(source, Some(uuid)).expect("back-off after the burst");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(60));
        assert!(limiter.auth_blocked(source, None).is_some());
        // The same UUID from elsewhere is in back-off too; another device from elsewhere is not.
        let elsewhere: IpAddr = "198.18.0.8".parse().unwrap();
        assert!(limiter.auth_blocked(elsewhere, Some(uuid)).is_some());
        assert!(limiter.auth_blocked(elsewhere, Some(Uuid::new_v4())).is_none());
    }

    #[test]
    fn api_tokens_have_separate_budgets() {
        let cfg = LimitsConfig { api_requests_per_second: 1, api_burst: 2, ..Default::default() };
        let limiter = Limiter::new(&cfg);
        assert!(limiter.allow_api(1) && limiter.allow_api(1));
        assert!(!limiter.allow_api(1));
        assert!(limiter.allow_api(2));
    }
}
