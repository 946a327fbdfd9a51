//! The machines a visitor may see (`ListMachines` on the gateway, filtered by
//! `Store::visible_machines_with`, the rule of the API's device list), and one machine's page
//! (`ViewMachine`; its audit and redirection sessions with `ViewAudit`). Viewing a machine's
//! page appends a `machine.viewed` audit row. The page shows the health meter and its reasons,
//! the agent's consent to remote help, its newest support parameters and the week's changes
//! ("no rating yet" before the first).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{html, Markup};
use time::OffsetDateTime;
use tracing::warn;
use uuid::Uuid;

use super::{unavailable, views, Allow, Portal};
use crate::policy::{self, Action, Resource};
use crate::store::{AuditAction, DeviceRecord, NewAudit};

/// Machines on one page of the list.
const PAGE: u32 = 100;
/// Audit rows and redirection sessions on a machine's page.
const RECENT: u32 = 50;

/// A meter as a word ("no rating yet" before the first).
fn meter_badge(health: Option<&str>) -> Markup {
    match health {
        Some(h) => html! { strong class={ "health-" (h) } { (h) } },
        None => html! { span.muted { "no rating yet" } },
    }
}

/// The reasons' texts of a stored change (JSON), joined.
fn reason_texts(json: &str) -> String {
    let reasons: Vec<crate::health::Reason> = serde_json::from_str(json).unwrap_or_default();
    if reasons.is_empty() {
        return "all good".into();
    }
    reasons.iter().map(|r| r.text.as_str()).collect::<Vec<_>>().join("; ")
}

/// A report's parameters as (name, what it says) rows; "unknown: why" for the unknown ones.
fn parameter_rows(report: &protocols::telemetry::Report) -> Vec<(&'static str, String)> {
    use protocols::telemetry::Reading;
    fn row<T>(reading: &Reading<T>, show: impl Fn(&T) -> String) -> String {
        match reading {
            Reading::Value(v) => show(v),
            Reading::Unknown(why) => format!("unknown: {why}"),
        }
    }
    let date = |t: i64| views::when(OffsetDateTime::from_unix_timestamp(t).ok());
    vec![
        (
            "Firewall",
            row(&report.firewall, |f| {
                format!(
                    "{} ({:?}, {} rules{})",
                    if f.active { "on" } else { "off" },
                    f.backend,
                    f.rules,
                    if f.default_deny { ", default deny" } else { "" }
                )
            }),
        ),
        (
            "Antivirus",
            row(&report.antivirus, |a| {
                let signatures = a.signatures_at.map(date).unwrap_or_else(|| "unknown".into());
                format!(
                    "{}: {}, updater {}, signatures of {signatures}",
                    a.product,
                    if a.running { "running" } else { "not running" },
                    if a.updater_running { "running" } else { "not running" }
                )
            }),
        ),
        (
            "Last full scan",
            row(&report.last_full_scan, |s| {
                format!("{}: {} threats found, {} cleaned", date(s.finished_at), s.threats_found, s.threats_cleaned)
            }),
        ),
        (
            "Updates",
            row(&report.updates, |u| format!("{} pending, {} of them security updates", u.pending, u.security_pending)),
        ),
        ("Last backup", row(&report.backup, |b| date(b.last_snapshot))),
        ("Operating system", row(&report.os_version, Clone::clone)),
        ("Booted", row(&report.boot_time, |t| date(*t))),
        ("Free disk", row(&report.disk, |d| format!("{} of {} GiB", d.free_bytes >> 30, d.total_bytes >> 30))),
        ("Agent", report.agent_version.clone()),
    ]
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct ListQuery {
    after: Option<Uuid>,
}

/// Connected here, through another gateway of the fleet, or not.
fn connection_state(portal: &Portal, uuid: Uuid, record: Option<&DeviceRecord>) -> &'static str {
    if portal.shared.registry.any(uuid).is_some() {
        "connected"
    } else if record.is_some_and(|r| r.connected_since.is_some()) {
        "connected (another gateway)"
    } else {
        "not connected"
    }
}

