//! The maintenance entitlement: what Tether's root silo writes into a client's maintenance
//! certificate. It says what the client is entitled to, which maintenance silo serves it, its
//! subscriber's opaque id (never personal data) and until when. [`Entitlement::encode`] writes it
//! (the root silo), [`Entitlement::decode`] reads it (a maintenance silo, the client); both are
//! strict DER.
//!
//! # What this module does not do
//!
//! No X.509 and no cryptography: it neither finds the name in a certificate nor checks the
//! certificate's signature, chain or validity period. The daemons do that, and hand the name here
//! only from a certificate they trust. No clock: [`Entitlement::is_valid_at`] is given
//! the time. No interpretation of the strings: whether a service or tier is known, and whether
//! `location` parses as `HOST:PORT`, is for the caller to decide.
//!
//! # In the certificate
//!
//! The certificate's subjectAltName extension (beside the machine's `urn:uuid:UUID`) carries the
//! URI [`URN_PREFIX`] followed by the DER below in base64url without padding ([`Entitlement::to_urn`],
//! [`Entitlement::from_urn`]). A subjectAltName URI rather than an extension of its own: rcgen
//! writes object identifiers only of arcs below 2^64, so neither a UUID-based OID (`2.25.…`) nor
//! any arc Tether could use without a registered enterprise number fits, and every X.509 tool
//! shows the URI (`openssl x509 -text`). The DER value is:
//!
//! ```text
//! MaintenanceEntitlement ::= SEQUENCE {
//!     version     INTEGER (1),
//!     service     UTF8String (SIZE (1..64)),    -- e.g. "support"
//!     tier        UTF8String (SIZE (1..64)),    -- e.g. "standard"
//!     silo        UTF8String (SIZE (1..64)),    -- the maintenance silo's name, e.g. "silo-a"
//!     location    UTF8String (SIZE (1..256)),   -- where the silo is: HOST:PORT of its agent listener
//!     subscriber  UTF8String (SIZE (1..64)),    -- the subscriber's opaque id (a UUID string; no PII)
//!     notAfter    GeneralizedTime               -- YYYYMMDDHHMMSSZ, UTC, no fractions (DER)
//! }
//! ```
//!
//! # Encoding rules
//!
//! The value is at most [`MAX_LEN`] bytes; a longer input is refused before it is parsed. The
//! largest value the field sizes allow is 548 bytes.
//!
//! - DER only: definite lengths, each in its shortest form (one byte below 128; otherwise `0x81`
//!   or `0x82` and the length's bytes without a leading zero; at most two length bytes). Tags are
//!   exactly `0x30` (SEQUENCE), `0x02` (INTEGER), `0x0C` (UTF8String, primitive) and `0x18`
//!   (GeneralizedTime, primitive).
//! - `version` is exactly `02 01 01`. Any other INTEGER (in its shortest form) is
//!   [`EntitlementError::UnsupportedVersion`]: an issuer that needs another layout says so with a
//!   new version, and this module refuses it rather than guess.
//! - The UTF8String sizes are counted in **bytes** of UTF-8 (stricter than ASN.1, which counts
//!   characters): 1 to [`MAX_NAME_LEN`] for `service`, `tier`, `silo` and `subscriber`, 1 to
//!   [`MAX_LOCATION_LEN`] for `location`. A size is checked as soon as its length has been read.
//! - `notAfter` is exactly 15 bytes `YYYYMMDDHHMMSSZ` naming a real instant: months 1-12, a day
//!   that exists in its month (leap years included), hours 0-23, minutes and seconds 0-59 (no leap
//!   second), from 1970-01-01T00:00:00Z ([`MIN_NOT_AFTER`]) to 9999-12-31T23:59:59Z
//!   ([`MAX_NOT_AFTER`]). In [`Entitlement`] it is Unix seconds.
//! - Nothing follows `notAfter` inside the SEQUENCE, and nothing follows the SEQUENCE.
//!
//! DER is canonical: a value that decodes re-encodes to the very same bytes.

use nom::Parser;

/// What starts the subjectAltName URI that carries an entitlement; base64url (no padding) of
/// the DER follows.
pub const URN_PREFIX: &str = "urn:tether:entitlement:v1:";

/// The only `version` this module reads and writes.
pub const VERSION: i64 = 1;
/// Longest encoded value [`Entitlement::decode`] looks at.
pub const MAX_LEN: usize = 1024;
/// Longest `service`, `tier`, `silo` and `subscriber`, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 64;
/// Longest `location`, in bytes of UTF-8.
pub const MAX_LOCATION_LEN: usize = 256;
/// Earliest `notAfter`: 1970-01-01T00:00:00Z, in Unix seconds.
pub const MIN_NOT_AFTER: i64 = 0;
/// Latest `notAfter`: 9999-12-31T23:59:59Z (GeneralizedTime has four digits of year), in Unix
/// seconds.
pub const MAX_NOT_AFTER: i64 = 253_402_300_799;

