//! Where the redirection tap's findings go: one writer task that records sessions in the store
//! (`redirections`), in queue order, and one writer task per recorded SOL session that writes its
//! transcript (asciicast v2, `DATA_DIR/transcripts/UUID/ID.cast`, at most [`TRANSCRIPT_CAP`]).
//! Both are fed through bounded queues, so the relays never wait for them.
//!
//! What it does not do: follow the redirection protocol (`redir_tap`) or count metrics.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::warn;
use uuid::Uuid;

use crate::store::{NewRedirection, RedirectionEnd, Store};

/// Store writes queued before new ones are dropped.
pub const LOG_QUEUE: usize = 4096;
/// Transcript chunks queued per session before new ones are dropped.
pub const TRANSCRIPT_QUEUE: usize = 1024;
/// Most bytes of a transcript file; past it, a marker and nothing more.
pub const TRANSCRIPT_CAP: u64 = 64 * 1024 * 1024;
/// How long a transcript writer waits for its session's row (it names the file).
const ROW_WAIT: Duration = Duration::from_secs(30);

/// What the store writer is asked to do; `key` names the session until the store gives its id.
#[derive(Debug)]
pub(crate) enum LogCommand {
    Start {
        key: u64,
        row: NewRedirection,
    },
    User {
        key: u64,
        user: String,
    },
    /// SOL runs and is recorded: name the file in the row, and tell the transcript's writer.
    Transcript {
        key: u64,
        uuid: Uuid,
        reply: oneshot::Sender<PathBuf>,
    },
    /// The session ended (in the protocol), or its relay closed (`last`: the key is forgotten).
    /// `whole` is the session's row, written whole with its end when it has none yet (never
    /// accepted, or its start was dropped).
    End {
        key: u64,
        end: RedirectionEnd,
        whole: Option<Box<NewRedirection>>,
        last: bool,
    },
}

/// The queue of redirection records to the store, and where transcripts go (cheap to clone).
#[derive(Debug, Clone)]
pub struct RedirLog {
    pub(crate) tx: mpsc::Sender<LogCommand>,
    pub(crate) next_key: Arc<AtomicU64>,
    /// `DATA_DIR/transcripts` when SOL is recorded.
    pub(crate) transcripts: Option<PathBuf>,
}

impl RedirLog {
    /// Starts the writer task; it ends once every clone is dropped, after writing what was
    /// queued. `transcripts`: where SOL transcripts go (`None`: not recorded).
    pub fn start(store: Store, transcripts: Option<PathBuf>) -> (RedirLog, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(LOG_QUEUE);
        let task = tokio::spawn(write_log(store, rx, transcripts.clone()));
        (RedirLog { tx, next_key: Arc::new(AtomicU64::new(1)), transcripts }, task)
    }

    /// Whether SOL sessions are recorded.
    pub fn records_sol(&self) -> bool {
        self.transcripts.is_some()
    }

    pub(crate) fn try_send(&self, command: LogCommand) -> bool {
        match self.tx.try_send(command) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            // Shutting down: nothing to count.
            Err(TrySendError::Closed(_)) => true,
        }
    }
}

/// The store writer: one task, in queue order, so a session's start is written before its end.
async fn write_log(store: Store, mut rx: mpsc::Receiver<LogCommand>, transcripts: Option<PathBuf>) {
    let mut ids: HashMap<u64, i64> = HashMap::new();
    let mut failing = false;
    let mut report = |result: Result<(), crate::store::StoreError>| match result {
        Ok(()) => failing = false,
        Err(err) if !failing => {
            failing = true;
            warn!(error = %err, "cannot record a redirection session in the store");
        }
        Err(_) => {}
    };
    while let Some(command) = rx.recv().await {
        match command {
            LogCommand::Start { key, row } => match store.start_redirection(&row).await {
                Ok(id) => {
                    ids.insert(key, id);
                }
                Err(err) => report(Err(err)),
            },
            LogCommand::Transcript { key, uuid, reply } => {
                // Without the row (its start was dropped) the file has no name: not recorded.
                if let (Some(id), Some(dir)) = (ids.get(&key), &transcripts) {
                    let path = dir.join(uuid.to_string()).join(format!("{id}.cast"));
                    report(store.set_redirection_transcript(*id, &path.display().to_string()).await);
                    let _ = reply.send(path);
                }
            }
            LogCommand::User { key, user } => {
                if let Some(id) = ids.get(&key) {
                    report(store.set_redirection_user(*id, &user).await);
                }
            }
            LogCommand::End { key, end, whole, last } => {
                let result = match (ids.get(&key).copied(), whole.as_deref()) {
                    (Some(id), _) => store.end_redirection(id, &end).await,
                    (None, Some(row)) => store.record_redirection(row, &end).await.map(|id| {
                        ids.insert(key, id);
                    }),
                    (None, None) => Ok(()),
                };
                report(result);
                if last {
                    ids.remove(&key);
                }
            }
        }
    }
}

