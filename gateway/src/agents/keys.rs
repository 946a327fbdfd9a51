//! The keys behind the agents' trust, shared by every gateway of a fleet (they live in
//! `DATA_DIR/secrets/`, which travels in the fleet's join bundle):
//!
//! - the **agent CA** (`secrets/agent-ca.pem`, `agent-ca-key.pem`, ECDSA P-256): it signs each
//!   enrolled machine's certificate, for a key the machine made itself; the QUIC and TLS listeners
//!   accept client certificates from this CA only, and the store says whether one was revoked;
//! - the **signing key** (`secrets/config-signing.pk8`, Ed25519, PKCS#8): it signs what the gateway
//!   tells agents to do (their configuration now, support actions and messages later); agents
//!   learn its public half at enrollment and verify every signed payload with it.
//!
//! Both are made on the first start of a gateway that has none. What it does not do: decide
//! whether a token allows enrollment (`store`), or speak the protocol (`session`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use protocols::entitlement::{Entitlement, EntitlementError};
use protocols::tap::{signed_message, SignDomain};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
    SubjectPublicKeyInfo,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

const CA_FILE: &str = "secrets/agent-ca.pem";
const CA_KEY_FILE: &str = "secrets/agent-ca-key.pem";
const SIGNING_KEY_FILE: &str = "secrets/config-signing.pk8";
const CA_LIFETIME: Duration = Duration::days(3650);

/// Why a certificate request was refused.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("this gateway does not issue certificates (a maintenance silo: enroll through the root)")]
    NotIssuer,
    #[error("the entitlement cannot be encoded: {0}")]
    Entitlement(#[from] EntitlementError),
    #[error("the certificate request does not parse or its signature does not verify: {0}")]
    BadRequest(rcgen::Error),
    #[error("the machine's public key on record does not parse: {0}")]
    BadKey(rcgen::Error),
    #[error("signing the certificate: {0}")]
    Sign(rcgen::Error),
}

/// A certificate issued to an agent.
#[derive(Debug, Clone)]
pub struct Issued {
    pub der: CertificateDer<'static>,
    /// Hex of the serial number (the store's key for revocation).
    pub serial: String,
    /// SHA-256 of the DER, `AA:BB:…`.
    pub fingerprint: String,
    pub not_after: OffsetDateTime,
    /// Hex of the machine's SubjectPublicKeyInfo (DER): a root reissues for it when it moves
    /// the machine to another silo.
    pub spki: String,
}

impl Issued {
    /// The store's record of this certificate, issued to machine `uuid` at `issued_at`.
    pub fn record(&self, uuid: Uuid, issued_at: OffsetDateTime) -> crate::store::NewAgentCert {
        crate::store::NewAgentCert {
            serial: self.serial.clone(),
            uuid,
            fingerprint: self.fingerprint.clone(),
            issued_at,
            expires_at: self.not_after,
            spki: Some(self.spki.clone()),
        }
    }
}

/// The agent CA and the signing key, loaded.
pub struct AgentKeys {
    /// The CA client certificates must chain to: this gateway's agent CA, or on a maintenance
    /// silo the root's.
    ca_der: CertificateDer<'static>,
    /// Its key, when this gateway issues certificates (not on a maintenance silo).
    ca_key: Option<KeyPair>,
    signing: Ed25519KeyPair,
}

impl std::fmt::Debug for AgentKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentKeys").field("signing_public", &hex::encode(self.signing_public())).finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Tether Agent CA");
    dn.push(DnType::OrganizationName, "Tether");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

