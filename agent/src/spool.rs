//! The spool: reports waiting for the gateway's acknowledgement, one file each
//! (`spool/SEQ.report`, the encoded `Report` frame), written durably before the report is sent
//! and deleted only when the gateway acknowledges its sequence number. An agent restarted, a
//! gateway killed, or a network down loses nothing: the next connection sends what is left, oldest
//! first, and the gateway stores each (UUID, sequence) once.
//!
//! The spool is bounded ([`MAX_SPOOLED`] reports): offline for longer than that many heartbeats,
//! the oldest reports are dropped (and counted), newest kept, since the health meter rates the
//! newest.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bytes::BytesMut;
use protocols::tap::Message;
use tracing::warn;

use crate::state::{sync_dir, write_durable};

/// Reports kept at most (at the default 5-minute heartbeat, about 35 days offline).
pub const MAX_SPOOLED: usize = 10_000;

#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    pub fn new(dir: PathBuf) -> Spool {
        Spool { dir }
    }

    fn file(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.report"))
    }

    /// Keeps `report` (a `Message::Report`) until [`Spool::acknowledged`] with its sequence.
    pub fn keep(&self, seq: u64, report: &Message) -> Result<Vec<u8>> {
        let mut out = BytesMut::with_capacity(report.encoded_len());
        report.encode(&mut out);
        write_durable(&self.file(seq), &out, 0o600)?;
        let waiting = self.sequences()?;
        if waiting.len() > MAX_SPOOLED {
            let drop = waiting.len() - MAX_SPOOLED;
            warn!(dropped = drop, "the spool is full: dropping the oldest unacknowledged reports");
            for old in &waiting[..drop] {
                let _ = std::fs::remove_file(self.file(*old));
            }
        }
        Ok(out.to_vec())
    }

    /// The gateway has stored report `seq`: forget it.
    pub fn acknowledged(&self, seq: u64) -> Result<()> {
        match std::fs::remove_file(self.file(seq)) {
            Ok(()) => {
                sync_dir(&self.dir);
                Ok(())
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err).with_context(|| format!("removing {}", self.file(seq).display())),
        }
    }

    /// Sequence numbers waiting, oldest first.
    pub fn sequences(&self) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some(seq) = name.to_str().and_then(|n| n.strip_suffix(".report")).and_then(|n| n.parse().ok()) {
                out.push(seq);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The encoded frame of waiting report `seq` (`None` if it is gone or damaged: a damaged
    /// file is removed, since it would never be acknowledged).
    pub fn frame(&self, seq: u64) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.file(seq)).ok()?;
        match protocols::tap::decode(&bytes, &protocols::tap::Limits::default()) {
            Ok(Some((Message::Report { seq: inside, .. }, used))) if inside == seq && used == bytes.len() => {
                Some(bytes)
            }
            _ => {
                warn!(seq, "removing a damaged spooled report");
                let _ = std::fs::remove_file(self.file(seq));
                None
            }
        }
    }

    pub fn len(&self) -> usize {
        self.sequences().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
