//! Test harness for Tether's end-to-end tests. It starts the real binaries and real peers; it
//! builds nothing (run `cargo build --release --workspace --bins` before
//! `cargo test --release --workspace`, as `scripts/test.sh` does).
//!
//! - [`process`]: the `tether` gateway with a fresh data dir ([`Gateway`]), `amt-sim` ([`Sim`]),
//!   `tether forward` ([`Forward`]), the CLI; child processes killed on drop ([`Process`]), with
//!   their output kept for failure messages; [`wait_for`] with a deadline.
//! - [`netns`]: "behind NAT" for real, with network namespaces, veth pairs and nftables
//!   masquerading ([`netns::Topology`]; needs root).
//! - [`lan`]: an office LAN of namespaces on a bridge — the appliance, simulated AMT PCs, a plain
//!   host — and a technician beside it ([`lan::LanTopology`]; needs root).
//! - [`meshcentral`]: MeshCentral from npm, offline on loopback, as a real MPS peer.
//! - [`browser`]: the portal in headless Chromium, driven by `playwright-core` scripts
//!   (`tests/browser/`), one step per call ([`browser::browser_step`]).
//! - [`api`]: the technician API from a chosen loopback source, with any token: HTTPS requests
//!   that report status codes, relay WebSockets ([`api::ApiClient`]).
//! - [`attack`]: bounded crowds of silent TCP/TLS connections from many loopback sources
//!   ([`attack::SilentCrowd`]), wrong-token storms ([`attack::token_storm`]), open-files limits.
//! - [`metrics`]: one Prometheus sample by its series, absent told apart from zero
//!   ([`metrics::Metrics`], [`Gateway::metrics`]).
//! - [`postgres`]: a throwaway PostgreSQL cluster on a loopback port, a database per test
//!   ([`Postgres`]).
//! - [`haproxy`]: HAProxy in TCP mode in front of several servers, PROXY v2 and health checks
//!   ([`Haproxy`], [`haproxy::Frontend`]).
//!
//! - [`prometheus`]: Debian's Prometheus scraping gateways on loopback, with rules loaded, asked
//!   through its HTTP API ([`prometheus::Prometheus`]).
//! - [`smtp`]: a real SMTP server (aiosmtpd) saving what it receives ([`smtp::Smtp`]).
//! - [`schemathesis`]: schemathesis (PyPI) against a live API's OpenAPI document, with Tether's
//!   own check that every error carries its code ([`schemathesis::Run`]).
//! - [`remote`]: the remote-fix peers: `tether console` / `tether ider` with a keyboard
//!   ([`remote::Interactive`]), Debian's amtterm under `script`, a LAN PC's TLS port
//!   ([`remote::TlsFront`]).
//!
//! Test servers bind only to loopback or to addresses inside namespaces the test creates, and
//! every wait has a timeout.

pub mod agent;
pub mod api;
pub mod appliance;
pub mod attack;
pub mod browser;
pub mod haproxy;
pub mod lan;
pub mod meshcentral;
pub mod metrics;
pub mod netns;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod remote;
pub mod schemathesis;
pub mod smtp;
pub mod webhook;

pub use haproxy::Haproxy;
pub use metrics::Metrics;
pub use postgres::Postgres;
pub use process::{bin, operator_in, poll_until, wait_for, Forward, Gateway, Process, Sim};
