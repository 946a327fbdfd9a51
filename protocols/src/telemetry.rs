//! Support parameters: what an agent reports about its PC, shared by the agent (which collects
//! them) and the gateway (which stores them and rates them on the health meter).
//!
//! Every parameter is a [`Reading`]: a value, or "unknown" with the reason the collector could not
//! tell (a file it could not read, a tool that is not installed). A collector never guesses, and the
//! health meter never turns a machine red on an unknown.
//!
//! Times are Unix seconds (UTC). Text fields are bounded by [`MAX_TEXT_LEN`] when decoded.
//!
//! The wire encoding of a [`Report`] lives beside the types (see [`Report::encode`] and
//! [`decode_report`]): a sequence of tagged parameters, so that an older gateway skips the
//! parameters a newer agent adds.
//!
//! # Wire encoding
//!
//! A report is a sequence of parameters, each `tag: u8`, `len: u16`, then `len` bytes of body. All
//! integers are big-endian. A *text* is a `u16` length and that many bytes of UTF-8, at most
//! [`MAX_TEXT_LEN`]; an *optional time* is a presence byte (0 absent, 1 present) followed, when
//! present, by an `i64`; a *flag* is one byte, 0 or 1 (any other byte is an error).
//!
//! The body of every parameter but [`ParamTag::AgentVersion`] is a [`Reading`]: a first byte 0
//! followed by the value's layout (listed on [`ParamTag`]), or 1 followed by a text giving the
//! reason it is unknown. The body is consumed exactly: bytes left over are an error (a parameter
//! that needs more fields gets a new tag).
//!
//! Decoding ([`decode_report`]) takes the whole buffer:
//! - a tag this version does not know is skipped (a newer agent added a parameter);
//! - a parameter that does not appear reads as `Reading::Unknown("not reported")`
//!   ([`NOT_REPORTED`]), except the agent version, which is required;
//! - a tag that appears twice, a truncated parameter, and trailing bytes are errors;
//! - a firewall backend code this version does not know reads as an unknown firewall (its reason
//!   names the code) rather than failing the whole report.
//!
//! Encoding writes every parameter once, in tag order. Text longer than [`MAX_TEXT_LEN`] is cut at
//! a character boundary, so that whatever is encoded decodes.

use bytes::{BufMut, BytesMut};
use nom::Parser;

/// Longest text (a product name, an OS version, an "unknown" reason) accepted when decoding.
pub const MAX_TEXT_LEN: usize = 512;

/// Unix time in seconds (UTC).
pub type UnixTime = i64;

/// One support parameter: its value, or why it is not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading<T> {
    Value(T),
    /// The collector could not tell; the text says why ("clamd is not installed",
    /// "/var/log/apt/history.log: permission denied").
    Unknown(String),
}

impl<T> Reading<T> {
    pub fn unknown(reason: impl Into<String>) -> Self {
        Reading::Unknown(reason.into())
    }

    pub fn value(&self) -> Option<&T> {
        match self {
            Reading::Value(value) => Some(value),
            Reading::Unknown(_) => None,
        }
    }
}

/// Which firewall the collector read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FirewallBackend {
    Nftables = 1,
    Iptables = 2,
    /// Windows Security Center's firewall product (or Windows Defender Firewall).
    WindowsSecurityCenter = 3,
}

/// The host firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firewall {
    pub backend: FirewallBackend,
    /// Whether it filters: an input chain (or profile) with a drop/reject policy or filtering rules.
    pub active: bool,
    /// Filtering rules counted in the ruleset (0 when off).
    pub rules: u32,
    /// Whether the input hook's default policy drops or rejects.
    pub default_deny: bool,
}

/// The antivirus product and its processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Antivirus {
    /// "ClamAV", "Microsoft Defender Antivirus", …
    pub product: String,
    /// The scanning engine (clamd, real-time protection) is running.
    pub running: bool,
    /// The signature updater (freshclam) is running or scheduled.
    pub updater_running: bool,
    /// The signature database's own date (ClamAV: the header of daily.cvd/cld), when known.
    pub signatures_at: Option<UnixTime>,
}