impl AgentKeys {
    /// Loads the keys of `data_dir`, making those that are missing. A CA certificate without its
    /// key (or the reverse) is an error: agents enrolled with it would be locked out silently.
    pub fn load_or_create(data_dir: &Path) -> Result<AgentKeys> {
        let (ca_path, ca_key_path) = (data_dir.join(CA_FILE), data_dir.join(CA_KEY_FILE));
        match (ca_path.exists(), ca_key_path.exists()) {
            (false, false) => {
                let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
                let mut params = ca_params();
                let now = OffsetDateTime::now_utc();
                params.not_before = now - Duration::days(1);
                params.not_after = now + CA_LIFETIME;
                let cert = params.self_signed(&key)?;
                write_secret(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
                write_secret(&ca_path, cert.pem().as_bytes(), 0o644)?;
            }
            (true, true) => {}
            _ => bail!(
                "{} and {} belong together and one is missing: restore it from a backup (agents enrolled with this CA \
                 cannot connect until then)",
                ca_path.display(),
                ca_key_path.display()
            ),
        }
        let ca_pem = std::fs::read(&ca_path).with_context(|| format!("reading {}", ca_path.display()))?;
        let ca_der = rustls_pemfile::certs(&mut ca_pem.as_slice())
            .next()
            .with_context(|| format!("{} holds no certificate", ca_path.display()))?
            .with_context(|| format!("{} is not PEM", ca_path.display()))?;
        let key_pem =
            std::fs::read_to_string(&ca_key_path).with_context(|| format!("reading {}", ca_key_path.display()))?;
        let ca_key = KeyPair::from_pem(&key_pem).with_context(|| format!("{} is not a key", ca_key_path.display()))?;

        let signing_path = data_dir.join(SIGNING_KEY_FILE);
        if !signing_path.exists() {
            let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("generating the Ed25519 signing key failed"))?;
            write_secret(&signing_path, document.as_ref(), 0o600)?;
        }
        let pkcs8 = std::fs::read(&signing_path).with_context(|| format!("reading {}", signing_path.display()))?;
        let signing = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|e| anyhow::anyhow!("{} is not an Ed25519 key in PKCS#8: {e}", signing_path.display()))?;
        Ok(AgentKeys { ca_der, ca_key: Some(ca_key), signing })
    }

    /// These keys on a maintenance silo: client certificates must chain to the root's agent CA
    /// (`root_ca`), and this gateway issues none. Its own signing key stays.
    pub fn trusting_root(self, root_ca: CertificateDer<'static>) -> AgentKeys {
        AgentKeys { ca_der: root_ca, ca_key: None, signing: self.signing }
    }

    /// The agent CA's certificate (client certificates must chain to it).
    pub fn ca(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The public half of the signing key, as agents pin it.
    pub fn signing_public(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.signing.public_key().as_ref()[..32]);
        out
    }

    /// Signs `payload` for `domain` (the bytes agents verify: [`signed_message`]).
    pub fn sign(&self, domain: SignDomain, payload: &[u8]) -> [u8; 64] {
        let signature = self.signing.sign(&signed_message(domain, payload));
        let mut out = [0u8; 64];
        out.copy_from_slice(signature.as_ref());
        out
    }

    /// Issues a client certificate for machine `uuid` to the key in `csr` (whose signature proves
    /// the requester holds it). Only the key is taken from the request: the name, the UUID and the
    /// validity are the gateway's. A root gives the `entitlement` too (a maintenance
    /// certificate; the certificate then ends no later than the entitlement).
    pub fn issue(
        &self,
        csr: &[u8],
        uuid: Uuid,
        lifetime: Duration,
        entitlement: Option<&Entitlement>,
    ) -> Result<Issued, IssueError> {
        let request = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr))
            .map_err(IssueError::BadRequest)?;
        self.issue_for(&request.public_key, uuid, lifetime, entitlement)
    }

    /// Issues a certificate again for the machine key on record (`spki`: hex of its
    /// SubjectPublicKeyInfo, as [`Issued::spki`] gave it): how a root moves a machine to another
    /// silo without the machine asking.
    pub fn reissue(
        &self,
        spki: &str,
        uuid: Uuid,
        lifetime: Duration,
        entitlement: Option<&Entitlement>,
    ) -> Result<Issued, IssueError> {
        let der = hex::decode(spki).map_err(|_| IssueError::BadKey(rcgen::Error::CouldNotParseKeyPair))?;
        let key = SubjectPublicKeyInfo::from_der(&der).map_err(IssueError::BadKey)?;
        self.issue_for(&key, uuid, lifetime, entitlement)
    }

    fn issue_for(
        &self,
        public_key: &impl PublicKeyData,
        uuid: Uuid,
        lifetime: Duration,
        entitlement: Option<&Entitlement>,
    ) -> Result<Issued, IssueError> {
        let ca_key = self.ca_key.as_ref().ok_or(IssueError::NotIssuer)?;
        let mut serial = [0u8; 16];
        rand::rng().fill_bytes(&mut serial);
        // Positive, and with a first byte that DER keeps: a serial starting with a zero byte
        // would be encoded shorter than the bytes the store keeps, and its agent refused as
        // unknown (found by the load generator's agents scenario, about 1 in 256 machines).
        serial[0] = (serial[0] & 0x7f) | 0x40;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, uuid.to_string());
        dn.push(DnType::OrganizationName, "Tether agent");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(format!("urn:uuid:{uuid}").try_into().map_err(IssueError::Sign)?)];
        params.not_after = now + lifetime;
        if let Some(entitlement) = entitlement {
            let urn = entitlement.to_urn()?;
            params.subject_alt_names.push(SanType::URI(urn.try_into().map_err(IssueError::Sign)?));
            let until = OffsetDateTime::from_unix_timestamp(entitlement.not_after).unwrap_or(params.not_after);
            params.not_after = params.not_after.min(until);
        }
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = now - Duration::minutes(5);
        let issuer = Issuer::from_ca_cert_der(&self.ca_der, ca_key).map_err(IssueError::Sign)?;
        let cert = params.signed_by(public_key, &issuer).map_err(IssueError::Sign)?;
        let der = CertificateDer::from(cert.der().to_vec());
        Ok(Issued {
            fingerprint: crate::certs::fingerprint(&der),
            der,
            serial: hex::encode(serial),
            not_after: params.not_after,
            spki: hex::encode(public_key.subject_public_key_info()),
        })
    }
}

/// What a verified client certificate says: the machine and the certificate's serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub uuid: Uuid,
    pub serial: String,
}

