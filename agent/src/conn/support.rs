//! What a gateway session carries beyond reports: signed support actions (admitted or refused
//! here, run by a worker one at a time off the control loop, answered with results that wait on
//! disk for their receipt), messages for the PC user (kept, notified, their states sent until
//! confirmed), and the streams of relayed sessions (handed to [`crate::relay`]).
//!
//! The worker lives as long as [`Agent::run`], across connections: an action started before a
//! connection drops finishes, and its result (and the report taken after it) go out on the next.

use anyhow::Result;
use bytes::BytesMut;
use protocols::tap::{ActionBody, ActionResult, ActionStatus, Message, Signed};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::Agent;
use crate::actions::{Admission, Refusal, MAX_QUEUED};
use crate::inbox::{self, Entry};
use crate::link::Control;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn encode(message: &Message) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(message.encoded_len());
    message.encode(&mut out);
    out.to_vec()
}

/// An action the worker finished: the report taken after it (when one could be) and the result,
/// both already on disk, to send if a session is up.
#[derive(Debug)]
pub(super) struct Finished {
    report: Option<Vec<u8>>,
    result: Vec<u8>,
}

/// The session's side of the worker: the queue of admitted actions ([`MAX_QUEUED`]) and what
/// comes back.
#[derive(Debug)]
pub(super) struct Work {
    jobs: mpsc::Sender<ActionBody>,
    pub(super) done: mpsc::Receiver<Finished>,
}

/// The channels between sessions and the worker: the sessions' end, and the worker's.
pub(super) fn channels() -> (Work, mpsc::Receiver<ActionBody>, mpsc::Sender<Finished>) {
    let (jobs, queue) = mpsc::channel(MAX_QUEUED);
    let (finished, done) = mpsc::channel(MAX_QUEUED + 1);
    (Work { jobs, done }, queue, finished)
}

impl Agent {
    /// Runs admitted actions one at a time; after each, takes a fresh report and keeps the
    /// result (with the report's sequence) before handing both to the session. Never returns.
    pub(super) async fn action_worker(&self, mut queue: mpsc::Receiver<ActionBody>, done: mpsc::Sender<Finished>) {
        while let Some(body) = queue.recv().await {
            let mut result = self.actions.perform(&body, &self.inbox, now()).await;
            let report = match self.next_report().await {
                Ok(report) => Some(report),
                Err(err) => {
                    warn!(action = %body.id, error = %format!("{err:#}"), "cannot take the report that follows an action");
                    None
                }
            };
            result.report_seq = report.as_ref().map(|(seq, _)| *seq);
            let frame = self.actions.results().keep(&result).unwrap_or_else(|err| {
                warn!(action = %body.id, error = %format!("{err:#}"), "cannot keep an action's result on disk");
                encode(&Message::ActionResult(result.clone()))
            });
            log_result(&body, &result);
            // Full (no session for a while): the next session sends both from disk.
            let _ = done.try_send(Finished { report: report.map(|(_, frame)| frame), result: frame });
        }
        std::future::pending().await
    }

    /// A `Message::Action`: admitted and queued, refused, answered again, or ignored.
    pub(super) async fn on_action(&self, control: &mut Control, signed: &Signed, work: &Work) -> Result<()> {
        let remote_help = self.state.state().map(|s| s.remote_help).unwrap_or(false);
        match self.actions.admit(signed, remote_help, now()) {
            Admission::Run(body) => {
                let (id, kind, issued_by) = (body.id, body.kind, body.issued_by.clone());
                self.actions.queued(id);
                match work.jobs.try_send(body) {
                    Ok(()) => info!(action = %id, kind = kind.as_str(), %issued_by, "support action admitted"),
                    Err(_) => {
                        self.actions.dequeued(id);
                        let refusal = Refusal {
                            id,
                            status: ActionStatus::Busy,
                            text: format!("{MAX_QUEUED} actions are already waiting on this PC"),
                            kind: Some(kind),
                            issued_by,
                        };
                        self.refuse(control, &refusal).await?;
                    }
                }
            }
            Admission::Refuse(refusal) => self.refuse(control, &refusal).await?,
            Admission::Resend(frame) => {
                debug!("a copy of an action whose result is waiting: sending the result again");
                control.write_raw(&frame).await?;
            }
            Admission::InFlight(id) => debug!(action = %id, "a copy of an action queued or running: ignored"),
        }
        Ok(())
    }

