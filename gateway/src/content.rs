//! Signed content at the edge (`docs/silos.md`, "Signed content"): items the root publishes
//! (signature updates, scripts, rescue images), each described by a [`ContentManifest`] the root
//! signs with its key, and kept by every gateway that serves them.
//!
//! - **Published** (a root, or a gateway of role `all`): `tether content publish NAME FILE`
//!   copies the file into `DATA_DIR/content/published/` and signs its manifest. Published items
//!   are the origin: never evicted.
//! - **Cached** (a maintenance silo): on the first request for an item, the silo asks its root
//!   (`POST /silo/v1/content`, signed with the silo's key, see [`fetch_from_root`]), checks the
//!   manifest's signature with the root's key, and downloads the bytes into
//!   `DATA_DIR/content/cache/`, hashing them as they come. An interrupted download goes on where
//!   it stopped (the root serves from an offset). Only a complete copy whose SHA-256 and size are
//!   the manifest's is served. The cache holds at most `content.cache_max_bytes`: the items used
//!   least recently go first. A cached item is checked against the root again after
//!   `content.revalidate_secs` (a newer manifest replaces it); while the root is unreachable the
//!   copy held is served.
//!
//! Whoever receives an item (an agent, a technician's CLI, the gateway serving a rescue image)
//! checks it against the manifest, whose signature it checks with the root key it holds: a
//! gateway's cache is not trusted, only the root's signature.
//!
//! On disk, an item is `NAME.manifest` (JSON: the signed payload and signature, hex) beside
//! `NAME.SHA256.data`, so that a new version never mixes with a reader of the old one.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use protocols::tap::{is_content_name, ContentKind, ContentManifest, SignDomain, Signed, MAX_CONTENT_SIZE};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use crate::agents::keys::AgentKeys;
use crate::silo::maintenance::Maintenance;

/// Where a maintenance silo asks its root for an item.
pub const CONTENT_PATH: &str = "/silo/v1/content";
/// The answer's header carrying the manifest's payload (hex).
pub const MANIFEST_HEADER: &str = "tether-content-manifest";
/// The answer's header carrying the manifest's signature (hex).
pub const SIGNATURE_HEADER: &str = "tether-content-signature";
/// Items whose fill may be under way at once (one lock each).
const MAX_FILLS: usize = 1024;

/// Why an item cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("{0:?} is not a content name (1 to 64 lower-case letters, digits, '.', '_' and '-')")]
    BadName(String),
    #[error("no content item {0:?} is published")]
    NotFound(String),
    #[error(
        "content item {name:?} is {size} bytes, more than this gateway keeps ({max} bytes, content.cache_max_bytes)"
    )]
    TooLarge { name: String, size: u64, max: u64 },
    #[error("the root cannot give content item {name:?}: {reason}")]
    Unavailable { name: String, reason: String },
    #[error("content item {name:?} was refused: {reason}")]
    Refused { name: String, reason: String },
    #[error("too many content items are being fetched at once; try again")]
    Busy,
    #[error("the content store: {0}")]
    Io(#[from] std::io::Error),
}

/// A manifest and its signature as kept on disk and shown by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedManifest {
    /// The [`ContentManifest`] payload, hex.
    pub payload: String,
    /// The root's Ed25519 signature over it ([`SignDomain::Content`]), hex.
    pub signature: String,
}

impl SignedManifest {
    pub fn new(signed: &Signed) -> SignedManifest {
        SignedManifest { payload: hex::encode(&signed.payload), signature: hex::encode(signed.signature) }
    }

    pub fn signed(&self) -> Option<Signed> {
        let payload = hex::decode(&self.payload).ok()?;
        let signature = hex::decode(&self.signature).ok()?.try_into().ok()?;
        Some(Signed { payload: Bytes::from(payload), signature })
    }
}

/// Checks `signed` with `root_key` and decodes it: the manifest, or why not.
pub fn verify_manifest(root_key: &[u8; 32], signed: &Signed) -> Result<ContentManifest, String> {
    let message = protocols::tap::signed_message(SignDomain::Content, &signed.payload);
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, root_key)
        .verify(&message, &signed.signature)
        .map_err(|_| "its manifest is not signed by the root's key".to_string())?;
    ContentManifest::decode(&signed.payload).map_err(|err| format!("its manifest does not decode: {err}"))
}

