//! Prometheus metrics for the gateway, on a private registry.
//!
//! Every label is a closed Rust enum rendered by `as_str()`, never a UUID, an address or a user
//! name; every label value is created at start, so each series exists (at 0) before anything
//! happens. What it does not do: serve HTTP (that is `api::serve_metrics`).

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use protocols::session::ProtocolErrorKind;

macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }
        }
    };
}

label_enum!(
    /// The kind of tunnel.
    TunnelKind { Cira => "cira", Agent => "agent", Lan => "lan" }
);

label_enum!(
    /// Why a tunnel ended.
    CloseReason {
        PeerDisconnect => "peer_disconnect",
        PeerClosed => "peer_closed",
        IdleTimeout => "idle_timeout",
        HandshakeTimeout => "handshake_timeout",
        ProtocolError => "protocol_error",
        AuthFailed => "auth_failed",
        Replaced => "replaced",
        SessionClosed => "session_closed",
        Shutdown => "shutdown",
        IoError => "io_error",
        Unknown => "unknown",
    }
);

label_enum!(
    /// Why an authentication attempt failed.
    AuthFailureReason {
        BadPassword => "bad_password",
        UnknownUser => "unknown_user",
        RateLimited => "rate_limited",
        UnsupportedMethod => "unsupported_method",
        NotRegistered => "not_registered",
        CredentialMismatch => "credential_mismatch",
        Busy => "busy",
        Unknown => "unknown",
    }
);

label_enum!(
    /// Why a technician's channel open was refused.
    ChannelRefusal {
        DeviceRefused => "device_refused",
        PortNotForwarded => "port_not_forwarded",
        TooManyChannels => "too_many_channels",
        TunnelGone => "tunnel_gone",
        Timeout => "timeout",
    }
);

label_enum!(
    /// Which way relayed bytes went.
    Direction { ToDevice => "to_device", FromDevice => "from_device" }
);

label_enum!(
    /// Why a connection was turned away before it became a tunnel.
    RejectReason {
        ConnectionRate => "connection_rate",
        AuthBackoff => "auth_backoff",
        TlsHandshake => "tls_handshake",
        TooManyTunnels => "too_many_tunnels",
        UuidConflict => "uuid_conflict",
        PendingFull => "pending_full",
        PendingPerSource => "pending_per_source",
        AuthTimeout => "auth_timeout",
        ProxyHeader => "proxy_header",
        FileLimit => "file_limit",
    }
);

label_enum!(
    /// Whether a CIRA TLS handshake was full (a signature by the server key) or resumed from a
    /// session ticket.
    HandshakeKind { Full => "full", Resumed => "resumed" }
);

label_enum!(
    /// A listener of the gateway's own.
    Listener { Cira => "cira", Api => "api" }
);

label_enum!(
    /// Why an `accept` failed.
    AcceptError { OutOfFiles => "out_of_files", Other => "other" }
);

impl AcceptError {
    /// `EMFILE` and `ENFILE` are running out of files; anything else is other.
    pub fn of(err: &std::io::Error) -> AcceptError {
        // EMFILE is 24 and ENFILE 23 on every Unix Tether runs on.
        match err.raw_os_error() {
            Some(23 | 24) => AcceptError::OutOfFiles,
            _ => AcceptError::Other,
        }
    }
}

label_enum!(
    /// Which device record write the journal could not queue.
    StoreWrite { Keepalive => "keepalive", Lifecycle => "lifecycle", Redirection => "redirection" }
);

label_enum!(
    /// The kind of an AMT redirection session a relay carries (from its StartRedirectionSession;
    /// `unknown` when the tap could not tell, e.g. TLS on 16995).
    RedirKind { Sol => "sol", Ider => "ider", Kvm => "kvm", Unknown => "unknown" }
);

label_enum!(
    /// A remote-fix action the gateway took on a device through AMT (WS-MAN), or on its session.
    AmtAction {
        Power => "power",
        Redirection => "redirection",
        Boot => "boot",
        Consent => "consent",
        RescueStart => "rescue_start",
        RescueBoot => "rescue_boot",
        RescueFinish => "rescue_finish",
        SessionClose => "session_close",
        SessionOpen => "session_open",
        Forget => "forget",
        IderStart => "ider_start",
        IderStop => "ider_stop",
    }
);