const TAG_INTEGER: u8 = 0x02;
const TAG_UTF8_STRING: u8 = 0x0c;
const TAG_GENERALIZED_TIME: u8 = 0x18;
const TAG_SEQUENCE: u8 = 0x30;
/// Bytes of a DER GeneralizedTime without fractions: `YYYYMMDDHHMMSSZ`.
const TIME_LEN: usize = 15;
const SECS_PER_DAY: i64 = 86_400;

/// Bytes of a tag and a length of `len`.
const fn header_len(len: usize) -> usize {
    if len < 0x80 {
        2
    } else if len <= 0xff {
        3
    } else {
        4
    }
}

/// The largest encoding the field sizes allow.
const MAX_ENCODED_LEN: usize = {
    let body = header_len(1)
        + 1
        + 4 * (header_len(MAX_NAME_LEN) + MAX_NAME_LEN)
        + header_len(MAX_LOCATION_LEN)
        + MAX_LOCATION_LEN
        + header_len(TIME_LEN)
        + TIME_LEN;
    header_len(body) + body
};
// Whatever `encode` accepts, `decode` reads back.
const _: () = assert!(MAX_ENCODED_LEN <= MAX_LEN);

/// A client's maintenance entitlement, as the root silo grants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitlement {
    /// What the client is entitled to, e.g. `support` (1 to [`MAX_NAME_LEN`] bytes).
    pub service: String,
    /// The level of that service, e.g. `standard` (1 to [`MAX_NAME_LEN`] bytes).
    pub tier: String,
    /// The name of the maintenance silo that serves the client, e.g. `silo-a` (1 to
    /// [`MAX_NAME_LEN`] bytes).
    pub silo: String,
    /// Where that silo is: `HOST:PORT` of its agent listener (1 to [`MAX_LOCATION_LEN`] bytes).
    pub location: String,
    /// The subscriber's opaque id, a UUID string; never personal data (1 to [`MAX_NAME_LEN`]
    /// bytes).
    pub subscriber: String,
    /// When the entitlement ends, in Unix seconds (UTC), from [`MIN_NOT_AFTER`] to
    /// [`MAX_NOT_AFTER`]: it holds before this second, not at it ([`Entitlement::is_valid_at`]).
    pub not_after: i64,
}

