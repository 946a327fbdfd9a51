//! Moving a client from one maintenance silo to another (`docs/silos.md`, "Moving a client").
//!
//! No exchange spans two silos: the client is the hub.
//!
//! 1. The **root** ([`order`]) reissues the machine's certificate for its own key, naming the
//!    new silo, and signs a [`MoveOrder`] binding the machine, both silos and that certificate.
//!    It serves the moves out of each silo at [`MOVES_PATH`].
//! 2. The **silo it leaves** pulls them ([`pull`]); when the client is (or next is) connected,
//!    it sends [`Message::Move`]: the certificate, the order, the root's certification of its own
//!    key, and the client's history signed with that key ([`handover`]).
//! 3. The **agent** checks the order against the root key it pinned, keeps the certificate and
//!    the handover, and dials the new silo, where it sends [`Message::Transfer`].
//! 4. The **silo it goes to** checks the chain (the order for this machine, this silo and the very
//!    certificate the client connected with; the leaving silo's key certified by the root; the
//!    history signed by it), imports the history once ([`take_transfer`]), answers a receipt, and
//!    reports the move to the root, signed with its own key ([`report`], at [`MOVED_PATH`]).
//! 5. The **root** confirms the move and revokes the old certificate ([`take_report`]); the
//!    silo left forgets the client on its next pull.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use protocols::tap::{signed_message, Handover, Message, MoveOrder, SignDomain, Signed, SiloKeyBody, MAX_EXPORT};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::{info, warn};
use uuid::Uuid;

pub use super::maintenance::Outgoing;
use super::Maintenance;
use crate::agents::keys::AgentKeys;
use crate::store::{ClientHistory, MoveRecord, SiloError, Store};

/// Where a root serves the moves out of a silo (`?from=NAME`).
pub const MOVES_PATH: &str = "/silo/v1/moves";
/// Where a root takes a silo's signed report of the moves it took over.
pub const MOVED_PATH: &str = "/silo/v1/moved";
/// Reports and meter changes a history carries at most (the newest; fewer when they do not fit
/// [`MAX_EXPORT`]).
const EXPORT_REPORTS: i64 = 500;
const EXPORT_CHANGES: i64 = 1000;
/// How long a root keeps listing a confirmed move (so the silo left forgets the client).
const CONFIRMED_LISTED: time::Duration = time::Duration::days(7);
/// Move ids a silo's report names at most.
const MAX_REPORTED: usize = 10_000;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

pub(crate) fn verifies(key: &[u8], domain: SignDomain, signed: &Signed) -> bool {
    UnparsedPublicKey::new(&ED25519, key).verify(&signed_message(domain, &signed.payload), &signed.signature).is_ok()
}

// ---------------------------------------------------------------------------------------------
// The root.

/// Orders machine `uuid` to silo `to` (root): a certificate for its key naming `to`, the signed
/// order, recorded (the machine counts toward `to` from now on).
pub async fn order(
    store: &Store,
    keys: &AgentKeys,
    uuid: Uuid,
    to: &str,
    lifetime: time::Duration,
) -> Result<MoveRecord> {
    let now = OffsetDateTime::now_utc();
    let from = store
        .assigned_silo(uuid)
        .await?
        .ok_or_else(|| crate::exit::not_found(format!("machine {uuid} was not given to a silo by this root")))?;
    let to = store.silo(to).await?.ok_or_else(|| crate::exit::not_found(format!("no silo named {to}")))?;
    if from.name == to.name {
        return Err(crate::exit::bad_input(format!("machine {uuid} is served by {} already", to.name)));
    }
    if let Some(pending) = store.move_of(uuid).await?.filter(|m| m.confirmed_at.is_none()) {
        return Err(crate::exit::refused(format!(
            "machine {uuid} is moving to {} already (ordered {}); move it again once it is there",
            pending.to_silo,
            pending.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
        )));
    }
    if store.silo_signing_key(&to.name).await?.is_none() {
        return Err(crate::exit::refused(format!(
            "silo {} has no signing key on record (it was added before schema 15), so it could not confirm the \
             move: add it again under a new name with `tether silo add … --signing-key`",
            to.name
        )));
    }
    if to.assigned >= to.capacity {
        return Err(crate::exit::refused(format!("silo {} is full ({} of {})", to.name, to.assigned, to.capacity)));
    }
    let machine =
        store.machine(uuid).await?.ok_or_else(|| crate::exit::not_found(format!("machine {uuid} is not enrolled")))?;
    let entitlement = match store.entitlement(machine.subscriber_id).await {
        Ok(entitlement) => entitlement,
        Err(SiloError::Store(err)) => return Err(err.into()),
        Err(err) => return Err(crate::exit::not_found(err.to_string())),
    };
    let granted = super::grant(entitlement, &to, lifetime, now)
        .map_err(|why| crate::exit::refused(format!("machine {uuid}: {why}")))?;
    let (old_serial, spki) = store.agent_key(uuid).await?.ok_or_else(|| {
        crate::exit::not_found(format!(
            "no standing certificate of machine {uuid} with its public key on record (enrolled before schema 15?): \
             enroll it again"
        ))
    })?;
    let issued = keys.reissue(&spki, uuid, lifetime, Some(&granted))?;
    store.add_agent_cert(&issued.record(uuid, now)).await?;
    let body = MoveOrder {
        id: Uuid::new_v4(),
        machine: uuid,
        from: from.name.clone(),
        to: to.name.clone(),
        location: to.location.clone(),
        cert_sha256: sha256(&issued.der),
        issued_at: now.unix_timestamp(),
    };
    let mut payload = BytesMut::new();
    body.encode(&mut payload);
    let record = MoveRecord {
        id: body.id.to_string(),
        uuid,
        from_silo: from.name,
        to_silo: to.name,
        old_serial: Some(old_serial),
        serial: issued.serial,
        certificate: b64().encode(&issued.der),
        order_payload: b64().encode(&payload),
        order_signature: hex::encode(keys.sign(SignDomain::Move, &payload)),
        created_at: now,
        confirmed_at: None,
    };
    store.put_move(&record).await?;
    Ok(record)
}

