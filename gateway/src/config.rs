//! The gateway's configuration file (`DATA_DIR/tether.toml` or `--config`), with defaults for
//! every key, and checks of the values that would otherwise fail later or silently mean
//! something else. What it does not do: apply flags and environment variables (`main`/`daemon`
//! do that on top, and may call [`Config::validate`] again afterwards).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::certs::KeyType;
pub use crate::limits::LimitsConfig;
use crate::proxy_header::TrustedProxies;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid configuration: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("{path}: {key} {problem}")]
    Invalid { path: PathBuf, key: &'static str, problem: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The store: missing means the SQLite file in the data dir; `postgres://…` a PostgreSQL
    /// shared by a fleet (`--database` and `TETHER_DATABASE_URL` override it).
    pub database_url: Option<String>,
    /// Connections in the store's pool (PostgreSQL; SQLite uses at most 4).
    pub database_pool_size: u32,
    pub cira_listen: SocketAddr,
    pub api_listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    /// Keep the transcript of every SOL session relayed to port 16994, for audit
    /// (`DATA_DIR/transcripts/UUID/ID.cast`, asciicast v2, mode 0600); `--record-sol` turns it on
    /// too. Sessions over TLS (16995) cannot be read, and are not recorded.
    pub record_sol: bool,
    pub tls: TlsConfig,
    pub apf: ApfConfig,
    pub devices: DevicesConfig,
    pub api: ApiConfig,
    pub limits: LimitsConfig,
    pub fleet: FleetConfig,
    pub proxy: ProxyConfig,
    pub lan: LanConfig,
    pub accounts: AccountsConfig,
    pub mail: MailConfig,
    pub portal: PortalConfig,
    pub agents: AgentsConfig,
    pub health: crate::health::HealthRules,
    pub webhooks: WebhooksConfig,
    pub silo: SiloConfig,
    pub content: ContentConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: None,
            database_pool_size: 16,
            cira_listen: ([0, 0, 0, 0], 4433).into(),
            api_listen: ([0, 0, 0, 0], 8443).into(),
            metrics_listen: ([127, 0, 0, 1], 9464).into(),
            record_sol: false,
            tls: TlsConfig::default(),
            apf: ApfConfig::default(),
            devices: DevicesConfig::default(),
            api: ApiConfig::default(),
            limits: LimitsConfig::default(),
            fleet: FleetConfig::default(),
            proxy: ProxyConfig::default(),
            lan: LanConfig::default(),
            accounts: AccountsConfig::default(),
            mail: MailConfig::default(),
            portal: PortalConfig::default(),
            agents: AgentsConfig::default(),
            health: crate::health::HealthRules::default(),
            webhooks: WebhooksConfig::default(),
            silo: SiloConfig::default(),
            content: ContentConfig::default(),
        }
    }
}

/// Silos (`docs/silos.md`): the role this gateway plays, and what a maintenance silo serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SiloConfig {
    /// all, root or maintenance (`--role`).
    pub role: crate::silo::maintenance::Role,
    /// (maintenance) The tiers served here; empty: any tier the root grants.
    pub tiers: Vec<String>,
    /// (maintenance) How often the root's revocation list, the moves out of this silo and the
    /// root's actions for its machines are pulled (the agents' results go up then): a revoked
    /// client is refused, and its session closed, within this.
    pub revocations_pull_secs: u32,
    /// (maintenance) How often this silo sends its root its aggregates.
    pub aggregates_push_secs: u32,
}

impl Default for SiloConfig {
    fn default() -> Self {
        Self {
            role: crate::silo::maintenance::Role::All,
            tiers: Vec::new(),
            revocations_pull_secs: 60,
            aggregates_push_secs: 60,
        }
    }
}

/// Signed content (`docs/silos.md`, "Signed content"): what a gateway keeps of the root's items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContentConfig {
    /// (maintenance) Most bytes the cache of the root's items holds; the items used least
    /// recently are evicted to make room.
    pub cache_max_bytes: u64,
    /// (maintenance) How long a cached item is served before the root is asked whether it is
    /// still the latest (when the root is down, the copy held is served).
    pub revalidate_secs: u32,
    /// Items sent to agents at once; more wait their turn.
    pub max_transfers: u32,
}

impl Default for ContentConfig {
    fn default() -> Self {
        Self { cache_max_bytes: 20 << 30, revalidate_secs: 300, max_transfers: 32 }
    }
}

/// Alerts posted to contacts' webhooks (`docs/health.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Extra CAs (PEM) webhook servers' certificates may chain to, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Connecting, TLS and the answer, for one post.
    pub timeout_secs: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self { ca_file: None, timeout_secs: 10 }
    }
}

