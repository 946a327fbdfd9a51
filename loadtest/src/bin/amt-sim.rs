//! amt-sim: simulated Intel AMT devices that dial a Tether gateway (or any CIRA MPS) over TLS
//! and APF, forward their ports, keep the tunnel alive, serve the channels the gateway opens
//! (HTTP/WS-MAN on 16992/16993, SOL and IDE-R redirection on 16994/16995, echo elsewhere), and
//! reconnect when the tunnel drops (unless `--no-reconnect`). `--source IP` makes them connect
//! from that local address.
//!
//! Redirection (16994, and 16995 as plain redirection inside the channel: the sim has no TLS
//! there): consoles log in with the device's admin account (`--admin-user`, `--admin-password`,
//! default admin/admin; password, or digest with qop auth). SOL runs `--sol-shell` (default
//! /bin/sh) on a pseudo-terminal, so a technician runs real commands over SOL. With `--boot-ider`,
//! the simulated firmware boots from IDE-R once a console enables it: it reads the whole CD, then
//! the whole floppy, and prints `IDE-R boot: cd read <N> bytes sha256=<hex>` (or `… cd failed:
//! <reason>`, `… cd absent`; `floppy` likewise) on the device's SOL console and in the log.
//! A channel to 16994 whose first byte is not a redirection StartRedirectionSession is echoed, as
//! before (load tests push bytes through it).
//!
//! Several `--gateway` addresses (repeated, or separated by commas) are an MPS list, as in AMT's
//! CIRA policy: device i starts at address i mod N, a failed TCP connect or TLS handshake moves it
//! on to the next address at once, and only a whole round of failures makes it back off. When a
//! tunnel drops, the device backs off and dials the address it was using again.
//!
//! WS-Management (16992, and 16993 without TLS) answers as firmware does: Digest authentication
//! against the admin account (`--admin-user`/`--admin-password`, shared with redirection), then
//! Get/Put/Enumerate/Pull/Release and method calls on the classes a console uses (general
//! settings, software identity, platform GUID, provisioning, redirection service, boot settings,
//! power, user consent), with the state kept per device UUID across channels and tunnel redials
//! (module `loadtest::amt::wsman`). Every state change is logged (`power: on -> reset`,
//! `boot settings: UseIDER=true IDERBootDevice=1 UseSOL=true`, `redirection: EnabledState 32771
//! listener=true`, `user consent code for UUID: 123456`). A reset, cycle or power-on is a boot:
//! with UseIDER set it prints `BIOS: booting from IDE-R CD-ROM` and boots from the device's IDE-R
//! session (waiting up to `--ider-boot-wait` for one to be open and enabled, else `BIOS: no IDE-R
//! session; booting from disk`); without, `BIOS: booting from disk`. Power off and cycle are
//! refused (ReturnValue 2) while a SOL or IDE-R session is open. `--redirection disabled` starts
//! with SOL and IDE-R disabled (a session is refused until a console enables them);
//! `--consent` requires user consent (StartOptIn prints the code) for power and redirection;
//! `--control-mode ccm` reports client control mode; `--redial-on-power-change` drops the tunnel
//! after answering a power change and redials after `--redial-delay`; `--user-initiated` dials
//! only while the user has remote help on (at start; `--remote-help-file FILE` while FILE exists;
//! SIGUSR1 turns it on), and a tunnel the gateway ends turns it off.
//!
//! `--lan IP` runs one device that listens on its LAN instead of dialling a gateway, as a PC with
//! AMT does: TLS on 16993 (WS-MAN) and 16995 (redirection) with one self-signed certificate made
//! at start, plain 16992 and 16994 too with `--lan-plain`, and RMCP presence pongs on UDP 623
//! (ports below 1024 need root or CAP_NET_BIND_SERVICE). Each TCP connection is served as a CIRA
//! channel would be, with the same firmware state; `--gateway`, `--ca`/`--insecure`,
//! `--username`/`--password` are not needed then, and `--count` must be 1. It logs
//! `amt-sim: LAN device UUID <uuid> on <ip>: TLS 16993/16995[, plain 16992/16994], RMCP 623, AMT
//! <version>, power <on|off>` once listening, and `lan: connection from <ip>:<port> to <port>` per
//! connection. `--amt-version X.Y.Z` sets the version WS-MAN (CIM_SoftwareIdentity), the HTTP
//! `Server` header and the RMCP pong report (in both modes); `--power off` starts the device
//! powered off (a WS-MAN power-on boots it).
//!
//! `--expose DEVICE_PORT=HOST:PORT` (repeatable) carries every channel to DEVICE_PORT over TCP to
//! HOST:PORT, bytes as they are, half-close passed through both ways (the gateway's EOF shuts
//! down the socket's write side, the socket's EOF sends CHANNEL_EOF), so that a benchmark runs
//! `iperf3 -c` → `tether forward` → gateway → amt-sim → `iperf3 -s`. It replaces the port's
//! service and forwards the port (added to `--ports` if missing). A connect that fails (10 s at
//! most) closes the channel with a warning (`expose: channel to <port> closed: cannot connect to
//! <addr>: <error>`); each carried channel logs `expose: channel to <port> carried to <addr>` at
//! debug, and the start logs `expose: channels to ports carried over TCP: <port> -> <addr>, …`.
//! With `--lan` only the ports the LAN device listens on can be exposed (16993 and 16995 behind
//! its TLS, 16992 and 16994 with `--lan-plain`); others are refused at start.
//!
//! `amt-sim --gateway 127.0.0.1:4433 --ca ca.pem --username USER --password PASS --count 2000`
//! `amt-sim --gateway 127.0.0.1:4433,127.0.0.1:5433 --insecure --username USER --password PASS`
//! `amt-sim --gateway 127.0.0.1:4433 --insecure --username U --password P --admin-password secret --boot-ider`
//! `amt-sim --gateway 127.0.0.1:4433 --insecure --username U --password P --expose 5201=127.0.0.1:5201`
//! `sudo amt-sim --lan 192.168.50.10 --lan-plain --amt-version 12.0.45 --power off`

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{ArgGroup, Parser};
use indicatif::ProgressBar;
use loadtest::amt::wsman::AMT_VERSION;
use loadtest::amt::wsman::{ControlMode, Firmware, FirmwareConfig, WsmanService};
use loadtest::amt::{
    amt_services_with_firmware, client_config, default_server_name, progress_bar, run_fleet, self_signed_config,
    server_name, shutdown_pair, DeviceConfig, ExposeService, FleetConfig, GatewayAddr, LanConfig, LanDevice, Progress,
    ReconnectPolicy, RedirectionConfig, RedirectionService, RemoteHelp, SerialConsoles, Service, Services,
    ShutdownTrigger, TlsService, Trust,
};
use std::sync::Arc;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;
use uuid::Uuid;