label_enum!(
    /// How a remote-fix action went.
    AmtOutcome { Ok => "ok", Failed => "failed", Refused => "refused" }
);

impl AmtAction {
    /// The action of an audit record's name (`power.off` → `power`).
    pub fn of(name: &str) -> AmtAction {
        match name.split('.').next().unwrap_or_default() {
            "redirection" => AmtAction::Redirection,
            "boot" => AmtAction::Boot,
            "consent" => AmtAction::Consent,
            "rescue" if name.ends_with("start") => AmtAction::RescueStart,
            "rescue" if name.ends_with("boot") => AmtAction::RescueBoot,
            "rescue" => AmtAction::RescueFinish,
            "session" if name.ends_with("open") => AmtAction::SessionOpen,
            "session" => AmtAction::SessionClose,
            "amt" => AmtAction::Forget,
            "ider" if name.ends_with("start") => AmtAction::IderStart,
            "ider" => AmtAction::IderStop,
            _ => AmtAction::Power,
        }
    }
}

label_enum!(
    /// Why the API turned a request or connection away.
    ApiRejection {
        SourceRate => "source_rate",
        InvalidToken => "invalid_token",
        ExpiredToken => "expired_token",
        Scope => "scope",
        Denied => "denied",
        RelayCap => "relay_cap",
        SessionClosed => "session_closed",
        ConnectionCap => "connection_cap",
        FileLimit => "file_limit",
    }
);

label_enum!(
    /// Why a technician relay ended.
    RelayEnd {
        TechnicianClosed => "technician_closed",
        DeviceClosed => "device_closed",
        IdleTimeout => "idle_timeout",
        MaxDuration => "max_duration",
        PingTimeout => "ping_timeout",
        TokenRevoked => "token_revoked",
        SessionClosed => "session_closed",
        FrameTooLarge => "frame_too_large",
        TunnelGone => "tunnel_gone",
    }
);

label_enum!(
    /// The gateway task whose store operation failed (`tether_store_errors_total`).
    StoreTask { Journal => "journal", Heartbeat => "heartbeat", Health => "health", Api => "api", Delivery => "delivery" }
);

label_enum!(
    /// A machine's health meter (`tether_machines_health`).
    HealthState { Green => "green", Yellow => "yellow", Red => "red" }
);

label_enum!(
    /// A gateway of the fleet as the store records it (`tether_fleet_instances`): live, missing
    /// (not stopped cleanly, heartbeat older than `fleet.stale_after_secs`), or stopped.
    InstanceState { Live => "live", Missing => "missing", Stopped => "stopped" }
);

label_enum!(
    /// How a LAN scan ended.
    LanScanOutcome { Done => "done", Failed => "failed" }
);

label_enum!(
    /// How a PC on the LAN was woken.
    WakeMethod { Amt => "amt", MagicPacket => "magic_packet" }
);

/// The gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tunnels_active: IntGaugeVec,
    tunnels_opened: IntCounterVec,
    tunnels_closed: IntCounterVec,
    auth_failures: IntCounterVec,
    channels_active: IntGauge,
    channel_opens_refused: IntCounterVec,
    relayed_bytes: IntCounterVec,
    tls_handshake: Histogram,
    tls_handshakes: IntCounterVec,
    protocol_errors: IntCounterVec,
    connections_rejected: IntCounterVec,
    accept_errors: IntCounterVec,
    api_requests_limited: IntCounter,
    store_writes_dropped: IntCounterVec,
    pending_connections: IntGauge,
    api_rejected: IntCounterVec,
    relays_closed: IntCounterVec,
    redir_sessions: IntCounterVec,
    redir_active: IntGaugeVec,
    redir_bytes: IntCounterVec,
    redir_auth_failures: IntCounter,
    redir_refused: IntCounterVec,
    redir_tap_errors: IntCounter,
    redir_transcript_dropped: IntCounter,
    amt_actions: IntCounterVec,
    lan_scans: IntCounterVec,
    lan_wakes: IntCounterVec,
    mail: MailMetrics,
    store_errors: IntCounterVec,
    machines_health: IntGaugeVec,
    fleet_instances: IntGaugeVec,
}

