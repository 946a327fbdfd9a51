//! The technician's remote-fix commands that go through the gateway's WS-MAN client: `tether
//! power`, `tether redirection`, `tether boot`, `tether session close|open`, `tether actions`, and
//! `tether rescue`, which runs the whole workflow:
//!
//! 1. the gateway checks the device (AMT version, control mode, that the firmware's UUID is the
//!    tunnel's, power, redirection, boot settings, user consent), keeps what it found, and enables
//!    SOL and IDE-R; where the device requires consent the technician types the code the PC shows;
//! 2. this command serves the image over IDE-R through a relay (as `tether ider` does), or, with
//!    `--image content:NAME`, the gateway serves its content item NAME (a published rescue image)
//!    itself and this command shows how far it got (`served`);
//! 3. the gateway sets the one-time boot to the IDE-R CD with SOL and resets the PC (or powers it
//!    on);
//! 4. the SOL console is attached so the technician watches the boot and repairs; when the
//!    firmware drops its tunnel around the power change, the console and IDE-R come back by
//!    themselves once it redials;
//! 5. on exit (Ctrl-]) the gateway puts the boot settings back and, with
//!    `--disable-redirection`, redirection as it was found.
//!
//! A failed step is explained, and the device is left as it was found.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::console::{self, End};
pub use super::device_call::AmtArgs;
pub(crate) use super::device_call::{post, DEVICE_CALL_TIMEOUT};
use super::ider::{self, Images, ServeOptions};
use super::served;
use super::terminal::{keystrokes, RawMode};
use super::{Account, Endpoint};
use crate::client::{api_error, ApiClient};

/// How long to wait for a device to dial back after a power change.
const REDIAL_WAIT: Duration = Duration::from_secs(180);
/// Most consent codes tried before giving up.
const CONSENT_TRIES: usize = 3;

/// `tether power UUID ACTION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PowerCommand {
    Status,
    On,
    Off,
    Cycle,
    Reset,
}

/// `tether redirection UUID enable|disable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Toggle {
    Enable,
    Disable,
}

/// The boot device of `tether boot --ider`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BootDevice {
    Cd,
    Floppy,
    /// No IDE-R boot (clears a one-time IDE-R boot).
    None,
}

/// Prints the answer as JSON, or as the line `line` makes of it.
pub(crate) fn print(value: &Value, json_out: bool, line: impl FnOnce(&Value) -> String) {
    if json_out {
        println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    } else {
        println!("{}", line(value));
    }
}

/// `tether power UUID status|on|off|cycle|reset`.
pub async fn power(client: &ApiClient, uuid: Uuid, action: PowerCommand, amt: &AmtArgs, json_out: bool) -> Result<()> {
    let name = match action {
        PowerCommand::Status => "status",
        PowerCommand::On => "on",
        PowerCommand::Off => "off",
        PowerCommand::Cycle => "cycle",
        PowerCommand::Reset => "reset",
    };
    let value = post(client, &format!("/api/v1/devices/{uuid}/power"), &amt.body(json!({ "action": name }))).await?;
    print(&value, json_out, |v| {
        let power = v["power"].as_str().unwrap_or("unknown (the device is changing state)");
        match action {
            PowerCommand::Status => power.to_owned(),
            _ => format!("{name}: done; power now {power}"),
        }
    });
    Ok(())
}

/// `tether redirection UUID enable|disable`.
pub async fn redirection(client: &ApiClient, uuid: Uuid, toggle: Toggle, amt: &AmtArgs, json_out: bool) -> Result<()> {
    let enable = toggle == Toggle::Enable;
    let value =
        post(client, &format!("/api/v1/devices/{uuid}/redirection"), &amt.body(json!({ "enable": enable }))).await?;
    print(&value, json_out, |v| {
        let r = &v["redirection"];
        format!("SOL {}, IDE-R {}, listener {}", on_off(&r["sol"]), on_off(&r["ider"]), on_off(&r["listener"]))
    });
    Ok(())
}

fn on_off(value: &Value) -> &'static str {
    if value.as_bool() == Some(true) {
        "enabled"
    } else {
        "disabled"
    }
}

