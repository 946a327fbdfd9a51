//! Messages for the PC's user, `STATE_DIR/inbox.json`: the gateway's signed messages and the
//! instructions of support actions, each with who sent it, when, and which of its states the
//! gateway has confirmed (`none`, `received`, `read`). Deduplicated by id, at most [`MAX_INBOX`]
//! (beyond, the oldest read ones go first).
//!
//! Only the service writes `inbox.json`. The PC user reads with `tether-agent messages`, which
//! marks what it showed as read by creating `STATE_DIR/read/ID` ([`mark_read`]); the service
//! tells the gateway (`MessageState { read: true }`) and records the gateway's `Receipt`.
//!
//! A new message or instructions also raise a desktop notification where one exists
//! (`notify-send` on `PATH`), best effort.
//!
//! What it does not do: talk to the gateway (`conn`), or run actions (`actions`).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use protocols::tap::{MessageBody, SignDomain, Signed};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};
use uuid::Uuid;

use crate::signature::verifies;
use crate::state::{write_durable, StateDir};

/// Entries kept at most.
pub const MAX_INBOX: usize = 500;
/// Time a desktop notification may take.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);
/// Desktop notifications under way at once at most (beyond, skipped).
const MAX_NOTIFYING: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A signed message from the gateway.
    Message,
    /// The instructions of a support action.
    Instructions,
}

/// Which state of a message the gateway has confirmed with a `Receipt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confirmed {
    None,
    Received,
    Read,
}

/// One message or instructions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: Uuid,
    pub kind: EntryKind,
    pub from: String,
    pub text: String,
    /// Unix seconds, as the gateway signed them.
    pub issued_at: i64,
    pub expires_at: i64,
    /// Unix seconds, when this PC got it.
    pub received_at: i64,
    /// For messages: what the gateway has confirmed (instructions are answered by the action's
    /// result, and stay `none`).
    pub confirmed: Confirmed,
}

impl Entry {
    pub fn message(body: &MessageBody, now: i64) -> Entry {
        Entry {
            id: body.id,
            kind: EntryKind::Message,
            from: body.from.clone(),
            text: body.text.clone(),
            issued_at: body.issued_at,
            expires_at: body.expires_at,
            received_at: now,
            confirmed: Confirmed::None,
        }
    }
}

/// Checks a signed message: signature (with the pinned `key`), payload, target (`me`), expiry.
/// The body, or why it is dropped.
pub fn verify_message(key: &[u8], me: Uuid, signed: &Signed, now: i64) -> Result<MessageBody, String> {
    if !verifies(key, SignDomain::Message, signed) {
        return Err("its signature does not verify with the key pinned at enrollment".into());
    }
    let body = MessageBody::decode(&signed.payload).map_err(|e| format!("its payload does not decode: {e}"))?;
    if body.target != me {
        return Err(format!("it is for machine {}, not this one", body.target));
    }
    if now > body.expires_at {
        return Err(format!("it expired at {}", body.expires_at));
    }
    Ok(body)
}

fn read_dir(state: &StateDir) -> PathBuf {
    state.path("read")
}

fn is_read_in(read: &Path, id: Uuid) -> bool {
    read.join(id.to_string()).exists()
}

fn load(path: &Path) -> Result<Vec<Entry>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is damaged (not the JSON this agent writes)", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// Every entry with whether the PC user has read it, newest first (for the CLI; reads only).
pub fn list(state: &StateDir) -> Result<Vec<(Entry, bool)>> {
    let read = read_dir(state);
    let mut entries: Vec<(Entry, bool)> = load(&state.path("inbox.json"))?
        .into_iter()
        .map(|e| {
            let seen = is_read_in(&read, e.id);
            (e, seen)
        })
        .collect();
    entries.sort_by_key(|(e, _)| std::cmp::Reverse((e.received_at, e.issued_at)));
    Ok(entries)
}

/// Marks `id` read (the CLI): creates `STATE_DIR/read/ID`.
pub fn mark_read(state: &StateDir, id: Uuid) -> Result<()> {
    let dir = read_dir(state);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(id.to_string());
    std::fs::write(&path, b"").with_context(|| format!("creating {}", path.display()))
}

/// The service's inbox.
#[derive(Debug)]
pub struct Inbox {
    path: PathBuf,
    read: PathBuf,
    entries: Mutex<Vec<Entry>>,
    /// Per message, the states sent on this connection and not yet confirmed, oldest first (a
    /// `Receipt` confirms the oldest: receipts come in the order the states were sent).
    sent: Mutex<HashMap<Uuid, VecDeque<bool>>>,
}

