//! The health meter: a machine's support parameters rated green, yellow or red, each rating with
//! the reasons a person can act on ("firewall off (nftables, no filtering rules)"), and
//! (`alerts`) whom to tell when it changes. The rules and their defaults are the `[health]`
//! section of the configuration (`rules`, `docs/health.md`).
//!
//! Pure code, like `protocols::session`: no I/O, no clock (`now` is passed in), no logging.
//! What it does not do: store meters, read reports off the wire, or send anything; the
//! gateway's roles do that with what these functions return.
//!
//! Ages (of signatures, the last scan, the last backup, a pending update) are measured at `now`,
//! not at the time the report was taken: the newest backup known is what counts. A time in the
//! future (an agent's clock ahead) counts as age zero.
//!
//! **Unknown never turns a machine red, nor yellow**: a parameter the agent could not read
//! ([`Reading::Unknown`]), or a date it does not know (signatures without a date), gives no
//! reason at all. A machine whose agent knows nothing is green; one that stops reporting turns
//! yellow through the stale rule instead.

pub mod alerts;
pub mod rules;

#[cfg(test)]
mod health_test;

use std::collections::BTreeSet;

use protocols::telemetry::{FirewallBackend, Reading, Report};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use alerts::{AlertBatch, AlertKind, AlertPreference, Channels};
pub use rules::HealthRules;

const DAY: i64 = 86_400;

/// A machine's health, from best to worst (`Ord`: `Green < Yellow < Red`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Green,
    Yellow,
    Red,
}

impl Health {
    /// As stored and shown: `green`, `yellow`, `red`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Green => "green",
            Health::Yellow => "yellow",
            Health::Red => "red",
        }
    }

    /// The inverse of [`Health::as_str`]; anything else is `None`.
    pub fn parse(text: &str) -> Option<Health> {
        match text {
            "green" => Some(Health::Green),
            "yellow" => Some(Health::Yellow),
            "red" => Some(Health::Red),
            _ => None,
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a machine is not green: a closed set, stable as stored and sent in webhooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// The host firewall does not filter.
    FirewallOff,
    /// The antivirus' scanning engine is not running.
    AntivirusOff,
    /// The antivirus signatures are older than a threshold.
    SignaturesOld,
    /// A security update has been pending longer than a threshold.
    SecurityUpdatesPending,
    /// The last full scan is older than a threshold.
    ScanOld,
    /// The last full scan found threats it did not remove or quarantine.
    ThreatsNotCleaned,
    /// The last backup is older than a threshold.
    BackupOld,
    /// The agent has not reported for several heartbeats.
    Stale,
    /// An AMT PC without an agent whose CIRA tunnel is down.
    Offline,
}

impl ReasonCode {
    /// Every code, in order.
    pub const ALL: [ReasonCode; 9] = [
        ReasonCode::FirewallOff,
        ReasonCode::AntivirusOff,
        ReasonCode::SignaturesOld,
        ReasonCode::SecurityUpdatesPending,
        ReasonCode::ScanOld,
        ReasonCode::ThreatsNotCleaned,
        ReasonCode::BackupOld,
        ReasonCode::Stale,
        ReasonCode::Offline,
    ];

    /// As stored and sent: `firewall_off`, `antivirus_off`, … (the serde name too).
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::FirewallOff => "firewall_off",
            ReasonCode::AntivirusOff => "antivirus_off",
            ReasonCode::SignaturesOld => "signatures_old",
            ReasonCode::SecurityUpdatesPending => "security_updates_pending",
            ReasonCode::ScanOld => "scan_old",
            ReasonCode::ThreatsNotCleaned => "threats_not_cleaned",
            ReasonCode::BackupOld => "backup_old",
            ReasonCode::Stale => "stale",
            ReasonCode::Offline => "offline",
        }
    }

    /// The inverse of [`ReasonCode::as_str`]; anything else (a code of a newer gateway) is `None`.
    pub fn parse(text: &str) -> Option<ReasonCode> {
        ReasonCode::ALL.into_iter().find(|code| code.as_str() == text)
    }
}

/// One reason a machine is not green.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub code: ReasonCode,
    /// What this reason alone makes the machine.
    pub health: Health,
    /// For people, one line: what is wrong, with the dates to act on.
    pub text: String,
}

impl Reason {
    fn new(code: ReasonCode, health: Health, text: String) -> Reason {
        Reason { code, health, text }
    }
}

/// A machine's health and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meter {
    /// The worst of the reasons' health; green when there is none.
    pub health: Health,
    /// Worst first, then in [`ReasonCode`] order.
    pub reasons: Vec<Reason>,
}

impl Default for Meter {
    fn default() -> Self {
        Meter::green()
    }
}

