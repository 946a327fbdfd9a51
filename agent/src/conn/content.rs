//! `tether-agent content get NAME`: a content item the root published (signatures, a script, a
//! rescue image), fetched from this machine's gateway (its maintenance silo's cache) and kept only
//! once it checks out against the root's key pinned at enrollment: the manifest's signature, its
//! name, and the SHA-256 and size of the bytes. A gateway's copy is not trusted; the root's
//! signature is.
//!
//! The bytes go to `OUT.part` (beside it, `OUT.part.manifest` names the version they belong to),
//! so an interrupted download goes on from where it stopped: the request carries the offset, and
//! the part is hashed before what follows is appended. A part of another version starts again.
//! A copy whose hash is not the root's is deleted and refused.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use aws_lc_rs::digest;
use protocols::tap::{ContentManifest, Message, SignDomain, Signed};
use tracing::{debug, info};

use super::{gateways, resolve, tls_client};
use crate::link;
use crate::state::StateDir;

/// How long the gateway may send nothing (it may be fetching the item from the root first).
const STALL: Duration = Duration::from_secs(120);

/// What [`get`] kept.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub manifest: ContentManifest,
    pub path: PathBuf,
    /// The gateway it came from.
    pub gateway: String,
    /// Where the download started (more than 0: it went on from an earlier part).
    pub resumed_from: u64,
}

