//! The second factor: TOTP (RFC 6238: HMAC-SHA1, 6 digits, 30-second steps), through `totp-rs`.
//! A code is accepted for the current step and one either side (clocks drift), and only for a
//! step later than the last one the user spent (`Store::spend_totp_step`): a code is good once.
//! Secrets are 20 random bytes (RFC 4226's 160 bits), shown to the user in base32 and as an
//! `otpauth://` URI, and kept sealed (`sealing`, AES-256-GCM, bound to the user's id).
//!
//! What it does not do: throttle wrong codes (the portal's sign-in limiter does), or store.

use rand::RngCore;
use totp_rs::{Algorithm, Secret, TOTP};
use uuid::Uuid;

use crate::sealing::Sealer;

const DIGITS: usize = 6;
const STEP_SECS: u64 = 30;
const SECRET_BYTES: usize = 20;

/// Why a secret could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    #[error("the stored second-factor secret does not open with this gateway's key")]
    Sealed,
    #[error("the stored second-factor secret is malformed")]
    Malformed,
}

/// A new secret, in base32 (no padding).
pub fn new_secret() -> String {
    let mut bytes = vec![0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    match Secret::Raw(bytes).to_encoded() {
        Secret::Encoded(text) => text,
        Secret::Raw(_) => String::new(),
    }
}

/// What a user's secrets are sealed with, besides the gateway's key: the user's id, so that a
/// sealed secret copied onto another user's row does not open.
fn binding(user_id: i64) -> Uuid {
    Uuid::from_u64_pair(u64::from_be_bytes(*b"tethtotp"), user_id as u64)
}

pub fn seal(sealer: &Sealer, user_id: i64, secret: &str) -> String {
    sealer.seal(binding(user_id), secret.as_bytes())
}

pub fn open(sealer: &Sealer, user_id: i64, sealed: &str) -> Result<String, TotpError> {
    let plain = sealer.open(binding(user_id), sealed).map_err(|_| TotpError::Sealed)?;
    String::from_utf8(plain).map_err(|_| TotpError::Malformed)
}

fn totp(secret: &str) -> Result<TOTP, TotpError> {
    let bytes = Secret::Encoded(secret.to_string()).to_bytes().map_err(|_| TotpError::Malformed)?;
    TOTP::new(Algorithm::SHA1, DIGITS, 0, STEP_SECS, bytes).map_err(|_| TotpError::Malformed)
}

/// The time step `code` is right for, at `unix` seconds: the current one or one either side;
/// `None` if it is right for none (or is not 6 digits).
pub fn matching_step(secret: &str, code: &str, unix: u64) -> Result<Option<i64>, TotpError> {
    let totp = totp(secret)?;
    let code = code.trim();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let now = unix / STEP_SECS;
    for step in [now.saturating_sub(1), now, now + 1] {
        if totp.check(code, step * STEP_SECS) {
            return Ok(i64::try_from(step).ok());
        }
    }
    Ok(None)
}

/// The code for `unix` seconds (tests, and nothing else: the gateway never shows a code).
#[cfg(test)]
pub fn code_at(secret: &str, unix: u64) -> String {
    totp(secret).map(|t| t.generate(unix)).unwrap_or_default()
}

/// `otpauth://totp/ISSUER:ACCOUNT?secret=…&issuer=…&algorithm=SHA1&digits=6&period=30`, the
/// URI authenticator apps take (Key Uri Format).
pub fn otpauth_uri(issuer: &str, account: &str, secret: &str) -> String {
    let (issuer, account) = (encode(issuer), encode(account));
    format!(
        "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}"
    )
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_their_step_and_its_neighbours_only() {
        let secret = new_secret();
        assert_eq!(secret.len(), 32);
        let t = 1_700_000_000;
        let code = code_at(&secret, t);
        assert_eq!(matching_step(&secret, &code, t).unwrap(), Some((t / 30) as i64));
        assert_eq!(matching_step(&secret, &code, t + 30).unwrap(), Some((t / 30) as i64));
        assert_eq!(matching_step(&secret, &code, t + 90).unwrap(), None);
        assert_eq!(matching_step(&secret, "12345", t).unwrap(), None);
        assert_eq!(matching_step(&secret, "abcdef", t).unwrap(), None);
        assert!(matching_step("not base32!", "123456", t).is_err());
    }

    #[test]
    fn the_rfc_6238_vector_holds() {
        // RFC 6238 appendix B, SHA-1: the secret "12345678901234567890", T = 59 → 94287082 (8
        // digits); its last 6 digits are the 6-digit code.
        let secret = match Secret::Raw(b"12345678901234567890".to_vec()).to_encoded() {
            Secret::Encoded(s) => s,
            Secret::Raw(_) => unreachable!(),
        };
        assert_eq!(code_at(&secret, 59), "287082");
    }

    #[test]
    fn secrets_are_sealed_to_their_user() {
        let sealer = Sealer::from_key(&[7u8; 32]).unwrap();
        let sealed = seal(&sealer, 5, "JBSWY3DPEHPK3PXP");
        assert_eq!(open(&sealer, 5, &sealed).unwrap(), "JBSWY3DPEHPK3PXP");
        assert_eq!(open(&sealer, 6, &sealed), Err(TotpError::Sealed));
        let uri = otpauth_uri("Tether", "ann lee", "JBSWY3DPEHPK3PXP");
        assert!(uri.starts_with("otpauth://totp/Tether:ann%20lee?secret=JBSWY3DPEHPK3PXP&issuer=Tether"), "{uri}");
    }
}