impl Meter {
    /// Green, no reasons.
    pub fn green() -> Meter {
        Meter { health: Health::Green, reasons: Vec::new() }
    }

    /// The meter of these reasons: sorted worst first, health the worst of them.
    pub fn from_reasons(mut reasons: Vec<Reason>) -> Meter {
        reasons.sort_by(|a, b| b.health.cmp(&a.health).then(a.code.cmp(&b.code)));
        let health = reasons.iter().map(|r| r.health).max().unwrap_or(Health::Green);
        Meter { health, reasons }
    }

    /// The reasons' codes.
    pub fn codes(&self) -> BTreeSet<ReasonCode> {
        self.reasons.iter().map(|r| r.code).collect()
    }

    /// Whether `other` is the same for alerting: the same health and the same reason codes
    /// (texts age by the day: "9 days old", then "10 days old", which is no change).
    pub fn same_as(&self, other: &Meter) -> bool {
        self.health == other.health && self.codes() == other.codes()
    }

    /// Whether the only reason is [`ReasonCode::Stale`]: the machine merely stopped reporting.
    pub fn only_stale(&self) -> bool {
        !self.reasons.is_empty() && self.reasons.iter().all(|r| r.code == ReasonCode::Stale)
    }

    /// Whether one of the reasons is `code`.
    pub fn has(&self, code: ReasonCode) -> bool {
        self.reasons.iter().any(|r| r.code == code)
    }
}

/// How long ago `at` was, at `now`, in seconds (0 for a time in the future).
fn age(at: i64, now: i64) -> i64 {
    now.saturating_sub(at).max(0)
}

/// Whether an age is over a threshold of `days` (0: the rule is off).
fn over_days(age_secs: i64, days: u32) -> bool {
    days != 0 && age_secs > i64::from(days) * DAY
}

/// `2026-11-24` (UTC).
pub(crate) fn date(at: i64) -> String {
    match OffsetDateTime::from_unix_timestamp(at) {
        Ok(at) => format!("{:04}-{:02}-{:02}", at.year(), u8::from(at.month()), at.day()),
        Err(_) => format!("@{at}"),
    }
}

/// `2026-12-03 10:00 UTC`.
pub(crate) fn when(at: i64) -> String {
    match OffsetDateTime::from_unix_timestamp(at) {
        Ok(t) => format!("{} {:02}:{:02} UTC", date(at), t.hour(), t.minute()),
        Err(_) => format!("@{at}"),
    }
}

/// `1 day`, `9 days`.
fn days(age_secs: i64) -> String {
    plural(age_secs / DAY, "day")
}

fn plural(n: i64, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// A span as people say it: `45 minutes`, `3 hours`, `2 days` (rounded down).
fn span(secs: i64) -> String {
    if secs >= 2 * DAY {
        plural(secs / DAY, "day")
    } else if secs >= 2 * 3600 {
        plural(secs / 3600, "hour")
    } else if secs >= 60 {
        plural(secs / 60, "minute")
    } else {
        plural(secs, "second")
    }
}

/// Text from an agent (a product name) on one line of at most `max` characters.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let trimmed = text.trim();
    let mut out: String = trimmed.chars().take(max).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if trimmed.chars().count() > max {
        out.push('…');
    }
    out
}

fn backend_name(backend: FirewallBackend) -> &'static str {
    match backend {
        FirewallBackend::Nftables => "nftables",
        FirewallBackend::Iptables => "iptables",
        FirewallBackend::WindowsSecurityCenter => "Windows Security Center",
    }
}

/// Longest product name put into a reason.
const MAX_PRODUCT: usize = 64;

