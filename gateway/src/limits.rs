//! Rate limits and caps (governor for rates): new connections per source address, failed
//! authentications per source and per UUID (with back-off), API requests per token, and for the
//! technician API, requests and failed token checks per source ([`SourceLimiter`]) and open
//! connections in all and per source ([`ConnectionCaps`]).
//!
//! Sources are keyed by IPv4 address or IPv6 /64, so one abusive source never shuts others out,
//! and the defaults let a few hundred PCs behind one NAT reconnect at once after a restart. Every
//! table is bounded (`max_tracked_sources`, or the connection cap). What it does not do: count
//! (that is `metrics`), or answer anyone (the callers decide what a refusal looks like).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
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
    /// Open files kept free of device connections near the open-files limit: for the store,
    /// logs, outgoing connections and (half of them) technicians' connections (see `files`).
    pub reserved_files: usize,
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
            reserved_files: 256,
        }
    }
}

/// The key for a source address: the address itself for IPv4, its /64 for IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4(u32),
    V6(u64),
}

/// As the store keeps it: `192.0.2.7`, or `2001:db8:1:2::/64`.
impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Source::V4(addr) => write!(f, "{}", Ipv4Addr::from(addr)),
            Source::V6(prefix) => write!(f, "{}/64", Ipv6Addr::from(u128::from(prefix) << 64)),
        }
    }
}

/// A source that is neither an IPv4 address nor an IPv6 `PREFIX/64`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither an IPv4 address nor an IPv6 prefix ending in /64")]
pub struct BadSource(String);

impl std::str::FromStr for Source {
    type Err = BadSource;

    fn from_str(text: &str) -> Result<Source, BadSource> {
        let bad = || BadSource(text.chars().take(64).collect());
        match text.strip_suffix("/64") {
            Some(prefix) => {
                let addr: Ipv6Addr = prefix.parse().map_err(|_| bad())?;
                Ok(Source::V6((u128::from(addr) >> 64) as u64))
            }
            None => text.parse::<Ipv4Addr>().map(|addr| Source::V4(addr.into())).map_err(|_| bad()),
        }
    }
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
    /// One UUID from one source: the pair that keeps failing.
    Pair(Source, Uuid),
}

/// While a source or a UUID (but not the pair) is in back-off, one real password check per key
/// is let through this often: a correctly configured PC behind the same NAT as a misconfigured
/// one, or a device whose UUID an attacker keeps failing for, still gets in within seconds,
/// while the attacker gets no more argon2 work out of the gateway than this.
const SLOW_CHECK_EVERY: Duration = Duration::from_secs(2);

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

