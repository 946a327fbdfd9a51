//! A subscriber's support contacts (`flows.contacts`: its owner and operators): each relation
//! with its state, address, nickname, when invited and until when; a form to invite an address
//! (`flows.invite`, which mails the accept link) and a button to remove each invited or active
//! one (`flows.remove_contact`). Also leaving a subscriber (`flows.leave`), from the contact's
//! profile. Every decision is the flow's; a refusal is a readable page with its code.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use maud::html;

use super::session::Visitor;
use super::{actor, not_a_number, refused, views, Allow, Fields, Portal};
use crate::policy::{Action, Resource};
use crate::store::ContactState;

fn contacts_path(id: i64) -> String {
    format!("/portal/subscribers/{id}/contacts")
}

pub(super) async fn show(State(portal): State<Arc<Portal>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let visitor = match portal.require(&headers, Allow::Open).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    let Ok(id) = id.parse::<i64>() else { return not_a_number(&visitor, "subscriber") };
    contacts_page(&portal, &visitor, id).await
}

async fn contacts_page(portal: &Portal, visitor: &Visitor, id: i64) -> Response {
    let flows = portal.flows();
    let actor = actor(visitor);
    let list = match flows.contacts(&actor, id).await {
        Ok(list) => list,
        Err(err) => return refused(Some(visitor), err, "Seeing this subscriber's contacts"),
    };
    let name = match portal.shared.store.subscriber_pii(id).await {
        Ok(pii) => pii.map_or_else(|| format!("Subscriber #{id}"), |p| p.name),
        Err(err) => return super::unavailable(err),
    };
    // Reading is allowed on a terminated subscription; changing is not: say so, not a button.
    let may_manage = actor.authorize(Action::ManageContacts, Resource::Subscriber(id));
    let csrf = &visitor.session.csrf_secret;
    let body = html! {
        p { "The people " (name) " invited as support contacts: an active contact sees "
            (name) "'s machines while the subscription is active." }
        @if list.is_empty() {
            p.muted { "No contacts yet." }
        } @else {
            div.scroll { table.cards {
                thead { tr { th { "Address" } th { "State" } th { "Nickname" } th { "Invited" } th { "Expires" } th {} } }
                tbody { @for c in &list { tr {
                    td { (c.mail_address()) }
                    td data-label="State" { (c.state.as_str()) }
                    td data-label="Nickname" { (c.nickname.as_deref().unwrap_or("—")) }
                    td data-label="Invited" { (views::when(Some(c.invited_at))) }
                    td data-label="Expires" {
                        @if c.state == ContactState::Invited { (views::when(Some(c.expires_at))) } @else { "—" }
                    }
                    td {
                        @if may_manage.is_ok() && matches!(c.state, ContactState::Invited | ContactState::Active) {
                            form.inline method="post" action={ (contacts_path(id)) "/" (c.id) "/remove" } {
                                (views::csrf_field(csrf))
                                button type="submit" { "Remove" }
                            }
                        }
                    }
                } } }
            } }
        }
        h2 { "Invite a support contact" }
        @match &may_manage {
            Ok(()) => {
                p { "The address gets a mail with a link to accept; the link works for "
                    (portal.shared.config.accounts.invitation_valid_days) " days." }
                form method="post" action=(contacts_path(id)) {
                    (views::csrf_field(csrf))
                    label for="email" { "Email address" }
                    input #email type="email" name="email" autocomplete="off" maxlength="254" required;
                    div { button type="submit" { "Invite" } }
                }
            },
            Err(err) => { p.muted { "Inviting is not possible: " (err) " (" code { (err.code()) } ")." } },
        }
        p { a href="/portal/machines" { "Machines" } }
    };
    views::page(StatusCode::OK, &format!("Contacts of {name}"), Some(visitor), body)
}

pub(super) async fn invite(
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
    let email = fields.get("email").unwrap_or_default();
    match portal.flows().invite(&actor(&visitor), id, email).await {
        // After a POST, the page by GET (a reload does not invite twice): the list shows it.
        Ok(_) => views::redirect(&contacts_path(id)),
        Err(err) => refused(Some(&visitor), err, "Inviting a contact"),
    }
}

pub(super) async fn remove(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    Path((id, contact)): Path<(String, String)>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = Fields::from(form);
    let visitor = match portal.require_post(&headers, &fields, Allow::Open).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    let (Ok(id), Ok(contact)) = (id.parse::<i64>(), contact.parse::<i64>()) else {
        return not_a_number(&visitor, "subscriber");
    };
    match portal.flows().remove_contact(&actor(&visitor), id, contact).await {
        Ok(_) => views::redirect(&contacts_path(id)),
        Err(err) => refused(Some(&visitor), err, "Removing a contact"),
    }
}

pub(super) async fn leave(
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
    match portal.flows().leave(&actor(&visitor), id).await {
        Ok(_) => views::redirect("/portal/profile"),
        Err(err) => refused(Some(&visitor), err, "Leaving this subscriber"),
    }
}
