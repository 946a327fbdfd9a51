//! The Tether gateway: the appliance daemon (`tether gateway`) and the operator and technician
//! commands of the `tether` binary. One module per role of the daemon.

pub mod auth;
pub mod certs;
pub mod config;
pub mod limits;
pub mod metrics;
pub mod store;