/// The mail outbox's worker (`mail::sender`).
#[derive(Debug)]
struct MailMetrics {
    sent: IntCounter,
    failed: IntCounter,
    gave_up: IntCounter,
    pending: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("valid metric definition");
    registry.register(Box::new(metric.clone())).expect("metric registered once");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry.register(Box::new(metric.clone())).expect("metric registered once");
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry.register(Box::new(metric.clone())).expect("metric registered once");
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let tunnels_active =
            IntGaugeVec::new(Opts::new("tether_tunnels_active", "Tunnels established now."), &["kind"])
                .expect("valid metric definition");
        registry.register(Box::new(tunnels_active.clone())).expect("metric registered once");
        let tunnels_opened = counter_vec(&registry, "tether_tunnels_opened_total", "Tunnels established.", &["kind"]);
        let tunnels_closed = counter_vec(
            &registry,
            "tether_tunnels_closed_total",
            "Established tunnels closed, by reason.",
            &["kind", "reason"],
        );
        let auth_failures = counter_vec(
            &registry,
            "tether_auth_failures_total",
            "Failed device authentications, by reason.",
            &["reason"],
        );
        let channels_active =
            IntGauge::new("tether_channels_active", "Relay channels open now.").expect("valid metric");
        registry.register(Box::new(channels_active.clone())).expect("metric registered once");
        let channel_opens_refused = counter_vec(
            &registry,
            "tether_channel_opens_refused_total",
            "Technician channel opens that failed, by reason.",
            &["reason"],
        );
        let relayed_bytes = counter_vec(
            &registry,
            "tether_relayed_bytes_total",
            "Channel payload bytes relayed, by direction.",
            &["direction"],
        );
        // Buckets at the thresholds that matter: a LAN handshake takes milliseconds, a far-away
        // device tens to hundreds; past a second something is wrong, and 10 s is our timeout.
        let tls_handshake = Histogram::with_opts(
            HistogramOpts::new("tether_tls_handshake_duration_seconds", "CIRA TLS handshake duration.")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .expect("valid metric definition");
        registry.register(Box::new(tls_handshake.clone())).expect("metric registered once");
        let tls_handshakes = counter_vec(
            &registry,
            "tether_tls_handshakes_total",
            "Completed CIRA TLS handshakes: full (the server key signs) or resumed (a session ticket).",
            &["kind"],
        );
        for kind in HandshakeKind::ALL {
            tls_handshakes.with_label_values(&[kind.as_str()]);
        }
        let protocol_errors = counter_vec(
            &registry,
            "tether_apf_protocol_errors_total",
            "APF protocol errors by peers, by kind.",
            &["kind"],
        );
        let connections_rejected = counter_vec(
            &registry,
            "tether_connections_rejected_total",
            "Connections turned away before becoming tunnels, by reason.",
            &["reason"],
        );
        let accept_errors = counter_vec(
            &registry,
            "tether_accept_errors_total",
            "Failed accepts on the gateway's listeners (out_of_files: the open-files limit), by listener and kind.",
            &["listener", "kind"],
        );
        for listener in Listener::ALL {
            for kind in AcceptError::ALL {
                accept_errors.with_label_values(&[listener.as_str(), kind.as_str()]);
            }
        }
        // The process's CPU, memory and open files (process_open_fds, process_max_fds).
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("metric registered once");
        let api_requests_limited =
            IntCounter::new("tether_api_requests_limited_total", "API requests refused by the per-token rate limit.")
                .expect("valid metric");
        registry.register(Box::new(api_requests_limited.clone())).expect("metric registered once");

        let store_writes_dropped = counter_vec(
            &registry,
            "tether_store_writes_dropped_total",
            "Device record writes dropped because the store's queue was full, by kind.",
            &["kind"],
        );
        let pending_connections = IntGauge::new(
            "tether_pending_connections",
            "Device connections accepted but not yet authenticated (their own pool).",
        )
        .expect("valid metric");
        registry.register(Box::new(pending_connections.clone())).expect("metric registered once");
        let api_rejected = counter_vec(
            &registry,
            "tether_api_rejected_total",
            "API requests and connections turned away, by reason.",
            &["reason"],
        );
        let relays_closed =
            counter_vec(&registry, "tether_relays_closed_total", "Technician relays ended, by reason.", &["reason"]);
        let redir_sessions = counter_vec(
            &registry,
            "tether_redirection_sessions_total",
            "AMT redirection sessions seen by the relay tap, by kind.",
            &["kind"],
        );
        let redir_active = IntGaugeVec::new(
            Opts::new("tether_redirection_sessions_active", "AMT redirection sessions open now, by kind."),
            &["kind"],
        )
        .expect("valid metric definition");
        registry.register(Box::new(redir_active.clone())).expect("metric registered once");
        let redir_bytes = counter_vec(
            &registry,
            "tether_redirection_bytes_total",
            "Bytes relayed on redirection ports (16994/16995), by session kind and direction.",
            &["kind", "direction"],
        );
        let redir_auth_failures = counter(
            &registry,
            "tether_redirection_auth_failures_total",
            "Redirection sessions whose AMT authentication the device refused.",
        );
        let redir_refused = counter_vec(
            &registry,
            "tether_redirection_refused_total",
            "Redirection sessions the device refused at start (it already has one of that kind), by kind.",
            &["kind"],
        );
        let redir_tap_errors = counter(
            &registry,
            "tether_redirection_tap_errors_total",
            "Relays whose redirection stream the tap could not parse (the relay went on untouched).",
        );
        let redir_transcript_dropped = counter(
            &registry,
            "tether_redirection_transcript_dropped_total",
            "SOL transcript chunks dropped because the transcript writer was behind.",
        );
        let amt_actions = counter_vec(
            &registry,
            "tether_amt_actions_total",
            "Remote-fix actions taken on devices through AMT (WS-MAN) and on their sessions, by action and outcome.",
            &["action", "outcome"],
        );
        for action in AmtAction::ALL {
            for outcome in AmtOutcome::ALL {
                amt_actions.with_label_values(&[action.as_str(), outcome.as_str()]);
            }
        }
        let lan_scans = counter_vec(
            &registry,
            "tether_lan_scans_total",
            "Scans of the appliance's LAN (ARP sweep, RMCP pings, AMT port probes), by outcome.",
            &["outcome"],
        );
        for outcome in LanScanOutcome::ALL {
            lan_scans.with_label_values(&[outcome.as_str()]);
        }
        let lan_wakes = counter_vec(
            &registry,
            "tether_lan_wakes_total",
            "PCs on the LAN woken, by method (AMT's power-on, or a magic packet).",
            &["method"],
        );
        for method in WakeMethod::ALL {
            lan_wakes.with_label_values(&[method.as_str()]);
        }
        let mail = MailMetrics {
            sent: counter(&registry, "tether_mail_sent_total", "Mails an SMTP server accepted."),
            failed: counter(
                &registry,
                "tether_mail_failed_total",
                "Failed attempts at sending a mail (retried later).",
            ),
            gave_up: counter(&registry, "tether_mail_gave_up_total", "Mails given up (too many attempts, or too old)."),
            pending: IntGauge::new("tether_mail_outbox_pending", "Mails in the outbox neither sent nor given up.")
                .expect("valid metric"),
        };
        registry.register(Box::new(mail.pending.clone())).expect("metric registered once");
        let store_errors = counter_vec(
            &registry,
            "tether_store_errors_total",
            "Store operations that failed, by the gateway task that saw the failure.",
            &["task"],
        );
        for task in StoreTask::ALL {
            store_errors.with_label_values(&[task.as_str()]);
        }
        let machines_health = gauge_vec(
            &registry,
            "tether_machines_health",
            "Machines per health meter, as this gateway last counted them in the store (a fleet's gateways share \
             one count: aggregate with max).",
            &["state"],
        );
        for state in HealthState::ALL {
            machines_health.with_label_values(&[state.as_str()]);
        }
        let fleet_instances = gauge_vec(
            &registry,
            "tether_fleet_instances",
            "Gateways of the fleet by state, as this gateway last read them in the store (missing: heartbeat older \
             than fleet.stale_after_secs without a clean stop; aggregate with max).",
            &["state"],
        );
        for state in InstanceState::ALL {
            fleet_instances.with_label_values(&[state.as_str()]);
        }
        for kind in RedirKind::ALL {
            redir_sessions.with_label_values(&[kind.as_str()]);
            redir_active.with_label_values(&[kind.as_str()]);
            redir_refused.with_label_values(&[kind.as_str()]);
            for direction in Direction::ALL {
                redir_bytes.with_label_values(&[kind.as_str(), direction.as_str()]);
            }
        }
        for kind in StoreWrite::ALL {
            store_writes_dropped.with_label_values(&[kind.as_str()]);
        }
        for reason in ApiRejection::ALL {
            api_rejected.with_label_values(&[reason.as_str()]);
        }
        for reason in RelayEnd::ALL {
            relays_closed.with_label_values(&[reason.as_str()]);
        }
        for kind in TunnelKind::ALL {
            tunnels_active.with_label_values(&[kind.as_str()]);
            tunnels_opened.with_label_values(&[kind.as_str()]);
            for reason in CloseReason::ALL {
                tunnels_closed.with_label_values(&[kind.as_str(), reason.as_str()]);
            }
        }
        for reason in AuthFailureReason::ALL {
            auth_failures.with_label_values(&[reason.as_str()]);
        }
        for reason in ChannelRefusal::ALL {
            channel_opens_refused.with_label_values(&[reason.as_str()]);
        }
        for direction in Direction::ALL {
            relayed_bytes.with_label_values(&[direction.as_str()]);
        }
        for kind in ProtocolErrorKind::ALL {
            protocol_errors.with_label_values(&[kind.as_str()]);
        }
        for reason in RejectReason::ALL {
            connections_rejected.with_label_values(&[reason.as_str()]);
        }
        Self {
            registry,
            tunnels_active,
            tunnels_opened,
            tunnels_closed,
            auth_failures,
            channels_active,
            channel_opens_refused,
            relayed_bytes,
            tls_handshake,
            tls_handshakes,
            protocol_errors,
            connections_rejected,
            accept_errors,
            api_requests_limited,
            store_writes_dropped,
            pending_connections,
            api_rejected,
            relays_closed,
            redir_sessions,
            redir_active,
            redir_bytes,
            redir_auth_failures,
            redir_refused,
            redir_tap_errors,
            redir_transcript_dropped,
            amt_actions,
            lan_scans,
            lan_wakes,
            mail,
            store_errors,
            machines_health,
            fleet_instances,
        }
    }

