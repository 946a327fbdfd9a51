//! Support actions on the PC: the gateway's signed scripts and instructions, admitted or refused
//! here, run one at a time, and answered with an `ActionResult` that waits on disk for the
//! gateway's `Receipt`.
//!
//! [`Actions::admit`] checks, in order, each failure a refusal sent back as the result:
//!
//! 1. the signature, with the key pinned at enrollment (`BadSignature`);
//! 2. the payload decodes (`Malformed`);
//! 3. the target is this machine (`WrongTarget`);
//! 4. — a copy of an action queued or running here is ignored (its result follows), and a copy of
//!    one whose result is still in the results spool gets that result again, not a refusal;
//! 5. the expiry has not passed (`Expired`);
//! 6. the action is not in the replay ledger (`Replayed`);
//! 7. the PC user has remote help on (`RemoteHelpDisabled`);
//! 8. the local policy allows the kind (`NotAllowed`, naming `policy.toml`).
//!
//! An admitted action is written to the replay ledger ([`ledger`]) as `running` before it runs
//! and `done` after; a script runs under [`script`], instructions go to the [`Inbox`] (and a
//! desktop notification). Results, refusals included, are kept in the results spool
//! ([`results`]) until their receipt. An action found `running` when the agent starts was
//! interrupted (a restart, a crash, a power cut): it is not run again, and its result says so.
//!
//! What it does not do: the queue and the connection (`conn`), or taking the report that follows
//! an action.

pub mod ledger;
pub mod results;
pub mod script;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use protocols::tap::{self, ActionBody, ActionKind, ActionResult, ActionStatus, SignDomain, Signed};
use tracing::warn;
use uuid::Uuid;

use crate::inbox::{self, Confirmed, Entry, EntryKind, Inbox};
use crate::policy::LocalPolicy;
use crate::signature::verifies;
use crate::state::StateDir;
use ledger::{Ledger, LedgerState};
use results::ResultSpool;

/// Actions waiting to run at most (beyond: `Busy`); one more runs.
pub const MAX_QUEUED: usize = 8;

/// The text of a refusal because the PC user turned remote help off.
pub const REMOTE_HELP_OFF: &str = "the PC user has turned remote help off";

/// Why an action is not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The action's id (from the unverified payload for a bad signature; nil if unreadable).
    pub id: Uuid,
    pub status: ActionStatus,
    /// For people (sent to the gateway).
    pub text: String,
    /// What is known of the action, for the log.
    pub kind: Option<ActionKind>,
    pub issued_by: String,
}

impl Refusal {
    /// The result that says so: exit code -1, no time, no output.
    pub fn result(&self) -> ActionResult {
        ActionResult {
            id: self.id,
            status: self.status,
            exit_code: -1,
            duration_ms: 0,
            report_seq: None,
            text: bounded(&self.text),
            output: Bytes::new(),
            output_truncated: false,
        }
    }
}

/// What to do with an incoming action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Queue it: it passed every check.
    Run(ActionBody),
    /// Answer with this refusal.
    Refuse(Refusal),
    /// A copy of an action whose result is waiting for its receipt: send this frame again.
    Resend(Vec<u8>),
    /// A copy of an action queued or running here: its result follows; nothing to send.
    InFlight(Uuid),
}