pub(super) async fn list(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let visitor = match portal.require(&headers, Allow::Machines).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    if let Err(denied) =
        policy::authorize(&visitor.principal, &visitor.relations, Action::ListMachines, Resource::Gateway)
    {
        return views::forbidden(Some(&visitor), denied, "Listing machines");
    }
    let after = query.ok().and_then(|Query(q)| q.after);
    let store = &portal.shared.store;
    let machines = match store.visible_machines_with(&visitor.principal, &visitor.relations, after, PAGE).await {
        Ok(machines) => machines,
        Err(err) => return unavailable(err),
    };
    let mut rows = Vec::with_capacity(machines.len());
    for machine in &machines {
        let record = match store.device(machine.uuid).await {
            Ok(record) => record,
            Err(err) => return unavailable(err),
        };
        let health = match store.health(machine.uuid).await {
            Ok(health) => health.map(|h| h.health),
            Err(err) => return unavailable(err),
        };
        let state = connection_state(&portal, machine.uuid, record.as_ref());
        rows.push((machine, state, record.and_then(|r| r.last_hello), health));
    }
    let next = (machines.len() >= PAGE as usize).then(|| machines.last().map(|m| m.uuid)).flatten();
    let own: Vec<i64> = visitor.relations.owns.iter().map(|r| r.subscriber_id).collect();
    let silos = match super::through_root::silos_for(&portal, &visitor).await {
        Ok(silos) => silos,
        Err(err) => return unavailable(err),
    };
    let body = html! {
        @if visitor.session.via_root {
            p { "Your account, your support contacts and enrolling machines are at "
                a href=(portal.root_portal()) { "the root's portal" } "." }
        } @else {
            @for owned in &visitor.relations.owns {
                p { a href={ "/portal/subscribers/" (owned.subscriber_id) "/contacts" } { "Your support contacts" }
                    " — invite someone to help with your machines, or remove them." }
                p { a href={ "/portal/subscribers/" (owned.subscriber_id) "/machines/enroll" } { "Enroll a machine" }
                    " — get a one-time token for the Tether agent on a PC of yours." }
            }
        }
        @if rows.is_empty() {
            p { "No machines to show. A subscriber's machines appear here once enrolled; a support contact sees those of the subscribers who invited them." }
        } @else {
            div.scroll {
                table.cards {
                    thead { tr { th { "Machine" } th { "Subscriber" } th { "Connection" } th { "Last hello" } th { "Health" } } }
                    tbody {
                        @for (machine, state, last_hello, health) in &rows {
                            tr {
                                td {
                                    a href={ "/portal/machines/" (machine.uuid) } {
                                        @if let Some(nickname) = &machine.nickname { (nickname) br; small.muted { (machine.uuid) } }
                                        @else { code { (machine.uuid) } }
                                    }
                                }
                                td data-label="Subscriber" {
                                    @if own.contains(&machine.subscriber_id) { "yours" }
                                    @else { "#" (machine.subscriber_id) }
                                }
                                td data-label="Connection" { (state) }
                                td data-label="Last hello" { (views::when(*last_hello)) }
                                td data-label="Health" { (meter_badge(health.as_deref())) }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = next {
                p { a href={ "/portal/machines?after=" (next) } { "Next page" } }
            }
        }
        (super::through_root::buttons(&visitor, &silos))
    };
    let page = views::page(StatusCode::OK, "Machines", Some(&visitor), body);
    views::allow_form_targets(page, &super::through_root::origins(&silos))
}

pub(super) async fn show(State(portal): State<Arc<Portal>>, headers: HeaderMap, Path(uuid): Path<String>) -> Response {
    let visitor = match portal.require(&headers, Allow::Machines).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    let Ok(uuid) = Uuid::parse_str(&uuid) else {
        return views::message(
            StatusCode::BAD_REQUEST,
            "Not a machine",
            Some(&visitor),
            "That is not a machine's UUID.",
        );
    };
    let store = &portal.shared.store;
    // The policy first: nothing about the machine is read for a visitor who may not see it.
    let machine = match store.machine(uuid).await {
        Ok(machine) => machine,
        Err(err) => return unavailable(err),
    };
    let resource = Resource::Machine { uuid, subscriber_id: machine.as_ref().map(|m| m.subscriber_id) };
    if let Err(denied) = policy::authorize(&visitor.principal, &visitor.relations, Action::ViewMachine, resource) {
        return views::forbidden(Some(&visitor), denied, "Viewing this machine");
    }
    let record = match store.device(uuid).await {
        Ok(record) => record,
        Err(err) => return unavailable(err),
    };
    if machine.is_none() && record.is_none() && portal.shared.registry.any(uuid).is_none() {
        return views::message(
            StatusCode::NOT_FOUND,
            "No such machine",
            Some(&visitor),
            "No machine with this UUID is enrolled or has ever connected to this gateway.",
        );
    }
    let may_audit = policy::authorize(&visitor.principal, &visitor.relations, Action::ViewAudit, resource).is_ok();
    let (audit, sessions) = if may_audit {
        let audit = match store.audit_for_machine(uuid, None, RECENT).await {
            Ok(rows) => rows,
            Err(err) => return unavailable(err),
        };
        let sessions = match store.redirections_for(uuid, false, RECENT).await {
            Ok(rows) => rows,
            Err(err) => return unavailable(err),
        };
        (audit, sessions)
    } else {
        (Vec::new(), Vec::new())
    };
    let names = match actor_names(&portal, audit.iter().filter_map(|a| a.actor_user_id)).await {
        Ok(names) => names,
        Err(response) => return response,
    };
    let viewed = NewAudit {
        at: OffsetDateTime::now_utc(),
        actor_user_id: Some(visitor.user.id),
        action: AuditAction::MachineViewed,
        machine_uuid: Some(uuid),
        subscriber_id: machine.as_ref().map(|m| m.subscriber_id),
        detail: "portal".into(),
    };
    if let Err(err) = store.append_audit(&viewed).await {
        warn!(error = %err, %uuid, "cannot audit a portal view of a machine");
        return unavailable(err);
    }
    let week = OffsetDateTime::now_utc() - time::Duration::days(7);
    let meter = tokio::try_join!(
        store.health(uuid),
        store.agent(uuid),
        store.latest_report(uuid),
        store.health_changes(uuid, week),
        store.support_actions(uuid)
    );
    let (health, agent, latest, changes, actions) = match meter {
        Ok(all) => all,
        Err(err) => return unavailable(err),
    };
    let reasons: Vec<crate::health::Reason> =
        health.as_ref().and_then(|h| serde_json::from_str(&h.reasons).ok()).unwrap_or_default();
    let parameters = latest.as_ref().and_then(|l| crate::meter::decode_stored(&l.report)).map(|r| parameter_rows(&r));
    let state = connection_state(&portal, uuid, record.as_ref());
    // A maintenance silo's own key signs no actions an agent would run (only its root's does).
    let may_send = policy::authorize(&visitor.principal, &visitor.relations, Action::SendSupport, resource).is_ok()
        && portal.shared.silo.role() != crate::silo::Role::Maintenance;
    let title = machine.as_ref().and_then(|m| m.nickname.clone()).unwrap_or_else(|| uuid.to_string());
    let body = html! {
        table {
            tr { th { "UUID" } td { code { (uuid) } } }
            tr { th { "Nickname" } td { (machine.as_ref().and_then(|m| m.nickname.as_deref()).unwrap_or("—")) } }
            tr { th { "Subscriber" } td {
                @match &machine { Some(m) => { "#" (m.subscriber_id) }, None => { "not enrolled" } }
            } }
            tr { th { "Enrolled" } td { (views::when(machine.as_ref().map(|m| m.enrolled_at))) } }
            tr { th { "Connection" } td { (state) } }
            tr { th { "Last hello" } td { (views::when(record.as_ref().and_then(|r| r.last_hello))) } }
            tr { th { "First seen" } td { (views::when(record.as_ref().and_then(|r| r.first_seen))) } }
            tr { th { "Last disconnect" } td {
                (views::when(record.as_ref().and_then(|r| r.last_disconnect)))
                @if let Some(reason) = record.as_ref().and_then(|r| r.last_disconnect_reason.as_deref()) { " (" (reason) ")" }
            } }
            tr { th { "Health" } td {
                (meter_badge(health.as_ref().map(|h| h.health.as_str())))
                @if let Some(h) = &health { " since " (views::when(Some(h.since))) }
                @if !reasons.is_empty() { ul { @for r in &reasons { li { (r.text) } } } }
            } }
            @if let Some(agent) = &agent {
                tr { th { "Agent" } td { (agent.hostname) ", " (agent.os) ", version " (agent.agent_version) } }
                tr { th { "Remote help" } td {
                    @if agent.remote_help { "allowed by the PC user" }
                    @else { "turned off by the PC user: relayed sessions are refused (the PC user runs `tether-agent enable` to allow them)" }
                } }
            }
        }
        @if let Some(parameters) = &parameters {
            h2 { "Support parameters" }
            p.muted { "Reported " (views::when(latest.as_ref().map(|l| l.taken_at))) "." }
            table { @for (name, value) in parameters { tr { th { (name) } td { (value) } } } }
        }
        @if !changes.is_empty() {
            h2 { "Health this week" }
            div.scroll { table {
                thead { tr { th { "When" } th { "Health" } th { "Why" } } }
                tbody { @for c in &changes { tr {
                    td { (views::when(Some(c.at))) } td { (meter_badge(Some(c.health.as_str()))) }
                    td { (reason_texts(&c.reasons)) }
                } } }
            } }
        }
        @if agent.is_some() || !actions.is_empty() {
            (super::actions::section(&visitor, uuid, may_send && agent.is_some(), &actions))
        }
        @if may_audit {
            h2 { "Recent console and IDE-R sessions" }
            @if sessions.is_empty() { p.muted { "None." } } @else {
                div.scroll { table {
                    thead { tr { th { "Started" } th { "Kind" } th { "By" } th { "Ended" } th { "Outcome" } } }
                    tbody { @for s in &sessions { tr {
                        td { (views::when(Some(s.started_at))) } td { (s.kind) } td { (s.technician) }
                        td { (views::when(s.ended_at)) } td { (s.outcome) }
                    } } }
                } }
            }
            h2 { "Activity" }
            @if audit.is_empty() { p.muted { "Nothing recorded yet." } } @else {
                div.scroll { table {
                    thead { tr { th { "When" } th { "Who" } th { "What" } th { "Detail" } } }
                    tbody { @for a in &audit { tr {
                        td { (views::when(Some(a.at))) }
                        td { @match a.actor_user_id {
                            Some(id) => { (names.get(&id).map(String::as_str).unwrap_or("(a removed user)")) },
                            None => { "the gateway" },
                        } }
                        td { (a.action) } td { (a.detail) }
                    } } }
                } }
            }
        }
        p { a href="/portal/machines" { "All machines" } }
    };
    views::page(StatusCode::OK, &title, Some(&visitor), body)
}

/// The usernames of the users who acted (one lookup per distinct user; at most [`RECENT`]).
async fn actor_names(portal: &Portal, ids: impl Iterator<Item = i64>) -> Result<HashMap<i64, String>, Response> {
    let mut names = HashMap::new();
    for id in ids {
        if names.contains_key(&id) {
            continue;
        }
        match portal.shared.store.user(id).await {
            Ok(Some(user)) => {
                names.insert(id, user.username);
            }
            Ok(None) => {}
            Err(err) => return Err(unavailable(err)),
        }
    }
    Ok(names)
}
