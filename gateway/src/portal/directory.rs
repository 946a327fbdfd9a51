//! The operator's directory: subscribers and users.
//!
//! - `/portal/subscribers`: the subscribers whose personal data the visitor sees (an operator:
//!   all; an owner: its own), each with its subscription, limits and links to its contacts and
//!   to enrolling a machine. An operator also registers a subscriber for an existing user
//!   (`flows.register_subscriber`) and terminates an active subscription with a reason
//!   (`flows.terminate`: its contacts are told, without the reason, and lose access at once).
//! - `/portal/users` (operators): every user with its role and standing; create a user
//!   (`flows.create_user`), suspend one (`flows.suspend`: all access ends at once, live relays
//!   are cut) and lift a suspension (`flows.unsuspend`).
//!
//! As everywhere in the portal, the flows decide (policy, transition, audit, mail); the pages
//! only hide the forms a visitor could not use, and a refusal is a page with its code.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use maud::html;

use super::{actor, not_a_number, refused, views, Allow, Fields, Portal};
use crate::flows::{FlowError, NewUser, Registration};
use crate::policy::{Action, Resource, Role};
use crate::store::{SubscriberPii, SubscriptionStatus};

const SUBSCRIBERS: &str = "/portal/subscribers";
const USERS: &str = "/portal/users";
/// The limits a registration gets when the form leaves them empty (as the API's).
const DEFAULT_LIMIT: u32 = 5;

pub(super) async fn subscribers(State(portal): State<Arc<Portal>>, headers: HeaderMap) -> Response {
    let visitor = match portal.require(&headers, Allow::Open).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    let all = match portal.shared.store.list_subscribers().await {
        Ok(all) => all,
        Err(err) => return super::unavailable(err),
    };
    let actor = actor(&visitor);
    let seen: Vec<_> = all
        .into_iter()
        .filter(|s| actor.authorize(Action::ViewSubscriberPii, Resource::Subscriber(s.subscriber.id)).is_ok())
        .collect();
    let may_register = actor.authorize(Action::RegisterSubscriber, Resource::Gateway).is_ok();
    let may_terminate = |id: i64| actor.authorize(Action::TerminateSubscription, Resource::Subscriber(id)).is_ok();
    let csrf = &visitor.session.csrf_secret;
    let body = html! {
        @if seen.is_empty() {
            p.muted { "No subscribers yet." }
        } @else {
            div.scroll { table.cards {
                thead { tr { th { "#" } th { "Name" } th { "Owner" } th { "Subscription" } th { "Limits" } th {} } }
                tbody { @for s in &seen { @let id = s.subscriber.id; tr {
                    td { (id) }
                    td data-label="Name" { (s.name) br; span.muted { (s.email) } }
                    td data-label="Owner" { (s.owner) }
                    td data-label="Subscription" {
                        (s.subscriber.status.as_str())
                        @if let Some(at) = s.subscriber.terminated_at { " " (views::when(Some(at))) }
                    }
                    td data-label="Limits" { (s.subscriber.max_machines) " machines, " (s.subscriber.max_contacts) " contacts" }
                    td {
                        a href={ (SUBSCRIBERS) "/" (id) "/contacts" } { "Contacts" }
                        @if s.subscriber.status == SubscriptionStatus::Active {
                            " · " a href={ (SUBSCRIBERS) "/" (id) "/machines/enroll" } { "Enroll a machine" }
                            @if may_terminate(id) {
                                form.inline method="post" action={ (SUBSCRIBERS) "/" (id) "/terminate" } {
                                    (views::csrf_field(csrf))
                                    label for={ "reason-" (id) } { "Reason (kept in the audit log; not told to contacts)" }
                                    input id={ "reason-" (id) } type="text" name="reason" maxlength="200" required;
                                    button type="submit" { "Terminate" }
                                }
                            }
                        }
                    }
                } } }
            } }
        }
        @if may_register {
            h2 { "Register a subscriber" }
            p { "The owner is an existing user (create one on the " a href=(USERS) { "users" } " page), who then
                 manages the subscriber's machines and contacts. The name, email, phone and billing note are
                 personal data, kept apart from the maintenance data." }
            form method="post" action=(SUBSCRIBERS) {
                (views::csrf_field(csrf))
                label for="owner" { "Owner's username" }
                input #owner type="text" name="owner" maxlength="64" autocomplete="off" required;
                label for="name" { "Name" }
                input #name type="text" name="name" maxlength="200" autocomplete="off" required;
                label for="email" { "Email address" }
                input #email type="email" name="email" maxlength="254" autocomplete="off" required;
                label for="phone" { "Phone (optional)" }
                input #phone type="tel" name="phone" maxlength="200" autocomplete="off";
                label for="billing_note" { "Billing note (optional)" }
                input #billing_note type="text" name="billing_note" maxlength="200" autocomplete="off";
                label for="max_machines" { "Machines at most" }
                input #max_machines type="number" name="max_machines" min="0" value=(DEFAULT_LIMIT);
                label for="max_contacts" { "Support contacts at most" }
                input #max_contacts type="number" name="max_contacts" min="0" value=(DEFAULT_LIMIT);
                div { button type="submit" { "Register" } }
            }
        }
    };
    views::page(StatusCode::OK, "Subscribers", Some(&visitor), body)
}

/// An optional text field: `None` when empty.
fn optional<'f>(fields: &'f Fields, name: &str) -> Option<&'f str> {
    fields.get(name).map(str::trim).filter(|v| !v.is_empty())
}

/// A limit field: its number, [`DEFAULT_LIMIT`] when empty.
fn limit(fields: &Fields, name: &str, what: &str) -> Result<u32, FlowError> {
    match optional(fields, name) {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => {
            text.parse().map_err(|_| FlowError::BadInput(format!("{what} must be a whole number, not {text:?}")))
        }
    }
}