    async fn refuse(&self, control: &mut Control, refusal: &Refusal) -> Result<()> {
        info!(
            action = %refusal.id,
            kind = refusal.kind.map_or("unknown", |k| k.as_str()),
            issued_by = %refusal.issued_by,
            outcome = refusal.status.as_str(),
            text = %refusal.text,
            "support action refused"
        );
        let frame = self.actions.keep_refusal(refusal).unwrap_or_else(|err| {
            warn!(action = %refusal.id, error = %format!("{err:#}"), "cannot keep a refusal on disk");
            encode(&Message::ActionResult(refusal.result()))
        });
        control.write_raw(&frame).await
    }

    /// A `Message::Message`: verified, kept, notified once, answered with its state.
    pub(super) async fn on_message(&self, control: &mut Control, signed: &Signed) -> Result<()> {
        let at = now();
        // Signed by the root's key pinned at enrollment, or by the key of this session's
        // maintenance silo, which the root certified for the silo this machine's certificate names.
        let silo_key = self.silo_key.lock().ok().and_then(|k| *k);
        let verified =
            inbox::verify_message(&self.signing_key, self.enrollment.uuid, signed, at).or_else(|why| match silo_key {
                Some(key) => inbox::verify_message(&key, self.enrollment.uuid, signed, at),
                None => Err(why),
            });
        let body = match verified {
            Ok(body) => body,
            Err(why) => {
                warn!(%why, "dropping a message from the gateway");
                return Ok(());
            }
        };
        match self.inbox.add(Entry::message(&body, at)) {
            Ok(true) => {
                self.messages_received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                info!(message = %body.id, from = %body.from, "message for the PC user kept");
                inbox::notify(&body.from, &body.text);
            }
            Ok(false) => debug!(message = %body.id, "a message already kept: answering with its state"),
            Err(err) => {
                // Not answered: the gateway sends it again.
                warn!(message = %body.id, error = %format!("{err:#}"), "cannot keep a message");
                return Ok(());
            }
        }
        let read = self.inbox.is_read(body.id);
        control.write(&Message::MessageState { id: body.id, read }).await?;
        self.inbox.state_sent(body.id, read);
        Ok(())
    }

    /// A `Receipt`: an action's result, or a message's state, is durable at the gateway.
    pub(super) fn on_receipt(&self, id: Uuid) {
        match self.actions.results().receipt(id) {
            Ok(true) => debug!(action = %id, "the gateway has the action's result"),
            Ok(false) => {}
            Err(err) => warn!(action = %id, error = %format!("{err:#}"), "cannot forget an acknowledged result"),
        }
        if let Err(err) = self.inbox.receipt(id) {
            warn!(message = %id, error = %format!("{err:#}"), "cannot record a message's confirmed state");
        }
    }

    /// Before a new connection sends its spools: what the worker handed over while no session
    /// was up is on disk, and goes out with the spools.
    pub(super) fn forget_finished(work: &mut Work) {
        while work.done.try_recv().is_ok() {}
    }

    /// At a new connection, after the reports: every result waiting for its receipt, oldest
    /// first, then the message states the gateway has not confirmed.
    pub(super) async fn resend_support(&self, control: &mut Control) -> Result<()> {
        let results = self.actions.results();
        for id in results.ids() {
            if let Some(frame) = results.frame(id) {
                control.write_raw(&frame).await?;
            }
        }
        self.send_states(control, true).await
    }

    /// Message states to send: all unconfirmed ones (`reconnected`), else newly read ones.
    pub(super) async fn send_states(&self, control: &mut Control, reconnected: bool) -> Result<()> {
        for (id, read) in self.inbox.states_to_send(reconnected) {
            control.write(&Message::MessageState { id, read }).await?;
        }
        Ok(())
    }

    /// A finished action: its report, then its result.
    pub(super) async fn send_finished(&self, control: &mut Control, finished: Finished) -> Result<()> {
        if let Some(report) = finished.report {
            control.write_raw(&report).await?;
        }
        control.write_raw(&finished.result).await
    }
}

fn log_result(body: &ActionBody, result: &ActionResult) {
    info!(
        action = %body.id,
        kind = body.kind.as_str(),
        issued_by = %body.issued_by,
        outcome = result.status.as_str(),
        exit_code = result.exit_code,
        duration_ms = result.duration_ms,
        output_bytes = result.output.len(),
        report_seq = ?result.report_seq,
        text = %result.text,
        "support action finished"
    );
}