/// Keys under back-off, each until when; bounded by `max` keys.
struct Backoff<K: Hash + Eq + Clone> {
    max: usize,
    until: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq + Clone> Backoff<K> {
    fn new(max: usize) -> Self {
        Backoff { max, until: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Instant>> {
        self.until.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `key` under back-off for `wait` (or longer, if it is already).
    fn block(&self, key: K, wait: Duration) {
        let mut blocked = self.lock();
        let now = Instant::now();
        if blocked.len() >= self.max && !blocked.contains_key(&key) {
            blocked.retain(|_, until| *until > now);
            if blocked.len() >= self.max {
                // Still full of live entries: keep the half that stays blocked longest rather
                // than grow. This runs once per `max / 2` new keys at most.
                let mut entries: Vec<(K, Instant)> = blocked.drain().collect();
                entries.sort_unstable_by_key(|(_, until)| std::cmp::Reverse(*until));
                entries.truncate(self.max / 2);
                blocked.extend(entries);
            }
        }
        let until = now + wait;
        let entry = blocked.entry(key).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// The longest back-off any of `keys` is under now.
    fn remaining<'a>(&self, keys: impl IntoIterator<Item = &'a K>) -> Option<Duration>
    where
        K: 'a,
    {
        let blocked = self.lock();
        let now = Instant::now();
        keys.into_iter()
            .filter_map(|k| blocked.get(k).copied())
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max()
    }

    fn housekeeping(&self) {
        let mut blocked = self.lock();
        let now = Instant::now();
        blocked.retain(|_, until| *until > now);
        blocked.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Connections sources may make beyond their burst for a while after a start: as many as each
/// held before ([`Limiter::remember`]).
struct Remembered {
    until: Instant,
    /// What each source held before the restart.
    held: HashMap<Source, u32>,
    /// What each source may still bring back (a source goes once it has brought all back).
    left: HashMap<Source, u32>,
}

/// Connection, authentication-failure and API rate limits (see the module doc).
pub struct Limiter {
    max_tracked: usize,
    connections: Table<Source>,
    remembered: Mutex<Option<Remembered>>,
    auth_failures: Table<AuthKey>,
    /// Real checks allowed while in back-off ([`SLOW_CHECK_EVERY`]).
    slow_checks: Table<AuthKey>,
    api: Table<i64>,
    blocked: Backoff<AuthKey>,
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
            remembered: Mutex::new(None),
            auth_failures: Table::new("auth_failures", auth, max_tracked),
            slow_checks: Table::new(
                "slow_checks",
                Quota::with_period(SLOW_CHECK_EVERY).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN)),
                max_tracked,
            ),
            api: Table::new("api", api, max_tracked),
            blocked: Backoff::new(max_tracked),
        }
    }

    /// Whether a new connection from `source` may proceed: within its rate and burst, or else
    /// within what it may still bring back of the tunnels it held before ([`Limiter::remember`]).
    pub fn allow_connection(&self, source: IpAddr) -> bool {
        let source = Source::from(source);
        self.connections.check(&source).is_ok() || self.take_remembered(source)
    }

    /// Lets each source in `held` make as many connections as it held tunnels before a restart,
    /// at once and beyond its burst, for `window` from now (a big NAT's devices all come back
    /// together; a source not in `held` keeps the default burst). At most `max_tracked_sources`
    /// sources, those with the most tunnels first. Returns the sources and tunnels granted.
    pub fn remember(&self, held: impl IntoIterator<Item = (Source, u32)>, window: Duration) -> (usize, u64) {
        let mut held: Vec<(Source, u32)> = held.into_iter().filter(|(_, n)| *n > 0).collect();
        held.sort_unstable_by_key(|(_, n)| std::cmp::Reverse(*n));
        held.truncate(self.max_tracked);
        let granted = (held.len(), held.iter().map(|(_, n)| u64::from(*n)).sum());
        let mut left: HashMap<Source, u32> = HashMap::with_capacity(held.len());
        for (source, n) in held {
            let entry = left.entry(source).or_default();
            *entry = entry.saturating_add(n);
        }
        let remembered =
            (!left.is_empty()).then(|| Remembered { until: Instant::now() + window, held: left.clone(), left });
        *self.remembered.lock().unwrap_or_else(PoisonError::into_inner) = remembered;
        granted
    }

    /// How many tunnels `source` held before a restart, while it is still bringing them back
    /// (0 when it is not remembered, has brought all back, or the window is over): how many
    /// connections it may have waiting for authentication at once.
    pub fn remembered_for(&self, source: IpAddr) -> u32 {
        let source = Source::from(source);
        let remembered = self.remembered.lock().unwrap_or_else(PoisonError::into_inner);
        match remembered.as_ref() {
            Some(table) if Instant::now() < table.until && table.left.contains_key(&source) => {
                table.held.get(&source).copied().unwrap_or_default()
            }
            _ => 0,
        }
    }

    /// What each remembered source may still bring back, while the window lasts.
    pub fn remembered_left(&self) -> Vec<(Source, u32)> {
        let remembered = self.remembered.lock().unwrap_or_else(PoisonError::into_inner);
        match remembered.as_ref() {
            Some(table) if Instant::now() < table.until => table.left.iter().map(|(s, n)| (*s, *n)).collect(),
            _ => Vec::new(),
        }
    }

    /// Takes one connection from what `source` may still bring back; false when it has nothing
    /// left or the window is over (then the whole table goes).
    fn take_remembered(&self, source: Source) -> bool {
        let mut remembered = self.remembered.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(table) = remembered.as_mut() else { return false };
        if Instant::now() >= table.until {
            *remembered = None;
            return false;
        }
        let Entry::Occupied(mut left) = table.left.entry(source) else { return false };
        *left.get_mut() -= 1;
        if *left.get() == 0 {
            left.remove();
        }
        true
    }

    /// Records a failed authentication; returns the back-off the source or UUID is now under.
    pub fn auth_failed(&self, source: IpAddr, uuid: Option<Uuid>) -> Option<Duration> {
        let mut longest: Option<Duration> = None;
        let source = Source::from(source);
        let keys = [Some(AuthKey::Source(source)), uuid.map(AuthKey::Device), uuid.map(|u| AuthKey::Pair(source, u))]
            .into_iter()
            .flatten();
        for key in keys {
            if let Err(wait) = self.auth_failures.check(&key) {
                longest = Some(longest.map_or(wait, |l| l.max(wait)));
                self.blocked.block(key, wait);
            }
        }
        longest
    }

    /// Whether this source or UUID is in back-off now, and for how long still.
    pub fn auth_blocked(&self, source: IpAddr, uuid: Option<Uuid>) -> Option<Duration> {
        let keys: Vec<AuthKey> =
            std::iter::once(AuthKey::Source(source.into())).chain(uuid.map(AuthKey::Device)).collect();
        self.blocked.remaining(&keys)
    }

    /// While [`auth_blocked`](Self::auth_blocked): whether a real password check may run now
    /// anyway (otherwise only a password proven good before is accepted). Never for the pair
    /// (this UUID from this source) itself in back-off; otherwise once per [`SLOW_CHECK_EVERY`]
    /// per key in back-off.
    pub fn slow_check_allowed(&self, source: IpAddr, uuid: Uuid) -> bool {
        let source = Source::from(source);
        if self.blocked.remaining(&[AuthKey::Pair(source, uuid)]).is_some() {
            return false;
        }
        [AuthKey::Source(source), AuthKey::Device(uuid)]
            .into_iter()
            .filter(|key| self.blocked.remaining(std::slice::from_ref(key)).is_some())
            .all(|key| self.slow_checks.check(&key).is_ok())
    }

    /// Whether an API request with this token may proceed.
    pub fn allow_api(&self, token_id: i64) -> bool {
        self.api.check(&token_id).is_ok()
    }

    /// Forgets idle keys and expired back-offs; call every minute or so.
    pub fn housekeeping(&self) {
        self.connections.sweep(true);
        self.auth_failures.sweep(true);
        self.slow_checks.sweep(true);
        self.api.sweep(true);
        self.blocked.housekeeping();
    }

    /// How many keys the limiter tracks now (connections, auth failures, API tokens, back-offs).
    pub fn tracked(&self) -> (usize, usize, usize, usize) {
        (self.connections.len(), self.auth_failures.len(), self.api.len(), self.blocked.len())
    }
}

/// Failed token checks (missing, malformed, unknown or expired token) a source may make at once
/// before it is put under back-off...
pub const API_FAILURE_BURST: u32 = 10;
/// ...and how many more it may make per minute after that. A technician who mistypes a token
/// never notices; a source trying tokens gets about one store lookup per second, and every other
/// request from it is answered 429 without one.
pub const API_FAILURES_PER_MINUTE: u32 = 60;

/// The technician API's per-source limits, checked before any token lookup: requests per source
/// (`api.requests_per_second_per_source` / `api.request_burst_per_source`), and a stricter budget
/// of failed token checks ([`API_FAILURE_BURST`], [`API_FAILURES_PER_MINUTE`]); once a source has
/// spent that, all its requests are refused until its back-off is over, so a storm of wrong tokens
/// costs one lookup a second. Valid tokens from other sources are not affected.
pub struct SourceLimiter {
    requests: Table<Source>,
    failures: Table<Source>,
    blocked: Backoff<Source>,
}

impl std::fmt::Debug for SourceLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceLimiter").field("tracked", &self.tracked()).finish_non_exhaustive()
    }
}

