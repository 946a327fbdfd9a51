//! `--image content:NAME` for `tether rescue` and `tether ider`: the gateway serves one of its
//! signed content items (a published rescue image, or a maintenance silo's cached copy of one)
//! to the device over IDE-R, instead of this machine (`POST|GET|DELETE
//! /api/v1/devices/{uuid}/ider`, `crate::content_ider`). This side starts it, shows how much the
//! gateway has served, and stops it.
//!
//! What it does not do: serve anything itself (`ider`), or the rest of the rescue (`rescue`).

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::device_call::{post, AmtArgs};
use crate::client::ApiClient;

/// What `--image` starts with to name a content item of the gateway instead of a file.
pub const CONTENT_PREFIX: &str = "content:";
/// How long a stop may take (the gateway ends the device's IDE-R session politely).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the gateway is asked how far it got.
const POLL: Duration = Duration::from_millis(500);

/// The content item an `--image` value names (`content:NAME`), if it names one.
pub fn content_name(image: &Path) -> Option<&str> {
    image.to_str()?.strip_prefix(CONTENT_PREFIX)
}

fn path(uuid: Uuid) -> String {
    format!("/api/v1/devices/{uuid}/ider")
}

/// Asks the gateway to serve content item `name` to `uuid`; its answer once IDE-R is enabled for
/// the device's next boot.
pub async fn start(client: &ApiClient, uuid: Uuid, name: &str, amt: &AmtArgs) -> Result<Value> {
    post(client, &path(uuid), &amt.body(json!({ "content": name })))
        .await
        .with_context(|| format!("the gateway could not serve content item {name:?} over IDE-R"))
}

/// What the gateway serves `uuid` now.
pub async fn status(client: &ApiClient, uuid: Uuid) -> Result<Value> {
    client.get_json(&path(uuid)).await
}

/// Stops serving; the last status.
pub async fn stop(client: &ApiClient, uuid: Uuid) -> Result<Value> {
    client.delete_json(&path(uuid), STOP_TIMEOUT).await
}

/// One line about a status: what is served, and how far.
pub fn describe(status: &Value) -> String {
    format!(
        "{} (SHA-256 {}, {}): {} served in {} reads",
        status["content"].as_str().unwrap_or("?"),
        status["sha256"].as_str().unwrap_or("?"),
        HumanBytes(status["size"].as_u64().unwrap_or(0)),
        HumanBytes(status["bytes_served"].as_u64().unwrap_or(0)),
        status["reads"].as_u64().unwrap_or(0),
    )
}

/// While `tether rescue`'s console owns the terminal: a status line each time the gateway has
/// served another quarter of the image, and when serving ends.
pub fn progress_notes(client: ApiClient, uuid: Uuid, size: u64) -> JoinHandle<()> {
    let newline = if std::io::stdin().is_terminal() { "\r\n" } else { "\n" };
    tokio::spawn(async move {
        let mut quarters = 0u64;
        loop {
            tokio::time::sleep(POLL).await;
            let Ok(status) = status(&client, uuid).await else { continue };
            let bytes = status["bytes_served"].as_u64().unwrap_or(0);
            let now = bytes.saturating_mul(4).checked_div(size).unwrap_or(0);
            if now > quarters {
                quarters = now;
                let share = (bytes.saturating_mul(100) / size.max(1)).min(100);
                eprint!(
                    "{newline}[tether: the gateway served {} of {} over IDE-R ({share}%)]{newline}",
                    HumanBytes(bytes),
                    HumanBytes(size)
                );
            }
            if status["state"] == "ended" {
                let why = status["error"].as_str().or(status["ended"].as_str()).unwrap_or("?").to_owned();
                eprint!("{newline}[tether: the gateway stopped serving IDE-R: {why}]{newline}");
                return;
            }
        }
    })
}

/// `tether ider UUID --image content:NAME`: the gateway serves the item until Ctrl-C (or
/// SIGTERM) here, or until its serving ends; then it is stopped and what it served is summed up.
pub async fn run(client: &ApiClient, uuid: Uuid, name: &str, amt: &AmtArgs) -> Result<()> {
    let started = start(client, uuid, name, amt).await?;
    let size = started["size"].as_u64().unwrap_or(0);
    eprintln!(
        "the gateway serves content item {name} ({}, SHA-256 {}) as the CD-ROM of device {uuid}",
        HumanBytes(size),
        started["sha256"].as_str().unwrap_or("?")
    );
    eprintln!("IDE-R is enabled for the PC's next boot; Ctrl-C stops serving.");
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} IDE-R from the gateway: {bytes} served of {total_bytes} ({binary_bytes_per_sec}) {msg}",
    ) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(250));
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(POLL);
    let ended = loop {
        tokio::select! {
            _ = term.recv() => break None,
            _ = interrupt.recv() => break None,
            _ = tick.tick() => {
                if let Ok(status) = status(client, uuid).await {
                    bar.set_position(status["bytes_served"].as_u64().unwrap_or(0));
                    if status["state"] == "ended" {
                        break Some(status);
                    }
                }
            }
        }
    };
    bar.finish_and_clear();
    let last = match ended {
        Some(status) => status,
        None => stop(client, uuid).await?,
    };
    eprintln!("{}", describe(&last));
    match last["error"].as_str() {
        Some(error) if last["ended"] == "failed" => anyhow::bail!("the gateway stopped serving IDE-R: {error}"),
        _ => {
            eprintln!("IDE-R from the gateway ended: {}.", last["ended"].as_str().unwrap_or("stopped"));
            Ok(())
        }
    }
}
