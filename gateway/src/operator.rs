//! The operator's and technician's commands of the `tether` binary, apart from its argument
//! parsing (`main.rs`): where the store is, device import, fleet management, the device table.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use uuid::Uuid;

use crate::client::ApiClient;
use crate::config::Config;
use crate::store::{Location, Migrate, PoolOptions, Store, StoreError};
use crate::{auth, certs, fleet, paths};

/// `tether fleet …`.
#[derive(clap::Subcommand, Debug)]
pub enum FleetAction {
    /// Make this gateway the first of a fleet: create the fleet CA and write the join bundle for
    /// the others to FILE (it holds private keys: move it securely, then delete it).
    Init { bundle: PathBuf },
    /// Write the join bundle of this gateway's fleet to FILE again.
    Bundle { bundle: PathBuf },
    /// Make this data dir a gateway of the fleet the bundle comes from (its CIRA CA, fleet CA
    /// and shared keys). Use a fresh data dir, or --force to replace a CA already there.
    Join {
        bundle: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// The gateways sharing this store: addresses, heartbeat, tunnels held, alive or not.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Forget a gateway that is gone for good (its tunnels are marked disconnected first).
    Remove { instance: String },
}

/// `tether device import FILE`: parses every line first (so a bad line changes nothing), hashes
/// the passwords on all cores with a progress bar, then registers all devices in one transaction.
pub async fn import_devices(store_args: &StoreArgs, data_dir: &Path, file: &Path) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut devices: Vec<(Uuid, Option<String>)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (n == 0 && line.eq_ignore_ascii_case("uuid,password")) {
            continue;
        }
        let (uuid, password) = line.split_once(',').unwrap_or((line, ""));
        let uuid = Uuid::parse_str(uuid.trim())
            .with_context(|| format!("{}:{}: {uuid:?} is not a UUID", file.display(), n + 1))?;
        let password = password.trim();
        devices.push((uuid, (!password.is_empty()).then(|| password.to_string())));
    }
    if devices.is_empty() {
        bail!("{} holds no devices (expected lines of uuid,password)", file.display());
    }
    let store = open_store(store_args, data_dir).await?;
    let bar = indicatif::ProgressBar::new(devices.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("hashing passwords {bar:40} {pos}/{len} ({eta} left)")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = devices.len().div_ceil(threads);
    let hashed: Vec<(Uuid, Option<String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = devices
            .chunks(chunk)
            .map(|part| {
                let bar = bar.clone();
                scope.spawn(move || -> Result<Vec<(Uuid, Option<String>)>> {
                    part.iter()
                        .map(|(uuid, password)| {
                            let hash = password.as_ref().map(|p| auth::hash_password(p.as_bytes())).transpose()?;
                            bar.inc(1);
                            Ok((*uuid, hash))
                        })
                        .collect()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| anyhow::anyhow!("a hashing thread panicked"))?)
            .collect::<Result<Vec<_>>>()
            .map(|parts| parts.into_iter().flatten().collect())
    })?;
    bar.finish_and_clear();
    store.add_devices(&hashed, |_| {}).await?;
    let with_password = hashed.iter().filter(|(_, h)| h.is_some()).count();
    println!("imported {} devices ({with_password} with their own MPS password)", hashed.len());
    Ok(())
}

/// A time as operators read it: RFC 3339, whole seconds.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

pub async fn fleet_command(action: FleetAction, store_args: &StoreArgs, data_dir: &Path) -> Result<()> {
    match action {
        FleetAction::Init { bundle } => {
            paths::ensure_data_dir(data_dir)?;
            if !paths::ca_cert(data_dir).exists() {
                // The CIRA CA the whole fleet will share: made now, as the gateway's first start would.
                let config = load_config(store_args, data_dir)?;
                certs::load_or_create(&paths::tls_dir(data_dir), &config.tls.cert_options())?;
            }
            fleet::keys::create_ca(data_dir)?;
            let files = fleet::keys::write_bundle(data_dir, &bundle)?;
            println!("fleet CA created in {}", data_dir.join("fleet").display());
            println!("join bundle ({files} files, holds private keys) written to {}", bundle.display());
            println!("next: set fleet.internal_listen and database_url in tether.toml here, restart, and run");
            println!("`tether fleet join {}` on each new gateway", bundle.display());
            Ok(())
        }
        FleetAction::Bundle { bundle } => {
            let files = fleet::keys::write_bundle(data_dir, &bundle)?;
            println!("join bundle ({files} files, holds private keys) written to {}", bundle.display());
            Ok(())
        }
        FleetAction::Join { bundle, force } => {
            let files = fleet::keys::join(data_dir, &bundle, force)?;
            println!("joined: {files} files installed in {}", data_dir.display());
            println!("next: set database_url (the fleet's PostgreSQL) and fleet.internal_listen in tether.toml, then");
            println!("start the gateway; it issues its own fleet certificate at start");
            Ok(())
        }
        FleetAction::Status { json } => {
            let config = load_config(store_args, data_dir)?;
            let store = open_store(store_args, data_dir).await?;
            let instances = store.instances().await?;
            let stale_after = std::time::Duration::from_secs(config.fleet.stale_after_secs);
            if json {
                let list: Vec<serde_json::Value> = instances
                    .iter()
                    .map(|i| {
                        let mut v = serde_json::to_value(i).unwrap_or_default();
                        v["alive"] = serde_json::Value::Bool(i.is_alive(stale_after));
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            println!("{:16}  {:7}  {:>7}  {:>9}  {:22}  LINK", "INSTANCE", "STATE", "TUNNELS", "HEARTBEAT", "API");
            for i in instances {
                let state = match (i.stopped_at, i.is_alive(stale_after)) {
                    (Some(_), _) => "stopped",
                    (None, true) => "alive",
                    (None, false) => "dead",
                };
                let age = i.heartbeat_age_ms / 1000;
                println!(
                    "{:16}  {:7}  {:>7}  {:>8}s  {:22}  {}",
                    i.id,
                    state,
                    i.tunnels,
                    age,
                    i.api_addr.as_deref().unwrap_or("-"),
                    i.internal_addr.as_deref().unwrap_or("-")
                );
            }
            Ok(())
        }
        FleetAction::Remove { instance } => {
            let config = load_config(store_args, data_dir)?;
            let store = open_store(store_args, data_dir).await?;
            let stale_after = std::time::Duration::from_secs(config.fleet.stale_after_secs);
            if store.instance(&instance).await?.is_some_and(|i| i.is_alive(stale_after)) {
                bail!("gateway {instance} is running (its heartbeat is fresh): stop it first, then remove it");
            }
            let now = time::OffsetDateTime::now_utc();
            let closed = store
                .mark_instance_disconnected(&instance, now, "its gateway was removed from the fleet", false)
                .await?;
            let sessions = store.end_instance_redirections(&instance, now).await?;
            if !store.remove_instance(&instance).await? {
                bail!("there is no gateway {instance:?} (see `tether fleet status`)");
            }
            if sessions > 0 {
                println!("{sessions} redirection sessions it left open marked interrupted");
            }
            println!("gateway {instance} removed ({closed} of its devices marked disconnected)");
            Ok(())
        }
    }
}

/// Where the store is: `--config` and `--database` (the rest comes from the data dir).
#[derive(Debug)]
pub struct StoreArgs {
    pub config: Option<PathBuf>,
    pub database: Option<String>,
}

/// The store the gateway with this data dir and configuration uses, migrated if needed.
pub async fn open_store(store_args: &StoreArgs, data_dir: &Path) -> Result<Store> {
    open_store_with(store_args, data_dir, Migrate::Yes).await?.context("opening the store")
}

/// `Ok(None)`: the schema is older than this tether's and `migrate` is `No`.
pub async fn open_store_with(store_args: &StoreArgs, data_dir: &Path, migrate: Migrate) -> Result<Option<Store>> {
    paths::ensure_data_dir(data_dir)?;
    let config = load_config(store_args, data_dir)?;
    let location = Location::resolve(store_args.database.as_deref().or(config.database_url.as_deref()), data_dir)?;
    let pool = PoolOptions { max_connections: 2, ..PoolOptions::default() };
    match Store::open(&location, migrate, pool).await {
        Ok(store) => Ok(Some(store)),
        Err(StoreError::Outdated { .. }) if migrate == Migrate::No => Ok(None),
        Err(err) => Err(err).with_context(|| format!("opening the store {}", location.describe())),
    }
}

pub fn load_config(store_args: &StoreArgs, data_dir: &Path) -> Result<Config> {
    let path = store_args.config.clone().unwrap_or_else(|| data_dir.join("tether.toml"));
    Config::load(&path).with_context(|| format!("reading the configuration {}", path.display()))
}

/// Technician commands: explicit --api/--token/--ca, or the gateway running on this machine.
pub fn api_client(
    api: &Option<String>,
    token: &Option<String>,
    ca: &Option<PathBuf>,
    server_name: &Option<String>,
    data_dir: &Path,
) -> Result<ApiClient> {
    match api {
        Some(api) => {
            let token = token.as_deref().context("--api needs --token (or TETHER_TOKEN)")?;
            let ca = ca.clone().unwrap_or_else(|| paths::ca_cert(data_dir));
            ApiClient::new(api, token, &ca, server_name.as_deref())
        }
        None => {
            let local = paths::local_gateway(data_dir)?;
            let token = token.clone().unwrap_or(local.token);
            let ca = ca.clone().unwrap_or(local.ca);
            ApiClient::new(&format!("https://{}", local.api), &token, &ca, server_name.as_deref())
        }
    }
}

pub fn plain(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn print_table(devices: &serde_json::Value) {
    let empty = Vec::new();
    let devices = devices.as_array().unwrap_or(&empty);
    if devices.is_empty() {
        println!("no devices yet: point an AMT device at this gateway (see README)");
        return;
    }
    println!("{:36}  {:8}  {:9}  {:25}  {:22}  PORTS", "UUID", "KIND", "CONNECTED", "LAST HELLO", "REMOTE");
    for d in devices {
        let ports = d
            .get("ports")
            .and_then(|p| p.as_array())
            .map(|p| p.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        let kinds = d
            .get("kinds")
            .and_then(|k| k.as_array())
            .map(|k| k.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","))
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:36}  {:8}  {:9}  {:25}  {:22}  {}",
            plain(&d["uuid"]),
            kinds,
            if d["connected"].as_bool() == Some(true) { "yes" } else { "no" },
            plain(&d["last_hello"]),
            plain(&d["remote_addr"]),
            ports
        );
    }
}

/// `tether redirections UUID [--active] [--json]`: the device's AMT redirection sessions, newest
/// first (the API's `GET /api/v1/devices/UUID/redirections`).
pub async fn redirections_command(client: &ApiClient, uuid: Uuid, active: bool, json: bool) -> Result<()> {
    let path = format!("/api/v1/devices/{uuid}/redirections?active={active}&limit=1000");
    let sessions = client.get_json(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&sessions)?);
    } else {
        print_redirections(&sessions, active);
    }
    Ok(())
}

/// An RFC 3339 UTC time from the API without its fraction of a second.
pub fn whole_seconds(time: &str) -> String {
    match time.split_once('.') {
        Some((seconds, _)) if time.ends_with('Z') => format!("{seconds}Z"),
        _ => time.to_string(),
    }
}

/// The table of redirection sessions: who holds (or held) the device's SOL or IDE-R session.
pub fn print_redirections(sessions: &serde_json::Value, active: bool) {
    let empty = Vec::new();
    let sessions = sessions.as_array().unwrap_or(&empty);
    if sessions.is_empty() {
        println!("{}", if active { "no redirection session open now" } else { "no redirection sessions recorded" });
        return;
    }
    println!(
        "{:>6}  {:7}  {:20}  {:12}  {:5}  {:20}  {:>9}  {:14}  {:>12}  {:>12}",
        "ID", "KIND", "TECHNICIAN", "AMT USER", "PORT", "STARTED", "DURATION", "OUTCOME", "TO DEVICE", "FROM DEVICE"
    );
    for s in sessions {
        let secs = s["duration_ms"].as_i64().unwrap_or_default() / 1000;
        let duration = format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
        println!(
            "{:>6}  {:7}  {:20}  {:12}  {:5}  {:20}  {:>9}  {:14}  {:>12}  {:>12}",
            plain(&s["id"]),
            plain(&s["kind"]),
            plain(&s["technician"]),
            plain(&s["device_user"]),
            plain(&s["port"]),
            whole_seconds(&plain(&s["started_at"])),
            duration,
            plain(&s["outcome"]),
            plain(&s["bytes_to_device"]),
            plain(&s["bytes_from_device"])
        );
    }
}
