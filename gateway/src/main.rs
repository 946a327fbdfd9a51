//! `tether`: the gateway daemon and its operator and technician commands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use tether_gateway::account_commands::{
    contact_command, machine_command, subscriber_command, user_command, ContactAction, MachineAction, SubscriberAction,
    UserAction,
};
use tether_gateway::logging::{self, LogFormat};
use tether_gateway::mail_commands::{mail_command, MailAction};
use tether_gateway::operator::{
    api_client, fleet_command, import_devices, load_config, open_store, open_store_with, plain, print_table,
    redirections_command, rfc3339, FleetAction, StoreArgs,
};
use tether_gateway::redirect::rescue::{self, AmtArgs, BootDevice, PowerCommand, Toggle};
use tether_gateway::redirect::{self, RedirectArgs};
use tether_gateway::store::{Migrate, TokenScope};
use tether_gateway::support_commands::{action_command, message_command, ActionCommand, MessageCommand};
use tether_gateway::{auth, backup, daemon, exit, forward, lan_commands, paths};
use uuid::Uuid;

/// jemalloc, with its background purging thread switched on in `main`: memory freed after a burst
/// (a reconnect storm of thousands of devices, a flood of silent connections) goes back to the
/// system within seconds. glibc's malloc kept it in per-thread arenas for good.
/// The `system-alloc` feature leaves the system's malloc in place, for heap profilers that hook
/// it (`heaptrack`, valgrind): docs/benchmarks.md profiles per-tunnel memory that way.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(name = "tether", version, about = "Tether: edge relay and protocol gateway for AMT and agent PCs behind NAT")]
struct Cli {
    /// The gateway's data dir (database, certificates, run files).
    #[arg(long, global = true, env = "TETHER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Configuration file (default: DATA_DIR/tether.toml; missing means defaults).
    #[arg(long, global = true, env = "TETHER_CONFIG")]
    config: Option<PathBuf>,
    /// The store: postgres://USER:PASSWORD@HOST:PORT/DB for a fleet's shared PostgreSQL
    /// [default: `database_url` in the configuration, else DATA_DIR/tether.db (SQLite)].
    #[arg(long, global = true, env = "TETHER_DATABASE_URL", hide_env_values = true)]
    database: Option<String>,
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
    /// Log lines on stderr: `text` (plain, coloured only on a terminal) or `json` (one object per
    /// line, its fields at the top level: for a log shipper).
    #[arg(long, global = true, env = "TETHER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum AmtAction {
    /// Forget the remembered AMT account and the pinned TLS certificate of a device (after its
    /// password or certificate changed on purpose).
    Forget { uuid: Uuid },
}

