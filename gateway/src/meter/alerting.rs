//! Who hears of a change of a machine's meter: the active support contacts of the machine's
//! subscriber, each by their preferences (`alert_prefs`: `red`, `yellow` ticked set the
//! threshold, `green` unticked drops the "back to green" notice, `webhook` an https URL), through
//! the outbox (mail to the contact's address, a webhook's JSON to their URL), each delivery
//! recorded. [`crate::health::alerts::decide`] says what to send; `alert_state` remembers what
//! each contact was last alerted of per machine, so that nothing is repeated while unchanged and
//! a resolved notice goes only to those who were alerted.
//!
//! What it does not do: send (the outbox's workers), or rate (`meter`).

use serde_json::Value;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::{by_subscriber, Change};
use crate::health::alerts::{self, group_stale, Alert, AlertKind, AlertPreference, Channels, MachineRef, StaleSummary};
use crate::health::Health;
use crate::state::Shared;
use crate::store::{ContactRecord, ContactState, NewDelivery, NewMail, StoreError};

/// A contact's alert settings, read from their `alert_prefs`.
struct Prefs {
    threshold: AlertPreference,
    /// Whether they want the "back to green" notice.
    resolved: bool,
    channels: Channels,
}

fn prefs(contact: &ContactRecord) -> Prefs {
    let json = contact.alert_prefs.clone().unwrap_or(Value::Null);
    let webhook = json.get("webhook").and_then(Value::as_str).filter(|u| !u.is_empty()).map(str::to_string);
    let channels = Channels { email: json.get("email").and_then(Value::as_bool).unwrap_or(true), webhook };
    let channels = match channels.validate() {
        Ok(()) => channels,
        Err(_) => Channels { webhook: None, ..channels },
    };
    Prefs {
        threshold: AlertPreference::from_portal_prefs(&json),
        resolved: json.get("green").and_then(Value::as_bool).unwrap_or(true),
        channels,
    }
}

/// Alerts on `changes` (one round's), grouped by subscriber.
pub async fn alert(shared: &Shared, changes: Vec<Change>) {
    for (subscriber, changes) in by_subscriber(shared, changes).await {
        // Machines enrolled by no subscriber: only operators see them; nobody is alerted.
        let Some(subscriber_id) = subscriber else { continue };
        if let Err(err) = alert_subscriber(shared, subscriber_id, changes).await {
            warn!(subscriber = subscriber_id, error = %err, "cannot queue health alerts");
        }
    }
}

