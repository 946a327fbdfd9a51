//! TLS material for the CIRA and API listeners: a CA and server certificate generated on first
//! start (rcgen), or the operator's own chain; rustls server and client configurations.
//!
//! The CA is what an operator provisions into AMT as a trusted root; the server chain sent on the
//! wire is leaf then CA (some AMT builds want the root in the chain). Keys are RSA-3072 by default
//! (what AMT supports; AMT 22 refuses RSA-2048 and P-256), ECDSA P-384 on request. What it does not
//! do: TLS handshakes (the listeners) or certificate revocation.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, RsaKeySize,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path} holds no {what}")]
    Missing { path: PathBuf, what: &'static str },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("set both tls.cert_file and tls.key_file, or neither")]
    HalfConfigured,
}

/// The key algorithm of generated certificates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyType {
    #[default]
    #[serde(rename = "rsa3072")]
    Rsa3072,
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
}

#[derive(Debug, Clone, Default)]
pub struct CertOptions {
    /// Extra DNS names or IP literals for the server certificate (besides localhost, loopback and
    /// the machine's hostname).
    pub names: Vec<String>,
    pub key_type: KeyType,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// The certificates and key a listener serves, and the CA to give to devices and technicians.
#[derive(Debug)]
pub struct TlsMaterial {
    pub ca_cert_path: PathBuf,
    /// SHA-256 of the CA certificate, `AA:BB:...`.
    pub ca_fingerprint_sha256: String,
    /// Leaf first, then the rest of the chain.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// True when this call created the CA and server certificate.
    pub generated: bool,
}

const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
const SERVER_FILE: &str = "server.pem";
const SERVER_KEY_FILE: &str = "server-key.pem";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io { path: path.to_path_buf(), source }
}

/// Loads the TLS material from `tls_dir`, creating it on first use (or the operator's files).
pub fn load_or_create(tls_dir: &Path, opts: &CertOptions) -> Result<TlsMaterial, CertError> {
    std::fs::create_dir_all(tls_dir).map_err(io_err(tls_dir))?;
    set_mode(tls_dir, 0o700)?;
    match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => return load_operator(tls_dir, cert, key),
        (None, None) => {}
        _ => return Err(CertError::HalfConfigured),
    }
    let server = tls_dir.join(SERVER_FILE);
    let generated = !server.exists();
    if generated {
        generate(tls_dir, opts)?;
    }
    let chain = read_certs(&server)?;
    let key = read_key(&tls_dir.join(SERVER_KEY_FILE))?;
    check_validity(&server, &chain[0])?;
    let ca_cert_path = tls_dir.join(CA_FILE);
    let ca = read_certs(&ca_cert_path)?;
    Ok(TlsMaterial { ca_fingerprint_sha256: fingerprint(&ca[0]), ca_cert_path, chain, key, generated })
}

fn load_operator(tls_dir: &Path, cert: &Path, key: &Path) -> Result<TlsMaterial, CertError> {
    let chain = read_certs(cert)?;
    let key = read_key(key)?;
    check_validity(cert, &chain[0])?;
    let root = chain.last().expect("read_certs returns at least one certificate");
    let ca_cert_path = tls_dir.join("operator-ca.pem");
    let pem = pem_block(root);
    std::fs::write(&ca_cert_path, pem).map_err(io_err(&ca_cert_path))?;
    Ok(TlsMaterial { ca_fingerprint_sha256: fingerprint(root), ca_cert_path, chain, key, generated: false })
}

fn pem_block(cert: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
}

fn new_key(key_type: KeyType) -> Result<KeyPair, rcgen::Error> {
    match key_type {
        KeyType::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
        KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
    }
}