/// Simulated Intel AMT devices for a CIRA gateway, or one AMT PC on a LAN (--lan).
#[derive(Debug, Parser)]
#[command(name = "amt-sim", version)]
#[command(group(ArgGroup::new("trust").args(["ca", "insecure"])))]
struct Args {
    /// The gateway's CIRA listener. Repeat the flag, or separate addresses with commas, to give
    /// several (an MPS list): device i starts at address i mod N and moves on to the next one
    /// when a TCP connect or TLS handshake fails; it backs off only after every address failed.
    /// Required unless --lan.
    #[arg(long, value_name = "HOST:PORT", value_delimiter = ',', required_unless_present = "lan")]
    gateway: Vec<String>,
    /// Listen on this address as one AMT PC on a LAN instead of dialling a gateway: TLS on 16993
    /// and 16995 (one self-signed certificate), RMCP presence on UDP 623. --gateway, --ca,
    /// --insecure, --username and --password are not used; --count must be 1.
    #[arg(long, value_name = "IP")]
    lan: Option<IpAddr>,
    /// With --lan: also listen on 16992 (WS-MAN over HTTP) and 16994 (redirection) without TLS.
    #[arg(long, requires = "lan")]
    lan_plain: bool,
    /// The firmware version reported by WS-MAN (CIM_SoftwareIdentity), the HTTP Server header
    /// and the RMCP pong (major and minor, each at most 15 there).
    #[arg(long, default_value = AMT_VERSION, value_name = "X.Y.Z", value_parser = parse_amt_version)]
    amt_version: String,
    /// The power state at start; a WS-MAN power-on (RequestPowerStateChange 2) boots the device.
    #[arg(long, value_enum, default_value_t = PowerArg::On)]
    power: PowerArg,
    /// PEM file with the CA certificate(s) the gateway's certificate must chain to (this or
    /// --insecure, unless --lan).
    #[arg(long, value_name = "FILE", required_unless_present_any = ["insecure", "lan"])]
    ca: Option<PathBuf>,
    /// Accept any gateway certificate (handshake signatures are still checked).
    #[arg(long)]
    insecure: bool,
    /// Local address to connect from (e.g. 127.0.0.2, so that the gateway sees another source
    /// than 127.0.0.1); only gateway addresses of its family are dialled [default: chosen by
    /// the OS].
    #[arg(long, value_name = "IP")]
    source: Option<IpAddr>,
    /// Name every gateway's certificate must match, sent as SNI [default: the host of each
    /// --gateway address].
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// CIRA (MPS) username (required unless --lan).
    #[arg(long, env = "AMT_SIM_USERNAME", value_name = "USER", required_unless_present = "lan")]
    username: Option<String>,
    /// CIRA (MPS) password (required unless --lan).
    #[arg(
        long,
        env = "AMT_SIM_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD",
        required_unless_present = "lan"
    )]
    password: Option<String>,
    /// UUID of the first device; device i adds i to its last 4 bytes [default: random].
    #[arg(long, value_name = "UUID")]
    uuid: Option<Uuid>,
    /// Number of devices.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// Ports to forward, in order [default: 16993,16992,664,623,16995,16994,5900].
    #[arg(long, value_delimiter = ',', value_name = "PORT,...", value_parser = clap::value_parser!(u16).range(1..))]
    ports: Option<Vec<u16>>,
    /// As firmware from CSME 16.1 on: 16992 and 16994 are not forwarded, and 16993 (WS-MAN) and
    /// 16995 (redirection) speak TLS with a self-signed certificate made at start.
    #[arg(long)]
    tls_only: bool,
    /// Receive window advertised per channel.
    #[arg(long, default_value_t = 4096, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..))]
    window: u32,
    /// Consumed bytes per WINDOW_ADJUST (firmware grants in small steps).
    #[arg(long, default_value_t = 512, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..))]
    adjust_step: u32,
    /// Keepalive interval until the gateway sets one.
    #[arg(long, default_value_t = 30, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    keepalive: u64,
    /// Shortest delay before a reconnect.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    reconnect_min_ms: u64,
    /// Longest delay before a reconnect.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    reconnect_max_ms: u64,
    /// Spread the devices' first connects evenly over this long.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    ramp_ms: u64,
    /// Exit (status 0) once every device has been established.
    #[arg(long)]
    exit_after_established: bool,
    /// Each device keeps its TLS sessions and resumes them when it redials (a gateway restart,
    /// a dropped tunnel), as firmware with session resumption does; off: a full handshake each
    /// time.
    #[arg(long)]
    resume_sessions: bool,
    /// Exit (status 1) when the gateway refuses a device's credentials, instead of retrying.
    #[arg(long)]
    exit_on_auth_failure: bool,
    /// Connect once, never again: when a device's connection ends (the gateway closes it,
    /// refuses it, or goes away) or fails at every --gateway address, exit with status 1 saying
    /// why. Status 0 only when stopped by a signal, or by --exit-after-established.
    #[arg(long)]
    no_reconnect: bool,
    /// The devices' admin account, for redirection consoles (SOL, IDE-R on 16994/16995).
    #[arg(long, default_value = "admin", value_name = "USER")]
    admin_user: String,
    /// The admin account's password (username/password and digest authentication).
    #[arg(
        long,
        env = "AMT_SIM_ADMIN_PASSWORD",
        hide_env_values = true,
        default_value = "admin",
        value_name = "PASSWORD"
    )]
    admin_password: String,
    /// The program SOL runs on a pseudo-terminal (TERM=vt100); killed when the SOL session ends.
    #[arg(long, default_value = "/bin/sh", value_name = "PATH")]
    sol_shell: PathBuf,
    /// Boot from IDE-R once a console enables it: read the CD, then the floppy, and print their
    /// SHA-256 on the SOL console (`IDE-R boot: cd read N bytes sha256=HEX`).
    #[arg(long)]
    boot_ider: bool,
    /// Blocks per READ(10) of the IDE-R boot (32 CD blocks = 64 KiB).
    #[arg(long, default_value_t = 32, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    ider_read_blocks: u16,
    /// The device's IDE-R read buffer size announced to consoles (largest data chunk they send;
    /// MeshCommander refuses more than 8192).
    #[arg(long, default_value_t = 8192, value_name = "BYTES", value_parser = clap::value_parser!(u16).range(1..))]
    ider_buffer: u16,
    /// The control mode WS-MAN reports (ProvisioningMode 1 for acm, 4 for ccm).
    #[arg(long, value_enum, default_value_t = ModeArg::Acm)]
    control_mode: ModeArg,
    /// Require user consent (OptInRequired all): power and redirection changes and SOL/IDE-R
    /// sessions are refused until a console sent the code StartOptIn printed.
    #[arg(long)]
    consent: bool,
    /// SOL and IDE-R at start: enabled (EnabledState 32771, listener on) or disabled (32768,
    /// listener off).
    #[arg(long, value_enum, default_value_t = RedirectionArg::Enabled)]
    redirection: RedirectionArg,
    /// After answering a power change, drop the tunnel (~200 ms later) and redial after
    /// --redial-delay, as firmware often does.
    #[arg(long)]
    redial_on_power_change: bool,
    /// Seconds between a firmware tunnel drop and the redial.
    #[arg(long, default_value_t = 2, value_name = "SECS")]
    redial_delay: u64,
    /// How long a boot with UseIDER set waits for an open, enabled IDE-R session.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    ider_boot_wait: u64,
    /// The PC user asked for remote help: send trigger reason 1 (else 4, periodic), dial only
    /// while remote help is on (on at start; SIGUSR1 turns it on), and turn it off when the
    /// gateway ends the tunnel.
    #[arg(long)]
    user_initiated: bool,
    /// With --user-initiated: remote help is on while FILE exists (created at start; removed
    /// when the gateway ends the tunnel; create it again to ask for help again).
    #[arg(long, value_name = "FILE", requires = "user_initiated")]
    remote_help_file: Option<PathBuf>,
    /// Carry every channel to DEVICE_PORT over TCP to HOST:PORT (e.g. an `iperf3 -s`), bytes as
    /// they are, half-close passed through both ways; a failed connect (10 s at most) closes the
    /// channel. Repeatable. Replaces the port's service, and the port is forwarded (added to
    /// --ports if missing). With --lan only the ports the device listens on: 16993 and 16995
    /// (behind the device's TLS), and 16992 and 16994 with --lan-plain; others are refused.
    #[arg(long, value_name = "DEVICE_PORT=HOST:PORT", value_parser = parse_expose)]
    expose: Vec<(u16, SocketAddr)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    Acm,
    Ccm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RedirectionArg {
    Enabled,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PowerArg {
    On,
    Off,
}

/// `--amt-version`: three numbers separated by dots, the first two at most 255.
fn parse_amt_version(value: &str) -> Result<String, String> {
    let parts: Vec<&str> = value.split('.').collect();
    let numbers_ok = parts.len() == 3
        && parts[..2].iter().all(|p| p.parse::<u8>().is_ok())
        && parts[2].parse::<u16>().is_ok()
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit()));
    if numbers_ok {
        Ok(value.to_owned())
    } else {
        Err(format!("{value:?} is not a version X.Y.Z such as {AMT_VERSION}"))
    }
}