/// One chunk of a transcript.
#[derive(Debug)]
pub(crate) struct CastEvent {
    pub(crate) at: Duration,
    pub(crate) input: bool,
    pub(crate) data: Vec<u8>,
}

/// The relay's side of one SOL transcript.
#[derive(Debug)]
pub(crate) struct Recorder {
    pub(crate) tx: mpsc::Sender<CastEvent>,
    pub(crate) started: Instant,
    /// Chunks dropped since the writer last looked (it notes the gap in the file).
    pub(crate) dropped: Arc<AtomicU64>,
}

/// Writes one transcript: waits for the session's row (its id names the file), then writes the
/// asciicast header and each chunk, up to [`TRANSCRIPT_CAP`].
pub(crate) async fn write_transcript(
    path: oneshot::Receiver<PathBuf>,
    mut rx: mpsc::Receiver<CastEvent>,
    header: serde_json::Value,
    dropped: Arc<AtomicU64>,
    cap: u64,
) {
    let path = match tokio::time::timeout(ROW_WAIT, path).await {
        Ok(Ok(path)) => path,
        _ => {
            warn!("SOL transcript not recorded: its session's row could not be written in time");
            return;
        }
    };
    let mut file = match create_private(&path).await {
        Ok(file) => tokio::io::BufWriter::new(file),
        Err(err) => {
            warn!(path = %path.display(), error = %err, "cannot create the SOL transcript");
            return;
        }
    };
    let mut written = 0u64;
    let mut line = header.to_string();
    line.push('\n');
    let mut full = false;
    let mut last_at = Duration::ZERO;
    // The start of a UTF-8 character each way (output, input) whose rest is in the next chunk.
    let mut carry: [Vec<u8>; 2] = Default::default();
    let result: std::io::Result<()> = async {
        file.write_all(line.as_bytes()).await?;
        written += line.len() as u64;
        while let Some(event) = rx.recv().await {
            if full {
                continue;
            }
            last_at = event.at;
            let secs = event.at.as_secs_f64();
            let gap = dropped.swap(0, Ordering::Relaxed);
            if gap > 0 {
                let note = format!("tether: {gap} chunks dropped here (the transcript writer was behind)");
                line = cast_line(secs, "m", &note);
                file.write_all(line.as_bytes()).await?;
                written += line.len() as u64;
            }
            // A character cut between two chunks is written whole, with the second.
            let side = &mut carry[usize::from(event.input)];
            let mut data = std::mem::take(side);
            data.extend_from_slice(&event.data);
            *side = data.split_off(data.len() - incomplete_utf8_tail(&data));
            if data.is_empty() {
                continue;
            }
            let text = String::from_utf8_lossy(&data);
            line = cast_line(secs, if event.input { "i" } else { "o" }, &text);
            if written + line.len() as u64 > cap {
                full = true;
                let note = format!("tether: transcript stopped at its cap of {cap} bytes");
                line = cast_line(secs, "m", &note);
                file.write_all(line.as_bytes()).await?;
                continue;
            }
            file.write_all(line.as_bytes()).await?;
            written += line.len() as u64;
        }
        file.flush().await
    }
    .await;
    if let Err(err) = result {
        warn!(path = %path.display(), error = %err, at = last_at.as_secs(), "writing the SOL transcript failed");
    }
}

/// How many bytes at the end of `data` begin a UTF-8 character they do not complete (0 to 3).
fn incomplete_utf8_tail(data: &[u8]) -> usize {
    for back in 1..=data.len().min(3) {
        let byte = data[data.len() - back];
        if byte & 0xC0 == 0x80 {
            continue;
        }
        let len = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if len > back { back } else { 0 };
    }
    0
}

/// `[seconds, "code", "text"]` and a newline.
fn cast_line(secs: f64, code: &str, text: &str) -> String {
    let secs = (secs * 1_000_000.0).round() / 1_000_000.0;
    let mut line = serde_json::json!([secs, code, text]).to_string();
    line.push('\n');
    line
}

/// Creates the transcript file, readable by its owner only (it holds what the console showed),
/// and its directory.
async fn create_private(path: &std::path::Path) -> std::io::Result<tokio::fs::File> {
    if let Some(dir) = path.parent() {
        let mut builder = tokio::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        builder.mode(0o700);
        builder.create(dir).await?;
    }
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path).await
}
