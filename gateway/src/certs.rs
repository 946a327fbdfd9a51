//! TLS material for the CIRA and API listeners: a CA and server certificate generated on first
//! start (rcgen), or the operator's own chain; rustls server and client configurations.
//!
//! The CA is what an operator provisions into AMT as a trusted root; the server chain sent on the
//! wire is leaf then CA (some AMT builds want the root in the chain). Keys are RSA-3072 by default
//! (what AMT supports; AMT 22 refuses RSA-2048 and P-256), ECDSA P-384 on request. Once created,
//! the CA is never replaced behind the operator's back (devices trust it): the server certificate
//! is reissued from it when it nears expiry, lacks a configured name, or no longer matches its key
//! or the CA. What it does not do: TLS handshakes (the listeners) or certificate revocation.

use std::io::BufReader;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, RsaKeySize,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use tracing::{info, warn};

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
    #[error("tls.names: {0:?} is neither a DNS name nor an IP address; fix or remove it")]
    BadName(String),
    #[error(
        "{path} is missing, so the server certificate cannot be {action}; restore it from a backup, or move \
         {dir} aside to create a new CA (AMT devices must then be provisioned with the new CA)",
        dir = .path.parent().unwrap_or(Path::new(".")).display()
    )]
    CaMissing { path: PathBuf, action: &'static str },
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

impl KeyType {
    fn as_str(self) -> &'static str {
        match self {
            KeyType::Rsa3072 => "rsa3072",
            KeyType::EcdsaP384 => "ecdsa-p384",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct CertOptions {
    /// Extra DNS names or IP literals for the server certificate (besides localhost, loopback and
    /// the machine's hostname).
    pub names: Vec<String>,
    /// The key algorithm of a new CA and of server certificates issued from now on.
    pub key_type: KeyType,
    /// Operator-supplied PEM chain (server certificate first) and private key, used instead of
    /// generating; set both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// The certificates and key a listener serves, and the CA to give to devices and technicians.
#[derive(Debug)]
pub struct TlsMaterial {
    pub ca_cert_path: PathBuf,
    /// SHA-256 of the CA certificate's DER, `AA:BB:...`.
    pub ca_fingerprint_sha256: String,
    /// Leaf first, then the rest of the chain.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// True when this call created the CA (and a server certificate).
    pub generated: bool,
    /// True when this call issued a new server certificate from the existing CA.
    pub renewed: bool,
}

const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
const SERVER_FILE: &str = "server.pem";
const SERVER_KEY_FILE: &str = "server-key.pem";
const OPERATOR_CA_FILE: &str = "operator-ca.pem";

const CA_LIFETIME: Duration = Duration::days(3650);
const SERVER_LIFETIME: Duration = Duration::days(730);
/// A server certificate this close to expiry is reissued at start.
const RENEW_BEFORE: Duration = Duration::days(30);
/// Warn when the CA (or an operator's certificate) is this close to expiry.
const WARN_BEFORE: Duration = Duration::days(90);

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io { path: path.to_path_buf(), source }
}

fn invalid(path: &Path, detail: impl Into<String>) -> CertError {
    CertError::Invalid { path: path.to_path_buf(), detail: detail.into() }
}

/// Loads the TLS material from `tls_dir`, creating it on first use (or the operator's files).
///
/// Blocking (file I/O, and RSA key generation takes a moment): call it from `spawn_blocking`.
pub fn load_or_create(tls_dir: &Path, opts: &CertOptions) -> Result<TlsMaterial, CertError> {
    std::fs::create_dir_all(tls_dir).map_err(io_err(tls_dir))?;
    set_mode(tls_dir, 0o700)?;
    match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => return load_operator(tls_dir, cert, key),
        (None, None) => {}
        _ => return Err(CertError::HalfConfigured),
    }
    let names = server_names(&opts.names)?;
    let ca_path = tls_dir.join(CA_FILE);
    let ca_key_path = tls_dir.join(CA_KEY_FILE);
    let server_path = tls_dir.join(SERVER_FILE);
    let server_key_path = tls_dir.join(SERVER_KEY_FILE);

    let generated = !ca_path.exists();
    if generated {
        if server_path.exists() {
            // A server certificate without its CA: never replace the CA silently.
            return Err(CertError::CaMissing { path: ca_path, action: "checked" });
        }
        generate_ca(&ca_path, &ca_key_path, opts.key_type)?;
    }
    let ca = first_cert(&ca_path)?;
    check_ca(&ca_path, &ca, opts.key_type)?;

    let mut renewed = false;
    let (chain, key) = match current_server(&server_path, &server_key_path, &ca, &names) {
        Ok(current) => current,
        Err(reason) => {
            if !generated {
                info!(%reason, path = %server_path.display(), "issuing a new server certificate from the gateway CA");
                renewed = true;
            }
            if !ca_key_path.exists() {
                return Err(CertError::CaMissing { path: ca_key_path, action: "reissued" });
            }
            let common_name = opts
                .names
                .first()
                .map(|n| n.trim().to_string())
                .or_else(hostname)
                .unwrap_or_else(|| "tether-gateway".to_string());
            let leaf = LeafSpec { names: &names, common_name: &common_name, key_type: opts.key_type };
            issue_server(&ca_key_path, &ca, &server_path, &server_key_path, &leaf)?;
            current_server(&server_path, &server_key_path, &ca, &names)
                .map_err(|reason| invalid(&server_path, format!("the certificate just issued is unusable: {reason}")))?
        }
    };
    Ok(TlsMaterial { ca_fingerprint_sha256: fingerprint(&ca), ca_cert_path: ca_path, chain, key, generated, renewed })
}

/// The server chain and key in `tls_dir`, if they are usable as they are; else why not.
fn current_server(
    server_path: &Path,
    key_path: &Path,
    ca: &CertificateDer<'static>,
    names: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    if !server_path.exists() {
        return Err("there is none yet".into());
    }
    let chain = read_certs(server_path).map_err(|e| e.to_string())?;
    let key = read_key(key_path).map_err(|e| e.to_string())?;
    if chain.len() != 2 || chain[1] != *ca {
        return Err(format!("{} does not hold the server certificate followed by {CA_FILE}", server_path.display()));
    }
    check_key_matches(server_path, key_path, &chain, &key).map_err(|e| e.to_string())?;
    verify_chains_to(ca, &chain[0]).map_err(|e| format!("it does not verify against {CA_FILE}: {e}"))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(chain[0].as_ref()).map_err(|e| e.to_string())?;
    let not_after = asn1_time(leaf.validity().not_after);
    if not_after - OffsetDateTime::now_utc() < RENEW_BEFORE {
        return Err(format!("it expires on {not_after}"));
    }
    let missing: Vec<&str> = names.iter().filter(|n| !san_covers(&leaf, n)).map(String::as_str).collect();
    if !missing.is_empty() {
        return Err(format!("it does not name {}", missing.join(", ")));
    }
    Ok((chain, key))
}

fn asn1_time(t: x509_parser::time::ASN1Time) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.timestamp()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Whether the certificate's subject alternative names include `name` (an IP literal or a DNS name).
fn san_covers(cert: &x509_parser::certificate::X509Certificate<'_>, name: &str) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = cert.subject_alternative_name() else { return false };
    let ip = name.parse::<IpAddr>().ok();
    san.value.general_names.iter().any(|general| match (general, ip) {
        (GeneralName::IPAddress(bytes), Some(IpAddr::V4(v4))) => *bytes == v4.octets(),
        (GeneralName::IPAddress(bytes), Some(IpAddr::V6(v6))) => *bytes == v6.octets(),
        (GeneralName::DNSName(dns), None) => dns.eq_ignore_ascii_case(name),
        _ => false,
    })
}

/// Checks the CA is valid now, and says so when the configured key type cannot apply to it.
fn check_ca(path: &Path, ca: &CertificateDer<'_>, key_type: KeyType) -> Result<(), CertError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(ca.as_ref())
        .map_err(|e| invalid(path, format!("not a valid certificate: {e}")))?;
    let validity = parsed.validity();
    let (not_before, not_after) = (asn1_time(validity.not_before), asn1_time(validity.not_after));
    let now = OffsetDateTime::now_utc();
    if now < not_before {
        return Err(invalid(
            path,
            format!("the gateway CA is valid only from {not_before}: check this machine's clock (it says {now})"),
        ));
    }
    if now > not_after {
        return Err(invalid(
            path,
            format!(
                "the gateway CA expired on {not_after}; move {} aside to create a new CA, and provision it into \
                 the AMT devices",
                path.parent().unwrap_or(Path::new(".")).display()
            ),
        ));
    }
    if not_after - now < WARN_BEFORE {
        warn!(path = %path.display(), %not_after, "the gateway CA expires soon; plan a new CA and re-provision devices");
    }
    let is_rsa = parsed.public_key().algorithm.algorithm == x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;
    if is_rsa != (key_type == KeyType::Rsa3072) {
        warn!(
            path = %path.display(),
            key_type = key_type.as_str(),
            "tls.key_type differs from the existing CA's key; new server certificates use tls.key_type, the CA \
             keeps its key (move the tls dir aside to create a new CA)"
        );
    }
    Ok(())
}

fn load_operator(tls_dir: &Path, cert: &Path, key_path: &Path) -> Result<TlsMaterial, CertError> {
    let mut material = load_pem_files(cert, key_path)?;
    let Some(root) = material.chain.last() else {
        return Err(CertError::Missing { path: cert.to_path_buf(), what: "PEM certificate" });
    };
    let ca_cert_path = tls_dir.join(OPERATOR_CA_FILE);
    let pem = pem_block(root);
    std::fs::write(&ca_cert_path, pem).map_err(io_err(&ca_cert_path))?;
    material.ca_cert_path = ca_cert_path;
    Ok(material)
}

/// An operator's PEM chain (server certificate first) and private key, checked: every
/// certificate valid now (a warning when one expires within 90 days), the key matching the
/// first. `ca_cert_path` is the chain's file. For `tls.cert_file` (through `load_or_create`) and
/// the API's own certificate (`api.cert_file`, a publicly trusted one for browsers).
///
/// Blocking (file I/O).
pub fn load_pem_files(cert: &Path, key_path: &Path) -> Result<TlsMaterial, CertError> {
    let chain = read_certs(cert)?;
    let key = read_key(key_path)?;
    let now = OffsetDateTime::now_utc();
    for (i, der) in chain.iter().enumerate() {
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| invalid(cert, format!("certificate {} is not valid X.509: {e}", i + 1)))?;
        let validity = parsed.validity();
        let (not_before, not_after) = (asn1_time(validity.not_before), asn1_time(validity.not_after));
        if now < not_before || now > not_after {
            return Err(invalid(
                cert,
                format!(
                    "certificate {} ({}) is valid only from {not_before} to {not_after} (now {now}); renew it, or \
                     check this machine's clock",
                    i + 1,
                    parsed.subject()
                ),
            ));
        }
        if not_after - now < WARN_BEFORE {
            warn!(path = %cert.display(), certificate = i + 1, %not_after, "a certificate expires soon");
        }
    }
    check_key_matches(cert, key_path, &chain, &key)?;
    let Some(root) = chain.last() else {
        return Err(CertError::Missing { path: cert.to_path_buf(), what: "PEM certificate" });
    };
    Ok(TlsMaterial {
        ca_fingerprint_sha256: fingerprint(root),
        ca_cert_path: cert.to_path_buf(),
        chain,
        key,
        generated: false,
        renewed: false,
    })
}

/// Checks that `key` is a private key rustls can use and that it belongs to the first
/// certificate of `chain`.
fn check_key_matches(
    cert_path: &Path,
    key_path: &Path,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<(), CertError> {
    let signing_key = provider().key_provider.load_private_key(key.clone_key()).map_err(|e| {
        invalid(key_path, format!("unusable private key ({e}); use an RSA, ECDSA P-256/P-384 or Ed25519 key in PEM"))
    })?;
    match CertifiedKey::new(chain.to_vec(), signing_key).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(invalid(
            key_path,
            format!(
                "this private key does not belong to the first certificate of {}; that file must start with the \
                 server certificate, followed by any intermediates",
                cert_path.display()
            ),
        )),
        Err(e) => Err(invalid(cert_path, format!("cannot check the certificate against its key: {e}"))),
    }
}

/// Verifies (webpki) that `leaf` is a valid server certificate for `localhost` issued by `ca`.
fn verify_chains_to(ca: &CertificateDer<'static>, leaf: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let name = ServerName::try_from("localhost").map_err(|e| rustls::Error::General(e.to_string()))?;
    verifier.verify_server_cert(leaf, &[], &name, &[], UnixTime::now()).map(drop)
}

/// A certificate in PEM.
pub(crate) fn pem_block(cert: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

fn new_key(key_type: KeyType) -> Result<KeyPair, rcgen::Error> {
    match key_type {
        KeyType::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
        KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
    }
}

/// Whether `name` can go into a SAN: an IP literal, or an ASCII DNS name (wildcards allowed).
fn valid_name(name: &str) -> bool {
    name.parse::<IpAddr>().is_ok()
        || (!name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'*')
            }))
}

fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"].iter().find_map(|path| {
        let host = std::fs::read_to_string(path).ok()?;
        let host = host.trim();
        valid_name(host).then(|| host.to_string())
    })
}

/// The names of the server certificate: loopback, `localhost`, the hostname, then the configured ones.
fn server_names(extra: &[String]) -> Result<Vec<String>, CertError> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    names.extend(hostname());
    for name in extra {
        let name = name.trim();
        if !valid_name(name) {
            return Err(CertError::BadName(name.to_string()));
        }
        if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// The CA's subject; server certificates name it as their issuer, so it must not change.
fn ca_distinguished_name() -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Tether Gateway CA");
    dn.push(DnType::OrganizationName, "Tether");
    dn
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_distinguished_name();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn generate_ca(ca_path: &Path, ca_key_path: &Path, key_type: KeyType) -> Result<(), CertError> {
    let now = OffsetDateTime::now_utc();
    let key = new_key(key_type)?;
    let mut params = ca_params();
    params.not_before = now - Duration::days(1);
    params.not_after = now + CA_LIFETIME;
    let cert = params.self_signed(&key)?;
    // The key first: a CA certificate on disk always has its key beside it.
    write_file(ca_key_path, &key.serialize_pem(), 0o600)?;
    write_file(ca_path, &cert.pem(), 0o644)
}

/// What a new server certificate says.
struct LeafSpec<'a> {
    names: &'a [String],
    common_name: &'a str,
    key_type: KeyType,
}

