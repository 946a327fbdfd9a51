//! TLS session tickets that outlive a restart. After a gateway restart every device reconnects
//! at once, and a full handshake costs the server key's signature (RSA-3072: about 0.85 ms of a
//! core here); a device that presents a ticket resumes with an ECDHE exchange and no signature.
//! rustls' own ticketer keeps its keys in memory, so a restart would throw every ticket away:
//! this one keeps them in `DATA_DIR/secrets/tls-tickets.key` (mode 0600).
//!
//! Tickets are sealed with AES-256-GCM from aws-lc-rs (random 96-bit nonce, the key's id as
//! associated data, the key's id and the format's version). A key seals for [`ROTATE_EVERY`] and opens for twice that: the file holds
//! the current key and the one before it, and the daemon's housekeeping rotates it. A ticket
//! lives [`TICKET_LIFETIME`]. `secrets/` travels in a fleet's join bundle, so gateways of one
//! fleet open each other's tickets until their first rotation; after that a ticket from another
//! gateway simply fails to open and the device gets a full handshake.

use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use rand::RngCore;
use tracing::{info, warn};

const KEY_FILE: &str = "secrets/tls-tickets.key";
const KEY_LEN: usize = 32;
/// One key record in the file: its creation time (u64, seconds since the epoch), its id (4
/// random bytes, named in each ticket) and the key.
const RECORD_LEN: usize = 8 + 4 + KEY_LEN;
/// Format version, the first byte of a ticket.
const VERSION: u8 = 1;
/// How long a key seals new tickets.
pub const ROTATE_EVERY: Duration = Duration::from_secs(12 * 3600);
/// How long a client may keep a ticket (a key opens for twice [`ROTATE_EVERY`]).
pub const TICKET_LIFETIME: Duration = ROTATE_EVERY;

struct Key {
    created: u64,
    id: [u8; 4],
    bytes: [u8; KEY_LEN],
    aead: LessSafeKey,
}

impl Key {
    fn new(created: u64, id: [u8; 4], bytes: [u8; KEY_LEN]) -> Result<Key> {
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| anyhow::anyhow!("not an AES-256 key"))?;
        Ok(Key { created, id, bytes, aead: LessSafeKey::new(unbound) })
    }

    /// A new key, with an id unlike `other`'s.
    fn random(created: u64, other: Option<&Key>) -> Result<Key> {
        let mut bytes = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut bytes);
        let mut id = [0u8; 4];
        while other.is_some_and(|other| other.id == id) || id == [0; 4] {
            rand::rng().fill_bytes(&mut id);
        }
        Key::new(created, id, bytes)
    }
}

struct Keys {
    current: Key,
    previous: Option<Key>,
}

/// The gateway's ticketer (a [`rustls::server::ProducesTickets`]).
pub struct Tickets {
    path: PathBuf,
    keys: RwLock<Keys>,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets").field("path", &self.path).finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Tickets {
    /// Loads the data dir's ticket keys, creating or rotating them as due.
    pub fn load_or_create(data_dir: &Path) -> Result<Tickets> {
        let path = data_dir.join(KEY_FILE);
        let keys = if path.exists() {
            let data = std::fs::read(&path).with_context(|| format!("reading the ticket keys {}", path.display()))?;
            parse(&data).with_context(|| format!("the ticket keys {}", path.display()))?
        } else {
            Keys { current: Key::random(now(), None)?, previous: None }
        };
        let tickets = Tickets { path, keys: RwLock::new(keys) };
        if !tickets.path.exists() {
            tickets.save()?;
        }
        tickets.rotate_if_due()?;
        Ok(tickets)
    }

    /// Starts a new current key when the current one is [`ROTATE_EVERY`] old (or from the
    /// future: a clock set back), keeping the old one to open the tickets it sealed.
    pub fn rotate_if_due(&self) -> Result<()> {
        let now = now();
        {
            let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
            let age = now.checked_sub(keys.current.created);
            if age.is_some_and(|age| age < ROTATE_EVERY.as_secs()) {
                return Ok(());
            }
        }
        {
            let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
            let fresh = Key::random(now, Some(&keys.current))?;
            keys.previous = Some(std::mem::replace(&mut keys.current, fresh));
        }
        self.save()?;
        info!(file = %self.path.display(), "rotated the TLS ticket key");
        Ok(())
    }

    /// [`Tickets::rotate_if_due`], logging a failure (from the housekeeping loop).
    pub fn housekeeping(&self) {
        if let Err(err) = self.rotate_if_due() {
            warn!(error = %format!("{err:#}"), "could not rotate the TLS ticket key");
        }
    }

