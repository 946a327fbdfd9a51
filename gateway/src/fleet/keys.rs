//! The keys gateways of a fleet share, and each gateway's own certificate on the fleet link.
//!
//! `tether fleet init` creates the fleet CA (`DATA_DIR/fleet/ca.pem` and `ca-key.pem`, ECDSA
//! P-256: it never reaches AMT) and writes a *join bundle*: the fleet CA and its key, the CIRA CA
//! and its key (so that every gateway presents a server certificate the devices already trust),
//! and every other shared secret (the `secrets/` directory of the data dir, for keys later
//! features add). `tether fleet join BUNDLE` installs it in a new gateway's data dir. Each
//! gateway then issues itself a node certificate from the fleet CA, named after its instance id
//! (`fleet/node.pem`), for mutual TLS on the link; it is reissued when the instance id changes or
//! expiry nears.
//!
//! The bundle holds private keys: it is written with mode 0600 and should be moved over a secure
//! channel and deleted after use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

const CA_LIFETIME: Duration = Duration::days(3650);
const NODE_LIFETIME: Duration = Duration::days(365);
const RENEW_BEFORE: Duration = Duration::days(30);
/// Version of the bundle format.
const BUNDLE_VERSION: u32 = 1;
/// The ALPN of the fleet link.
pub const LINK_ALPN: &[u8] = b"tether-fleet/1";

/// The files of the data dir a bundle carries, relative to it: fleet CA, CIRA CA, and shared
/// secrets (the whole `secrets/` directory).
const SHARED_FILES: &[&str] = &["fleet/ca.pem", "fleet/ca-key.pem", "tls/ca.pem", "tls/ca-key.pem"];
const SECRETS_DIR: &str = "secrets";

fn fleet_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("fleet")
}

