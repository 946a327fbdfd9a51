//! `tether gateway`: opens the data dir, prepares TLS material and credentials, binds the CIRA,
//! API and metrics listeners, and runs them until SIGINT/SIGTERM.
//!
//! The actual addresses bound are written to `DATA_DIR/run/listen.json`, and a local operator
//! token to `DATA_DIR/run/local-token` (mode 0600), so that the CLI on the same machine finds the
//! API with nothing but `--data-dir`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::auth::{self, PasswordChecker};
use crate::certs;
use crate::config::Config;
use crate::journal::Journal;
use crate::limits::{Limiter, LogOnce};
use crate::metrics::{Metrics, StoreTask};
use crate::redir_log::RedirLog;
use crate::registry::Registry;
use crate::state::Shared;
use crate::store::{InstanceRegistration, Location, Migrate, PoolOptions, Store};
use crate::{agents, api, cira, fleet, lan, paths};

/// Waiting password checks admitted beside the running ones (beyond: refused as busy, and the
/// device retries). At ~50 ms per argon2 run and one thread per core, this is a few seconds of
/// work: well inside the auth timeout.
const PASSWORD_QUEUE: usize = 256;

/// What the command line and environment give over the config file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub cira: Option<SocketAddr>,
    pub api: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub agents: Option<SocketAddr>,
    pub tls_names: Vec<String>,
    pub database: Option<String>,
    /// `--record-sol`: keep SOL transcripts (on top of `record_sol` in the file).
    pub record_sol: bool,
    /// `--role`: the silo role (over `silo.role` in the file).
    pub role: Option<crate::silo::Role>,
}