fn issue_server(
    ca_key_path: &Path,
    ca: &CertificateDer<'static>,
    server_path: &Path,
    server_key_path: &Path,
    leaf: &LeafSpec<'_>,
) -> Result<(), CertError> {
    let ca_key_pem = std::fs::read_to_string(ca_key_path).map_err(io_err(ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| invalid(ca_key_path, format!("not a usable private key: {e}; restore it from a backup")))?;
    let issuer = Issuer::new(ca_params(), &ca_key);

    let now = OffsetDateTime::now_utc();
    let key = new_key(leaf.key_type)?;
    let mut params = CertificateParams::new(leaf.names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, leaf.common_name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - Duration::days(1);
    params.not_after = now + SERVER_LIFETIME;
    let cert = params.signed_by(&key, &issuer)?;
    verify_chains_to(ca, cert.der()).map_err(|e| {
        invalid(
            ca_key_path,
            format!(
                "a server certificate signed with this key does not verify against {CA_FILE} ({e}): the CA files \
                 do not belong together; restore them from a backup"
            ),
        )
    })?;
    // Key then certificate: if interrupted in between, the next start sees the mismatch and
    // issues again.
    write_file(server_key_path, &key.serialize_pem(), 0o600)?;
    write_file(server_path, &format!("{}{}", cert.pem(), pem_block(ca)), 0o644)
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let tmp = path.with_extension("pem.tmp");
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

fn first_cert(path: &Path) -> Result<CertificateDer<'static>, CertError> {
    read_certs(path)?
        .into_iter()
        .next()
        .ok_or_else(|| CertError::Missing { path: path.to_path_buf(), what: "PEM certificate" })
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(io_err(path))?
        .ok_or_else(|| CertError::Missing { path: path.to_path_buf(), what: "PEM private key" })
}

/// SHA-256 of a certificate, as colon-separated upper-case hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref()).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS 1.2 + 1.3 server configuration serving `material`, with the given ALPN protocols, and
/// session tickets from `ticketer` when given (four per TLS 1.3 handshake: a TLS 1.3 ticket is
/// used once, and a device whose redial is refused before its handshake completes, e.g. while
/// the pool of pending connections is full after a restart, has spent one; without a ticketer,
/// rustls' in-memory session cache alone).
pub fn server_config(
    material: &TlsMaterial,
    alpn: &[&[u8]],
    ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
) -> Result<Arc<rustls::ServerConfig>, CertError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(material.chain.clone(), material.key.clone_key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    if let Some(ticketer) = ticketer {
        config.ticketer = ticketer;
        config.send_tls13_tickets = 4;
    }
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

    fn ecdsa(names: &[&str]) -> CertOptions {
        CertOptions {
            names: names.iter().map(|n| n.to_string()).collect(),
            key_type: KeyType::EcdsaP384,
            ..Default::default()
        }
    }

    fn leaf_names(material: &TlsMaterial) -> String {
        let (_, leaf) = x509_parser::parse_x509_certificate(material.chain[0].as_ref()).unwrap();
        format!("{:?}", leaf.subject_alternative_name().unwrap().unwrap().value)
    }

    /// Runs a TLS handshake in memory; returns the ALPN protocol the client ended up with.
    fn handshake(client: Arc<rustls::ClientConfig>, server: Arc<rustls::ServerConfig>) -> Option<Vec<u8>> {
        let mut client = rustls::ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
        let mut server = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
                server.process_new_packets().unwrap();
            }
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().unwrap();
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                return client.alpn_protocol().map(<[u8]>::to_vec);
            }
        }
        panic!("the handshake did not complete");
    }

    #[test]
    fn first_call_generates_later_calls_load_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let opts = ecdsa(&["mps.example.net"]);
        let first = load_or_create(&tls, &opts).unwrap();
        assert!(first.generated && !first.renewed);
        assert_eq!(first.chain.len(), 2, "leaf and CA");
        assert_eq!(first.ca_fingerprint_sha256.len(), 32 * 3 - 1);
        assert_eq!(first.ca_fingerprint_sha256, fingerprint(&first.chain[1]));
        let second = load_or_create(&tls, &opts).unwrap();
        assert!(!second.generated && !second.renewed);
        assert_eq!(first.ca_fingerprint_sha256, second.ca_fingerprint_sha256);
        assert_eq!(first.chain, second.chain);
        let sans = leaf_names(&second);
        assert!(sans.contains("mps.example.net") && sans.contains("localhost"), "{sans}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |name: &str| std::fs::metadata(tls.join(name)).unwrap().permissions().mode() & 0o777;
            assert_eq!((mode(""), mode(CA_KEY_FILE), mode(SERVER_KEY_FILE)), (0o700, 0o600, 0o600));
        }
    }

    #[test]
    fn a_client_trusting_the_ca_completes_tls_1_3_and_1_2_handshakes() {
        let dir = tempfile::tempdir().unwrap();
        let material = load_or_create(dir.path(), &ecdsa(&[])).unwrap();
        let server = server_config(&material, &[b"http/1.1"], None).unwrap();
        let client = client_config_trusting(&material.ca_cert_path).unwrap();
        let mut with_alpn = (*client).clone();
        with_alpn.alpn_protocols = vec![b"http/1.1".to_vec()];
        assert_eq!(handshake(Arc::new(with_alpn), Arc::clone(&server)), Some(b"http/1.1".to_vec()));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(material.chain[1].clone()).unwrap();
        let tls12 = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert_eq!(handshake(Arc::new(tls12), server), None);
    }

    #[test]
    fn rsa_3072_is_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let material = load_or_create(dir.path(), &CertOptions::default()).unwrap();
        for cert in &material.chain {
            let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
            assert_eq!(parsed.public_key().parsed().unwrap().key_size(), 3072);
        }
        server_config(&material, &[], None).unwrap();
    }

    #[test]
    fn a_new_name_reissues_the_server_certificate_from_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), &ecdsa(&["mps.example.net"])).unwrap();
        let opts = ecdsa(&["mps.example.net", "10.1.2.3"]);
        let second = load_or_create(dir.path(), &opts).unwrap();
        assert!(second.renewed && !second.generated);
        assert_eq!(first.ca_fingerprint_sha256, second.ca_fingerprint_sha256);
        assert_ne!(first.chain[0], second.chain[0]);
        let (_, leaf) = x509_parser::parse_x509_certificate(second.chain[0].as_ref()).unwrap();
        assert!(san_covers(&leaf, "10.1.2.3") && san_covers(&leaf, "MPS.example.net"), "{}", leaf_names(&second));
        assert!(!san_covers(&leaf, "10.1.2.4"));
        let third = load_or_create(dir.path(), &opts).unwrap();
        assert!(!third.renewed);
        // Dropping a name does not force a new certificate.
        assert!(!load_or_create(dir.path(), &ecdsa(&[])).unwrap().renewed);
    }

    #[test]
    fn a_server_certificate_near_expiry_is_reissued_from_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), &ecdsa(&[])).unwrap();
        // Replace the server certificate with one of the same CA that expires in ten days.
        let ca_key = KeyPair::from_pem(&std::fs::read_to_string(dir.path().join(CA_KEY_FILE)).unwrap()).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = CertificateParams::new(server_names(&[]).unwrap()).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_after = OffsetDateTime::now_utc() + Duration::days(10);
        let short = params.signed_by(&key, &Issuer::new(ca_params(), &ca_key)).unwrap();
        verify_chains_to(&first.chain[1], short.der()).unwrap();
        std::fs::write(dir.path().join(SERVER_KEY_FILE), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join(SERVER_FILE), format!("{}{}", short.pem(), pem_block(&first.chain[1]))).unwrap();

        let second = load_or_create(dir.path(), &ecdsa(&[])).unwrap();
        assert!(second.renewed);
        assert_eq!(first.ca_fingerprint_sha256, second.ca_fingerprint_sha256);
        let (_, leaf) = x509_parser::parse_x509_certificate(second.chain[0].as_ref()).unwrap();
        assert!(asn1_time(leaf.validity().not_after) > OffsetDateTime::now_utc() + Duration::days(700));
    }

    #[test]
    fn a_server_key_that_does_not_match_is_replaced_by_a_new_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), &ecdsa(&[])).unwrap();
        let stray = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        std::fs::write(dir.path().join(SERVER_KEY_FILE), stray.serialize_pem()).unwrap();
        let second = load_or_create(dir.path(), &ecdsa(&[])).unwrap();
        assert!(second.renewed);
        assert_eq!(first.ca_fingerprint_sha256, second.ca_fingerprint_sha256);
        server_config(&second, &[], None).unwrap();
    }

    #[test]
    fn a_missing_ca_is_never_replaced_silently() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path(), &ecdsa(&[])).unwrap();
        std::fs::remove_file(dir.path().join(CA_FILE)).unwrap();
        let err = load_or_create(dir.path(), &ecdsa(&[])).unwrap_err();
        assert!(matches!(err, CertError::CaMissing { .. }), "{err}");
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }

    #[test]
    fn names_that_cannot_go_into_a_certificate_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_or_create(dir.path(), &ecdsa(&["two words"])).unwrap_err();
        assert!(matches!(err, CertError::BadName(_)), "{err}");
        assert!(valid_name("*.example.net") && valid_name("fe80::1") && !valid_name("a..b") && !valid_name("é"));
    }

    #[test]
    fn half_an_operator_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let opts = CertOptions { cert_file: Some(dir.path().join("c.pem")), ..Default::default() };
        assert!(matches!(load_or_create(dir.path(), &opts), Err(CertError::HalfConfigured)));
    }

    /// Writes an operator chain (leaf, CA) valid from `from` to `until` days from now, and its key.
    fn operator_files(dir: &Path, from: i64, until: i64) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "Operator CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["gw.example.net".to_string()]).unwrap();
        let now = OffsetDateTime::now_utc();
        params.not_before = now + Duration::days(from);
        params.not_after = now + Duration::days(until);
        let leaf = params.signed_by(&key, &Issuer::new(ca_params, &ca_key)).unwrap();
        let (cert_path, key_path) = (dir.join("chain.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path, ca.der().clone())
    }

    #[test]
    fn an_operator_chain_is_used_and_its_root_published() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = operator_files(dir.path(), -1, 365);
        let tls = dir.path().join("tls");
        let opts = CertOptions { cert_file: Some(cert), key_file: Some(key), ..Default::default() };
        let material = load_or_create(&tls, &opts).unwrap();
        assert!(!material.generated && !material.renewed);
        assert_eq!(material.chain.len(), 2);
        assert_eq!(material.ca_cert_path, tls.join(OPERATOR_CA_FILE));
        assert_eq!(material.ca_fingerprint_sha256, fingerprint(&ca));
        assert_eq!(first_cert(&material.ca_cert_path).unwrap(), ca);
        assert!(!tls.join(CA_FILE).exists(), "no CA is generated beside an operator chain");
        server_config(&material, &[], None).unwrap();
    }

    #[test]
    fn the_apis_own_certificate_loads_without_touching_the_cira_material() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = operator_files(dir.path(), -1, 365);
        let tls = dir.path().join("tls");
        let material = load_pem_files(&cert, &key).unwrap();
        assert_eq!(material.chain.len(), 2);
        assert_eq!(material.ca_cert_path, cert);
        assert_eq!(material.ca_fingerprint_sha256, fingerprint(&ca));
        assert!(!tls.exists(), "nothing is written for the API's certificate");
        server_config(&material, &[b"http/1.1"], None).unwrap();
        std::fs::create_dir_all(dir.path().join("old")).unwrap();
        let (expired, expired_key, _) = operator_files(&dir.path().join("old"), -30, -1);
        let err = load_pem_files(&expired, &expired_key).unwrap_err().to_string();
        assert!(err.contains("valid only from"), "{err}");
    }

    #[test]
    fn an_operator_key_that_does_not_match_is_refused_naming_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = operator_files(dir.path(), -1, 365);
        std::fs::write(&key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let opts = CertOptions { cert_file: Some(cert), key_file: Some(key), ..Default::default() };
        let err = load_or_create(&dir.path().join("tls"), &opts).unwrap_err().to_string();
        assert!(err.contains("key.pem") && err.contains("chain.pem") && err.contains("does not belong"), "{err}");
    }

    #[test]
    fn an_expired_operator_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = operator_files(dir.path(), -30, -1);
        let opts = CertOptions { cert_file: Some(cert), key_file: Some(key), ..Default::default() };
        let err = load_or_create(&dir.path().join("tls"), &opts).unwrap_err().to_string();
        assert!(err.contains("chain.pem") && err.contains("valid only from"), "{err}");
    }
}
