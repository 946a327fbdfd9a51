//! `tether action` and `tether message`: support actions and messages to agent PCs, through the
//! API with the caller's token (a support contact's, a subscriber's or an operator's; the policy
//! decides, `docs/actions.md`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::client::ApiClient;
use crate::exit::{self, Exit, Failure};

#[derive(Subcommand, Debug)]
pub enum ActionCommand {
    /// Send machine UUID's agent a signed support action: a script it runs, or instructions it
    /// shows its user. Waits for the result (`--no-wait`: prints the action and returns).
    Run {
        uuid: Uuid,
        /// A script for the PC (run with /bin/sh in a clean environment, output captured).
        #[arg(long, conflicts_with = "instructions", required_unless_present = "instructions")]
        script: Option<PathBuf>,
        /// Instructions (text) shown to the PC's user.
        #[arg(long)]
        instructions: Option<PathBuf>,
        /// The script's timeout, seconds (default 300; the PC's policy may cut it).
        #[arg(long)]
        timeout: Option<u32>,
        /// How long the action waits for the PC to come online, seconds (default a day).
        #[arg(long)]
        expires_in: Option<u32>,
        /// Return once the action is signed and queued.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting for the result after this many seconds (the action stays queued).
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// One action: its life cycle and result.
    Show {
        id: Uuid,
        #[arg(long)]
        json: bool,
    },
    /// Machine UUID's actions, newest first.
    List {
        uuid: Uuid,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum MessageCommand {
    /// Send a signed message to the users of one machine, of a subscriber's machines, or of
    /// every machine; delivered when each PC is next online.
    Send {
        /// The text (or `--file`).
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        text: Option<String>,
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, conflicts_with_all = ["subscriber", "all"], required_unless_present_any = ["subscriber", "all"])]
        machine: Option<Uuid>,
        #[arg(long, conflicts_with = "all")]
        subscriber: Option<i64>,
        /// Every enrolled machine (operators).
        #[arg(long)]
        all: bool,
        /// How long the message waits for offline PCs, seconds (default a day).
        #[arg(long)]
        expires_in: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// One message: how many machines received and read it, and each machine's delivery.
    Show {
        id: Uuid,
        #[arg(long)]
        json: bool,
    },
    /// The messages you sent (operators: all), newest first.
    List {
        #[arg(long)]
        json: bool,
    },
}

fn read_text(path: &PathBuf, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))
}

fn open(state: &str) -> bool {
    matches!(state, "pending" | "sent")
}

fn print_action(action: &Value) {
    let get = |k: &str| action[k].as_str().unwrap_or("").to_string();
    println!("action {}  ({} for {}, by {})", get("id"), get("kind"), get("uuid"), get("issued_by"));
    println!("state {}", get("state"));
    println!("created {}  expires {}", get("created_at"), get("expires_at"));
    if let Some(sent) = action["sent_at"].as_str() {
        println!("sent {sent}");
    }
    if let Some(at) = action["result_at"].as_str() {
        let code = action["exit_code"].as_i64().map(|c| c.to_string()).unwrap_or_else(|| "-".into());
        let ms = action["duration_ms"].as_i64().unwrap_or(0);
        println!("result {at}: exit code {code}, {ms} ms");
    }
    if let Some(text) = action["result_text"].as_str().filter(|t| !t.is_empty()) {
        println!("why: {text}");
    }
    if let Some(seq) = action["report_seq"].as_i64() {
        println!("fresh telemetry: report {seq}");
    }
    if let Some(output) = action["output"].as_str().filter(|o| !o.is_empty()) {
        let cut = if action["output_truncated"].as_bool() == Some(true) { " (cut)" } else { "" };
        println!("output{cut}:\n{}", output.trim_end());
    }
}

