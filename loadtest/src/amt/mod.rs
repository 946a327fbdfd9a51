//! Simulated Intel AMT devices: the CIRA side of a gateway, for tests and load tests.
//!
//! A device dials a gateway (TCP, then TLS; the next of its gateway addresses when that fails),
//! runs an APF tunnel with [`protocols::session::ClientSession`], serves the channels the gateway
//! opens with pluggable [`Service`]s (echo, an AMT-like HTTP/WS-MAN responder), and reconnects
//! with back-off when the tunnel drops. A fleet runs many devices in one process, one task each.
//! A LAN device ([`lan`]) serves the same services on sockets of its own, as a PC on a LAN does.
//!
//! Modules, one per concern:
//! - [`config`]: [`DeviceConfig`], what one device is and where it dials ([`GatewayAddr`]);
//! - [`tls`]: the rustls client configuration (a CA file, or accept any certificate);
//! - [`device`]: [`run_device`], the per-device driver (connect, move on to the next gateway
//!   address, tunnel, reconnect);
//! - [`service`]: the [`Service`] / [`ChannelHandler`] traits and the port → service map;
//!   [`channel`]: one channel's handler and buffers as a driver runs them ([`HandlerChannel`]);
//! - [`echo`]: the echo service; [`http`]: the AMT-like HTTP responder (ports 16992/16993) that
//!   does not check credentials; [`wsman`]: the WS-MAN responder amt-sim runs there, with digest
//!   authentication and the per-device firmware state (power, boot, redirection, consent);
//! - [`expose`]: [`ExposeService`], a port whose channels are carried over TCP to a fixed address
//!   (`amt-sim --expose`, for benchmarks through the gateway);
//! - [`redirection`]: SOL (a shell on a pseudo-terminal) and IDE-R (a simulated BIOS booting
//!   from the console's media) on 16994/16995;
//! - [`lan`]: [`serve_lan`], one device that listens on its LAN instead of dialling a gateway
//!   (TLS 16993/16995, optionally plain 16992/16994, RMCP presence on UDP 623);
//! - [`fleet`]: [`run_fleet`], N devices with distinct UUIDs and a progress display;
//! - [`stats`]: counters shared by the devices of a fleet; [`backoff`]: reconnect delays;
//! - [`blip`]: a simulated network blip (every connection drops at once, devices redial at once);
//! - [`shutdown`]: the stop signal; [`error`]: the error types.

pub mod backoff;
pub mod blip;
pub mod channel;
pub mod config;
pub mod device;
pub mod echo;
pub mod error;
pub mod expose;
pub mod fleet;
pub mod http;
pub mod lan;
pub mod redirection;
pub mod service;
pub mod shutdown;
pub mod stats;
pub mod tls;
pub mod tls_service;
pub mod wsman;

pub use backoff::{Backoff, ReconnectPolicy};
pub use blip::{blip_pair, Blip, BlipTrigger};
pub use channel::{HandlerChannel, Step};
pub use config::{
    amt_services, amt_services_with_firmware, amt_services_with_redirection, DeviceConfig, GatewayAddr, RemoteHelp,
};
pub use device::{run_connection, run_device, run_device_with_stats, ConnectionOutcome, DeviceReport};
pub use echo::Echo;
pub use error::{ConnectionError, DeviceError, FleetError, LanError, TlsSetupError};
pub use expose::ExposeService;
pub use fleet::{device_uuid, progress_bar, run_fleet, FleetConfig, FleetReport, Progress};
pub use http::HttpResponder;
pub use lan::{serve_lan, LanConfig, LanDevice, LanPorts};
pub use redirection::{RedirectionConfig, RedirectionService, SerialConsoles};
pub use service::{ChannelHandler, ChannelInfo, ChannelWaker, Outbox, Service, Services, WakeSet};
pub use shutdown::{shutdown_pair, Shutdown, ShutdownTrigger};
pub use stats::{Stats, StatsSnapshot};
pub use tls::{client_config, default_server_name, server_name, with_own_sessions, Trust};
pub use tls_service::{self_signed_config, TlsService};
pub use wsman::{Firmware, FirmwareConfig, WsmanService};