/// The last full scan the scanner logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub finished_at: UnixTime,
    /// Infected files (threats) the scan found.
    pub threats_found: u32,
    /// Of those, how many were removed or quarantined.
    pub threats_cleaned: u32,
}

/// Operating-system updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updates {
    /// Upgradable packages (all origins).
    pub pending: u32,
    /// Of those, from a security origin.
    pub security_pending: u32,
    /// When the agent first saw a security update pending that is still pending (the oldest).
    pub security_pending_since: Option<UnixTime>,
    /// The last successful update run (apt's history), when known.
    pub last_success: Option<UnixTime>,
}

/// The last backup snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub last_snapshot: UnixTime,
}

/// Free space on the system volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk {
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// A telemetry report's support parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub firewall: Reading<Firewall>,
    pub antivirus: Reading<Antivirus>,
    pub last_full_scan: Reading<Scan>,
    pub updates: Reading<Updates>,
    pub backup: Reading<Backup>,
    /// "Debian GNU/Linux 12 (bookworm)", "Windows 11 Pro 23H2".
    pub os_version: Reading<String>,
    pub boot_time: Reading<UnixTime>,
    pub disk: Reading<Disk>,
    /// The reporting agent's version ("0.1.0").
    pub agent_version: String,
}

/// The reason a parameter absent from an encoded report decodes with.
pub const NOT_REPORTED: &str = "not reported";

/// Parameter tags of the wire encoding, with the layout of each value (after the reading's first
/// byte 0; see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ParamTag {
    /// [`Firewall`]: backend `u8` ([`FirewallBackend`] code), active flag, rules `u32`,
    /// default-deny flag (7 bytes).
    Firewall = 1,
    /// [`Antivirus`]: product text, running flag, updater-running flag, signatures-at optional time.
    Antivirus = 2,
    /// [`Scan`]: finished-at `i64`, threats found `u32`, threats cleaned `u32` (16 bytes).
    LastFullScan = 3,
    /// [`Updates`]: pending `u32`, security pending `u32`, security-pending-since optional time,
    /// last-success optional time.
    Updates = 4,
    /// [`Backup`]: last snapshot `i64` (8 bytes).
    Backup = 5,
    /// The OS version: a text.
    OsVersion = 6,
    /// The boot time: an `i64`.
    BootTime = 7,
    /// [`Disk`]: free bytes `u64`, total bytes `u64` (16 bytes).
    Disk = 8,
    /// The agent's version: a text, and not a reading (the body is the text alone). Required.
    AgentVersion = 9,
}

impl ParamTag {
    /// The tag for a wire code, or `None` for a code this version does not define.
    pub fn from_u8(code: u8) -> Option<Self> {
        use ParamTag::*;
        Some(match code {
            1 => Firewall,
            2 => Antivirus,
            3 => LastFullScan,
            4 => Updates,
            5 => Backup,
            6 => OsVersion,
            7 => BootTime,
            8 => Disk,
            9 => AgentVersion,
            _ => return None,
        })
    }
}

impl FirewallBackend {
    /// The backend for a wire code, or `None` for a code this version does not define.
    pub fn from_u8(code: u8) -> Option<Self> {
        match code {
            1 => Some(FirewallBackend::Nftables),
            2 => Some(FirewallBackend::Iptables),
            3 => Some(FirewallBackend::WindowsSecurityCenter),
            _ => None,
        }
    }
}

