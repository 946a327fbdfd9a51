//! What a silo is made of, without the daemon: the roles, the bundle a maintenance silo joins
//! its root with, admission by certificate, and the root's signed revocation lists. (The task
//! that pulls those lists is in `super`; this file needs no gateway state, which holds a [`Silo`].)

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context, Result};
use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
use protocols::entitlement::Entitlement;
use protocols::tap::{signed_message, SignDomain, Signed, SiloKeyBody, SIGNATURE_LEN};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::warn;
use uuid::Uuid;

use crate::agents::keys::AgentKeys;

/// The bundle's format version.
const BUNDLE_VERSION: u32 = 1;
/// Where a maintenance silo keeps what it joined with, in its data dir.
const BUNDLE_FILE: &str = "silo/bundle.json";
const ROOT_TLS_CA_FILE: &str = "silo/root-tls-ca.pem";
const REVOCATIONS_FILE: &str = "silo/revocations.json";
/// Serials a revocation list holds at most (a list beyond is refused, not cut).
pub const MAX_REVOKED: usize = 1_000_000;
/// The path of the root's revocation list, on its API listener (no token: it is public, and signed).
pub const REVOCATIONS_PATH: &str = "/silo/v1/revocations";

/// The role of this gateway (`--role`, `silo.role`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every role at once: one appliance, or one fleet (today's behaviour).
    #[default]
    All,
    /// Registration, personal data, entitlements; issues maintenance certificates.
    Root,
    /// Day-to-day work for the clients its certificates name; no personal data.
    Maintenance,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Root => "root",
            Role::Maintenance => "maintenance",
        }
    }
}

/// The role this gateway plays, with what a maintenance silo needs.
#[derive(Debug, Clone, Default)]
pub enum Silo {
    #[default]
    All,
    Root,
    Maintenance(Arc<Maintenance>),
}

impl Silo {
    pub fn role(&self) -> Role {
        match self {
            Silo::All => Role::All,
            Silo::Root => Role::Root,
            Silo::Maintenance(_) => Role::Maintenance,
        }
    }
}

/// What a root gives a maintenance silo to join it. Nothing in it is secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub version: u32,
    /// The silo's name, as the root's certificates name it.
    pub silo: String,
    /// Where the silo's agents connect (HOST:PORT), as the root tells them.
    pub location: String,
    /// The root's API (`https://HOST:PORT`), where the silo pulls revocations.
    pub root_api: String,
    /// The root's agent CA (PEM): every client certificate chains to it.
    pub root_agent_ca: String,
    /// The CA the root API's TLS certificate chains to (PEM).
    pub root_tls_ca: String,
    /// The root's Ed25519 signing key, public half (hex): it signs the revocation lists, and
    /// agents pinned it at enrollment.
    pub root_signing_key: String,
    /// The root's certification of the silo's own signing key: a [`SiloKeyBody`] (hex) and the
    /// root's signature over it (hex). The silo sends it to agents before its configuration.
    pub silo_key: String,
    pub silo_key_signature: String,
}