pub async fn action_command(client: &ApiClient, command: ActionCommand) -> Result<()> {
    match command {
        ActionCommand::Run { uuid, script, instructions, timeout, expires_in, no_wait, wait_secs, json } => {
            let (kind, body) = match (script, instructions) {
                (Some(path), _) => ("script", read_text(&path, "script")?),
                (None, Some(path)) => ("instructions", read_text(&path, "instructions")?),
                (None, None) => return Err(exit::bad_input("give --script FILE or --instructions FILE")),
            };
            let request = json!({
                "kind": kind, "body": body, "timeout_secs": timeout, "expires_in_secs": expires_in,
            });
            let created = client.post_json(&format!("/api/v1/devices/{uuid}/support-actions"), &request).await?;
            let id = created["id"].as_str().unwrap_or_default().to_string();
            if no_wait {
                return show(&created, json);
            }
            eprintln!("action {id} signed and queued for {uuid}; waiting for the agent's result");
            let started = Instant::now();
            let deadline = started + Duration::from_secs(wait_secs);
            loop {
                let action = client.get_json(&format!("/api/v1/support-actions/{id}")).await?;
                let state = action["state"].as_str().unwrap_or("").to_string();
                if !open(&state) || Instant::now() >= deadline {
                    if open(&state) {
                        eprintln!(
                            "no result within {wait_secs} s (state {state}); `tether action show {id}` shows it later"
                        );
                    } else {
                        eprintln!("result after {:.1} s", started.elapsed().as_secs_f64());
                    }
                    show(&action, json)?;
                    // A script that failed, or a refusal, is a failed command.
                    let ok = matches!(state.as_str(), "completed" | "shown")
                        && action["exit_code"].as_i64().unwrap_or(0) == 0;
                    if !ok && !open(&state) {
                        // Refused by the PC: 4; a script that failed or timed out: 1.
                        let exit = if state.starts_with("refused") { Exit::Refused } else { Exit::Failed };
                        return Err(Failure { exit, message: format!("action {id} on {uuid}: {state}") }.into());
                    }
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        ActionCommand::Show { id, json } => {
            show(&client.get_json(&format!("/api/v1/support-actions/{id}")).await?, json)
        }
        ActionCommand::List { uuid, json } => {
            let actions = client.get_json(&format!("/api/v1/devices/{uuid}/support-actions")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&actions)?);
                return Ok(());
            }
            let empty = Vec::new();
            let list = actions.as_array().unwrap_or(&empty);
            if list.is_empty() {
                println!("no support actions for {uuid}");
            }
            println!("{:36}  {:12}  {:24}  {:20}  {:>5}  ISSUED BY", "ID", "KIND", "STATE", "CREATED", "EXIT");
            for a in list {
                println!(
                    "{:36}  {:12}  {:24}  {:20}  {:>5}  {}",
                    a["id"].as_str().unwrap_or(""),
                    a["kind"].as_str().unwrap_or(""),
                    a["state"].as_str().unwrap_or(""),
                    crate::operator::whole_seconds(a["created_at"].as_str().unwrap_or("")),
                    a["exit_code"].as_i64().map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                    a["issued_by"].as_str().unwrap_or(""),
                );
            }
            Ok(())
        }
    }
}

fn show(value: &Value, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print_action(value);
    }
    Ok(())
}

fn print_message(message: &Value) {
    let get = |k: &str| message[k].as_str().unwrap_or("").to_string();
    let n = |k: &str| message[k].as_u64().unwrap_or(0);
    println!(
        "message {}  to {} ({} machine(s)) from {}: received {}, read {}",
        get("id"),
        get("scope"),
        n("machines"),
        get("from_name"),
        n("received"),
        n("read")
    );
}

pub async fn message_command(client: &ApiClient, command: MessageCommand) -> Result<()> {
    match command {
        MessageCommand::Send { text, file, machine, subscriber, all, expires_in, json } => {
            let text = match (text, file) {
                (Some(text), _) => text,
                (None, Some(path)) => read_text(&path, "message")?,
                (None, None) => return Err(exit::bad_input("give --text TEXT or --file FILE")),
            };
            // Left out, not null, when not given: the API takes no null for it.
            let mut request = json!({ "text": text });
            if let Some(secs) = expires_in {
                request["expires_in_secs"] = json!(secs);
            }
            match (machine, subscriber, all) {
                (Some(uuid), _, _) => request["machine"] = json!(uuid),
                (None, Some(id), _) => request["subscriber"] = json!(id),
                (None, None, true) => request["all"] = json!(true),
                (None, None, false) => {
                    return Err(exit::bad_input("say whom it is for: --machine UUID, --subscriber ID or --all"))
                }
            }
            let sent = client.post_json("/api/v1/messages", &request).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sent)?);
            } else {
                print_message(&sent);
            }
            Ok(())
        }
        MessageCommand::Show { id, json } => {
            let found = client.get_json(&format!("/api/v1/messages/{id}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&found)?);
                return Ok(());
            }
            print_message(&found["message"]);
            println!("{:36}  {:20}  {:20}  {:20}", "MACHINE", "SENT", "RECEIVED", "READ");
            let empty = Vec::new();
            for d in found["deliveries"].as_array().unwrap_or(&empty) {
                let at = |k: &str| crate::operator::whole_seconds(d[k].as_str().unwrap_or("-"));
                println!(
                    "{:36}  {:20}  {:20}  {:20}",
                    d["uuid"].as_str().unwrap_or(""),
                    at("sent_at"),
                    at("received_at"),
                    at("read_at")
                );
            }
            Ok(())
        }
        MessageCommand::List { json } => {
            let messages = client.get_json("/api/v1/messages").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&messages)?);
                return Ok(());
            }
            let empty = Vec::new();
            for m in messages.as_array().unwrap_or(&empty) {
                print_message(m);
            }
            Ok(())
        }
    }
}