/// Why an encoded report could not be decoded. Every variant is the sender's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry: {field} is truncated")]
    Truncated { field: &'static str },
    #[error("telemetry: {field} is {len} bytes, over the limit of {max}")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("telemetry: {field} is not UTF-8")]
    BadUtf8 { field: &'static str },
    #[error("telemetry: {field} is {value}, which is not a valid code for it")]
    BadByte { field: &'static str, value: u8 },
    #[error("telemetry: parameter {param:?} has {extra} bytes after its last field")]
    TrailingBytes { param: ParamTag, extra: usize },
    #[error("telemetry: parameter {0:?} appears twice")]
    Duplicate(ParamTag),
    #[error("telemetry: the agent version is missing")]
    MissingAgentVersion,
}

impl Report {
    /// Appends the wire form of this report to `out` (every parameter, in tag order).
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        put_param(out, ParamTag::Firewall, |out| {
            put_reading(out, &self.firewall, |out, f| {
                out.put_u8(f.backend as u8);
                put_flag(out, f.active);
                out.put_u32(f.rules);
                put_flag(out, f.default_deny);
            })
        });
        put_param(out, ParamTag::Antivirus, |out| {
            put_reading(out, &self.antivirus, |out, av| {
                put_text(out, &av.product);
                put_flag(out, av.running);
                put_flag(out, av.updater_running);
                put_opt_time(out, av.signatures_at);
            })
        });
        put_param(out, ParamTag::LastFullScan, |out| {
            put_reading(out, &self.last_full_scan, |out, scan| {
                out.put_i64(scan.finished_at);
                out.put_u32(scan.threats_found);
                out.put_u32(scan.threats_cleaned);
            })
        });
        put_param(out, ParamTag::Updates, |out| {
            put_reading(out, &self.updates, |out, u| {
                out.put_u32(u.pending);
                out.put_u32(u.security_pending);
                put_opt_time(out, u.security_pending_since);
                put_opt_time(out, u.last_success);
            })
        });
        put_param(out, ParamTag::Backup, |out| put_reading(out, &self.backup, |out, b| out.put_i64(b.last_snapshot)));
        put_param(out, ParamTag::OsVersion, |out| put_reading(out, &self.os_version, |out, v| put_text(out, v)));
        put_param(out, ParamTag::BootTime, |out| put_reading(out, &self.boot_time, |out, t| out.put_i64(*t)));
        put_param(out, ParamTag::Disk, |out| {
            put_reading(out, &self.disk, |out, d| {
                out.put_u64(d.free_bytes);
                out.put_u64(d.total_bytes);
            })
        });
        put_param(out, ParamTag::AgentVersion, |out| put_text(out, &self.agent_version));
    }

    /// The number of bytes [`Report::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        const PARAM_HEADER: usize = 3;
        let opt = |t: Option<UnixTime>| if t.is_some() { 9 } else { 1 };
        let params = [
            reading_len(&self.firewall, |_| 7),
            reading_len(&self.antivirus, |av| text_len(&av.product) + 2 + opt(av.signatures_at)),
            reading_len(&self.last_full_scan, |_| 16),
            reading_len(&self.updates, |u| 8 + opt(u.security_pending_since) + opt(u.last_success)),
            reading_len(&self.backup, |_| 8),
            reading_len(&self.os_version, |v| text_len(v)),
            reading_len(&self.boot_time, |_| 8),
            reading_len(&self.disk, |_| 16),
            text_len(&self.agent_version),
        ];
        params.iter().map(|body| PARAM_HEADER + body).sum()
    }
}

/// Decodes a whole encoded report (see the module documentation for the rules).
pub fn decode_report(buf: &[u8]) -> Result<Report, TelemetryError> {
    report(buf).map_err(|e| match e {
        nom::Err::Error(e) | nom::Err::Failure(e) => e.into_telemetry_error(),
        // Not reached: every field is read with `named`, which turns running out into Truncated.
        nom::Err::Incomplete(_) => TelemetryError::Truncated { field: "report" },
    })
}