/// Tether agents (`docs/agents.md`): the QUIC listener, enrollment and what agents are told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsConfig {
    /// The QUIC listener (UDP; `--agent-listen`). Port 4433 like CIRA's TCP listener.
    pub listen: SocketAddr,
    /// How often agents report their support parameters.
    pub heartbeat_secs: u32,
    /// How often an idle agent connection sends a QUIC keepalive: under the 30 s after which
    /// many NATs forget a UDP mapping.
    pub keepalive_secs: u32,
    /// A connection that has heard nothing from its agent for this long is closed.
    pub idle_timeout_secs: u32,
    /// Time from connection to the agent's hello (or enrollment request).
    pub hello_timeout_secs: u32,
    /// How long an agent's certificate is valid.
    pub cert_valid_days: u32,
    /// Agent connections held at most (beyond: refused as busy, and the agent tries again later).
    pub max_agents: usize,
    /// Connections still in their handshake or hello at most.
    pub max_pending: usize,
    /// The gateways (HOST:PORT) agents are told to use, in order; empty: the one they dialled.
    pub advertise: Vec<String>,
    /// How often a connected agent's session looks in the store for support actions and messages
    /// (those made on this gateway go at once; this is for those made on another of the fleet).
    pub delivery_poll_secs: u32,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            listen: ([0, 0, 0, 0], 4433).into(),
            heartbeat_secs: 300,
            keepalive_secs: 15,
            idle_timeout_secs: 60,
            hello_timeout_secs: 10,
            cert_valid_days: 365,
            max_agents: 100_000,
            max_pending: 1024,
            advertise: Vec::new(),
            delivery_poll_secs: 30,
        }
    }
}

/// The web portal's sign-in sessions (`docs/portal.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PortalConfig {
    /// A session unused for this long ends (the browser must sign in again).
    pub session_idle_minutes: u32,
    /// A session ends this long after sign-in, used or not.
    pub session_max_hours: u32,
    /// The name authenticator apps show beside a TOTP entry (no ':').
    pub totp_issuer: String,
}

impl Default for PortalConfig {
    fn default() -> Self {
        Self { session_idle_minutes: 30, session_max_hours: 12, totp_issuer: "Tether".into() }
    }
}

impl PortalConfig {
    pub fn session_idle(&self) -> time::Duration {
        time::Duration::minutes(self.session_idle_minutes.into())
    }

    pub fn session_max(&self) -> time::Duration {
        time::Duration::hours(self.session_max_hours.into())
    }
}

/// Subscribers' support contacts (`docs/accounts.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountsConfig {
    /// How long an invitation to become a support contact can be accepted.
    pub invitation_valid_days: u32,
    /// How long a former contact (an active contact of no subscriber) stays inactive before it
    /// is a plain user again.
    pub inactive_days: u32,
    /// How long the link confirming a new email address works.
    pub email_change_valid_hours: u32,
    /// How long a machine's enrollment token (for `tether-agent enroll`) can be used.
    pub enrollment_token_valid_hours: u32,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        Self {
            invitation_valid_days: 7,
            inactive_days: 90,
            email_change_valid_hours: 24,
            enrollment_token_valid_hours: 72,
        }
    }
}

impl AccountsConfig {
    pub fn invitation_validity(&self) -> time::Duration {
        time::Duration::days(self.invitation_valid_days.into())
    }

    pub fn inactive_period(&self) -> time::Duration {
        time::Duration::days(self.inactive_days.into())
    }

    pub fn email_change_validity(&self) -> time::Duration {
        time::Duration::hours(self.email_change_valid_hours.into())
    }

    pub fn enrollment_token_validity(&self) -> time::Duration {
        time::Duration::hours(self.enrollment_token_valid_hours.into())
    }
}

/// This gateway as one of a fleet sharing a PostgreSQL store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// This gateway's name in the fleet [default: `DATA_DIR/instance-id`, made at first start].
    pub instance_id: Option<String>,
    /// Where other gateways reach this one (mutual TLS under the fleet CA; `tether fleet init`
    /// or `join` first). Unset: no fleet link, technicians reach only the devices held here.
    pub internal_listen: Option<SocketAddr>,
    /// The address other gateways dial for the fleet link [default: internal_listen].
    pub advertise_internal: Option<String>,
    /// The API address technicians may use for this gateway, shown by `tether fleet status`.
    pub advertise_api: Option<String>,
    pub heartbeat_interval_secs: u64,
    /// A gateway whose heartbeat is older than this is taken for dead: its tunnels are marked
    /// disconnected, and claims for its devices need not wait for it.
    pub stale_after_secs: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            instance_id: None,
            internal_listen: None,
            advertise_internal: None,
            advertise_api: None,
            heartbeat_interval_secs: 2,
            stale_after_secs: 10,
        }
    }
}