impl SourceLimiter {
    /// `max_tracked` bounds each table (`limits.max_tracked_sources`).
    pub fn new(requests_per_second: u32, burst: u32, max_tracked: usize) -> SourceLimiter {
        let max_tracked = max_tracked.max(16);
        let requests = Quota::per_second(nonzero(requests_per_second)).allow_burst(nonzero(burst));
        let failures = Quota::per_minute(nonzero(API_FAILURES_PER_MINUTE)).allow_burst(nonzero(API_FAILURE_BURST));
        SourceLimiter {
            requests: Table::new("api_requests_per_source", requests, max_tracked),
            failures: Table::new("api_failures_per_source", failures, max_tracked),
            blocked: Backoff::new(max_tracked),
        }
    }

    /// Takes one request from `source`'s budget; `Err(wait)` if it is spent or the source is under
    /// back-off for failed token checks (then nothing is taken).
    pub fn check_request(&self, source: IpAddr) -> Result<(), Duration> {
        let source = Source::from(source);
        if let Some(wait) = self.blocked.remaining([&source]) {
            return Err(wait);
        }
        self.requests.check(&source)
    }

    /// Records a failed token check from `source`; returns the back-off it is now under, if any.
    pub fn token_failed(&self, source: IpAddr) -> Option<Duration> {
        let source = Source::from(source);
        let wait = self.failures.check(&source).err()?;
        self.blocked.block(source, wait);
        Some(wait)
    }