fn report(buf: &[u8]) -> Result<Report, nom::Err<ParseError>> {
    let mut firewall = None;
    let mut antivirus = None;
    let mut last_full_scan = None;
    let mut updates = None;
    let mut backup = None;
    let mut os_version = None;
    let mut boot_time = None;
    let mut disk = None;
    let mut agent_version = None;

    let mut input = buf;
    while !input.is_empty() {
        let (rest, (code, body)) = param(input)?;
        input = rest;
        // A newer agent's parameter: skipped whole.
        let Some(tag) = ParamTag::from_u8(code) else { continue };
        let rest = match tag {
            ParamTag::Firewall => {
                check_unset(&firewall, tag)?;
                set(&mut firewall, decode_firewall(body)?)
            }
            ParamTag::Antivirus => {
                check_unset(&antivirus, tag)?;
                set(
                    &mut antivirus,
                    reading(body, "antivirus", |input| {
                        let (input, product) = text(input, "antivirus.product")?;
                        let (input, running) = flag(input, "antivirus.running")?;
                        let (input, updater_running) = flag(input, "antivirus.updater_running")?;
                        let (input, signatures_at) = opt_time(input, "antivirus.signatures_at")?;
                        Ok((input, Antivirus { product, running, updater_running, signatures_at }))
                    })?,
                )
            }
            ParamTag::LastFullScan => {
                check_unset(&last_full_scan, tag)?;
                set(
                    &mut last_full_scan,
                    reading(body, "last_full_scan", |input| {
                        let (input, finished_at) = be_i64(input, "last_full_scan.finished_at")?;
                        let (input, threats_found) = be_u32(input, "last_full_scan.threats_found")?;
                        let (input, threats_cleaned) = be_u32(input, "last_full_scan.threats_cleaned")?;
                        Ok((input, Scan { finished_at, threats_found, threats_cleaned }))
                    })?,
                )
            }
            ParamTag::Updates => {
                check_unset(&updates, tag)?;
                set(
                    &mut updates,
                    reading(body, "updates", |input| {
                        let (input, pending) = be_u32(input, "updates.pending")?;
                        let (input, security_pending) = be_u32(input, "updates.security_pending")?;
                        let (input, security_pending_since) = opt_time(input, "updates.security_pending_since")?;
                        let (input, last_success) = opt_time(input, "updates.last_success")?;
                        Ok((input, Updates { pending, security_pending, security_pending_since, last_success }))
                    })?,
                )
            }
            ParamTag::Backup => {
                check_unset(&backup, tag)?;
                set(
                    &mut backup,
                    reading(body, "backup", |input| {
                        let (input, last_snapshot) = be_i64(input, "backup.last_snapshot")?;
                        Ok((input, Backup { last_snapshot }))
                    })?,
                )
            }
            ParamTag::OsVersion => {
                check_unset(&os_version, tag)?;
                set(&mut os_version, reading(body, "os_version", |input| text(input, "os_version"))?)
            }
            ParamTag::BootTime => {
                check_unset(&boot_time, tag)?;
                set(&mut boot_time, reading(body, "boot_time", |input| be_i64(input, "boot_time"))?)
            }
            ParamTag::Disk => {
                check_unset(&disk, tag)?;
                set(
                    &mut disk,
                    reading(body, "disk", |input| {
                        let (input, free_bytes) = be_u64(input, "disk.free_bytes")?;
                        let (input, total_bytes) = be_u64(input, "disk.total_bytes")?;
                        Ok((input, Disk { free_bytes, total_bytes }))
                    })?,
                )
            }
            ParamTag::AgentVersion => {
                check_unset(&agent_version, tag)?;
                set(&mut agent_version, text(body, "agent_version")?)
            }
        };
        if !rest.is_empty() {
            return Err(fail(TelemetryError::TrailingBytes { param: tag, extra: rest.len() }));
        }
    }

    Ok(Report {
        firewall: or_not_reported(firewall),
        antivirus: or_not_reported(antivirus),
        last_full_scan: or_not_reported(last_full_scan),
        updates: or_not_reported(updates),
        backup: or_not_reported(backup),
        os_version: or_not_reported(os_version),
        boot_time: or_not_reported(boot_time),
        disk: or_not_reported(disk),
        agent_version: agent_version.ok_or_else(|| fail(TelemetryError::MissingAgentVersion))?,
    })
}

/// One parameter: its tag and its whole body (`u16` length, then that many bytes).
fn param(input: &[u8]) -> PResult<'_, (u8, &[u8])> {
    let (input, code) = byte(input, "parameter tag")?;
    let (input, len) = be_u16(input, "parameter length")?;
    let (input, body) = take(input, usize::from(len), "parameter body")?;
    Ok((input, (code, body)))
}