/// Why an entitlement could not be encoded (a field out of its range: the issuer's configuration
/// or code is wrong) or decoded (the extension is malformed: the certificate was not issued by a
/// Tether root silo, or by one with a bug; reissue it). Field names are the ASN.1 ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntitlementError {
    /// The whole value (`field` = `the value`) or a string field is longer than allowed.
    #[error("entitlement: {field} is {len} bytes, over the limit of {max}")]
    TooLong { field: &'static str, len: usize, max: usize },
    /// The bytes end inside `field` (or a length claims more bytes than there are).
    #[error("entitlement: {field} is truncated")]
    Truncated { field: &'static str },
    /// `field` is BER but not DER (or not even BER): `problem` says what is wrong.
    #[error("entitlement: {field} is not DER: {problem}")]
    NotDer { field: &'static str, problem: &'static str },
    /// `field` has another ASN.1 type than the one the layout has there.
    #[error("entitlement: {field} has tag {found:#04x}, expected {expected:#04x}")]
    UnexpectedTag { field: &'static str, expected: u8, found: u8 },
    /// The issuer wrote a version this module does not read.
    #[error("entitlement: version {0} is not supported, only 1 is (is the issuing root silo newer?)")]
    UnsupportedVersion(i64),
    /// A field is out of its range: `problem` says how.
    #[error("entitlement: {field} {problem}")]
    BadField { field: &'static str, problem: &'static str },
    /// `notAfter` is not a valid time in its range: the message says why.
    #[error("entitlement: notAfter {0}")]
    BadTime(&'static str),
    /// Bytes follow the last field (`after` = `notAfter`) or the SEQUENCE (`after` = `the SEQUENCE`).
    #[error("entitlement: {extra} bytes after {after}")]
    TrailingBytes { after: &'static str, extra: usize },
}

impl Entitlement {
    /// The DER encoding of this entitlement: the content of the extension's OCTET STRING. Fails if
    /// a string is empty or over its size, or `not_after` is outside [`MIN_NOT_AFTER`] ..=
    /// [`MAX_NOT_AFTER`]; never writes more than [`MAX_LEN`] bytes.
    pub fn encode(&self) -> Result<Vec<u8>, EntitlementError> {
        let texts = self.texts();
        for (field, text, max) in texts {
            check_text_len(field, text.len(), max)?;
        }
        let time = generalized_time(self.not_after)?;

        let mut body = Vec::with_capacity(MAX_ENCODED_LEN);
        put_element(&mut body, TAG_INTEGER, &[1]);
        for (_, text, _) in texts {
            put_element(&mut body, TAG_UTF8_STRING, text.as_bytes());
        }
        put_element(&mut body, TAG_GENERALIZED_TIME, &time);
        let mut out = Vec::with_capacity(header_len(body.len()) + body.len());
        put_element(&mut out, TAG_SEQUENCE, &body);
        Ok(out)
    }

    /// Decodes a whole extension value (the content of extnValue's OCTET STRING), strictly as DER.
    pub fn decode(der: &[u8]) -> Result<Entitlement, EntitlementError> {
        if der.len() > MAX_LEN {
            return Err(EntitlementError::TooLong { field: "the value", len: der.len(), max: MAX_LEN });
        }
        let body = parse_whole(der, "the SEQUENCE", |input| element(input, TAG_SEQUENCE, "the SEQUENCE"))?;
        parse_whole(body, "notAfter", fields)
    }

    /// The subjectAltName URI that carries this entitlement: [`URN_PREFIX`] and the DER in
    /// base64url without padding.
    pub fn to_urn(&self) -> Result<String, EntitlementError> {
        use base64::Engine;
        let der = self.encode()?;
        Ok(format!("{URN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(der)))
    }

    /// The entitlement a subjectAltName URI carries: `None` when `uri` is not one (another name),
    /// else what its DER decodes to. The base64 text is bounded before it is decoded.
    pub fn from_urn(uri: &str) -> Option<Result<Entitlement, EntitlementError>> {
        use base64::Engine;
        let text = uri.strip_prefix(URN_PREFIX)?;
        // Base64 of at most MAX_LEN bytes.
        const MAX_TEXT: usize = MAX_LEN.div_ceil(3) * 4;
        if text.len() > MAX_TEXT {
            return Some(Err(EntitlementError::TooLong { field: "the URI", len: text.len(), max: MAX_TEXT }));
        }
        Some(match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text) {
            Ok(der) => Entitlement::decode(&der),
            Err(_) => Err(EntitlementError::NotDer { field: "the URI", problem: "is not base64url without padding" }),
        })
    }

    /// Whether the entitlement still holds at `unix_now` (Unix seconds): `unix_now < not_after`.
    pub fn is_valid_at(&self, unix_now: i64) -> bool {
        unix_now < self.not_after
    }

    /// The string fields in wire order, with their ASN.1 names and size limits.
    fn texts(&self) -> [(&'static str, &str, usize); 5] {
        [
            ("service", &self.service, MAX_NAME_LEN),
            ("tier", &self.tier, MAX_NAME_LEN),
            ("silo", &self.silo, MAX_NAME_LEN),
            ("location", &self.location, MAX_LOCATION_LEN),
            ("subscriber", &self.subscriber, MAX_NAME_LEN),
        ]
    }
}

fn check_text_len(field: &'static str, len: usize, max: usize) -> Result<(), EntitlementError> {
    if len == 0 {
        return Err(EntitlementError::BadField { field, problem: "is empty" });
    }
    if len > max {
        return Err(EntitlementError::TooLong { field, len, max });
    }
    Ok(())
}

/// Appends a tag, the DER length of `content` and `content`.
fn put_element(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    match len {
        0..=0x7f => out.push(len as u8),
        0x80..=0xff => out.extend_from_slice(&[0x81, len as u8]),
        // Nothing here is longer than MAX_LEN (see MAX_ENCODED_LEN), so two bytes always do.
        _ => {
            out.push(0x82);
            out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
        }
    }
    out.extend_from_slice(content);
}

/// `unix` as `YYYYMMDDHHMMSSZ`, if it is within [`MIN_NOT_AFTER`] ..= [`MAX_NOT_AFTER`].
fn generalized_time(unix: i64) -> Result<[u8; TIME_LEN], EntitlementError> {
    if unix < MIN_NOT_AFTER {
        return Err(EntitlementError::BadTime("is before 1970-01-01T00:00:00Z"));
    }
    if unix > MAX_NOT_AFTER {
        return Err(EntitlementError::BadTime("is after 9999-12-31T23:59:59Z"));
    }
    let (year, month, day) = civil_from_days(unix.div_euclid(SECS_PER_DAY));
    let secs = unix.rem_euclid(SECS_PER_DAY);
    let text = format!("{year:04}{month:02}{day:02}{:02}{:02}{:02}Z", secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = [0u8; TIME_LEN];
    out.copy_from_slice(text.as_bytes());
    Ok(out)
}

/// Reads `YYYYMMDDHHMMSSZ` as Unix seconds, checking every field's range.
fn parse_generalized_time(text: &[u8]) -> Result<i64, EntitlementError> {
    const SHAPE: &str = "is not YYYYMMDDHHMMSSZ (UTC, no fractions)";
    let [digits @ .., b'Z'] = text else { return Err(EntitlementError::BadTime(SHAPE)) };
    if digits.len() != TIME_LEN - 1 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(EntitlementError::BadTime(SHAPE));
    }
    let number = |from: usize, to: usize| digits[from..to].iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    let (year, month, day) = (number(0, 4), number(4, 6), number(6, 8));
    let (hour, minute, second) = (number(8, 10), number(10, 12), number(12, 14));
    if year < 1970 {
        return Err(EntitlementError::BadTime("is before 1970-01-01T00:00:00Z"));
    }
    if !(1..=12).contains(&month) {
        return Err(EntitlementError::BadTime("has a month outside 01-12"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(EntitlementError::BadTime("has a day that its month does not have"));
    }
    if hour > 23 {
        return Err(EntitlementError::BadTime("has an hour outside 00-23"));
    }
    if minute > 59 || second > 59 {
        return Err(EntitlementError::BadTime("has a minute or second outside 00-59"));
    }
    Ok(days_from_civil(year, month, day) * SECS_PER_DAY + hour * 3600 + minute * 60 + second)
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Days in `month` (1-12) of `year`, in the proleptic Gregorian calendar.
fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a date of the proleptic Gregorian calendar (Howard Hinnant's
/// `days_from_civil`, <https://howardhinnant.github.io/date_algorithms.html>): years are counted
/// from March, so that the leap day ends the year, in 400-year eras of 146 097 days.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date (year, month 1-12, day 1-31) `days` after 1970-01-01: the inverse of
/// [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The fields inside the SEQUENCE.
fn fields(input: &[u8]) -> PResult<'_, Entitlement> {
    let (input, ()) = version(input)?;
    let (input, service) = text(input, "service", MAX_NAME_LEN)?;
    let (input, tier) = text(input, "tier", MAX_NAME_LEN)?;
    let (input, silo) = text(input, "silo", MAX_NAME_LEN)?;
    let (input, location) = text(input, "location", MAX_LOCATION_LEN)?;
    let (input, subscriber) = text(input, "subscriber", MAX_NAME_LEN)?;
    let (input, time) = element(input, TAG_GENERALIZED_TIME, "notAfter")?;
    let not_after = parse_generalized_time(time).map_err(fail)?;
    Ok((input, Entitlement { service, tier, silo, location, subscriber, not_after }))
}

/// `version`: an INTEGER in its shortest form, which must be [`VERSION`].
fn version(input: &[u8]) -> PResult<'_, ()> {
    const FIELD: &str = "version";
    let (input, content) = element(input, TAG_INTEGER, FIELD)?;
    let not_der = match content {
        [] => Some("an INTEGER without content"),
        [0x00, next, ..] if *next < 0x80 => Some("an INTEGER with a superfluous leading 0x00 byte"),
        [0xff, next, ..] if *next >= 0x80 => Some("an INTEGER with a superfluous leading 0xff byte"),
        _ => None,
    };
    if let Some(problem) = not_der {
        return Err(fail(EntitlementError::NotDer { field: FIELD, problem }));
    }
    if content.len() > 8 {
        return Err(fail(EntitlementError::BadField { field: FIELD, problem: "is an INTEGER of more than 8 bytes" }));
    }
    // Two's complement, sign-extended from the first byte.
    let start = match content.first() {
        Some(first) if first & 0x80 != 0 => -1i64,
        _ => 0,
    };
    match content.iter().fold(start, |value, byte| (value << 8) | i64::from(*byte)) {
        VERSION => Ok((input, ())),
        other => Err(fail(EntitlementError::UnsupportedVersion(other))),
    }
}

/// A UTF8String of 1 to `max` bytes, its size checked before its bytes are taken.
fn text<'a>(input: &'a [u8], field: &'static str, max: usize) -> PResult<'a, String> {
    let (input, len) = header(input, TAG_UTF8_STRING, field)?;
    check_text_len(field, len, max).map_err(fail)?;
    let (input, bytes) = take(input, len, field)?;
    let text = std::str::from_utf8(bytes)
        .map_err(|_| fail(EntitlementError::BadField { field, problem: "is not valid UTF-8" }))?;
    Ok((input, text.to_owned()))
}

/// An element of type `tag`: its content.
fn element<'a>(input: &'a [u8], tag: u8, field: &'static str) -> PResult<'a, &'a [u8]> {
    let (input, len) = header(input, tag, field)?;
    take(input, len, field)
}

/// The tag, which must be `tag`, and the DER length of an element.
fn header<'a>(input: &'a [u8], tag: u8, field: &'static str) -> PResult<'a, usize> {
    let (input, found) = named(input, field, nom::number::complete::u8)?;
    if found != tag {
        return Err(fail(EntitlementError::UnexpectedTag { field, expected: tag, found }));
    }
    let not_der = |problem| fail(EntitlementError::NotDer { field, problem });
    let (input, first) = named(input, field, nom::number::complete::u8)?;
    match first {
        0x00..=0x7f => Ok((input, usize::from(first))),
        0x80 => Err(not_der("an indefinite length (0x80)")),
        0x81 => {
            let (input, len) = named(input, field, nom::number::complete::u8)?;
            if len < 0x80 {
                return Err(not_der("a long-form length (0x81) for a length below 128"));
            }
            Ok((input, usize::from(len)))
        }
        0x82 => {
            let (input, len) = named(input, field, nom::number::complete::be_u16)?;
            if len <= 0xff {
                return Err(not_der("a two-byte length (0x82) with a leading zero byte"));
            }
            Ok((input, usize::from(len)))
        }
        0xff => Err(not_der("the reserved length byte 0xff")),
        _ => Err(not_der("a length of more than two bytes")),
    }
}

/// Parser-internal error, turned into an [`EntitlementError`] at the end of [`parse_whole`].
#[derive(Debug)]
enum ParseError {
    /// One of nom's own parsers failed. They fail only by running out of bytes, and [`named`]
    /// turns that into [`EntitlementError::Truncated`] for the field at hand, so this is left only
    /// if a parser was used without a name.
    Nom,
    Entitlement(EntitlementError),
}

impl ParseError {
    /// `what` names the part being parsed, for a [`ParseError::Nom`] that no field named.
    fn into_entitlement_error(self, what: &'static str) -> EntitlementError {
        match self {
            ParseError::Nom => EntitlementError::Truncated { field: what },
            ParseError::Entitlement(e) => e,
        }
    }
}

impl nom::error::ParseError<&[u8]> for ParseError {
    fn from_error_kind(_: &[u8], _: nom::error::ErrorKind) -> Self {
        ParseError::Nom
    }

    fn append(_: &[u8], _: nom::error::ErrorKind, other: Self) -> Self {
        other
    }
}

type PResult<'a, T> = nom::IResult<&'a [u8], T, ParseError>;

/// A hard error: the bytes can never become a valid entitlement.
fn fail(e: EntitlementError) -> nom::Err<ParseError> {
    nom::Err::Failure(ParseError::Entitlement(e))
}

/// Runs `parser` over the whole of `input`, whose last part is `last`: bytes after what it parsed
/// are [`EntitlementError::TrailingBytes`] after `last`.
fn parse_whole<'a, O>(
    input: &'a [u8],
    last: &'static str,
    mut parser: impl Parser<&'a [u8], Output = O, Error = ParseError>,
) -> Result<O, EntitlementError> {
    match parser.parse(input) {
        Ok(([], out)) => Ok(out),
        Ok((rest, _)) => Err(EntitlementError::TrailingBytes { after: last, extra: rest.len() }),
        Err(nom::Err::Incomplete(_)) => Err(EntitlementError::Truncated { field: last }),
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(e.into_entitlement_error(last)),
    }
}

/// Runs one of nom's parsers: running out of bytes is [`EntitlementError::Truncated`] naming
/// `field`, a hard error.
fn named<'a, O>(
    input: &'a [u8],
    field: &'static str,
    mut parser: impl Parser<&'a [u8], Output = O, Error = ParseError>,
) -> PResult<'a, O> {
    parser.parse(input).map_err(|e| match e {
        nom::Err::Failure(e) => nom::Err::Failure(e),
        nom::Err::Error(_) | nom::Err::Incomplete(_) => fail(EntitlementError::Truncated { field }),
    })
}

fn take<'a>(input: &'a [u8], n: usize, field: &'static str) -> PResult<'a, &'a [u8]> {
    named(input, field, nom::bytes::complete::take(n))
}

#[cfg(test)]
#[path = "entitlement_test.rs"]
mod tests;
