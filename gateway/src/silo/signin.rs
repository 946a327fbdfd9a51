//! The portal through the root (`docs/silos.md`, "The portal through the root"): a person signed
//! in at the root's portal opens a maintenance silo's portal, which has no account for them.
//!
//! The root signs an [`Assertion`] for one silo (its audience) with its signing key, under
//! `tether-portal-signin-v1\0`: an opaque id of the person (never a name or an email), the role,
//! the subscribers the person may see there by their opaque ids (owner or contact, subscription
//! active or not), when it was made, when it ends ([`LIFETIME_SECS`] later) and a random nonce.
//! The browser carries it to the silo ([`Handoff::url`], a redirect); the silo checks it with the
//! root key of its bundle ([`Handoff::verify`]) without asking the root, takes its nonce once,
//! and opens a session for that person.
//!
//! What it does not do: HTTP, or the store (`portal::through_root` and `store::root_visitors`).

use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use protocols::tap::{signed_message, SignDomain};
use serde::{Deserialize, Serialize};

use crate::agents::keys::AgentKeys;
use crate::policy::Role;

/// Where a maintenance silo takes assertions (GET, with `assertion` and `signature`).
pub const SIGNIN_PATH: &str = "/portal/root-signin";
/// How long an assertion holds: long enough for a redirect, short enough that a copied link dies.
pub const LIFETIME_SECS: i64 = 60;
/// Clock skew tolerated between the root and the silo.
pub const MAX_SKEW_SECS: i64 = 30;
/// Subscribers one assertion grants at most (the root sends the first ones, by its numbers).
pub const MAX_GRANTS: usize = 256;
/// The largest assertion (its JSON) a silo reads: far above [`MAX_GRANTS`] of them.
pub const MAX_ASSERTION: usize = 48 * 1024;
const VERSION: u32 = 1;

/// What the root says of a person it sends to one silo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    pub version: u32,
    /// The silo it is for: any other refuses it.
    pub silo: String,
    /// The person's opaque id at the root.
    pub subject: String,
    /// `operator` or `user`.
    pub role: String,
    /// The subscribers the person may see there.
    pub grants: Vec<Grant>,
    /// Unix seconds.
    pub issued_at: i64,
    pub expires_at: i64,
    /// Random: a silo takes each assertion once.
    pub nonce: String,
}

/// A subscriber an assertion grants, by its opaque id: what the silo keeps of it, too.
pub use crate::store::RootGrant as Grant;

impl Assertion {
    /// An assertion for `silo` made `now` (unix seconds), with a fresh nonce.
    pub fn new(silo: &str, subject: &str, role: Role, grants: Vec<Grant>, now: i64) -> Assertion {
        Assertion {
            version: VERSION,
            silo: silo.to_string(),
            subject: subject.to_string(),
            role: role.as_str().to_string(),
            grants,
            issued_at: now,
            expires_at: now + LIFETIME_SECS,
            nonce: crate::portal::session::random_token(),
        }
    }

    /// The role it names (checked by [`Handoff::verify`]).
    pub fn role(&self) -> Role {
        Role::parse(&self.role).unwrap_or(Role::User)
    }
}

/// Why a silo refused an assertion. [`SigninError::code`] is stable (pages, logs, tests).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigninError {
    #[error("the sign-in link is damaged ({0})")]
    Malformed(&'static str),
    #[error("the sign-in link is not signed by this silo's root")]
    BadSignature,
    #[error("the sign-in link is for silo {named}, not this one ({this})")]
    OtherSilo { named: String, this: String },
    #[error("the sign-in link has expired: open the silo from the root's portal again")]
    Expired,
    #[error("the sign-in link was made in the future: the root's clock or this silo's is wrong")]
    NotYet,
    #[error("the sign-in link was used already: open the silo from the root's portal again")]
    Replayed,
}

impl SigninError {
    pub fn code(&self) -> &'static str {
        match self {
            SigninError::Malformed(_) => "malformed",
            SigninError::BadSignature => "bad_signature",
            SigninError::OtherSilo { .. } => "other_silo",
            SigninError::Expired => "expired",
            SigninError::NotYet => "not_yet",
            SigninError::Replayed => "replayed",
        }
    }
}