    /// Forgets idle sources and expired back-offs; call every minute or so.
    pub fn housekeeping(&self) {
        self.requests.sweep(true);
        self.failures.sweep(true);
        self.blocked.housekeeping();
    }

    /// How many sources are tracked now (requests, failures, back-offs).
    pub fn tracked(&self) -> (usize, usize, usize) {
        (self.requests.len(), self.failures.len(), self.blocked.len())
    }
}

/// Failed portal sign-ins (a wrong password or TOTP code) a source, or a username, may make at
/// once before it is put under back-off...
pub const SIGN_IN_FAILURE_BURST: u32 = 5;
/// ...and how many more per minute after that. Many people behind one NAT mistyping now and
/// then never notice; a source or a username being guessed at gets a few argon2 runs a minute.
pub const SIGN_IN_FAILURES_PER_MINUTE: u32 = 6;

/// The portal's sign-in throttle: failed sign-ins per source and per username, each with its own
/// back-off. [`SignInLimiter::blocked`] is asked before the password is hashed, so a source or
/// username in back-off costs no argon2 run. Usernames are keyed by at most
/// [`MAX_THROTTLED_USERNAME`] bytes, and both tables are bounded like every other here.
pub struct SignInLimiter {
    sources: Table<Source>,
    usernames: Table<String>,
    blocked_sources: Backoff<Source>,
    blocked_usernames: Backoff<String>,
}

/// Longest username kept as a throttle key (longer ones are cut: no user has one).
pub const MAX_THROTTLED_USERNAME: usize = 128;

impl std::fmt::Debug for SignInLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInLimiter").finish_non_exhaustive()
    }
}

fn username_key(username: &str) -> String {
    let mut end = username.len().min(MAX_THROTTLED_USERNAME);
    while !username.is_char_boundary(end) {
        end -= 1;
    }
    username[..end].to_lowercase()
}

impl SignInLimiter {
    /// `max_tracked` bounds each table (`limits.max_tracked_sources`).
    pub fn new(max_tracked: usize) -> SignInLimiter {
        let max_tracked = max_tracked.max(16);
        let quota = Quota::per_minute(nonzero(SIGN_IN_FAILURES_PER_MINUTE)).allow_burst(nonzero(SIGN_IN_FAILURE_BURST));
        SignInLimiter {
            sources: Table::new("sign_in_failures_per_source", quota, max_tracked),
            usernames: Table::new("sign_in_failures_per_username", quota, max_tracked),
            blocked_sources: Backoff::new(max_tracked),
            blocked_usernames: Backoff::new(max_tracked),
        }
    }

    /// Whether `source` or `username` is under back-off now, and for how long still.
    pub fn blocked(&self, source: IpAddr, username: &str) -> Option<Duration> {
        let by_source = self.blocked_sources.remaining([&Source::from(source)]);
        let by_name = self.blocked_usernames.remaining([&username_key(username)]);
        by_source.max(by_name)
    }

    /// Records a failed sign-in; the back-off the source or username is now under, if any.
    pub fn failed(&self, source: IpAddr, username: &str) -> Option<Duration> {
        let source = Source::from(source);
        let name = username_key(username);
        let mut longest = None;
        if let Err(wait) = self.sources.check(&source) {
            self.blocked_sources.block(source, wait);
            longest = Some(wait);
        }
        if let Err(wait) = self.usernames.check(&name) {
            self.blocked_usernames.block(name, wait);
            longest = Some(longest.map_or(wait, |l: Duration| l.max(wait)));
        }
        longest
    }

