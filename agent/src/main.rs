//! `tether-agent`: the Tether agent for PCs. See `docs/agents.md`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use uuid::Uuid;

use agent::actions::results::ResultSpool;
use agent::collect::{CollectorConfig, Collectors};
use agent::conn::{self, Agent};
use agent::inbox::{self, EntryKind};
use agent::policy::LocalPolicy;
use agent::state::{self, StateDir};

#[derive(Parser, Debug)]
#[command(
    name = "tether-agent",
    version,
    about = "The Tether agent: dials out to a Tether gateway over QUIC, reports this PC's support parameters, and lets the PC user allow remote help"
)]
struct Cli {
    /// Where the agent keeps its key, certificate, state and unsent reports.
    #[arg(long, global = true, env = "TETHER_AGENT_STATE_DIR", default_value = state::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Log lines on stderr: `text` (coloured only on a terminal) or `json` (one object per line,
    /// its fields at the top level).
    #[arg(long, global = true, env = "TETHER_AGENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Enroll this PC with a gateway, with the one-time token the subscriber got for it; prints
    /// the machine's UUID to read out to the technician.
    Enroll {
        /// The gateway, HOST[:PORT] (port 4433 by default).
        #[arg(long)]
        gateway: String,
        /// The enrollment token (`tether machine enroll`, the API or the portal gives it).
        #[arg(long, env = "TETHER_AGENT_TOKEN")]
        token: String,
        /// The CA the gateway's certificate chains to (the gateway's `tls/ca.pem`); default: the
        /// system's trusted roots.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The machine's UUID, for a PC whose SMBIOS UUID is missing or shared (clones, some
        /// virtual machines); default: SMBIOS's, else one generated and kept.
        #[arg(long)]
        uuid: Option<Uuid>,
    },
    /// Run the agent (the service: `systemctl enable --now tether-agent` after enrolling).
    Run {
        /// Collector settings (TOML); default: `STATE_DIR/agent.toml` when present.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The PC's local policy (TOML: which support actions run, which ports relayed sessions
        /// may reach); default: `STATE_DIR/policy.toml`; a missing file is the defaults.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Allow remote help (relayed sessions and support actions) on this PC.
    Enable,
    /// Refuse remote help: the gateway refuses relayed sessions to this PC and says why.
    Disable,
    /// What this agent is and last did.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Messages and instructions from your support contacts, newest first; those shown are
    /// marked read (the gateway is told).
    Messages {
        /// Only those not read yet.
        #[arg(long)]
        unread: bool,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch a content item the root published (signatures, a script, a rescue image) from this
    /// PC's gateway. It is kept only once the root's signature (the key pinned at enrollment), its
    /// size and its SHA-256 check out; an interrupted download goes on when run again.
    Content {
        #[command(subcommand)]
        action: ContentAction,
    },
    /// Print the shell completion script for SHELL on stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (tether-agent.1 and one per command) into DIR.
    Manpages { dir: PathBuf },
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs on stderr: plain text, coloured only for a terminal without `NO_COLOR`; or JSON lines.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,quinn=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).init()
        }
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).init(),
    }
}

