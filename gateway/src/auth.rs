//! Passwords and tokens: argon2id hashes for MPS passwords, SHA-256 for high-entropy API tokens,
//! a cache of successful password verifications, and [`PasswordChecker`], which runs argon2 on
//! its own threads behind an async limit.
//!
//! The cache exists because thousands of devices often share one MPS password: after a restart
//! they all reconnect, and one argon2 run each would cost minutes of CPU. It keys on an HMAC
//! (per-process random key) of the stored hash and the password, so it never holds a password,
//! and it only remembers successes. What it does not do: decide which hash applies (`identity`).

use std::collections::HashSet;
use std::sync::Mutex;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("could not hash the password: {0}")]
    Hash(String),
}

/// Hashes a password with argon2id (PHC string, random salt).
pub fn hash_password(password: &[u8]) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password, &salt).map(|h| h.to_string()).map_err(|e| AuthError::Hash(e.to_string()))
}

/// Checks a password against a PHC hash; a malformed hash never matches.
pub fn verify_password(phc: &str, password: &[u8]) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| Argon2::default().verify_password(password, &hash).is_ok())
}

type HmacSha256 = Hmac<Sha256>;

/// Remembers successful verifications (see the module doc). It never holds a password, only an
/// HMAC of the stored hash and the password under a per-process key.
pub struct VerifyCache {
    key: [u8; 32],
    capacity: usize,
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl std::fmt::Debug for VerifyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyCache").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

impl VerifyCache {
    pub fn new(capacity: usize) -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self { key, capacity: capacity.max(1), verified: Mutex::default() }
    }

    fn is_cached(&self, tag: &[u8; 32]) -> bool {
        self.verified.lock().is_ok_and(|set| set.contains(tag))
    }

    fn remember(&self, tag: [u8; 32]) {
        if let Ok(mut set) = self.verified.lock() {
            if set.len() >= self.capacity {
                set.clear();
            }
            set.insert(tag);
        }
    }

    fn tag(&self, phc: &str, password: &[u8]) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(phc.as_bytes());
        mac.update(&[0]);
        mac.update(password);
        mac.finalize().into_bytes().into()
    }

    /// Whether this password was already verified against this hash (no argon2 run).
    pub fn is_known_good(&self, phc: &str, password: &[u8]) -> bool {
        self.is_cached(&self.tag(phc, password))
    }

    /// Like [`verify_password`] (blocking: runs argon2 unless the pair is known good).
    pub fn verify(&self, phc: &str, password: &[u8]) -> bool {
        let tag = self.tag(phc, password);
        if self.is_cached(&tag) {
            return true;
        }
        let ok = verify_password(phc, password);
        if ok {
            self.remember(tag);
        }
        ok
    }
}

/// Why a password could not be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The checker's threads are gone (they only end with the process).
    #[error("the password checker is not running")]
    Busy,
    #[error("the password check did not finish before the deadline")]
    Timeout,
}

struct Job {
    phc: String,
    password: Vec<u8>,
    reply: tokio::sync::oneshot::Sender<bool>,
}

/// Runs argon2 verifications on its own threads (one per core), never on tokio's workers or
/// its blocking pool, so that a storm of first logins never delays API token checks. At most
/// `threads + queue` checks are handed to the threads at once; the others wait asynchronously
/// for a place, and every check, waiting included, is bounded by the caller's deadline
/// ([`CheckError::Timeout`]). Known-good pairs (see [`VerifyCache`]) are answered without a
/// thread, also after a wait.
pub struct PasswordChecker {
    cache: std::sync::Arc<VerifyCache>,
    admitted: std::sync::Arc<tokio::sync::Semaphore>,
    jobs: std::sync::mpsc::SyncSender<Job>,
    /// Hashes an unknown user's password is checked against, so that it takes as long as a wrong
    /// password for a known one.
    dummy_hash: String,
    /// Checks handed to the argon2 threads so far.
    started: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for PasswordChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordChecker").field("admitted", &self.admitted.available_permits()).finish_non_exhaustive()
    }
}