/// An item this gateway holds whole and checked.
#[derive(Debug, Clone)]
pub struct Item {
    pub signed: Signed,
    pub manifest: ContentManifest,
    /// The bytes.
    pub path: PathBuf,
}

/// Where this gateway's items come from.
#[derive(Debug)]
enum Source {
    /// Published here (a root, or role `all`).
    Origin,
    /// A maintenance silo's root, asked with the silo's key.
    Root { maintenance: Arc<Maintenance>, keys: Arc<AgentKeys> },
}

/// This gateway's content: published items (origin) or its cache of the root's.
#[derive(Debug)]
pub struct Content {
    dir: PathBuf,
    /// The key every manifest must be signed with (the root's).
    root_key: [u8; 32],
    source: Source,
    max_bytes: u64,
    revalidate: Duration,
    /// One lock per item being fetched, so that a second request waits for the first fill.
    fills: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When each cached item was last checked against the root.
    checked: Mutex<HashMap<String, Instant>>,
}

impl Content {
    /// Published items in `data_dir/content/published`, signed by `keys` (a root, or role `all`).
    pub fn origin(data_dir: &Path, keys: &AgentKeys) -> Content {
        Content::new(data_dir.join("content/published"), keys.signing_public(), Source::Origin, u64::MAX, Duration::MAX)
    }

    /// A maintenance silo's cache of its root's items, in `data_dir/content/cache`.
    pub fn cache(
        data_dir: &Path,
        maintenance: Arc<Maintenance>,
        keys: Arc<AgentKeys>,
        max_bytes: u64,
        revalidate: Duration,
    ) -> anyhow::Result<Content> {
        let root_key = maintenance.bundle.signing_key()?;
        let source = Source::Root { maintenance, keys };
        Ok(Content::new(data_dir.join("content/cache"), root_key, source, max_bytes, revalidate))
    }

    fn new(dir: PathBuf, root_key: [u8; 32], source: Source, max_bytes: u64, revalidate: Duration) -> Content {
        Content { dir, root_key, source, max_bytes, revalidate, fills: Default::default(), checked: Default::default() }
    }

    /// The root's key, which every manifest is checked with.
    pub fn root_key(&self) -> &[u8; 32] {
        &self.root_key
    }

    /// Whether items here are the origin (published on this gateway).
    pub fn is_origin(&self) -> bool {
        matches!(self.source, Source::Origin)
    }

    /// The item `name`, whole and checked: held here, or (a maintenance silo) fetched from the
    /// root first. Marks it used, for eviction.
    pub async fn item(&self, name: &str) -> Result<Item, ContentError> {
        if !is_content_name(name) {
            return Err(ContentError::BadName(name.to_string()));
        }
        let Source::Root { maintenance, keys } = &self.source else {
            return self.held(name)?.ok_or_else(|| ContentError::NotFound(name.to_string()));
        };
        let lock = {
            let mut fills = self.fills.lock().await;
            if fills.len() >= MAX_FILLS {
                fills.retain(|_, lock| Arc::strong_count(lock) > 1);
                if fills.len() >= MAX_FILLS {
                    return Err(ContentError::Busy);
                }
            }
            Arc::clone(fills.entry(name.to_string()).or_default())
        };
        let _filling = lock.lock().await;
        let held = self.held(name)?;
        let fresh = self.checked.lock().ok().and_then(|c| c.get(name).map(|at| at.elapsed() < self.revalidate));
        if let (Some(item), Some(true)) = (&held, fresh) {
            touch(&item.path);
            return Ok(item.clone());
        }
        match self.fill(name, maintenance, keys, held.as_ref()).await {
            Ok(item) => {
                if let Ok(mut checked) = self.checked.lock() {
                    if checked.len() >= MAX_FILLS {
                        checked.clear();
                    }
                    checked.insert(name.to_string(), Instant::now());
                }
                touch(&item.path);
                Ok(item)
            }
            // The root is down: the copy held is still the root's (its signature says so).
            Err(ContentError::Unavailable { reason, .. }) if held.is_some() => {
                warn!(name, %reason, "cannot check a cached content item with the root; serving the copy held");
                let item = held.expect("checked");
                touch(&item.path);
                Ok(item)
            }
            Err(err) => Err(err),
        }
    }

