//! Support actions in the portal (`docs/actions.md`): on a machine's page, its actions and a form
//! to send one (`SendSupport`: its subscriber's owner and active contacts, operators); each
//! action's own page shows its life cycle (created, sent, the result or why the PC refused it)
//! and the script's output. The gateway signs it; the agent checks it.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};
use protocols::tap::ActionKind;
use uuid::Uuid;

use super::{unavailable, views, Allow, Fields, Portal, Visitor};
use crate::policy::{self, Action, Resource};
use crate::store::SupportAction;
use crate::support::{self, ActionRequest, Sender, SupportError};

fn action_path(id: Uuid) -> String {
    format!("/portal/actions/{id}")
}

/// Whether an action still waits for its result.
fn open(action: &SupportAction) -> bool {
    matches!(action.state.as_str(), "pending" | "sent")
}

/// The machine page's section: the form (for those who may send) and the recent actions.
pub(super) fn section(visitor: &Visitor, uuid: Uuid, may_send: bool, actions: &[SupportAction]) -> Markup {
    html! {
        h2 { "Support actions" }
        @if may_send {
            form method="post" action={ "/portal/machines/" (uuid) "/actions" } {
                (views::csrf_field(&visitor.session.csrf_secret))
                label for="kind" { "What" }
                select #kind name="kind" {
                    option value="instructions" { "Instructions for the PC user" }
                    option value="script" { "A script the agent runs (/bin/sh)" }
                }
                label for="body" { "Instructions or script" }
                textarea #body name="body" rows="6" maxlength="32768" required {}
                label for="timeout" { "Timeout for a script, seconds" }
                input #timeout type="number" name="timeout" min="1" max="3600" value="300";
                div { button type="submit" { "Sign and send" } }
            }
            p.muted { "The gateway signs it; the PC runs it only if the signature, the target and the expiry check out, its user allows remote help and its local policy allows the kind." }
        }
        @if actions.is_empty() { p.muted { "No support actions yet." } } @else {
            div.scroll { table {
                thead { tr { th { "Created" } th { "What" } th { "By" } th { "State" } th { "Exit code" } th { "Result" } } }
                tbody { @for a in actions.iter().take(20) { tr {
                    td { a href=(action_path(a.id)) { (views::when(Some(a.created_at))) } }
                    td { (a.kind) } td { (a.issued_by) } td { (a.state) }
                    td { @if let Some(code) = a.exit_code { (code) } @else { "-" } }
                    td { (views::when(a.result_at)) }
                } } }
            } }
        }
    }
}

pub(super) async fn create(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = Fields::from(form);
    let visitor = match portal.require_post(&headers, &fields, Allow::Open).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    let what = "Sending a support action";
    let Ok(uuid) = Uuid::parse_str(&uuid) else {
        return views::message(
            StatusCode::NOT_FOUND,
            "No such machine",
            Some(&visitor),
            "That is not a machine's UUID.",
        );
    };
    let shared = &portal.shared;
    let subscriber_id = match shared.store.machine(uuid).await {
        Ok(machine) => machine.map(|m| m.subscriber_id),
        Err(err) => return unavailable(err),
    };
    let resource = Resource::Machine { uuid, subscriber_id };
    if let Err(denied) = policy::authorize(&visitor.principal, &visitor.relations, Action::SendSupport, resource) {
        return views::forbidden(Some(&visitor), denied, what);
    }
    let kind = match fields.get("kind") {
        Some("script") => ActionKind::Script,
        Some("instructions") => ActionKind::Instructions,
        _ => {
            return views::refusal(
                StatusCode::BAD_REQUEST,
                Some(&visitor),
                what,
                "choose instructions or a script",
                "bad_input",
            )
        }
    };
    let timeout = match fields.get("timeout").map(str::trim).filter(|t| !t.is_empty()) {
        None => None,
        Some(text) => match text.parse::<u32>() {
            Ok(secs) => Some(secs),
            Err(_) => {
                let text = format!("{text:?} is not a number of seconds");
                return views::refusal(StatusCode::BAD_REQUEST, Some(&visitor), what, &text, "bad_input");
            }
        },
    };
    let sender = match Sender::of(shared, visitor.user.id).await {
        Ok(sender) => sender,
        Err(err) => return unavailable(err),
    };
    let request = ActionRequest {
        kind,
        body: fields.get("body").unwrap_or_default().replace("\r\n", "\n"),
        timeout_secs: timeout,
        expires_in_secs: None,
    };
    match support::create_action(shared, &sender, uuid, subscriber_id, request).await {
        Ok(action) => views::redirect(&action_path(action.id)),
        Err(SupportError::Store(err)) => unavailable(err),
        Err(err) => views::refusal(StatusCode::BAD_REQUEST, Some(&visitor), what, &err.to_string(), err.code()),
    }
}

pub(super) async fn show(State(portal): State<Arc<Portal>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let visitor = match portal.require(&headers, Allow::Machines).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    let missing =
        || views::message(StatusCode::NOT_FOUND, "No such action", Some(&visitor), "There is no such support action.");
    let Ok(id) = Uuid::parse_str(&id) else { return missing() };
    let action = match portal.shared.store.support_action(id).await {
        Ok(Some(action)) => action,
        Ok(None) => return missing(),
        Err(err) => return unavailable(err),
    };
    // An action a maintenance silo took from its root names no subscriber: its machine does.
    let subscriber_id = match action.subscriber_id {
        Some(id) => Some(id),
        None => match portal.shared.store.machine(action.uuid).await {
            Ok(machine) => machine.map(|m| m.subscriber_id),
            Err(err) => return unavailable(err),
        },
    };
    let resource = Resource::Machine { uuid: action.uuid, subscriber_id };
    if let Err(denied) = policy::authorize(&visitor.principal, &visitor.relations, Action::ViewMachine, resource) {
        return views::forbidden(Some(&visitor), denied, "Viewing this support action");
    }
    let body = html! {
        table {
            tr { th { "Machine" } td { a href={ "/portal/machines/" (action.uuid) } { code { (action.uuid) } } } }
            tr { th { "What" } td { (action.kind) } }
            tr { th { "By" } td { (action.issued_by) } }
            tr { th { "Created" } td { (views::when(Some(action.created_at))) } }
            tr { th { "Sent to the PC" } td { (views::when(action.sent_at)) } }
            tr { th { "State" } td #state { (action.state) } }
            @if let Some(at) = action.result_at { tr { th { "Result" } td { (views::when(Some(at))) } } }
            @if let Some(code) = action.exit_code { tr { th { "Exit code" } td #exit-code { (code) } } }
            @if let Some(ms) = action.duration_ms { tr { th { "Duration" } td { (ms) " ms" } } }
            @if let Some(text) = action.result_text.as_deref().filter(|t| !t.is_empty()) { tr { th { "Why" } td { (text) } } }
            @if let Some(seq) = action.report_seq { tr { th { "Fresh telemetry" } td { "report " (seq) } } }
            tr { th { "Expires" } td { (views::when(Some(action.expires_at))) } }
        }
        @if open(&action) { p.muted { "Waiting for the PC: reload this page for the result." } }
        @if let Some(output) = action.output.as_deref().filter(|o| !o.is_empty()) {
            h2 { "Output" @if action.output_truncated { " (cut)" } }
            pre #output { (output) }
        }
        h2 { (if action.kind == "script" { "Script" } else { "Instructions" }) }
        pre { (action.body) }
        p { a href={ "/portal/machines/" (action.uuid) } { "Back to the machine" } }
    };
    views::page(StatusCode::OK, "Support action", Some(&visitor), body)
}