impl Bundle {
    /// The root's agent CA, parsed.
    pub fn agent_ca(&self) -> Result<CertificateDer<'static>> {
        rustls_pemfile::certs(&mut self.root_agent_ca.as_bytes())
            .next()
            .context("the bundle's root_agent_ca holds no certificate")?
            .context("the bundle's root_agent_ca is not PEM")
    }

    pub(crate) fn signing_key(&self) -> Result<[u8; 32]> {
        let bytes = hex::decode(&self.root_signing_key).context("the bundle's root_signing_key is not hex")?;
        bytes.try_into().map_err(|_| anyhow::anyhow!("the bundle's root_signing_key is not 32 bytes"))
    }

    fn check(&self) -> Result<()> {
        if self.version != BUNDLE_VERSION {
            bail!("this is a version {} silo bundle; this Tether reads version {BUNDLE_VERSION}", self.version);
        }
        check_name(&self.silo)?;
        self.agent_ca()?;
        self.signing_key()?;
        rustls_pemfile::certs(&mut self.root_tls_ca.as_bytes())
            .next()
            .context("the bundle's root_tls_ca holds no certificate")?
            .context("the bundle's root_tls_ca is not PEM")?;
        self.silo_key_body()?;
        Ok(())
    }

    /// The root's certification of the silo's key, as agents get it.
    pub fn silo_key_message(&self) -> Result<Signed> {
        let payload = hex::decode(&self.silo_key).context("the bundle's silo_key is not hex")?;
        let signature = hex::decode(&self.silo_key_signature)
            .ok()
            .and_then(|s| <[u8; SIGNATURE_LEN]>::try_from(s).ok())
            .context("the bundle's silo_key_signature is not 64 bytes of hex")?;
        Ok(Signed { payload: payload.into(), signature })
    }

    /// The certification, checked: the root signed it, for this silo.
    fn silo_key_body(&self) -> Result<SiloKeyBody> {
        let signed = self.silo_key_message()?;
        UnparsedPublicKey::new(&ED25519, self.signing_key()?)
            .verify(&signed_message(SignDomain::SiloKey, &signed.payload), &signed.signature)
            .map_err(|_| anyhow::anyhow!("the bundle's silo key is not signed by the root's key"))?;
        let body = SiloKeyBody::decode(&signed.payload).context("the bundle's silo key does not decode")?;
        if body.silo != self.silo {
            bail!("the bundle certifies a key for silo {}, not {}", body.silo, self.silo);
        }
        Ok(body)
    }

    /// Checks that the certified key is `own` (this silo's signing key, public half).
    pub fn certifies(&self, own: &[u8; 32]) -> Result<()> {
        let body = self.silo_key_body()?;
        if &body.key != own {
            bail!(
                "the bundle certifies signing key {}, but this silo's is {}: give the root this silo's key (`tether \
                 silo key`) and join with the bundle it writes",
                hex::encode(body.key),
                hex::encode(own)
            );
        }
        Ok(())
    }
}

/// The root's certification of silo `silo`'s signing key `key`, valid `days` from now.
pub fn certify_silo_key(keys: &AgentKeys, silo: &str, key: [u8; 32], days: u32) -> (String, String) {
    let now = OffsetDateTime::now_utc();
    let body = SiloKeyBody {
        silo: silo.to_string(),
        key,
        issued_at: now.unix_timestamp(),
        not_after: (now + time::Duration::days(days.into())).unix_timestamp(),
    };
    let mut payload = bytes::BytesMut::new();
    body.encode(&mut payload);
    let signature = keys.sign(SignDomain::SiloKey, &payload);
    (hex::encode(&payload), hex::encode(signature))
}

/// A silo's name: 1 to 64 of `a-z 0-9 - _ .`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !ok {
        bail!("{name:?} is not a silo name: 1 to 64 of a-z, 0-9, '-', '_', '.', starting with a letter or digit");
    }
    Ok(())
}

/// Writes the bundle for silo `silo`, whose signing key is `silo_key` (root).
pub fn write_bundle(
    keys: &AgentKeys,
    data_dir: &Path,
    silo: &crate::store::SiloRecord,
    root_api: &str,
    silo_key: [u8; 32],
    key_valid_days: u32,
) -> Bundle {
    let tls_ca = std::fs::read_to_string(data_dir.join("tls/ca.pem")).unwrap_or_default();
    let (silo_key, silo_key_signature) = certify_silo_key(keys, &silo.name, silo_key, key_valid_days);
    Bundle {
        silo_key,
        silo_key_signature,
        version: BUNDLE_VERSION,
        silo: silo.name.clone(),
        location: silo.location.clone(),
        root_api: root_api.to_string(),
        root_agent_ca: crate::certs::pem_block(keys.ca()),
        root_tls_ca: tls_ca,
        root_signing_key: hex::encode(keys.signing_public()),
    }
}

/// Imports a root's bundle into `data_dir` (maintenance): what `gateway --role maintenance` needs.
pub fn join(data_dir: &Path, bundle_file: &Path) -> Result<Bundle> {
    let text = std::fs::read_to_string(bundle_file).with_context(|| format!("reading {}", bundle_file.display()))?;
    let bundle: Bundle =
        serde_json::from_str(&text).with_context(|| format!("{} is not a silo bundle", bundle_file.display()))?;
    bundle.check().with_context(|| format!("{} is not a usable silo bundle", bundle_file.display()))?;
    let own = AgentKeys::load_or_create(data_dir).context("preparing this silo's signing key")?;
    bundle.certifies(&own.signing_public())?;
    let dir = data_dir.join("silo");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(data_dir.join(ROOT_TLS_CA_FILE), &bundle.root_tls_ca)
        .with_context(|| format!("writing {}", data_dir.join(ROOT_TLS_CA_FILE).display()))?;
    let json = serde_json::to_string_pretty(&bundle)?;
    std::fs::write(data_dir.join(BUNDLE_FILE), json)
        .with_context(|| format!("writing {}", data_dir.join(BUNDLE_FILE).display()))?;
    Ok(bundle)
}