    fn save(&self) -> Result<()> {
        let data = {
            let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
            let mut data = Vec::with_capacity(2 * RECORD_LEN);
            for key in std::iter::once(&keys.current).chain(keys.previous.as_ref()) {
                data.extend_from_slice(&key.created.to_be_bytes());
                data.extend_from_slice(&key.id);
                data.extend_from_slice(&key.bytes);
            }
            data
        };
        crate::sealing::write_secret(&self.path, &data)
    }
}

fn parse(data: &[u8]) -> Result<Keys> {
    if data.is_empty() || data.len() % RECORD_LEN != 0 || data.len() > 2 * RECORD_LEN {
        bail!("{} bytes: expected one or two keys of {RECORD_LEN} bytes (delete the file to start afresh)", data.len());
    }
    let mut keys = data.chunks_exact(RECORD_LEN).map(|record| {
        let (created, rest) = record.split_at(8);
        let (id, bytes) = rest.split_at(4);
        let created = u64::from_be_bytes(created.try_into().expect("8 bytes"));
        Key::new(created, id.try_into().expect("4 bytes"), bytes.try_into().expect("32 bytes"))
    });
    let current = keys.next().expect("at least one record")?;
    let previous = keys.next().transpose()?;
    Ok(Keys { current, previous })
}

impl rustls::server::ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME.as_secs() as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let key = &keys.current;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut ticket = Vec::with_capacity(1 + 4 + NONCE_LEN + plain.len() + 16);
        ticket.push(VERSION);
        ticket.extend_from_slice(&key.id);
        ticket.extend_from_slice(&nonce);
        let header_len = ticket.len();
        ticket.extend_from_slice(plain);
        let (header, body) = ticket.split_at_mut(header_len);
        let tag = key
            .aead
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&header[..5]), body)
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < 1 + 4 + NONCE_LEN + 16 || ticket[0] != VERSION {
            return None;
        }
        let (aad, rest) = ticket.split_at(5);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let key = std::iter::once(&keys.current).chain(keys.previous.as_ref()).find(|k| k.id == aad[1..5])?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buffer = sealed.to_vec();
        let plain_len = key.aead.open_in_place(nonce, Aad::from(aad), &mut buffer).ok()?.len();
        buffer.truncate(plain_len);
        Some(buffer)
    }
}

#[cfg(test)]
mod tests {
    use rustls::server::ProducesTickets;

    use super::*;

    #[test]
    fn tickets_open_after_a_restart_and_after_one_rotation_but_not_two() {
        let dir = tempfile::tempdir().unwrap();
        let first = Tickets::load_or_create(dir.path()).unwrap();
        let ticket = first.encrypt(b"session state").unwrap();
        assert_eq!(first.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));

        // A restart reads the same key.
        let restarted = Tickets::load_or_create(dir.path()).unwrap();
        assert_eq!(restarted.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));

        // Age the key: one rotation keeps it for opening, a second drops it.
        let age = |tickets: &Tickets| {
            let mut keys = tickets.keys.write().unwrap();
            keys.current.created -= ROTATE_EVERY.as_secs() + 1;
        };
        age(&restarted);
        restarted.rotate_if_due().unwrap();
        assert_eq!(restarted.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        let reloaded = Tickets::load_or_create(dir.path()).unwrap();
        assert_eq!(reloaded.decrypt(&ticket).as_deref(), Some(&b"session state"[..]), "the previous key is on disk");
        age(&reloaded);
        reloaded.rotate_if_due().unwrap();
        assert_eq!(reloaded.decrypt(&ticket), None);
    }

    #[test]
    fn a_tampered_or_foreign_ticket_does_not_open() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (ours, theirs) = (Tickets::load_or_create(a.path()).unwrap(), Tickets::load_or_create(b.path()).unwrap());
        let ticket = ours.encrypt(b"state").unwrap();
        assert_eq!(theirs.decrypt(&ticket), None);
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(ours.decrypt(&bad), None, "a flipped bit at {i} opened");
        }
        assert_eq!(ours.decrypt(&ticket[..10]), None);
        assert_eq!(ours.decrypt(&[]), None);
    }

    #[test]
    fn a_damaged_key_file_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        let err = format!("{:#}", Tickets::load_or_create(dir.path()).unwrap_err());
        assert!(err.contains("delete the file"), "{err}");
    }
}