/// Runs the gateway until a signal arrives.
pub async fn run(data_dir: &Path, config_path: Option<PathBuf>, overrides: Overrides) -> Result<()> {
    paths::ensure_data_dir(data_dir)?;
    let open_files = crate::files::raise_limit();
    let config_path = config_path.unwrap_or_else(|| data_dir.join("tether.toml"));
    let mut config =
        Config::load(&config_path).with_context(|| format!("reading the configuration {}", config_path.display()))?;
    if let Some(addr) = overrides.cira {
        config.cira_listen = addr;
    }
    if let Some(addr) = overrides.api {
        config.api_listen = addr;
    }
    if let Some(addr) = overrides.metrics {
        config.metrics_listen = addr;
    }
    if let Some(addr) = overrides.agents {
        config.agents.listen = addr;
    }
    config.tls.names.extend(overrides.tls_names);
    if overrides.database.is_some() {
        config.database_url = overrides.database;
    }
    config.record_sol |= overrides.record_sol;
    if let Some(role) = overrides.role {
        config.silo.role = role;
    }
    config.validate(Path::new("the command line and environment"))?;

    let location = Location::resolve(config.database_url.as_deref(), data_dir)?;
    let pool = PoolOptions { max_connections: config.database_pool_size, ..PoolOptions::default() };
    let store = Store::open(&location, Migrate::Yes, pool)
        .await
        .with_context(|| format!("opening the store {}", location.describe()))?;
    let instance = fleet::instance_id(data_dir, config.fleet.instance_id.as_deref())?;
    info!(store = %location.describe(), %instance, "store open");
    // Only this gateway's own tunnels from its previous run: others may be live on other
    // gateways of the fleet. (On SQLite, records from before fleets name no instance.)
    let closed = store
        .mark_instance_disconnected(
            &instance,
            time::OffsetDateTime::now_utc(),
            "gateway restarted",
            !store.is_postgres(),
        )
        .await
        .context("resetting device state")?;
    if closed > 0 {
        info!(devices = closed, "marked devices from the previous run as disconnected");
    }
    let ended = store
        .end_instance_redirections(&instance, time::OffsetDateTime::now_utc())
        .await
        .context("ending the redirection sessions of the previous run")?;
    if ended > 0 {
        info!(sessions = ended, "marked redirection sessions from the previous run as interrupted");
    }
    ensure_mps_credentials(&store).await?;
    let config_dir = config_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mail_transport = crate::mail::sender::Transport::from_config(&config.mail, &config_dir)
        .context("preparing mail (the [mail] section)")?;
    let webhook_poster = crate::meter::webhook::Poster::from_config(&config.webhooks, &config_dir)
        .context("preparing webhooks (the [webhooks] section)")?;

    let cert_options = config.tls.cert_options();
    let material = tokio::task::spawn_blocking({
        let dir = paths::tls_dir(data_dir);
        move || certs::load_or_create(&dir, &cert_options)
    })
    .await?
    .context("preparing TLS certificates")?;
    if material.generated {
        info!("created a new certificate authority for this gateway");
    } else if material.renewed {
        info!("reissued the server certificate from the gateway's CA (names changed or expiry near)");
    }
    println!("CIRA CA certificate (provision into AMT as a trusted root): {}", material.ca_cert_path.display());
    println!("CA SHA-256 fingerprint: {}", material.ca_fingerprint_sha256);
    // Session tickets that survive a restart: the devices that reconnect after it resume
    // instead of costing a signature each.
    let tickets = Arc::new(crate::tickets::Tickets::load_or_create(data_dir).context("loading the TLS ticket keys")?);
    let cira_tls = certs::server_config(&material, &[], Some(tickets.clone()))?;
    // The API and portal serve a certificate of their own when one is configured (a publicly
    // trusted one, for subscribers' browsers); else the CIRA certificate AMT trusts.
    let api_tls = match (&config.api.cert_file, &config.api.key_file) {
        (Some(cert), Some(key)) => {
            let (cert, key) = (cert.clone(), key.clone());
            let own = tokio::task::spawn_blocking(move || certs::load_pem_files(&cert, &key))
                .await?
                .context("loading the API's certificate (api.cert_file, api.key_file)")?;
            let fingerprint = own.chain.first().map(|leaf| certs::fingerprint(leaf)).unwrap_or_default();
            info!(%fingerprint, "the API serves its own certificate (api.cert_file)");
            certs::server_config(&own, &[b"http/1.1"], Some(tickets.clone()))?
        }
        _ => certs::server_config(&material, &[b"http/1.1"], Some(tickets.clone()))?,
    };

    // The fleet link: only for a gateway in a fleet (`tether fleet init` or `join`) with an
    // internal address to listen on.
    let link_tls = fleet::keys::link_tls(data_dir, &instance).context("preparing the fleet link certificate")?;
    let link = match (&link_tls, config.fleet.internal_listen) {
        (Some(tls), Some(addr)) => Some((tls.clone(), bind(addr, "fleet link").await?)),
        (Some(_), None) => {
            warn!(
                "this gateway is in a fleet but fleet.internal_listen is unset: technicians reach only the devices \
                   connected here, and claims for devices held elsewhere cannot be checked"
            );
            None
        }
        (None, Some(_)) => anyhow::bail!(
            "fleet.internal_listen is set but this data dir is in no fleet: run `tether fleet init` (first gateway) \
             or `tether fleet join BUNDLE`"
        ),
        (None, None) => None,
    };
    let cira_listener = bind(config.cira_listen, "CIRA").await?;
    let api_listener = bind(config.api_listen, "API").await?;
    let metrics_listener = bind(config.metrics_listen, "metrics").await?;
    let agent_keys = tokio::task::spawn_blocking({
        let dir = data_dir.to_path_buf();
        move || agents::keys::AgentKeys::load_or_create(&dir)
    })
    .await?
    .context("preparing the agent CA and the signing key")?;
    // A maintenance silo admits the clients of its root's agent CA, and issues no certificate.
    let (silo, agent_keys) = match config.silo.role {
        crate::silo::Role::All => (crate::silo::Silo::All, agent_keys),
        crate::silo::Role::Root => (crate::silo::Silo::Root, agent_keys),
        crate::silo::Role::Maintenance => {
            let maintenance = crate::silo::Maintenance::load(data_dir, config.silo.tiers.clone())?;
            let root_ca = maintenance.bundle.agent_ca()?;
            maintenance.bundle.certifies(&agent_keys.signing_public()).context("checking the silo bundle")?;
            info!(silo = %maintenance.name(), root = %maintenance.bundle.root_api, "maintenance silo");
            (crate::silo::Silo::Maintenance(Arc::new(maintenance)), agent_keys.trusting_root(root_ca))
        }
    };
    let agent_keys = Arc::new(agent_keys);
    let content = Arc::new(match &silo {
        crate::silo::Silo::Maintenance(maintenance) => crate::content::Content::cache(
            data_dir,
            Arc::clone(maintenance),
            Arc::clone(&agent_keys),
            config.content.cache_max_bytes,
            Duration::from_secs(config.content.revalidate_secs.into()),
        )?,
        crate::silo::Silo::All | crate::silo::Silo::Root => crate::content::Content::origin(data_dir, &agent_keys),
    });
    let agents = Arc::new(agents::Agents::new(&material, Arc::clone(&agent_keys), &config.agents)?);
    let agent_endpoint = agents::bind(config.agents.listen, agents::server_config(&agents, &config.agents)?)?;
    let addrs = paths::ListenAddrs {
        cira: cira_listener.local_addr()?,
        api: api_listener.local_addr()?,
        metrics: metrics_listener.local_addr()?,
        agents: Some(agent_endpoint.local_addr()?),
    };

    let registration = InstanceRegistration {
        id: instance.clone(),
        api_addr: Some(config.fleet.advertise_api.clone().unwrap_or_else(|| addrs.api.to_string())),
        internal_addr: match &link {
            Some((_, listener)) => Some(match &config.fleet.advertise_internal {
                Some(addr) => addr.clone(),
                None => listener.local_addr()?.to_string(),
            }),
            None => None,
        },
        version: env!("CARGO_PKG_VERSION").to_string(),
        run_id: format!("{:016x}", rand::random::<u64>()),
    };
    store
        .register_instance(&registration, Duration::from_secs(config.fleet.stale_after_secs))
        .await
        .context("registering this gateway in the store")?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let registry = Arc::new(Registry::new());
    let metrics = Metrics::new();
    let (journal, journal_task) = Journal::start(
        store.clone(),
        registry.clone(),
        config.apf.max_tunnels,
        instance.clone(),
        metrics.store_errors_of(StoreTask::Journal),
    );
    let transcripts = config.record_sol.then(|| data_dir.join("transcripts"));
    if let Some(dir) = &transcripts {
        info!(dir = %dir.display(), "recording SOL transcripts");
    }
    let (redirections, redirections_task) = RedirLog::start(store.clone(), transcripts);
    let files = crate::files::FileBudget::new(open_files, config.limits.reserved_files);
    files.log();
    let shared = Arc::new(Shared {
        limiter: Limiter::new(&config.limits),
        files,
        passwords: PasswordChecker::start(0, PASSWORD_QUEUE, 10_000).context("starting the password checker")?,
        sealer: crate::sealing::Sealer::load_or_create(data_dir).context("loading the key that seals AMT passwords")?,
        agent_keys,
        silo,
        content,
        content_transfers: Arc::new(tokio::sync::Semaphore::new(config.content.max_transfers.max(1) as usize)),
        config,
        store: store.clone(),
        instance,
        peers: link.as_ref().map(|(tls, _)| fleet::peers::Peers::new(Arc::clone(&tls.client), store.clone())),
        journal,
        redirections,
        metrics,
        registry,
        lan: crate::lan::Lan::default(),
        conflicts: LogOnce::new(),
        shutdown: shutdown_rx,
    });

    let local_token = auth::new_token();
    // One local token per instance: gateways sharing a store must not replace each other's. The
    // single one of versions before fleets goes.
    store.revoke_token(paths::LOCAL_TOKEN_PREFIX).await.context("removing the old local operator token")?;
    store
        .create_or_replace_token(&paths::local_token_name(&shared.instance), &auth::hash_token(&local_token))
        .await
        .context("creating the local operator token")?;
    paths::write_run_files(data_dir, &addrs, &local_token)?;

    info!(cira = %addrs.cira, api = %addrs.api, metrics = %addrs.metrics, "gateway listening");
    println!(
        "CIRA (AMT) on {}, agents (QUIC) on udp/{}, API on https://{}, metrics on http://{}/metrics",
        addrs.cira,
        addrs.agents.map(|a| a.to_string()).unwrap_or_default(),
        addrs.api,
        addrs.metrics
    );

    // Before the first device is admitted: what each busy source held before.
    crate::busy_sources::remember(&shared).await;
    let mut tasks = tokio::task::JoinSet::new();
    let cira_tls = cira::Acceptors { cira: cira_tls, agents: Arc::clone(&agents) };
    tasks.spawn(cira::serve(cira_listener, cira_tls, Arc::clone(&shared)));
    tasks.spawn(api::serve(api_listener, tokio_rustls::TlsAcceptor::from(api_tls), Arc::clone(&shared)));
    tasks.spawn(api::serve_metrics(metrics_listener, Arc::clone(&shared)));
    agents::log_listening(agent_endpoint.local_addr()?, &shared.config.agents.advertise);
    tasks.spawn(agents::serve(agent_endpoint.clone(), Arc::clone(&shared), agents));
    tasks.spawn(housekeeping(Arc::clone(&shared), tickets));
    tasks.spawn(crate::mail::sender::run(Arc::clone(&shared), mail_transport));
    tasks.spawn(crate::meter::webhook::run(Arc::clone(&shared), webhook_poster));
    if let Some((tls, listener)) = link {
        info!(addr = %listener.local_addr()?, "fleet link listening");
        tasks.spawn(fleet::link::serve(listener, tokio_rustls::TlsAcceptor::from(tls.server), Arc::clone(&shared)));
    }
    if let crate::silo::Silo::Maintenance(maintenance) = &shared.silo {
        let every = Duration::from_secs(shared.config.silo.revocations_pull_secs.into());
        tasks.spawn(crate::silo::pull_revocations(Arc::clone(&shared), Arc::clone(maintenance), every));
        let every = Duration::from_secs(shared.config.silo.aggregates_push_secs.into());
        tasks.spawn(crate::silo::push_aggregates(Arc::clone(&shared), Arc::clone(maintenance), every));
    }
    let heartbeat = tokio::spawn(fleet::heartbeat(Arc::clone(&shared), registration));
    lan::tunnel::start(Arc::clone(&shared)).await.context("starting the LAN tools")?;
    if !shared.config.lan.interfaces.is_empty() {
        info!(interfaces = %shared.config.lan.interfaces.join(","), rate_pps = shared.config.lan.rate_pps, "LAN tools on");
    }

    wait_for_signal().await;
    info!("shutting down: closing tunnels");
    // While the tunnels are still held: the count the next start lets each busy source bring back.
    crate::busy_sources::save(&shared).await;
    let _ = shutdown_tx.send(true);
    // Tunnels send DISCONNECT and finish; do not wait forever on peers that do not read.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !shared.registry.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    paths::remove_run_files(data_dir);
    let _ = tokio::time::timeout(Duration::from_secs(5), heartbeat).await;
    drop(shared);
    // The journal task ends once every tunnel task has dropped its handle.
    if tokio::time::timeout(Duration::from_secs(10), journal_task).await.is_err() {
        warn!("device records still being written after 10 s; exiting anyway");
    }
    if tokio::time::timeout(Duration::from_secs(5), redirections_task).await.is_err() {
        warn!("redirection records still being written after 5 s; exiting anyway");
    }
    store.close().await;
    info!("stopped");
    Ok(())
}