/// One move as a root serves it to the silo the client leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedMove {
    pub id: String,
    pub uuid: Uuid,
    /// The new certificate, DER in base64.
    pub certificate: String,
    /// The [`MoveOrder`] in base64, and the root's signature over it in hex.
    pub order: String,
    pub signature: String,
    /// The silo it went to has the client: forget it.
    pub confirmed: bool,
}

/// The moves out of a silo, as served at [`MOVES_PATH`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovesOut {
    pub moves: Vec<ServedMove>,
}

/// The moves out of silo `from` (root): pending, and confirmed in the last week.
pub async fn served(store: &Store, from: &str) -> Result<MovesOut, crate::store::StoreError> {
    let since = OffsetDateTime::now_utc() - CONFIRMED_LISTED;
    let moves = store.moves_from(from, since).await?;
    Ok(MovesOut {
        moves: moves
            .into_iter()
            .map(|m| ServedMove {
                id: m.id,
                uuid: m.uuid,
                // A confirmed move only tells the silo left to forget the client.
                certificate: if m.confirmed_at.is_some() { String::new() } else { m.certificate },
                order: m.order_payload,
                signature: m.order_signature,
                confirmed: m.confirmed_at.is_some(),
            })
            .collect(),
    })
}

/// What a maintenance silo tells its root, signed with its own key ([`SignDomain::SiloReport`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiloReport {
    pub silo: String,
    /// A [`ReportBody`], JSON: the bytes signed.
    pub payload: String,
    /// Hex.
    pub signature: String,
}

/// The body of a [`SiloReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportBody {
    pub silo: String,
    pub issued_at: i64,
    /// Ids of the moves whose client this silo took over.
    pub moved: Vec<String>,
}

/// Why a root refused a silo's report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no silo named {0} is registered with a signing key")]
    UnknownSilo(String),
    #[error("the report is not signed by silo {0}'s key")]
    BadSignature(String),
    #[error("the report does not parse: {0}")]
    Malformed(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Whether the silo a report names signed it with the key it was registered with (root).
pub(crate) async fn verify_report(store: &Store, report: &SiloReport) -> Result<(), ReportError> {
    let key = store
        .silo_signing_key(&report.silo)
        .await?
        .and_then(|k| hex::decode(k).ok())
        .ok_or_else(|| ReportError::UnknownSilo(report.silo.clone()))?;
    let signature: [u8; 64] = hex::decode(&report.signature)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| ReportError::BadSignature(report.silo.clone()))?;
    let signed = Signed { payload: Bytes::from(report.payload.clone()), signature };
    if !verifies(&key, SignDomain::SiloReport, &signed) {
        return Err(ReportError::BadSignature(report.silo.clone()));
    }
    Ok(())
}

