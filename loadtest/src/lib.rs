//! Simulators for load-testing and end-to-end testing Tether.
//!
//! - [`amt`]: simulated Intel AMT devices that dial a gateway over TLS and speak APF (CIRA), one
//!   tokio task per device, thousands per process. The `amt-sim` binary is its command line.
//! - [`scenario`]: the scenarios of `tether-loadtest` against a running gateway (idle fleets,
//!   redial storms, bulk streams, latency beside idle tunnels), with worker processes for fleets
//!   larger than one process's open files.
//!
//! The protocol logic lives, without I/O, in [`protocols::session`]; this crate only drives it
//! with sockets, clocks and simulated device services.

/// Logs a per-device line at the device's level: `info` for a lone device, `debug` in a fleet
/// (where the fleet's summary lines are the `info` ones).
macro_rules! device_log {
    ($level:expr, $($arg:tt)+) => {
        if $level == ::tracing::Level::INFO {
            ::tracing::info!($($arg)+)
        } else {
            ::tracing::debug!($($arg)+)
        }
    };
}

/// Like `device_log!`, for problems: `warn` for a lone device, `debug` in a fleet.
macro_rules! device_warn {
    ($level:expr, $($arg:tt)+) => {
        if $level == ::tracing::Level::INFO {
            ::tracing::warn!($($arg)+)
        } else {
            ::tracing::debug!($($arg)+)
        }
    };
}

pub mod amt;
pub mod scenario;