/// The LAN tools of an appliance at the edge: discovery, Wake-on-LAN, and AMT PCs on its LAN
/// adopted as devices. Raw frames need `CAP_NET_RAW` (or root).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LanConfig {
    /// The interfaces the LAN tools may use, by name (`["eth1"]`). Empty (the default): the LAN
    /// tools are off, and no scan, magic packet or adoption is allowed on any interface.
    pub interfaces: Vec<String>,
    /// Probes a scan sends per second (ARP requests, RMCP pings, TCP connects), in all.
    pub rate_pps: u32,
    /// Most addresses one scan covers (1,024: a /22).
    pub max_hosts: u32,
    /// How long a scan waits for late answers after its last ARP request or ping, in ms.
    pub reply_wait_ms: u64,
    /// How long a probe of an AMT port (TCP connect, TLS, the HTTP answer) may take, in ms.
    pub probe_timeout_ms: u64,
    /// Scan the subnet of each interface above every this many seconds (0: only on request).
    pub scan_every_secs: u64,
    /// How often an adopted PC's AMT is checked for reachability, in seconds.
    pub check_interval_secs: u64,
}

impl Default for LanConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            rate_pps: 200,
            max_hosts: 1024,
            reply_wait_ms: 1000,
            probe_timeout_ms: 2000,
            scan_every_secs: 0,
            check_interval_secs: 30,
        }
    }
}

/// A gateway's instance id: a DNS label (1 to 63 letters, digits or `-`, not at either end): it
/// is the name in the gateway's certificate on the fleet link, and appears in logs and records.
pub fn valid_instance_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
}

/// Load balancers in front of the gateway (HAProxy with `send-proxy-v2`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Addresses or CIDRs of the balancers: a connection from one of them must start with a
    /// PROXY v2 header, and the device's or technician's address is taken from it (for limits,
    /// conflict rules and device records). Connections from anywhere else are taken as they come
    /// (a PROXY header from them fails their TLS handshake).
    pub trusted: TrustedProxies,
    /// How long a balancer's connection may take to send its header.
    pub header_timeout_ms: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self { trusted: TrustedProxies::default(), header_timeout_ms: 5000 }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Extra DNS names / IP addresses for the generated server certificate.
    pub names: Vec<String>,
    pub key_type: KeyType,
    /// Operator-supplied certificate chain (PEM) and key, used instead of generating.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// What certificate generation needs of this section.
    pub fn cert_options(&self) -> crate::certs::CertOptions {
        crate::certs::CertOptions {
            names: self.names.clone(),
            key_type: self.key_type,
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApfConfig {
    pub keepalive_interval_secs: u32,
    pub handshake_timeout_secs: u32,
    pub max_channels_per_tunnel: usize,
    pub max_tunnels: usize,
    pub channel_window: u32,
    pub channel_open_timeout_secs: u32,
    pub tls_handshake_timeout_secs: u32,
    /// From the device's USERAUTH_REQUEST to the gateway's decision, argon2 wait included.
    pub auth_timeout_secs: u32,
    /// Connections accepted but not yet authenticated: their own pool, apart from `max_tunnels`.
    pub max_pending_connections: usize,
    /// Of those, per source (IPv4 address or IPv6 /64).
    pub max_pending_per_source: usize,
    /// Largest APF message a device may send before it has authenticated.
    pub pre_auth_max_message: usize,
}

impl Default for ApfConfig {
    fn default() -> Self {
        Self {
            keepalive_interval_secs: 30,
            handshake_timeout_secs: 30,
            max_channels_per_tunnel: 64,
            max_tunnels: 50_000,
            channel_window: 256 * 1024,
            channel_open_timeout_secs: 15,
            tls_handshake_timeout_secs: 10,
            auth_timeout_secs: 10,
            max_pending_connections: 4096,
            max_pending_per_source: 512,
            pre_auth_max_message: 4096,
        }
    }
}

/// Which devices may claim which UUIDs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DevicePolicy {
    /// Any UUID with valid credentials: its own password if it has one, else any MPS account.
    Open,
    /// Only UUIDs added with `tether device add UUID --password P`, with that password.
    Registered,
    /// The first admission binds the UUID to the credential that admitted it; another credential
    /// is refused later.
    #[default]
    Pinned,
}

impl DevicePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DevicePolicy::Open => "open",
            DevicePolicy::Registered => "registered",
            DevicePolicy::Pinned => "pinned",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevicesConfig {
    pub policy: DevicePolicy,
    /// How long a live tunnel has to answer the keepalive probe when a newer connection claims
    /// its UUID.
    pub liveness_timeout_ms: u64,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self { policy: DevicePolicy::Pinned, liveness_timeout_ms: 3000 }
    }
}