impl Inbox {
    /// Opens the inbox of `state`. A damaged `inbox.json` is kept aside and a new one started
    /// (messages are not worth stopping the agent for).
    pub fn open(state: &StateDir) -> Result<Inbox> {
        let path = state.path("inbox.json");
        let read = read_dir(state);
        std::fs::create_dir_all(&read).with_context(|| format!("creating {}", read.display()))?;
        let entries = load(&path).unwrap_or_else(|err| {
            let aside = path.with_extension("json.damaged");
            warn!(error = %format!("{err:#}"), aside = %aside.display(), "starting a new inbox");
            let _ = std::fs::rename(&path, &aside);
            Vec::new()
        });
        Ok(Inbox { path, read, entries: Mutex::new(entries), sent: Mutex::new(HashMap::new()) })
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sent(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, VecDeque<bool>>> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, entries: &[Entry]) -> Result<()> {
        write_durable(&self.path, &serde_json::to_vec_pretty(entries)?, 0o600)
    }

    /// Whether the PC user has read `id`.
    pub fn is_read(&self, id: Uuid) -> bool {
        is_read_in(&self.read, id)
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores `entry` unless one with its id is here; whether it is new. Beyond [`MAX_INBOX`],
    /// the oldest read entries go first, then the oldest.
    pub fn add(&self, entry: Entry) -> Result<bool> {
        let mut entries = self.entries();
        if entries.iter().any(|e| e.id == entry.id) {
            return Ok(false);
        }
        entries.push(entry);
        while entries.len() > MAX_INBOX {
            let victim = entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.confirmed == Confirmed::Read || self.is_read(e.id))
                .min_by_key(|(_, e)| e.received_at)
                .or_else(|| entries.iter().enumerate().min_by_key(|(_, e)| e.received_at))
                .map(|(i, _)| i)
                .unwrap_or(0);
            let gone = entries.remove(victim);
            let _ = std::fs::remove_file(self.read.join(gone.id.to_string()));
            self.sent().remove(&gone.id);
        }
        self.save(&entries)?;
        Ok(true)
    }

    /// The states to send the gateway: on a new connection (`reconnected`) every message's state
    /// it has not confirmed (received, or read once marked); otherwise only newly read ones not
    /// yet sent as read on this connection. Each is noted as sent.
    pub fn states_to_send(&self, reconnected: bool) -> Vec<(Uuid, bool)> {
        let entries = self.entries();
        let mut sent = self.sent();
        if reconnected {
            sent.clear();
        }
        let mut out = Vec::new();
        for e in entries.iter().filter(|e| e.kind == EntryKind::Message && e.confirmed < Confirmed::Read) {
            let read = self.is_read(e.id);
            let want = if read { Confirmed::Read } else { Confirmed::Received };
            if want <= e.confirmed {
                continue;
            }
            let queue = sent.entry(e.id).or_default();
            if reconnected || (read && !queue.contains(&true)) {
                queue.push_back(read);
                out.push((e.id, read));
            }
        }
        out
    }

    /// Notes that `MessageState { id, read }` went to the gateway.
    pub fn state_sent(&self, id: Uuid, read: bool) {
        let mut sent = self.sent();
        let queue = sent.entry(id).or_default();
        if queue.len() < 4 {
            queue.push_back(read);
        }
    }

    /// A `Receipt` for `id`: the oldest state sent for it is durable at the gateway. Whether `id`
    /// is a message here with a state waiting.
    pub fn receipt(&self, id: Uuid) -> Result<bool> {
        let Some(read) = self.sent().get_mut(&id).and_then(|q| q.pop_front()) else {
            return Ok(false);
        };
        let mut entries = self.entries();
        let Some(entry) = entries.iter_mut().find(|e| e.id == id) else {
            return Ok(false);
        };
        let confirmed = if read { Confirmed::Read } else { Confirmed::Received };
        if confirmed > entry.confirmed {
            entry.confirmed = confirmed;
            self.save(&entries)?;
        }
        Ok(true)
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

static NOTIFYING: AtomicUsize = AtomicUsize::new(0);

/// Raises a desktop notification (`notify-send "Tether: from FROM" TEXT`) when `notify-send` is
/// on `PATH`, in the background, within 5 s; failures are logged at debug. Needs a tokio runtime.
pub fn notify(from: &str, text: &str) {
    let Some(program) = on_path("notify-send") else { return };
    if NOTIFYING.fetch_add(1, Ordering::Relaxed) >= MAX_NOTIFYING {
        NOTIFYING.fetch_sub(1, Ordering::Relaxed);
        debug!("too many desktop notifications under way: skipping one");
        return;
    }
    let (title, text) = (format!("Tether: from {from}"), text.to_string());
    tokio::spawn(async move {
        let run = tokio::process::Command::new(&program)
            .arg(&title)
            .arg(&text)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status();
        match tokio::time::timeout(NOTIFY_TIMEOUT, run).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => debug!(%status, "notify-send failed"),
            Ok(Err(err)) => debug!(error = %err, "cannot run notify-send"),
            Err(_) => debug!("notify-send did not finish within 5 s"),
        }
        NOTIFYING.fetch_sub(1, Ordering::Relaxed);
    });
}

#[cfg(test)]
#[path = "inbox_test.rs"]
mod tests;
