//! What every role of the daemon shares: configuration, store, journal, metrics, limits, the live
//! registry, the password checker and the shutdown signal. It sits below `cira`, `api` and
//! `identity`, which all use it; `daemon` builds it and wires the roles together.
//!
//! What it does not do: any I/O of its own.

use std::sync::Arc;
use std::time::Duration;

use protocols::apf;
use protocols::session::{ChannelConfig, ServerConfig};
use tokio::sync::watch;

use crate::auth::PasswordChecker;
use crate::config::Config;
use crate::journal::{Journal, LiveState, LiveView};
use crate::limits::{Limiter, LogOnce};
use crate::metrics::Metrics;
use crate::redir_log::RedirLog;
use crate::registry::{Registry, TunnelKind};
use crate::store::Store;

#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub store: Store,
    /// This gateway's instance id (in the store's `instances`, and in the device records of the
    /// tunnels it holds).
    pub instance: String,
    /// The link to the other gateways of the fleet (`None` when this one is in no fleet or has
    /// no `fleet.internal_listen`).
    pub peers: Option<crate::fleet::peers::Peers>,
    pub journal: Journal,
    /// Redirection sessions seen by the relay tap, on their way to the store.
    pub redirections: RedirLog,
    pub metrics: Metrics,
    pub limiter: Limiter,
    /// Open files for accepted sockets, under the process's limit.
    pub files: std::sync::Arc<crate::files::FileBudget>,
    pub registry: Arc<Registry>,
    pub passwords: PasswordChecker,
    /// Seals the AMT passwords technicians ask the gateway to remember.
    pub sealer: crate::sealing::Sealer,
    /// The agent CA and the Ed25519 key that signs what agents are sent (fleet-wide).
    pub agent_keys: Arc<crate::agents::keys::AgentKeys>,
    /// The silo role, and on a maintenance silo what it joined with (`crate::silo`).
    pub silo: crate::silo::maintenance::Silo,
    /// The root's signed content: published here, or this maintenance silo's cache of it.
    pub content: Arc<crate::content::Content>,
    /// Content items being sent to agents (`content.max_transfers`).
    pub content_transfers: Arc<tokio::sync::Semaphore>,
    /// The LAN tools: recent scans and the tasks of adopted LAN PCs.
    pub lan: crate::lan::Lan,
    /// Conflicting claims are logged once per UUID per minute.
    pub conflicts: LogOnce<uuid::Uuid>,
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// The APF server settings from the configuration.
    pub fn session_config(&self) -> ServerConfig {
        let apf_config = &self.config.apf;
        let window = apf_config.channel_window.max(1024);
        ServerConfig {
            limits: apf::Limits::default(),
            pre_auth_limits: apf::Limits::for_max_message(apf_config.pre_auth_max_message),
            channels: ChannelConfig {
                max_channels: apf_config.max_channels_per_tunnel,
                window,
                adjust_threshold: window / 2,
                max_send_chunk: 32 * 1024,
            },
            keepalive_interval: Duration::from_secs(u64::from(apf_config.keepalive_interval_secs.max(1))),
            handshake_timeout: Duration::from_secs(u64::from(apf_config.handshake_timeout_secs.max(1))),
            ..ServerConfig::default()
        }
    }

    pub fn channel_open_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.config.apf.channel_open_timeout_secs.max(1)))
    }

    pub fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.config.apf.tls_handshake_timeout_secs.max(1)))
    }

    pub fn auth_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.config.apf.auth_timeout_secs.max(1)))
    }

    pub fn liveness_timeout(&self) -> Duration {
        Duration::from_millis(self.config.devices.liveness_timeout_ms.max(1))
    }
}

/// Resolves once the daemon is shutting down (or gone). Holds no borrow of the channel across
/// awaits, so tasks that select on it stay `Send`.
pub async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

impl LiveView for Registry {
    fn live_state(&self, uuid: uuid::Uuid) -> Option<LiveState> {
        self.get(uuid, TunnelKind::Cira).map(|h| LiveState {
            connected_since: h.connected_since,
            remote: h.remote,
            ports: h.ports(),
        })
    }
}

/// A [`Shared`] for in-process tests: a real store in a temp dir, a journal, one argon2 thread.
#[cfg(test)]
pub(crate) struct TestState {
    pub shared: Arc<Shared>,
    _shutdown: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

#[cfg(test)]
impl TestState {
    /// Needs a tokio runtime (the store and the journal run on it).
    pub async fn new(config: Config) -> Self {
        let (dir, store) = crate::store::tests::sqlite().await;
        let registry = Arc::new(Registry::new());
        let metrics = Metrics::new();
        let (journal, _task) = Journal::start(
            store.clone(),
            registry.clone(),
            1000,
            "test-gateway".into(),
            metrics.store_errors_of(crate::metrics::StoreTask::Journal),
        );
        let (redirections, _task) =
            RedirLog::start(store.clone(), config.record_sol.then(|| dir.path().join("transcripts")));
        let (shutdown_tx, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared {
            limiter: Limiter::new(&config.limits),
            files: crate::files::FileBudget::unlimited(),
            config,
            store,
            instance: "test-gateway".into(),
            peers: None,
            journal,
            redirections,
            metrics,
            registry,
            passwords: PasswordChecker::start(1, 16, 100).expect("a password checker"),
            sealer: crate::sealing::Sealer::load_or_create(dir.path()).expect("a sealing key"),
            content: {
                let keys = crate::agents::keys::AgentKeys::load_or_create(dir.path()).expect("agent keys");
                Arc::new(crate::content::Content::origin(dir.path(), &keys))
            },
            content_transfers: Arc::new(tokio::sync::Semaphore::new(4)),
            agent_keys: Arc::new(crate::agents::keys::AgentKeys::load_or_create(dir.path()).expect("agent keys")),
            silo: crate::silo::maintenance::Silo::All,
            lan: crate::lan::Lan::default(),
            conflicts: LogOnce::new(),
            shutdown,
        });
        Self { shared, _shutdown: shutdown_tx, _dir: dir }
    }
}