/// The technician API's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Requests per source address, checked before any token lookup.
    pub requests_per_second_per_source: u32,
    pub request_burst_per_source: u32,
    pub max_connections_per_source: usize,
    pub max_connections: usize,
    pub max_relays_per_token_per_device: usize,
    /// A relay with no bytes either way for this long is closed.
    pub relay_idle_timeout_secs: u64,
    pub relay_max_duration_secs: u64,
    pub ping_interval_secs: u64,
    /// No frame (pong or data) from the technician for this long: the relay is closed.
    pub ping_timeout_secs: u64,
    /// Largest WebSocket frame or message, checked before it is buffered.
    pub max_frame_bytes: usize,
    /// A certificate chain (PEM, server certificate first) and key of the API's and portal's own,
    /// served on `api_listen` instead of the gateway's CIRA certificate: a publicly trusted one
    /// for subscribers' browsers. Unset: the API serves the CIRA certificate (`[tls]`).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            requests_per_second_per_source: 20,
            request_burst_per_source: 100,
            max_connections_per_source: 64,
            max_connections: 4096,
            max_relays_per_token_per_device: 8,
            relay_idle_timeout_secs: 1800,
            relay_max_duration_secs: 43_200,
            ping_interval_secs: 15,
            ping_timeout_secs: 45,
            max_frame_bytes: 1 << 20,
            cert_file: None,
            key_file: None,
        }
    }
}

