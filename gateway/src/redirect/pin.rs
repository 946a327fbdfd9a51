//! Trust on first use for devices reached directly over TLS (16995): AMT presents a certificate
//! no public CA signed, so the first connection records its SHA-256 in a known-devices file
//! (`HOST:PORT FINGERPRINT` per line, like ssh's known_hosts) and every later one must present the
//! same certificate. The handshake's signatures are still checked by rustls' own code; only the
//! chain of trust is replaced by the pin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::certs;

/// The default known-devices file: `$XDG_CONFIG_HOME/tether/known_devices`, else
/// `~/.config/tether/known_devices`.
pub fn default_known_devices() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("tether").join("known_devices")
}

/// The pins read from a known-devices file.
#[derive(Debug)]
pub struct KnownDevices {
    path: PathBuf,
    entries: Vec<(String, String)>,
}

impl KnownDevices {
    /// Reads `path` (a missing file has no pins).
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            match (fields.next(), fields.next(), fields.next()) {
                (Some(key), Some(fingerprint), None) => entries.push((key.to_owned(), fingerprint.to_owned())),
                _ => bail!("{} line {}: expected `HOST:PORT FINGERPRINT`", path.display(), n + 1),
            }
        }
        Ok(Self { path: path.to_owned(), entries })
    }

    /// The fingerprint pinned for `key` (`HOST:PORT`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, f)| f.as_str())
    }

    /// Pins `fingerprint` for `key`, appending to the file (created 0600, its directory 0700).
    pub fn add(&mut self, key: &str, fingerprint: &str) -> Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        writeln!(file, "{key} {fingerprint}").with_context(|| format!("writing {}", self.path.display()))?;
        self.entries.push((key.to_owned(), fingerprint.to_owned()));
        Ok(())
    }
}

/// Accepts the pinned certificate, or any certificate when none is pinned yet, and remembers the
/// fingerprint it saw.
#[derive(Debug)]
pub struct PinVerifier {
    pinned: Option<String>,
    seen: Mutex<Option<String>>,
    provider: Arc<CryptoProvider>,
}

impl PinVerifier {
    pub fn new(pinned: Option<String>) -> Self {
        Self { pinned, seen: Mutex::new(None), provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()) }
    }

    /// A TLS client configuration that checks servers with `verifier` (and presents no
    /// certificate of its own).
    pub fn client_config(verifier: &Arc<PinVerifier>) -> Result<rustls::ClientConfig, rustls::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(verifier) as Arc<dyn ServerCertVerifier>)
            .with_no_client_auth())
    }

    /// The fingerprint of the certificate the device presented, once it has.
    pub fn seen(&self) -> Option<String> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fingerprint = certs::fingerprint(end_entity);
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(fingerprint.clone());
        match &self.pinned {
            Some(pinned) if *pinned != fingerprint => {
                Err(rustls::Error::General("the certificate is not the one pinned for this device".into()))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_appended_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("known_devices");
        let mut known = KnownDevices::load(&path).unwrap();
        assert_eq!(known.get("pc:16995"), None);
        known.add("pc:16995", "AA:BB").unwrap();
        known.add("10.0.0.2:16995", "CC:DD").unwrap();
        let again = KnownDevices::load(&path).unwrap();
        assert_eq!(again.get("pc:16995"), Some("AA:BB"));
        assert_eq!(again.get("10.0.0.2:16995"), Some("CC:DD"));
        assert_eq!(again.get("10.0.0.3:16995"), None);
    }

    #[test]
    fn a_malformed_line_is_reported_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_devices");
        std::fs::write(&path, "# pins\npc:16995 AA:BB\nnonsense\n").unwrap();
        let err = KnownDevices::load(&path).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
    }
}
