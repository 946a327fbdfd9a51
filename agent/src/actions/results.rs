//! The results spool, `STATE_DIR/results/ID`: each action's result (the encoded
//! `Message::ActionResult` frame, refusals included) written durably before it is sent, sent again
//! on every new connection, and deleted when the gateway's `Receipt` for the id says it is durable
//! there. At most [`MAX_RESULTS`] are kept (the oldest dropped, with a warning).

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, Result};
use bytes::BytesMut;
use protocols::tap::{self, ActionResult, Message};
use tracing::warn;
use uuid::Uuid;

use crate::state::{sync_dir, write_durable};

/// Results kept at most while the gateway has not acknowledged them.
pub const MAX_RESULTS: usize = 1_000;

#[derive(Debug, Clone)]
pub struct ResultSpool {
    dir: PathBuf,
}

impl ResultSpool {
    /// The spool in `dir` (created when missing).
    pub fn open(dir: PathBuf) -> Result<ResultSpool> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(ResultSpool { dir })
    }

    /// The spool in `dir`, to read (`tether-agent status`).
    pub fn at(dir: PathBuf) -> ResultSpool {
        ResultSpool { dir }
    }

    fn file(&self, id: Uuid) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Keeps `result` until [`ResultSpool::receipt`] of its id (replacing one kept for that id);
    /// its encoded frame.
    pub fn keep(&self, result: &ActionResult) -> Result<Vec<u8>> {
        let message = Message::ActionResult(result.clone());
        let mut out = BytesMut::with_capacity(message.encoded_len());
        message.encode(&mut out);
        write_durable(&self.file(result.id), &out, 0o600)?;
        let waiting = self.ids();
        if waiting.len() > MAX_RESULTS {
            let drop = waiting.len() - MAX_RESULTS;
            warn!(dropped = drop, "the results spool is full: dropping the oldest unacknowledged results");
            for old in &waiting[..drop] {
                let _ = std::fs::remove_file(self.file(*old));
            }
        }
        Ok(out.to_vec())
    }

    /// Whether a result for `id` is waiting for its receipt.
    pub fn contains(&self, id: Uuid) -> bool {
        self.file(id).is_file()
    }

    /// The frame waiting for `id` (`None` if none, or if damaged: a damaged file is removed).
    pub fn frame(&self, id: Uuid) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.file(id)).ok()?;
        match tap::decode(&bytes, &tap::Limits::default()) {
            Ok(Some((Message::ActionResult(r), used))) if r.id == id && used == bytes.len() => Some(bytes),
            _ => {
                warn!(action = %id, "removing a damaged spooled action result");
                let _ = std::fs::remove_file(self.file(id));
                None
            }
        }
    }

    /// The gateway has the result for `id`: forget it. Whether one was waiting.
    pub fn receipt(&self, id: Uuid) -> Result<bool> {
        match std::fs::remove_file(self.file(id)) {
            Ok(()) => {
                sync_dir(&self.dir);
                Ok(true)
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(err).with_context(|| format!("removing {}", self.file(id).display())),
        }
    }

    /// Ids waiting, oldest first.
    pub fn ids(&self) -> Vec<Uuid> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out: Vec<(SystemTime, Uuid)> = entries
            .flatten()
            .filter_map(|e| {
                let id = e.file_name().to_str()?.parse::<Uuid>().ok()?;
                let at = e.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
                Some((at, id))
            })
            .collect();
        out.sort_unstable();
        out.into_iter().map(|(_, id)| id).collect()
    }

    pub fn len(&self) -> usize {
        self.ids().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::tap::ActionStatus;

    #[test]
    fn results_wait_for_their_receipt() {
        let dir = tempfile::tempdir().unwrap();
        let spool = ResultSpool::open(dir.path().join("results")).unwrap();
        let id = Uuid::new_v4();
        let result = ActionResult {
            id,
            status: ActionStatus::Completed,
            exit_code: 0,
            duration_ms: 5,
            report_seq: Some(3),
            text: String::new(),
            output: bytes::Bytes::from_static(b"ok\n"),
            output_truncated: false,
        };
        let frame = spool.keep(&result).unwrap();
        assert!(spool.contains(id));
        assert_eq!(spool.frame(id).unwrap(), frame);
        assert_eq!(spool.ids(), vec![id]);
        assert!(spool.receipt(id).unwrap());
        assert!(!spool.receipt(id).unwrap());
        assert!(spool.is_empty());
        // A damaged file is dropped, not sent.
        std::fs::write(dir.path().join("results").join(id.to_string()), b"junk").unwrap();
        assert_eq!(spool.frame(id), None);
        assert!(!spool.contains(id));
    }
}