/// Why a gateway's answer is refused rather than tried elsewhere.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// Fetches `name` into `out` from the first gateway that answers, checked against the root key
/// pinned at enrollment. `progress` shows a bar on the terminal.
pub async fn get(state: &StateDir, name: &str, out: &Path, local: Option<IpAddr>, progress: bool) -> Result<Fetched> {
    if !protocols::tap::is_content_name(name) {
        bail!("{name:?} is not a content name (lower-case letters, digits, '.', '_' and '-')");
    }
    let enrollment = state.require_enrollment()?;
    let root_key: [u8; 32] = hex::decode(&enrollment.signing_key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .context("the signing key pinned at enrollment is damaged; enroll again")?;
    let tls = tls_client(state)?;
    let mut last = None;
    for gateway in gateways(state, &enrollment) {
        match from_gateway(&gateway, &tls, local, enrollment.uuid, &root_key, name, out, progress).await {
            Ok(fetched) => return Ok(fetched),
            Err(err) if err.downcast_ref::<Refused>().is_some() => return Err(err),
            Err(err) => {
                debug!(%gateway, error = %format!("{err:#}"), "content: trying the next gateway");
                last = Some(err.context(format!("from {gateway}")));
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no gateway to ask: enroll first")))
}

#[allow(clippy::too_many_arguments)]
async fn from_gateway(
    gateway: &str,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    local: Option<IpAddr>,
    uuid: uuid::Uuid,
    root_key: &[u8; 32],
    name: &str,
    out: &Path,
    progress: bool,
) -> Result<Fetched> {
    let part = with_suffix(out, ".part");
    let part_manifest = with_suffix(out, ".part.manifest");
    let held_version = std::fs::read_to_string(&part_manifest).ok();
    let mut offset = match &held_version {
        Some(_) => std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0),
        None => 0,
    };
    let (addr, server_name) = resolve(gateway)?;
    loop {
        let (link, mut control) = link::dial(addr, &server_name, tls.clone(), Duration::from_secs(10), local).await?;
        control.write(&Message::ContentGet { uuid, name: name.to_string(), offset }).await?;
        let signed = match tokio::time::timeout(STALL, control.read()).await {
            Err(_) => bail!("the gateway did not answer within {} s", STALL.as_secs()),
            Ok(Err(err)) => return Err(err),
            Ok(Ok(Message::ContentItem(signed))) => signed,
            Ok(Ok(Message::Close { code, text })) => bail!("the gateway refused: {text} ({code:?})"),
            Ok(Ok(other)) => bail!("the gateway answered with {:?}", other.message_type()),
        };
        let manifest = check_manifest(root_key, name, &signed).map_err(Refused)?;
        let version = hex::encode(&signed.payload);
        if offset > 0 && held_version.as_deref() != Some(version.as_str()) {
            info!(name, "the part held is of another version; starting again");
            let _ = std::fs::remove_file(&part);
            offset = 0;
            link.close("another version").await;
            continue;
        }
        let offset = offset.min(manifest.size);
        std::fs::write(&part_manifest, &version).with_context(|| format!("writing {}", part_manifest.display()))?;
        let mut hasher = digest::Context::new(&digest::SHA256);
        if offset > 0 {
            hash_prefix(&part, offset, &mut hasher)?;
            info!(name, offset, size = manifest.size, "resuming the download");
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part)
            .with_context(|| format!("opening {}", part.display()))?;
        file.set_len(offset)?;
        let bar = if progress { indicatif::ProgressBar::new(manifest.size) } else { indicatif::ProgressBar::hidden() };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} {bytes} of {total_bytes} ({binary_bytes_per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(name.to_string());
        bar.set_position(offset);
        let mut got = offset;
        let mut buf = vec![0u8; 64 * 1024];
        while got < manifest.size {
            let want = buf.len().min(usize::try_from(manifest.size - got).unwrap_or(usize::MAX));
            let n = tokio::time::timeout(STALL, control.read_raw(&mut buf[..want]))
                .await
                .map_err(|_| anyhow!("the gateway sent nothing for {} s; run again to go on", STALL.as_secs()))??;
            if n == 0 {
                file.sync_all()?;
                bail!("the gateway ended after {got} of {} bytes; run again to go on", manifest.size);
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])?;
            got += n as u64;
            bar.set_position(got);
        }
        file.sync_all()?;
        bar.finish_and_clear();
        link.close("content received").await;
        let sha256 = hasher.finish();
        if sha256.as_ref() != manifest.sha256 {
            let _ = std::fs::remove_file(&part);
            let _ = std::fs::remove_file(&part_manifest);
            return Err(Refused(format!(
                "the bytes {gateway} sent for {name} hash to {}, not to the {} the root signed: the copy was altered, \
                 and is not kept",
                hex::encode(sha256.as_ref()),
                hex::encode(manifest.sha256)
            ))
            .into());
        }
        std::fs::rename(&part, out).with_context(|| format!("moving the download to {}", out.display()))?;
        let _ = std::fs::remove_file(&part_manifest);
        return Ok(Fetched { manifest, path: out.to_path_buf(), gateway: gateway.to_string(), resumed_from: offset });
    }
}

/// The manifest, if the root's key signed it and it is of `name`.
pub fn check_manifest(root_key: &[u8; 32], name: &str, signed: &Signed) -> Result<ContentManifest, String> {
    if !crate::signature::verifies(root_key, SignDomain::Content, signed) {
        return Err(format!(
            "the manifest of {name} the gateway sent is not signed by the root's key pinned at enrollment: refused"
        ));
    }
    let manifest =
        ContentManifest::decode(&signed.payload).map_err(|e| format!("the manifest does not decode: {e}"))?;
    if manifest.name != name {
        return Err(format!("asked for {name}, the gateway sent the root's manifest of {}", manifest.name));
    }
    Ok(manifest)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn hash_prefix(path: &Path, len: u64, hasher: &mut digest::Context) -> Result<()> {
    let mut file = std::fs::File::open(path)?.take(len);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::testing;

    fn signed(key: &aws_lc_rs::signature::Ed25519KeyPair, manifest: &ContentManifest) -> Signed {
        let mut payload = bytes::BytesMut::new();
        manifest.encode(&mut payload);
        testing::sign(key, SignDomain::Content, payload.to_vec())
    }

    #[test]
    fn a_manifest_counts_only_when_the_root_signed_it_for_the_name_asked() {
        let root = testing::key();
        let rogue = testing::key();
        let root_key: [u8; 32] = testing::public(&root).try_into().expect("32 bytes");
        let manifest = ContentManifest {
            name: "av-sigs".into(),
            kind: protocols::tap::ContentKind::Signatures,
            published_at: 1,
            size: 3,
            sha256: [1; 32],
        };
        assert_eq!(check_manifest(&root_key, "av-sigs", &signed(&root, &manifest)), Ok(manifest.clone()));
        let err = check_manifest(&root_key, "av-sigs", &signed(&rogue, &manifest)).unwrap_err();
        assert!(err.contains("not signed by the root"), "{err}");
        let err = check_manifest(&root_key, "other", &signed(&root, &manifest)).unwrap_err();
        assert!(err.contains("asked for other"), "{err}");
        // Signed for another purpose (a configuration), the same bytes are no manifest.
        let mut payload = bytes::BytesMut::new();
        manifest.encode(&mut payload);
        let as_config = testing::sign(&root, SignDomain::Config, payload.to_vec());
        assert!(check_manifest(&root_key, "av-sigs", &as_config).is_err());
    }
}