/// Whether this data dir belongs to a fleet (has the fleet CA).
pub fn is_member(data_dir: &Path) -> bool {
    fleet_dir(data_dir).join("ca-key.pem").exists()
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Tether Fleet CA");
    dn.push(DnType::OrganizationName, "Tether");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// Creates the fleet CA in `data_dir`; an existing one is an error (it would split the fleet).
pub fn create_ca(data_dir: &Path) -> Result<()> {
    let dir = fleet_dir(data_dir);
    if is_member(data_dir) {
        bail!(
            "{} already holds a fleet CA: this gateway is in a fleet; write a join bundle with `tether fleet bundle FILE`",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = ca_params();
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + CA_LIFETIME;
    let cert = params.self_signed(&key)?;
    write(&dir.join("ca-key.pem"), key.serialize_pem().as_bytes(), 0o600)?;
    write(&dir.join("ca.pem"), cert.pem().as_bytes(), 0o644)
}

#[derive(Debug, Serialize, Deserialize)]
struct Bundle {
    version: u32,
    /// Path relative to the data dir → base64 contents.
    files: std::collections::BTreeMap<String, String>,
}

/// Writes the join bundle for this fleet to `out` (mode 0600).
pub fn write_bundle(data_dir: &Path, out: &Path) -> Result<usize> {
    if !is_member(data_dir) {
        bail!("{} is in no fleet: run `tether fleet init` first", data_dir.display());
    }
    // The key that seals remembered AMT passwords is shared, so that every gateway opens them:
    // made now if the gateway has not made it yet.
    crate::sealing::Sealer::load_or_create(data_dir).context("creating the key that seals AMT passwords")?;
    // The agent CA and the key that signs agents' configuration, likewise: an agent enrolled at
    // one gateway proves itself at every other, and verifies what each sends it.
    crate::agents::keys::AgentKeys::load_or_create(data_dir)
        .context("creating the agent CA and the configuration signing key")?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut files = std::collections::BTreeMap::new();
    for name in SHARED_FILES {
        let path = data_dir.join(name);
        let bytes = std::fs::read(&path).with_context(|| {
            format!("reading {} (start the gateway once so that it creates its CIRA CA)", path.display())
        })?;
        files.insert(name.to_string(), b64.encode(bytes));
    }
    let secrets = data_dir.join(SECRETS_DIR);
    if let Ok(entries) = std::fs::read_dir(&secrets) {
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let name = format!("{SECRETS_DIR}/{}", entry.file_name().to_string_lossy());
                files.insert(name, b64.encode(std::fs::read(entry.path())?));
            }
        }
    }
    let count = files.len();
    let text = serde_json::to_string_pretty(&Bundle { version: BUNDLE_VERSION, files })?;
    write(out, text.as_bytes(), 0o600)?;
    Ok(count)
}

/// Installs a join bundle into `data_dir`. A different CIRA CA already there is an error unless
/// `force` (devices provisioned with it would stop trusting this gateway).
pub fn join(data_dir: &Path, bundle_path: &Path, force: bool) -> Result<usize> {
    let text = std::fs::read_to_string(bundle_path).with_context(|| format!("reading {}", bundle_path.display()))?;
    let bundle: Bundle = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a Tether join bundle", bundle_path.display()))?;
    if bundle.version != BUNDLE_VERSION {
        bail!(
            "{} is a bundle of version {}; this tether reads version {BUNDLE_VERSION}",
            bundle_path.display(),
            bundle.version
        );
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut decoded = Vec::new();
    for (name, contents) in &bundle.files {
        let allowed = SHARED_FILES.contains(&name.as_str())
            || name.strip_prefix("secrets/").is_some_and(|f| {
                !f.is_empty()
                    && f.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    && !f.starts_with('.')
            });
        if !allowed {
            bail!("{} names {name:?}, which a join bundle may not hold", bundle_path.display());
        }
        decoded.push((name.clone(), b64.decode(contents).with_context(|| format!("{name} in the bundle"))?));
    }
    for required in SHARED_FILES {
        if !bundle.files.contains_key(*required) {
            bail!("{} lacks {required}", bundle_path.display());
        }
    }
    for (name, bytes) in &decoded {
        let path = data_dir.join(name);
        if let Ok(existing) = std::fs::read(&path) {
            if &existing != bytes && !force && name.starts_with("tls/") {
                bail!(
                    "{} holds another CIRA CA than the fleet's: devices provisioned with it would stop trusting this \
                     gateway. Join with a fresh data dir, or pass --force to replace it",
                    path.display()
                );
            }
        }
    }
    crate::paths::ensure_data_dir(data_dir)?;
    for (name, bytes) in &decoded {
        let path = data_dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let mode = if name.ends_with("key.pem") || name.starts_with("secrets/") { 0o600 } else { 0o644 };
        write(&path, bytes, mode)?;
    }
    // The node certificate is this gateway's own: issued at the next start.
    let _ = std::fs::remove_file(fleet_dir(data_dir).join("node.pem"));
    Ok(decoded.len())
}

/// This gateway's TLS on the fleet link: a server that requires a client certificate from the
/// fleet CA, and a client that presents its own and accepts only the fleet CA.
#[derive(Debug, Clone)]
pub struct LinkTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

/// Loads (issuing or reissuing this instance's node certificate if needed) the link TLS; `None`
/// if the data dir is in no fleet.
pub fn link_tls(data_dir: &Path, instance: &str) -> Result<Option<LinkTls>> {
    if !is_member(data_dir) {
        return Ok(None);
    }
    let dir = fleet_dir(data_dir);
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).context("reading the fleet CA")?;
    let ca_der = pem_certs(&ca_pem)?.into_iter().next().context("fleet/ca.pem holds no certificate")?;
    let node_path = dir.join("node.pem");
    let node_key_path = dir.join("node-key.pem");
    if !node_is_current(&node_path, instance, &ca_der) {
        issue_node(&dir, instance)?;
        tracing::info!(%instance, "issued this gateway's fleet link certificate");
    }
    let chain = pem_certs(&std::fs::read_to_string(&node_path)?)?;
    let key_pem = std::fs::read_to_string(&node_key_path)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?.context("fleet/node-key.pem holds no key")?;

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der)?;
    let roots = Arc::new(roots);
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .context("the fleet CA cannot verify clients")?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    server.alpn_protocols = vec![LINK_ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    client.alpn_protocols = vec![LINK_ALPN.to_vec()];
    Ok(Some(LinkTls { server: Arc::new(server), client: Arc::new(client) }))
}

fn node_is_current(node_path: &Path, instance: &str, ca: &CertificateDer<'_>) -> bool {
    let Ok(text) = std::fs::read_to_string(node_path) else { return false };
    let Ok(certs) = pem_certs(&text) else { return false };
    let Some(leaf) = certs.first() else { return false };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(leaf) else { return false };
    let Ok((_, ca_parsed)) = x509_parser::parse_x509_certificate(ca) else { return false };
    let names_instance = parsed.subject().iter_common_name().any(|cn| cn.as_str() == Ok(instance));
    let fresh = OffsetDateTime::from_unix_timestamp(parsed.validity().not_after.timestamp())
        .is_ok_and(|end| end - OffsetDateTime::now_utc() > RENEW_BEFORE);
    // Issued under this fleet CA (a wrong signature would fail every handshake anyway).
    let signed_by_ca = parsed.issuer() == ca_parsed.subject();
    names_instance && fresh && signed_by_ca && node_path.with_file_name("node-key.pem").exists()
}

fn issue_node(dir: &Path, instance: &str) -> Result<()> {
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca-key.pem"))?)
        .context("fleet/ca-key.pem is not a usable key; restore it from the join bundle")?;
    let issuer = Issuer::new(ca_params(), &ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec![instance.to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, instance);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + NODE_LIFETIME;
    let cert = params.signed_by(&key, &issuer)?;
    write(&dir.join("node-key.pem"), key.serialize_pem().as_bytes(), 0o600)?;
    write(&dir.join("node.pem"), cert.pem().as_bytes(), 0o644)
}

fn pem_certs(text: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut text.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    Ok(certs)
}

/// The instance id a peer's certificate names (its common name), after the handshake.
pub fn peer_instance(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let leaf = certs?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    // A file of our own: a stale one (or a link planted in its place) is removed, and the new
    // one must not exist when it is created.
    let _ = std::fs::remove_file(&tmp);
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        let mut file = options.open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joined_gateway_shares_the_cas_and_the_link_authenticates_both_ways() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(a.path().join("tls")).unwrap();
        std::fs::write(a.path().join("tls/ca.pem"), "cira ca").unwrap();
        std::fs::write(a.path().join("tls/ca-key.pem"), "cira key").unwrap();
        std::fs::create_dir_all(a.path().join("secrets")).unwrap();
        std::fs::write(a.path().join("secrets/signing.key"), "k").unwrap();
        create_ca(a.path()).unwrap();
        assert!(create_ca(a.path()).is_err(), "a second CA would split the fleet");
        let bundle = a.path().join("join.json");
        // The CAs, the signing key, the key that seals AMT passwords, the agent CA and its key, and
        // the agents' configuration signing key (the last four made for the bundle).
        assert_eq!(write_bundle(a.path(), &bundle).unwrap(), 9);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&bundle).unwrap().permissions().mode() & 0o777, 0o600);
        }
        join(b.path(), &bundle, false).unwrap();
        assert_eq!(std::fs::read(b.path().join("tls/ca-key.pem")).unwrap(), b"cira key");
        assert_eq!(std::fs::read(b.path().join("secrets/signing.key")).unwrap(), b"k");
        let (agents_a, agents_b) = (
            crate::agents::keys::AgentKeys::load_or_create(a.path()).unwrap(),
            crate::agents::keys::AgentKeys::load_or_create(b.path()).unwrap(),
        );
        assert_eq!(
            agents_a.ca(),
            agents_b.ca(),
            "one agent CA: an agent enrolled at one gateway is known at the other"
        );
        assert_eq!(agents_a.signing_public(), agents_b.signing_public());
        let uuid = uuid::Uuid::new_v4();
        let sealed = crate::sealing::Sealer::load_or_create(a.path()).unwrap().seal(uuid, b"amt-password");
        let opened = crate::sealing::Sealer::load_or_create(b.path()).unwrap().open(uuid, &sealed).unwrap();
        assert_eq!(opened, b"amt-password", "a password sealed by one gateway opens on the other");
        assert!(link_tls(a.path(), "gw-a").unwrap().is_some() && link_tls(b.path(), "gw-b").unwrap().is_some());
        // Reissued for a new name, kept otherwise.
        let first = std::fs::read(b.path().join("fleet/node.pem")).unwrap();
        link_tls(b.path(), "gw-b").unwrap();
        assert_eq!(std::fs::read(b.path().join("fleet/node.pem")).unwrap(), first);
        link_tls(b.path(), "gw-c").unwrap();
        assert_ne!(std::fs::read(b.path().join("fleet/node.pem")).unwrap(), first);

        // Another CIRA CA is not silently replaced.
        let c = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(c.path().join("tls")).unwrap();
        std::fs::write(c.path().join("tls/ca.pem"), "another").unwrap();
        let err = join(c.path(), &bundle, false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        join(c.path(), &bundle, true).unwrap();

        // A bundle may not write outside its files.
        let evil = a.path().join("evil.json");
        std::fs::write(&evil, r#"{"version":1,"files":{"../../etc/x":"AA=="}}"#).unwrap();
        assert!(join(c.path(), &evil, true).unwrap_err().to_string().contains("may not hold"));
        std::fs::write(&evil, r#"{"version":1,"files":{"secrets/../x":"AA=="}}"#).unwrap();
        assert!(join(c.path(), &evil, true).is_err());
        assert!(link_tls(tempfile::tempdir().unwrap().path(), "gw-x").unwrap().is_none());
    }
}
