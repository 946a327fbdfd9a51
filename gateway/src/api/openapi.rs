//! The OpenAPI document of the API, generated from the handlers' `#[utoipa::path]` attributes
//! and the `ToSchema` derives of what they take and answer (`schemas`, and the handlers' own
//! types), served at `GET /api/openapi.json` (without a token: it describes the API, not what is
//! in it). Every status an operation can answer is listed with its body: the successful answer's
//! type, and [`ErrorBody`](super::ErrorBody) with its stable `code` for every error.
//!
//! The tests below hold the document, the router and the answers to each other: every route the
//! router serves is documented and nothing else; every operation lists its refusals, every error
//! is an `ErrorBody`, every success has a body; every operation refuses a request without a
//! token with a code; axum's own refusals (a path that does not parse, a wrong method, a route
//! that does not exist) are `ErrorBody`s too. `tests/tests/openapi.rs` runs schemathesis against
//! a live gateway with it (`docs/api.md`).
//!
//! What it does not do: validate requests (the handlers do).

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
                       Every endpoint takes a bearer token. Every error is JSON `{\"error\": MESSAGE, \
                       \"code\": CODE}` with a stable code (docs/api.md lists them); refusals of \
                       the policy are 403."
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
        super::ider::start,
        super::ider::status,
        super::ider::stop,
        super::lan::wake_device,
        super::lan::start_scan,
        super::lan::show_scan,
        super::lan::hosts,
        super::silos::list,
        super::content::list,
        super::content::get_item,
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
    components(schemas(
        ErrorBody,
        crate::flows::Enrollment,
        super::schemas::ShortText,
        super::schemas::Email,
        super::schemas::Username,
        // Header parameters' schemas are not collected from the paths.
        super::relays::UpgradeConnection,
        super::relays::UpgradeTo,
        super::relays::WebSocketVersion,
    )),
    modifiers(&BearerToken),
    tags(
        (name = "devices", description = "Devices and relays to their ports"),
        (name = "amt", description = "The remote fix through AMT's WS-Management"),
        (name = "lan", description = "The appliance's LAN tools (operators)"),
        (name = "accounts", description = "Users, subscribers, machines, contacts, invitations, audit"),
        (name = "agents", description = "Tether agents: their hello, support parameters, certificates"),
        (name = "support", description = "Signed support actions and messages to agent PCs"),
        (name = "content", description = "The root's signed content: signatures, scripts, rescue images"),
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

    use axum::body::Body;
    use axum::http::{header, Request as HttpRequest, StatusCode};
    use serde_json::{json, Value};

    use crate::store::TokenScope;

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

    /// Errors are `ErrorBody`s (with `code` required), successes have a body (but the relay's
    /// switch to WebSocket; a content item's is bytes), and whatever takes a path parameter can say it does not parse.
    #[test]
    fn every_answer_has_its_body() {
        let doc: Value = serde_json::from_str(super::document()).unwrap();
        let error_body = &doc["components"]["schemas"]["ErrorBody"];
        let required: Vec<&str> = error_body["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(required.contains(&"code") && required.contains(&"error"), "{error_body}");
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, response) in op["responses"].as_object().unwrap() {
                    let schema = &response["content"]["application/json"]["schema"];
                    match status.as_bytes()[0] {
                        b'4' | b'5' => {
                            assert_eq!(schema["$ref"], "#/components/schemas/ErrorBody", "{method} {path} {status}")
                        }
                        // JSON, or (a content item's bytes) an octet stream.
                        b'2' => assert!(
                            schema.is_object() || response["content"]["application/octet-stream"]["schema"].is_object(),
                            "{method} {path} {status} has no body"
                        ),
                        _ => assert_eq!(status, "101", "{method} {path}"),
                    }
                }
                if path.contains('{') {
                    assert!(op["responses"].get("400").is_some(), "{method} {path} does not document 400");
                }
            }
        }
    }

    /// `path` with its parameters filled in: a UUID, or a number.
    fn filled(path: &str) -> String {
        let uuid = "00000000-0000-4000-8000-000000000001";
        path.replace("{uuid}", uuid)
            .replace("{guid}", uuid)
            .replace("{port}", "16992")
            .replace("{contact}", "1")
            .replace("{id}", if path.contains("support-actions") || path.contains("messages") { uuid } else { "1" })
    }

    #[tokio::test]
    async fn every_operation_refuses_a_request_without_a_token_with_a_code() {
        let bed = super::super::tests::bed(|_| {}).await;
        let doc: Value = serde_json::from_str(super::document()).unwrap();
        let mut asked = 0u32;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                // A source each: failed token checks are budgeted per source.
                asked += 1;
                let from = format!("198.18.{}.{}", asked / 200, asked % 200 + 1);
                let request = HttpRequest::builder().method(method.to_uppercase().as_str()).uri(filled(path));
                let (status, _, body) = bed.send(&from, None, request, Body::empty()).await;
                assert_eq!(
                    (status, &body["code"]),
                    (StatusCode::UNAUTHORIZED, &json!("invalid_token")),
                    "{method} {path}"
                );
            }
        }
        assert!(asked > 50, "{asked}");
    }

    /// What axum itself refuses (a path or query that does not parse, a body that is not JSON,
    /// a method a route does not take, a route that does not exist) is an `ErrorBody` with a code.
    #[tokio::test]
    async fn axum_refusals_are_error_bodies_with_codes() {
        let bed = super::super::tests::bed(|_| {}).await;
        let token = bed.token("operator", TokenScope::Attach, None).await;
        let uuid = "00000000-0000-4000-8000-000000000001";
        let json = |request: axum::http::request::Builder| request.header(header::CONTENT_TYPE, "application/json");
        let cases: Vec<(axum::http::request::Builder, &str, StatusCode, &str)> = vec![
            (HttpRequest::get("/api/v1/users/abc/audit"), "", StatusCode::BAD_REQUEST, "bad_request"),
            (
                HttpRequest::post("/api/v1/users/99999999999999999999/suspend"),
                "",
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (HttpRequest::get("/api/v1/users/1/audit?limit=0"), "", StatusCode::BAD_REQUEST, "bad_request"),
            (HttpRequest::get("/api/v1/users/1/audit?limit=x"), "", StatusCode::BAD_REQUEST, "bad_request"),
            (HttpRequest::get("/api/v1/devices?limit=1001"), "", StatusCode::BAD_REQUEST, "bad_request"),
            (HttpRequest::get("/api/v1/devices/not-a-uuid"), "", StatusCode::BAD_REQUEST, "bad_request"),
            (HttpRequest::get("/api/v1/devices/%FF"), "", StatusCode::BAD_REQUEST, "bad_request"),
            (
                HttpRequest::get(format!("/api/v1/devices/{uuid}/redirections?limit=0")),
                "",
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (HttpRequest::get(format!("/api/v1/devices/{uuid}/tcp/65536")), "", StatusCode::BAD_REQUEST, "bad_request"),
            (HttpRequest::get(format!("/api/v1/devices/{uuid}/tcp/16992")), "", StatusCode::BAD_REQUEST, "bad_request"),
            (HttpRequest::get("/api/v1/support-actions/1"), "", StatusCode::BAD_REQUEST, "bad_request"),
            (json(HttpRequest::post("/api/v1/users")), "{", StatusCode::BAD_REQUEST, "bad_request"),
            (HttpRequest::post("/api/v1/users"), "{}", StatusCode::BAD_REQUEST, "bad_request"),
            (json(HttpRequest::post("/api/v1/users")), r#"{"username": 1}"#, StatusCode::BAD_REQUEST, "bad_request"),
            (
                json(HttpRequest::post(format!("/api/v1/devices/{uuid}/power"))),
                r#"{"action": "up"}"#,
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (HttpRequest::patch("/api/v1/users"), "", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            (HttpRequest::put("/api/openapi.json"), "", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            (HttpRequest::get("/api/v1/nothing"), "", StatusCode::NOT_FOUND, "not_found"),
            (HttpRequest::get("/nothing"), "", StatusCode::NOT_FOUND, "not_found"),
        ];
        for (request, body, status, code) in cases {
            let what = format!("{:?} {:?}", request.method_ref(), request.uri_ref());
            let (got, headers, answer) = bed.send("198.18.0.1", Some(&token), request, Body::from(body)).await;
            assert_eq!((got, answer["code"].as_str()), (status, Some(code)), "{what}: {answer}");
            assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {answer}");
            if status == StatusCode::METHOD_NOT_ALLOWED {
                assert!(headers.contains_key(header::ALLOW), "{what}: {headers:?}");
            }
        }
    }

    /// The two answers built as JSON elsewhere, a device and a report's support parameters,
    /// have only the fields their schemas describe, and all the fields those require.
    #[tokio::test]
    async fn views_built_elsewhere_fit_their_schemas() {
        let doc: Value = serde_json::from_str(super::document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let fits = |name: &str, value: &Value| {
            let schema = &schemas[name];
            let properties = schema["properties"].as_object().unwrap();
            let object = value.as_object().unwrap();
            for key in object.keys() {
                assert!(properties.contains_key(key), "{name} does not describe {key:?}: {value}");
            }
            for key in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                assert!(object.contains_key(key), "{name} requires {key:?}: {value}");
            }
        };
        let bed = super::super::tests::bed(|_| {}).await;
        let shared = &bed.api.shared;
        let uuid = uuid::Uuid::new_v4();
        let now = time::OffsetDateTime::now_utc();
        let record = crate::store::DeviceRecord {
            uuid,
            registered: true,
            has_password: false,
            first_seen: Some(now),
            last_hello: Some(now),
            last_keepalive: None,
            connected_since: None,
            remote_addr: Some("198.18.0.9:4000".into()),
            ports: vec![16992],
            last_disconnect: None,
            last_disconnect_reason: None,
            duplicate_count: 0,
            last_duplicate_at: None,
            duplicate_note: None,
            pinned_credential: None,
            conflict_count: 0,
            last_conflict_at: None,
            conflict_note: None,
            instance: Some("gw-1".into()),
        };
        let lan = crate::store::LanAdoption {
            uuid,
            instance: "gw-1".into(),
            ip: "192.168.1.20".into(),
            mac: None,
            tls_pin: None,
            plain_ports: true,
            adopted_at: now,
            adopted_by: "op".into(),
        };
        fits("DeviceView", &crate::view::device_view(shared, Some(record), Some(lan), uuid));
        fits("DeviceView", &crate::view::device_view(shared, None, None, uuid));

        use protocols::telemetry::{Disk, Firewall, FirewallBackend, Reading, Report};
        let report = Report {
            firewall: Reading::Value(Firewall {
                backend: FirewallBackend::Nftables,
                active: true,
                rules: 3,
                default_deny: true,
            }),
            antivirus: Reading::unknown("ClamAV is not installed"),
            last_full_scan: Reading::unknown("no scan log"),
            updates: Reading::unknown("apt-get not found"),
            backup: Reading::unknown("no backup source configured"),
            os_version: Reading::Value("Debian GNU/Linux 12 (bookworm)".into()),
            boot_time: Reading::Value(1_764_633_600),
            disk: Reading::Value(Disk { free_bytes: 10, total_bytes: 20 }),
            agent_version: "0.1.0".into(),
        };
        let parameters = crate::agents::view::report_json(&report);
        fits("SupportParameters", &parameters);
        for reading in parameters.as_object().unwrap().values().filter(|v| v.is_object()) {
            fits("Reading", reading);
        }
    }
}
