//! The devices' TLS client configuration: trust a CA from a PEM file, or accept any certificate.
//!
//! Real AMT firmware trusts the MPS roots provisioned into it and checks the certificate against
//! the MPS name configured in it; [`Trust::CaFile`] plus [`server_name`] is that. [`Trust::Insecure`]
//! still checks the handshake signatures (so the peer holds the key of the certificate it sent),
//! but not who issued the certificate or for which name: for test peers such as MeshCentral whose
//! root we do not want to load. Session resumption is off, so that every simulated device does a
//! full handshake, as a fleet of distinct machines would; [`with_own_sessions`] gives one device a
//! session store of its own, so that it can resume its own sessions (and only those) on redials.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{aws_lc_rs, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::error::TlsSetupError;

/// Which gateway certificates a device accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Certificates that chain to one of the CA certificates in this PEM file.
    CaFile(std::path::PathBuf),
    /// CA certificates given as PEM text (tests).
    CaPem(Vec<u8>),
    /// Any certificate (signatures over the handshake are still checked).
    Insecure,
}

/// The rustls client configuration for devices (TLS 1.3 and 1.2, aws-lc-rs, no resumption).
pub fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsSetupError::Rustls)?;
    let mut config = match trust {
        Trust::CaFile(path) => {
            let pem = std::fs::read(path).map_err(|source| TlsSetupError::ReadCa { path: path.clone(), source })?;
            builder.with_root_certificates(roots(&pem, &path.display().to_string())?).with_no_client_auth()
        }
        Trust::CaPem(pem) => builder.with_root_certificates(roots(pem, "the CA PEM text")?).with_no_client_auth(),
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
            .with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// A copy of `config` with a session store of its own (a few sessions), for one device: its
/// redials may resume its earlier sessions, and no other device's. A copy per device costs a few
/// hundred bytes plus the cached sessions.
pub fn with_own_sessions(config: &Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut own = ClientConfig::clone(config);
    own.resumption = rustls::client::Resumption::in_memory_sessions(4);
    Arc::new(own)
}

fn roots(pem: &[u8], source: &str) -> Result<RootCertStore, TlsSetupError> {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|err| TlsSetupError::BadPem { origin: source.to_owned(), detail: err.to_string() })?;
        store
            .add(cert)
            .map_err(|err| TlsSetupError::BadCertificate { origin: source.to_owned(), detail: err.to_string() })?;
    }
    if store.is_empty() {
        return Err(TlsSetupError::NoCertificates { origin: source.to_owned() });
    }
    Ok(store)
}

/// The name a device checks the gateway's certificate against (and sends as SNI when it is a DNS
/// name). An IP address is accepted too: the certificate must then list that IP.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsSetupError> {
    let trimmed = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(trimmed.to_owned()).map_err(|_| TlsSetupError::InvalidServerName { name: name.to_owned() })
}

/// The host part of `HOST:PORT` (`[v6]:PORT` too), the default server name.
pub fn default_server_name(gateway: &str) -> &str {
    if let Some(rest) = gateway.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            return &rest[..end];
        }
    }
    match gateway.rsplit_once(':') {
        // A bare IPv6 address without port has several colons: keep it whole.
        Some((host, _)) if !host.contains(':') => host,
        Some(_) => gateway,
        None => gateway,
    }
}

/// Accepts any certificate, but checks that the server signed the handshake with its key.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
    fn default_server_names() {
        assert_eq!(default_server_name("gw.example.net:4433"), "gw.example.net");
        assert_eq!(default_server_name("127.0.0.1:4433"), "127.0.0.1");
        assert_eq!(default_server_name("[::1]:4433"), "::1");
        assert_eq!(default_server_name("localhost"), "localhost");
        assert!(matches!(server_name("127.0.0.1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("mps.test.local"), Ok(ServerName::DnsName(_))));
        assert!(server_name("not a name!").is_err());
    }

    #[test]
    fn ca_pem_without_certificates_is_refused() {
        let err = client_config(&Trust::CaPem(b"nothing here".to_vec())).unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
        assert!(client_config(&Trust::Insecure).is_ok());
        let missing = client_config(&Trust::CaFile("/nonexistent/ca.pem".into())).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/ca.pem"), "{missing}");
    }
}
