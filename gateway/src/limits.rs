//! Rate limits (governor): new connections per source address, failed authentications per source
//! and per UUID (with back-off), and API requests per token.
//!
//! Sources are keyed by IPv4 address or IPv6 /64, so one abusive source never shuts others out,
//! and the defaults let a few hundred PCs behind one NAT reconnect at once after a restart. Every
//! table is bounded (`max_tracked_sources`). What it does not do: count (that is `metrics`).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::{Deserialize, Serialize};
use tracing::warn;
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
pub enum Source {
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

/// How often a full table may be swept: `retain_recent` walks every key, so it must not run on
/// every call while a flood keeps the table full.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A keyed governor limiter whose table of keys stays bounded.
///
/// Past `max` keys it is swept (at most once per [`SWEEP_INTERVAL`]), dropping keys whose budget
/// is whole again; if that does not bring it under `max` (more distinct sources within one
/// replenish period than `max`), or it reaches twice `max` between sweeps, it starts afresh.
/// Starting afresh forgets budgets, which errs towards letting clients in; the alternative,
/// growing without bound, would let a flood of source addresses exhaust memory.
struct Table<K: Hash + Eq + Clone> {
    what: &'static str,
    quota: Quota,
    max: usize,
    limiter: RwLock<DefaultKeyedRateLimiter<K>>,
    next_sweep: Mutex<Instant>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(what: &'static str, quota: Quota, max: usize) -> Self {
        Table {
            what,
            quota,
            max,
            limiter: RwLock::new(DefaultKeyedRateLimiter::keyed(quota)),
            next_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Takes one cell from `key`'s budget; `Err(wait)` when the budget is spent.
    fn check(&self, key: &K) -> Result<(), Duration> {
        let (result, len) = {
            let limiter = self.limiter.read().unwrap_or_else(PoisonError::into_inner);
            let result = limiter.check_key(key).map_err(|not_until| not_until.wait_time_from(limiter.clock().now()));
            (result, limiter.len())
        };
        if len > self.max.saturating_mul(2) {
            self.reset(len);
        } else if len > self.max {
            self.sweep(false);
        }
        result
    }

    /// Drops keys whose budget is whole again; starts afresh if the table is still over `max`.
    /// Unless `force`d, does nothing when a sweep ran less than [`SWEEP_INTERVAL`] ago or another
    /// thread is sweeping.
    fn sweep(&self, force: bool) {
        {
            let Ok(mut next) = self.next_sweep.try_lock() else { return };
            let now = Instant::now();
            if !force && now < *next {
                return;
            }
            *next = now + SWEEP_INTERVAL;
        }
        let len = {
            let limiter = self.limiter.read().unwrap_or_else(PoisonError::into_inner);
            limiter.retain_recent();
            if force {
                limiter.shrink_to_fit();
            }
            limiter.len()
        };
        if len > self.max {
            self.reset(len);
        }
    }

    fn reset(&self, len: usize) {
        let mut limiter = self.limiter.write().unwrap_or_else(PoisonError::into_inner);
        // Another thread may have reset it while this one waited for the lock.
        if limiter.len() > self.max {
            *limiter = DefaultKeyedRateLimiter::keyed(self.quota);
            warn!(
                table = self.what,
                keys = len,
                max = self.max,
                "rate-limit table full of active keys (a flood from many sources?): starting it afresh; \
                 raise limits.max_tracked_sources if this is legitimate traffic"
            );
        }
    }

    fn len(&self) -> usize {
        self.limiter.read().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// Connection, authentication-failure and API rate limits (see the module doc).
pub struct Limiter {
    max_tracked: usize,
    connections: Table<Source>,
    auth_failures: Table<AuthKey>,
    api: Table<i64>,
    /// Keys in back-off, until when.
    blocked: Mutex<HashMap<AuthKey, Instant>>,
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
        let max_tracked = cfg.max_tracked_sources.max(16);
        Limiter {
            max_tracked,
            connections: Table::new("connections", connections, max_tracked),
            auth_failures: Table::new("auth_failures", auth, max_tracked),
            api: Table::new("api", api, max_tracked),
            blocked: Mutex::default(),
        }
    }

    /// Whether a new connection from `source` may proceed.
    pub fn allow_connection(&self, source: IpAddr) -> bool {
        self.connections.check(&Source::from(source)).is_ok()
    }

    /// Records a failed authentication; returns the back-off the source or UUID is now under.
    pub fn auth_failed(&self, source: IpAddr, uuid: Option<Uuid>) -> Option<Duration> {
        let mut longest: Option<Duration> = None;
        let keys = std::iter::once(AuthKey::Source(source.into())).chain(uuid.map(AuthKey::Device));
        for key in keys {
            if let Err(wait) = self.auth_failures.check(&key) {
                longest = Some(longest.map_or(wait, |l| l.max(wait)));
                self.block(key, wait);
            }
        }
        longest
    }

    fn block(&self, key: AuthKey, wait: Duration) {
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if blocked.len() >= self.max_tracked && !blocked.contains_key(&key) {
            blocked.retain(|_, until| *until > now);
            if blocked.len() >= self.max_tracked {
                // Still full of live entries: keep the half that stays blocked longest rather
                // than grow. This runs once per `max_tracked / 2` new keys at most.
                let mut entries: Vec<(AuthKey, Instant)> = blocked.drain().collect();
                entries.sort_unstable_by_key(|(_, until)| std::cmp::Reverse(*until));
                entries.truncate(self.max_tracked / 2);
                blocked.extend(entries);
            }
        }
        let until = now + wait;
        let entry = blocked.entry(key).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Whether this source or UUID is in back-off now, and for how long still.
    pub fn auth_blocked(&self, source: IpAddr, uuid: Option<Uuid>) -> Option<Duration> {
        let blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let keys = std::iter::once(AuthKey::Source(source.into())).chain(uuid.map(AuthKey::Device));
        keys.filter_map(|k| blocked.get(&k).copied()).filter(|until| *until > now).map(|until| until - now).max()
    }

    /// Whether an API request with this token may proceed.
    pub fn allow_api(&self, token_id: i64) -> bool {
        self.api.check(&token_id).is_ok()
    }

    /// Forgets idle keys and expired back-offs; call every minute or so.
    pub fn housekeeping(&self) {
        self.connections.sweep(true);
        self.auth_failures.sweep(true);
        self.api.sweep(true);
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        blocked.retain(|_, until| *until > now);
        blocked.shrink_to_fit();
    }

    /// How many keys the limiter tracks now (connections, auth failures, API tokens, back-offs).
    pub fn tracked(&self) -> (usize, usize, usize, usize) {
        let blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner).len();
        (self.connections.len(), self.auth_failures.len(), self.api.len(), blocked)
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
    fn a_flood_of_distinct_sources_keeps_the_tables_bounded() {
        let cfg = LimitsConfig {
            connections_per_second_per_source: 1,
            connection_burst_per_source: 5,
            auth_failures_per_minute: 1,
            auth_failure_burst: 1,
            max_tracked_sources: 16,
            ..Default::default()
        };
        let limiter = Limiter::new(&cfg);
        for i in 0..5_000u32 {
            let source = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(limiter.allow_connection(source));
            limiter.auth_failed(source, Some(Uuid::new_v4()));
            limiter.auth_failed(source, None);
        }
        let (connections, auth, api, blocked) = limiter.tracked();
        assert!(connections <= 32 && auth <= 32 && api == 0 && blocked <= 16, "{:?}", limiter.tracked());
        limiter.housekeeping();
        // Sources whose budget is whole again are forgotten; one in use keeps its budget.
        let busy: IpAddr = "198.18.0.1".parse().unwrap();
        assert_eq!((0..10).filter(|_| limiter.allow_connection(busy)).count(), 5);
        limiter.housekeeping();
        assert!(!limiter.allow_connection(busy));
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