impl Config {
    /// Reads and checks a configuration file; a missing file means the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(ConfigError::Read { path: path.to_path_buf(), source }),
        };
        let config: Config = toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source: Box::new(source) })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks values that cannot work (zero timeouts, limits and windows; listeners sharing an
    /// address; half an operator certificate). `origin` names where the values came from in the
    /// error (the file, or e.g. "command line").
    pub fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        let invalid =
            |key: &'static str, problem: String| Err(ConfigError::Invalid { path: origin.to_path_buf(), key, problem });
        let at_least = |key: &'static str, value: u64, min: u64| {
            if value < min {
                invalid(key, format!("is {value}; it must be at least {min}"))
            } else {
                Ok(())
            }
        };
        let apf = &self.apf;
        at_least("apf.keepalive_interval_secs", apf.keepalive_interval_secs.into(), 1)?;
        at_least("apf.handshake_timeout_secs", apf.handshake_timeout_secs.into(), 1)?;
        at_least("apf.channel_open_timeout_secs", apf.channel_open_timeout_secs.into(), 1)?;
        at_least("apf.max_channels_per_tunnel", apf.max_channels_per_tunnel as u64, 1)?;
        at_least("apf.max_tunnels", apf.max_tunnels as u64, 1)?;
        at_least("apf.channel_window", apf.channel_window.into(), 1024)?;
        at_least("apf.tls_handshake_timeout_secs", apf.tls_handshake_timeout_secs.into(), 1)?;
        at_least("apf.auth_timeout_secs", apf.auth_timeout_secs.into(), 1)?;
        at_least("apf.max_pending_connections", apf.max_pending_connections as u64, 1)?;
        at_least("apf.max_pending_per_source", apf.max_pending_per_source as u64, 1)?;
        at_least("apf.pre_auth_max_message", apf.pre_auth_max_message as u64, 512)?;
        at_least("devices.liveness_timeout_ms", self.devices.liveness_timeout_ms, 100)?;
        at_least("database_pool_size", self.database_pool_size.into(), 1)?;
        at_least("silo.revocations_pull_secs", self.silo.revocations_pull_secs.into(), 1)?;
        at_least("silo.aggregates_push_secs", self.silo.aggregates_push_secs.into(), 1)?;
        at_least("proxy.header_timeout_ms", self.proxy.header_timeout_ms, 100)?;
        at_least("fleet.heartbeat_interval_secs", self.fleet.heartbeat_interval_secs, 1)?;
        at_least("lan.rate_pps", self.lan.rate_pps.into(), 1)?;
        at_least("lan.max_hosts", self.lan.max_hosts.into(), 1)?;
        at_least("lan.probe_timeout_ms", self.lan.probe_timeout_ms, 100)?;
        at_least("lan.check_interval_secs", self.lan.check_interval_secs, 1)?;
        at_least("accounts.invitation_valid_days", self.accounts.invitation_valid_days.into(), 1)?;
        at_least("accounts.inactive_days", self.accounts.inactive_days.into(), 1)?;
        at_least("accounts.email_change_valid_hours", self.accounts.email_change_valid_hours.into(), 1)?;
        at_least("accounts.enrollment_token_valid_hours", self.accounts.enrollment_token_valid_hours.into(), 1)?;
        self.mail.validate(origin)?;
        if self.lan.scan_every_secs > 0 && self.lan.scan_every_secs < 60 {
            return invalid(
                "lan.scan_every_secs",
                format!("is {}; use 0 (off) or at least 60", self.lan.scan_every_secs),
            );
        }
        if self.fleet.stale_after_secs < 2 * self.fleet.heartbeat_interval_secs {
            return invalid(
                "fleet.stale_after_secs",
                format!(
                    "is {}; it must be at least twice fleet.heartbeat_interval_secs ({}), or live gateways are taken \
                     for dead",
                    self.fleet.stale_after_secs, self.fleet.heartbeat_interval_secs
                ),
            );
        }
        if let Some(addr) = self.fleet.internal_listen {
            if addr.ip().is_unspecified() && self.fleet.advertise_internal.is_none() {
                return invalid(
                    "fleet.advertise_internal",
                    format!(
                        "is needed when fleet.internal_listen is {addr}: other gateways cannot dial an unspecified \
                         address; give the address they reach this one on"
                    ),
                );
            }
        }
        if let Some(id) = &self.fleet.instance_id {
            if !valid_instance_id(id) {
                return invalid(
                    "fleet.instance_id",
                    format!("is {id:?}; use 1 to 63 letters, digits or '-' (not first or last)"),
                );
            }
        }
        let api = &self.api;
        at_least("api.requests_per_second_per_source", api.requests_per_second_per_source.into(), 1)?;
        at_least("api.request_burst_per_source", api.request_burst_per_source.into(), 1)?;
        at_least("api.max_connections_per_source", api.max_connections_per_source as u64, 1)?;
        at_least("api.max_connections", api.max_connections as u64, 1)?;
        at_least("api.max_relays_per_token_per_device", api.max_relays_per_token_per_device as u64, 1)?;
        at_least("api.relay_idle_timeout_secs", api.relay_idle_timeout_secs, 1)?;
        at_least("api.relay_max_duration_secs", api.relay_max_duration_secs, 1)?;
        at_least("api.ping_interval_secs", api.ping_interval_secs, 1)?;
        at_least("api.max_frame_bytes", api.max_frame_bytes as u64, 1024)?;
        if api.ping_timeout_secs <= api.ping_interval_secs {
            return invalid(
                "api.ping_timeout_secs",
                format!(
                    "is {}; it must be longer than api.ping_interval_secs ({}), or every relay times out",
                    api.ping_timeout_secs, api.ping_interval_secs
                ),
            );
        }
        let limits = &self.limits;
        at_least("limits.connections_per_second_per_source", limits.connections_per_second_per_source.into(), 1)?;
        at_least("limits.connection_burst_per_source", limits.connection_burst_per_source.into(), 1)?;
        at_least("limits.auth_failures_per_minute", limits.auth_failures_per_minute.into(), 1)?;
        at_least("limits.auth_failure_burst", limits.auth_failure_burst.into(), 1)?;
        at_least("limits.api_requests_per_second", limits.api_requests_per_second.into(), 1)?;
        at_least("limits.api_burst", limits.api_burst.into(), 1)?;
        at_least("limits.max_tracked_sources", limits.max_tracked_sources as u64, 16)?;
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return invalid("tls.cert_file", "and tls.key_file go together: set both, or neither".into());
        }
        if self.api.cert_file.is_some() != self.api.key_file.is_some() {
            return invalid("api.cert_file", "and api.key_file go together: set both, or neither".into());
        }
        let portal = &self.portal;
        at_least("portal.session_idle_minutes", portal.session_idle_minutes.into(), 1)?;
        at_least("portal.session_max_hours", portal.session_max_hours.into(), 1)?;
        if portal.totp_issuer.is_empty() || portal.totp_issuer.len() > 64 || portal.totp_issuer.contains(':') {
            return invalid("portal.totp_issuer", "must be 1 to 64 characters, without ':'".into());
        }
        if let Err(problem) = self.health.validate() {
            return Err(ConfigError::Invalid { path: origin.to_path_buf(), key: "health", problem });
        }
        at_least("webhooks.timeout_secs", self.webhooks.timeout_secs, 1)?;
        let agents = &self.agents;
        at_least("agents.heartbeat_secs", agents.heartbeat_secs.into(), 5)?;
        at_least("agents.keepalive_secs", agents.keepalive_secs.into(), 1)?;
        at_least("agents.hello_timeout_secs", agents.hello_timeout_secs.into(), 1)?;
        at_least("agents.cert_valid_days", agents.cert_valid_days.into(), 1)?;
        at_least("agents.max_agents", agents.max_agents as u64, 1)?;
        at_least("agents.max_pending", agents.max_pending as u64, 1)?;
        if agents.idle_timeout_secs <= agents.keepalive_secs {
            return invalid(
                "agents.idle_timeout_secs",
                format!(
                    "is {}; it must be longer than agents.keepalive_secs ({})",
                    agents.idle_timeout_secs, agents.keepalive_secs
                ),
            );
        }
        if agents.advertise.len() > 16 {
            return invalid("agents.advertise", "lists more than 16 gateways".into());
        }
        let listeners = [
            ("cira_listen", self.cira_listen),
            ("api_listen", self.api_listen),
            ("metrics_listen", self.metrics_listen),
        ];
        for (i, (key, addr)) in listeners.iter().enumerate() {
            for (other, other_addr) in &listeners[i + 1..] {
                if addr.port() != 0 && addr == other_addr {
                    return invalid(key, format!("and {other} are both {addr}; give each its own port"));
                }
            }
        }
        Ok(())
    }

    /// The configuration as a TOML file (every key, defaults included).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// How mail reaches its SMTP server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailSecurity {
    /// Plain SMTP, no TLS: only for a relay on the same host or a test server.
    None,
    /// Plain connection upgraded with STARTTLS (required: no fallback to plain), port 587.
    #[default]
    Starttls,
    /// TLS from the first byte (implicit TLS, "SMTPS"), port 465.
    Tls,
}

