//! The Tether gateway: the appliance daemon (`tether gateway`) and the operator and technician
//! commands of the `tether` binary. One module per role of the daemon:
//!
//! - `cira`: the CIRA listener and the per-tunnel driver of the APF session;
//! - `registry`: live tunnels by UUID and the channel handles technicians use;
//! - `relay`: a technician WebSocket piped to a tunnel channel;
//! - `api`: the HTTPS API and the metrics endpoint;
//! - `store` and `journal`: the SQLite store and the ordered writer of device events;
//! - `auth`, `certs`, `limits`, `metrics`, `config`: credentials, TLS material, rate limits,
//!   Prometheus metrics and configuration;
//! - `daemon`: wiring it all together; `client` and `forward`: the technician's side.

pub mod api;
pub mod auth;
pub mod certs;
pub mod cira;
pub mod client;
pub mod config;
pub mod daemon;
pub mod forward;
pub mod journal;
pub mod limits;
pub mod metrics;
pub mod paths;
pub mod registry;
pub mod relay;
pub mod store;
