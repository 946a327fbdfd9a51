//! Error types: setting up TLS, one connection's end, a device giving up, a fleet failing.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use protocols::session::CloseCause;
use uuid::Uuid;

/// The TLS client configuration could not be built (our side is misconfigured).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read the CA file {path}: {source}")]
    ReadCa { path: PathBuf, source: io::Error },
    #[error("{origin} is not valid PEM: {detail}")]
    BadPem { origin: String, detail: String },
    #[error("{origin} holds no certificate (expected one or more -----BEGIN CERTIFICATE----- blocks)")]
    NoCertificates { origin: String },
    #[error("{origin} holds a certificate that cannot be a trust anchor: {detail}")]
    BadCertificate { origin: String, detail: String },
    #[error("{name:?} is neither a DNS name nor an IP address (give --server-name)")]
    InvalidServerName { name: String },
    #[error("TLS setup: {0}")]
    Rustls(rustls::Error),
}

/// A LAN device could not bind one of its sockets (the address is not this machine's, the port
/// is taken, or it is below 1024 and we lack the privilege).
#[derive(Debug, thiserror::Error)]
pub enum LanError {
    #[error("cannot bind {proto} {addr}: {source}{}", privileged_hint(*addr))]
    Bind { proto: &'static str, addr: std::net::SocketAddr, source: io::Error },
}

fn privileged_hint(addr: std::net::SocketAddr) -> &'static str {
    if addr.port() != 0 && addr.port() < 1024 {
        " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    } else {
        ""
    }
}

/// Why one connection attempt failed or one connection ended. The device logs it and reconnects.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("cannot resolve {addr}: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("{addr} resolves to no address")]
    NoAddress { addr: String },
    #[error("{addr} resolves to no address of the family of the source address {local}")]
    NoAddressForSource { addr: String, local: IpAddr },
    #[error("cannot bind to the source address {local}: {source} (is it an address of this machine?)")]
    Bind { local: IpAddr, source: io::Error },
    #[error("TCP connect to {addr} timed out after {:.1}s", timeout.as_secs_f64())]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("TCP connect to {addr} failed: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("TLS handshake with {addr} timed out after {:.1}s", timeout.as_secs_f64())]
    TlsTimeout { addr: String, timeout: Duration },
    #[error("TLS handshake with {addr} failed: {source}{hint}")]
    Tls { addr: String, source: io::Error, hint: &'static str },
    #[error("the gateway closed the connection")]
    PeerClosed,
    #[error("the gateway closed the connection without TLS close_notify")]
    PeerReset,
    #[error("connection error: {0}")]
    Io(io::Error),
    #[error("the gateway read none of our data for {:.0}s", .0.as_secs_f64())]
    WriteStalled(Duration),
    #[error("tunnel closed: {0}")]
    Session(CloseCause),
    #[error("stopped")]
    Shutdown,
    #[error("the firmware dropped the tunnel after a power change")]
    DroppedByFirmware,
    #[error("the connection dropped in a simulated network blip")]
    Blip,
}

/// Why a device stopped for good (it otherwise reconnects forever).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "device {uuid}: the gateway refused username {username:?} and its password \
         (check --username and --password / AMT_SIM_PASSWORD)"
    )]
    AuthRejected { uuid: Uuid, username: String },
    #[error("device {uuid}: {end} (not reconnecting: --no-reconnect)")]
    ConnectionEnded {
        uuid: Uuid,
        /// Whether the tunnel had been established before it ended.
        established: bool,
        end: ConnectionError,
    },
    #[error("device {uuid}: no gateway address to dial")]
    NoGateway { uuid: Uuid },
}

/// Why a fleet stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("a fleet needs at least one device (count is 0)")]
    Empty,
    #[error("device task failed: {0}")]
    Task(String),
}