/// `tether boot UUID --ider cd|floppy|none [--sol]`.
pub async fn boot(
    client: &ApiClient,
    uuid: Uuid,
    device: BootDevice,
    sol: bool,
    amt: &AmtArgs,
    json_out: bool,
) -> Result<()> {
    let ider = match device {
        BootDevice::Cd => json!("cd"),
        BootDevice::Floppy => json!("floppy"),
        BootDevice::None => Value::Null,
    };
    let value =
        post(client, &format!("/api/v1/devices/{uuid}/boot"), &amt.body(json!({ "ider": ider, "sol": sol }))).await?;
    print(&value, json_out, |v| {
        format!("next boot: {} (was: {})", v["after"].as_str().unwrap_or("?"), v["before"].as_str().unwrap_or("?"))
    });
    Ok(())
}

/// `tether session close UUID [--message TEXT]`. The message is also typed on the PC's serial
/// console first (while the session still stands), when the AMT password is given.
pub async fn session_close(
    client: &ApiClient,
    uuid: Uuid,
    message: Option<String>,
    amt: &AmtArgs,
    json_out: bool,
) -> Result<()> {
    if let (Some(text), Some(password)) = (&message, &amt.password) {
        let endpoint = Endpoint::Relay { client: client.clone(), uuid, port: 16994 };
        let account = Account { username: amt.user.clone(), password: password.clone() };
        match console::type_message(&endpoint, &account, &format!("Tether: {text}")).await {
            Ok(()) => eprintln!("the message is on the PC's serial console"),
            Err(err) => eprintln!("the message could not be shown on the PC's serial console: {err:#}"),
        }
    }
    let value =
        post(client, &format!("/api/v1/devices/{uuid}/session/close"), &amt.body(json!({ "message": message })))
            .await?;
    print(&value, json_out, |v| {
        let mut lines = vec![format!(
            "session with {uuid} closed: {} relay(s) ended, tunnel {}",
            v["relays_stopped"],
            if v["tunnel_closed"] == true { "closed" } else { "not closed" }
        )];
        if !v["restored"].is_null() {
            lines.push(format!("restored boot settings: {}", v["restored"]["boot"].as_str().unwrap_or("?")));
        }
        match v["user_initiated"].as_bool() {
            Some(true) => {
                lines.push("the PC user's help request is used up: it stays away until they ask again".into())
            }
            Some(false) => lines.push(format!(
                "the device will dial again on its policy; technicians are refused until `tether session open {uuid}`"
            )),
            None => {}
        }
        for note in v["notes"].as_array().into_iter().flatten() {
            lines.push(format!("note: {}", note.as_str().unwrap_or_default()));
        }
        lines.join("\n")
    });
    Ok(())
}

/// `tether session open UUID`.
pub async fn session_open(client: &ApiClient, uuid: Uuid) -> Result<()> {
    let value = post(client, &format!("/api/v1/devices/{uuid}/session/open"), &json!({})).await?;
    if value["was_closed"] == true {
        println!("new session with {uuid}: technicians may connect again");
    } else {
        println!("the session with {uuid} was not closed");
    }
    Ok(())
}

/// `tether amt forget UUID`.
pub async fn forget(client: &ApiClient, uuid: Uuid) -> Result<()> {
    post(client, &format!("/api/v1/devices/{uuid}/amt/forget"), &json!({})).await?;
    println!("forgot the AMT account and the TLS certificate pin kept for {uuid}");
    Ok(())
}

/// `tether actions UUID`.
pub async fn actions(client: &ApiClient, uuid: Uuid, json_out: bool) -> Result<()> {
    let value = client.get_json(&format!("/api/v1/devices/{uuid}/actions")).await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    for row in value.as_array().into_iter().flatten() {
        let text = |k: &str| row[k].as_str().unwrap_or("").to_owned();
        println!(
            "{}  {:<10} {:<20} {:<8} {}{}",
            text("at"),
            text("technician"),
            text("action"),
            text("outcome"),
            text("detail"),
            row["message"].as_str().map(|m| format!(" — {m}")).unwrap_or_default()
        );
    }
    Ok(())
}