/// A result's text, within what the gateway decodes (512 bytes), cut at a character boundary.
pub fn bounded(text: &str) -> String {
    let max = tap::DEFAULT_MAX_TEXT;
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The PC's support actions: policy, replay ledger, results spool.
#[derive(Debug)]
pub struct Actions {
    signing_key: Vec<u8>,
    me: Uuid,
    policy: LocalPolicy,
    run_dir: PathBuf,
    ledger: Mutex<Ledger>,
    results: ResultSpool,
    /// Admitted and not finished (queued or running): at most [`MAX_QUEUED`] + 1.
    in_flight: Mutex<HashSet<Uuid>>,
}

impl Actions {
    /// Opens the ledger and the results spool of `state` for machine `me`, whose gateway signs
    /// with `signing_key`; an action left running by a previous process gets its result
    /// (`Failed`, interrupted) now.
    pub fn open(state: &StateDir, signing_key: Vec<u8>, me: Uuid, policy: LocalPolicy, now: i64) -> Result<Actions> {
        let results = ResultSpool::open(state.path("results"))?;
        let ledger = Ledger::load(&state.path("actions.json"), now)?;
        let actions = Actions {
            signing_key,
            me,
            policy,
            run_dir: state.path("run"),
            ledger: Mutex::new(ledger),
            results,
            in_flight: Mutex::new(HashSet::new()),
        };
        actions.interrupted(now)?;
        // Nothing runs yet: what an interrupted script left under run/ goes.
        let _ = std::fs::remove_dir_all(&actions.run_dir);
        Ok(actions)
    }

    fn interrupted(&self, now: i64) -> Result<()> {
        let mut ledger = self.ledger();
        for id in ledger.running() {
            warn!(action = %id, "an action was interrupted (the agent stopped while it ran): not run again");
            if !self.results.contains(id) {
                self.results.keep(&ActionResult {
                    id,
                    status: ActionStatus::Failed,
                    exit_code: -1,
                    duration_ms: 0,
                    report_seq: None,
                    text: "the agent stopped while this action ran (a restart, a crash or a power cut); it is not run again".into(),
                    output: Bytes::new(),
                    output_truncated: false,
                })?;
            }
            let expires_at = ledger.get(id).map_or(now, |e| e.expires_at);
            ledger.record(id, expires_at, LedgerState::Done, now)?;
        }
        Ok(())
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn policy(&self) -> &LocalPolicy {
        &self.policy
    }

    pub fn set_policy(&mut self, policy: LocalPolicy) {
        self.policy = policy;
    }

    /// The results spool.
    pub fn results(&self) -> &ResultSpool {
        &self.results
    }

    /// Decides what to do with `signed` (see the module's doc for the order of the checks);
    /// `remote_help` is the PC user's consent now, `now` Unix seconds.
    pub fn admit(&self, signed: &Signed, remote_help: bool, now: i64) -> Admission {
        let refuse = |id, status, text: String, body: Option<&ActionBody>| {
            Admission::Refuse(Refusal {
                id,
                status,
                text,
                kind: body.map(|b| b.kind),
                issued_by: body.map(|b| b.issued_by.clone()).unwrap_or_default(),
            })
        };
        if !verifies(&self.signing_key, SignDomain::Action, signed) {
            let unverified = ActionBody::decode(&signed.payload).ok();
            let id = unverified.as_ref().map_or(Uuid::nil(), |b| b.id);
            let text = "the action's signature does not verify with the gateway key pinned at enrollment".into();
            return refuse(id, ActionStatus::BadSignature, text, unverified.as_ref());
        }
        let body = match ActionBody::decode(&signed.payload) {
            Ok(body) => body,
            Err(err) => {
                return refuse(Uuid::nil(), ActionStatus::Malformed, format!("the action does not decode: {err}"), None)
            }
        };
        let b = Some(&body);
        if body.target != self.me {
            let text = format!("the action is for machine {}, not this one ({})", body.target, self.me);
            return refuse(body.id, ActionStatus::WrongTarget, text, b);
        }
        if self.in_flight().contains(&body.id) {
            return Admission::InFlight(body.id);
        }
        if let Some(frame) = self.results.frame(body.id) {
            return Admission::Resend(frame);
        }
        if now > body.expires_at {
            let text = format!("the action expired {} s before it reached this PC", now - body.expires_at);
            return refuse(body.id, ActionStatus::Expired, text, b);
        }
        {
            let ledger = self.ledger();
            if let Some(entry) = ledger.get(body.id) {
                let text = match entry.state {
                    LedgerState::Done => "this action already ran on this PC; it is not run twice",
                    LedgerState::Running => "this action is already running on this PC",
                };
                return refuse(body.id, ActionStatus::Replayed, text.into(), b);
            }
            if ledger.refuse_issued_before().is_some_and(|floor| body.issued_at <= floor) {
                let text = "the replay ledger was damaged; actions issued before it was replaced are not run".into();
                return refuse(body.id, ActionStatus::Replayed, text, b);
            }
        }
        if !remote_help {
            return refuse(body.id, ActionStatus::RemoteHelpDisabled, REMOTE_HELP_OFF.into(), b);
        }
        if let Err(why) = self.policy.allows(body.kind) {
            return refuse(body.id, ActionStatus::NotAllowed, why, b);
        }
        Admission::Run(body)
    }

    /// Notes that admitted action `id` is queued (until it has run, or [`Actions::dequeued`]).
    pub fn queued(&self, id: Uuid) {
        self.in_flight().insert(id);
    }

    /// `id` could not be queued after all.
    pub fn dequeued(&self, id: Uuid) {
        self.in_flight().remove(&id);
    }

    /// Keeps a refusal's result in the spool unless a result for its id is already waiting
    /// (the first word stands); its frame.
    pub fn keep_refusal(&self, refusal: &Refusal) -> Result<Vec<u8>> {
        let result = refusal.result();
        if self.results.contains(refusal.id) {
            let message = tap::Message::ActionResult(result);
            let mut out = bytes::BytesMut::with_capacity(message.encoded_len());
            message.encode(&mut out);
            return Ok(out.to_vec());
        }
        self.results.keep(&result)
    }

    /// Runs admitted action `body` (recording it in the ledger first; if that fails it does not
    /// run) and keeps its result in the spool before returning it (without a report yet).
    pub async fn perform(&self, body: &ActionBody, inbox: &Inbox, now: i64) -> ActionResult {
        let mut result = ActionResult {
            id: body.id,
            status: ActionStatus::Failed,
            exit_code: -1,
            duration_ms: 0,
            report_seq: None,
            text: String::new(),
            output: Bytes::new(),
            output_truncated: false,
        };
        let recorded = self.ledger().record(body.id, body.expires_at, LedgerState::Running, now);
        if let Err(err) = recorded {
            result.text = bounded(&format!("not run: cannot record it in the replay ledger: {err:#}"));
            return self.finish(body, result, now);
        }
        match body.kind {
            ActionKind::Script => {
                let timeout = body.timeout_secs.min(self.policy.actions.max_timeout_secs).max(1);
                let ran = script::run(script::Script {
                    id: body.id,
                    body: &body.body,
                    shell: &self.policy.actions.shell,
                    timeout: Duration::from_secs(timeout.into()),
                    run_dir: &self.run_dir,
                })
                .await;
                result.status = ran.status;
                result.exit_code = ran.exit_code;
                result.duration_ms = u32::try_from(ran.duration.as_millis()).unwrap_or(u32::MAX);
                result.text = bounded(&ran.text);
                result.output = Bytes::from(ran.output);
                result.output_truncated = ran.output_truncated;
            }
            ActionKind::Instructions => {
                let entry = Entry {
                    id: body.id,
                    kind: EntryKind::Instructions,
                    from: body.issued_by.clone(),
                    text: body.body.clone(),
                    issued_at: body.issued_at,
                    expires_at: body.expires_at,
                    received_at: now,
                    confirmed: Confirmed::None,
                };
                match inbox.add(entry) {
                    Ok(_) => {
                        inbox::notify(&body.issued_by, &body.body);
                        result.status = ActionStatus::Shown;
                        result.exit_code = 0;
                        result.text = "kept for the PC user (tether-agent messages) and notified".into();
                    }
                    Err(err) => result.text = bounded(&format!("cannot keep the instructions: {err:#}")),
                }
            }
        }
        self.finish(body, result, now)
    }

    fn finish(&self, body: &ActionBody, result: ActionResult, now: i64) -> ActionResult {
        if let Err(err) = self.results.keep(&result) {
            warn!(action = %body.id, error = %format!("{err:#}"), "cannot keep an action's result on disk");
        }
        if let Err(err) = self.ledger().record(body.id, body.expires_at, LedgerState::Done, now) {
            warn!(action = %body.id, error = %format!("{err:#}"), "cannot record an action as done in the replay ledger");
        }
        self.in_flight().remove(&body.id);
        result
    }
}

#[cfg(test)]
#[path = "actions_test.rs"]
mod tests;
