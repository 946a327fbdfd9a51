//! Test harness for Tether's end-to-end tests: the real `tether` and `amt-sim` binaries, started
//! and stopped per test (`process`); network namespaces with NAT (`netns`); MeshCentral as a real
//! MPS (`meshcentral`).

pub mod meshcentral;
pub mod netns;
pub mod process;

pub use process::{bin, wait_for, Forward, Gateway, Process, Sim};
