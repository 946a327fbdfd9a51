//! Log lines on stderr, in the format an operator ships: plain text (coloured only when stderr is
//! a terminal and `NO_COLOR` is unset), or JSON lines whose event fields (`uuid`, `remote`,
//! `reason`, `user`, …) are top-level keys beside `timestamp`, `level`, `target` and `message`.
//! The filter is `RUST_LOG`, else the command's default.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber; `default_filter` applies when `RUST_LOG` is unset or invalid.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour_wanted()).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).init(),
    }
}

/// Colour only for a person at a terminal who has not asked for none (<https://no-color.org>).
pub fn colour_wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