/// The bundle this data dir joined with (maintenance).
pub fn joined(data_dir: &Path) -> Result<Bundle> {
    let path = data_dir.join(BUNDLE_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "a maintenance silo needs its root's bundle and {} is missing: on the root, `tether silo add NAME \
             --location HOST:PORT --root-api https://ROOT:8443 --bundle FILE`; here, `tether silo join FILE`",
            path.display()
        )
    })?;
    let bundle: Bundle = serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))?;
    bundle.check()?;
    Ok(bundle)
}

/// The serials the root revoked, as it signs them for its silos.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// When the root made it (unix seconds): a silo never goes back to an older list.
    pub issued_at: i64,
    /// Hex serials of revoked certificates that have not expired.
    pub serials: Vec<String>,
}

/// A revocation list and the root's signature over it, as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRevocations {
    /// The [`RevocationList`], JSON: the bytes signed.
    pub payload: String,
    /// Ed25519 over `tether-revocations-v1\0` and the payload, hex.
    pub signature: String,
}

impl SignedRevocations {
    /// Signs `list` with the root's key.
    pub fn sign(keys: &AgentKeys, list: &RevocationList) -> SignedRevocations {
        let payload = serde_json::to_string(list).unwrap_or_default();
        let signature = hex::encode(keys.sign(SignDomain::Revocations, payload.as_bytes()));
        SignedRevocations { payload, signature }
    }

    /// The list, if the root's key signed it.
    pub fn verify(&self, root_key: &[u8; 32]) -> Result<RevocationList> {
        let signature = hex::decode(&self.signature).context("the revocation list's signature is not hex")?;
        UnparsedPublicKey::new(&ED25519, root_key)
            .verify(&signed_message(SignDomain::Revocations, self.payload.as_bytes()), &signature)
            .map_err(|_| anyhow::anyhow!("the revocation list's signature does not verify with the root's key"))?;
        let list: RevocationList =
            serde_json::from_str(&self.payload).context("the signed revocation list does not parse")?;
        if list.serials.len() > MAX_REVOKED {
            bail!("the revocation list holds {} serials, more than {MAX_REVOKED}", list.serials.len());
        }
        Ok(list)
    }
}

/// Why a maintenance silo refused a client's certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the certificate carries no maintenance entitlement: enroll through the root")]
    NoEntitlement,
    #[error("the certificate's entitlement does not decode: {0}")]
    BadEntitlement(String),
    #[error("the certificate is for silo {named}, not this one ({this})")]
    OtherSilo { named: String, this: String },
    #[error("the certificate's tier {0} is not served by this silo")]
    Tier(String),
    #[error("the certificate's entitlement expired")]
    Expired,
    #[error("this machine's certificate was revoked by the root")]
    Revoked,
}

/// A client a maintenance silo admitted: what its certificate proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub uuid: Uuid,
    pub serial: String,
    pub entitlement: Entitlement,
}

/// A move out of this silo the client has not completed.
#[derive(Debug)]
pub struct Outgoing {
    pub id: Uuid,
    pub order: Signed,
    pub cert_der: bytes::Bytes,
}

/// A maintenance silo: what it joined with, and the root's latest revocation list.
#[derive(Debug)]
pub struct Maintenance {
    pub bundle: Bundle,
    data_dir: PathBuf,
    /// Tiers this silo serves (empty: any).
    tiers: Vec<String>,
    revoked: RwLock<Revoked>,
    /// The serial each admitted machine connected with, to end its session when the root revokes it.
    pub(super) admitted: std::sync::Mutex<std::collections::HashMap<Uuid, String>>,
    /// The moves out of this silo the root ordered and the client has not completed, by machine.
    pub(super) outgoing: std::sync::Mutex<std::collections::HashMap<Uuid, Arc<Outgoing>>>,
    /// Until when the agents' results for the root's actions were sent to the root.
    pub(super) forwarded: super::actions::Forwarded,
}

#[derive(Debug, Default)]
struct Revoked {
    issued_at: i64,
    serials: HashSet<String>,
}

