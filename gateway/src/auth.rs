//! Passwords and tokens: argon2id hashes for MPS passwords, SHA-256 for high-entropy API tokens,
//! and a cache of successful password verifications.
//!
//! The cache exists because thousands of devices often share one MPS password: after a restart
//! they all reconnect, and one argon2 run each would cost minutes of CPU. It keys on an HMAC
//! (per-process random key) of the stored hash and the password, so it never holds a password,
//! and it only remembers successes. What it does not do: decide which hash applies (`daemon`).

use std::collections::HashSet;
use std::sync::{Condvar, Mutex};

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

/// Remembers successful verifications (see the module doc), and lets only a few argon2 runs
/// happen at once: each takes 19 MiB and tens of milliseconds, and thousands of devices may ask
/// at the same moment; those that wait find the cache filled by the first.
pub struct VerifyCache {
    key: [u8; 32],
    capacity: usize,
    verified: Mutex<HashSet<[u8; 32]>>,
    running: Mutex<usize>,
    slot_freed: Condvar,
    max_running: usize,
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
        let max_running = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            key,
            capacity: capacity.max(1),
            verified: Mutex::default(),
            running: Mutex::new(0),
            slot_freed: Condvar::new(),
            max_running,
        }
    }

    fn is_cached(&self, tag: &[u8; 32]) -> bool {
        self.verified.lock().is_ok_and(|set| set.contains(tag))
    }

    /// Runs `f` once fewer than `max_running` others are running (blocking the thread meanwhile).
    fn gated<T>(&self, f: impl FnOnce() -> T) -> T {
        /// Gives the slot back however `f` ends.
        struct Slot<'a>(&'a VerifyCache);
        impl Drop for Slot<'_> {
            fn drop(&mut self) {
                let mut running = self.0.running.lock().unwrap_or_else(|e| e.into_inner());
                *running = running.saturating_sub(1);
                self.0.slot_freed.notify_one();
            }
        }
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            while *running >= self.max_running {
                running = self.slot_freed.wait(running).unwrap_or_else(|e| e.into_inner());
            }
            *running += 1;
        }
        let _slot = Slot(self);
        f()
    }

    fn tag(&self, phc: &str, password: &[u8]) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(phc.as_bytes());
        mac.update(&[0]);
        mac.update(password);
        mac.finalize().into_bytes().into()
    }

    /// Like [`verify_password`], but a password already verified against this hash is accepted
    /// without running argon2 again.
    /// Whether this password was already verified against this hash (no argon2 run).
    pub fn is_known_good(&self, phc: &str, password: &[u8]) -> bool {
        self.is_cached(&self.tag(phc, password))
    }

    pub fn verify(&self, phc: &str, password: &[u8]) -> bool {
        let tag = self.tag(phc, password);
        if self.is_cached(&tag) {
            return true;
        }
        let ok = self.gated(|| self.is_cached(&tag) || verify_password(phc, password));
        if !ok {
            return false;
        }
        if let Ok(mut set) = self.verified.lock() {
            if set.len() >= self.capacity {
                set.clear();
            }
            set.insert(tag);
        }
        true
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

    #[test]
    fn many_threads_verifying_at_once_all_succeed() {
        let cache = std::sync::Arc::new(VerifyCache::new(10));
        let hash = hash_password(b"shared").unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (cache, hash) = (std::sync::Arc::clone(&cache), hash.clone());
                std::thread::spawn(move || cache.verify(&hash, b"shared") && !cache.verify(&hash, &[i]))
            })
            .collect();
        assert!(threads.into_iter().all(|t| t.join().unwrap()));
        assert_eq!(*cache.running.lock().unwrap(), 0);
    }

    #[test]
    fn a_full_cache_starts_over_and_still_verifies() {
        let cache = VerifyCache::new(1);
        let (a, b) = (hash_password(b"a").unwrap(), hash_password(b"b").unwrap());
        assert!(cache.verify(&a, b"a") && cache.verify(&b, b"b") && cache.verify(&a, b"a"));
        assert_eq!(cache.verified.lock().unwrap().len(), 1);
    }
}