/// What `tether rescue` takes.
#[derive(Debug, Clone)]
pub struct RescueArgs {
    pub uuid: Uuid,
    pub image: PathBuf,
    pub floppy: Option<PathBuf>,
    pub disable_redirection: bool,
    pub amt: AmtArgs,
}

/// Prints a step of the rescue.
fn step(text: &str) {
    eprintln!("==> {text}");
}

/// Reads a consent code from the terminal (or standard input).
fn read_code() -> Result<String> {
    eprint!("The PC shows a user-consent code. Ask the PC user for it and type it here: ");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the consent code")?;
    let code = line.trim().to_owned();
    if code.is_empty() {
        bail!("no consent code given");
    }
    Ok(code)
}

/// Checks the device and enables redirection (asking for consent where needed).
async fn start(client: &ApiClient, args: &RescueArgs) -> Result<Value> {
    let uuid = args.uuid;
    let path = format!("/api/v1/devices/{uuid}/rescue/start");
    for attempt in 0..=CONSENT_TRIES {
        let (status, value) = client.post_with_timeout(&path, &args.amt.body(json!({})), DEVICE_CALL_TIMEOUT).await?;
        if status.is_success() {
            return Ok(value);
        }
        if value["reason"] != "consent_required" || attempt == CONSENT_TRIES {
            return Err(api_error(status, &value).into());
        }
        step("the device requires user consent: asking it to show a code");
        post(client, &format!("/api/v1/devices/{uuid}/consent"), &args.amt.body(json!({}))).await?;
        let code = read_code()?;
        match post(client, &format!("/api/v1/devices/{uuid}/consent"), &args.amt.body(json!({ "code": code }))).await {
            Ok(_) => step("consent code accepted"),
            Err(err) => eprintln!("{err:#}"),
        }
    }
    bail!("user consent was not given")
}

