//! Sealing secrets the gateway keeps at rest (the AMT admin passwords technicians ask it to
//! remember): AES-256-GCM from aws-lc-rs, with a random 96-bit nonce per seal and the device's
//! UUID as associated data, so a sealed password copied onto another device's row does not open.
//!
//! The key is `DATA_DIR/secrets/amt-credentials.key` (32 random bytes, mode 0600), created on the
//! gateway's first start. `secrets/` travels in the fleet's join bundle (`fleet::keys`), so every
//! gateway of a fleet opens what another sealed. Losing the key loses the remembered passwords
//! (technicians give them again), nothing else.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::Engine;
use rand::RngCore;
use uuid::Uuid;

const KEY_FILE: &str = "secrets/amt-credentials.key";
const KEY_LEN: usize = 32;
/// Format version, the first byte of a sealed value.
const VERSION: u8 = 1;

/// Why a sealed value does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the sealed value is not base64 or too short")]
    Malformed,
    #[error("the sealed value does not open with this gateway's key (sealed by a gateway with another key, or for another device)")]
    WrongKey,
}

/// Seals and opens values with the data dir's key.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").finish_non_exhaustive()
    }
}

fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

impl Sealer {
    /// Loads the data dir's key, creating it when there is none.
    pub fn load_or_create(data_dir: &Path) -> Result<Sealer> {
        let path = key_path(data_dir);
        if !path.exists() {
            let mut key = [0u8; KEY_LEN];
            rand::rng().fill_bytes(&mut key);
            write_secret(&path, &key)?;
        }
        let key = std::fs::read(&path).with_context(|| format!("reading the sealing key {}", path.display()))?;
        Sealer::from_key(&key).with_context(|| format!("the sealing key {}", path.display()))
    }

    /// A sealer with this 32-byte key.
    pub fn from_key(key: &[u8]) -> Result<Sealer> {
        if key.len() != KEY_LEN {
            bail!("a sealing key is {KEY_LEN} bytes, not {}", key.len());
        }
        let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| anyhow::anyhow!("AES-256-GCM refused the key"))?;
        Ok(Sealer { key: LessSafeKey::new(key) })
    }

    /// `plain` sealed for device `uuid`, as base64 text.
    pub fn seal(&self, uuid: Uuid, plain: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut data = plain.to_vec();
        // Sealing in place cannot fail for inputs under GCM's 64 GiB limit; a password is tiny.
        let sealed = self.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(uuid.as_bytes()),
            &mut data,
        );
        if sealed.is_err() {
            data.clear();
        }
        let mut out = Vec::with_capacity(1 + NONCE_LEN + data.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// Opens what [`Sealer::seal`] sealed for `uuid`.
    pub fn open(&self, uuid: Uuid, sealed: &str) -> Result<Vec<u8>, OpenError> {
        let raw = base64::engine::general_purpose::STANDARD.decode(sealed.trim()).map_err(|_| OpenError::Malformed)?;
        if raw.len() < 1 + NONCE_LEN + AES_256_GCM.tag_len() || raw[0] != VERSION {
            return Err(OpenError::Malformed);
        }
        let nonce: [u8; NONCE_LEN] = raw[1..1 + NONCE_LEN].try_into().map_err(|_| OpenError::Malformed)?;
        let mut data = raw[1 + NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(uuid.as_bytes()), &mut data)
            .map_err(|_| OpenError::WrongKey)?;
        Ok(plain.to_vec())
    }
}

/// Writes a secret file (mode 0600 on Unix), creating its directory: through a temporary file
/// renamed into place, so a reader never sees half a key.
pub(crate) fn write_secret(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let temp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temp);
    write_new_private(&temp, data)?;
    std::fs::rename(&temp, path).with_context(|| format!("renaming {} to {}", temp.display(), path.display()))
}

#[cfg(unix)]
fn write_new_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(data).with_context(|| format!("writing {}", path.display()))?;
    file.sync_all().with_context(|| format!("writing {}", path.display()))
}

#[cfg(not(unix))]
fn write_new_private(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_password_opens_for_its_device_only_and_with_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::load_or_create(dir.path()).unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let sealed = sealer.seal(a, b"P@ssw0rd!");
        assert!(!sealed.contains("P@ss"));
        assert_ne!(sealed, sealer.seal(a, b"P@ssw0rd!"), "a fresh nonce per seal");
        assert_eq!(sealer.open(a, &sealed).unwrap(), b"P@ssw0rd!");
        assert_eq!(sealer.open(b, &sealed), Err(OpenError::WrongKey));
        // The same data dir gives the same key; another one does not.
        assert_eq!(Sealer::load_or_create(dir.path()).unwrap().open(a, &sealed).unwrap(), b"P@ssw0rd!");
        let other = tempfile::tempdir().unwrap();
        assert_eq!(Sealer::load_or_create(other.path()).unwrap().open(a, &sealed), Err(OpenError::WrongKey));
        assert_eq!(sealer.open(a, "not base64!"), Err(OpenError::Malformed));
        let mut tampered = base64::engine::general_purpose::STANDARD.decode(&sealed).unwrap();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let tampered = base64::engine::general_purpose::STANDARD.encode(tampered);
        assert_eq!(sealer.open(a, &tampered), Err(OpenError::WrongKey));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key_path(dir.path())).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
