//! Whom to tell when a machine's health meter changes, and the words: [`decide`] per contact
//! and machine, [`group_stale`] for many machines going stale at once, and the rendering of an
//! alert as a mail ([`render_mail`]) or a webhook's JSON ([`webhook_payload`]).
//!
//! Pure code: no I/O, no clock, no store. What it does not do: remember what was sent (the
//! caller keeps, per contact and machine, the health of the last alert it sent — `last_alerted`
//! — and the machine's previous meter), queue mail or post webhooks.
//!
//! ## The decision ([`decide`])
//!
//! A contact's [`AlertPreference`] sets a threshold: `red_only` wants red, `yellow_and_red`
//! wants yellow and red, `none` nothing. An alert is *open* for a contact and a machine from the
//! alert the contact was sent until the resolved notice (`last_alerted` is `Some` meanwhile).
//!
//! 1. The meter did not change ([`Meter::same_as`] the previous one: same health, same reason
//!    codes): nothing. Alerts are never repeated, and a contact who starts wanting alerts of a
//!    machine already red hears of it at its next change.
//! 2. Preference `none`: nothing, not even the resolved notice of an earlier alert.
//! 3. The health is at or above the threshold:
//!    - no open alert: [`AlertKind::Raised`];
//!    - worse than the open alert's (yellow → red): [`AlertKind::Raised`] again, red;
//!    - better than the open alert's (red → yellow for `yellow_and_red`): [`AlertKind::Changed`];
//!    - the same health, other reasons: [`AlertKind::Changed`] (but nothing when there is no
//!      previous meter to compare with, as after a restart of the gateway).
//! 4. The health is below the threshold (green; or yellow for `red_only`):
//!    - an open alert: [`AlertKind::Resolved`], saying what the health is now ("no longer red:
//!      yellow", or "back to green"); only contacts who were alerted get it;
//!    - none: nothing (the change is filtered out by the preference).
//!
//! After sending, the caller sets `last_alerted` to the meter's health for `Raised` and
//! `Changed`, and to `None` for `Resolved`.
//!
//! ## Many machines going stale at once ([`group_stale`])
//!
//! After a gateway outage (or a site's network going down) every machine misses its reports at
//! once. The changes of one evaluation round for one subscriber go through [`group_stale`]: when
//! at least `threshold` of them *merely* went stale (their only reason is now
//! [`ReasonCode::Stale`], and they were not stale before), they make one summary
//! ([`render_stale_summary_mail`], [`stale_summary_payload`]) for the contacts who want yellow,
//! instead of one alert each. A summary opens no alert per machine (the caller leaves
//! `last_alerted` as it was), so when those machines report again nothing more is sent.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{one_line, when, Health, Meter, ReasonCode};
use crate::mail::{Rendered, PRODUCT_NAME};

/// Which health changes a contact wants to hear of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertPreference {
    /// No alerts.
    None,
    /// Alerts when a machine turns red (and when it is no longer red).
    RedOnly,
    /// Alerts when a machine turns yellow or red (and when it is back to green).
    #[default]
    YellowAndRed,
}

impl AlertPreference {
    /// As stored: `none`, `red_only`, `yellow_and_red` (the serde names).
    pub fn as_str(self) -> &'static str {
        match self {
            AlertPreference::None => "none",
            AlertPreference::RedOnly => "red_only",
            AlertPreference::YellowAndRed => "yellow_and_red",
        }
    }

    /// The inverse of [`AlertPreference::as_str`]; anything else is `None`.
    pub fn parse(text: &str) -> Option<AlertPreference> {
        match text {
            "none" => Some(AlertPreference::None),
            "red_only" => Some(AlertPreference::RedOnly),
            "yellow_and_red" => Some(AlertPreference::YellowAndRed),
            _ => None,
        }
    }

    /// Whether a machine of this health is at or above the contact's threshold.
    pub fn wants(self, health: Health) -> bool {
        match self {
            AlertPreference::None => false,
            AlertPreference::RedOnly => health == Health::Red,
            AlertPreference::YellowAndRed => health >= Health::Yellow,
        }
    }

    /// From the portal's checkboxes as stored in a contact's `alert_prefs` (`{"red": true,
    /// "yellow": false, "green": true}`): `yellow` ticked → `yellow_and_red`, else `red` ticked →
    /// `red_only`, else `none`. The `green` box ("back to green") is not a threshold: a caller
    /// honouring it drops [`AlertKind::Resolved`] for contacts who untick it.
    pub fn from_portal_prefs(prefs: &Value) -> AlertPreference {
        let ticked = |key: &str| prefs.get(key).and_then(Value::as_bool).unwrap_or(false);
        if ticked("yellow") {
            AlertPreference::YellowAndRed
        } else if ticked("red") {
            AlertPreference::RedOnly
        } else {
            AlertPreference::None
        }
    }
}

