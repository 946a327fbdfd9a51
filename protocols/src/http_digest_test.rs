//! Tests of HTTP digest: RFC 2617's worked example (§3.5), an AMT-shaped challenge, quoting and
//! escaping, bounds, server-side verification, and property tests (round trips of both headers,
//! no panic on arbitrary input).

use super::*;
use proptest::prelude::*;

/// RFC 2617 §3.5: the challenge for `GET /dir/index.html`.
const RFC_CHALLENGE: &str = "Digest\n                 realm=\"testrealm@host.com\",\n                 qop=\"auth,auth-int\",\n                 nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\",\n                 opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";

fn rfc_challenge() -> Challenge {
    // The RFC folds the header over lines; an HTTP library hands over the unfolded value.
    Challenge::parse(&RFC_CHALLENGE.replace('\n', " ")).expect("RFC 2617 challenge")
}

#[test]
fn rfc_2617_example_challenge() {
    let challenge = rfc_challenge();
    assert_eq!(challenge.realm, "testrealm@host.com");
    assert_eq!(challenge.nonce, "dcd98b7102dd2f0e8b11d0f600bfb0c093");
    assert_eq!(challenge.qop, ["auth", "auth-int"]);
    assert_eq!(challenge.opaque.as_deref(), Some("5ccc069c403ebaf9f0171e9517f40e41"));
    assert!(challenge.offers_auth());
}

#[test]
fn rfc_2617_example_response() {
    let auth =
        Authorization::answer(&rfc_challenge(), "Mufasa", "Circle Of Life", "GET", "/dir/index.html", "0a4f113b", 1)
            .expect("answer");
    assert_eq!(auth.response, "6629fae49393a05397450978507c4ef1");
    assert_eq!(auth.nc.as_deref(), Some("00000001"));
    assert_eq!(auth.qop.as_deref(), Some("auth"));
    let header = auth.to_header_value().expect("header");
    assert_eq!(
        header,
        "Digest username=\"Mufasa\", realm=\"testrealm@host.com\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", \
         uri=\"/dir/index.html\", response=\"6629fae49393a05397450978507c4ef1\", qop=auth, nc=00000001, \
         cnonce=\"0a4f113b\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""
    );
    assert_eq!(Authorization::parse(&header), Ok(auth.clone()));
    let expected = Expected {
        username: "Mufasa",
        password: "Circle Of Life",
        realm: "testrealm@host.com",
        nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093",
    };
    assert_eq!(verify(&auth, "GET", &expected), Ok(()));
    assert_eq!(verify(&auth, "POST", &expected), Err(DigestError::WrongCredentials));
    assert_eq!(
        verify(&auth, "GET", &Expected { password: "circle of life", ..expected }),
        Err(DigestError::WrongCredentials)
    );
    assert_eq!(verify(&auth, "GET", &Expected { username: "mufasa", ..expected }), Err(DigestError::WrongCredentials));
    assert_eq!(verify(&auth, "GET", &Expected { nonce: "other", ..expected }), Err(DigestError::WrongChallenge));
    assert_eq!(verify(&auth, "GET", &Expected { realm: "other", ..expected }), Err(DigestError::WrongChallenge));
}

/// The RFC 2069 response for the same values (no qop): MD5(HA1:nonce:HA2), computed with
/// `printf` and `md5sum` (HA1 939e7578ed9e3c518a452acee763bce9, HA2
/// 39aff3a2bab6126f332b942af96d3366).
#[test]
fn rfc_2069_response_without_qop() {
    let challenge = Challenge { qop: Vec::new(), ..rfc_challenge() };
    let auth = Authorization::answer(&challenge, "Mufasa", "Circle Of Life", "GET", "/dir/index.html", "x", 1)
        .expect("answer");
    assert_eq!(auth.qop, None);
    assert_eq!(auth.nc, None);
    assert_eq!(auth.cnonce, None);
    assert_eq!(auth.response, "670fd8c2df070c60b045671b8b24ff02");
}

#[test]
fn amt_challenge_and_answer() {
    // The shape of AMT's 401 on /wsman: realm "Digest:" and 32 hex digits, qop "auth".
    let header = r#"Digest realm="Digest:A3829B3827DE4D33D4449B366831FD01", nonce="3nUyWgAAAAAAAAAAGRDk8n7KgVLzS5Ls",stale="false",qop="auth""#;
    let challenge = Challenge::parse(header).expect("challenge");
    assert_eq!(challenge.realm, "Digest:A3829B3827DE4D33D4449B366831FD01");
    assert_eq!(challenge.nonce, "3nUyWgAAAAAAAAAAGRDk8n7KgVLzS5Ls");
    assert_eq!(challenge.qop, ["auth"]);
    assert!(!challenge.stale);
    let auth = Authorization::answer(&challenge, "admin", "P@ssw0rd", "POST", "/wsman", "9f86d081884c7d65", 3)
        .expect("answer");
    assert_eq!(auth.nc.as_deref(), Some("00000003"));
    let parsed = Authorization::parse(&auth.to_header_value().expect("header")).expect("parse");
    let expected =
        Expected { username: "admin", password: "P@ssw0rd", realm: &challenge.realm, nonce: &challenge.nonce };
    assert_eq!(verify(&parsed, "POST", &expected), Ok(()));
}