/// On first start there are no MPS accounts: create one, and tell the operator once (of gateways
/// starting together on a new store, only the one whose account was written).
async fn ensure_mps_credentials(store: &Store) -> Result<()> {
    if !store.mps_accounts().await?.is_empty() {
        return Ok(());
    }
    let username = "tether";
    let password = auth::new_password();
    if !store.add_mps_account_if_absent(username, &auth::hash_password(password.as_bytes())?).await? {
        return Ok(());
    }
    println!("Created MPS credentials for AMT devices: username {username}, password {password}");
    println!("(shown once; change them with `tether mps-credentials set USER PASSWORD`)");
    Ok(())
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("binding the {what} listener on {addr} (in use by another process, or a privileged port?)")
    })
}

async fn housekeeping(shared: Arc<Shared>, tickets: Arc<crate::tickets::Tickets>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    // The first tick is at once; the busy sources are first recorded a minute after the start.
    tick.tick().await;
    crate::meter::count(&shared).await;
    loop {
        shared.limiter.housekeeping();
        tickets.housekeeping();
        tick.tick().await;
        crate::busy_sources::save(&shared).await;
        sweep_accounts(&shared).await;
        crate::meter::sweep(&shared).await;
        crate::meter::count(&shared).await;
    }
}

/// The accounts' scheduled sweeps (once a minute): invitations past their expiry become
/// expired, former contacts inactive for `accounts.inactive_days` become plain users. On a
/// fleet every gateway sweeps; the updates are idempotent.
async fn sweep_accounts(shared: &Shared) {
    let flows = crate::flows::Flows {
        store: &shared.store,
        accounts: &shared.config.accounts,
        public_url: "",
        now: time::OffsetDateTime::now_utc(),
    };
    match flows.sweep().await {
        Ok((0, 0)) => {}
        Ok((expired, plain)) => info!(expired, plain, "accounts swept: invitations expired, inactive users made plain"),
        Err(err) => warn!(error = %err, "cannot sweep invitations and inactive users; retrying in a minute"),
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(err) => {
                warn!(error = %err, "cannot listen for SIGTERM; stop with Ctrl-C");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
