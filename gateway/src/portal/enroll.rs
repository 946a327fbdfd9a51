//! Enrolling a machine from the portal (`flows.enroll_machine`: the subscriber's owner, or an
//! operator): a form for an optional UUID (an AMT PC's, bound at once) and nickname, and the
//! answer page showing the one-time enrollment token for `tether-agent enroll`, once. The store
//! keeps only the token's hash; the page is not cached.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Form;
use maud::html;
use uuid::Uuid;

use super::{actor, not_a_number, refused, views, Allow, Fields, Portal};
use crate::flows::FlowError;
use crate::policy::{Action, Resource};

fn enroll_path(id: i64) -> String {
    format!("/portal/subscribers/{id}/machines/enroll")
}

pub(super) async fn form(State(portal): State<Arc<Portal>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let visitor = match portal.require(&headers, Allow::Open).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    let Ok(id) = id.parse::<i64>() else { return not_a_number(&visitor, "subscriber") };
    if let Err(err) = actor(&visitor).authorize(Action::EnrollMachine, Resource::Subscriber(id)) {
        return refused(Some(&visitor), err, "Enrolling a machine");
    }
    let hours = portal.shared.config.accounts.enrollment_token_valid_hours;
    let body = html! {
        p { "Enrolling a PC gives you a one-time token. On the PC, as administrator, install the Tether agent and run "
            code { "tether-agent enroll --gateway GATEWAY --token TOKEN" }
            "; the token works once, for " (hours) " hours. The agent prints the PC's UUID, which you read to your technician." }
        form method="post" action=(enroll_path(id)) {
            (views::csrf_field(&visitor.session.csrf_secret))
            label for="nickname" { "Nickname (how you call this PC; optional)" }
            input #nickname type="text" name="nickname" maxlength="100" autocomplete="off";
            label for="uuid" { "The PC's UUID, if it has Intel AMT and you know it (optional)" }
            input #uuid type="text" name="uuid" maxlength="36" autocomplete="off" placeholder="xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";
            div { button type="submit" { "Get an enrollment token" } }
        }
        p { a href="/portal/machines" { "Machines" } }
    };
    views::page(StatusCode::OK, "Enroll a machine", Some(&visitor), body)
}

pub(super) async fn submit(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = Fields::from(form);
    let visitor = match portal.require_post(&headers, &fields, Allow::Open).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    let Ok(id) = id.parse::<i64>() else { return not_a_number(&visitor, "subscriber") };
    let uuid = match fields.get("uuid").map(str::trim).filter(|u| !u.is_empty()) {
        None => None,
        Some(text) => match text.parse::<Uuid>() {
            Ok(uuid) => Some(uuid),
            Err(_) => {
                let err = FlowError::BadInput(format!("{text:?} is not a UUID (8-4-4-4-12 hex digits)"));
                return refused(Some(&visitor), err, "Enrolling a machine");
            }
        },
    };
    let nickname = fields.get("nickname").map(str::trim).filter(|n| !n.is_empty());
    let enrollment = match portal.flows().enroll_machine(&actor(&visitor), id, uuid, nickname).await {
        Ok(enrollment) => enrollment,
        Err(err) => return refused(Some(&visitor), err, "Enrolling a machine"),
    };
    let body = html! {
        @if let Some(uuid) = enrollment.uuid {
            p { "Machine " code { (uuid) } @if enrollment.new_machine { " is now yours." } @else { " was yours already." } }
        }
        p { "The enrollment token, shown this once:" }
        pre #token { (enrollment.token) }
        p { "On the PC, as administrator:" }
        pre { "tether-agent enroll --gateway " (gateway_address(&portal)) " --token " (enrollment.token) }
        p { "It works once, until " (views::when(Some(enrollment.token_expires_at))) "." }
        p { a href="/portal/machines" { "Machines" } }
    };
    let mut page = views::page(StatusCode::OK, "Enrollment token", Some(&visitor), body);
    page.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    page
}

/// Where agents dial: the first advertised gateway, else the gateway's public name and agent port.
fn gateway_address(portal: &Portal) -> String {
    let config = &portal.shared.config;
    if let Some(first) = config.agents.advertise.first() {
        return first.clone();
    }
    let host = config.tls.names.first().cloned().unwrap_or_else(|| "GATEWAY".into());
    match config.agents.listen.port() {
        protocols::tap::DEFAULT_PORT => host,
        port => format!("{host}:{port}"),
    }
}