/// Waits until the gateway lists the device as connected again.
async fn wait_for_tunnel(client: &ApiClient, uuid: Uuid) -> Result<()> {
    let deadline = tokio::time::Instant::now() + REDIAL_WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Ok(device) = client.get_json(&format!("/api/v1/devices/{uuid}")).await {
            if device["connected"] == true {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("device {uuid} did not dial back within {} s", REDIAL_WAIT.as_secs())
}

/// Serves IDE-R until stopped, opening the session again whenever the device drops its tunnel.
/// After a drop it waits for the console to be attached again first (for at most
/// [`CONSOLE_FIRST`]), so that the technician sees the boot that the new IDE-R session starts.
#[allow(clippy::too_many_arguments)]
fn serve_ider(
    client: ApiClient,
    endpoint: Endpoint,
    account: Account,
    images: Images,
    uuid: Uuid,
    stop: watch::Receiver<bool>,
    mut consoles: watch::Receiver<u64>,
    ready: oneshot::Sender<()>,
) -> JoinHandle<Result<u64>> {
    tokio::spawn(async move {
        let mut ready = Some(ready);
        let mut served = 0u64;
        let mut failures = 0;
        while !*stop.borrow() {
            let options =
                ServeOptions { quiet: true, stop: Some(stop.clone()), ready: ready.take(), ..ServeOptions::default() };
            match ider::run_with(endpoint.clone(), account.clone(), images.clone(), options).await {
                Ok((run, _why)) => {
                    served += run.bytes;
                    failures = 0;
                }
                Err(err) => {
                    failures += 1;
                    if failures > 5 {
                        return Err(err.context("IDE-R failed five times in a row"));
                    }
                }
            }
            if *stop.borrow() {
                break;
            }
            // The tunnel dropped (a power change) or the session failed: wait for the device,
            // then for the console to be back on it.
            let seen = *consoles.borrow_and_update();
            wait_for_tunnel(&client, uuid).await?;
            let _ = tokio::time::timeout(CONSOLE_FIRST, consoles.wait_for(|generation| *generation > seen)).await;
        }
        Ok(served)
    })
}

/// How long IDE-R waits for the console to come back before it serves again without it.
const CONSOLE_FIRST: Duration = Duration::from_secs(20);

/// `tether rescue UUID --image FILE.iso` (or `--image content:NAME`): see the module doc.
pub async fn rescue(client: ApiClient, args: RescueArgs) -> Result<()> {
    let uuid = args.uuid;
    let Some(password) = args.amt.password.clone() else {
        bail!("tether rescue needs the AMT password (--password or AMT_PASSWORD) for the console and IDE-R sessions");
    };
    let account = Account { username: args.amt.user.clone(), password };
    let content = served::content_name(&args.image).map(str::to_owned);
    match &content {
        None => {
            std::fs::metadata(&args.image).with_context(|| format!("the rescue image {}", args.image.display()))?;
        }
        Some(_) if args.floppy.is_some() => bail!(
            "--floppy cannot go with --image content:NAME: AMT holds one IDE-R session, and the gateway serves              only the CD; serve both from this machine instead"
        ),
        Some(name) if name.is_empty() => bail!("name the content item: --image content:NAME (`tether content list`)"),
        Some(_) => {}
    }

    step(&format!("checking device {uuid} and enabling SOL and IDE-R"));
    let started = start(&client, &args).await?;
    let facts = &started["facts"];
    step(&format!(
        "AMT {} ({} control mode), power {}, firmware UUID {}",
        facts["amt_version"].as_str().unwrap_or("?"),
        facts["control_mode"].as_str().unwrap_or("?"),
        facts["power"].as_str().unwrap_or("?"),
        facts["platform_uuid"].as_str().unwrap_or("not reported"),
    ));

    let endpoint = Endpoint::Relay { client: client.clone(), uuid, port: 16994 };
    let (console_tx, console_rx) = watch::channel(0u64);
    let (serving, ready) = match &content {
        None => {
            let images = Images { cd: Some(args.image.clone()), floppy: args.floppy.clone(), ..Images::default() };
            let (stop_tx, stop_rx) = watch::channel(false);
            let (ready_tx, ready_rx) = oneshot::channel();
            step(&format!("serving {} over IDE-R", args.image.display()));
            let task = serve_ider(
                client.clone(),
                endpoint.clone(),
                account.clone(),
                images,
                uuid,
                stop_rx,
                console_rx,
                ready_tx,
            );
            let ready = match tokio::time::timeout(Duration::from_secs(60), ready_rx).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(anyhow::anyhow!("IDE-R did not start within 60 s")),
            };
            (Serving::Here { task, stop: stop_tx }, ready)
        }
        Some(name) => {
            step(&format!("asking the gateway to serve its content item {name} over IDE-R"));
            match served::start(&client, uuid, name, &args.amt).await {
                Ok(status) => {
                    step(&format!("the gateway serves {}", served::describe(&status)));
                    let notes = served::progress_notes(client.clone(), uuid, status["size"].as_u64().unwrap_or(0));
                    (Serving::Gateway { notes: Some(notes) }, Ok(()))
                }
                Err(err) => (Serving::Gateway { notes: None }, Err(err)),
            }
        }
    };
    let outcome = match ready {
        Ok(()) => {
            Rescue { client: &client, args: &args, endpoint: &endpoint, account: &account, consoles: console_tx }
                .watch()
                .await
        }
        Err(err) => Err(err),
    };

    let served = match serving {
        Serving::Here { task, stop } => {
            let _ = stop.send(true);
            match tokio::time::timeout(Duration::from_secs(10), task).await {
                Ok(Ok(Ok(bytes))) => Ok(bytes),
                Ok(Ok(Err(err))) => Err(err),
                _ => Err(anyhow::anyhow!("IDE-R did not stop in time")),
            }
        }
        Serving::Gateway { notes: Some(notes) } => {
            notes.abort();
            match served::stop(&client, uuid).await {
                Ok(status) => Ok(status["bytes_served"].as_u64().unwrap_or(0)),
                Err(err) => Err(err.context("stopping the gateway's IDE-R")),
            }
        }
        Serving::Gateway { notes: None } => Err(anyhow::anyhow!("the gateway served nothing")),
    };
    let disable = args.disable_redirection;
    let restoring = format!("restoring the boot settings{}", if disable { " and redirection as found" } else { "" });
    match (&outcome, &served) {
        (Ok(()), Ok(bytes)) => {
            step(&format!("rescue ended; served {} over IDE-R; {restoring}", indicatif::HumanBytes(*bytes)))
        }
        (Ok(()), Err(err)) => step(&format!("rescue ended ({err:#}); {restoring}")),
        (Err(err), _) => step(&format!("the rescue failed: {err:#}; {restoring}, leaving the device as it was found")),
    }
    let body = args.amt.body(json!({ "disable_redirection": disable }));
    let restored = post(&client, &format!("/api/v1/devices/{uuid}/rescue/finish"), &body).await;
    match restored {
        Ok(value) => {
            step(&format!("boot settings restored: {}", value["restored"]["boot"].as_str().unwrap_or("?")));
            if !disable {
                step(&format!("SOL and IDE-R stay enabled until `tether session close {uuid}`"));
            }
        }
        Err(err) => {
            eprintln!("putting the device's settings back failed: {err:#}");
            if outcome.is_ok() {
                return Err(err.context("the rescue ended but the boot settings were not restored"));
            }
        }
    }
    outcome
}

/// Who serves the image: this machine (a task, and its stop), or the gateway (and the task
/// showing its progress).
enum Serving {
    Here { task: JoinHandle<Result<u64>>, stop: watch::Sender<bool> },
    Gateway { notes: Option<JoinHandle<()>> },
}

/// The console side of a rescue: attach SOL, boot the PC into the image, and keep the console
/// attached (again after every redial) until the technician quits.
struct Rescue<'a> {
    client: &'a ApiClient,
    args: &'a RescueArgs,
    endpoint: &'a Endpoint,
    account: &'a Account,
    /// Counts console attachments, for the IDE-R task.
    consoles: watch::Sender<u64>,
}