/// `--expose DEVICE_PORT=HOST:PORT`: a port from 1 to 65535 and an address to connect to (a host
/// name is resolved once, at start; its first address is used).
fn parse_expose(value: &str) -> Result<(u16, SocketAddr), String> {
    let Some((port, addr)) = value.split_once('=') else {
        return Err(format!("{value:?} is not DEVICE_PORT=HOST:PORT (e.g. 5201=127.0.0.1:5201)"));
    };
    let port = match port.trim().parse::<u16>() {
        Ok(port) if port > 0 => port,
        _ => return Err(format!("{port:?} is not a device port (1 to 65535) in {value:?}")),
    };
    let addr = addr.trim();
    if let Ok(addr) = addr.parse::<SocketAddr>() {
        return Ok((port, addr));
    }
    let resolved = addr.to_socket_addrs().map_err(|err| format!("{addr:?} is not HOST:PORT: {err}"))?.next();
    match resolved {
        Some(addr) => Ok((port, addr)),
        None => Err(format!("{addr:?} resolves to no address")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bar = (args.count > 1 && std::io::stderr().is_terminal()).then(|| progress_bar(args.count));
    init_tracing(bar.clone());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("cannot start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, bar)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, bar: Option<ProgressBar>) -> anyhow::Result<()> {
    if args.adjust_step > args.window {
        bail!("--adjust-step ({}) must not exceed --window ({})", args.adjust_step, args.window);
    }
    if args.reconnect_min_ms > args.reconnect_max_ms {
        bail!(
            "--reconnect-min-ms ({}) must not exceed --reconnect-max-ms ({})",
            args.reconnect_min_ms,
            args.reconnect_max_ms
        );
    }
    let uuid = args.uuid.unwrap_or_else(Uuid::new_v4);
    let firmware = Firmware::new(
        FirmwareConfig {
            admin_user: args.admin_user.clone(),
            admin_password: args.admin_password.clone(),
            control_mode: match args.control_mode {
                ModeArg::Acm => ControlMode::Admin,
                ModeArg::Ccm => ControlMode::Client,
            },
            consent: args.consent,
            redirection_enabled: args.redirection == RedirectionArg::Enabled,
            redial_on_power_change: args.redial_on_power_change,
            ider_boot_wait: Duration::from_secs(args.ider_boot_wait),
            amt_version: args.amt_version.clone(),
            powered_on: args.power == PowerArg::On,
            ..FirmwareConfig::default()
        },
        SerialConsoles::new(),
    );
    let redirection = RedirectionService::new(RedirectionConfig {
        admin_user: args.admin_user.clone(),
        admin_password: args.admin_password.clone(),
        sol_shell: args.sol_shell.clone(),
        boot_ider: args.boot_ider,
        ider_read_blocks: args.ider_read_blocks,
        ider_buffer: args.ider_buffer,
        ..RedirectionConfig::default()
    });
    let mut services = amt_services_with_firmware(WsmanService::new(firmware.clone()), redirection);
    if let Some(addr) = args.lan {
        check_lan_expose(&args.expose, args.lan_plain)?;
        services = with_exposed(services, &args.expose);
        return run_lan(&args, addr, uuid, services).await;
    }

    let trust = match (&args.ca, args.insecure) {
        (Some(path), _) => Trust::CaFile(path.clone()),
        (None, true) => {
            tracing::warn!("--insecure: the gateway's certificate is not checked");
            Trust::Insecure
        }
        (None, false) => bail!("give --ca FILE (the gateway's CA certificate) or --insecure"),
    };
    let tls = client_config(&trust).context("TLS setup")?;
    let gateways = gateway_addrs(&args.gateway, args.server_name.as_deref())?;

    let described: Vec<String> = gateways.iter().map(|g| format!("{} (TLS name {:?})", g.addr, name_of(g))).collect();
    let (Some(username), Some(password)) = (&args.username, &args.password) else {
        bail!("give --username and --password (the CIRA account), or --lan");
    };
    let mut device = DeviceConfig::with_gateways(gateways, tls, uuid, username, password);
    if let Some(ports) = &args.ports {
        device.ports = ports.iter().map(|&p| u32::from(p)).collect();
    }
    device.window = args.window;
    device.adjust_step = args.adjust_step;
    device.keepalive = Duration::from_secs(args.keepalive);
    device.reconnect = ReconnectPolicy {
        min: Duration::from_millis(args.reconnect_min_ms),
        max: Duration::from_millis(args.reconnect_max_ms),
    };
    device.stop_on_auth_failure = args.exit_on_auth_failure;
    device.source = args.source;
    device.no_reconnect = args.no_reconnect;
    device.services = services;
    if args.tls_only {
        device.ports.retain(|&port| port != 16992 && port != 16994);
        let config =
            self_signed_config(&format!("amt-{}.local", uuid.simple())).context("making the TLS certificate")?;
        for port in [16993, 16995] {
            if let Some(plain) = device.services.get(port).cloned() {
                let tls: Arc<dyn Service> = Arc::new(TlsService::new(plain, Arc::clone(&config)));
                device.services = device.services.clone().with_shared(port, tls);
            }
        }
    }
    device.services = with_exposed(device.services, &args.expose);
    for &(port, _) in &args.expose {
        if !device.ports.contains(&u32::from(port)) {
            device.ports.push(u32::from(port));
        }
    }
    if args.redial_on_power_change {
        device.firmware = Some(firmware);
    }
    device.redial_delay = Duration::from_secs(args.redial_delay);
    let remote_help = args.user_initiated.then(|| RemoteHelp::new(args.remote_help_file.clone()));
    if let Some(help) = &remote_help {
        help.turn_on();
        tokio::spawn(remote_help_on_sigusr1(help.clone()));
    }
    device.remote_help = remote_help;

    let mut fleet = FleetConfig::new(device, args.count);
    fleet.ramp = Duration::from_millis(args.ramp_ms);
    fleet.exit_after_established = args.exit_after_established;
    fleet.resume_sessions = args.resume_sessions;
    if let Some(bar) = bar {
        fleet.progress = Progress::Bar(bar);
    }

    tracing::info!(
        "amt-sim: {} device(s), first UUID {uuid}, {} {}{}, username {:?}",
        args.count,
        if described.len() > 1 { "gateways" } else { "gateway" },
        described.join(", "),
        args.source.map_or_else(String::new, |ip| format!(" from {ip}")),
        username
    );
    log_services(&args);
    let (trigger, shutdown) = shutdown_pair();
    tokio::spawn(stop_on_signals(trigger));
    let report = run_fleet(fleet, shutdown).await?;
    if args.exit_after_established && report.all_established_after.is_none() {
        bail!("stopped before every device was established ({}/{})", report.stats.ever_established, report.count);
    }
    Ok(())
}

/// `--lan`: one device listening on `addr` until a signal stops it.
async fn run_lan(args: &Args, addr: IpAddr, uuid: Uuid, services: Services) -> anyhow::Result<()> {
    if args.count != 1 {
        bail!("--lan runs one device: --count must be 1 (it is {})", args.count);
    }
    if !args.gateway.is_empty() || args.ca.is_some() || args.insecure {
        tracing::warn!("--lan: --gateway, --ca and --insecure are not used");
    }
    let tls = self_signed_config(&format!("amt-{}.local", uuid.simple())).context("making the TLS certificate")?;
    let mut config = LanConfig::new(addr, uuid, services, tls);
    config.plain = args.lan_plain;
    config.amt_version.clone_from(&args.amt_version);
    let device = LanDevice::bind(config).await?;
    tracing::info!(
        "amt-sim: LAN device UUID {uuid} on {addr}: TLS 16993/16995{}, RMCP 623, AMT {}, power {}",
        if args.lan_plain { ", plain 16992/16994" } else { "" },
        args.amt_version,
        if args.power == PowerArg::On { "on" } else { "off" }
    );
    log_services(args);
    let (trigger, shutdown) = shutdown_pair();
    tokio::spawn(stop_on_signals(trigger));
    device.run(shutdown).await;
    Ok(())
}

/// `services` with each `--expose` port carried to its address.
fn with_exposed(mut services: Services, exposed: &[(u16, SocketAddr)]) -> Services {
    for &(port, addr) in exposed {
        services = services.with_shared(u32::from(port), Arc::new(ExposeService::new(addr)));
    }
    services
}

/// `--expose` with `--lan`: only the ports the LAN device listens on.
fn check_lan_expose(exposed: &[(u16, SocketAddr)], plain: bool) -> anyhow::Result<()> {
    for &(port, _) in exposed {
        let bound = matches!(port, 16993 | 16995) || (plain && matches!(port, 16992 | 16994));
        if !bound {
            bail!(
                "--expose {port}: with --lan only the ports the device listens on can be exposed: 16993 and 16995, \
                 and 16992 and 16994 with --lan-plain"
            );
        }
    }
    Ok(())
}

/// The start-up lines about redirection and WS-MAN.
fn log_services(args: &Args) {
    if !args.expose.is_empty() {
        let exposed: Vec<String> = args.expose.iter().map(|(port, addr)| format!("{port} -> {addr}")).collect();
        tracing::info!("expose: channels to ports carried over TCP: {}", exposed.join(", "));
    }
    tracing::info!(
        "redirection on 16994/16995: admin user {:?}, SOL shell {}, IDE-R boot {}",
        args.admin_user,
        args.sol_shell.display(),
        if args.boot_ider { "on" } else { "off" }
    );
    tracing::info!(
        "WS-MAN on 16992/16993: digest for {:?}, control mode {:?}, redirection {:?}, consent {}{}{}",
        args.admin_user,
        args.control_mode,
        args.redirection,
        if args.consent { "required" } else { "not required" },
        if args.redial_on_power_change { ", redial on power change" } else { "" },
        if args.user_initiated { ", user-initiated (remote help)" } else { "" }
    );
}

/// The `--gateway` addresses, each with its TLS name: `--server-name` when given, else the
/// address's host.
fn gateway_addrs(addrs: &[String], name: Option<&str>) -> anyhow::Result<Vec<GatewayAddr>> {
    let fixed = name.map(|name| server_name(name).context("--server-name")).transpose()?;
    let mut gateways = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let addr = addr.trim();
        if addr.is_empty() {
            bail!("--gateway: an empty address in the list (give HOST:PORT[,HOST:PORT...])");
        }
        let name = match &fixed {
            Some(name) => name.clone(),
            None => server_name(default_server_name(addr))
                .with_context(|| format!("--gateway {addr}: its host is no TLS name (give --server-name)"))?,
        };
        gateways.push(GatewayAddr::new(addr, name));
    }
    if gateways.is_empty() {
        bail!("give at least one --gateway HOST:PORT");
    }
    Ok(gateways)
}

/// The TLS name of a gateway address, for the start-up line.
fn name_of(gateway: &GatewayAddr) -> String {
    match &gateway.server_name {
        rustls::pki_types::ServerName::DnsName(name) => name.as_ref().to_owned(),
        rustls::pki_types::ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// SIGUSR1: the PC user asks for remote help (again).
async fn remote_help_on_sigusr1(help: RemoteHelp) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
            tracing::warn!("cannot listen for SIGUSR1; remote help follows --remote-help-file only");
            return;
        };
        while usr1.recv().await.is_some() {
            tracing::info!("remote help requested by the user (SIGUSR1)");
            help.turn_on();
        }
    }
    #[cfg(not(unix))]
    let _ = help;
}

/// Ctrl-C or SIGTERM: stop cleanly (DISCONNECT, close_notify); a second one exits at once.
async fn stop_on_signals(trigger: ShutdownTrigger) {
    let mut signals = 0;
    loop {
        wait_for_signal().await;
        signals += 1;
        if signals > 1 {
            std::process::exit(130);
        }
        tracing::info!("stopping (send the signal again to exit at once)");
        trigger.trigger();
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

fn init_tracing(bar: Option<ProgressBar>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(StderrLines { bar })
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Writes each log line to stderr whole, around the progress bar when there is one.
#[derive(Debug, Clone)]
struct StderrLines {
    bar: Option<ProgressBar>,
}

impl<'a> MakeWriter<'a> for StderrLines {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { bar: self.bar.clone(), buf: Vec::with_capacity(256) }
    }
}

#[derive(Debug)]
struct LineWriter {
    bar: Option<ProgressBar>,
    buf: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let write = || {
            let _ = std::io::stderr().lock().write_all(&self.buf);
        };
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.suspend(write),
            _ => write(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateways_of(args: &[&str]) -> Vec<String> {
        let base = ["amt-sim", "--insecure", "--username", "u", "--password", "p"];
        Args::try_parse_from(base.iter().chain(args)).map(|a| a.gateway).unwrap_or_default()
    }

    #[test]
    fn redirection_flags_have_their_defaults() {
        let base = ["amt-sim", "--insecure", "--username", "u", "--password", "p", "--gateway", "a:1"];
        let args = Args::try_parse_from(base).unwrap();
        assert_eq!((args.admin_user.as_str(), args.admin_password.as_str()), ("admin", "admin"));
        assert_eq!(args.sol_shell, PathBuf::from("/bin/sh"));
        assert_eq!((args.boot_ider, args.ider_read_blocks, args.ider_buffer), (false, 32, 8192));
        let flags = ["--boot-ider", "--ider-read-blocks", "8", "--ider-buffer", "4096", "--sol-shell", "/bin/bash"];
        let args = Args::try_parse_from(base.iter().chain(&flags)).unwrap();
        assert_eq!((args.boot_ider, args.ider_read_blocks, args.ider_buffer), (true, 8, 4096));
        assert!(Args::try_parse_from(base.iter().chain(&["--ider-read-blocks", "0"])).is_err());
    }

    #[test]
    fn firmware_flags_have_their_defaults() {
        let base = ["amt-sim", "--insecure", "--username", "u", "--password", "p", "--gateway", "a:1"];
        let args = Args::try_parse_from(base).unwrap();
        assert_eq!((args.control_mode, args.redirection), (ModeArg::Acm, RedirectionArg::Enabled));
        assert!(!args.consent && !args.redial_on_power_change && !args.user_initiated);
        assert_eq!((args.redial_delay, args.ider_boot_wait), (2, 60));
        let flags = [
            "--control-mode",
            "ccm",
            "--redirection",
            "disabled",
            "--consent",
            "--redial-on-power-change",
            "--redial-delay",
            "5",
            "--user-initiated",
            "--remote-help-file",
            "/tmp/help",
        ];
        let args = Args::try_parse_from(base.iter().chain(&flags)).unwrap();
        assert_eq!((args.control_mode, args.redirection), (ModeArg::Ccm, RedirectionArg::Disabled));
        assert!(args.consent && args.redial_on_power_change && args.user_initiated);
        assert_eq!(args.redial_delay, 5);
        assert!(
            Args::try_parse_from(base.iter().chain(&["--remote-help-file", "/tmp/x"])).is_err(),
            "needs --user-initiated"
        );
    }

    #[test]
    fn lan_mode_needs_no_gateway_nor_credentials() {
        let args = Args::try_parse_from(["amt-sim", "--lan", "127.0.0.1"]).unwrap();
        assert_eq!(args.lan, Some(IpAddr::from([127, 0, 0, 1])));
        assert!(!args.lan_plain && args.username.is_none());
        assert_eq!((args.amt_version.as_str(), args.power), (AMT_VERSION, PowerArg::On));
        let flags = ["amt-sim", "--lan", "::1", "--lan-plain", "--amt-version", "12.0.45", "--power", "off"];
        let args = Args::try_parse_from(flags).unwrap();
        assert!(args.lan_plain);
        assert_eq!((args.amt_version.as_str(), args.power), ("12.0.45", PowerArg::Off));
        for bad in ["12.0", "12.0.45.1", "x.1.2", "256.0.1", "1.2.-3", ""] {
            assert!(Args::try_parse_from(["amt-sim", "--lan", "::1", "--amt-version", bad]).is_err(), "{bad}");
        }
        assert!(Args::try_parse_from(["amt-sim", "--lan-plain", "--insecure"]).is_err(), "--lan-plain needs --lan");
        // Without --lan, the CIRA flags are required.
        assert!(Args::try_parse_from(["amt-sim", "--gateway", "a:1", "--username", "u", "--password", "p"]).is_err());
        assert!(Args::try_parse_from(["amt-sim", "--gateway", "a:1", "--insecure", "--username", "u"]).is_err());
        assert!(Args::try_parse_from(["amt-sim", "--insecure", "--username", "u", "--password", "p"]).is_err());
        let cira = ["amt-sim", "--gateway", "a:1", "--ca", "ca.pem", "--username", "u", "--password", "p"];
        assert!(Args::try_parse_from(cira).is_ok());
        assert!(Args::try_parse_from(cira.iter().chain(&["--insecure"])).is_err(), "--ca or --insecure, not both");
    }

    #[test]
    fn expose_is_repeatable_and_says_what_is_wrong() {
        let base = ["amt-sim", "--insecure", "--username", "u", "--password", "p", "--gateway", "a:1"];
        let flags = ["--expose", "5201=127.0.0.1:5201", "--expose", "16994=[::1]:7"];
        let args = Args::try_parse_from(base.iter().chain(&flags)).unwrap();
        let expected: Vec<(u16, SocketAddr)> =
            vec![(5201, "127.0.0.1:5201".parse().unwrap()), (16994, "[::1]:7".parse().unwrap())];
        assert_eq!(args.expose, expected);
        assert!(Args::try_parse_from(base).unwrap().expose.is_empty());
        for (bad, says) in [
            ("5201", "DEVICE_PORT=HOST:PORT"),
            ("0=127.0.0.1:1", "device port"),
            ("x=127.0.0.1:1", "device port"),
            ("70000=127.0.0.1:1", "device port"),
            ("5201=127.0.0.1", "HOST:PORT"),
        ] {
            let err = parse_expose(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn exposed_ports_replace_services_and_lan_takes_only_its_own() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let services = with_exposed(Services::none(), &[(5201, addr)]);
        assert!(format!("{:?}", services.get(5201)).contains("ExposeService"));
        assert!(services.get(5202).is_none());
        assert!(check_lan_expose(&[(16993, addr), (16995, addr)], false).is_ok());
        assert!(check_lan_expose(&[(16994, addr)], false).is_err(), "plain ports need --lan-plain");
        assert!(check_lan_expose(&[(16994, addr)], true).is_ok());
        let err = check_lan_expose(&[(5201, addr)], true).unwrap_err().to_string();
        assert!(err.contains("--expose 5201"), "{err}");
    }

    #[test]
    fn gateway_is_repeatable_and_takes_lists() {
        assert_eq!(gateways_of(&["--gateway", "127.0.0.1:4433"]), ["127.0.0.1:4433"]);
        assert_eq!(gateways_of(&["--gateway", "a:1,b:2", "--gateway", "[::1]:3"]), ["a:1", "b:2", "[::1]:3"]);
        assert!(gateways_of(&[]).is_empty(), "--gateway is required");
    }

    #[test]
    fn each_address_has_its_own_tls_name_unless_one_is_given() {
        let addrs = ["gw1.example.net:4433".to_owned(), "127.0.0.2:4433".to_owned(), "[::1]:4433".to_owned()];
        let names: Vec<String> = gateway_addrs(&addrs, None).unwrap().iter().map(name_of).collect();
        assert_eq!(names, ["gw1.example.net", "127.0.0.2", "::1"]);
        let names: Vec<String> = gateway_addrs(&addrs, Some("mps.test")).unwrap().iter().map(name_of).collect();
        assert_eq!(names, ["mps.test", "mps.test", "mps.test"]);
        assert!(gateway_addrs(&["a:1".to_owned(), " ".to_owned()], None).is_err());
    }
}
