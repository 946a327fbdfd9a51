//! HTTP Digest access authentication (RFC 2617) as Intel AMT uses it for WS-Management: MD5,
//! `qop="auth"`, realms of the form `Digest:<32 hex digits>`. No I/O: the client parses a
//! `WWW-Authenticate` header value into a [`Challenge`] and computes the `Authorization` header
//! value with [`Authorization::answer`] (the caller supplies the client nonce and nonce count);
//! a server writes its challenge with [`Challenge::to_header_value`], parses the client's header
//! with [`Authorization::parse`] and checks it with [`verify`].
//!
//! What this module does not do: choose nonces, remember which nonce counts were seen (replay
//! protection is the server's state), compare the request URI with the `uri` parameter (the
//! caller has both), `auth-int`, MD5-sess, or any other scheme. Header values are bounded
//! ([`MAX_HEADER_LEN`], [`MAX_PARAMS`]); nothing here panics on any input.
//!
//! The digest computation is the one [`crate::redir`] also uses for the redirection protocol's
//! digest authentication; it is repeated here over strings so that HTTP callers need no
//! redirection types.

use md5::{Digest, Md5};

/// Longest header value accepted (a real AMT challenge is about 150 bytes, an answer about 350).
pub const MAX_HEADER_LEN: usize = 4096;
/// Most parameters in one header value (RFC 2617 defines at most 10 for either header).
pub const MAX_PARAMS: usize = 16;

/// Why a digest header was refused, or a response did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("the header value is {len} bytes, more than {max}")]
    TooLong { len: usize, max: usize },
    #[error("more than {max} parameters")]
    TooManyParams { max: usize },
    #[error("the scheme is not Digest")]
    NotDigest,
    #[error("malformed digest header: {0}")]
    Malformed(&'static str),
    #[error("parameter {0} is given twice")]
    DuplicateParam(String),
    #[error("parameter {0} is missing")]
    MissingParam(&'static str),
    #[error("algorithm {0:?} is not supported (only MD5)")]
    UnsupportedAlgorithm(String),
    #[error("qop {0:?} is not supported (only auth)")]
    UnsupportedQop(String),
    #[error("a value cannot be sent in a header (control character)")]
    InvalidValue,
    #[error("the answer is not to the challenge sent (realm or nonce differs)")]
    WrongChallenge,
    #[error("wrong username or password")]
    WrongCredentials,
}

/// A server's `WWW-Authenticate: Digest …` challenge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    /// The qop options offered (`auth`, `auth-int`), empty when the server sent none (RFC 2069).
    pub qop: Vec<String>,
    pub opaque: Option<String>,
    /// `MD5` when given; absent means MD5.
    pub algorithm: Option<String>,
    pub stale: bool,
}

/// A client's `Authorization: Digest …` credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorization {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    /// 32 lowercase hex digits.
    pub response: String,
    /// `auth`, or absent for an RFC 2069 answer.
    pub qop: Option<String>,
    /// The nonce count as sent: 8 hex digits.
    pub nc: Option<String>,
    pub cnonce: Option<String>,
    pub opaque: Option<String>,
    pub algorithm: Option<String>,
}