/// Where a contact's alerts go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Channels {
    /// Mail to the contact's address, through the outbox.
    pub email: bool,
    /// An `https://` URL the JSON of [`webhook_payload`] is POSTed to.
    pub webhook: Option<String>,
}

impl Default for Channels {
    fn default() -> Self {
        Channels { email: true, webhook: None }
    }
}

/// Longest webhook URL accepted.
pub const MAX_WEBHOOK_URL: usize = 2048;

impl Channels {
    /// Checks the webhook URL: `https://`, no whitespace or control characters, at most
    /// [`MAX_WEBHOOK_URL`] bytes (alerts name machines: they are not sent in clear).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.webhook {
            let host = url.strip_prefix("https://").unwrap_or("");
            if host.is_empty()
                || host.starts_with('/')
                || url.len() > MAX_WEBHOOK_URL
                || url.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(format!(
                    "webhook is {:?}; give an https:// URL of at most {MAX_WEBHOOK_URL} characters",
                    one_line(url, 80)
                ));
            }
        }
        Ok(())
    }
}

/// What to send one contact about one machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// The machine reached the contact's threshold, or got worse: `health` is its health now.
    Raised { health: Health },
    /// Still at or above the threshold, with another health or other reasons.
    Changed,
    /// Below the contact's threshold again after an alert (back to green, or red → yellow for
    /// `red_only`).
    Resolved,
}

impl AlertKind {
    /// `raised`, `changed`, `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Raised { .. } => "raised",
            AlertKind::Changed => "changed",
            AlertKind::Resolved => "resolved",
        }
    }
}

/// What to send one contact about one machine whose meter went from `previous` (`None`: no
/// meter before, a new machine or a restart) to `current`, given the contact's `pref` and the
/// health of the open alert it was sent (`last_alerted`, `None` when none is open). The rules
/// are in the module's doc.
pub fn decide(
    previous: Option<&Meter>,
    current: &Meter,
    pref: AlertPreference,
    last_alerted: Option<Health>,
) -> Option<AlertKind> {
    if previous.is_some_and(|p| p.same_as(current)) || pref == AlertPreference::None {
        return None;
    }
    let health = current.health;
    if !pref.wants(health) {
        return last_alerted.map(|_| AlertKind::Resolved);
    }
    match last_alerted {
        None => Some(AlertKind::Raised { health }),
        Some(open) if health > open => Some(AlertKind::Raised { health }),
        Some(open) if health < open => Some(AlertKind::Changed),
        Some(_) => previous.map(|_| AlertKind::Changed),
    }
}

/// The changes of one evaluation round split into those to [`decide`] one by one and those
/// that make one stale summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlertBatch {
    /// Machines to [`decide`] on one by one, in the order given.
    pub individual: Vec<Uuid>,
    /// Machines that merely went stale together, when at least the threshold did: one summary
    /// for the contacts who want yellow ([`AlertPreference::wants`]), no alert each.
    pub stale_summary: Option<Vec<Uuid>>,
}

/// Splits one subscriber's changes of one round, `(machine, meter before, meter after)`: when
/// at least `threshold` machines (not 0) merely went stale (not stale before, only stale now),
/// they go to [`AlertBatch::stale_summary`]; every other change (and all of them below the
/// threshold) to [`AlertBatch::individual`].
pub fn group_stale(changes: &[(Uuid, Meter, Meter)], threshold: usize) -> AlertBatch {
    let merely_stale = |before: &Meter, after: &Meter| after.only_stale() && !before.has(ReasonCode::Stale);
    let stale: Vec<Uuid> = changes.iter().filter(|(_, b, a)| merely_stale(b, a)).map(|(id, _, _)| *id).collect();
    if threshold == 0 || stale.len() < threshold {
        return AlertBatch { individual: changes.iter().map(|(id, _, _)| *id).collect(), stale_summary: None };
    }
    let individual = changes.iter().filter(|(_, b, a)| !merely_stale(b, a)).map(|(id, _, _)| *id).collect();
    AlertBatch { individual, stale_summary: Some(stale) }
}

/// The machine an alert is about, as alerts name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MachineRef<'a> {
    pub uuid: Uuid,
    /// The subscriber's name for it, if any.
    pub nickname: Option<&'a str>,
    pub subscriber_id: i64,
    /// The subscriber's name.
    pub subscriber: &'a str,
}

