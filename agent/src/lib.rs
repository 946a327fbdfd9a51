//! The Tether agent as a library: what `tether-agent` runs, and what the load generator's agents
//! scenario reuses with synthetic collectors.
//!
//! - [`collect`]: the collectors of support parameters (Linux; Windows decoding behind `cfg`);
//! - [`conn`]: enrollment and the service's connection to its gateways (QUIC);
//! - [`spool`]: reports kept on disk until the gateway acknowledges them;
//! - [`state`]: the state dir (key, certificate, enrollment, consent, status).

pub mod collect;
pub mod conn;
pub mod link;
pub mod spool;
pub mod state;
