//! The Tether agent as a library: what `tether-agent` runs, and what the load generator's agents
//! scenario reuses with synthetic collectors.
//!
//! - [`collect`]: the collectors of support parameters (Linux; Windows decoding behind `cfg`);
//! - [`conn`]: enrollment and the service's connection to its gateways (QUIC);
//! - [`link`]: the transport (QUIC, else TLS over TCP) and the control stream;
//! - [`spool`]: reports kept on disk until the gateway acknowledges them;
//! - [`state`]: the state dir (key, certificate, enrollment, consent, status);
//! - [`policy`]: the PC's local policy (`policy.toml`): which actions run, which ports forward;
//! - [`actions`]: signed support actions: checks, replay ledger, scripts, results spool;
//! - [`inbox`]: messages and instructions for the PC user;
//! - [`relay`]: relayed sessions to local ports;
//! - [`signature`]: checking what the gateway signs.

pub mod actions;
pub mod collect;
pub mod conn;
pub mod inbox;
pub mod link;
pub mod policy;
pub mod relay;
pub mod signature;
pub mod spool;
pub mod state;