fn when(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

fn messages(state: &StateDir, unread: bool, json: bool) -> Result<()> {
    let entries: Vec<_> = inbox::list(state)?.into_iter().filter(|(_, read)| !unread || !read).collect();
    if json {
        let list: Vec<_> = entries
            .iter()
            .map(|(e, read)| {
                serde_json::json!({
                    "id": e.id,
                    "kind": e.kind,
                    "from": e.from,
                    "text": e.text,
                    "issued_at": e.issued_at,
                    "expires_at": e.expires_at,
                    "received_at": e.received_at,
                    "read": read,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if entries.is_empty() {
        println!("{}", if unread { "no unread messages" } else { "no messages" });
    } else {
        for (i, (entry, read)) in entries.iter().enumerate() {
            if i > 0 {
                println!();
            }
            let kind = match entry.kind {
                EntryKind::Message => "message",
                EntryKind::Instructions => "instructions",
            };
            let new = if *read { "" } else { " (new)" };
            println!("{kind} from {}, {}{new}", entry.from, when(entry.issued_at));
            for line in entry.text.lines() {
                println!("    {line}");
            }
        }
    }
    for (entry, read) in &entries {
        if !read {
            inbox::mark_read(state, entry.id)?;
        }
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

#[derive(Debug, Subcommand)]
enum ContentAction {
    /// Fetch NAME into OUT (default: NAME in the current directory).
    Get {
        name: String,
        /// Where to keep it.
        #[arg(long, short)]
        out: Option<std::path::PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "tether-agent", &mut std::io::stdout());
            return Ok(());
        }
        Command::Manpages { dir } => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))?;
            println!("man pages written to {}", dir.display());
            return Ok(());
        }
        _ => {}
    }
    let state = StateDir::open(&cli.state_dir)?;
    match cli.command {
        Command::Enroll { gateway, token, ca, uuid } => {
            let (uuid, origin) = match uuid {
                Some(uuid) => (uuid, "given"),
                None => state::machine_uuid(&state)?,
            };
            let enrollment = conn::enroll(&state, &gateway, &token, ca.as_deref(), uuid, &hostname()).await?;
            println!("enrolled with {} (gateways: {})", gateway, enrollment.gateways.join(", "));
            println!("this PC's UUID ({origin}); read it to your technician:");
            println!("{}", enrollment.uuid);
            Ok(())
        }
        Command::Run { config, policy } => {
            let policy_path = policy.unwrap_or_else(|| LocalPolicy::default_path(state.root()));
            let policy = LocalPolicy::load(&policy_path)?;
            let path = config.unwrap_or_else(|| state.path("agent.toml"));
            let mut collectors = if path.exists() {
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                toml::from_str::<CollectorConfig>(&text).with_context(|| format!("{}", path.display()))?
            } else {
                CollectorConfig::default()
            };
            if collectors.state_dir == CollectorConfig::default().state_dir {
                collectors.state_dir = state.root().to_path_buf();
            }
            let source = Arc::new(Collectors::new(collectors));
            let agent = Agent::new(state, source, hostname(), os_name())?.with_policy(policy);
            agent.run(shutdown()).await
        }
        Command::Enable | Command::Disable => {
            let enabled = matches!(cli.command, Command::Enable);
            let mut current = state.state()?;
            current.remote_help = enabled;
            state.save_state(&current)?;
            if enabled {
                println!("remote help is on: technicians of your support contacts may open sessions to this PC");
            } else {
                println!("remote help is off: the gateway refuses sessions to this PC and tells the technician why");
            }
            Ok(())
        }
        Command::Status { json } => {
            let enrollment = state.enrollment()?;
            let current = state.state()?;
            let status = state.status()?.unwrap_or_default();
            let spooled = agent::spool::Spool::new(state.spool_dir()).len();
            let results = ResultSpool::at(state.path("results")).len();
            let unread = inbox::list(&state)?.iter().filter(|(_, read)| !read).count();
            let config = state.config()?;
            if json {
                let value = serde_json::json!({
                    "enrolled": enrollment.is_some(),
                    "uuid": enrollment.as_ref().map(|e| e.uuid),
                    "gateways": enrollment.as_ref().map(|e| e.gateways.clone()).unwrap_or_default(),
                    // The root's key pinned at enrollment: it must have signed configuration,
                    // actions and content.
                    "signing_key": enrollment.as_ref().map(|e| e.signing_key.clone()),
                    "remote_help": current.remote_help,
                    "next_seq": current.next_seq,
                    "spooled_reports": spooled,
                    "waiting_action_results": results,
                    "unread_messages": unread,
                    "heartbeat_secs": config.as_ref().map(|c| c.heartbeat_secs),
                    "connected_to": status.connected_to,
                    "last_ack": status.last_ack,
                    "last_error": status.last_error,
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
                return Ok(());
            }
            match &enrollment {
                Some(e) => println!("UUID {}\ngateways {}", e.uuid, e.gateways.join(", ")),
                None => println!("not enrolled: run `tether-agent enroll --gateway HOST --token TOKEN`"),
            }
            println!("remote help {}", if current.remote_help { "on" } else { "off" });
            println!("reports waiting for the gateway: {spooled}");
            println!("action results waiting for the gateway: {results}");
            if unread > 0 {
                println!("unread messages: {unread} (read them with `tether-agent messages`)");
            } else {
                println!("unread messages: 0");
            }
            match (&status.connected_to, &status.last_error) {
                (Some(to), _) => println!("connected to {to}"),
                (None, Some(err)) => println!("not connected: {err}"),
                (None, None) => println!("not connected (is `tether-agent run` running?)"),
            }
            Ok(())
        }
        Command::Messages { unread, json } => messages(&state, unread, json),
        Command::Content { action: ContentAction::Get { name, out, json } } => {
            let out = out.unwrap_or_else(|| std::path::PathBuf::from(&name));
            let progress = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
            let fetched = conn::content::get(&state, &name, &out, None, progress).await?;
            let manifest = &fetched.manifest;
            if json {
                let value = serde_json::json!({
                    "name": manifest.name,
                    "kind": manifest.kind.name(),
                    "size": manifest.size,
                    "sha256": hex::encode(manifest.sha256),
                    "published_at": manifest.published_at,
                    "path": fetched.path,
                    "gateway": fetched.gateway,
                    "resumed_from": fetched.resumed_from,
                    "verified": true,
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!(
                    "{} ({}, {} bytes, SHA-256 {}) from {}: signed by the root, verified; saved to {}",
                    manifest.name,
                    manifest.kind.name(),
                    manifest.size,
                    hex::encode(manifest.sha256),
                    fetched.gateway,
                    fetched.path.display()
                );
            }
            Ok(())
        }
        Command::Completions { .. } | Command::Manpages { .. } => {
            unreachable!("handled before the state dir is opened")
        }
    }
}

async fn shutdown() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
