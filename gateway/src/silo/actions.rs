//! Support actions for a maintenance silo's machines (`docs/silos.md`, "Support actions at a
//! silo"). A silo's own key signs configuration and messages, never actions: agents run only what
//! their root signed. So actions are made at the root (`tether action run`, the API, the portal,
//! as for any machine), signed there with the root's key, and fetched by the silo the machine was
//! given to, which delivers them and sends back what the agents answered.
//!
//! Every `silo.revocations_pull_secs` the silo posts an [`Exchange`] to the root at
//! [`ACTIONS_PATH`], signed with its own key like its other reports: the results its agents sent
//! since the last exchange. The root records each result on its own action (only for machines it
//! gave to that silo), and answers with the actions still open for that silo's machines
//! ([`ActionsOut`]). The silo checks each with the root's key from its bundle ([`check_served`]),
//! keeps the new ones as its own rows with the root's signature, and delivers them as any other.
//!
//! What it does not do: make or sign actions (`support`), or speak to agents (`agents`).

use std::sync::Mutex;

use anyhow::{Context, Result};
use base64::Engine as _;
use bytes::Bytes;
use protocols::tap::{ActionBody, ActionStatus, SignDomain, Signed};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::{info, warn};
use uuid::Uuid;

use super::moves::{send_report, take_request, ReportError, SiloReport};
use super::Maintenance;
use crate::store::{ActionOutcome, NewSupportAction, Store, SupportAction};

/// Where a silo exchanges results for actions at its root.
pub const ACTIONS_PATH: &str = "/silo/v1/actions";
/// Results one exchange carries at most (the rest go with the next).
pub const MAX_RESULTS: usize = 200;
/// How far back a silo that just started sends results (it does not know what it sent before).
const RESENT_AFTER_START: time::Duration = time::Duration::hours(24);

/// What a silo sends its root (signed, [`SiloReport`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchange {
    pub silo: String,
    pub issued_at: i64,
    pub results: Vec<ForwardedResult>,
}

/// An agent's result for an action, as its silo forwards it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedResult {
    pub id: Uuid,
    pub uuid: Uuid,
    /// The result's status (`completed`, `timed_out`, `failed`, `shown`, `refused_…`).
    pub state: String,
    pub exit_code: i64,
    pub duration_ms: i64,
    pub output: String,
    pub output_truncated: bool,
    pub text: String,
    /// When the silo recorded it (Unix milliseconds).
    pub at_ms: i64,
}

/// The actions a root answers with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionsOut {
    pub actions: Vec<ServedAction>,
}

/// An action's signed payload and the root's signature over it, base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedAction {
    pub id: Uuid,
    pub payload: String,
    pub signature: String,
}

/// What a silo keeps between exchanges: results recorded after this were not sent yet.
#[derive(Debug)]
pub struct Forwarded(Mutex<OffsetDateTime>);

impl Default for Forwarded {
    fn default() -> Forwarded {
        Forwarded(Mutex::new(OffsetDateTime::now_utc() - RESENT_AFTER_START))
    }
}

/// The status named `text`, as agents report them.
fn status_named(text: &str) -> Option<ActionStatus> {
    (0..=u8::MAX).filter_map(ActionStatus::from_u8).find(|s| s.as_str() == text)
}

fn forwarded(action: &SupportAction) -> ForwardedResult {
    let at = action.result_at.unwrap_or(OffsetDateTime::UNIX_EPOCH);
    ForwardedResult {
        id: action.id,
        uuid: action.uuid,
        state: action.state.clone(),
        exit_code: action.exit_code.unwrap_or_default(),
        duration_ms: action.duration_ms.unwrap_or_default(),
        output: action.output.clone().unwrap_or_default(),
        output_truncated: action.output_truncated,
        text: action.result_text.clone().unwrap_or_default(),
        at_ms: (at.unix_timestamp_nanos() / 1_000_000) as i64,
    }
}

// ---------------------------------------------------------------------------------------------
// The root.

