//! What one simulated device is (UUID, credentials, ports, windows, services) and where and how
//! it dials (gateway addresses, TLS, timeouts, reconnect back-off).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protocols::session::ClientConfig;
use rustls::pki_types::ServerName;
use uuid::Uuid;

use super::backoff::ReconnectPolicy;
use super::blip::Blip;
use super::echo::Echo;
use super::http::HttpResponder;
use super::redirection::RedirectionService;
use super::service::{Service, Services};
use super::wsman::{Firmware, WsmanService};

/// One address a device may dial, and the name the certificate it finds there must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayAddr {
    /// `HOST:PORT` of a CIRA listener, resolved at every attempt.
    pub addr: String,
    /// The name the gateway's certificate must match (and the SNI when it is a DNS name).
    pub server_name: ServerName<'static>,
}

impl GatewayAddr {
    pub fn new(addr: impl Into<String>, server_name: ServerName<'static>) -> Self {
        Self { addr: addr.into(), server_name }
    }
}

/// One device's settings. `Clone` is cheap enough to make one per device of a fleet.
#[derive(Clone)]
pub struct DeviceConfig {
    /// The gateways' CIRA listeners, as the MPS list of an AMT CIRA policy: the device dials
    /// `gateways[first_gateway]` first, moves on to the next address (wrapping around) when a TCP
    /// connect or TLS handshake fails, and backs off once every address failed in a row. When a
    /// tunnel drops, it comes back to the address it was using. Never empty.
    pub gateways: Vec<GatewayAddr>,
    /// Index into [`gateways`](Self::gateways) of the address tried first (taken modulo its
    /// length); a fleet gives device `i` the index `i mod n`, to spread its devices.
    pub first_gateway: usize,
    /// Local address every TCP connection is bound to before connecting (any port), so that the
    /// gateway sees the device come from it (e.g. 127.0.0.2); `None` lets the OS choose. Only
    /// gateway addresses of the same family are dialled.
    pub source: Option<IpAddr>,
    pub tls: Arc<rustls::ClientConfig>,
    pub uuid: Uuid,
    pub username: String,
    pub password: String,
    /// Ports to forward, in order (firmware: 16993, 16992, 664, 623, 16995, 16994, 5900).
    pub ports: Vec<u32>,
    /// The receive window advertised per channel.
    pub window: u32,
    /// Consumed bytes that trigger a WINDOW_ADJUST (firmware grants in small steps).
    pub adjust_step: u32,
    /// Keepalive interval until the gateway sets one.
    pub keepalive: Duration,
    pub reconnect: ReconnectPolicy,
    /// Connect once: when that connection ends, or when every address failed once, the device
    /// stops with [`DeviceError::ConnectionEnded`](super::DeviceError::ConnectionEnded) instead of
    /// reconnecting.
    pub no_reconnect: bool,
    pub connect_timeout: Duration,
    pub tls_timeout: Duration,
    /// From the TLS handshake's end to every forward answered.
    pub handshake_timeout: Duration,
    /// Most bytes of unsent output per channel before the device stops taking input on it.
    pub max_pending: usize,
    /// Channels open at once on one tunnel.
    pub max_channels: usize,
    pub services: Services,
    /// Stop (instead of retrying) when the gateway refuses the credentials.
    pub stop_on_auth_failure: bool,
    /// Level of this device's own log lines (`INFO` alone, `DEBUG` in a fleet).
    pub log_level: tracing::Level,
    /// The simulated firmware's state, when it may drop the tunnel (redial on power change):
    /// the driver then also ends the connection when [`Firmware::tunnel_drop`] fires, and dials
    /// again after [`DeviceConfig::redial_delay`].
    pub firmware: Option<Firmware>,
    /// Delay before redialling after the firmware dropped the tunnel (2 s).
    pub redial_delay: Duration,
    /// The PC user's "remote help" request (`--user-initiated`): when set, the device dials only
    /// while it is on, and a tunnel the gateway ends uses it up.
    pub remote_help: Option<RemoteHelp>,
    /// A simulated network blip ([`Blip`]): when it fires, the connection drops without a word
    /// and the device redials at once.
    pub blip: Option<Blip>,
}