#[test]
fn keys_are_case_insensitive_and_commas_inside_quotes_stay() {
    let challenge = Challenge::parse(r#"digest REALM="a, b", Nonce=abc, QOP="auth""#).expect("challenge");
    assert_eq!(challenge.realm, "a, b");
    assert_eq!(challenge.nonce, "abc");
    assert!(challenge.offers_auth());
}

#[test]
fn quoted_pairs_are_unescaped_and_escaped() {
    let challenge = Challenge::parse(r#"Digest realm="say \"hi\" \\ there", nonce="n""#).expect("challenge");
    assert_eq!(challenge.realm, r#"say "hi" \ there"#);
    let header = challenge.to_header_value().expect("header");
    assert_eq!(header, r#"Digest realm="say \"hi\" \\ there", nonce="n""#);
    assert_eq!(Challenge::parse(&header), Ok(challenge));
}

#[test]
fn refusals() {
    assert_eq!(Challenge::parse("Basic realm=\"x\""), Err(DigestError::NotDigest));
    assert_eq!(Challenge::parse("Digest nonce=\"n\""), Err(DigestError::MissingParam("realm")));
    assert_eq!(Challenge::parse("Digest realm=\"r\""), Err(DigestError::MissingParam("nonce")));
    assert_eq!(
        Challenge::parse("Digest realm=\"r\", REALM=\"s\", nonce=n"),
        Err(DigestError::DuplicateParam("realm".into()))
    );
    assert!(matches!(Challenge::parse("Digest realm=\"r"), Err(DigestError::Malformed(_))));
    assert!(matches!(Challenge::parse("Digest realm=\"r\\"), Err(DigestError::Malformed(_))));
    assert!(matches!(Challenge::parse("Digest realm"), Err(DigestError::Malformed(_))));
    assert!(matches!(Challenge::parse("Digest realm=r nonce=n"), Err(DigestError::Malformed(_))));
    assert!(matches!(Challenge::parse("Digest realm=\"a\nb\", nonce=n"), Err(DigestError::Malformed(_))));
    let long = format!("Digest realm=\"{}\", nonce=n", "x".repeat(MAX_HEADER_LEN));
    assert!(matches!(Challenge::parse(&long), Err(DigestError::TooLong { .. })));
    let many: Vec<String> = (0..=MAX_PARAMS).map(|i| format!("p{i}=v")).collect();
    assert_eq!(
        Challenge::parse(&format!("Digest {}", many.join(", "))),
        Err(DigestError::TooManyParams { max: MAX_PARAMS })
    );
    let sha = Challenge { algorithm: Some("SHA-256".into()), ..rfc_challenge() };
    assert_eq!(
        Authorization::answer(&sha, "u", "p", "GET", "/", "c", 1),
        Err(DigestError::UnsupportedAlgorithm("SHA-256".into()))
    );
    let int_only = Challenge { qop: vec!["auth-int".into()], ..rfc_challenge() };
    assert_eq!(
        Authorization::answer(&int_only, "u", "p", "GET", "/", "c", 1),
        Err(DigestError::UnsupportedQop("auth-int".into()))
    );
    let injected = Challenge { realm: "a\r\nSet-Cookie: x".into(), ..rfc_challenge() };
    assert_eq!(injected.to_header_value(), Err(DigestError::InvalidValue));
}

fn header_string() -> impl Strategy<Value = String> {
    // Any printable text, quotes and backslashes included (control characters cannot be sent).
    proptest::string::string_regex("[^\\p{Cc}]{0,40}").expect("regex")
}

proptest! {
    #[test]
    fn challenge_round_trips(realm in header_string(), nonce in header_string(), opaque in proptest::option::of(header_string()), stale: bool) {
        let challenge = Challenge { realm, nonce, qop: vec!["auth".into()], opaque, algorithm: Some("MD5".into()), stale };
        let header = challenge.to_header_value().expect("header");
        prop_assert_eq!(Challenge::parse(&header), Ok(challenge));
    }

    #[test]
    fn answer_round_trips_and_verifies(
        username in header_string(), password in header_string(), realm in header_string(),
        nonce in header_string(), uri in header_string(), cnonce in header_string(), nc: u32,
    ) {
        let challenge = Challenge { realm: realm.clone(), nonce: nonce.clone(), qop: vec!["auth".into()], ..Challenge::default() };
        let auth = Authorization::answer(&challenge, &username, &password, "POST", &uri, &cnonce, nc).expect("answer");
        let parsed = Authorization::parse(&auth.to_header_value().expect("header")).expect("parse");
        prop_assert_eq!(&parsed, &auth);
        let expected = Expected { username: &username, password: &password, realm: &realm, nonce: &nonce };
        prop_assert_eq!(verify(&parsed, "POST", &expected), Ok(()));
        let wrong = format!("{password}x");
        prop_assert_eq!(verify(&parsed, "POST", &Expected { password: &wrong, ..expected }), Err(DigestError::WrongCredentials));
    }

    #[test]
    fn parsing_never_panics(input in ".{0,200}") {
        let _ = Challenge::parse(&input);
        let _ = Authorization::parse(&input);
        let _ = Challenge::parse(&format!("Digest {input}"));
        let _ = Authorization::parse(&format!("Digest {input}"));
    }
}
