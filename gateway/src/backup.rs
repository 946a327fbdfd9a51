//! `tether backup FILE` and `tether restore FILE`: everything a gateway cannot lose, in one
//! gzipped tar.
//!
//! A backup holds the configuration (`tether.toml`), the instance id, the TLS material (the CIRA
//! CA and its key: devices trust it; the server certificate), the fleet keys and shared secrets,
//! and, on SQLite, an online-consistent copy of the database (`VACUUM INTO`: the gateway keeps
//! running). On PostgreSQL the database is backed up with `pg_dump` (docs/fleet.md); the backup
//! then holds the rest and says so in its manifest. Run files (`run/`) are not kept: they are
//! rewritten at every start.
//!
//! Restoring refuses to overwrite a data dir that already holds a gateway unless forced, and
//! never while a gateway runs on it.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::store::{Location, Store};

const MANIFEST: &str = "manifest.json";
const FORMAT: u32 = 1;
/// What a backup takes from the data dir (files, or whole directories).
const KEPT: &[&str] = &["tether.toml", "instance-id", "tls", "fleet", "secrets"];
/// The database file's name inside the backup.
const DATABASE: &str = "tether.db";

/// What a backup says about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub version: String,
    /// `sqlite` (the database is in the backup) or `postgres` (back it up with pg_dump).
    pub database: String,
    pub schema_version: i64,
    pub files: Vec<String>,
}

/// Writes a backup of `data_dir` (and of `store`, if SQLite) to `out`; returns its manifest.
pub async fn backup(data_dir: &Path, store: &Store, out: &Path) -> Result<Manifest> {
    let staging = tempfile::Builder::new().prefix(".backup-").tempdir_in(data_dir).context("making a staging dir")?;
    let (schema_version, _) = store.schema_version().await?;
    let database = match store.location() {
        Location::Sqlite(_) => {
            store.copy_sqlite_to(&staging.path().join(DATABASE)).await?;
            "sqlite"
        }
        Location::Postgres(_) => "postgres",
    };
    let mut files = Vec::new();
    for name in KEPT {
        if data_dir.join(name).exists() {
            files.push(name.to_string());
        }
    }
    if database == "sqlite" {
        files.push(DATABASE.to_string());
    }
    let manifest = Manifest {
        format: FORMAT,
        created_at: OffsetDateTime::now_utc(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        database: database.to_string(),
        schema_version,
        files: files.clone(),
    };
    let data_dir = data_dir.to_path_buf();
    let out = out.to_path_buf();
    let manifest_json = serde_json::to_vec_pretty(&manifest)?;
    tokio::task::spawn_blocking(move || -> Result<()> {
        // A new file of our own beside the target (never one that exists, nor a link), renamed
        // into place once complete.
        let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".tether-backup-")
            .tempfile_in(dir)
            .with_context(|| format!("creating a file in {}", dir.display()))?;
        let file = tmp.as_file().try_clone()?;
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::default()));
        tar.mode(tar::HeaderMode::Deterministic);
        let mut header = tar::Header::new_gnu();
        header.set_size(manifest_json.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, MANIFEST, manifest_json.as_slice())?;
        for name in &files {
            let source = if name == DATABASE { staging.path().join(DATABASE) } else { data_dir.join(name) };
            if source.is_dir() {
                tar.append_dir_all(name, &source).with_context(|| format!("adding {}", source.display()))?;
            } else {
                tar.append_path_with_name(&source, name).with_context(|| format!("adding {}", source.display()))?;
            }
        }
        tar.into_inner()?.finish()?.sync_all()?;
        tmp.persist(&out).with_context(|| format!("writing {}", out.display()))?;
        drop(staging);
        Ok(())
    })
    .await??;
    Ok(manifest)
}

