//! HTTP Digest (RFC 2617, MD5, `qop="auth"`) as AMT checks it on 16992/16993: the nonces a
//! device issued, each valid for [`NONCE_LIFETIME`], at most [`MAX_NONCES`] per device (the oldest
//! is forgotten first), and the nonce counts seen per nonce (a sliding window of
//! [`NC_WINDOW`] below the highest, as IPsec's anti-replay window), so that a replayed `nc` is
//! refused. The digest itself is computed and compared by [`protocols::http_digest`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use protocols::http_digest::{self, Authorization, Challenge, Expected};

/// How long an issued nonce is accepted.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// Nonces remembered per device.
pub const MAX_NONCES: usize = 16;
/// Nonce counts below the highest seen that are still accepted once each.
pub const NC_WINDOW: u32 = 64;

/// What checking an `Authorization` came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Right credentials, fresh nonce, unseen nonce count.
    Accepted,
    /// Right credentials, but the nonce is unknown or expired, or the nonce count was seen:
    /// answer 401 with `stale="true"`.
    Stale,
    /// Wrong user or password, or a malformed header: answer 401 with a fresh nonce.
    Refused(String),
}

#[derive(Debug, Clone)]
struct Issued {
    nonce: String,
    expires: Instant,
    /// Highest nonce count seen, and bit i set when `highest - i` was seen.
    highest: u32,
    seen: u64,
}

/// A device's issued nonces.
#[derive(Debug, Clone, Default)]
pub struct Nonces {
    issued: VecDeque<Issued>,
}

impl Nonces {
    /// Issues a fresh nonce (32 random hex digits), forgetting the oldest beyond [`MAX_NONCES`].
    pub fn issue(&mut self, now: Instant) -> String {
        self.issued.retain(|n| n.expires > now);
        while self.issued.len() >= MAX_NONCES {
            self.issued.pop_front();
        }
        let nonce = format!("{:032x}", rand::random::<u128>());
        self.issued.push_back(Issued { nonce: nonce.clone(), expires: now + NONCE_LIFETIME, highest: 0, seen: 0 });
        nonce
    }

    /// How many nonces are remembered.
    pub fn len(&self) -> usize {
        self.issued.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.issued.is_empty()
    }

    /// Checks an `Authorization` header value for a request with `method`.
    pub fn check(
        &mut self,
        header: &str,
        method: &str,
        user: &str,
        password: &str,
        realm: &str,
        now: Instant,
    ) -> Verdict {
        let auth = match Authorization::parse(header) {
            Ok(auth) => auth,
            Err(err) => return Verdict::Refused(err.to_string()),
        };
        // The credentials first, against the nonce the client used: a right answer to an
        // unknown nonce is stale, a wrong one is refused.
        let expected = Expected { username: user, password, realm, nonce: &auth.nonce };
        if let Err(err) = http_digest::verify(&auth, method, &expected) {
            return Verdict::Refused(err.to_string());
        }
        let Some(issued) = self.issued.iter_mut().find(|n| n.nonce == auth.nonce) else {
            return Verdict::Stale;
        };
        if issued.expires <= now {
            return Verdict::Stale;
        }
        // qop=auth answers carry nc; an RFC 2069 answer (no qop) counts as nc 1.
        let nc = match auth.nc.as_deref() {
            Some(nc) => match u32::from_str_radix(nc, 16) {
                Ok(nc) if nc > 0 => nc,
                _ => return Verdict::Refused(format!("bad nonce count {nc:?}")),
            },
            None => 1,
        };
        if nc > issued.highest {
            let shift = nc - issued.highest;
            issued.seen = if shift >= 64 { 0 } else { issued.seen << shift };
            issued.seen |= 1;
            issued.highest = nc;
            Verdict::Accepted
        } else {
            let back = issued.highest - nc;
            if back >= NC_WINDOW || back >= 64 || issued.seen & (1 << back) != 0 {
                Verdict::Stale
            } else {
                issued.seen |= 1 << back;
                Verdict::Accepted
            }
        }
    }
}

/// The `WWW-Authenticate` value of a challenge, as firmware writes it (`stale="false"` too).
pub fn challenge_header(realm: &str, nonce: &str, stale: bool) -> String {
    let challenge = Challenge {
        realm: realm.to_owned(),
        nonce: nonce.to_owned(),
        qop: Vec::new(),
        opaque: None,
        algorithm: None,
        stale: false,
    };
    // Realm and nonce are ours (hex and `Digest:` + hex), so this cannot fail; fall back to a
    // plain rendering all the same rather than panic.
    let head = challenge.to_header_value().unwrap_or_else(|_| format!("Digest realm=\"{realm}\", nonce=\"{nonce}\""));
    format!("{head}, stale=\"{stale}\", qop=\"auth\"")
}
