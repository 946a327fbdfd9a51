//! `tether content …` (`docs/silos.md`, "Signed content"): publish an item on a root (signed with
//! its key, in its data dir), list what a gateway holds and fetch an item through its API,
//! checked against the root's key before it is kept.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use http_body_util::BodyExt;
use protocols::tap::{ContentKind, Signed};
use sha2::{Digest, Sha256};

use crate::client::{ApiClient, StreamError};
use crate::content::{SignedManifest, MANIFEST_HEADER, SIGNATURE_HEADER};
use crate::exit;

/// What an item is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Signatures,
    Script,
    RescueImage,
}

impl From<Kind> for ContentKind {
    fn from(kind: Kind) -> ContentKind {
        match kind {
            Kind::Signatures => ContentKind::Signatures,
            Kind::Script => ContentKind::Script,
            Kind::RescueImage => ContentKind::RescueImage,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum ContentAction {
    /// (root, or role all) Publish FILE as NAME, signed with this gateway's key (the root key
    /// agents pinned at enrollment); a new version of a name replaces the old. Maintenance silos
    /// fetch it from here on the first request for it.
    Publish {
        /// 1 to 64 lower-case letters, digits, '.', '_' and '-'.
        name: String,
        file: PathBuf,
        #[arg(long, value_enum)]
        kind: Kind,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The items the gateway at --api holds (published there, or cached from its root).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Download NAME through the gateway at --api and keep it (as OUT) only once the root's
    /// signature, its size and its SHA-256 check out. An interrupted download goes on from
    /// OUT.part when run again.
    Get {
        name: String,
        /// Where to keep it (default: NAME in the current directory).
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// The root's signing key (64 hex digits; `tether silo key` is a silo's, the root's is in
        /// the bundles it writes as root_signing_key).
        #[arg(long, env = "TETHER_ROOT_KEY")]
        root_key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `tether content publish`, on the data dir of a root (or a gateway of role `all`).
pub fn publish(data_dir: &Path, name: &str, file: &Path, kind: Kind, json: bool) -> Result<()> {
    if !protocols::tap::is_content_name(name) {
        return Err(exit::bad_input(crate::content::ContentError::BadName(name.to_string()).to_string()));
    }
    let keys =
        crate::agents::keys::AgentKeys::load_or_create(data_dir).context("loading this gateway's signing key")?;
    let manifest = crate::content::publish(data_dir, &keys, name, kind.into(), file)?;
    let root_key = hex::encode(keys.signing_public());
    if json {
        let value = with(manifest_json(&manifest), [("root_key", root_key.into())]);
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("published {}, signed by key {root_key}", described(&manifest));
    }
    Ok(())
}

/// `tether content list`.
pub async fn list(client: &ApiClient, json: bool) -> Result<()> {
    let items = client.get_json("/api/v1/content").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    let items = items.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no content items here");
        return Ok(());
    }
    println!("{:<32} {:<13} {:>14}  {:<25} SHA-256", "NAME", "KIND", "BYTES", "PUBLISHED");
    for item in items {
        let text = |k: &str| item.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        println!(
            "{:<32} {:<13} {:>14}  {:<25} {}",
            text("name"),
            text("kind"),
            item.get("size").and_then(|v| v.as_u64()).unwrap_or(0),
            text("published_at"),
            text("sha256")
        );
    }
    Ok(())
}

/// `tether content get`.
pub async fn get(client: &ApiClient, name: &str, out: Option<PathBuf>, root_key: &str, json: bool) -> Result<()> {
    let root_key: [u8; 32] = hex::decode(root_key.trim())
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| exit::bad_input("--root-key must be 64 hex digits"))?;
    if !protocols::tap::is_content_name(name) {
        return Err(exit::bad_input(crate::content::ContentError::BadName(name.to_string()).to_string()));
    }
    let out = out.unwrap_or_else(|| PathBuf::from(name));
    let part = with_suffix(&out, ".part");
    let part_manifest = with_suffix(&out, ".part.manifest");
    let held_version = std::fs::read_to_string(&part_manifest).ok();
    let mut from = if held_version.is_some() { std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) } else { 0 };
    let path = format!("/api/v1/content/{name}");
    let (response, manifest, version) = loop {
        let response = match client.stream_get(&path, from).await {
            Ok(response) => response,
            // The part is as long as the item or longer: start again.
            Err(StreamError::Status(status, _)) if status == hyper::StatusCode::RANGE_NOT_SATISFIABLE && from > 0 => {
                from = 0;
                continue;
            }
            Err(StreamError::Status(status, message)) => {
                return Err(crate::client::api_error(status, &serde_json::json!({ "error": message })).into())
            }
            Err(StreamError::Other(err)) => return Err(err),
        };
        let header = |h: &str| response.headers().get(h).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let kept = SignedManifest { payload: header(MANIFEST_HEADER), signature: header(SIGNATURE_HEADER) };
        let signed: Signed = kept.signed().ok_or_else(|| exit::refused("the gateway sent no signed manifest"))?;
        let manifest = crate::content::verify_manifest(&root_key, &signed)
            .map_err(|reason| exit::refused(format!("{name}: {reason}; refused")))?;
        if manifest.name != name {
            return Err(exit::refused(format!("asked for {name}, the gateway sent the manifest of {}", manifest.name)));
        }
        if from > 0 && held_version.as_deref() != Some(kept.payload.as_str()) {
            // The part is of another version.
            from = 0;
            continue;
        }
        break (response, manifest, kept.payload);
    };
    let resumed = from > 0 && response.status() == hyper::StatusCode::PARTIAL_CONTENT;
    if !resumed {
        from = 0;
    }
    std::fs::write(&part_manifest, &version)?;
    let mut hasher = Sha256::new();
    if from > 0 {
        hasher = crate::content::hash_prefix(&part, from, hasher)?;
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&part)?;
    file.set_len(from)?;
    let bar = if json || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(manifest.size)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {bytes} of {total_bytes} ({binary_bytes_per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(from);
    let mut got = from;
    let mut body = response.into_body();
    while let Some(frame) = tokio::time::timeout(std::time::Duration::from_secs(120), body.frame())
        .await
        .map_err(|_| exit::unreachable("the gateway sent nothing for 120 s; run again to go on"))?
    {
        let frame = frame.context("the download broke off; run again to go on")?;
        let Ok(data) = frame.into_data() else { continue };
        got += data.len() as u64;
        if got > manifest.size {
            break;
        }
        hasher.update(&data);
        file.write_all(&data)?;
        bar.set_position(got);
    }
    file.sync_all()?;
    bar.finish_and_clear();
    if got < manifest.size {
        anyhow::bail!("got {got} of the {} bytes of {name}; run again to go on", manifest.size);
    }
    let sha256: [u8; 32] = hasher.finalize().into();
    if got != manifest.size || sha256 != manifest.sha256 {
        let _ = std::fs::remove_file(&part);
        let _ = std::fs::remove_file(&part_manifest);
        return Err(exit::refused(format!(
            "the bytes of {name} hash to {}, not to the {} the root signed: the copy was altered, and is not kept",
            hex::encode(sha256),
            hex::encode(manifest.sha256)
        )));
    }
    std::fs::rename(&part, &out).with_context(|| format!("moving the download to {}", out.display()))?;
    let _ = std::fs::remove_file(&part_manifest);
    if json {
        let value = with(
            manifest_json(&manifest),
            [("path", serde_json::json!(out)), ("resumed_from", from.into()), ("verified", true.into())],
        );
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{}: signed by the root, verified; saved to {}", described(&manifest), out.display());
    }
    Ok(())
}

/// A manifest as the commands print it in JSON.
fn manifest_json(manifest: &protocols::tap::ContentManifest) -> serde_json::Value {
    serde_json::json!({
        "name": manifest.name,
        "kind": manifest.kind.name(),
        "size": manifest.size,
        "sha256": hex::encode(manifest.sha256),
        "published_at": manifest.published_at,
    })
}

/// `value` (an object) with `fields` added.
fn with<const N: usize>(mut value: serde_json::Value, fields: [(&str, serde_json::Value); N]) -> serde_json::Value {
    if let serde_json::Value::Object(map) = &mut value {
        for (key, field) in fields {
            map.insert(key.to_string(), field);
        }
    }
    value
}

/// NAME (KIND, N bytes, SHA-256 HEX).
fn described(manifest: &protocols::tap::ContentManifest) -> String {
    format!(
        "{} ({}, {} bytes, SHA-256 {})",
        manifest.name,
        manifest.kind.name(),
        manifest.size,
        hex::encode(manifest.sha256)
    )
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