impl MailSecurity {
    pub fn as_str(self) -> &'static str {
        match self {
            MailSecurity::None => "none",
            MailSecurity::Starttls => "starttls",
            MailSecurity::Tls => "tls",
        }
    }

    /// The usual port of this kind of SMTP.
    pub fn default_port(self) -> u16 {
        match self {
            MailSecurity::None => 25,
            MailSecurity::Starttls => 587,
            MailSecurity::Tls => 465,
        }
    }
}

/// Mail over SMTP through the store's outbox (`docs/mail.md`). Without `smtp_host`, mail is
/// queued and waits (nothing is dropped) until a server is configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailConfig {
    /// The SMTP server (a name or an address). Unset: mail waits in the outbox.
    pub smtp_host: Option<String>,
    /// [default: 25 for `none`, 587 for `starttls`, 465 for `tls`]
    pub smtp_port: Option<u16>,
    pub security: MailSecurity,
    /// Log in with this user (and the password in `password_file`); unset: no login.
    pub username: Option<String>,
    /// A file holding the SMTP password (its first line), readable by the gateway only.
    pub password_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for the SMTP server, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// The sender, `tether@example.net` or `Tether <tether@example.net>`.
    pub from: Option<String>,
    /// The base URL the links in mail point to (`https://gateway.example:8443`) [default:
    /// `https://` the first of `tls.names`, and the API's port].
    pub public_url: Option<String>,
    /// How often the outbox is looked at for due mail.
    pub poll_interval_secs: u64,
    /// Most mails sent per look.
    pub batch_size: u32,
    /// Attempts at one mail before it is given up.
    pub max_attempts: u32,
    /// A mail not sent this long after it was queued is given up.
    pub max_age_hours: u32,
    /// The wait after a first failed attempt; it doubles after each further one…
    pub retry_base_secs: u64,
    /// … up to this.
    pub retry_max_secs: u64,
    /// How long connecting to the server, and each SMTP command, may take.
    pub timeout_secs: u64,
}

impl Default for MailConfig {
    fn default() -> Self {
        Self {
            smtp_host: None,
            smtp_port: None,
            security: MailSecurity::Starttls,
            username: None,
            password_file: None,
            ca_file: None,
            from: None,
            public_url: None,
            poll_interval_secs: 5,
            batch_size: 20,
            max_attempts: 12,
            max_age_hours: 72,
            retry_base_secs: 30,
            retry_max_secs: 3600,
            timeout_secs: 30,
        }
    }
}