/// How far apart a silo's signed request and the root's clock may be (a request is signed afresh
/// each time; an old one replayed is refused).
pub const REQUEST_SKEW_SECS: i64 = 300;

/// A silo's signed request (root): signed by the key the silo was registered with, naming that
/// silo (`said` gives the name and when it was made, from the body), and made within
/// [`REQUEST_SKEW_SECS`] of now.
pub(crate) async fn take_request<T: serde::de::DeserializeOwned>(
    store: &Store,
    report: &SiloReport,
    said: impl Fn(&T) -> (&str, i64),
) -> Result<T, ReportError> {
    verify_report(store, report).await?;
    let request: T = serde_json::from_str(&report.payload).map_err(|e| ReportError::Malformed(e.to_string()))?;
    let (silo, issued_at) = said(&request);
    if silo != report.silo {
        return Err(ReportError::Malformed(format!("it is signed by {} and says it is {silo}", report.silo)));
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if (now - issued_at).abs() > REQUEST_SKEW_SECS {
        return Err(ReportError::Malformed(format!(
            "it was made at {issued_at} and this root's clock says {now}: more than {REQUEST_SKEW_SECS} s apart"
        )));
    }
    Ok(request)
}

/// A silo's report (root): checked against the key the silo was registered with; each move it
/// names to it is confirmed once, and the machine's old certificate revoked. How many were new.
pub async fn take_report(store: &Store, report: &SiloReport) -> Result<usize, ReportError> {
    verify_report(store, report).await?;
    let body: ReportBody = serde_json::from_str(&report.payload).map_err(|e| ReportError::Malformed(e.to_string()))?;
    if body.silo != report.silo {
        return Err(ReportError::Malformed(format!("it is signed by {} and says it is {}", report.silo, body.silo)));
    }
    if body.moved.len() > MAX_REPORTED {
        return Err(ReportError::Malformed(format!("it names more than {MAX_REPORTED} moves")));
    }
    let now = OffsetDateTime::now_utc();
    let mut confirmed = 0;
    for id in &body.moved {
        let Some(done) = store.confirm_move(id, &body.silo, now).await? else { continue };
        confirmed += 1;
        info!(uuid = %done.uuid, from = %done.from_silo, to = %done.to_silo, "move confirmed by the silo it went to");
    }
    Ok(confirmed)
}

// ---------------------------------------------------------------------------------------------
// The silo a client leaves.

/// Checks one served move against the root's key and this silo (`me`).
fn check_served(root_key: &[u8; 32], me: &str, served: &ServedMove) -> Result<Outgoing> {
    let payload = b64().decode(&served.order).context("the order is not base64")?;
    let signature: [u8; 64] = hex::decode(&served.signature)
        .ok()
        .and_then(|s| s.try_into().ok())
        .context("the order's signature is not 64 bytes of hex")?;
    let order = Signed { payload: Bytes::from(payload), signature };
    if !verifies(root_key, SignDomain::Move, &order) {
        bail!("the order is not signed by the root's key");
    }
    let body = MoveOrder::decode(&order.payload).context("the order does not decode")?;
    let cert_der = Bytes::from(b64().decode(&served.certificate).context("the certificate is not base64")?);
    if body.from != me || body.machine != served.uuid || body.cert_sha256 != sha256(&cert_der) {
        bail!("the order is not for this silo, this machine and this certificate");
    }
    Ok(Outgoing { id: body.id, order, cert_der })
}

/// Pulls the moves out of this silo from the root once: the pending ones are held for their
/// clients, the clients of confirmed ones forgotten. The machines newly moving.
pub async fn pull(maintenance: &Maintenance, store: &Store) -> Result<Vec<Uuid>> {
    let client = maintenance.root_client()?;
    let path = format!("{MOVES_PATH}?from={}", maintenance.name());
    let value = client.get_json(&path).await.context("pulling the root's moves")?;
    let served: MovesOut = serde_json::from_value(value).context("the root's moves are not a list of moves")?;
    let root_key = maintenance.bundle.signing_key()?;
    let mut pending = HashMap::new();
    for one in &served.moves {
        if one.confirmed {
            if store.forget_client(one.uuid).await? {
                info!(uuid = %one.uuid, "the client moved to another silo, which confirmed it: forgotten here");
            }
            continue;
        }
        match check_served(&root_key, maintenance.name(), one) {
            Ok(outgoing) => {
                pending.insert(one.uuid, Arc::new(outgoing));
            }
            Err(err) => warn!(uuid = %one.uuid, error = %format!("{err:#}"), "ignoring a move from the root"),
        }
    }
    let mut held = maintenance.outgoing.lock().unwrap_or_else(|e| e.into_inner());
    let fresh = pending.keys().filter(|uuid| !held.contains_key(uuid)).copied().collect();
    *held = pending;
    Ok(fresh)
}

/// What a silo exports of a client, signed with its key ([`SignDomain::SiloExport`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    pub machine: Uuid,
    pub from: String,
    pub move_id: Uuid,
    pub exported_at: i64,
    pub history: ClientHistory,
}