/// Stores a parsed parameter in its slot, and gives back the bytes of its body left unparsed.
fn set<'a, T>(slot: &mut Option<T>, (rest, value): (&'a [u8], T)) -> &'a [u8] {
    *slot = Some(value);
    rest
}

/// The firewall parameter. A backend code this version does not know makes the firewall unknown
/// (with the code in the reason) instead of failing the report; the rest of its body is not read.
fn decode_firewall(body: &[u8]) -> PResult<'_, Reading<Firewall>> {
    let (input, firewall) = reading(body, "firewall", |input| {
        let (input, code) = byte(input, "firewall.backend")?;
        let Some(backend) = FirewallBackend::from_u8(code) else {
            let (input, _skipped) = nom::combinator::rest(input)?;
            return Ok((input, Err(format!("firewall backend code {code} is not known to this version"))));
        };
        let (input, active) = flag(input, "firewall.active")?;
        let (input, rules) = be_u32(input, "firewall.rules")?;
        let (input, default_deny) = flag(input, "firewall.default_deny")?;
        Ok((input, Ok(Firewall { backend, active, rules, default_deny })))
    })?;
    let firewall = match firewall {
        Reading::Value(Ok(firewall)) => Reading::Value(firewall),
        Reading::Value(Err(reason)) => Reading::Unknown(clip(&reason, MAX_TEXT_LEN).to_owned()),
        Reading::Unknown(reason) => Reading::Unknown(reason),
    };
    Ok((input, firewall))
}

fn or_not_reported<T>(reading: Option<Reading<T>>) -> Reading<T> {
    reading.unwrap_or_else(|| Reading::unknown(NOT_REPORTED))
}

fn check_unset<T>(slot: &Option<T>, tag: ParamTag) -> Result<(), nom::Err<ParseError>> {
    match slot {
        Some(_) => Err(fail(TelemetryError::Duplicate(tag))),
        None => Ok(()),
    }
}

/// A reading: 0 and the value, or 1 and the reason it is unknown.
fn reading<'a, T>(
    input: &'a [u8],
    field: &'static str,
    value: impl Parser<&'a [u8], Output = T, Error = ParseError>,
) -> PResult<'a, Reading<T>> {
    match byte(input, field)? {
        (input, 0) => value.map(Reading::Value).parse(input),
        (input, 1) => text(input, field).map(|(input, reason)| (input, Reading::Unknown(reason))),
        (_, other) => Err(fail(TelemetryError::BadByte { field, value: other })),
    }
}

/// Writes a parameter: its tag, its body's length and its body.
fn put_param(out: &mut BytesMut, tag: ParamTag, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag as u8);
    let len_at = out.len();
    out.put_u16(0);
    body(out);
    // Bodies are bounded by construction (text is clipped to MAX_TEXT_LEN), far below u16::MAX.
    let len = u16::try_from(out.len() - len_at - 2).unwrap_or(u16::MAX);
    out[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
}

fn put_reading<T>(out: &mut BytesMut, reading: &Reading<T>, value: impl FnOnce(&mut BytesMut, &T)) {
    match reading {
        Reading::Value(v) => {
            out.put_u8(0);
            value(out, v);
        }
        Reading::Unknown(reason) => {
            out.put_u8(1);
            put_text(out, reason);
        }
    }
}

fn reading_len<T>(reading: &Reading<T>, value_len: impl FnOnce(&T) -> usize) -> usize {
    1 + match reading {
        Reading::Value(v) => value_len(v),
        Reading::Unknown(reason) => text_len(reason),
    }
}

fn put_text(out: &mut BytesMut, text: &str) {
    let text = clip(text, MAX_TEXT_LEN);
    // MAX_TEXT_LEN fits in a u16.
    out.put_u16(u16::try_from(text.len()).unwrap_or(u16::MAX));
    out.put_slice(text.as_bytes());
}

fn text_len(text: &str) -> usize {
    2 + clip(text, MAX_TEXT_LEN).len()
}

fn put_flag(out: &mut BytesMut, flag: bool) {
    out.put_u8(u8::from(flag));
}