fn server_names(extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_string());
        }
    }
    for name in extra {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

fn generate(tls_dir: &Path, opts: &CertOptions) -> Result<(), CertError> {
    let now = OffsetDateTime::now_utc();
    let ca_key = new_key(opts.key_type)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Tether Gateway CA");
    dn.push(DnType::OrganizationName, "Tether");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca_params.not_before = now - Duration::days(1);
    ca_params.not_after = now + Duration::days(3650);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let server_key = new_key(opts.key_type)?;
    let mut params = CertificateParams::new(server_names(&opts.names))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, opts.names.first().map(String::as_str).unwrap_or("tether-gateway"));
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(730);
    let server_cert = params.signed_by(&server_key, &issuer)?;

    write_file(&tls_dir.join(CA_KEY_FILE), &ca_key.serialize_pem(), 0o600)?;
    write_file(&tls_dir.join(SERVER_KEY_FILE), &server_key.serialize_pem(), 0o600)?;
    write_file(&tls_dir.join(CA_FILE), &ca_cert.pem(), 0o644)?;
    // The server file last: its presence marks the material complete.
    write_file(&tls_dir.join(SERVER_FILE), &format!("{}{}", server_cert.pem(), ca_cert.pem()), 0o644)
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(io_err(&tmp))?;
    set_mode(&tmp, mode)?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<(), CertError> {
    Ok(())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut BufReader::new(file)).collect::<Result<_, _>>().map_err(io_err(path))?;
    if certs.is_empty() {
        return Err(CertError::Missing { path: path.to_path_buf(), what: "PEM certificate" });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(io_err(path))?
        .ok_or_else(|| CertError::Missing { path: path.to_path_buf(), what: "PEM private key" })
}

fn check_validity(path: &Path, cert: &CertificateDer<'_>) -> Result<(), CertError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| CertError::Invalid {
        path: path.to_path_buf(),
        detail: format!("not a valid certificate: {e}"),
    })?;
    if !parsed.validity().is_valid() {
        return Err(CertError::Invalid {
            path: path.to_path_buf(),
            detail: format!(
                "the certificate is not valid now (valid {} to {}); replace it, or delete the tls dir to generate anew",
                parsed.validity().not_before,
                parsed.validity().not_after
            ),
        });
    }
    Ok(())
}

/// SHA-256 of a certificate, as colon-separated upper-case hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref()).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS 1.2 + 1.3 server configuration serving `material`, with the given ALPN protocols.
pub fn server_config(material: &TlsMaterial, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, CertError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(material.chain.clone(), material.key.clone_key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration that trusts only the CA(s) in `ca_pem_path`.
pub fn client_config_trusting(ca_pem_path: &Path) -> Result<Arc<rustls::ClientConfig>, CertError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca_pem_path)? {
        roots.add(cert).map_err(|e| CertError::Invalid { path: ca_pem_path.to_path_buf(), detail: e.to_string() })?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_call_generates_later_calls_load_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let opts =
            CertOptions { names: vec!["mps.example.net".into()], key_type: KeyType::EcdsaP384, ..Default::default() };
        let first = load_or_create(dir.path(), &opts).unwrap();
        assert!(first.generated);
        assert_eq!(first.chain.len(), 2, "leaf and CA");
        assert_eq!(first.ca_fingerprint_sha256.len(), 32 * 3 - 1);
        let second = load_or_create(dir.path(), &opts).unwrap();
        assert!(!second.generated);
        assert_eq!(first.ca_fingerprint_sha256, second.ca_fingerprint_sha256);
        // A client trusting the CA file accepts the server config (names checked at handshake).
        server_config(&second, &[b"http/1.1"]).unwrap();
        client_config_trusting(&second.ca_cert_path).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(second.chain[0].as_ref()).unwrap();
        let sans = format!("{:?}", leaf.subject_alternative_name().unwrap().unwrap().value);
        assert!(sans.contains("mps.example.net") && sans.contains("localhost"), "{sans}");
    }

    #[test]
    fn rsa_3072_is_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let material = load_or_create(dir.path(), &CertOptions::default()).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(material.chain[0].as_ref()).unwrap();
        let key = leaf.public_key().parsed().unwrap();
        assert_eq!(key.key_size(), 3072);
    }

    #[test]
    fn half_an_operator_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let opts = CertOptions { cert_file: Some(dir.path().join("c.pem")), ..Default::default() };
        assert!(matches!(load_or_create(dir.path(), &opts), Err(CertError::HalfConfigured)));
    }
}
