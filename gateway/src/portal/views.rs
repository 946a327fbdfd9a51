//! How the portal's pages look: server-rendered HTML (maud escapes every value), a little inline
//! CSS, a viewport for phones, no JavaScript. Every response carries headers that keep it out of
//! caches and frames (see [`secure_headers`]).
//!
//! What it does not do: decide what a page shows (the handlers do).

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use time::OffsetDateTime;

use super::csrf;
use super::session::Visitor;
use crate::policy::Denied;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa;line-height:1.4}\
header{background:#234;color:#fff;padding:.6em 1em;display:flex;flex-wrap:wrap;gap:1em;align-items:center}\
header a,header button{color:#fff;background:none;border:0;font:inherit;text-decoration:underline;cursor:pointer;padding:0}\
header form{margin:0}main{padding:1em;max-width:60em}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3em .5em;border-bottom:1px solid #ddd;vertical-align:top}\
.scroll{overflow-x:auto}.note{background:#fff3cd;padding:.6em;border-radius:4px}.error{background:#f8d7da;padding:.6em;border-radius:4px}\
label{display:block;margin:.6em 0 .2em}label.check{font-weight:normal}form.inline{display:inline;margin:0}\
.terms{background:#fff;border:1px solid #ccc;padding:.6em;max-height:14em;overflow-y:auto}\
input[type=text],input[type=password],input[type=email]{font-size:1.1em;padding:.3em;width:100%;max-width:20em;box-sizing:border-box}\
button{font-size:1em;padding:.4em 1em;margin-top:.6em}code{word-break:break-all}.muted{color:#666}\
@media (max-width:40em){table.cards thead{display:none}table.cards tr{display:block;border-bottom:1px solid #ccc;padding:.4em 0}\
table.cards td{display:block;border:0;padding:.1em .3em}table.cards td[data-label]::before{content:attr(data-label) \": \";color:#666}}";

/// The headers of every portal response: no caching, no framing, no scripts, no referrer to
/// other sites.
pub fn secure_headers(headers: &mut HeaderMap) {
    let pairs = [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: under it browsers send `Origin: null` with every form POST (Fetch,
        // "serializing a request origin"), which the origin check must refuse. `same-origin`
        // still gives other sites no referrer.
        (header::REFERRER_POLICY, "same-origin"),
    ];
    for (name, value) in pairs {
        headers.insert(name, HeaderValue::from_static(value));
    }
    // A page may have widened its forms' targets (`allow_form_targets`); nothing else.
    headers.entry(header::CONTENT_SECURITY_POLICY).or_insert_with(|| HeaderValue::from_static(CSP));
}

/// The pages' content security policy, with `form-action` last.
const CSP: &str = concat!(
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; ",
    "form-action 'self'"
);

/// `response` with a policy that lets its forms also go to `origins` (checked
/// `https://HOST[:PORT]`): a root's buttons that open a silo's portal post to the root, whose
/// redirect to the silo counts as the form's target.
pub fn allow_form_targets(mut response: Response, origins: &[String]) -> Response {
    let policy = origins.iter().fold(CSP.to_string(), |policy, origin| policy + " " + origin);
    if let Ok(value) = HeaderValue::from_str(&policy) {
        response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}

/// A whole page: `visitor` decides the navigation (none before sign-in).
pub fn page(status: StatusCode, title: &str, visitor: Option<&Visitor>, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Tether" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                header {
                    strong { "Tether" }
                    @if let Some(visitor) = visitor {
                        @if visitor.gate() == super::session::Gate::Open {
                            a href="/portal/machines" { "Machines" }
                            @if visitor.principal.role == crate::policy::Role::Operator && !visitor.session.via_root {
                                a href="/portal/subscribers" { "Subscribers" }
                                a href="/portal/users" { "Users" }
                                a href="/portal/silos" { "Silos" }
                            }
                        }
                        @if visitor.session.via_root {
                            span { "Signed in through the root" }
                        } @else {
                            a href="/portal/profile" { (visitor.user.username) }
                        }
                        form method="post" action="/portal/signout" {
                            (csrf_field(&visitor.session.csrf_secret))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    (status, axum::response::Html(markup.into_string())).into_response()
}

/// The hidden field carrying a form's CSRF token.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name=(csrf::FIELD) value=(token); }
}

/// 303 to `to` (after a POST, or to where a visitor must go).
pub fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// A page saying why the policy refused, with its stable code.
pub fn forbidden(visitor: Option<&Visitor>, denied: Denied, what: &str) -> Response {
    let advice = match denied {
        Denied::Suspended => "An operator can lift the suspension.",
        Denied::NotRelated | Denied::SubscriptionTerminated => {
            "Ask the machine's subscriber to invite you as a support contact."
        }
        Denied::Scope | Denied::OperatorOnly | Denied::UnassignedMachine | Denied::WrongResource => "Ask an operator.",
    };
    page(
        StatusCode::FORBIDDEN,
        "Not allowed",
        visitor,
        html! {
            p.error { (what) " is refused: " (denied) "." }
            p { (advice) }
            p.muted { "Reason code: " code { (denied.code()) } }
        },
    )
}

/// A page saying why a flow refused `what`: its message and its stable code.
pub fn refusal(status: StatusCode, visitor: Option<&Visitor>, what: &str, text: &str, code: &str) -> Response {
    page(
        status,
        "Not done",
        visitor,
        html! {
            p.error { (what) " is refused: " (text) "." }
            p.muted { "Reason code: " code { (code) } }
        },
    )
}

/// A page with one message (errors of the gateway, refusals that are not the policy's).
pub fn message(status: StatusCode, title: &str, visitor: Option<&Visitor>, text: &str) -> Response {
    page(status, title, visitor, html! { p.error { (text) } })
}

/// 429 with `Retry-After`.
pub fn too_many(wait: std::time::Duration, visitor: Option<&Visitor>) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let secs = secs.max(1);
    let mut response = message(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many attempts",
        visitor,
        &format!("Too many attempts from your address or for this account. Wait {secs} seconds, then try again."),
    );
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// The alerts a contact may choose, as (JSON key, what the checkbox says).
pub const ALERTS: [(&str, &str); 3] = [
    ("red", "a machine's health turns red"),
    ("yellow", "a machine's health turns yellow"),
    ("green", "a machine's health is back to green"),
];

/// The alert preference checkboxes (`alert_red`, …), checked as in `prefs` (all when none), and
/// the webhook URL (`alert_webhook`).
pub fn alert_fields(prefs: Option<&serde_json::Value>) -> Markup {
    html! {
        fieldset {
            legend { "Mail me when" }
            @for (key, text) in ALERTS {
                @let checked = prefs.is_none_or(|p| p.get(key).and_then(serde_json::Value::as_bool).unwrap_or(false));
                label.check {
                    input type="checkbox" name={ "alert_" (key) } value="yes" checked[checked];
                    " " (text)
                }
            }
            @let webhook = prefs.and_then(|p| p.get("webhook")).and_then(serde_json::Value::as_str).unwrap_or("");
            label {
                "Also post alerts as JSON to (an https:// webhook, e.g. your chat's; optional)"
                input type="url" name="alert_webhook" value=(webhook) placeholder="https://";
            }
        }
    }
}

/// A value for a URL's query: everything but RFC 3986's unreserved characters and `/`
/// percent-encoded.
pub fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A time as people read it, in UTC; `—` for none.
pub fn when(at: Option<OffsetDateTime>) -> String {
    match at {
        Some(at) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute()
        ),
        None => "—".to_string(),
    }
}