/// One alert to render: what [`decide`] said about a machine's change.
#[derive(Clone, Copy, Debug)]
pub struct Alert<'a> {
    pub kind: AlertKind,
    pub machine: MachineRef<'a>,
    /// The meter before (`None`: none known).
    pub previous: Option<&'a Meter>,
    pub current: &'a Meter,
    /// When the change was seen (Unix seconds).
    pub at: i64,
}

/// Many machines of one subscriber that merely went stale together ([`group_stale`]).
#[derive(Clone, Copy, Debug)]
pub struct StaleSummary<'a> {
    pub subscriber_id: i64,
    pub subscriber: &'a str,
    pub machines: &'a [MachineRef<'a>],
    pub at: i64,
}

/// Longest value from people (a nickname, a subscriber's name) put into an alert, in characters.
const MAX_VALUE: usize = 100;

/// Most machines a stale summary mail lists by name.
const MAX_LISTED: usize = 50;

/// The base URL without a trailing `/`, on one line.
fn base(base_url: &str) -> String {
    one_line(base_url, 500).trim_end_matches('/').to_string()
}

fn machine_link(base_url: &str, uuid: Uuid) -> String {
    format!("{}/portal/machines/{uuid}", base(base_url))
}

/// `Front desk` or the UUID when it has no nickname.
fn machine_name(machine: &MachineRef<'_>) -> String {
    match machine.nickname.map(|n| one_line(n, MAX_VALUE)) {
        Some(nickname) if !nickname.is_empty() => nickname,
        _ => machine.uuid.to_string(),
    }
}

fn rfc3339(at: i64) -> String {
    OffsetDateTime::from_unix_timestamp(at).ok().and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_else(|| at.to_string())
}

fn signed(base_url: &str, text: String) -> String {
    format!(
        "{text}\nYou receive this mail because of the alerts you chose as a support contact;\n\
         change them on your profile: {}/portal/profile\n\
         -- \n{PRODUCT_NAME}\nThis mail was sent automatically; replies are not read.\n",
        base(base_url)
    )
}

/// The reasons as an indented list, one per line.
fn reason_lines(meter: &Meter) -> String {
    meter.reasons.iter().map(|r| format!("  - {}: {}\n", r.health, one_line(&r.text, 300))).collect()
}

/// The first reason, and how many more, for a subject.
fn reason_summary(meter: &Meter) -> String {
    match meter.reasons.split_first() {
        None => String::new(),
        Some((first, [])) => format!(": {}", one_line(&first.text, 120)),
        Some((first, rest)) => format!(": {} (+{} more)", one_line(&first.text, 120), rest.len()),
    }
}

/// The alert as a mail: the subject names the machine and its health with the first reason; the
/// body the subscriber, the machine's UUID, every reason, and a link to the machine's page
/// (`base_url` as in `Config::mail_public_url`).
pub fn render_mail(alert: &Alert<'_>, base_url: &str) -> Rendered {
    let name = machine_name(&alert.machine);
    let subscriber = one_line(alert.machine.subscriber, MAX_VALUE);
    let health = alert.current.health;
    let previous = alert.previous.map(|p| p.health);
    let was = match previous {
        Some(p) if p != health => format!(" (it was {p})"),
        _ => String::new(),
    };
    let (subject, opening) = match alert.kind {
        AlertKind::Raised { .. } => (
            format!("{name} is {health}{}", reason_summary(alert.current)),
            format!("The health of {name} is {health}{was}."),
        ),
        AlertKind::Changed if previous == Some(health) => (
            format!("{name} is still {health}, for other reasons{}", reason_summary(alert.current)),
            format!("The health of {name} is still {health}, for other reasons."),
        ),
        AlertKind::Changed => (
            format!("{name} is now {health}{}", reason_summary(alert.current)),
            format!("The health of {name} is now {health}{was}."),
        ),
        AlertKind::Resolved if health == Health::Green => {
            (format!("{name} is back to green"), format!("The health of {name} is back to green{was}."))
        }
        AlertKind::Resolved => (
            match previous {
                Some(p) => format!("{name} is no longer {p}: now {health}"),
                None => format!("{name} is {health} now"),
            },
            format!(
                "The health of {name} is {health}{was}.\n\
                 That is below the alerts you chose: no more mail about it until it gets worse again."
            ),
        ),
    };
    let reasons = if alert.current.reasons.is_empty() {
        "Nothing needs attention any more.\n".to_string()
    } else {
        format!("Why:\n{}", reason_lines(alert.current))
    };
    let body = format!(
        "Hello,\n\n{opening}\n\n  Subscriber: {subscriber}\n  Machine:    {uuid}\n  Seen at:    {at}\n\n\
         {reasons}\nSee the machine:\n\n    {link}\n",
        at = when(alert.at),
        uuid = alert.machine.uuid,
        link = machine_link(base_url, alert.machine.uuid),
    );
    Rendered { subject: one_line(&subject, 200), body: signed(base_url, body) }
}