impl MailConfig {
    fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        let invalid =
            |key: &'static str, problem: String| Err(ConfigError::Invalid { path: origin.to_path_buf(), key, problem });
        for (key, value, min) in [
            ("mail.poll_interval_secs", self.poll_interval_secs, 1),
            ("mail.batch_size", self.batch_size.into(), 1),
            ("mail.max_attempts", self.max_attempts.into(), 1),
            ("mail.max_age_hours", self.max_age_hours.into(), 1),
            ("mail.retry_base_secs", self.retry_base_secs, 1),
            ("mail.timeout_secs", self.timeout_secs, 1),
        ] {
            if value < min {
                return invalid(key, format!("is {value}; it must be at least {min}"));
            }
        }
        if self.batch_size > crate::store::MAX_MAIL_BATCH {
            return invalid(
                "mail.batch_size",
                format!("is {}; at most {}", self.batch_size, crate::store::MAX_MAIL_BATCH),
            );
        }
        if self.retry_max_secs < self.retry_base_secs {
            return invalid(
                "mail.retry_max_secs",
                format!(
                    "is {}; it must be at least mail.retry_base_secs ({})",
                    self.retry_max_secs, self.retry_base_secs
                ),
            );
        }
        if self.username.is_some() != self.password_file.is_some() {
            return invalid("mail.password_file", "and mail.username go together: set both, or neither".into());
        }
        if self.smtp_host.as_deref().is_some_and(|h| h.trim().is_empty()) {
            return invalid("mail.smtp_host", "is empty; give the SMTP server's name, or leave it out".into());
        }
        match &self.from {
            Some(from) if from.parse::<lettre::message::Mailbox>().is_err() => {
                return invalid("mail.from", format!("is {from:?}, not an address like tether@example.net"));
            }
            None if self.smtp_host.is_some() => {
                return invalid("mail.from", "is needed with mail.smtp_host: the address mail is sent from".into());
            }
            _ => {}
        }
        if let Some(url) = &self.public_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains(char::is_whitespace) {
                return invalid("mail.public_url", format!("is {url:?}; give a URL like https://gateway.example:8443"));
            }
        }
        Ok(())
    }
}

impl Config {
    /// The base URL of the links in mail: `mail.public_url`, else `https://` the first of
    /// `tls.names` (else the API's address, else `localhost`) and the API's port.
    pub fn mail_public_url(&self) -> String {
        if let Some(url) = &self.mail.public_url {
            return url.trim_end_matches('/').to_string();
        }
        let port = self.api_listen.port();
        let host = match self.tls.names.first() {
            Some(name) if name.parse::<std::net::Ipv6Addr>().is_ok() => format!("[{name}]"),
            Some(name) => name.clone(),
            None if !self.api_listen.ip().is_unspecified() => match self.api_listen.ip() {
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            },
            None => "localhost".to_string(),
        };
        format!("https://{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_means_defaults_and_partial_files_merge() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Config::load(&dir.path().join("none.toml")).unwrap(), Config::default());
        let path = dir.path().join("tether.toml");
        std::fs::write(&path, "cira_listen = \"127.0.0.1:14433\"\n[limits]\nconnection_burst_per_source = 5000\n")
            .unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.cira_listen, "127.0.0.1:14433".parse().unwrap());
        assert_eq!(config.limits.connection_burst_per_source, 5000);
        assert_eq!(config.limits.auth_failure_burst, LimitsConfig::default().auth_failure_burst);
        assert_eq!(Config::load(&path).unwrap(), toml::from_str(&config.to_toml()).unwrap());
    }