/// The [`Message::Move`] for client `uuid`, when the root moved it: its history is exported now
/// (the newest that fits [`MAX_EXPORT`]) and signed with this silo's key.
pub async fn handover(
    maintenance: &Maintenance,
    store: &Store,
    keys: &AgentKeys,
    uuid: Uuid,
) -> Result<Option<Message>> {
    let Some(outgoing) = maintenance.outgoing.lock().unwrap_or_else(|e| e.into_inner()).get(&uuid).cloned() else {
        return Ok(None);
    };
    let mut history = store.client_history(uuid, EXPORT_REPORTS, EXPORT_CHANGES).await?;
    // Where the client connected from, and through which gateway, stay here.
    if let Some(agent) = &mut history.agent {
        (agent.remote_addr, agent.instance_id, agent.connected_since) = (None, None, None);
    }
    let mut export = Export {
        machine: uuid,
        from: maintenance.name().to_string(),
        move_id: outgoing.id,
        exported_at: OffsetDateTime::now_utc().unix_timestamp(),
        history,
    };
    let payload = loop {
        let payload = serde_json::to_vec(&export)?;
        if payload.len() <= MAX_EXPORT {
            break payload;
        }
        // The oldest reports go first; then the oldest changes.
        let reports = &mut export.history.reports;
        let changes = &mut export.history.changes;
        if !reports.is_empty() {
            let drop = reports.len().div_ceil(4);
            reports.drain(..drop);
        } else if !changes.is_empty() {
            let drop = changes.len().div_ceil(4);
            changes.drain(..drop);
        } else {
            bail!("the client's history does not fit a handover even without reports and changes");
        }
    };
    let signature = keys.sign(SignDomain::SiloExport, &payload);
    let handover = Handover {
        order: outgoing.order.clone(),
        silo_key: maintenance.bundle.silo_key_message()?,
        export: Signed { payload: Bytes::from(payload), signature },
    };
    Ok(Some(Message::Move { cert_der: outgoing.cert_der.clone(), handover }))
}

// ---------------------------------------------------------------------------------------------
// The silo a client goes to.

/// Checks a client's move order at the silo it went to (`me`): signed by the root, for this
/// machine, this silo and the certificate it connected with (`cert_sha256`). That alone proves
/// the move.
pub fn check_order(
    root_key: &[u8; 32],
    me: &str,
    uuid: Uuid,
    cert_sha256: &[u8; 32],
    handover: &Handover,
) -> Result<MoveOrder, String> {
    if !verifies(root_key, SignDomain::Move, &handover.order) {
        return Err("the move order is not signed by the root".into());
    }
    let order = MoveOrder::decode(&handover.order.payload).map_err(|e| format!("the move order: {e}"))?;
    if order.machine != uuid || order.to != me {
        return Err(format!("the move order is for machine {} to silo {}", order.machine, order.to));
    }
    if &order.cert_sha256 != cert_sha256 {
        return Err("the move order names another certificate than the one the client connected with".into());
    }
    Ok(order)
}

/// How far ahead of this silo's clock an export's time may be.
const CLOCK_SKEW: i64 = 300;

/// Checks the history of a handover whose `order` checked out: the root certified the leaving
/// silo's key, and the certification held when the history was exported; that key signed the
/// history, which is of this machine and this move.
pub fn check_history(root_key: &[u8; 32], order: &MoveOrder, handover: &Handover, now: i64) -> Result<Export, String> {
    if !verifies(root_key, SignDomain::SiloKey, &handover.silo_key) {
        return Err("the leaving silo's key is not certified by the root".into());
    }
    let key = SiloKeyBody::decode(&handover.silo_key.payload).map_err(|e| format!("the leaving silo's key: {e}"))?;
    if key.silo != order.from {
        return Err(format!("the key is certified for silo {}, and the client left {}", key.silo, order.from));
    }
    if !verifies(&key.key, SignDomain::SiloExport, &handover.export) {
        return Err(format!("the history is not signed by silo {}'s key", key.silo));
    }
    let export: Export =
        serde_json::from_slice(&handover.export.payload).map_err(|e| format!("the history does not parse: {e}"))?;
    if export.machine != order.machine || export.move_id != order.id || export.from != order.from {
        return Err("the history is of another machine or another move".into());
    }
    if export.exported_at >= key.not_after || export.exported_at > now + CLOCK_SKEW {
        return Err(format!("the root's certification of silo {}'s key did not hold when it was exported", key.silo));
    }
    Ok(export)
}