/// Restores a backup into `data_dir`; returns its manifest.
pub fn restore(data_dir: &Path, backup: &Path, force: bool) -> Result<Manifest> {
    if crate::paths::local_gateway(data_dir).is_ok() && data_dir.join("run/listen.json").exists() {
        bail!("a gateway is running on {} (its run files are there): stop it before restoring", data_dir.display());
    }
    let holds_gateway = data_dir.join(DATABASE).exists() || data_dir.join("tls/ca.pem").exists();
    if holds_gateway && !force {
        bail!(
            "{} already holds a gateway (its CA or database); restore into an empty data dir, or pass --force to \
             replace them",
            data_dir.display()
        );
    }
    let open = || -> Result<tar::Archive<flate2::read::GzDecoder<std::fs::File>>> {
        let file = std::fs::File::open(backup).with_context(|| format!("opening {}", backup.display()))?;
        Ok(tar::Archive::new(flate2::read::GzDecoder::new(file)))
    };
    // First pass: the manifest, and every path checked before anything is written.
    let mut manifest = None;
    for entry in open()?.entries().with_context(|| format!("{} is not a Tether backup", backup.display()))? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path == Path::new(MANIFEST) {
            let mut text = String::new();
            entry.read_to_string(&mut text)?;
            manifest = Some(serde_json::from_str::<Manifest>(&text).context("the backup's manifest")?);
        } else if !allowed(&path) {
            bail!("{} holds {}, which a Tether backup may not", backup.display(), path.display());
        }
    }
    let manifest = manifest.with_context(|| format!("{} has no manifest: not a Tether backup", backup.display()))?;
    if manifest.format != FORMAT {
        bail!("{} is a backup of format {}; this tether reads format {FORMAT}", backup.display(), manifest.format);
    }
    crate::paths::ensure_data_dir(data_dir)?;
    // Unpacked apart first, then moved into place: a damaged archive changes nothing.
    let staging = tempfile::Builder::new().prefix(".restore-").tempdir_in(data_dir).context("making a staging dir")?;
    for entry in open()?.entries()? {
        let mut entry = entry?;
        let path: PathBuf = entry.path()?.into_owned();
        if path == Path::new(MANIFEST) {
            continue;
        }
        // Regular files and directories only: a link could point the keys anywhere.
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            bail!("{} holds {} of a kind a Tether backup never has ({kind:?})", backup.display(), path.display());
        }
        entry.set_preserve_permissions(false);
        entry.unpack_in(staging.path()).with_context(|| format!("restoring {}", path.display()))?;
        // Everything in a data dir is the gateway's alone.
        set_private(&staging.path().join(&path), kind.is_dir())?;
    }
    if force {
        // The SQLite copy replaces the database whole: no stale WAL may be replayed over it.
        for stale in ["tether.db-wal", "tether.db-shm"] {
            let _ = std::fs::remove_file(data_dir.join(stale));
        }
    }
    for top in std::fs::read_dir(staging.path())? {
        let top = top?;
        let target = data_dir.join(top.file_name());
        if target.is_dir() {
            std::fs::remove_dir_all(&target).with_context(|| format!("replacing {}", target.display()))?;
        }
        std::fs::rename(top.path(), &target).with_context(|| format!("restoring {}", target.display()))?;
    }
    Ok(manifest)
}

#[cfg(unix)]
fn set_private(path: &Path, dir: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if dir { 0o700 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(|| format!("{}", path.display()))
}

#[cfg(not(unix))]
fn set_private(_: &Path, _: bool) -> Result<()> {
    Ok(())
}

/// Relative, without `..`, and under one of the kept names.
fn allowed(path: &Path) -> bool {
    let normal = path.components().all(|c| matches!(c, Component::Normal(_)));
    let top = path.components().next().and_then(|c| c.as_os_str().to_str()).unwrap_or("");
    normal && (KEPT.contains(&top) || top == DATABASE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Migrate, PoolOptions};

    #[tokio::test]
    async fn a_backup_restores_keys_config_and_database_into_a_new_data_dir() {
        let from = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(from.path().join("tls")).unwrap();
        std::fs::write(from.path().join("tls/ca-key.pem"), "key").unwrap();
        std::fs::write(from.path().join("tether.toml"), "cira_listen = \"127.0.0.1:1\"\n").unwrap();
        std::fs::create_dir_all(from.path().join("run")).unwrap();
        std::fs::write(from.path().join("run/local-token"), "t").unwrap();
        let location = Location::Sqlite(from.path().join("tether.db"));
        let store = Store::open(&location, Migrate::Yes, PoolOptions::default()).await.unwrap();
        let uuid = uuid::Uuid::new_v4();
        store.add_device(uuid, Some("h")).await.unwrap();
        let out = from.path().join("backup.tar.gz");
        let manifest = backup(from.path(), &store, &out).await.unwrap();
        assert_eq!(manifest.database, "sqlite");
        assert!(manifest.files.contains(&"tls".to_string()) && manifest.files.contains(&"tether.db".to_string()));

        let to = tempfile::tempdir().unwrap();
        restore(to.path(), &out, false).unwrap();
        assert_eq!(std::fs::read_to_string(to.path().join("tls/ca-key.pem")).unwrap(), "key");
        assert!(!to.path().join("run").exists(), "run files are not part of a backup");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &str| std::fs::metadata(to.path().join(p)).unwrap().permissions().mode() & 0o777;
            assert_eq!((mode("tls/ca-key.pem"), mode("tls"), mode("tether.toml")), (0o600, 0o700, 0o600));
        }
        let restored = Store::open(&Location::Sqlite(to.path().join("tether.db")), Migrate::No, PoolOptions::default())
            .await
            .unwrap();
        assert!(restored.device(uuid).await.unwrap().unwrap().has_password);
        // Not over a gateway, unless forced.
        let err = restore(to.path(), &out, false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        restored.close().await;
        restore(to.path(), &out, true).unwrap();
        // Nothing outside the kept names.
        assert!(
            !allowed(Path::new("../etc/passwd")) && !allowed(Path::new("run/x")) && allowed(Path::new("tls/ca.pem"))
        );
    }
}