/// An assertion as the browser carries it: its JSON and the root's signature, base64url.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Handoff {
    pub assertion: String,
    pub signature: String,
}

/// A silo's portal URL as `tether silo add --portal-url` takes it: `https://HOST[:PORT]`, no
/// path, query or user; without a trailing `/`. (It is also an origin a root's page lets its
/// forms go to, so nothing else may be in it.)
pub fn check_portal_url(text: &str) -> Result<String, String> {
    let origin = text.trim().trim_end_matches('/');
    let host = origin.strip_prefix("https://").ok_or_else(|| format!("{text:?} is not https://HOST[:PORT]"))?;
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']');
    if host.is_empty() || host.len() > 260 || !host.bytes().all(allowed) || host.starts_with(':') {
        return Err(format!("{text:?} is not https://HOST[:PORT] (no path, query or user)"));
    }
    Ok(origin.to_string())
}

/// An opaque id as the root makes them (a UUID's 32 hex digits, or a UUID), or a nonce.
fn is_opaque(text: &str, max: usize) -> bool {
    (1..=max).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Handoff {
    /// Signs `assertion` with the root's key.
    pub fn sign(keys: &AgentKeys, assertion: &Assertion) -> Handoff {
        let payload = serde_json::to_vec(assertion).unwrap_or_default();
        let signature = keys.sign(SignDomain::PortalSignin, &payload);
        Handoff { assertion: URL_SAFE_NO_PAD.encode(payload), signature: URL_SAFE_NO_PAD.encode(signature) }
    }

    /// Where the browser goes: the silo's portal (`https://HOST:PORT`) at [`SIGNIN_PATH`].
    pub fn url(&self, portal_url: &str) -> String {
        format!(
            "{}{SIGNIN_PATH}?assertion={}&signature={}",
            portal_url.trim_end_matches('/'),
            self.assertion,
            self.signature
        )
    }

    /// The assertion, if the root's key signed it for silo `silo` and it holds at `now` (unix
    /// seconds). Its nonce is the caller's to take.
    pub fn verify(&self, root_key: &[u8; 32], silo: &str, now: i64) -> Result<Assertion, SigninError> {
        if self.assertion.len() > MAX_ASSERTION * 4 / 3 + 4 || self.signature.len() > 128 {
            return Err(SigninError::Malformed("too long"));
        }
        let payload = URL_SAFE_NO_PAD.decode(&self.assertion).map_err(|_| SigninError::Malformed("not base64url"))?;
        let signature = URL_SAFE_NO_PAD.decode(&self.signature).map_err(|_| SigninError::Malformed("not base64url"))?;
        UnparsedPublicKey::new(&ED25519, root_key)
            .verify(&signed_message(SignDomain::PortalSignin, &payload), &signature)
            .map_err(|_| SigninError::BadSignature)?;
        let assertion: Assertion =
            serde_json::from_slice(&payload).map_err(|_| SigninError::Malformed("not an assertion"))?;
        if assertion.version != VERSION {
            return Err(SigninError::Malformed("another version"));
        }
        if assertion.silo != silo {
            return Err(SigninError::OtherSilo { named: assertion.silo, this: silo.to_string() });
        }
        if assertion.issued_at > now + MAX_SKEW_SECS {
            return Err(SigninError::NotYet);
        }
        if now >= assertion.expires_at || assertion.expires_at - assertion.issued_at > LIFETIME_SECS {
            return Err(SigninError::Expired);
        }
        if Role::parse(&assertion.role).is_none() {
            return Err(SigninError::Malformed("an unknown role"));
        }
        if !is_opaque(&assertion.subject, 64) || !is_opaque(&assertion.nonce, 64) || assertion.nonce.len() < 22 {
            return Err(SigninError::Malformed("a subject or nonce of the wrong shape"));
        }
        if assertion.grants.len() > MAX_GRANTS || !assertion.grants.iter().all(|g| is_opaque(&g.subscriber, 64)) {
            return Err(SigninError::Malformed("too many grants, or a subscriber of the wrong shape"));
        }
        Ok(assertion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (tempfile::TempDir, AgentKeys) {
        let dir = tempfile::tempdir().unwrap();
        let keys = AgentKeys::load_or_create(dir.path()).unwrap();
        (dir, keys)
    }

    fn grant(subscriber: &str) -> Grant {
        Grant { subscriber: subscriber.into(), owner: true, active: true }
    }

    #[test]
    fn a_silo_takes_only_a_fresh_assertion_the_root_signed_for_it() {
        let (_dir, root) = keys();
        let key = root.signing_public();
        let now = 1_800_000_000;
        let assertion = Assertion::new("silo-a", "0123abcd", Role::User, vec![grant("5f0c-opaque")], now);
        let handoff = Handoff::sign(&root, &assertion);
        assert_eq!(handoff.verify(&key, "silo-a", now + 5), Ok(assertion.clone()));
        let url = handoff.url("https://silo-a.example:8443/");
        assert!(url.starts_with("https://silo-a.example:8443/portal/root-signin?assertion="), "{url}");

        // Another silo, too late, too early.
        assert!(matches!(handoff.verify(&key, "silo-b", now), Err(SigninError::OtherSilo { .. })));
        assert_eq!(handoff.verify(&key, "silo-a", now + LIFETIME_SECS), Err(SigninError::Expired));
        assert_eq!(handoff.verify(&key, "silo-a", now - MAX_SKEW_SECS - 1), Err(SigninError::NotYet));

        // Another signer; another signing domain; a changed grant.
        let (_other_dir, other) = keys();
        assert_eq!(Handoff::sign(&other, &assertion).verify(&key, "silo-a", now), Err(SigninError::BadSignature));
        let payload = serde_json::to_vec(&assertion).unwrap();
        let config_signed = Handoff {
            assertion: URL_SAFE_NO_PAD.encode(&payload),
            signature: URL_SAFE_NO_PAD.encode(root.sign(SignDomain::Config, &payload)),
        };
        assert_eq!(config_signed.verify(&key, "silo-a", now), Err(SigninError::BadSignature));
        let mut widened = assertion.clone();
        widened.grants.push(grant("someone-else"));
        let tampered = Handoff {
            assertion: URL_SAFE_NO_PAD.encode(serde_json::to_vec(&widened).unwrap()),
            signature: handoff.signature.clone(),
        };
        assert_eq!(tampered.verify(&key, "silo-a", now), Err(SigninError::BadSignature));

        // Signed, but shaped wrong: a lifetime beyond the limit, an unknown role, too many grants.
        let mut long = assertion.clone();
        long.expires_at = now + 3600;
        assert_eq!(Handoff::sign(&root, &long).verify(&key, "silo-a", now), Err(SigninError::Expired));
        let mut god = assertion.clone();
        god.role = "root".into();
        assert!(matches!(Handoff::sign(&root, &god).verify(&key, "silo-a", now), Err(SigninError::Malformed(_))));
        let mut many = assertion;
        many.grants = (0..=MAX_GRANTS).map(|i| grant(&format!("s{i}"))).collect();
        assert!(matches!(Handoff::sign(&root, &many).verify(&key, "silo-a", now), Err(SigninError::Malformed(_))));
        let garbage = Handoff { assertion: "%%%".into(), signature: "x".into() };
        assert!(matches!(garbage.verify(&key, "silo-a", now), Err(SigninError::Malformed(_))));
    }

    #[test]
    fn a_portal_url_is_an_https_origin_and_nothing_more() {
        assert_eq!(check_portal_url("https://silo-a.example:8443/").as_deref(), Ok("https://silo-a.example:8443"));
        assert_eq!(check_portal_url("https://[::1]:8443").as_deref(), Ok("https://[::1]:8443"));
        for bad in
            ["http://a", "https://", "https://a/portal", "https://a?x", "https://u@a", "https://a b", "https://a;"]
        {
            assert!(check_portal_url(bad).is_err(), "{bad}");
        }
    }
}
