//! Cross-site request forgery: every POST form carries the session's CSRF secret (the sign-in
//! form, before there is a session, a double-submit token also set as a cookie), compared in
//! constant time before anything else is done; and a POST whose `Sec-Fetch-Site` or `Origin`
//! says it came from another site is refused whatever its token. `SameSite=Lax` cookies already
//! keep other sites' POSTs unauthenticated in current browsers: these checks do not rely on it.
//!
//! What it does not do: find the session (`session`).

use axum::http::{header, HeaderMap};
use subtle::ConstantTimeEq;

/// The form field holding the token.
pub const FIELD: &str = "csrf";

/// Whether `given` is the expected token (constant time; no token never matches).
pub fn token_matches(expected: &str, given: Option<&str>) -> bool {
    match given {
        Some(given) if !expected.is_empty() => bool::from(expected.as_bytes().ct_eq(given.as_bytes())),
        _ => false,
    }
}

/// Whether the request may be a form of this site: `Sec-Fetch-Site` (when the browser sends it)
/// is `same-origin` or `none`, and `Origin` (when sent) is `https://` and this request's `Host`.
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.to_str(), Ok("same-origin" | "none")) {
            return false;
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let Ok(origin) = origin.to_str() else { return false };
    let Some(authority) = origin.strip_prefix("https://") else { return false };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    host.is_some_and(|host| !authority.is_empty() && authority.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_match_only_exactly() {
        assert!(token_matches("abc", Some("abc")));
        assert!(!token_matches("abc", Some("abd")));
        assert!(!token_matches("abc", Some("ab")));
        assert!(!token_matches("abc", None));
        assert!(!token_matches("", Some("")));
    }

    #[test]
    fn other_sites_are_refused() {
        let mut headers = HeaderMap::new();
        assert!(same_origin(&headers), "no header: older browsers and tools");
        headers.insert(header::HOST, HeaderValue::from_static("gw.example.net:8443"));
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://gw.example.net:8443"));
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&headers));
        headers.remove(header::ORIGIN);
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&headers));
        headers.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&headers));
    }
}