/// A silo's exchange (root): its results recorded on the actions of the machines given to it,
/// and the actions still open for those machines, each marked as handed over.
pub async fn at_root(store: &Store, report: &SiloReport) -> Result<ActionsOut, ReportError> {
    let exchange: Exchange = take_request(store, report, |e: &Exchange| (e.silo.as_str(), e.issued_at)).await?;
    if exchange.results.len() > MAX_RESULTS {
        return Err(ReportError::Malformed(format!("it carries more than {MAX_RESULTS} results")));
    }
    for result in &exchange.results {
        let given = store.assigned_silo(result.uuid).await?.is_some_and(|s| s.name == exchange.silo);
        let Some(status) = status_named(&result.state).filter(|_| given) else {
            warn!(silo = %exchange.silo, uuid = %result.uuid, action = %result.id, "ignoring a result for a machine not given to that silo, or of no known status");
            continue;
        };
        let outcome = ActionOutcome {
            state: status.as_str(),
            exit_code: result.exit_code,
            duration_ms: result.duration_ms,
            output: result.output.chars().take(protocols::tap::MAX_ACTION_OUTPUT).collect(),
            output_truncated: result.output_truncated,
            text: result.text.clone(),
            // The report the agent took is the silo's, not the root's.
            report_seq: None,
            at: OffsetDateTime::from_unix_timestamp_nanos(i128::from(result.at_ms) * 1_000_000)
                .unwrap_or_else(|_| OffsetDateTime::now_utc()),
        };
        if store.record_action_outcome(result.id, result.uuid, &outcome).await?.is_some() {
            info!(silo = %exchange.silo, uuid = %result.uuid, action = %result.id, status = outcome.state, "support action result from a maintenance silo");
        }
    }
    let now = OffsetDateTime::now_utc();
    let mut out = ActionsOut::default();
    for (id, payload, signature) in store.actions_for_silo(&exchange.silo, now).await? {
        store.mark_action_sent(id, now).await?;
        out.actions.push(ServedAction { id, payload, signature });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The maintenance silo.

/// One served action checked: signed by the root under the actions' domain, about itself, not
/// expired at `now` (Unix seconds). The action, and its payload and signature as received.
pub fn check_served(root_key: &[u8; 32], served: &ServedAction, now: i64) -> Result<ActionBody> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = Bytes::from(b64.decode(&served.payload).context("the payload is not base64")?);
    let signature: [u8; 64] = b64
        .decode(&served.signature)
        .ok()
        .and_then(|s| s.try_into().ok())
        .context("the signature is not 64 bytes of base64")?;
    let signed = Signed { payload, signature };
    if !super::moves::verifies(root_key, SignDomain::Action, &signed) {
        anyhow::bail!("the action is not signed by the root's key");
    }
    let body = ActionBody::decode(&signed.payload).context("the action does not decode")?;
    if body.id != served.id {
        anyhow::bail!("the action's id is not the one served");
    }
    if body.expires_at <= now {
        anyhow::bail!("the action has expired");
    }
    Ok(body)
}

/// One exchange with the root: this silo's new results go up, the root's open actions for its
/// machines come down and are kept. The machines with a new action (to deliver to at once).
pub async fn exchange(
    maintenance: &Maintenance,
    store: &Store,
    keys: &crate::agents::keys::AgentKeys,
) -> Result<Vec<Uuid>> {
    let since = *maintenance.forwarded.0.lock().unwrap_or_else(|e| e.into_inner());
    let results = store.action_results_since(since, MAX_RESULTS as i64).await?;
    let body = Exchange {
        silo: maintenance.name().to_string(),
        issued_at: OffsetDateTime::now_utc().unix_timestamp(),
        results: results.iter().map(forwarded).collect(),
    };
    let answer =
        send_report(maintenance, keys, ACTIONS_PATH, &body).await.context("exchanging actions with the root")?;
    if let Some(last) = results.last().and_then(|a| a.result_at) {
        *maintenance.forwarded.0.lock().unwrap_or_else(|e| e.into_inner()) = last;
    }
    let served: ActionsOut = serde_json::from_value(answer).context("the root's actions are not a list of actions")?;
    let root_key = maintenance.bundle.signing_key()?;
    let now = OffsetDateTime::now_utc();
    let mut fresh = Vec::new();
    for one in &served.actions {
        let body = match check_served(&root_key, one, now.unix_timestamp()) {
            Ok(body) => body,
            Err(err) => {
                warn!(action = %one.id, error = %format!("{err:#}"), "ignoring an action from the root");
                continue;
            }
        };
        let at = |secs: i64| OffsetDateTime::from_unix_timestamp(secs).unwrap_or(now);
        let action = NewSupportAction {
            id: body.id,
            uuid: body.target,
            subscriber_id: None,
            kind: body.kind.as_str(),
            body: body.body.clone(),
            timeout_secs: body.timeout_secs,
            // The root's user; this silo has none of its own for it. (An action held already is
            // a unique violation below: served again until its result reaches the root.)
            issued_by_user_id: 0,
            issued_by: body.issued_by.clone(),
            created_at: at(body.issued_at),
            expires_at: at(body.expires_at),
            payload: one.payload.clone(),
            signature: one.signature.clone(),
        };
        match store.create_support_action(&action).await {
            Ok(()) => {
                info!(uuid = %body.target, action = %body.id, kind = action.kind, "support action from the root kept for delivery");
                fresh.push(body.target);
            }
            Err(err) if crate::store::is_unique_violation(&err) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use protocols::tap::ActionKind;

    #[test]
    fn a_silo_keeps_only_actions_the_root_signed_for_what_they_say() {
        let dir = tempfile::tempdir().unwrap();
        let root = crate::agents::keys::AgentKeys::load_or_create(dir.path()).unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let silo = crate::agents::keys::AgentKeys::load_or_create(other_dir.path()).unwrap();
        let now = 1_800_000_000;
        let body = ActionBody {
            id: Uuid::new_v4(),
            target: Uuid::new_v4(),
            kind: ActionKind::Script,
            issued_at: now,
            expires_at: now + 60,
            timeout_secs: 30,
            issued_by: "support (user 0123abcd)".into(),
            body: "echo hi".into(),
        };
        let mut payload = BytesMut::new();
        body.encode(&mut payload);
        let b64 = base64::engine::general_purpose::STANDARD;
        let served = |keys: &crate::agents::keys::AgentKeys, domain: SignDomain| ServedAction {
            id: body.id,
            payload: b64.encode(&payload),
            signature: b64.encode(keys.sign(domain, &payload)),
        };
        let key = root.signing_public();
        assert_eq!(check_served(&key, &served(&root, SignDomain::Action), now).unwrap(), body);
        // The silo's own key, the root's key in another domain, expired, another id.
        assert!(check_served(&key, &served(&silo, SignDomain::Action), now).is_err());
        assert!(check_served(&key, &served(&root, SignDomain::Message), now).is_err());
        assert!(check_served(&key, &served(&root, SignDomain::Action), now + 60).is_err());
        let renamed = ServedAction { id: Uuid::new_v4(), ..served(&root, SignDomain::Action) };
        assert!(check_served(&key, &renamed, now).is_err());
        assert_eq!(status_named("completed"), Some(ActionStatus::Completed));
        assert_eq!(status_named("pending"), None);
    }
}
