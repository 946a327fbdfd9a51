//! The OpenAPI document of the API, generated from the handlers' `#[utoipa::path]` attributes
//! and the request types' `ToSchema` derives, served at `GET /api/openapi.json` (without a
//! token: it describes the API, not what is in it). The test below holds the document and the
//! router to each other: every route the router serves is documented, and nothing else.
//!
//! What it does not do: validate requests (the handlers do), or describe response bodies in
//! full yet (errors are [`ErrorBody`](super::ErrorBody); successful answers are described in words).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::ErrorBody;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("tth_ and 43 base64url characters (`tether token create`)")
            .build();
        components.add_security_scheme("token", SecurityScheme::Http(scheme));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tether gateway API",
        description = "Devices behind NAT, the remote fix through AMT, the LAN tools, and accounts. \
                       Every endpoint takes a bearer token; refusals are 403 with a stable `code`."
    ),
    paths(
        super::list_devices,
        super::show_device,
        super::relays::relay_tcp,
        super::redirections::list_redirections,
        super::amt::actions,
        super::amt::power,
        super::amt::redirection,
        super::amt::boot,
        super::amt::consent,
        super::amt::rescue_start,
        super::amt::rescue_boot,
        super::amt::rescue_finish,
        super::amt::session_close,
        super::amt::session_open,
        super::amt::forget,
        super::lan::wake_device,
        super::lan::start_scan,
        super::lan::show_scan,
        super::lan::hosts,
        super::lan::wake_mac,
        super::lan::list_devices,
        super::lan::adopt_device,
        super::lan::forget_device,
        super::accounts::me,
        super::accounts::change_email,
        super::accounts::confirm_email,
        super::accounts::list_users,
        super::accounts::create_user,
        super::accounts::suspend_user,
        super::accounts::unsuspend_user,
        super::accounts::user_audit,
        super::accounts::machine_audit,
        super::accounts::list_subscribers,
        super::accounts::register_subscriber,
        super::accounts::show_subscriber,
        super::accounts::terminate,
        super::accounts::subscriber_machines,
        super::accounts::enroll,
        super::accounts::contacts,
        super::accounts::invite,
        super::accounts::remove_contact,
        super::accounts::leave,
        super::accounts::mps_account,
        super::accounts::show_invitation,
        super::accounts::accept,
        super::agents::show_agent,
        super::agents::telemetry,
        super::agents::revoke,
        super::agents::health,
        super::support::create_action,
        super::support::list_actions,
        super::support::show_action,
        super::support::send_message,
        super::support::list_messages,
        super::support::show_message,
    ),
    components(schemas(ErrorBody, crate::flows::Enrollment)),
    modifiers(&BearerToken),
    tags(
        (name = "devices", description = "Devices and relays to their ports"),
        (name = "amt", description = "The remote fix through AMT's WS-Management"),
        (name = "lan", description = "The appliance's LAN tools (operators)"),
        (name = "accounts", description = "Users, subscribers, machines, contacts, invitations, audit"),
        (name = "agents", description = "Tether agents: their hello, support parameters, certificates"),
        (name = "support", description = "Signed support actions and messages to agent PCs"),
    )
)]
struct ApiDoc;

/// The document, built once.
pub(super) fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
        doc.to_pretty_json().unwrap_or_else(|err| format!("{{\"error\": \"{err}\"}}"))
    })
}

pub(super) async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    /// `(METHOD, PATH)` of every route `api::router` registers under `/api/v1`, read from its
    /// source: the router has no list of its routes to ask.
    fn routed() -> BTreeSet<(String, String)> {
        let source = include_str!("mod.rs");
        let mut routes = BTreeSet::new();
        for line in source.lines().map(str::trim).filter(|l| l.starts_with(".route(\"/api/v1")) {
            let path = line.split('"').nth(1).unwrap().to_string();
            for method in ["get", "post", "delete", "put", "patch"] {
                if line.contains(&format!("{method}(")) {
                    routes.insert((method.to_string(), path.clone()));
                }
            }
        }
        routes
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc: Value = serde_json::from_str(super::document()).unwrap();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.insert((method.clone(), path.clone()));
            }
        }
        let routed = routed();
        assert!(routed.len() > 40, "the router's routes were not found in its source: {routed:?}");
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "undocumented: {undocumented:?}; not routed: {unrouted:?}"
        );
    }

    #[test]
    fn every_operation_says_its_errors_and_needs_a_token() {
        let doc: Value = serde_json::from_str(super::document()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for status in ["401", "403", "429"] {
                    assert!(op["responses"].get(status).is_some(), "{method} {path} does not document {status}");
                }
                assert_eq!(op["security"][0]["token"], serde_json::json!([]), "{method} {path}");
            }
        }
        assert_eq!(doc["components"]["securitySchemes"]["token"]["scheme"], "bearer");
    }
}