/// The ports real AMT firmware forwards, in its order (16993, 16992, 664, 623, 16995, 16994,
/// 5900), as the session's defaults have them.
pub fn firmware_ports() -> Vec<u32> {
    ClientConfig::new(Uuid::nil(), "", "").ports
}

impl DeviceConfig {
    /// A device that dials one gateway, with firmware's defaults: the seven AMT ports, 4 KiB
    /// windows granted back in 512-byte steps, 30 s keepalives, reconnects after 1–30 s, the
    /// default services.
    pub fn new(
        gateway: impl Into<String>,
        server_name: ServerName<'static>,
        tls: Arc<rustls::ClientConfig>,
        uuid: Uuid,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        Self::with_gateways(vec![GatewayAddr::new(gateway, server_name)], tls, uuid, username, password)
    }

    /// Like [`DeviceConfig::new`], for a device that knows several gateway addresses (see
    /// [`DeviceConfig::gateways`]).
    pub fn with_gateways(
        gateways: Vec<GatewayAddr>,
        tls: Arc<rustls::ClientConfig>,
        uuid: Uuid,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        Self {
            gateways,
            first_gateway: 0,
            source: None,
            tls,
            uuid,
            username: username.into(),
            password: password.into(),
            ports: firmware_ports(),
            window: 4096,
            adjust_step: 512,
            keepalive: Duration::from_secs(30),
            reconnect: ReconnectPolicy::default(),
            no_reconnect: false,
            connect_timeout: Duration::from_secs(10),
            tls_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(30),
            max_pending: 256 * 1024,
            max_channels: 16,
            services: amt_services(),
            stop_on_auth_failure: false,
            log_level: tracing::Level::INFO,
            firmware: None,
            redial_delay: Duration::from_secs(2),
            remote_help: None,
            blip: None,
        }
    }

    /// The session settings for one connection.
    pub fn session_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(self.uuid, self.username.clone(), self.password.clone());
        config.ports.clone_from(&self.ports);
        config.channels.window = self.window.max(1);
        config.channels.adjust_threshold = self.adjust_step.clamp(1, config.channels.window);
        config.channels.max_channels = self.max_channels;
        config.keepalive_interval = self.keepalive;
        config.handshake_timeout = self.handshake_timeout;
        // Firmware says why it dials: 1 when the user asked for help, 4 for its periodic dial.
        config.trigger_reason = if self.remote_help.is_some() { 1 } else { 4 };
        config
    }
}

impl fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceConfig")
            .field("gateways", &self.gateways)
            .field("first_gateway", &self.first_gateway)
            .field("source", &self.source)
            .field("uuid", &self.uuid)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("ports", &self.ports)
            .field("window", &self.window)
            .field("adjust_step", &self.adjust_step)
            .field("keepalive", &self.keepalive)
            .field("reconnect", &self.reconnect)
            .field("no_reconnect", &self.no_reconnect)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls_timeout", &self.tls_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_pending", &self.max_pending)
            .field("max_channels", &self.max_channels)
            .field("services", &self.services)
            .field("stop_on_auth_failure", &self.stop_on_auth_failure)
            .field("log_level", &self.log_level)
            .field("redial_delay", &self.redial_delay)
            .field("remote_help", &self.remote_help)
            .field("blip", &self.blip.is_some())
            .finish_non_exhaustive()
    }
}

/// What a simulated AMT answers by default: the HTTP responder on 16992 and 16993, echo on every
/// other port.
pub fn amt_services() -> Services {
    let http: Arc<dyn Service> = Arc::new(HttpResponder::default());
    Services::none().with_shared(16992, http.clone()).with_shared(16993, http).with_fallback(Echo)
}