/// A client's [`Message::Transfer`]: its order checked (the move is then recorded and reported
/// to the root: now, and by the pull task until the root has it), its history checked and
/// imported once. The receipt the client waits for. A history that does not check out is refused
/// (logged) and the move recorded without it; an order that does not check out is refused and
/// answered all the same, since sending it again cannot help. One for another silo is not
/// answered: the client keeps it for that silo.
pub async fn take_transfer(
    store: &Store,
    keys: &Arc<AgentKeys>,
    maintenance: &Arc<Maintenance>,
    uuid: Uuid,
    cert_sha256: &[u8; 32],
    handover: &Handover,
) -> Result<Option<Message>, crate::store::StoreError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let Ok(order) = MoveOrder::decode(&handover.order.payload) else {
        warn!(%uuid, "refusing a client's handover: its order does not decode");
        return Ok(Some(Message::Receipt { id: Uuid::nil() }));
    };
    if order.to != maintenance.name() {
        warn!(%uuid, to = %order.to, "a client sent its handover for another silo here; not answered");
        return Ok(None);
    }
    let root_key = match maintenance.bundle.signing_key() {
        Ok(key) => key,
        Err(err) => {
            warn!(error = %format!("{err:#}"), "cannot check a handover: the bundle's root key is damaged");
            return Ok(None);
        }
    };
    if let Err(why) = check_order(&root_key, maintenance.name(), uuid, cert_sha256, handover) {
        warn!(%uuid, "refusing a client's handover: {why}");
        return Ok(Some(Message::Receipt { id: order.id }));
    }
    let history = match check_history(&root_key, &order, handover, now) {
        Ok(export) => export.history,
        Err(why) => {
            warn!(%uuid, from = %order.from, "the client moved in, but its history is refused: {why}");
            ClientHistory::default()
        }
    };
    let imported = store.import_client(&history, uuid, &order.from, &order.id.to_string()).await?;
    if imported {
        info!(
            %uuid, from = %order.from, reports = history.reports.len(), changes = history.changes.len(),
            "client moved in: history imported"
        );
        let (store, keys, maintenance) = (store.clone(), Arc::clone(keys), Arc::clone(maintenance));
        tokio::spawn(async move {
            if let Err(err) = report(&maintenance, &store, &keys).await {
                warn!(error = %format!("{err:#}"), "cannot report a move to the root now; the pull task will again");
            }
        });
    }
    Ok(Some(Message::Receipt { id: order.id }))
}

/// Signs `body` with this silo's key and posts it to the root at `path`.
pub(super) async fn send_report(
    maintenance: &Maintenance,
    keys: &AgentKeys,
    path: &str,
    body: &impl Serialize,
) -> Result<serde_json::Value> {
    let payload = serde_json::to_string(body)?;
    let signature = hex::encode(keys.sign(SignDomain::SiloReport, payload.as_bytes()));
    let report = SiloReport { silo: maintenance.name().to_string(), payload, signature };
    maintenance.root_client()?.post_json(path, &serde_json::to_value(&report)?).await
}

/// Tells the root of the moves this silo took over and has not reported yet; how many.
pub async fn report(maintenance: &Maintenance, store: &Store, keys: &AgentKeys) -> Result<usize> {
    let unreported = store.unreported_moves().await?;
    if unreported.is_empty() {
        return Ok(0);
    }
    let body = ReportBody {
        silo: maintenance.name().to_string(),
        issued_at: OffsetDateTime::now_utc().unix_timestamp(),
        moved: unreported.iter().map(|(_, id)| id.clone()).collect(),
    };
    send_report(maintenance, keys, MOVED_PATH, &body).await.context("reporting moves to the root")?;
    let now = OffsetDateTime::now_utc();
    for (_, id) in &unreported {
        store.move_reported(id, now).await?;
    }
    Ok(unreported.len())
}

#[cfg(test)]
#[path = "moves_test.rs"]
mod tests;