impl Challenge {
    /// Parses a `WWW-Authenticate` header value (`Digest realm="…", nonce="…", qop="auth"`).
    /// Keys are case-insensitive; values may be tokens or quoted strings with `\` escapes.
    pub fn parse(header_value: &str) -> Result<Challenge, DigestError> {
        let params = parse_digest_params(header_value)?;
        let mut challenge = Challenge::default();
        let mut realm = None;
        let mut nonce = None;
        for (key, value) in params {
            match key.as_str() {
                "realm" => realm = Some(value),
                "nonce" => nonce = Some(value),
                "qop" => {
                    challenge.qop =
                        value.split(',').map(str::trim).filter(|q| !q.is_empty()).map(str::to_owned).collect()
                }
                "opaque" => challenge.opaque = Some(value),
                "algorithm" => challenge.algorithm = Some(value),
                "stale" => challenge.stale = value.eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        challenge.realm = realm.ok_or(DigestError::MissingParam("realm"))?;
        challenge.nonce = nonce.ok_or(DigestError::MissingParam("nonce"))?;
        Ok(challenge)
    }

    /// Whether the challenge offers `qop=auth`.
    pub fn offers_auth(&self) -> bool {
        self.qop.iter().any(|q| q.eq_ignore_ascii_case("auth"))
    }

    /// The header value a server sends (as AMT does: realm, nonce, then qop; opaque and
    /// algorithm when set, `stale=true` when stale).
    pub fn to_header_value(&self) -> Result<String, DigestError> {
        let mut out = String::from("Digest ");
        push_quoted(&mut out, "realm", &self.realm)?;
        out.push_str(", ");
        push_quoted(&mut out, "nonce", &self.nonce)?;
        if !self.qop.is_empty() {
            out.push_str(", ");
            push_quoted(&mut out, "qop", &self.qop.join(","))?;
        }
        if let Some(opaque) = &self.opaque {
            out.push_str(", ");
            push_quoted(&mut out, "opaque", opaque)?;
        }
        if let Some(algorithm) = &self.algorithm {
            out.push_str(", ");
            push_token(&mut out, "algorithm", algorithm)?;
        }
        if self.stale {
            out.push_str(", stale=true");
        }
        Ok(out)
    }
}

impl Authorization {
    /// Parses an `Authorization` header value.
    pub fn parse(header_value: &str) -> Result<Authorization, DigestError> {
        let params = parse_digest_params(header_value)?;
        let mut auth = Authorization::default();
        let (mut username, mut realm, mut nonce, mut uri, mut response) = (None, None, None, None, None);
        for (key, value) in params {
            match key.as_str() {
                "username" => username = Some(value),
                "realm" => realm = Some(value),
                "nonce" => nonce = Some(value),
                "uri" => uri = Some(value),
                "response" => response = Some(value),
                "qop" => auth.qop = Some(value),
                "nc" => auth.nc = Some(value),
                "cnonce" => auth.cnonce = Some(value),
                "opaque" => auth.opaque = Some(value),
                "algorithm" => auth.algorithm = Some(value),
                _ => {}
            }
        }
        auth.username = username.ok_or(DigestError::MissingParam("username"))?;
        auth.realm = realm.ok_or(DigestError::MissingParam("realm"))?;
        auth.nonce = nonce.ok_or(DigestError::MissingParam("nonce"))?;
        auth.uri = uri.ok_or(DigestError::MissingParam("uri"))?;
        auth.response = response.ok_or(DigestError::MissingParam("response"))?;
        Ok(auth)
    }

    /// The client's answer to `challenge` for a request with this method and URI: with
    /// `qop=auth` when the challenge offers it (AMT always does), else an RFC 2069 answer.
    /// `cnonce` is the client's nonce (clients send 16 or 32 random hex digits); `nc` counts the
    /// requests made with this server nonce, starting at 1.
    pub fn answer(
        challenge: &Challenge,
        username: &str,
        password: &str,
        method: &str,
        uri: &str,
        cnonce: &str,
        nc: u32,
    ) -> Result<Authorization, DigestError> {
        check_algorithm(challenge.algorithm.as_deref())?;
        if !challenge.qop.is_empty() && !challenge.offers_auth() {
            return Err(DigestError::UnsupportedQop(challenge.qop.join(",")));
        }
        let with_qop = challenge.offers_auth();
        let mut auth = Authorization {
            username: username.to_owned(),
            realm: challenge.realm.clone(),
            nonce: challenge.nonce.clone(),
            uri: uri.to_owned(),
            response: String::new(),
            qop: with_qop.then(|| "auth".to_owned()),
            nc: with_qop.then(|| format!("{nc:08x}")),
            cnonce: with_qop.then(|| cnonce.to_owned()),
            opaque: challenge.opaque.clone(),
            algorithm: challenge.algorithm.clone(),
        };
        auth.response = auth.expected_response(method, password)?;
        Ok(auth)
    }

    /// The response these parameters call for with this method and password.
    pub fn expected_response(&self, method: &str, password: &str) -> Result<String, DigestError> {
        check_algorithm(self.algorithm.as_deref())?;
        let ha1 = md5_hex(&[&self.username, ":", &self.realm, ":", password]);
        let ha2 = md5_hex(&[method, ":", &self.uri]);
        match self.qop.as_deref() {
            None => Ok(md5_hex(&[&ha1, ":", &self.nonce, ":", &ha2])),
            Some(qop) if qop.eq_ignore_ascii_case("auth") => {
                let nc = self.nc.as_deref().ok_or(DigestError::MissingParam("nc"))?;
                let cnonce = self.cnonce.as_deref().ok_or(DigestError::MissingParam("cnonce"))?;
                Ok(md5_hex(&[&ha1, ":", &self.nonce, ":", nc, ":", cnonce, ":", qop, ":", &ha2]))
            }
            Some(qop) => Err(DigestError::UnsupportedQop(qop.to_owned())),
        }
    }

    /// The `Authorization` header value (`Digest username="…", …`). Quoted values are escaped;
    /// a control character in any value is [`DigestError::InvalidValue`].
    pub fn to_header_value(&self) -> Result<String, DigestError> {
        let mut out = String::from("Digest ");
        push_quoted(&mut out, "username", &self.username)?;
        for (key, value) in [("realm", &self.realm), ("nonce", &self.nonce), ("uri", &self.uri)] {
            out.push_str(", ");
            push_quoted(&mut out, key, value)?;
        }
        if let Some(algorithm) = &self.algorithm {
            out.push_str(", ");
            push_token(&mut out, "algorithm", algorithm)?;
        }
        out.push_str(", ");
        push_quoted(&mut out, "response", &self.response)?;
        if let Some(qop) = &self.qop {
            out.push_str(", ");
            push_token(&mut out, "qop", qop)?;
        }
        if let Some(nc) = &self.nc {
            out.push_str(", ");
            push_token(&mut out, "nc", nc)?;
        }
        if let Some(cnonce) = &self.cnonce {
            out.push_str(", ");
            push_quoted(&mut out, "cnonce", cnonce)?;
        }
        if let Some(opaque) = &self.opaque {
            out.push_str(", ");
            push_quoted(&mut out, "opaque", opaque)?;
        }
        Ok(out)
    }
}

/// What a server expects of an `Authorization`: the account and the challenge it sent.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub username: &'a str,
    pub password: &'a str,
    pub realm: &'a str,
    pub nonce: &'a str,
}

/// Checks a client's credentials for a request with this method: the realm and nonce must be
/// the challenge's, the algorithm MD5, the qop `auth` or none, and username and response right.
/// Secrets are compared without stopping at the first difference.
pub fn verify(auth: &Authorization, method: &str, expected: &Expected<'_>) -> Result<(), DigestError> {
    if auth.realm != expected.realm || auth.nonce != expected.nonce {
        return Err(DigestError::WrongChallenge);
    }
    let response = auth.expected_response(method, expected.password)?;
    let user_ok = equal_no_early_exit(auth.username.as_bytes(), expected.username.as_bytes());
    let response_ok = equal_no_early_exit(auth.response.to_ascii_lowercase().as_bytes(), response.as_bytes());
    if user_ok & response_ok {
        Ok(())
    } else {
        Err(DigestError::WrongCredentials)
    }
}

fn check_algorithm(algorithm: Option<&str>) -> Result<(), DigestError> {
    match algorithm {
        None => Ok(()),
        Some(a) if a.eq_ignore_ascii_case("MD5") => Ok(()),
        Some(a) => Err(DigestError::UnsupportedAlgorithm(a.to_owned())),
    }
}

fn equal_no_early_exit(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn md5_hex(parts: &[&str]) -> String {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn push_quoted(out: &mut String, key: &str, value: &str) -> Result<(), DigestError> {
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(DigestError::InvalidValue);
    }
    out.push_str(key);
    out.push_str("=\"");
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Ok(())
}

fn push_token(out: &mut String, key: &str, value: &str) -> Result<(), DigestError> {
    if value.is_empty() || !value.bytes().all(is_token_byte) {
        // Not a token: send it quoted rather than break the header.
        return push_quoted(out, key, value);
    }
    out.push_str(key);
    out.push('=');
    out.push_str(value);
    Ok(())
}

/// RFC 7230 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Splits `Digest k=v, k="v", …` into lowercase keys and unquoted values.
fn parse_digest_params(header_value: &str) -> Result<Vec<(String, String)>, DigestError> {
    if header_value.len() > MAX_HEADER_LEN {
        return Err(DigestError::TooLong { len: header_value.len(), max: MAX_HEADER_LEN });
    }
    let input = header_value.trim_start_matches([' ', '\t']);
    let scheme_end = input.find([' ', '\t']).unwrap_or(input.len());
    if !input[..scheme_end].eq_ignore_ascii_case("digest") {
        return Err(DigestError::NotDigest);
    }
    let bytes = input.as_bytes();
    let mut pos = scheme_end;
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        // Skip whitespace and empty list elements.
        while pos < bytes.len() && matches!(bytes[pos], b' ' | b'\t' | b',') {
            pos += 1;
        }
        if pos >= bytes.len() {
            break;
        }
        let key_start = pos;
        while pos < bytes.len() && is_token_byte(bytes[pos]) {
            pos += 1;
        }
        if pos == key_start {
            return Err(DigestError::Malformed("expected a parameter name"));
        }
        let key = input[key_start..pos].to_ascii_lowercase();
        while pos < bytes.len() && matches!(bytes[pos], b' ' | b'\t') {
            pos += 1;
        }
        if bytes.get(pos) != Some(&b'=') {
            return Err(DigestError::Malformed("expected '=' after a parameter name"));
        }
        pos += 1;
        while pos < bytes.len() && matches!(bytes[pos], b' ' | b'\t') {
            pos += 1;
        }
        let value = if bytes.get(pos) == Some(&b'"') {
            pos += 1;
            let mut value = String::new();
            loop {
                let Some(c) = input[pos..].chars().next() else {
                    return Err(DigestError::Malformed("unterminated quoted string"));
                };
                pos += c.len_utf8();
                match c {
                    '"' => break,
                    '\\' => {
                        let Some(escaped) = input[pos..].chars().next() else {
                            return Err(DigestError::Malformed("unterminated quoted string"));
                        };
                        pos += escaped.len_utf8();
                        value.push(escaped);
                    }
                    c if c.is_control() && c != '\t' => return Err(DigestError::Malformed("control character")),
                    c => value.push(c),
                }
            }
            value
        } else {
            let start = pos;
            while pos < bytes.len() && is_token_byte(bytes[pos]) {
                pos += 1;
            }
            if pos == start {
                return Err(DigestError::Malformed("expected a value"));
            }
            input[start..pos].to_owned()
        };
        if params.iter().any(|(k, _)| *k == key) {
            return Err(DigestError::DuplicateParam(key));
        }
        if params.len() >= MAX_PARAMS {
            return Err(DigestError::TooManyParams { max: MAX_PARAMS });
        }
        params.push((key, value));
        while pos < bytes.len() && matches!(bytes[pos], b' ' | b'\t') {
            pos += 1;
        }
        match bytes.get(pos) {
            None => break,
            Some(b',') => pos += 1,
            Some(_) => return Err(DigestError::Malformed("expected ',' between parameters")),
        }
    }
    Ok(params)
}

#[cfg(test)]
#[path = "http_digest_test.rs"]
mod tests;