    /// Forgets idle keys and expired back-offs; call every minute or so.
    pub fn housekeeping(&self) {
        self.sources.sweep(true);
        self.usernames.sweep(true);
        self.blocked_sources.housekeeping();
        self.blocked_usernames.housekeeping();
    }
}

/// Which connection cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapReached {
    #[error("{0} connections are open, the most allowed")]
    Total(usize),
    #[error("{0} connections are open from this source, the most allowed")]
    PerSource(usize),
}

/// Open connections, in all and per source. The per-source table holds only sources with an
/// open connection, so it is bounded by the total cap.
#[derive(Debug)]
pub struct ConnectionCaps {
    max_total: usize,
    max_per_source: usize,
    state: Mutex<ConnectionCount>,
    /// Follows the open connections, when given.
    gauge: Option<prometheus::IntGauge>,
}

#[derive(Debug, Default)]
struct ConnectionCount {
    total: usize,
    per_source: HashMap<Source, usize>,
}

impl ConnectionCaps {
    pub fn new(max_total: usize, max_per_source: usize) -> Self {
        Self { max_total, max_per_source, state: Mutex::default(), gauge: None }
    }

    /// Keeps `gauge` equal to the number of open connections.
    pub fn with_gauge(mut self, gauge: prometheus::IntGauge) -> Self {
        self.gauge = Some(gauge);
        self
    }

    fn lock(&self) -> MutexGuard<'_, ConnectionCount> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a connection from `ip`, held until the slot is dropped.
    pub fn try_enter(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, CapReached> {
        self.try_enter_allowing(ip, 0)
    }

    /// Like [`try_enter`](Self::try_enter), but `ip` may hold up to `allowance` places when that
    /// is more than the per-source cap (a source bringing back, after a restart, the tunnels it
    /// held: see [`Limiter::remembered_for`]). The total cap still applies.
    pub fn try_enter_allowing(self: &Arc<Self>, ip: IpAddr, allowance: usize) -> Result<ConnectionSlot, CapReached> {
        let source = Source::from(ip);
        let mut state = self.lock();
        if state.total >= self.max_total {
            return Err(CapReached::Total(self.max_total));
        }
        let cap = self.max_per_source.max(allowance);
        let count = state.per_source.entry(source).or_insert(0);
        if *count >= cap {
            return Err(CapReached::PerSource(cap));
        }
        *count += 1;
        state.total += 1;
        if let Some(gauge) = &self.gauge {
            gauge.inc();
        }
        Ok(ConnectionSlot { caps: Arc::clone(self), source })
    }

    /// Open connections (in all, sources with one).
    pub fn open(&self) -> (usize, usize) {
        let state = self.lock();
        (state.total, state.per_source.len())
    }
}

/// One open connection's place in [`ConnectionCaps`]; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionSlot {
    caps: Arc<ConnectionCaps>,
    source: Source,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut state = self.caps.lock();
        state.total = state.total.saturating_sub(1);
        if let Entry::Occupied(mut count) = state.per_source.entry(self.source) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
        if let Some(gauge) = &self.caps.gauge {
            gauge.dec();
        }
    }
}

/// Lets a warning about one key out at most once per [`LOG_ONCE_EVERY`] (e.g. a UUID whose
/// claims keep being refused), so a misbehaving device cannot flood the log. The table is
/// bounded: past [`LOG_ONCE_MAX`] keys, stale ones are dropped, or all of them.
#[derive(Debug, Default)]
pub struct LogOnce<K> {
    last: Mutex<HashMap<K, Instant>>,
}

pub const LOG_ONCE_EVERY: Duration = Duration::from_secs(60);
pub const LOG_ONCE_MAX: usize = 10_000;

impl<K: Hash + Eq> LogOnce<K> {
    pub fn new() -> Self {
        Self { last: Mutex::default() }
    }

    /// Whether to log for `key` now (and if so, notes that it was).
    pub fn due(&self, key: K) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.get(&key).is_some_and(|at| now.duration_since(*at) < LOG_ONCE_EVERY) {
            return false;
        }
        if last.len() >= LOG_ONCE_MAX {
            last.retain(|_, at| now.duration_since(*at) < LOG_ONCE_EVERY);
            if last.len() >= LOG_ONCE_MAX {
                last.clear();
            }
        }
        last.insert(key, now);
        true
    }
}