    pub fn store_error(&self, task: StoreTask) {
        self.store_errors.with_label_values(&[task.as_str()]).inc();
    }

    /// The counter of one task's store failures, for a task that holds it (the journal).
    pub fn store_errors_of(&self, task: StoreTask) -> IntCounter {
        self.store_errors.with_label_values(&[task.as_str()])
    }

    /// Sets the machines counted in each health state (a state not in `counts` is 0).
    pub fn machines_health(&self, counts: &[(HealthState, u64)]) {
        for state in HealthState::ALL {
            let n = counts.iter().filter(|(s, _)| s == state).map(|(_, n)| *n).sum::<u64>();
            self.machines_health.with_label_values(&[state.as_str()]).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Sets the fleet's gateways counted in each state.
    pub fn fleet_instances(&self, counts: &[(InstanceState, u64)]) {
        for state in InstanceState::ALL {
            let n = counts.iter().filter(|(s, _)| s == state).map(|(_, n)| *n).sum::<u64>();
            self.fleet_instances.with_label_values(&[state.as_str()]).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    pub fn mail_sent(&self) {
        self.mail.sent.inc();
    }

    pub fn mail_failed(&self) {
        self.mail.failed.inc();
    }

    pub fn mail_gave_up(&self) {
        self.mail.gave_up.inc();
    }

    pub fn mail_pending(&self, pending: u64) {
        self.mail.pending.set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    pub fn tunnel_opened(&self, kind: TunnelKind) {
        self.tunnels_opened.with_label_values(&[kind.as_str()]).inc();
        self.tunnels_active.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn tunnel_closed(&self, kind: TunnelKind, reason: CloseReason) {
        self.tunnels_closed.with_label_values(&[kind.as_str(), reason.as_str()]).inc();
        self.tunnels_active.with_label_values(&[kind.as_str()]).dec();
    }

    pub fn auth_failure(&self, reason: AuthFailureReason) {
        self.auth_failures.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn channel_opened(&self) {
        self.channels_active.inc();
    }

    pub fn channel_closed(&self) {
        self.channels_active.dec();
    }

    pub fn channel_open_refused(&self, reason: ChannelRefusal) {
        self.channel_opens_refused.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn relayed_bytes(&self, direction: Direction, n: u64) {
        if n > 0 {
            self.relayed_bytes.with_label_values(&[direction.as_str()]).inc_by(n);
        }
    }

    pub fn tls_handshake(&self, seconds: f64, kind: HandshakeKind) {
        self.tls_handshake.observe(seconds);
        self.tls_handshakes.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn protocol_error(&self, kind: ProtocolErrorKind) {
        self.protocol_errors.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn connection_rejected(&self, reason: RejectReason) {
        self.connections_rejected.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn accept_failed(&self, listener: Listener, kind: AcceptError) {
        self.accept_errors.with_label_values(&[listener.as_str(), kind.as_str()]).inc();
    }

    pub fn api_request_limited(&self) {
        self.api_requests_limited.inc();
    }

    pub fn store_write_dropped(&self, kind: StoreWrite) {
        self.store_writes_dropped.with_label_values(&[kind.as_str()]).inc();
    }

    /// The gauge of unauthenticated device connections.
    pub fn pending_connections(&self) -> &IntGauge {
        &self.pending_connections
    }

    pub fn api_rejected(&self, reason: ApiRejection) {
        self.api_rejected.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn relay_closed(&self, reason: RelayEnd) {
        self.relays_closed.with_label_values(&[reason.as_str()]).inc();
    }

    /// A redirection session began (its kind is known): counted, and open until
    /// [`Metrics::redirection_ended`].
    pub fn redirection_started(&self, kind: RedirKind) {
        self.redir_sessions.with_label_values(&[kind.as_str()]).inc();
        self.redir_active.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn redirection_ended(&self, kind: RedirKind) {
        self.redir_active.with_label_values(&[kind.as_str()]).dec();
    }

    /// The byte counter of one kind and direction, looked up once per session (the relay adds to
    /// it per chunk).
    pub fn redirection_bytes(&self, kind: RedirKind, direction: Direction) -> IntCounter {
        self.redir_bytes.with_label_values(&[kind.as_str(), direction.as_str()])
    }

    pub fn redirection_auth_failure(&self) {
        self.redir_auth_failures.inc();
    }

    pub fn redirection_refused(&self, kind: RedirKind) {
        self.redir_refused.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn lan_scan(&self, done: bool) {
        let outcome = if done { LanScanOutcome::Done } else { LanScanOutcome::Failed };
        self.lan_scans.with_label_values(&[outcome.as_str()]).inc();
    }

    pub fn lan_wake(&self, method: WakeMethod) {
        self.lan_wakes.with_label_values(&[method.as_str()]).inc();
    }

    pub fn amt_action(&self, action: AmtAction, outcome: AmtOutcome) {
        self.amt_actions.with_label_values(&[action.as_str(), outcome.as_str()]).inc();
    }

    pub fn redirection_tap_error(&self) {
        self.redir_tap_errors.inc();
    }

    pub fn transcript_dropped(&self) {
        self.redir_transcript_dropped.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }

    #[test]
    fn every_labelled_series_is_at_zero_from_the_start() {
        let text = Metrics::new().render();
        let mut expected = vec![
            "tether_channels_active".to_string(),
            "tether_api_requests_limited_total".to_string(),
            "tether_tls_handshake_duration_seconds_count".to_string(),
        ];
        for kind in TunnelKind::ALL {
            expected.push(format!("tether_tunnels_active{{kind=\"{}\"}}", kind.as_str()));
            expected.push(format!("tether_tunnels_opened_total{{kind=\"{}\"}}", kind.as_str()));
            for reason in CloseReason::ALL {
                expected.push(format!(
                    "tether_tunnels_closed_total{{kind=\"{}\",reason=\"{}\"}}",
                    kind.as_str(),
                    reason.as_str()
                ));
            }
        }
        expected.push("tether_pending_connections".to_string());
        expected.push("tether_redirection_auth_failures_total".to_string());
        expected.push("tether_redirection_tap_errors_total".to_string());
        expected.push("tether_redirection_transcript_dropped_total".to_string());
        for series in ["tether_mail_sent_total", "tether_mail_failed_total", "tether_mail_gave_up_total"] {
            expected.push(series.to_string());
        }
        expected.push("tether_mail_outbox_pending".to_string());
        for action in AmtAction::ALL {
            for outcome in AmtOutcome::ALL {
                let (action, outcome) = (action.as_str(), outcome.as_str());
                expected.push(format!("tether_amt_actions_total{{action=\"{action}\",outcome=\"{outcome}\"}}"));
            }
        }
        for outcome in LanScanOutcome::ALL {
            expected.push(format!("tether_lan_scans_total{{outcome=\"{}\"}}", outcome.as_str()));
        }
        for method in WakeMethod::ALL {
            expected.push(format!("tether_lan_wakes_total{{method=\"{}\"}}", method.as_str()));
        }
        for kind in RedirKind::ALL {
            let kind = kind.as_str();
            expected.push(format!("tether_redirection_sessions_total{{kind=\"{kind}\"}}"));
            expected.push(format!("tether_redirection_sessions_active{{kind=\"{kind}\"}}"));
            expected.push(format!("tether_redirection_refused_total{{kind=\"{kind}\"}}"));
            for direction in Direction::ALL {
                let direction = direction.as_str();
                expected.push(format!("tether_redirection_bytes_total{{direction=\"{direction}\",kind=\"{kind}\"}}"));
            }
        }
        let labelled: [(&str, &str, Vec<&str>); 8] = [
            ("tether_auth_failures_total", "reason", AuthFailureReason::ALL.iter().map(|r| r.as_str()).collect()),
            ("tether_channel_opens_refused_total", "reason", ChannelRefusal::ALL.iter().map(|r| r.as_str()).collect()),
            ("tether_relayed_bytes_total", "direction", Direction::ALL.iter().map(|d| d.as_str()).collect()),
            ("tether_apf_protocol_errors_total", "kind", ProtocolErrorKind::ALL.iter().map(|k| k.as_str()).collect()),
            ("tether_connections_rejected_total", "reason", RejectReason::ALL.iter().map(|r| r.as_str()).collect()),
            ("tether_store_writes_dropped_total", "kind", StoreWrite::ALL.iter().map(|r| r.as_str()).collect()),
            ("tether_api_rejected_total", "reason", ApiRejection::ALL.iter().map(|r| r.as_str()).collect()),
            ("tether_relays_closed_total", "reason", RelayEnd::ALL.iter().map(|r| r.as_str()).collect()),
        ];
        for (name, label, values) in labelled {
            expected.extend(values.into_iter().map(|v| format!("{name}{{{label}=\"{v}\"}}")));
        }
        for kind in HandshakeKind::ALL {
            expected.push(format!("tether_tls_handshakes_total{{kind=\"{}\"}}", kind.as_str()));
        }
        for listener in Listener::ALL {
            for kind in AcceptError::ALL {
                let (listener, kind) = (listener.as_str(), kind.as_str());
                expected.push(format!("tether_accept_errors_total{{kind=\"{kind}\",listener=\"{listener}\"}}"));
            }
        }
        for series in &expected {
            assert_eq!(value(&text, &format!("{series} ")), Some(0.0), "{series} missing in:\n{text}");
        }
        // Label values are snake_case words, never data.
        assert!(text.lines().filter(|l| !l.starts_with('#')).all(|l| !l.contains(':') && !l.contains('-')), "{text}");
    }

    #[test]
    fn series_exist_from_the_start_and_move() {
        let metrics = Metrics::new();
        let text = metrics.render();
        assert_eq!(value(&text, "tether_tunnels_active{kind=\"cira\"}"), Some(0.0));
        assert_eq!(value(&text, "tether_apf_protocol_errors_total{kind=\"window_exceeded\"}"), Some(0.0));
        assert_eq!(value(&text, "tether_auth_failures_total{reason=\"bad_password\"}"), Some(0.0));

        metrics.tunnel_opened(TunnelKind::Cira);
        metrics.tunnel_opened(TunnelKind::Cira);
        metrics.tunnel_closed(TunnelKind::Cira, CloseReason::IdleTimeout);
        metrics.auth_failure(AuthFailureReason::BadPassword);
        metrics.relayed_bytes(Direction::ToDevice, 1234);
        metrics.tls_handshake(0.02, HandshakeKind::Resumed);
        let text = metrics.render();
        assert_eq!(value(&text, "tether_tunnels_active{kind=\"cira\"}"), Some(1.0));
        assert_eq!(value(&text, "tether_tunnels_closed_total{kind=\"cira\",reason=\"idle_timeout\"}"), Some(1.0));
        assert_eq!(value(&text, "tether_auth_failures_total{reason=\"bad_password\"}"), Some(1.0));
        assert_eq!(value(&text, "tether_relayed_bytes_total{direction=\"to_device\"}"), Some(1234.0));
        assert_eq!(value(&text, "tether_tls_handshake_duration_seconds_count"), Some(1.0));
    }
}