    /// The item held here, checked against its manifest's size (its hash was checked when it
    /// came; readers check it again).
    fn held(&self, name: &str) -> Result<Option<Item>, ContentError> {
        let Some((signed, manifest)) = self.read_manifest(name)? else { return Ok(None) };
        let path = self.data_path(&manifest);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.len() == manifest.size => Ok(Some(Item { signed, manifest, path })),
            Ok(_) => Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.manifest"))
    }

    fn data_path(&self, manifest: &ContentManifest) -> PathBuf {
        self.dir.join(format!("{}.{}.data", manifest.name, hex::encode(manifest.sha256)))
    }

    fn part_path(&self, manifest: &ContentManifest) -> PathBuf {
        self.dir.join(format!("{}.{}.part", manifest.name, hex::encode(manifest.sha256)))
    }

    fn read_manifest(&self, name: &str) -> Result<Option<(Signed, ContentManifest)>, ContentError> {
        let text = match std::fs::read_to_string(self.manifest_path(name)) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let refused = |reason: String| ContentError::Refused { name: name.to_string(), reason };
        let kept: SignedManifest =
            serde_json::from_str(&text).map_err(|e| refused(format!("its manifest file: {e}")))?;
        let signed = kept.signed().ok_or_else(|| refused("its manifest file is not hex".into()))?;
        let manifest = verify_manifest(&self.root_key, &signed).map_err(refused)?;
        if manifest.name != name {
            return Err(refused(format!("its manifest names {:?}", manifest.name)));
        }
        Ok(Some((signed, manifest)))
    }