/// Reads the machine's UUID (its `urn:uuid:` name) and serial from a client certificate that
/// rustls has verified against the agent CA. `None` when it carries no UUID.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let sans = x509.subject_alternative_name().ok()??;
    let uuid = sans.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => uri.strip_prefix("urn:uuid:").and_then(|u| u.parse::<Uuid>().ok()),
        _ => None,
    })?;
    Some(PeerIdentity { uuid, serial: hex::encode(x509.raw_serial()) })
}

/// The maintenance entitlement a client certificate carries (`None`: none; an ordinary agent
/// certificate of an `all` gateway).
pub fn entitlement(cert: &CertificateDer<'_>) -> Option<Result<Entitlement, EntitlementError>> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let sans = x509.subject_alternative_name().ok()??;
    sans.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => Entitlement::from_urn(uri),
        _ => None,
    })
}

fn write_secret(path: &PathBuf, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", tmp.display()))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_for(key: &KeyPair) -> Vec<u8> {
        let params = CertificateParams::new(vec![]).unwrap();
        params.serialize_request(key).unwrap().der().to_vec()
    }

    #[test]
    fn every_issued_serial_reads_back_as_the_store_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let keys = AgentKeys::load_or_create(dir.path()).unwrap();
        let machine = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = csr_for(&machine);
        // Enough draws that a first byte of zero (1 in 256 before) comes up almost surely.
        for _ in 0..2000 {
            let issued = keys.issue(&csr, Uuid::new_v4(), Duration::days(1), None).unwrap();
            assert_eq!(peer_identity(&issued.der).unwrap().serial, issued.serial);
        }
    }

    #[test]
    fn keys_are_made_once_and_loaded_after() {
        let dir = tempfile::tempdir().unwrap();
        let first = AgentKeys::load_or_create(dir.path()).unwrap();
        let again = AgentKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(first.ca(), again.ca());
        assert_eq!(first.signing_public(), again.signing_public());
    }

    #[test]
    fn an_issued_certificate_names_the_machine_and_verifies_under_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let keys = AgentKeys::load_or_create(dir.path()).unwrap();
        let machine = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let uuid = Uuid::new_v4();
        let issued = keys.issue(&csr_for(&machine), uuid, Duration::days(365), None).unwrap();
        let identity = peer_identity(&issued.der).unwrap();
        assert_eq!(identity, PeerIdentity { uuid, serial: issued.serial.clone() });

        let mut roots = rustls::RootCertStore::empty();
        roots.add(keys.ca().clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider).build().unwrap();
        let now = rustls::pki_types::UnixTime::now();
        verifier.verify_client_cert(&issued.der, &[], now).expect("verifies against the agent CA");
    }

    #[test]
    fn a_reissued_certificate_is_for_the_same_key_with_a_new_serial() {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let dir = tempfile::tempdir().unwrap();
        let keys = AgentKeys::load_or_create(dir.path()).unwrap();
        let machine = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let uuid = Uuid::new_v4();
        let first = keys.issue(&csr_for(&machine), uuid, Duration::days(1), None).unwrap();
        assert_eq!(first.spki, hex::encode(machine.subject_public_key_info()));
        let again = keys.reissue(&first.spki, uuid, Duration::days(1), None).unwrap();
        assert_ne!(again.serial, first.serial);
        let spki = |der: &[u8]| X509Certificate::from_der(der).unwrap().1.tbs_certificate.subject_pki.raw.to_vec();
        assert_eq!(spki(&again.der), spki(&first.der));
        assert_eq!(peer_identity(&again.der).unwrap().uuid, uuid);
        assert!(keys.reissue("00", uuid, Duration::days(1), None).is_err());
    }

    #[test]
    fn a_tampered_request_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = AgentKeys::load_or_create(dir.path()).unwrap();
        let machine = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut csr = csr_for(&machine);
        let last = csr.len() - 1;
        csr[last] ^= 0x55;
        assert!(matches!(keys.issue(&csr, Uuid::new_v4(), Duration::days(1), None), Err(IssueError::BadRequest(_))));
        assert!(keys.issue(b"not a request", Uuid::new_v4(), Duration::days(1), None).is_err());
    }

    #[test]
    fn half_a_ca_is_an_error_not_a_new_ca() {
        let dir = tempfile::tempdir().unwrap();
        AgentKeys::load_or_create(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let err = AgentKeys::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("restore it from a backup"), "{err}");
    }

    #[test]
    fn signatures_verify_with_the_public_half_and_only_for_their_domain() {
        use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
        let dir = tempfile::tempdir().unwrap();
        let keys = AgentKeys::load_or_create(dir.path()).unwrap();
        let signature = keys.sign(SignDomain::Config, b"payload");
        let public = UnparsedPublicKey::new(&ED25519, keys.signing_public());
        public.verify(&signed_message(SignDomain::Config, b"payload"), &signature).unwrap();
        assert!(public.verify(&signed_message(SignDomain::Message, b"payload"), &signature).is_err());
    }
}
