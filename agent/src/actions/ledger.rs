//! The replay ledger, `STATE_DIR/actions.json`: every action this PC has started, by id, with its
//! expiry and whether it is still `running` or `done`. An action is written here (durably) before
//! it runs, so that one sent again (a lost result, a restart, a replayed frame) never runs twice.
//!
//! Entries go once their action has been expired for more than a day (by then it is refused as
//! expired anyway); at most [`MAX_LEDGER`] are kept, the oldest dropped first. A ledger found
//! damaged is kept aside (`actions.json.damaged`) and the new one refuses every action issued
//! before the damage was found, since which of those ran is no longer known.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tracing::warn;
use uuid::Uuid;

use crate::state::write_durable;

/// Entries kept at most.
pub const MAX_LEDGER: usize = 10_000;
/// An entry is pruned once its action has been expired this long (seconds).
pub const PRUNE_AFTER_SECS: i64 = 24 * 60 * 60;

/// Where an action is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerState {
    /// Started and not finished (after a restart: interrupted).
    Running,
    /// Finished; its result is in the results spool or acknowledged.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The action's expiry (Unix seconds).
    pub expires_at: i64,
    pub state: LedgerState,
    /// When the entry was last written (Unix seconds).
    pub recorded_at: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// Set when a damaged ledger was replaced: actions issued before it are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refuse_issued_before: Option<i64>,
    #[serde(default)]
    actions: BTreeMap<Uuid, LedgerEntry>,
}

/// The ledger, loaded; every change is written through.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: File,
}

impl Ledger {
    /// Loads `path` (a missing file is an empty ledger); `now` dates a damaged one's replacement.
    pub fn load(path: &Path, now: i64) -> Result<Ledger> {
        let file = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                Ok(file) => file,
                Err(err) => {
                    let aside = path.with_extension("json.damaged");
                    warn!(path = %path.display(), error = %err, aside = %aside.display(),
                        "the replay ledger is damaged: kept aside; actions issued before now will be refused");
                    let _ = std::fs::rename(path, &aside);
                    let mut ledger = Ledger { path: path.to_path_buf(), file: File::default() };
                    ledger.file.refuse_issued_before = Some(now);
                    ledger.save()?;
                    return Ok(ledger);
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(err) => return Err(anyhow::Error::new(err).context(format!("reading {}", path.display()))),
        };
        Ok(Ledger { path: path.to_path_buf(), file })
    }

    pub fn get(&self, id: Uuid) -> Option<&LedgerEntry> {
        self.file.actions.get(&id)
    }

    /// The time before which issued actions are refused (after a damaged ledger), if any.
    pub fn refuse_issued_before(&self) -> Option<i64> {
        self.file.refuse_issued_before
    }

    /// Actions left `running` (by a previous process, when called at start).
    pub fn running(&self) -> Vec<Uuid> {
        self.file.actions.iter().filter(|(_, e)| e.state == LedgerState::Running).map(|(id, _)| *id).collect()
    }

    pub fn len(&self) -> usize {
        self.file.actions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.file.actions.is_empty()
    }

    /// Records action `id` in `state`, prunes, and writes the ledger to disk before returning.
    pub fn record(&mut self, id: Uuid, expires_at: i64, state: LedgerState, now: i64) -> Result<()> {
        self.file.actions.insert(id, LedgerEntry { expires_at, state, recorded_at: now });
        self.prune(now);
        self.save()
    }

    /// Drops entries expired for more than [`PRUNE_AFTER_SECS`], then the oldest beyond
    /// [`MAX_LEDGER`] (never a running one).
    fn prune(&mut self, now: i64) {
        self.file.actions.retain(|_, e| e.state == LedgerState::Running || e.expires_at + PRUNE_AFTER_SECS >= now);
        let over = self.file.actions.len().saturating_sub(MAX_LEDGER);
        if over > 0 {
            let mut done: Vec<(i64, Uuid)> = self
                .file
                .actions
                .iter()
                .filter(|(_, e)| e.state == LedgerState::Done)
                .map(|(id, e)| (e.recorded_at, *id))
                .collect();
            done.sort_unstable();
            for (_, id) in done.into_iter().take(over) {
                self.file.actions.remove(&id);
            }
        }
    }

    fn save(&self) -> Result<()> {
        write_durable(&self.path, &serde_json::to_vec(&self.file)?, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_survives_a_reload_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("actions.json");
        let now = 1_000_000;
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut ledger = Ledger::load(&path, now).unwrap();
        assert!(ledger.is_empty());
        ledger.record(a, now + 600, LedgerState::Running, now).unwrap();
        ledger.record(b, now - 10, LedgerState::Done, now).unwrap();
        ledger.record(c, now + 600, LedgerState::Done, now).unwrap();

        let mut ledger = Ledger::load(&path, now).unwrap();
        assert_eq!(ledger.len(), 3);
        assert_eq!(ledger.get(a).unwrap().state, LedgerState::Running);
        assert_eq!(ledger.running(), vec![a]);
        assert_eq!(ledger.refuse_issued_before(), None);

        // A day and a bit later, b (expired) goes; a and c stay until a day after theirs.
        let later = now + PRUNE_AFTER_SECS + 60;
        ledger.record(a, now + 600, LedgerState::Done, later).unwrap();
        let mut ledger = Ledger::load(&path, later).unwrap();
        assert!(ledger.get(b).is_none());
        assert_eq!(ledger.get(a).unwrap().state, LedgerState::Done);
        assert!(ledger.get(c).is_some());
        let d = Uuid::new_v4();
        let much_later = now + 600 + PRUNE_AFTER_SECS + 1;
        ledger.record(d, much_later + 600, LedgerState::Running, much_later).unwrap();
        let ledger = Ledger::load(&path, much_later).unwrap();
        assert!(ledger.get(a).is_none() && ledger.get(c).is_none());
        assert_eq!(ledger.len(), 1);
    }

    #[test]
    fn the_ledger_is_capped_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("actions.json");
        let mut ledger = Ledger::load(&path, 0).unwrap();
        let first = Uuid::new_v4();
        ledger.file.actions.insert(first, LedgerEntry { expires_at: 10_000, state: LedgerState::Done, recorded_at: 1 });
        for i in 0..MAX_LEDGER {
            let entry = LedgerEntry { expires_at: 10_000, state: LedgerState::Done, recorded_at: 2 + i as i64 };
            ledger.file.actions.insert(Uuid::new_v4(), entry);
        }
        ledger.record(Uuid::new_v4(), 10_000, LedgerState::Running, 0).unwrap();
        assert_eq!(ledger.len(), MAX_LEDGER);
        assert!(ledger.get(first).is_none());
    }

    #[test]
    fn a_damaged_ledger_is_kept_aside_and_refuses_older_actions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("actions.json");
        std::fs::write(&path, b"{half").unwrap();
        let ledger = Ledger::load(&path, 77).unwrap();
        assert_eq!(ledger.refuse_issued_before(), Some(77));
        assert!(dir.path().join("actions.json.damaged").exists());
        assert_eq!(Ledger::load(&path, 99).unwrap().refuse_issued_before(), Some(77));
    }
}