    fn write_manifest(&self, signed: &Signed) -> Result<(), ContentError> {
        let manifest = ContentManifest::decode(&signed.payload).map_err(|e| ContentError::Refused {
            name: String::new(),
            reason: format!("its manifest does not decode: {e}"),
        })?;
        let path = self.manifest_path(&manifest.name);
        let tmp = path.with_extension("manifest.tmp");
        let text = serde_json::to_string(&SignedManifest::new(signed)).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Every item held here, newest first.
    pub fn list(&self) -> Result<Vec<Item>, ContentError> {
        let mut items = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(items),
            Err(err) => return Err(err.into()),
        };
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".manifest")) else { continue };
            match self.held(name) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => {}
                Err(err) => warn!(name, error = %err, "skipping a content item"),
            }
        }
        items.sort_by(|a, b| {
            b.manifest.published_at.cmp(&a.manifest.published_at).then(a.manifest.name.cmp(&b.manifest.name))
        });
        Ok(items)
    }

    /// Asks the root for `name` and downloads what this silo does not hold whole: the item,
    /// checked. `held` is the copy held (kept when the root's manifest is the same).
    async fn fill(
        &self,
        name: &str,
        maintenance: &Maintenance,
        keys: &AgentKeys,
        held: Option<&Item>,
    ) -> Result<Item, ContentError> {
        let unavailable = |reason: String| ContentError::Unavailable { name: name.to_string(), reason };
        // First only the manifest (from the end): is the copy held, or a part, the root's latest?
        let (signed, manifest, _) = fetch_from_root(maintenance, keys, name, u64::MAX).await?;
        if manifest.name != name {
            return Err(ContentError::Refused {
                name: name.into(),
                reason: format!("the root sent {:?}", manifest.name),
            });
        }
        if let Some(item) = held {
            if item.manifest == manifest {
                return Ok(item.clone());
            }
            if item.manifest.published_at > manifest.published_at {
                return Err(ContentError::Refused {
                    name: name.into(),
                    reason: "the root sent a manifest older than the one held".into(),
                });
            }
        }
        if manifest.size > self.max_bytes {
            return Err(ContentError::TooLarge { name: name.into(), size: manifest.size, max: self.max_bytes });
        }
        std::fs::create_dir_all(&self.dir)?;
        let part = self.part_path(&manifest);
        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0).min(manifest.size);
        self.make_room(manifest.size - have, name)?;
        // Hash what is there already, then append what the root sends from there.
        let mut hasher = Sha256::new();
        if have > 0 {
            let path = part.clone();
            hasher = tokio::task::spawn_blocking(move || hash_prefix(&path, have, hasher))
                .await
                .map_err(std::io::Error::other)??;
            info!(name, have, size = manifest.size, "resuming a content item's download from the root");
        } else {
            info!(name, size = manifest.size, "fetching a content item from the root");
        }
        let mut got = have;
        if have < manifest.size {
            let (again, _, mut body) = fetch_from_root(maintenance, keys, name, have).await?;
            if again.payload != signed.payload {
                return Err(unavailable("the root published a new version during the download; ask again".into()));
            }
            let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(&part).await?;
            file.set_len(have).await?;
            use http_body_util::BodyExt;
            loop {
                let frame = tokio::time::timeout(FETCH_STALL, body.frame())
                    .await
                    .map_err(|_| unavailable(format!("the root sent nothing for {} s", FETCH_STALL.as_secs())))?;
                let Some(frame) = frame else { break };
                let frame = frame.map_err(|e| unavailable(format!("the download broke off: {e}")))?;
                let Ok(data) = frame.into_data() else { continue };
                got += data.len() as u64;
                if got > manifest.size {
                    break;
                }
                hasher.update(&data);
                file.write_all(&data).await?;
            }
            file.sync_all().await?;
        }
        if got != manifest.size {
            if got > manifest.size {
                let _ = std::fs::remove_file(&part);
            }
            return Err(unavailable(format!("got {got} of its {} bytes; the next request goes on", manifest.size)));
        }
        let sha256: [u8; 32] = hasher.finalize().into();
        if sha256 != manifest.sha256 {
            let _ = std::fs::remove_file(&part);
            return Err(ContentError::Refused {
                name: name.into(),
                reason: format!(
                    "its bytes hash to {}, not to the {} the root signed",
                    hex::encode(sha256),
                    hex::encode(manifest.sha256)
                ),
            });
        }
        let path = self.data_path(&manifest);
        std::fs::rename(&part, &path)?;
        self.write_manifest(&signed)?;
        if let Some(old) = held {
            if old.path != path {
                let _ = std::fs::remove_file(&old.path);
            }
        }
        info!(name, size = manifest.size, "content item cached");
        Ok(Item { signed, manifest, path })
    }

    /// Evicts the items used least recently until `need` more bytes fit (never `keep`).
    fn make_room(&self, need: u64, keep: &str) -> Result<(), ContentError> {
        if need > self.max_bytes {
            return Err(ContentError::TooLarge { name: keep.into(), size: need, max: self.max_bytes });
        }
        let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        let mut used = 0u64;
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if path.extension().is_some_and(|e| e == "data" || e == "part") {
                used += meta.len();
                let of_keep = entry.file_name().to_str().is_some_and(|f| f.starts_with(&format!("{keep}.")));
                if !of_keep {
                    files.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len(), path));
                }
            }
        }
        files.sort();
        let mut files = files.into_iter();
        while used.saturating_add(need) > self.max_bytes {
            let Some((_, len, path)) = files.next() else {
                return Err(ContentError::TooLarge { name: keep.into(), size: need, max: self.max_bytes });
            };
            info!(path = %path.display(), bytes = len, "evicting a content item from the cache");
            std::fs::remove_file(&path)?;
            used -= len;
        }
        Ok(())
    }
}

/// How long a download from the root may stall.
const FETCH_STALL: Duration = Duration::from_secs(30);

/// Marks a file used now (its modification time orders eviction).
fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// `hasher` fed the first `len` bytes of `path` (a part being resumed).
pub(crate) fn hash_prefix(path: &Path, len: u64, mut hasher: Sha256) -> std::io::Result<Sha256> {
    let mut file = std::fs::File::open(path)?.take(len);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher);
        }
        hasher.update(&buf[..n]);
    }
}

/// What a silo asks its root, signed with its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentRequest {
    pub silo: String,
    pub name: String,
    /// Where the bytes start (past the end: only the manifest).
    pub offset: u64,
    pub issued_at: i64,
}