    #[test]
    fn the_defaults_are_valid_and_survive_a_round_trip() {
        let defaults = Config::default();
        defaults.validate(Path::new("defaults")).unwrap();
        let text = defaults.to_toml();
        assert!(text.contains("key_type = \"rsa3072\"") && text.contains("[limits]"), "{text}");
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), defaults);
        assert_eq!(defaults.apf.channel_window, 262_144);
        assert_eq!(defaults.metrics_listen, "127.0.0.1:9464".parse().unwrap());
        assert!(!defaults.record_sol && text.contains("record_sol = false"), "{text}");
    }

    #[test]
    fn values_that_cannot_work_are_errors_naming_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tether.toml");
        let cases = [
            ("[apf]\nhandshake_timeout_secs = 0\n", "apf.handshake_timeout_secs"),
            ("[apf]\nchannel_window = 512\n", "apf.channel_window"),
            ("[limits]\nauth_failure_burst = 0\n", "limits.auth_failure_burst"),
            ("[tls]\ncert_file = \"/etc/tether/chain.pem\"\n", "tls.key_file"),
            ("[api]\nkey_file = \"/etc/tether/web-key.pem\"\n", "api.key_file"),
            ("[portal]\nsession_idle_minutes = 0\n", "portal.session_idle_minutes"),
            ("[portal]\ntotp_issuer = \"a:b\"\n", "portal.totp_issuer"),
            ("api_listen = \"0.0.0.0:4433\"\n", "api_listen"),
            ("[tls]\nkey_type = \"rsa2048\"\n", "rsa2048"),
            ("[devices]\npolicy = \"everyone\"\n", "everyone"),
            ("[devices]\nliveness_timeout_ms = 0\n", "devices.liveness_timeout_ms"),
            ("[api]\nping_interval_secs = 30\nping_timeout_secs = 30\n", "api.ping_timeout_secs"),
            ("[apf]\npre_auth_max_message = 10\n", "apf.pre_auth_max_message"),
            ("[proxy]\ntrusted = [\"10.1.2.3/8\"]\n", "10.1.2.3/8"),
            ("[fleet]\nheartbeat_interval_secs = 5\nstale_after_secs = 6\n", "fleet.stale_after_secs"),
            ("[fleet]\ninstance_id = \"a b\"\n", "fleet.instance_id"),
            ("[fleet]\ninstance_id = \"gw_1\"\n", "fleet.instance_id"),
            ("[fleet]\ninternal_listen = \"0.0.0.0:8444\"\n", "fleet.advertise_internal"),
            ("[lan]\nrate_pps = 0\n", "lan.rate_pps"),
            ("[lan]\nscan_every_secs = 5\n", "lan.scan_every_secs"),
            ("[accounts]\ninvitation_valid_days = 0\n", "accounts.invitation_valid_days"),
            ("[lan]\ninterface = [\"eth1\"]\n", "interface"),
            ("[mail]\nsmtp_host = \"smtp.example.net\"\n", "mail.from"),
            ("[mail]\nfrom = \"not an address\"\n", "mail.from"),
            ("[mail]\nusername = \"u\"\n", "mail.password_file"),
            ("[mail]\nretry_base_secs = 60\nretry_max_secs = 30\n", "mail.retry_max_secs"),
            ("[mail]\nmax_attempts = 0\n", "mail.max_attempts"),
            ("[mail]\npublic_url = \"gw.example\"\n", "mail.public_url"),
            ("[mail]\nsecurity = \"ssl\"\n", "ssl"),
        ];
        for (text, key) in cases {
            std::fs::write(&path, text).unwrap();
            let err = Config::load(&path).unwrap_err().to_string();
            assert!(err.contains("tether.toml") && err.contains(key), "{text}: {err}");
        }
        // Port 0 (any free port, as tests use) may repeat.
        std::fs::write(&path, "cira_listen = \"127.0.0.1:0\"\napi_listen = \"127.0.0.1:0\"\n").unwrap();
        Config::load(&path).unwrap();
        std::fs::write(&path, "[tls]\nkey_type = \"ecdsa-p384\"\nnames = [\"mps.example.net\"]\n").unwrap();
        assert_eq!(Config::load(&path).unwrap().tls.key_type, KeyType::EcdsaP384);
    }

    #[test]
    fn mail_links_point_to_the_public_url_or_the_first_tls_name() {
        let mut config = Config::default();
        assert_eq!(config.mail_public_url(), "https://localhost:8443");
        config.tls.names = vec!["gw.example".into(), "10.0.0.1".into()];
        assert_eq!(config.mail_public_url(), "https://gw.example:8443");
        config.tls.names = vec!["2001:db8::1".into()];
        assert_eq!(config.mail_public_url(), "https://[2001:db8::1]:8443");
        config.mail.public_url = Some("https://portal.example/".into());
        assert_eq!(config.mail_public_url(), "https://portal.example");
        let text = "[mail]\nsmtp_host = \"smtp.example.net\"\nsecurity = \"tls\"\nfrom = \"Tether <t@example.net>\"\n";
        let config: Config = toml::from_str(text).unwrap();
        config.validate(Path::new("t")).unwrap();
        assert_eq!((config.mail.security, config.mail.security.default_port()), (MailSecurity::Tls, 465));
    }

    #[test]
    fn unknown_keys_are_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tether.toml");
        std::fs::write(&path, "cira_lisen = \"127.0.0.1:1\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("tether.toml") && err.contains("cira_lisen"), "{err}");
    }
}