async fn alert_subscriber(shared: &Shared, subscriber_id: i64, changes: Vec<Change>) -> Result<(), StoreError> {
    let store = &shared.store;
    let contacts: Vec<ContactRecord> =
        store.contacts_of(subscriber_id).await?.into_iter().filter(|c| c.state == ContactState::Active).collect();
    if contacts.is_empty() {
        return Ok(());
    }
    let subscriber = store.subscriber_pii(subscriber_id).await?.map(|p| p.name).unwrap_or_default();
    let mut nicknames = std::collections::HashMap::new();
    for change in &changes {
        let nickname = store.machine(change.uuid).await?.and_then(|m| m.nickname);
        nicknames.insert(change.uuid, nickname);
    }
    let machine = |uuid| MachineRef {
        uuid,
        nickname: nicknames.get(&uuid).and_then(|n: &Option<String>| n.as_deref()),
        subscriber_id,
        subscriber: &subscriber,
    };
    let triples: Vec<_> =
        changes.iter().map(|c| (c.uuid, c.before.clone().unwrap_or_default(), c.after.clone())).collect();
    let batch = group_stale(&triples, shared.config.health.stale_summary_threshold as usize);
    let base_url = shared.config.mail_public_url();

    for contact in &contacts {
        let prefs = prefs(contact);
        let Some(email) = address(shared, contact).await? else { continue };
        let at = OffsetDateTime::now_utc();
        for change in changes.iter().filter(|c| batch.individual.contains(&c.uuid)) {
            let last = store.last_alerted(contact.id, change.uuid).await?.and_then(|h| Health::parse(&h));
            // `last_alerted` is "green" after a resolved notice: no alert is open then.
            let open = last.filter(|h| *h != Health::Green);
            let Some(kind) = alerts::decide(change.before.as_ref(), &change.after, prefs.threshold, open) else {
                continue;
            };
            if kind == AlertKind::Resolved && !prefs.resolved {
                store.set_last_alerted(contact.id, change.uuid, Health::Green.as_str(), at).await?;
                continue;
            }
            let alert = Alert {
                kind,
                machine: machine(change.uuid),
                previous: change.before.as_ref(),
                current: &change.after,
                at: change.at.unix_timestamp(),
            };
            let mail = alerts::render_mail(&alert, &base_url);
            let payload = alerts::webhook_payload(&alert, &base_url);
            let health = change.after.health.as_str().to_string();
            let sent = Deliver { shared, contact, kind: kind.as_str(), health: &health, change: Some(change), at };
            sent.send(&prefs.channels, &email, mail, payload).await?;
            let remembered = if kind == AlertKind::Resolved { Health::Green } else { change.after.health };
            store.set_last_alerted(contact.id, change.uuid, remembered.as_str(), at).await?;
            info!(contact = contact.id, uuid = %change.uuid, kind = kind.as_str(), %health, "health alert queued");
        }
        if let Some(stale) = &batch.stale_summary {
            if !prefs.threshold.wants(Health::Yellow) {
                continue;
            }
            let machines: Vec<MachineRef<'_>> = stale.iter().map(|u| machine(*u)).collect();
            let summary =
                StaleSummary { subscriber_id, subscriber: &subscriber, machines: &machines, at: at.unix_timestamp() };
            let mail = alerts::render_stale_summary_mail(&summary, &base_url);
            let payload = alerts::stale_summary_payload(&summary, &base_url);
            let sent = Deliver { shared, contact, kind: "stale_summary", health: "yellow", change: None, at };
            sent.send(&prefs.channels, &email, mail, payload).await?;
            info!(contact = contact.id, machines = stale.len(), "stale summary queued");
        }
    }
    Ok(())
}

/// Where a contact's mail goes: the contact email they gave for this subscriber, else their
/// account's.
async fn address(shared: &Shared, contact: &ContactRecord) -> Result<Option<String>, StoreError> {
    if let Some(email) = &contact.contact_email {
        return Ok(Some(email.clone()));
    }
    let Some(user_id) = contact.user_id else { return Ok(None) };
    Ok(shared.store.user(user_id).await?.and_then(|u| u.email))
}

/// One alert to one contact, on each of their channels, recorded.
struct Deliver<'a> {
    shared: &'a Shared,
    contact: &'a ContactRecord,
    kind: &'static str,
    health: &'a str,
    change: Option<&'a Change>,
    at: OffsetDateTime,
}

impl Deliver<'_> {
    async fn send(
        &self,
        channels: &Channels,
        email: &str,
        mail: crate::mail::Rendered,
        payload: Value,
    ) -> Result<(), StoreError> {
        let store = &self.shared.store;
        let mut queued = Vec::new();
        if channels.email {
            let new = NewMail {
                kind: format!("health_{}", self.kind),
                recipient: email.to_string(),
                subject: mail.subject,
                body: mail.body,
                invitation_guid: None,
            };
            queued.push(("email", store.enqueue_mail(&new, self.at).await?));
        }
        if let Some(url) = &channels.webhook {
            let event = payload.get("event").and_then(Value::as_str).unwrap_or("health").to_string();
            let id = store
                .enqueue_webhook(&format!("health_{}", self.kind), url, &event, &payload.to_string(), self.at)
                .await?;
            queued.push(("webhook", id));
        }
        for (channel, outbox_id) in queued {
            store
                .record_delivery(&NewDelivery {
                    change_id: self.change.map(|c| c.change_id),
                    uuid: self.change.map(|c| c.uuid),
                    contact_id: self.contact.id,
                    channel,
                    kind: self.kind,
                    health: self.health.to_string(),
                    outbox_id,
                    at: self.at,
                })
                .await?;
        }
        Ok(())
    }
}