impl PasswordChecker {
    /// Starts `threads` verifier threads (0 = one per core) admitting `queue` waiting checks.
    pub fn start(threads: usize, queue: usize, cache_capacity: usize) -> std::io::Result<Self> {
        let threads = if threads == 0 { std::thread::available_parallelism().map_or(2, |n| n.get()) } else { threads };
        // Room for every admitted job, so that handing one over never fails while the threads
        // have not picked up the earlier ones yet: the semaphore below is the bound.
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(threads + queue.max(1));
        let rx = std::sync::Arc::new(Mutex::new(rx));
        let cache = std::sync::Arc::new(VerifyCache::new(cache_capacity));
        for i in 0..threads {
            let rx = std::sync::Arc::clone(&rx);
            let cache = std::sync::Arc::clone(&cache);
            std::thread::Builder::new().name(format!("tether-argon2-{i}")).spawn(move || loop {
                let job = {
                    let Ok(rx) = rx.lock() else { return };
                    match rx.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    }
                };
                // The caller may have given up (deadline): skip the work.
                if job.reply.is_closed() {
                    continue;
                }
                let ok = cache.verify(&job.phc, &job.password);
                let _ = job.reply.send(ok);
            })?;
        }
        let dummy_hash =
            hash_password(&rand::rng().random::<[u8; 16]>()).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self {
            cache,
            admitted: std::sync::Arc::new(tokio::sync::Semaphore::new(threads + queue.max(1))),
            jobs,
            dummy_hash,
            started: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Whether `password` matches `phc`, bounded by `deadline`.
    pub async fn check(&self, phc: &str, password: &[u8], deadline: tokio::time::Instant) -> Result<bool, CheckError> {
        if self.cache.is_known_good(phc, password) {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CheckError::Timeout);
        }
        // Wait for a place (bounded by the deadline); the waiting tasks are bounded by the
        // connections the gateway lets wait for authentication.
        let _permit = match tokio::time::timeout_at(deadline, self.admitted.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(CheckError::Busy),
            Err(_) => return Err(CheckError::Timeout),
        };
        // Thousands of devices often share one password: the first check may have proven it
        // while this one waited.
        if self.cache.is_known_good(phc, password) {
            return Ok(true);
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job { phc: phc.to_string(), password: password.to_vec(), reply };
        // Never blocks: the semaphore admits no more jobs than the channel and threads hold.
        self.jobs.try_send(job).map_err(|_| CheckError::Busy)?;
        self.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(ok)) => Ok(ok),
            Ok(Err(_)) => Err(CheckError::Busy),
            Err(_) => Err(CheckError::Timeout),
        }
    }

    /// Runs a check that always fails, taking as long as a real one: for unknown users and
    /// UUIDs, so that they cannot be told apart from a wrong password by timing.
    pub async fn check_dummy(&self, password: &[u8], deadline: tokio::time::Instant) -> Result<bool, CheckError> {
        let dummy = self.dummy_hash.clone();
        self.check(&dummy, password, deadline).await.map(|_| false)
    }

    /// How many checks were handed to the argon2 threads so far (answers from the cache are not).
    pub fn started(&self) -> u64 {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Only the cache: whether this pair was proven good before (no argon2 run).
    pub fn is_known_good(&self, phc: &str, password: &[u8]) -> bool {
        self.cache.is_known_good(phc, password)
    }
}

/// A new API token: `tth_` and 32 random bytes, base64url.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("tth_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// A new random password (for generated MPS credentials): 20 random characters from an
/// unambiguous alphabet (about 116 bits), then `A1a!` so that AMT's rule (upper, lower, digit and
/// symbol) always holds; 24 characters in all, within AMT's 32.
pub fn new_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    let mut password: String = (0..20).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect();
    password.push_str("A1a!");
    password
}

/// Hex SHA-256 of a token (tokens are high-entropy, so a fast hash is the right tool).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_against_their_hash_only() {
        let hash = hash_password(b"P@ssw0rd").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, b"P@ssw0rd"));
        assert!(!verify_password(&hash, b"P@ssw0rD"));
        assert!(!verify_password("not a hash", b"P@ssw0rd"));
    }

    #[test]
    fn the_cache_accepts_only_what_argon2_accepted() {
        let cache = VerifyCache::new(2);
        let hash = hash_password(b"secret").unwrap();
        assert!(!cache.verify(&hash, b"wrong"));
        assert!(cache.verify(&hash, b"secret"));
        assert!(cache.verify(&hash, b"secret"));
        assert!(!cache.verify(&hash, b"wrong"));
        // A new hash for the same password (credentials changed) is checked afresh.
        let other = hash_password(b"other").unwrap();
        assert!(!cache.verify(&other, b"secret"));
    }

    #[test]
    fn tokens_are_distinct_and_hash_stably() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("tth_") && a.len() == 4 + 43);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_eq!(hash_token(&a).len(), 64);
        let password = new_password();
        assert_ne!(password, new_password());
        assert_eq!(password.len(), 24);
        assert!(password.bytes().all(|b| b.is_ascii_graphic()));
    }

    /// A hash that takes argon2 about a second to check, so that checks are still running when
    /// the next ones arrive.
    fn slow_hash(password: &[u8]) -> String {
        let params = argon2::Params::new(64 * 1024, 8, 1, None).unwrap();
        let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        argon.hash_password(password, &SaltString::generate(&mut OsRng)).unwrap().to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_checker_runs_argon2_off_the_runtime_and_bounds_the_queue() {
        let checker = std::sync::Arc::new(PasswordChecker::start(1, 1, 10).unwrap());
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
        let fast = hash_password(b"shared").unwrap();
        assert_eq!(checker.check(&fast, b"shared", far).await, Ok(true));
        assert_eq!(checker.check(&fast, b"wrong", far).await, Ok(false));
        // One check running and one queued fill the checker: a third waits for a place, and
        // gives up at its deadline.
        let slow = slow_hash(b"slow");
        let running: Vec<_> = (0..2u8)
            .map(|i| {
                let (checker, slow) = (std::sync::Arc::clone(&checker), slow.clone());
                tokio::spawn(async move { checker.check(&slow, &[i], far).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let soon = tokio::time::Instant::now() + std::time::Duration::from_millis(100);
        assert_eq!(checker.check(&slow, b"third", soon).await, Err(CheckError::Timeout));
        // Known good: answered from the cache while the threads are busy.
        assert_eq!(checker.check(&fast, b"shared", far).await, Ok(true));
        for task in running {
            assert_eq!(task.await.unwrap(), Ok(false));
        }
        // A deadline in the past is a timeout, not a hang.
        let past = tokio::time::Instant::now();
        assert_eq!(checker.check(&fast, b"other", past).await, Err(CheckError::Timeout));
        assert_eq!(checker.check_dummy(b"anything", far).await, Ok(false));
    }

    #[test]
    fn a_full_cache_starts_over_and_still_verifies() {
        let cache = VerifyCache::new(1);
        let (a, b) = (hash_password(b"a").unwrap(), hash_password(b"b").unwrap());
        assert!(cache.verify(&a, b"a") && cache.verify(&b, b"b") && cache.verify(&a, b"a"));
        assert_eq!(cache.verified.lock().unwrap().len(), 1);
    }
}
