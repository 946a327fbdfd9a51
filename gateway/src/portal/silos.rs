//! A root's maintenance silos and the aggregates each last sent (`docs/silos.md`, "Aggregates"):
//! operators only (`ViewSilos`), the same as `GET /api/v1/silos` and `tether silo aggregates`.
//! Nothing here names a person: the silos count machines by meter, tier, reason and the
//! subscriber's opaque id.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{html, Markup};

use super::{actor, refused, views, Allow, Portal};
use crate::policy::{Action, Resource};
use crate::silo::aggregates::{Aggregates, Counts};

pub(super) const SILOS: &str = "/portal/silos";

pub(super) async fn list(State(portal): State<Arc<Portal>>, headers: HeaderMap) -> Response {
    let visitor = match portal.require(&headers, Allow::Open).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    if let Err(err) = actor(&visitor).authorize(Action::ViewSilos, Resource::Gateway) {
        return refused(Some(&visitor), err, "Seeing the maintenance silos");
    }
    let store = &portal.shared.store;
    let (silos, across) = match tokio::try_join!(store.silos(), crate::silo::aggregates::across(store)) {
        Ok(both) => both,
        Err(err) => return super::unavailable(err),
    };
    let last = |name: &str| across.silos.iter().find(|s| s.aggregates.silo == name);
    let body = html! {
        @if silos.is_empty() {
            p { "No maintenance silo is registered here: this gateway is not a root, or none was added yet
                 (" code { "tether silo add" } ")." }
        } @else {
            p { "Each silo sends its counts every " code { "silo.aggregates_push_secs" } ", signed with its key.
                 They name no person: machines by meter, tier, reason and the subscriber's opaque id." }
            div.scroll { table.cards {
                thead { tr {
                    th { "Silo" } th { "Region" } th { "Given" } th { "Machines" } th { "Green" } th { "Yellow" }
                    th { "Red" } th { "Unrated" } th { "Connected" } th { "Alerts (24 h)" } th { "Actions (24 h)" }
                    th { "Counted" }
                } }
                tbody {
                    @for silo in &silos {
                        @let sent = last(&silo.name);
                        tr {
                            td { (silo.name) }
                            td data-label="Region" { (silo.region.as_deref().unwrap_or("—")) }
                            td data-label="Given" { (silo.assigned) " of " (silo.capacity) }
                            @match sent {
                                Some(sent) => { (counts(&sent.aggregates)) td data-label="Counted" {
                                    (views::when(time::OffsetDateTime::from_unix_timestamp(sent.received_at).ok()))
                                } }
                                None => { td colspan="9" { "nothing received yet" } }
                            }
                        }
                    }
                    tr.total {
                        td { strong { "All silos" } }
                        td {}
                        td data-label="Given" { (silos.iter().map(|s| s.assigned).sum::<i64>()) }
                        (counts(&across.total))
                        td {}
                    }
                }
            } }
            @if !across.total.reasons.is_empty() {
                h2 { "Why machines are not green" }
                div.scroll { table.cards {
                    thead { tr { th { "Reason" } th { "Machines" } } }
                    tbody { @for (reason, count) in &across.total.reasons { tr {
                        td { (reason) } td data-label="Machines" { (count) }
                    } } }
                } }
            }
            @if !across.total.tiers.is_empty() {
                h2 { "By tier" }
                div.scroll { table.cards {
                    thead { tr { th { "Tier" } th { "Machines" } th { "Green" } th { "Yellow" } th { "Red" } th { "Unrated" } } }
                    tbody { @for (tier, c) in &across.total.tiers { tr { td { (tier) } (meter(c)) } } }
                } }
            }
        }
    };
    views::page(StatusCode::OK, "Maintenance silos", Some(&visitor), body)
}

/// A silo's counts as the table's cells, from Machines to Actions.
fn counts(a: &Aggregates) -> Markup {
    html! {
        (meter(&a.machines))
        td data-label="Connected" { (a.connected) }
        td data-label="Alerts (24 h)" { (a.alerts_24h) }
        td data-label="Actions (24 h)" { (a.actions_24h) }
    }
}

fn meter(c: &Counts) -> Markup {
    html! {
        td data-label="Machines" { (c.machines) }
        td data-label="Green" { (c.green) }
        td data-label="Yellow" { (c.yellow) }
        td data-label="Red" { (c.red) }
        td data-label="Unrated" { (c.unrated) }
    }
}