/// The meter of a machine with an agent, from its latest `report`.
///
/// - `taken_at`: when the report was taken; `last_report_at`: when the gateway last heard a
///   report from the agent (the later of the two is its last sign of life);
/// - `heartbeat_secs`: how often the agent reports; stale is more than
///   `rules.stale_heartbeats × heartbeat_secs` seconds since the last sign of life (0: never
///   stale, for an agent without a schedule);
/// - `now`: the time to measure ages at.
///
/// An unknown parameter gives no reason (see the module's doc).
pub fn evaluate(
    rules: &HealthRules,
    report: &Report,
    taken_at: i64,
    last_report_at: Option<i64>,
    heartbeat_secs: u32,
    now: i64,
) -> Meter {
    let mut reasons = Vec::new();

    if let Reading::Value(fw) = &report.firewall {
        if rules.firewall_off_red && !fw.active {
            let detail = if fw.rules == 0 {
                "no filtering rules".to_string()
            } else {
                format!("{} rules, none filtering", fw.rules)
            };
            reasons.push(Reason::new(
                ReasonCode::FirewallOff,
                Health::Red,
                format!("firewall off ({}, {detail})", backend_name(fw.backend)),
            ));
        }
    }

    if let Reading::Value(av) = &report.antivirus {
        let product = one_line(&av.product, MAX_PRODUCT);
        let product = if product.is_empty() { "antivirus".to_string() } else { product };
        if rules.antivirus_off_red && !av.running {
            reasons.push(Reason::new(
                ReasonCode::AntivirusOff,
                Health::Red,
                format!("antivirus off ({product} is not running)"),
            ));
        }
        if let Some(at) = av.signatures_at {
            let a = age(at, now);
            let health = if over_days(a, rules.signatures_red_days) {
                Some(Health::Red)
            } else if over_days(a, rules.signatures_yellow_days) {
                Some(Health::Yellow)
            } else {
                None
            };
            if let Some(health) = health {
                reasons.push(Reason::new(
                    ReasonCode::SignaturesOld,
                    health,
                    format!("{product} signatures are {} old ({})", days(a), date(at)),
                ));
            }
        }
    }

    if let Reading::Value(updates) = &report.updates {
        if let (n @ 1.., Some(since)) = (updates.security_pending, updates.security_pending_since) {
            let a = age(since, now);
            if over_days(a, rules.security_updates_yellow_days) {
                let what = if n == 1 { "1 security update".to_string() } else { format!("{n} security updates") };
                reasons.push(Reason::new(
                    ReasonCode::SecurityUpdatesPending,
                    Health::Yellow,
                    format!("{what} pending for {} (since {})", days(a), date(since)),
                ));
            }
        }
    }

    if let Reading::Value(scan) = &report.last_full_scan {
        let a = age(scan.finished_at, now);
        if over_days(a, rules.scan_yellow_days) {
            reasons.push(Reason::new(
                ReasonCode::ScanOld,
                Health::Yellow,
                format!("last full scan {} ago ({})", days(a), date(scan.finished_at)),
            ));
        }
        if rules.threats_not_cleaned_red && scan.threats_found > scan.threats_cleaned {
            let left = scan.threats_found - scan.threats_cleaned;
            let what = if left == 1 { "1 threat".to_string() } else { format!("{left} threats") };
            reasons.push(Reason::new(
                ReasonCode::ThreatsNotCleaned,
                Health::Red,
                format!(
                    "{what} not cleaned: the full scan of {} found {}, cleaned {}",
                    date(scan.finished_at),
                    scan.threats_found,
                    scan.threats_cleaned
                ),
            ));
        }
    }

    if let Reading::Value(backup) = &report.backup {
        let a = age(backup.last_snapshot, now);
        let health = if over_days(a, rules.backup_red_days) {
            Some(Health::Red)
        } else if over_days(a, rules.backup_yellow_days) {
            Some(Health::Yellow)
        } else {
            None
        };
        if let Some(health) = health {
            reasons.push(Reason::new(
                ReasonCode::BackupOld,
                health,
                format!("last backup {} ago ({})", days(a), date(backup.last_snapshot)),
            ));
        }
    }

    let last = last_report_at.map_or(taken_at, |at| at.max(taken_at));
    if rules.stale_heartbeats != 0 && heartbeat_secs != 0 {
        let limit = i64::from(rules.stale_heartbeats) * i64::from(heartbeat_secs);
        let silent = age(last, now);
        if silent > limit {
            reasons.push(Reason::new(
                ReasonCode::Stale,
                Health::Yellow,
                format!(
                    "no report for {} (last {}; the agent reports every {})",
                    span(silent),
                    when(last),
                    span(heartbeat_secs.into())
                ),
            ));
        }
    }

    Meter::from_reasons(reasons)
}

/// The meter of a PC with AMT and no agent: green while its CIRA tunnel is up; yellow (reason
/// [`ReasonCode::Offline`]) when it is down for more than `rules.amt_offline_grace_minutes`
/// since `last_connected_at` (the last time the tunnel was up; `None`: it never was). Never red:
/// a PC switched off is not a risk by itself. With `rules.amt_offline_yellow` off, always green.
pub fn evaluate_amt(rules: &HealthRules, online: bool, last_connected_at: Option<i64>, now: i64) -> Meter {
    if online || !rules.amt_offline_yellow {
        return Meter::green();
    }
    let text = match last_connected_at {
        Some(at) => {
            let down = age(at, now);
            if down <= i64::from(rules.amt_offline_grace_minutes) * 60 {
                return Meter::green();
            }
            format!("AMT not connected for {} (last connected {})", span(down), when(at))
        }
        None => "AMT has never connected to the gateway".to_string(),
    };
    Meter::from_reasons(vec![Reason::new(ReasonCode::Offline, Health::Yellow, text)])
}