impl Maintenance {
    /// Loads the joined bundle and the last revocation list kept (the root may be down when this
    /// silo starts).
    pub fn load(data_dir: &Path, tiers: Vec<String>) -> Result<Maintenance> {
        let bundle = joined(data_dir)?;
        let maintenance = Maintenance {
            bundle,
            data_dir: data_dir.to_path_buf(),
            tiers,
            revoked: RwLock::new(Revoked::default()),
            admitted: Default::default(),
            outgoing: Default::default(),
            forwarded: Default::default(),
        };
        let path = data_dir.join(REVOCATIONS_FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let kept = serde_json::from_str::<SignedRevocations>(&text)
                .map_err(anyhow::Error::from)
                .and_then(|signed| signed.verify(&maintenance.bundle.signing_key()?));
            match kept {
                Ok(list) => {
                    maintenance.install(list);
                }
                Err(err) => {
                    warn!(path = %path.display(), error = %format!("{err:#}"), "ignoring the kept revocation list")
                }
            }
        }
        Ok(maintenance)
    }

    /// This silo's name.
    pub fn name(&self) -> &str {
        &self.bundle.silo
    }

    /// Whether a client with this verified certificate (rustls checked its chain to the root's
    /// agent CA and its validity) may be served here at `now`.
    pub fn admit(
        &self,
        cert: &CertificateDer<'_>,
        uuid: Uuid,
        serial: &str,
        now: OffsetDateTime,
    ) -> Result<Admitted, Refusal> {
        let entitlement = match crate::agents::keys::entitlement(cert) {
            None => return Err(Refusal::NoEntitlement),
            Some(Err(err)) => return Err(Refusal::BadEntitlement(err.to_string())),
            Some(Ok(entitlement)) => entitlement,
        };
        if entitlement.silo != self.bundle.silo {
            return Err(Refusal::OtherSilo { named: entitlement.silo, this: self.bundle.silo.clone() });
        }
        if !self.tiers.is_empty() && !self.tiers.contains(&entitlement.tier) {
            return Err(Refusal::Tier(entitlement.tier));
        }
        if !entitlement.is_valid_at(now.unix_timestamp()) {
            return Err(Refusal::Expired);
        }
        if self.is_revoked(serial) {
            return Err(Refusal::Revoked);
        }
        if let Ok(mut admitted) = self.admitted.lock() {
            admitted.insert(uuid, serial.to_string());
        }
        Ok(Admitted { uuid, serial: serial.to_string(), entitlement })
    }

    /// A client of the root's API (no token: a silo's calls are public or signed).
    pub(crate) fn root_client(&self) -> Result<crate::client::ApiClient> {
        crate::client::ApiClient::new(&self.bundle.root_api, "", &self.data_dir.join(ROOT_TLS_CA_FILE), None)
    }

    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.read().map(|r| r.serials.contains(serial)).unwrap_or(true)
    }

    /// Takes `list` unless it is older than the one held; whether it was taken.
    fn install(&self, list: RevocationList) -> bool {
        let Ok(mut revoked) = self.revoked.write() else { return false };
        if list.issued_at < revoked.issued_at {
            return false;
        }
        *revoked = Revoked { issued_at: list.issued_at, serials: list.serials.into_iter().collect() };
        true
    }

    /// Pulls the root's revocation list once: verified, kept on disk, and installed. The serials
    /// newly revoked.
    pub async fn pull(&self) -> Result<Vec<String>> {
        let client = self.root_client()?;
        let value = client.get_json(REVOCATIONS_PATH).await.context("pulling the root's revocation list")?;
        let signed: SignedRevocations =
            serde_json::from_value(value).context("the root's revocation list is not one")?;
        let list = signed.verify(&self.bundle.signing_key()?)?;
        // Compared under the lock, not copied: the list may hold a million serials.
        let fresh: Vec<String> = match self.revoked.read() {
            Ok(held) => list.serials.iter().filter(|s| !held.serials.contains(*s)).cloned().collect(),
            Err(_) => list.serials.clone(),
        };
        if self.install(list) {
            let path = self.data_dir.join(REVOCATIONS_FILE);
            if let Err(err) = std::fs::write(&path, serde_json::to_string(&signed)?) {
                warn!(path = %path.display(), error = %err, "cannot keep the revocation list");
            }
            Ok(fresh)
        } else {
            bail!("the root served a revocation list older than the one held; kept the newer")
        }
    }
}