impl Rescue<'_> {
    async fn watch(&self) -> Result<()> {
        let uuid = self.args.uuid;
        let raw = RawMode::enter()?;
        let mut keys = keystrokes();
        let mut booted = false;
        let mut failures = 0;
        loop {
            match console::start(self.endpoint, self.account).await {
                Ok(sol) => {
                    failures = 0;
                    self.consoles.send_modify(|generation| *generation += 1);
                    console::note(&raw, "Serial-over-LAN attached; Ctrl-] ends the rescue");
                    if !booted {
                        // The console is attached first, so that the whole boot is on screen.
                        self.boot(&raw).await?;
                        booted = true;
                    }
                    match console::pump(sol, &raw, &mut keys).await {
                        Ok(End::Quit(_)) => return Ok(()),
                        Ok(End::DeviceEnded(why)) => {
                            console::note(&raw, &format!("the console dropped ({why}); waiting for the device"))
                        }
                        Err(err) => {
                            console::note(&raw, &format!("the console failed ({err:#}); waiting for the device"))
                        }
                    }
                }
                Err(err) => {
                    failures += 1;
                    if failures > 10 {
                        return Err(err.context("the console could not be attached ten times in a row"));
                    }
                }
            }
            if keys.is_closed() {
                return Ok(());
            }
            wait_for_tunnel(self.client, uuid).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Sets the one-time boot to the IDE-R CD with SOL, and resets (or powers on) the PC.
    async fn boot(&self, raw: &RawMode) -> Result<()> {
        let uuid = self.args.uuid;
        console::note(raw, "setting the one-time boot to the IDE-R CD with SOL, and booting");
        let body = self.args.amt.body(json!({ "ider": "cd", "sol": true }));
        let value = post(self.client, &format!("/api/v1/devices/{uuid}/rescue/boot"), &body)
            .await
            .context("booting the PC into the image failed")?;
        let action = if value["power_action"] == "reset" { "reset" } else { "power on" };
        console::note(raw, &format!("{action} sent; the PC boots from the image"));
        Ok(())
    }
}