/// For a long-lived connection whose peer may vanish without a word (a laptop asleep, a host
/// powered off): TCP keepalives and a user timeout, so that the connection, and what it holds (a
/// relay, a device channel, perhaps AMT's only redirection session), ends within about two
/// minutes. Also turns Nagle off (consoles send small messages).
pub fn detect_dead_peer(tcp: &tokio::net::TcpStream) {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(30))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(3);
    let socket = socket2::SockRef::from(tcp);
    let _ = socket.set_tcp_keepalive(&keepalive);
    #[cfg(target_os = "linux")]
    let _ = socket.set_tcp_user_timeout(Some(std::time::Duration::from_secs(90)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_once_lets_one_warning_per_key_through() {
        let once = LogOnce::new();
        assert!(once.due(1) && !once.due(1) && once.due(2));
    }

    #[test]
    fn connection_caps_keep_their_gauge() {
        let gauge = prometheus::IntGauge::new("test_open", "test").unwrap();
        let caps = Arc::new(ConnectionCaps::new(2, 1).with_gauge(gauge.clone()));
        let a = caps.try_enter("198.18.0.1".parse().unwrap()).unwrap();
        assert!(matches!(caps.try_enter("198.18.0.1".parse().unwrap()), Err(CapReached::PerSource(1))));
        let b = caps.try_enter("198.18.0.2".parse().unwrap()).unwrap();
        assert!(matches!(caps.try_enter("198.18.0.3".parse().unwrap()), Err(CapReached::Total(2))));
        assert_eq!(gauge.get(), 2);
        drop((a, b));
        assert_eq!((gauge.get(), caps.open()), (0, (0, 0)));
    }

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
    fn a_source_may_bring_back_at_once_the_tunnels_it_held_and_an_unknown_one_keeps_the_burst() {
        let cfg =
            LimitsConfig { connections_per_second_per_source: 1, connection_burst_per_source: 5, ..Default::default() };
        let limiter = Limiter::new(&cfg);
        let nat: IpAddr = "198.18.0.20".parse().unwrap();
        let v6: IpAddr = "2001:db8:7:9::1234".parse().unwrap();
        let unknown: IpAddr = "198.18.0.21".parse().unwrap();
        let held = [(Source::from(nat), 100), (Source::from(v6), 7), (Source::from(unknown), 0)];
        assert_eq!(limiter.remember(held, Duration::from_secs(600)), (2, 107));
        assert_eq!((limiter.remembered_for(nat), limiter.remembered_for(unknown)), (100, 0));
        assert!(limiter.allow_connection(v6));
        assert!(limiter.remembered_left().contains(&(Source::from(v6), 7)), "within the burst first");
        // Its burst, then what it held; then refused like anyone.
        assert_eq!((0..50).filter(|_| limiter.allow_connection(nat)).count(), 50);
        assert_eq!(limiter.remembered_for(nat), 100, "while bringing back: what it held, not what is left");
        assert_eq!((0..200).filter(|_| limiter.allow_connection(nat)).count(), 55);
        assert_eq!(limiter.remembered_for(nat), 0, "all brought back: the usual pending cap again");
        // Another address of the same /64 draws on the same allowance.
        let v6_other: IpAddr = "2001:db8:7:9::9".parse().unwrap();
        assert_eq!((0..20).filter(|_| limiter.allow_connection(v6_other)).count(), 11);
        assert_eq!((0..20).filter(|_| limiter.allow_connection(unknown)).count(), 5);
        assert!(limiter.remembered_left().is_empty(), "all taken");
    }

    #[test]
    fn what_a_source_held_is_forgotten_after_the_window() {
        let cfg =
            LimitsConfig { connections_per_second_per_source: 1, connection_burst_per_source: 2, ..Default::default() };
        let limiter = Limiter::new(&cfg);
        let nat: IpAddr = "198.18.0.22".parse().unwrap();
        limiter.remember([(Source::from(nat), 50)], Duration::ZERO);
        assert_eq!(limiter.remembered_for(nat), 0);
        assert_eq!((0..10).filter(|_| limiter.allow_connection(nat)).count(), 2);
        assert!(limiter.remembered.lock().unwrap().is_none(), "the table goes once its window is over");
    }

    #[test]
    fn sources_are_written_as_the_store_keeps_them_and_read_back() {
        for (ip, text) in
            [("192.0.2.7", "192.0.2.7"), ("2001:db8:1:2:aa::1", "2001:db8:1:2::/64"), ("::ffff:10.1.2.3", "10.1.2.3")]
        {
            let source = Source::from(ip.parse::<IpAddr>().unwrap());
            assert_eq!(source.to_string(), text);
            assert_eq!(text.parse::<Source>(), Ok(source));
        }
        for bad in ["", "2001:db8::1", "10.0.0.1/64", "not an address", "2001:db8::/48"] {
            assert!(bad.parse::<Source>().is_err(), "{bad:?}");
        }
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

    #[test]
    fn a_source_trying_tokens_is_put_under_back_off_and_others_are_not() {
        let limiter = SourceLimiter::new(1000, 1000, 100);
        let storm: IpAddr = "127.0.0.3".parse().unwrap();
        let good: IpAddr = "127.0.0.1".parse().unwrap();
        let mut lookups = 0;
        let mut refused = 0;
        for _ in 0..1000 {
            if limiter.check_request(storm).is_err() {
                refused += 1;
                continue;
            }
            lookups += 1;
            limiter.token_failed(storm);
        }
        assert_eq!(lookups, API_FAILURE_BURST as usize + 1, "{refused} refused");
        let wait = limiter.check_request(storm).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!((0..100).all(|_| limiter.check_request(good).is_ok()));
    }

    #[test]
    fn api_requests_per_source_have_a_burst_and_v6_is_grouped_by_64() {
        let limiter = SourceLimiter::new(1, 3, 100);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        assert_eq!((0..10).filter(|_| limiter.check_request(a).is_ok()).count(), 3);
        assert!(limiter.check_request("2001:db8:1:2::9".parse().unwrap()).is_err());
        assert!(limiter.check_request("2001:db8:1:3::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn a_flood_of_sources_keeps_the_api_tables_bounded() {
        let limiter = SourceLimiter::new(1, 1, 16);
        for i in 0..5_000u32 {
            let source = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            limiter.check_request(source).unwrap();
            for _ in 0..=API_FAILURE_BURST {
                limiter.token_failed(source);
            }
        }
        let (requests, failures, blocked) = limiter.tracked();
        assert!(requests <= 32 && failures <= 32 && blocked <= 16, "{:?}", limiter.tracked());
    }

    #[test]
    fn connection_caps_count_in_all_and_per_source_and_free_on_drop() {
        let caps = Arc::new(ConnectionCaps::new(3, 2));
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        let a1 = caps.try_enter(a).unwrap();
        let _a2 = caps.try_enter(a).unwrap();
        assert_eq!(caps.try_enter(a).unwrap_err(), CapReached::PerSource(2));
        let _b1 = caps.try_enter(b).unwrap();
        assert_eq!(caps.try_enter("198.18.0.3".parse().unwrap()).unwrap_err(), CapReached::Total(3));
        drop(a1);
        let _a3 = caps.try_enter(a).unwrap();
        assert_eq!(caps.open(), (3, 2));
    }

    #[test]
    fn a_source_bringing_back_its_tunnels_may_pass_the_per_source_cap_but_not_the_total() {
        let caps = Arc::new(ConnectionCaps::new(5, 2));
        let nat: IpAddr = "198.18.0.30".parse().unwrap();
        let held: Vec<ConnectionSlot> = (0..4).map(|_| caps.try_enter_allowing(nat, 4).unwrap()).collect();
        assert_eq!(caps.try_enter_allowing(nat, 4).unwrap_err(), CapReached::PerSource(4));
        assert_eq!(caps.try_enter(nat).unwrap_err(), CapReached::PerSource(2), "no allowance: the usual cap");
        let _other = caps.try_enter("198.18.0.31".parse().unwrap()).unwrap();
        assert_eq!(caps.try_enter_allowing(nat, 100).unwrap_err(), CapReached::Total(5));
        drop(held);
        assert_eq!(caps.open(), (1, 1));
    }
}