/// What amt-sim answers: the HTTP responder on 16992 and 16993, `redirection` (SOL and IDE-R) on
/// 16994 and 16995 (the same service, so one session of a kind per device across both ports),
/// echo on every other port.
pub fn amt_services_with_redirection(redirection: RedirectionService) -> Services {
    let redirection: Arc<dyn Service> = Arc::new(redirection);
    amt_services().with_shared(16994, redirection.clone()).with_shared(16995, redirection)
}

/// What amt-sim answers with a firmware state: the WS-MAN responder (digest checked, state kept
/// per device) on 16992 and 16993, `redirection` gated by the same state on 16994 and 16995, echo
/// on every other port.
pub fn amt_services_with_firmware(wsman: WsmanService, redirection: RedirectionService) -> Services {
    let redirection: Arc<dyn Service> = Arc::new(redirection.with_firmware(wsman.firmware.clone()));
    let wsman: Arc<dyn Service> = Arc::new(wsman);
    Services::none()
        .with_shared(16992, wsman.clone())
        .with_shared(16993, wsman)
        .with_shared(16994, redirection.clone())
        .with_shared(16995, redirection)
        .with_fallback(Echo)
}

/// The PC user's "remote help" switch of `--user-initiated` devices. On while
/// [`RemoteHelp::file`] exists when there is one (a test or the user creates it to ask for help),
/// else while the flag is set (SIGUSR1 sets it). Cheap to clone; clones share the switch.
#[derive(Debug, Clone)]
pub struct RemoteHelp {
    flag: Arc<AtomicBool>,
    notify: Arc<tokio::sync::Notify>,
    /// The control file, if remote help is driven by one.
    pub file: Option<PathBuf>,
}

impl RemoteHelp {
    /// A switch that starts on (without a file) or follows `file`.
    pub fn new(file: Option<PathBuf>) -> Self {
        Self { flag: Arc::new(AtomicBool::new(true)), notify: Arc::default(), file }
    }

    /// Whether the user has remote help on.
    pub fn is_on(&self) -> bool {
        match &self.file {
            Some(file) => file.exists(),
            None => self.flag.load(Ordering::SeqCst),
        }
    }

    /// The user asks for help (SIGUSR1; with a control file, it is created).
    pub fn turn_on(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Some(file) = &self.file {
            if let Err(err) = std::fs::write(file, b"on\n") {
                tracing::warn!("cannot create the remote help file {}: {err}", file.display());
            }
        }
        self.notify.notify_waiters();
    }

    /// The request is used up (the gateway ended the tunnel); with a control file, it is removed.
    pub fn turn_off(&self) {
        self.flag.store(false, Ordering::SeqCst);
        if let Some(file) = &self.file {
            if let Err(err) = std::fs::remove_file(file) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove the remote help file {}: {err}", file.display());
                }
            }
        }
    }

    /// Waits until remote help is on (checks the file twice a second).
    pub async fn wait_on(&self) {
        while !self.is_on() {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(500), self.notify.notified()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_help_follows_its_file_or_its_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("help");
        let help = RemoteHelp::new(Some(file.clone()));
        assert!(!help.is_on(), "no file yet");
        help.turn_on();
        assert!(help.is_on() && file.exists());
        help.turn_off();
        assert!(!help.is_on() && !file.exists());
        std::fs::write(&file, "").unwrap();
        assert!(help.clone().is_on(), "the user created the file again");
        let flag = RemoteHelp::new(None);
        assert!(flag.is_on(), "on at start");
        flag.turn_off();
        assert!(!flag.is_on());
        flag.turn_on();
        assert!(flag.is_on());
    }

    #[test]
    fn the_trigger_reason_says_why_the_device_dials() {
        let tls = crate::amt::client_config(&crate::amt::Trust::Insecure).unwrap();
        let name = crate::amt::server_name("localhost").unwrap();
        let mut config = DeviceConfig::new("127.0.0.1:1", name, tls, uuid::Uuid::nil(), "u", "p");
        assert_eq!(config.session_config().trigger_reason, 4, "periodic");
        config.remote_help = Some(RemoteHelp::new(None));
        assert_eq!(config.session_config().trigger_reason, 1, "user-initiated");
    }
}