#[derive(Subcommand, Debug)]
enum LanAction {
    /// Find the hosts on a subnet of the gateway's interface IF (an ARP sweep), and which are
    /// Intel AMT (an RMCP presence ping on 623, a probe of 16993 and 16992): their MAC, address,
    /// AMT version and provisioning state, read without credentials. Paced by lan.rate_pps.
    Scan {
        /// The gateway's interface to scan from (one of lan.interfaces; never picked for you).
        #[arg(long, value_name = "IF")]
        interface: String,
        /// The range to sweep, inside the interface's subnet [default: the whole subnet].
        #[arg(long, value_name = "CIDR")]
        cidr: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The hosts scans found on the gateway's LAN, and the devices adopted among them.
    Devices {
        /// Every gateway's LAN, not only this one's.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wake a PC: by MAC, a magic packet (raw frame and UDP broadcast to port 9) on IF; by a
    /// device's UUID, AMT's own power-on when AMT can be reached, else a magic packet to its MAC.
    Wake {
        /// A MAC address (aa:bb:cc:dd:ee:ff) or a device's UUID.
        target: String,
        /// The gateway's interface to send a magic packet on [for a UUID: the one it was found on].
        #[arg(long, value_name = "IF")]
        interface: Option<String>,
        #[command(flatten)]
        amt: AmtArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Adopt the AMT PC at IP as a device of kind `lan`: its UUID is read through WS-MAN with the
    /// admin account (or given with --uuid), and the TLS certificate it shows on 16993 is pinned.
    /// Technicians then reach it like a CIRA PC (forward, console, IDE-R, power, rescue).
    Adopt {
        ip: String,
        /// The PC's UUID, when you vouch for it instead of reading it through WS-MAN.
        #[arg(long)]
        uuid: Option<Uuid>,
        #[command(flatten)]
        amt: AmtArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop reaching an adopted PC.
    Forget { uuid: Uuid },
}

#[derive(Subcommand, Debug)]
enum SessionAction {
    /// End the remote fix: the technicians' relays end, the boot settings `tether rescue`
    /// changed are restored, the outcome and message are recorded, and the device's tunnel ends.
    /// A device that dials on a policy is then refused to technicians until `session open`.
    Close {
        uuid: Uuid,
        /// A message for the record (and the PC user).
        #[arg(long)]
        message: Option<String>,
        #[command(flatten)]
        amt: AmtArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a new session with a device whose session was closed.
    Open { uuid: Uuid },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway daemon.
    Gateway {
        /// Where AMT devices connect (CIRA, TLS). Default 0.0.0.0:4433.
        #[arg(long, env = "TETHER_CIRA_LISTEN")]
        cira_listen: Option<SocketAddr>,
        /// The technician API (HTTPS). Default 0.0.0.0:8443.
        #[arg(long, env = "TETHER_API_LISTEN")]
        api_listen: Option<SocketAddr>,
        /// Prometheus metrics (plain HTTP). Default 127.0.0.1:9464.
        #[arg(long, env = "TETHER_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        /// Where Tether agents connect (QUIC, UDP). Default 0.0.0.0:4433.
        #[arg(long, env = "TETHER_AGENT_LISTEN")]
        agent_listen: Option<SocketAddr>,
        /// Extra DNS name or IP address for the generated server certificate (repeatable; used
        /// when the certificate is first created).
        #[arg(long = "tls-name")]
        tls_names: Vec<String>,
        /// Keep SOL transcripts for audit (DATA_DIR/transcripts; also `record_sol = true`).
        #[arg(long)]
        record_sol: bool,
        /// The silo role (also `silo.role`): all (one gateway or fleet does everything), root
        /// (registration and personal data; issues maintenance certificates) or maintenance
        /// (serves the clients its root's certificates name; `tether silo join` first).
        #[arg(long, value_enum, env = "TETHER_ROLE")]
        role: Option<tether_gateway::silo::Role>,
    },
    /// Silos: a root's maintenance silos and entitlements, a maintenance silo's root and clients
    /// (`docs/silos.md`).
    Silo {
        #[command(subcommand)]
        action: tether_gateway::silo_commands::SiloAction,
    },
    /// The root's signed content: publish an item on a root, list what a gateway holds, fetch
    /// one checked against the root's key (`docs/silos.md`).
    Content {
        #[command(subcommand)]
        action: tether_gateway::content_commands::ContentAction,
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
    /// Signed support actions for agent PCs (a script, or instructions for the PC user): run,
    /// show, list (with your token; `docs/actions.md`).
    Action {
        #[command(subcommand)]
        action: ActionCommand,
    },
    /// Signed messages for the users of agent PCs: send (one machine, a subscriber's, all),
    /// show who received and read them, list.
    Message {
        #[command(subcommand)]
        action: MessageCommand,
    },
    /// A device's AMT redirection sessions (SOL, IDE-R): who, as which AMT user, since when.
    Redirections {
        uuid: Uuid,
        /// Only the sessions open now.
        #[arg(long)]
        active: bool,
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
    /// Open a device's serial console (AMT Serial-over-LAN) in this terminal; Ctrl-] quits.
    Console {
        #[command(flatten)]
        device: RedirectArgs,
    },
    /// Serve a rescue ISO (and/or a floppy image) to a device's virtual drives over AMT IDE-R,
    /// read-only, until Ctrl-C; or have the gateway serve one of its content items
    /// (`--image content:NAME`).
    Ider {
        #[command(flatten)]
        device: RedirectArgs,
        /// An ISO image, served as the CD-ROM; or `content:NAME`, a rescue image published as
        /// the gateway's content (`tether content list`), which the gateway serves itself.
        #[arg(long, value_name = "ISO", required_unless_present = "floppy")]
        image: Option<PathBuf>,
        /// A disk image, served as the floppy / removable disk (512-byte blocks).
        #[arg(long, value_name = "IMAGE")]
        floppy: Option<PathBuf>,
    },
    /// Read or change a device's power through AMT (WS-Management, by the gateway).
    Power {
        uuid: Uuid,
        #[arg(value_enum)]
        action: PowerCommand,
        #[command(flatten)]
        amt: AmtArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Enable or disable a device's SOL and IDE-R (and AMT's redirection listener).
    Redirection {
        uuid: Uuid,
        #[arg(value_enum)]
        state: Toggle,
        #[command(flatten)]
        amt: AmtArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set a device's next boot: from IDE-R's CD or floppy (or none), with SOL or not.
    Boot {
        uuid: Uuid,
        /// The IDE-R device to boot from once.
        #[arg(long, value_enum)]
        ider: BootDevice,
        /// Show the boot on the serial console (Serial-over-LAN).
        #[arg(long)]
        sol: bool,
        #[command(flatten)]
        amt: AmtArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Boot a device from a rescue ISO on this machine (or one the gateway serves from its
    /// content) and watch it on its serial console: checks the device, enables SOL and IDE-R,
    /// serves the image, resets (or powers on) the PC into it, and on exit (Ctrl-]) restores the
    /// boot settings.
    Rescue {
        uuid: Uuid,
        /// The rescue ISO, served as the PC's CD-ROM; or `content:NAME`, a rescue image published
        /// as the gateway's content (`tether content list`), which the gateway serves itself.
        #[arg(long, value_name = "ISO")]
        image: PathBuf,
        /// A disk image, served as the floppy / removable disk.
        #[arg(long, value_name = "IMAGE")]
        floppy: Option<PathBuf>,
        /// On exit, also put SOL and IDE-R back as they were found (off if they were off).
        #[arg(long)]
        disable_redirection: bool,
        #[command(flatten)]
        amt: AmtArgs,
    },
    /// A technician's remote-fix session with a device: close it (ending relays, restoring what
    /// `tether rescue` changed, ending the device's tunnel), or open a new one.
    Session {
        #[command(subcommand)]
        action: SessionAction,
    },
    /// What the gateway keeps to reach a device's AMT.
    Amt {
        #[command(subcommand)]
        action: AmtAction,
    },
    /// The remote-fix actions recorded for a device (who, what, how it went).
    Actions {
        uuid: Uuid,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The gateway's LAN: find AMT PCs, wake them, adopt them as devices (lan.interfaces).
    Lan {
        #[command(subcommand)]
        action: LanAction,
    },
    /// Users (admin, on this data dir's store): add, list, suspend, unsuspend.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Subscribers (admin, on this data dir's store): register, list, terminate.
    Subscriber {
        #[command(subcommand)]
        action: SubscriberAction,
    },
    /// A subscriber's machines (admin, on this data dir's store): enroll.
    Machine {
        #[command(subcommand)]
        action: MachineAction,
    },
    /// A subscriber's support contacts (admin, on this data dir's store): invite, accept,
    /// remove, list.
    Contact {
        #[command(subcommand)]
        action: ContactAction,
    },
    /// Mail (admin, on this data dir's store): the outbox, and a test mail through it.
    Mail {
        #[command(subcommand)]
        action: MailAction,
    },
    /// The store: schema migrations and checks.
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
    /// Save what this gateway cannot lose (CA and keys, configuration, and a consistent copy of a
    /// SQLite store, taken while the gateway runs) to FILE (a .tar.gz, mode 0600).
    Backup { file: PathBuf },
    /// Bring a backup back into the data dir (the gateway must be stopped).
    Restore {
        file: PathBuf,
        /// Replace the CA, keys and database a data dir already holds.
        #[arg(long)]
        force: bool,
    },
    /// Several gateways sharing one PostgreSQL store.
    Fleet {
        #[command(subcommand)]
        action: FleetAction,
    },
    /// Print the shell completion script for SHELL on stdout, e.g.
    /// `tether completions bash > /etc/bash_completion.d/tether`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (tether.1, and tether-COMMAND.1 for every command) into DIR.
    Manpages { dir: PathBuf },
}

#[derive(Subcommand, Debug)]
enum DbAction {
    /// Apply missing schema migrations (the gateway also does at start).
    Migrate,
    /// Connect, and report the schema version, integrity and row counts; fails if the schema is
    /// not current or the database is damaged.
    Check {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum MpsCredentialsAction {
    /// Add the MPS account USER, or change its password (what you configure in AMT). Several
    /// accounts may exist, e.g. one per customer.
    Set { username: String, password: String },
    /// List the MPS account names.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an MPS account (devices pinned to it can no longer get in with it).
    Remove { username: String },
}

#[derive(Subcommand, Debug)]
enum DeviceAction {
    /// Register a device by UUID, optionally with its own MPS password.
    Add {
        uuid: Uuid,
        #[arg(long, env = "TETHER_DEVICE_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Forget a device: its registration, own password, pin and record.
    Remove { uuid: Uuid },
    /// Register many devices from a CSV file of `uuid,password` lines (a `uuid,password` header
    /// is allowed; an empty password means the device uses an MPS account).
    Import { file: PathBuf },
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
    Create {
        name: String,
        /// `read` lists and shows devices; `attach` may also open relays to device ports.
        #[arg(long, default_value = "attach", value_parser = ["read", "attach"])]
        scope: String,
        /// Expire the token after this long: e.g. 90s, 30m, 12h, 30d.
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<std::time::Duration>,
        /// The user the token acts for [default: the built-in operator].
        #[arg(long, value_name = "USERNAME")]
        user: Option<String>,
    },
    /// List the tokens (never the secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: requests with it fail from now on, and its open relays end within seconds.
    Revoke { name: String },
}

/// Parses `90s`, `30m`, `12h` or `30d`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 90s, 30m, 12h or 30d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(secs)
        .filter(|s| *s > 0)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is not a positive duration"))
}

/// Runs the command; its exit code tells a script why it failed (`tether_gateway::exit`:
/// 2 bad input, 3 not found, 4 refused, 5 unreachable, 1 anything else).
fn main() -> ExitCode {
    match run_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err:?}");
            ExitCode::from(exit::code_of(&err))
        }
    }
}

fn run_main() -> Result<()> {
    let cli = Cli::parse();
    let daemon_mode = matches!(cli.command, Command::Gateway { .. });
    let default_filter = if daemon_mode { "info" } else { "warn,tether_gateway::forward=info" };
    logging::init(cli.log_format, default_filter);
    #[cfg(not(feature = "system-alloc"))]
    if daemon_mode {
        if let Err(err) = tikv_jemalloc_ctl::background_thread::write(true) {
            tracing::warn!(error = %err, "could not start jemalloc's purging thread; freed memory returns more slowly");
        }
    }
    let data_dir = cli.data_dir.clone().unwrap_or_else(paths::default_data_dir);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(cli, &data_dir))
}

async fn run(cli: Cli, data_dir: &Path) -> Result<()> {
    let store_args = StoreArgs { config: cli.config.clone(), database: cli.database.clone() };
    match cli.command {
        Command::Silo { action } => tether_gateway::silo_commands::run(action, &store_args, data_dir).await,
        Command::Content { action } => {
            use tether_gateway::content_commands::{self as content, ContentAction};
            match action {
                ContentAction::Publish { name, file, kind, json } => {
                    content::publish(data_dir, &name, &file, kind, json)
                }
                ContentAction::List { json } => {
                    let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
                    content::list(&client, json).await
                }
                ContentAction::Get { name, out, root_key, json } => {
                    let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
                    content::get(&client, &name, out, &root_key, json).await
                }
            }
        }
        Command::Gateway { cira_listen, api_listen, metrics_listen, agent_listen, tls_names, record_sol, role } => {
            let overrides = daemon::Overrides {
                cira: cira_listen,
                api: api_listen,
                metrics: metrics_listen,
                agents: agent_listen,
                tls_names,
                database: store_args.database,
                record_sol,
                role,
            };
            daemon::run(data_dir, store_args.config, overrides).await
        }
        Command::MpsCredentials { action: MpsCredentialsAction::Set { username, password } } => {
            if username.is_empty() || password.is_empty() {
                return Err(exit::bad_input("the MPS username and password must not be empty"));
            }
            if !username.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(exit::bad_input(format!(
                    "AMT allows only letters and digits in the MPS username, not {username:?}"
                )));
            }
            let store = open_store(&store_args, data_dir).await?;
            store.set_mps_account(&username, &auth::hash_password(password.as_bytes())?).await?;
            println!("MPS account {username} set: AMT devices may authenticate as {username}");
            Ok(())
        }
        Command::MpsCredentials { action: MpsCredentialsAction::List { json } } => {
            let names = open_store(&store_args, data_dir).await?.mps_accounts().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&names)?);
            } else {
                names.iter().for_each(|name| println!("{name}"));
            }
            Ok(())
        }
        Command::MpsCredentials { action: MpsCredentialsAction::Remove { username } } => {
            if !open_store(&store_args, data_dir).await?.remove_mps_account(&username).await? {
                return Err(exit::not_found(format!(
                    "there is no MPS account {username:?} (see `tether mps-credentials list`)"
                )));
            }
            println!("MPS account {username} removed");
            Ok(())
        }
        Command::Device { action: DeviceAction::Add { uuid, password } } => {
            let store = open_store(&store_args, data_dir).await?;
            let hash = password.map(|p| auth::hash_password(p.as_bytes())).transpose()?;
            store.add_device(uuid, hash.as_deref()).await?;
            match hash {
                Some(_) => println!("device {uuid} registered with its own MPS password (and pinned to it)"),
                None => println!("device {uuid} registered (authenticates with an MPS account)"),
            }
            Ok(())
        }
        Command::Device { action: DeviceAction::Remove { uuid } } => {
            if !open_store(&store_args, data_dir).await?.remove_device(uuid).await? {
                return Err(exit::not_found(format!("the gateway knows no device {uuid}")));
            }
            println!("device {uuid} removed");
            Ok(())
        }
        Command::Device { action: DeviceAction::Import { file } } => import_devices(&store_args, data_dir, &file).await,
        Command::Token { action: TokenAction::Create { name, scope, expires_in, user } } => {
            if name.starts_with(paths::LOCAL_TOKEN_PREFIX) {
                return Err(exit::bad_input(format!(
                    "token names starting with {:?} are the gateways' own; pick another",
                    paths::LOCAL_TOKEN_PREFIX
                )));
            }
            let store = open_store(&store_args, data_dir).await?;
            let token = auth::new_token();
            let scope = TokenScope::parse(&scope).context("the scope must be read or attach")?;
            let expires_at = match expires_in {
                Some(d) => Some(
                    time::OffsetDateTime::now_utc()
                        + time::Duration::try_from(d).map_err(|_| exit::bad_input("--expires-in is too long"))?,
                ),
                None => None,
            };
            let user_id = match &user {
                None => None,
                Some(username) => match store.user_by_name(username).await? {
                    Some(record) => Some(record.id),
                    None => {
                        return Err(exit::not_found(format!(
                            "the gateway has no user {username:?}; leave --user out for an operator token"
                        )))
                    }
                },
            };
            store.create_user_token(user_id, &name, &auth::hash_token(&token), scope, expires_at).await?;
            let until = expires_at.map(|t| format!(", expires {}", rfc3339(t))).unwrap_or_default();
            let owner = user.unwrap_or_else(|| tether_gateway::store::OPERATOR.to_string());
            println!(
                "API token {name:?} created for user {owner} (scope {}{until}). It is shown once; keep it safe:",
                scope.as_str()
            );
            println!("{token}");
            Ok(())
        }
        Command::Token { action: TokenAction::List { json } } => {
            let tokens = open_store(&store_args, data_dir).await?.list_tokens().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
                return Ok(());
            }
            println!("{:24}  {:6}  {:20}  EXPIRES", "NAME", "SCOPE", "CREATED");
            let now = time::OffsetDateTime::now_utc();
            for t in tokens {
                let expires = match t.expires_at {
                    None => "never".to_string(),
                    Some(at) if at <= now => format!("{} (expired)", rfc3339(at)),
                    Some(at) => rfc3339(at),
                };
                println!("{:24}  {:6}  {:20}  {expires}", t.name, t.scope.as_str(), rfc3339(t.created_at));
            }
            Ok(())
        }
        Command::Token { action: TokenAction::Revoke { name } } => {
            if name.starts_with(paths::LOCAL_TOKEN_PREFIX) {
                return Err(exit::refused(format!(
                    "{name} is a gateway's own local token; it is replaced at every start"
                )));
            }
            if !open_store(&store_args, data_dir).await?.revoke_token(&name).await? {
                return Err(exit::not_found(format!("there is no token {name:?} (see `tether token list`)")));
            }
            println!("token {name:?} revoked; its open relays end within a few seconds");
            Ok(())
        }
        Command::Devices { json } => {
            let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
            // Pages of 1,000; up to ten million devices.
            let devices = serde_json::Value::Array(client.get_all("/api/v1/devices", 10_000).await?);
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
        Command::Db { action: DbAction::Migrate } => {
            let before = match open_store_with(&store_args, data_dir, Migrate::No).await? {
                Some(store) => store.schema_version().await?.0,
                None => -1,
            };
            let store = open_store(&store_args, data_dir).await?;
            let (version, _) = store.schema_version().await?;
            match before {
                -1 => println!("{}: migrated to schema version {version}", store.location().describe()),
                _ => println!("{}: schema version {version}, up to date", store.location().describe()),
            }
            Ok(())
        }
        Command::Db { action: DbAction::Check { json } } => {
            let store = open_store_with(&store_args, data_dir, Migrate::No)
                .await?
                .context("the store is not at this tether's schema")?;
            let report = store.check().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("database   {} ({} {})", report.database, report.kind, report.server_version);
                println!("schema     {} of {}", report.schema_version, report.schema_known);
                println!("integrity  {}", report.integrity);
                println!(
                    "rows       {} devices, {} tokens, {} gateways",
                    report.devices, report.tokens, report.instances
                );
            }
            if report.integrity != "ok" && !report.integrity.starts_with("ok ") {
                bail!("the database failed its integrity check: restore it from a backup (`tether restore`)");
            }
            Ok(())
        }
        Command::Backup { file } => {
            let store = open_store(&store_args, data_dir).await?;
            let manifest = backup::backup(data_dir, &store, &file).await?;
            println!("backup written to {} ({})", file.display(), manifest.files.join(", "));
            if manifest.database == "postgres" {
                println!(
                    "the store is PostgreSQL ({}): back the database up with pg_dump as well (docs/fleet.md)",
                    store.location().describe()
                );
            }
            Ok(())
        }
        Command::Restore { file, force } => {
            let manifest = backup::restore(data_dir, &file, force)?;
            println!(
                "restored {} from a backup made {} by tether {}",
                manifest.files.join(", "),
                rfc3339(manifest.created_at),
                manifest.version
            );
            if manifest.database == "postgres" {
                println!("the backup's store was PostgreSQL: restore the database from its pg_dump (docs/fleet.md)");
            }
            Ok(())
        }
        Command::Fleet { action } => fleet_command(action, &store_args, data_dir).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tether", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpages { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))?;
            println!("man pages written to {}", dir.display());
            Ok(())
        }
        Command::User { action } => {
            let config = load_config(&store_args, data_dir)?;
            user_command(&open_store(&store_args, data_dir).await?, &config, action).await
        }
        Command::Subscriber { action } => {
            let config = load_config(&store_args, data_dir)?;
            subscriber_command(&open_store(&store_args, data_dir).await?, &config, action).await
        }
        Command::Machine { action } => {
            let config = load_config(&store_args, data_dir)?;
            machine_command(&open_store(&store_args, data_dir).await?, &config, action).await
        }
        Command::Contact { action } => {
            let config = load_config(&store_args, data_dir)?;
            contact_command(&open_store(&store_args, data_dir).await?, &config, action).await
        }
        Command::Mail { action } => {
            let config = load_config(&store_args, data_dir)?;
            mail_command(&open_store(&store_args, data_dir).await?, &config, action).await
        }
        Command::Action { action } => {
            let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
            action_command(&client, action).await
        }
        Command::Message { action } => {
            let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
            message_command(&client, action).await
        }
        Command::Redirections { uuid, active, json } => {
            let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
            redirections_command(&client, uuid, active, json).await
        }
        Command::Forward { uuid, port, listen } => {
            let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
            let listen = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], port)));
            forward::run(client, uuid, port, listen).await
        }
        Command::Console { device } => {
            let endpoint =
                device.endpoint(|| api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir))?;
            redirect::console::run(endpoint, device.account()).await
        }
        Command::Ider { device, image, floppy } => {
            if let Some(name) = image.as_deref().and_then(redirect::served::content_name) {
                let Some(uuid) = device.uuid.filter(|_| device.direct.is_none()) else {
                    anyhow::bail!(
                        "--image content:NAME is served by the gateway: name the device by UUID, not --direct"
                    );
                };
                if floppy.is_some() {
                    anyhow::bail!("--floppy cannot go with --image content:NAME: the gateway serves only the CD");
                }
                let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
                let amt =
                    AmtArgs { user: device.user.clone(), password: Some(device.password.clone()), remember: false };
                return redirect::served::run(&client, uuid, name, &amt).await;
            }
            let endpoint =
                device.endpoint(|| api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir))?;
            let images = redirect::ider::Images { cd: image, floppy, ..Default::default() };
            redirect::ider::run(endpoint, device.account(), images).await?;
            Ok(())
        }
        Command::Power { uuid, action, amt, json } => {
            let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
            rescue::power(&client, uuid, action, &amt, json).await
        }
        Command::Redirection { uuid, state, amt, json } => {
            let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
            rescue::redirection(&client, uuid, state, &amt, json).await
        }
        Command::Boot { uuid, ider, sol, amt, json } => {
            let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
            rescue::boot(&client, uuid, ider, sol, &amt, json).await
        }
        Command::Rescue { uuid, image, floppy, disable_redirection, amt } => {
            let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
            rescue::rescue(client, rescue::RescueArgs { uuid, image, floppy, disable_redirection, amt }).await
        }
        Command::Session { action: SessionAction::Close { uuid, message, amt, json } } => {
            let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
            rescue::session_close(&client, uuid, message, &amt, json).await
        }
        Command::Session { action: SessionAction::Open { uuid } } => {
            let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
            rescue::session_open(&client, uuid).await
        }
        Command::Amt { action: AmtAction::Forget { uuid } } => {
            let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
            rescue::forget(&client, uuid).await
        }
        Command::Actions { uuid, json } => {
            let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
            rescue::actions(&client, uuid, json).await
        }
        Command::Lan { action } => {
            let client = api_client(&cli.api, &cli.token, &cli.ca, &cli.tls_server_name, data_dir)?;
            match action {
                LanAction::Scan { interface, cidr, json } => {
                    lan_commands::scan(&client, &interface, cidr.as_deref(), json).await
                }
                LanAction::Devices { all, json } => lan_commands::devices(&client, all, json).await,
                LanAction::Wake { target, interface, amt, json } => {
                    lan_commands::wake(&client, &target, interface.as_deref(), &amt, json).await
                }
                LanAction::Adopt { ip, uuid, amt, json } => lan_commands::adopt(&client, &ip, uuid, &amt, json).await,
                LanAction::Forget { uuid } => lan_commands::forget(&client, uuid).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every command that lists or shows something (a `list`, `show` or `status` subcommand, or
    /// a top-level listing) prints JSON with `--json`, for scripts.
    #[test]
    fn every_listing_and_show_command_takes_json() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in command.get_subcommands() {
                let name = sub.get_name();
                let path = format!("{path} {name}");
                let lists = matches!(name, "list" | "show" | "status" | "devices" | "redirections" | "actions");
                if lists && sub.get_subcommands().next().is_none() && !sub.get_arguments().any(|a| a.get_id() == "json")
                {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "tether", &mut missing);
        assert!(missing.is_empty(), "without --json: {missing:?}");
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