/// The webhook's JSON for an alert:
///
/// ```json
/// {"event": "health_changed", "kind": "raised", "machine_uuid": "…", "nickname": "Front desk",
///  "subscriber_id": 42, "subscriber": "Olga's Bakery", "health": "red", "previous": "green",
///  "reasons": [{"code": "firewall_off", "health": "red", "text": "firewall off (…)"}],
///  "at": "2026-12-03T10:00:00Z", "link": "https://gw.example:8443/portal/machines/…"}
/// ```
///
/// `event` is `resolved` for [`AlertKind::Resolved`], else `health_changed`; `kind` is
/// [`AlertKind::as_str`]; `nickname` and `previous` may be `null`.
pub fn webhook_payload(alert: &Alert<'_>, base_url: &str) -> Value {
    let event = match alert.kind {
        AlertKind::Resolved => "resolved",
        AlertKind::Raised { .. } | AlertKind::Changed => "health_changed",
    };
    json!({
        "event": event,
        "kind": alert.kind.as_str(),
        "machine_uuid": alert.machine.uuid,
        "nickname": alert.machine.nickname,
        "subscriber_id": alert.machine.subscriber_id,
        "subscriber": alert.machine.subscriber,
        "health": alert.current.health,
        "previous": alert.previous.map(|p| p.health),
        "reasons": alert.current.reasons,
        "at": rfc3339(alert.at),
        "link": machine_link(base_url, alert.machine.uuid),
    })
}

/// The stale summary as a mail: how many machines of the subscriber stopped reporting, the first
/// [`MAX_LISTED`] by name and UUID, and a link to the machine list.
pub fn render_stale_summary_mail(summary: &StaleSummary<'_>, base_url: &str) -> Rendered {
    let subscriber = one_line(summary.subscriber, MAX_VALUE);
    let count = summary.machines.len();
    let mut list: String = summary
        .machines
        .iter()
        .take(MAX_LISTED)
        .map(|m| match m.nickname.map(|n| one_line(n, MAX_VALUE)) {
            Some(nickname) if !nickname.is_empty() => format!("  - {nickname} ({})\n", m.uuid),
            _ => format!("  - {}\n", m.uuid),
        })
        .collect();
    if count > MAX_LISTED {
        list.push_str(&format!("  … and {} more\n", count - MAX_LISTED));
    }
    let body = format!(
        "Hello,\n\n\
         {count} machines of {subscriber} stopped reporting at about the same time.\n\
         Seen at {at}, their health is yellow for that reason only.\n\
         When many machines fall silent together, the cause is usually the network or the\n\
         gateway rather than the machines, so you get one mail instead of one each. No\n\
         further mail is sent when they report again.\n\n\
         {list}\nSee the machines:\n\n    {link}/portal/machines\n",
        at = when(summary.at),
        link = base(base_url),
    );
    Rendered {
        subject: one_line(&format!("{count} machines of {subscriber} stopped reporting"), 200),
        body: signed(base_url, body),
    }
}

/// The webhook's JSON for a stale summary:
///
/// ```json
/// {"event": "stale_summary", "subscriber_id": 42, "subscriber": "Olga's Bakery",
///  "health": "yellow", "count": 2, "machines": [{"machine_uuid": "…", "nickname": null}, …],
///  "at": "2026-12-03T10:00:00Z", "link": "https://gw.example:8443/portal/machines"}
/// ```
pub fn stale_summary_payload(summary: &StaleSummary<'_>, base_url: &str) -> Value {
    let machines: Vec<Value> =
        summary.machines.iter().map(|m| json!({"machine_uuid": m.uuid, "nickname": m.nickname})).collect();
    json!({
        "event": "stale_summary",
        "subscriber_id": summary.subscriber_id,
        "subscriber": summary.subscriber,
        "health": Health::Yellow,
        "count": summary.machines.len(),
        "machines": machines,
        "at": rfc3339(summary.at),
        "link": format!("{}/portal/machines", base(base_url)),
    })
}

#[cfg(test)]
#[path = "alerts_test.rs"]
mod tests;
