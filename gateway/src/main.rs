//! `tether`: the gateway daemon and its operator and technician commands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tether_gateway::client::ApiClient;
use tether_gateway::store::Store;
use tether_gateway::{auth, daemon, forward, paths};
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(name = "tether", version, about = "Tether: edge relay and protocol gateway for AMT and agent PCs behind NAT")]
struct Cli {
    /// The gateway's data dir (database, certificates, run files).
    #[arg(long, global = true, env = "TETHER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The gateway API, e.g. https://gateway.example:8443 (technician commands).
    #[arg(long, global = true, env = "TETHER_API")]
    api: Option<String>,
    /// An API token from `tether token create` (technician commands).
    #[arg(long, global = true, env = "TETHER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The CA certificate to trust for the API (the gateway's `tls/ca.pem`).
    #[arg(long, global = true, env = "TETHER_CA")]
    ca: Option<PathBuf>,
    /// The name the API's certificate must carry, when it differs from the host in --api.
    #[arg(long, global = true, env = "TETHER_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway daemon.
    Gateway {
        /// Configuration file (default: DATA_DIR/tether.toml; missing means defaults).
        #[arg(long, env = "TETHER_CONFIG")]
        config: Option<PathBuf>,
        /// Where AMT devices connect (CIRA, TLS). Default 0.0.0.0:4433.
        #[arg(long, env = "TETHER_CIRA_LISTEN")]
        cira_listen: Option<SocketAddr>,
        /// The technician API (HTTPS). Default 0.0.0.0:8443.
        #[arg(long, env = "TETHER_API_LISTEN")]
        api_listen: Option<SocketAddr>,
        /// Prometheus metrics (plain HTTP). Default 127.0.0.1:9464.
        #[arg(long, env = "TETHER_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        /// Extra DNS name or IP address for the generated server certificate (repeatable; used
        /// when the certificate is first created).
        #[arg(long = "tls-name")]
        tls_names: Vec<String>,
    },
    /// The MPS username and password AMT devices authenticate with.
    MpsCredentials {
        #[command(subcommand)]
        action: MpsCredentialsAction,
    },
    /// Register a device, or show one.
    Device {
        #[command(subcommand)]
        action: DeviceAction,
    },
    /// API tokens for technicians.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// List the devices the gateway knows.
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Expose a device port on this machine through the gateway.
    Forward {
        uuid: Uuid,
        port: u16,
        /// Local address to listen on (default 127.0.0.1:PORT).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

#[derive(Subcommand, Debug)]
enum MpsCredentialsAction {
    /// Set the gateway-wide MPS username and password (what you configure in AMT).
    Set { username: String, password: String },
}

#[derive(Subcommand, Debug)]
enum DeviceAction {
    /// Register a device by UUID, optionally with its own MPS password.
    Add {
        uuid: Uuid,
        #[arg(long, env = "TETHER_DEVICE_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Show what the gateway knows of one device (through the API).
    Show {
        uuid: Uuid,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Create a token; it is printed once, alone on the last line.
    Create { name: String },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let daemon_mode = matches!(cli.command, Command::Gateway { .. });
    init_logging(daemon_mode);
    let data_dir = cli.data_dir.clone().unwrap_or_else(paths::default_data_dir);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(cli, &data_dir))
}

fn init_logging(daemon_mode: bool) {
    let default = if daemon_mode { "info" } else { "warn,tether_gateway::forward=info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

async fn run(cli: Cli, data_dir: &Path) -> Result<()> {
    match cli.command {
        Command::Gateway { config, cira_listen, api_listen, metrics_listen, tls_names } => {
            let overrides =
                daemon::ListenOverrides { cira: cira_listen, api: api_listen, metrics: metrics_listen, tls_names };
            daemon::run(data_dir, config, overrides).await
        }
        Command::MpsCredentials { action: MpsCredentialsAction::Set { username, password } } => {
            if username.is_empty() || password.is_empty() {
                bail!("the MPS username and password must not be empty");
            }
            let store = open_store(data_dir)?;
            store.set_mps_credentials(&username, &auth::hash_password(password.as_bytes())?)?;
            println!("MPS credentials set: AMT devices now authenticate as {username}");
            Ok(())
        }
        Command::Device { action: DeviceAction::Add { uuid, password } } => {
            let store = open_store(data_dir)?;
            let hash = password.map(|p| auth::hash_password(p.as_bytes())).transpose()?;
            store.add_device(uuid, hash.as_deref())?;
            match hash {
                Some(_) => println!("device {uuid} registered with its own MPS password"),
                None => println!("device {uuid} registered (authenticates with the gateway-wide MPS password)"),
            }
            Ok(())
        }
        Command::Token { action: TokenAction::Create { name } } => {
            let store = open_store(data_dir)?;
            let token = auth::new_token();
            store.create_token(&name, &auth::hash_token(&token))?;
            println!("API token {name:?} created. It is shown once; keep it safe:");
            println!("{token}");
            Ok(())
        }
        Command::Devices { json } => {
            let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
            let devices = client.get_json("/api/v1/devices").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
            } else {
                print_table(&devices);
            }
            Ok(())
        }
        Command::Device { action: DeviceAction::Show { uuid, json } } => {
            let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
            let device = client.get_json(&format!("/api/v1/devices/{uuid}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&device)?);
            } else if let Some(map) = device.as_object() {
                for (key, value) in map {
                    println!("{key:24} {}", plain(value));
                }
            }
            Ok(())
        }
        Command::Forward { uuid, port, listen } => {
            let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
            let listen = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], port)));
            forward::run(client, uuid, port, listen).await
        }
    }
}

fn open_store(data_dir: &Path) -> Result<Store> {
    paths::ensure_data_dir(data_dir)?;
    let path = paths::database(data_dir);
    Store::open(&path).with_context(|| format!("opening the store {}", path.display()))
}

/// Technician commands: explicit --api/--token/--ca, or the gateway running on this machine.
fn api_client(
    api: &Option<String>,
    token: &Option<String>,
    ca: &Option<PathBuf>,
    server_name: &Option<String>,
    data_dir: &Path,
) -> Result<ApiClient> {
    match api {
        Some(api) => {
            let token = token.as_deref().context("--api needs --token (or TETHER_TOKEN)")?;
            let ca = ca.clone().unwrap_or_else(|| paths::ca_cert(data_dir));
            ApiClient::new(api, token, &ca, server_name.as_deref())
        }
        None => {
            let local = paths::local_gateway(data_dir)?;
            let token = token.clone().unwrap_or(local.token);
            let ca = ca.clone().unwrap_or(local.ca);
            ApiClient::new(&format!("https://{}", local.api), &token, &ca, server_name.as_deref())
        }
    }
}

fn plain(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_table(devices: &serde_json::Value) {
    let empty = Vec::new();
    let devices = devices.as_array().unwrap_or(&empty);
    if devices.is_empty() {
        println!("no devices yet: point an AMT device at this gateway (see README)");
        return;
    }
    println!("{:36}  {:9}  {:25}  {:22}  PORTS", "UUID", "CONNECTED", "LAST HELLO", "REMOTE");
    for d in devices {
        let ports = d
            .get("ports")
            .and_then(|p| p.as_array())
            .map(|p| p.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        println!(
            "{:36}  {:9}  {:25}  {:22}  {}",
            plain(&d["uuid"]),
            if d["connected"].as_bool() == Some(true) { "yes" } else { "no" },
            plain(&d["last_hello"]),
            plain(&d["remote_addr"]),
            ports
        );
    }
}