fn put_opt_time(out: &mut BytesMut, time: Option<UnixTime>) {
    match time {
        Some(time) => {
            out.put_u8(1);
            out.put_i64(time);
        }
        None => out.put_u8(0),
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn clip(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Parser-internal error, turned into a [`TelemetryError`] at the end of [`decode_report`].
#[derive(Debug)]
enum ParseError {
    /// One of nom's own parsers failed. On a complete buffer they fail only by running out of
    /// bytes, and [`named`] turns that into [`TelemetryError::Truncated`] for the field at hand, so
    /// this is left only if a parser was used without a name.
    Nom,
    Telemetry(TelemetryError),
}

impl ParseError {
    fn into_telemetry_error(self) -> TelemetryError {
        match self {
            ParseError::Nom => TelemetryError::Truncated { field: "report" },
            ParseError::Telemetry(e) => e,
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

/// A hard error: the report can never decode.
fn fail(e: TelemetryError) -> nom::Err<ParseError> {
    nom::Err::Failure(ParseError::Telemetry(e))
}

/// Runs one of nom's parsers on a complete buffer: running out of bytes is
/// [`TelemetryError::Truncated`] naming `field`, a hard error.
fn named<'a, O>(
    input: &'a [u8],
    field: &'static str,
    mut parser: impl Parser<&'a [u8], Output = O, Error = ParseError>,
) -> PResult<'a, O> {
    parser.parse(input).map_err(|e| match e {
        nom::Err::Failure(e) => nom::Err::Failure(e),
        nom::Err::Error(_) | nom::Err::Incomplete(_) => fail(TelemetryError::Truncated { field }),
    })
}

fn take<'a>(input: &'a [u8], n: usize, field: &'static str) -> PResult<'a, &'a [u8]> {
    named(input, field, nom::bytes::complete::take(n))
}

fn byte<'a>(input: &'a [u8], field: &'static str) -> PResult<'a, u8> {
    named(input, field, nom::number::complete::u8)
}

fn be_u16<'a>(input: &'a [u8], field: &'static str) -> PResult<'a, u16> {
    named(input, field, nom::number::complete::be_u16)
}

fn be_u32<'a>(input: &'a [u8], field: &'static str) -> PResult<'a, u32> {
    named(input, field, nom::number::complete::be_u32)
}

fn be_u64<'a>(input: &'a [u8], field: &'static str) -> PResult<'a, u64> {
    named(input, field, nom::number::complete::be_u64)
}

fn be_i64<'a>(input: &'a [u8], field: &'static str) -> PResult<'a, i64> {
    named(input, field, nom::number::complete::be_i64)
}

fn flag<'a>(input: &'a [u8], field: &'static str) -> PResult<'a, bool> {
    match byte(input, field)? {
        (input, 0) => Ok((input, false)),
        (input, 1) => Ok((input, true)),
        (_, other) => Err(fail(TelemetryError::BadByte { field, value: other })),
    }
}

/// A presence byte, then the time when present.
fn opt_time<'a>(input: &'a [u8], field: &'static str) -> PResult<'a, Option<UnixTime>> {
    match byte(input, field)? {
        (input, 0) => Ok((input, None)),
        (input, 1) => be_i64(input, field).map(|(input, time)| (input, Some(time))),
        (_, other) => Err(fail(TelemetryError::BadByte { field, value: other })),
    }
}

/// A `u16`-length UTF-8 text of at most [`MAX_TEXT_LEN`] bytes; the length is checked before the
/// bytes are taken.
fn text<'a>(input: &'a [u8], field: &'static str) -> PResult<'a, String> {
    let (input, len) = be_u16(input, field)?;
    let len = usize::from(len);
    if len > MAX_TEXT_LEN {
        return Err(fail(TelemetryError::TooLong { field, len, max: MAX_TEXT_LEN }));
    }
    let (input, bytes) = take(input, len, field)?;
    let text = std::str::from_utf8(bytes).map_err(|_| fail(TelemetryError::BadUtf8 { field }))?;
    Ok((input, text.to_owned()))
}

#[cfg(test)]
#[path = "telemetry_test.rs"]
pub(crate) mod tests;
