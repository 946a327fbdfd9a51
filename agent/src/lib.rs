//! The Tether agent as a library: what `tether-agent` runs, and what the load generator's agents
//! scenario reuses with synthetic collectors.
//!
//! - [`collect`]: the collectors of support parameters (Linux; Windows decoding behind `cfg`).

pub mod collect;