pub(super) async fn register(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = Fields::from(form);
    let visitor = match portal.require_post(&headers, &fields, Allow::Open).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    let limits = limit(&fields, "max_machines", "the machine limit")
        .and_then(|machines| Ok((machines, limit(&fields, "max_contacts", "the contact limit")?)));
    let (max_machines, max_contacts) = match limits {
        Ok(limits) => limits,
        Err(err) => return refused(Some(&visitor), err, "Registering a subscriber"),
    };
    let registration = Registration {
        owner: fields.get("owner").unwrap_or_default().trim(),
        pii: SubscriberPii {
            name: fields.get("name").unwrap_or_default().to_string(),
            email: fields.get("email").unwrap_or_default().to_string(),
            phone: optional(&fields, "phone").map(str::to_string),
            billing_note: optional(&fields, "billing_note").map(str::to_string),
        },
        max_machines,
        max_contacts,
    };
    match portal.flows().register_subscriber(&actor(&visitor), registration).await {
        Ok(_) => views::redirect(SUBSCRIBERS),
        Err(err) => refused(Some(&visitor), err, "Registering a subscriber"),
    }
}

pub(super) async fn terminate(
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
    let reason = fields.get("reason").unwrap_or_default();
    match portal.flows().terminate(&actor(&visitor), id, reason).await {
        Ok(_) => views::redirect(SUBSCRIBERS),
        Err(err) => refused(Some(&visitor), err, "Terminating a subscription"),
    }
}

pub(super) async fn users(State(portal): State<Arc<Portal>>, headers: HeaderMap) -> Response {
    let visitor = match portal.require(&headers, Allow::Open).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    if let Err(err) = actor(&visitor).authorize(Action::ManageUsers, Resource::Gateway) {
        return refused(Some(&visitor), err, "Seeing the gateway's users");
    }
    let users = match portal.shared.store.list_users().await {
        Ok(users) => users,
        Err(err) => return super::unavailable(err),
    };
    let csrf = &visitor.session.csrf_secret;
    let body = html! {
        p { "Suspending a user ends all of its access at once: its sessions, its tokens and its live relays,
             which are cut within a second. Lifting the suspension gives it back." }
        div.scroll { table.cards {
            thead { tr { th { "User" } th { "Role" } th { "Email" } th { "Created" } th { "Standing" } th {} } }
            tbody { @for u in &users { tr {
                td { (u.username) }
                td data-label="Role" { (u.role.as_str()) }
                td data-label="Email" { (u.email.as_deref().unwrap_or("—")) }
                td data-label="Created" { (views::when(Some(u.created_at))) }
                td data-label="Standing" {
                    @if let Some(at) = u.suspended_at { "suspended " (views::when(Some(at))) }
                    @else if let Some(at) = u.inactive_since { "inactive contact since " (views::when(Some(at))) }
                    @else { "active" }
                }
                td {
                    @if u.id != visitor.user.id {
                        @let (verb, label) = if u.suspended_at.is_some() { ("unsuspend", "Lift the suspension") } else { ("suspend", "Suspend") };
                        form.inline method="post" action={ (USERS) "/" (u.id) "/" (verb) } {
                            (views::csrf_field(csrf))
                            button type="submit" { (label) }
                        }
                    }
                }
            } } }
        } }
        h2 { "Create a user" }
        p { "A subscriber's owner, or another operator. Support contacts make their own accounts from their invitation." }
        form method="post" action=(USERS) {
            (views::csrf_field(csrf))
            label for="username" { "Username" }
            input #username type="text" name="username" maxlength="64" autocomplete="off" required;
            label for="email" { "Email address (optional)" }
            input #email type="email" name="email" maxlength="254" autocomplete="off";
            label for="password" { "Password (at least 8 characters)" }
            input #password type="password" name="password" autocomplete="new-password" required;
            label.check { input type="checkbox" name="operator" value="yes"; " an operator (sees and does everything; must set up a second factor)" }
            div { button type="submit" { "Create" } }
        }
    };
    views::page(StatusCode::OK, "Users", Some(&visitor), body)
}

pub(super) async fn create_user(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = Fields::from(form);
    let visitor = match portal.require_post(&headers, &fields, Allow::Open).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    let new = NewUser {
        username: fields.get("username").unwrap_or_default().trim(),
        email: optional(&fields, "email"),
        password: fields.get("password").unwrap_or_default(),
        role: if fields.checked("operator") { Role::Operator } else { Role::User },
    };
    match portal.flows().create_user(&actor(&visitor), &new).await {
        Ok(_) => views::redirect(USERS),
        Err(err) => refused(Some(&visitor), err, "Creating a user"),
    }
}

pub(super) async fn suspend(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    set_suspension(&portal, &headers, &id, Fields::from(form), true).await
}

pub(super) async fn unsuspend(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    set_suspension(&portal, &headers, &id, Fields::from(form), false).await
}

async fn set_suspension(portal: &Portal, headers: &HeaderMap, id: &str, fields: Fields, suspend: bool) -> Response {
    let visitor = match portal.require_post(headers, &fields, Allow::Open).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    let Ok(id) = id.parse::<i64>() else { return not_a_number(&visitor, "user") };
    let (flows, actor) = (portal.flows(), actor(&visitor));
    let done = if suspend { flows.suspend(&actor, id).await } else { flows.unsuspend(&actor, id).await };
    match done {
        Ok(_) => views::redirect(USERS),
        Err(err) => refused(Some(&visitor), err, "Changing a user's suspension"),
    }
}