/// One request to the root: the manifest it sends (checked with the root key), and the bytes from
/// `offset`.
async fn fetch_from_root(
    maintenance: &Maintenance,
    keys: &AgentKeys,
    name: &str,
    offset: u64,
) -> Result<(Signed, ContentManifest, hyper::body::Incoming), ContentError> {
    let unavailable = |reason: String| ContentError::Unavailable { name: name.to_string(), reason };
    let request = ContentRequest {
        silo: maintenance.name().to_string(),
        name: name.to_string(),
        offset,
        issued_at: time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    let payload = serde_json::to_string(&request).map_err(std::io::Error::other)?;
    let signature = hex::encode(keys.sign(SignDomain::SiloReport, payload.as_bytes()));
    let report = crate::silo::moves::SiloReport { silo: request.silo.clone(), payload, signature };
    let client = maintenance.root_client().map_err(|e| unavailable(format!("{e:#}")))?;
    let body = serde_json::to_value(&report).map_err(std::io::Error::other)?;
    let response = client.stream_post(CONTENT_PATH, &body).await.map_err(|e| match e {
        crate::client::StreamError::Status(status, _) if status == hyper::StatusCode::NOT_FOUND => {
            ContentError::NotFound(name.to_string())
        }
        other => unavailable(other.to_string()),
    })?;
    let header = |h: &str| response.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let kept = SignedManifest {
        payload: header(MANIFEST_HEADER).unwrap_or_default(),
        signature: header(SIGNATURE_HEADER).unwrap_or_default(),
    };
    let refused = |reason: String| ContentError::Refused { name: name.to_string(), reason };
    let signed = kept.signed().ok_or_else(|| refused("the root's answer carries no manifest".into()))?;
    let manifest = verify_manifest(&maintenance.bundle.signing_key().map_err(|e| refused(e.to_string()))?, &signed)
        .map_err(refused)?;
    Ok((signed, manifest, response.into_body()))
}

/// The root's side of [`fetch_from_root`]: checks that a registered silo signed `report` lately,
/// and what it asks for.
pub async fn take_request(
    store: &crate::store::Store,
    report: &crate::silo::moves::SiloReport,
) -> Result<ContentRequest, crate::silo::moves::ReportError> {
    crate::silo::moves::take_request(store, report, |r: &ContentRequest| (r.silo.as_str(), r.issued_at)).await
}

/// `tether content publish`: copies `file` into `data_dir`'s published items as `name` of `kind`,
/// hashing it (with a progress bar on a terminal), and signs its manifest with this gateway's key.
/// A newer version of a name replaces the older one.
pub fn publish(
    data_dir: &Path,
    keys: &AgentKeys,
    name: &str,
    kind: ContentKind,
    file: &Path,
) -> anyhow::Result<ContentManifest> {
    use anyhow::Context;
    if !is_content_name(name) {
        anyhow::bail!("{}", ContentError::BadName(name.to_string()));
    }
    let content = Content::origin(data_dir, keys);
    std::fs::create_dir_all(&content.dir)?;
    let mut source = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let size = source.metadata()?.len();
    if size > MAX_CONTENT_SIZE {
        anyhow::bail!("{} is {size} bytes; an item may be at most {MAX_CONTENT_SIZE}", file.display());
    }
    let tmp = content.dir.join(format!("{name}.publishing"));
    let mut out = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let bar = indicatif::ProgressBar::new(size).with_style(
        indicatif::ProgressStyle::with_template("{spinner} {bytes} of {total_bytes} ({binary_bytes_per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    loop {
        let n = source.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        copied += n as u64;
        bar.set_position(copied);
    }
    out.sync_all()?;
    bar.finish_and_clear();
    let previous = content.read_manifest(name).ok().flatten();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let published_at = previous.as_ref().map_or(now, |(_, m)| now.max(m.published_at + 1));
    let manifest =
        ContentManifest { name: name.to_string(), kind, published_at, size: copied, sha256: hasher.finalize().into() };
    let mut payload = bytes::BytesMut::new();
    manifest.encode(&mut payload);
    let signature = keys.sign(SignDomain::Content, &payload);
    let signed = Signed { payload: payload.freeze(), signature };
    std::fs::rename(&tmp, content.data_path(&manifest))?;
    content.write_manifest(&signed)?;
    if let Some((_, old)) = previous {
        if old.sha256 != manifest.sha256 {
            let _ = std::fs::remove_file(content.data_path(&old));
        }
    }
    Ok(manifest)
}

#[cfg(test)]
#[path = "content_test.rs"]
mod tests;
