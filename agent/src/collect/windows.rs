//! Windows: decoding what Windows Security Center (WSC), Microsoft Defender and the firewall
//! report, as plain code tested on every platform; on Windows, [`collect`] (behind `cfg(windows)`)
//! asks PowerShell's CIM cmdlets (`… | ConvertTo-Json`) and feeds these decoders.
//!
//! - WSC's `productState` ([`decode_product_state`]) is an undocumented bit field; this module uses
//!   the layout the community scripts use, which fits the values Windows reports
//!   (Defender on and up to date: `397568` = `0x06_11_00`):
//!   - bits 16–23: the security providers the product covers (WSC_SECURITY_PROVIDER flags:
//!     1 firewall, 2 auto-update, 4 antivirus, 8 antispyware, …);
//!   - bits 12–15: the scanner state: 0 off, 1 on, 2 snoozed, 3 expired;
//!   - bits 8–11: the owner: 1 Microsoft, 0 another vendor;
//!   - bits 4–7: the signatures: 0 up to date, 1 out of date.
//!
//!   Read byte-wise, byte 1 is `0x10` on, `0x00`/`0x01` off; `0x11` is on *and* Microsoft-owned —
//!   not "snoozed", which is `0x2X` — as every Defender that is on reports it.
//! - Defender's `MSFT_MpComputerStatus` ([`antivirus_from_defender`], [`scan_from_defender`]): the
//!   engine runs when `AMServiceEnabled` and `RealTimeProtectionEnabled`; its service also keeps the
//!   signatures (`updater_running` = `AMServiceEnabled`); `AntivirusSignatureLastUpdated` stands for
//!   the signature date; `FullScanEndTime` is the last full scan, and the threats are the
//!   `MSFT_MpThreatDetection` entries first detected during that scan (cleaned: `ActionSuccess`).
//! - Another vendor's antivirus is known only through WSC: running when its state is on; WSC says
//!   nothing of an updater, so `updater_running` is reported as "signatures up to date".
//! - The firewall is Windows Defender Firewall's profiles ([`firewall_from_profiles`]): active when
//!   a profile is enabled; default deny when every enabled profile blocks inbound by default
//!   (`NotConfigured` is Windows' default, block); `rules` = enabled inbound rules. A third-party
//!   firewall known only through WSC ([`firewall_from_wsc`]) gives no rule count or policy: 0 and
//!   false.
//! - Times come as CIM/DMTF datetimes (`20261130021407.000000+060`), Windows PowerShell's
//!   `/Date(1796004847000)/`, or PowerShell 7's ISO 8601 with offset ([`decode_cim_datetime`]).
//!   A time without a zone is not guessed at: unknown.
//! - Updates are not read on Windows yet: unknown.

use protocols::telemetry::{Antivirus, Firewall, FirewallBackend, Reading, Scan, UnixTime};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use super::files::unknown;

/// WSC's scanner (or firewall) state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScannerState {
    Off,
    On,
    Snoozed,
    Expired,
    /// A value outside the known layout.
    Other(u8),
}

/// WSC's signature state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureState {
    UpToDate,
    OutOfDate,
    Other(u8),
}

/// A decoded WSC `productState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductState {
    /// WSC_SECURITY_PROVIDER flags (bits 16–23).
    pub providers: u8,
    pub scanner: ScannerState,
    /// The product is Microsoft's (Defender).
    pub microsoft: bool,
    pub signatures: SignatureState,
}

/// Decodes WSC's `productState` (see the module doc for the layout).
pub fn decode_product_state(state: u32) -> ProductState {
    let [_, providers, byte1, byte0] = state.to_be_bytes();
    let scanner = match byte1 >> 4 {
        0 => ScannerState::Off,
        1 => ScannerState::On,
        2 => ScannerState::Snoozed,
        3 => ScannerState::Expired,
        other => ScannerState::Other(other),
    };
    let signatures = match byte0 >> 4 {
        0 => SignatureState::UpToDate,
        1 => SignatureState::OutOfDate,
        other => SignatureState::Other(other),
    };
    ProductState { providers, scanner, microsoft: byte1 & 0x0f == 1, signatures }
}

/// An antivirus product as WSC reports it (`AntiVirusProduct`: `displayName`, `productState`).
pub fn antivirus_from_wsc(display_name: &str, product_state: u32) -> Reading<Antivirus> {
    let state = decode_product_state(product_state);
    if let ScannerState::Other(nibble) = state.scanner {
        return unknown(format!(
            "{display_name}: unrecognised Security Center state {nibble:#x} (productState {product_state:#x})"
        ));
    }
    Reading::Value(Antivirus {
        product: display_name.trim().chars().take(200).collect(),
        running: state.scanner == ScannerState::On,
        updater_running: state.signatures == SignatureState::UpToDate,
        signatures_at: None,
    })
}

/// A third-party firewall as WSC reports it (`FirewallProduct`).
pub fn firewall_from_wsc(product_state: u32) -> Reading<Firewall> {
    match decode_product_state(product_state).scanner {
        ScannerState::Other(nibble) => unknown(format!(
            "unrecognised Security Center firewall state {nibble:#x} (productState {product_state:#x})"
        )),
        scanner => Reading::Value(Firewall {
            backend: FirewallBackend::WindowsSecurityCenter,
            active: scanner == ScannerState::On,
            rules: 0,
            default_deny: false,
        }),
    }
}

/// Picks the product to report from WSC's `AntiVirusProduct` list (one object or an array): the
/// first that is on, else the first.
pub fn antivirus_from_wsc_json(json: &Value) -> Reading<Antivirus> {
    let products: Vec<(String, u32)> = as_list(json)
        .filter_map(|product| {
            let name = product.get("displayName")?.as_str()?.to_string();
            let state = u32::try_from(product.get("productState")?.as_u64()?).ok()?;
            Some((name, state))
        })
        .collect();
    let on = products.iter().find(|(_, state)| decode_product_state(*state).scanner == ScannerState::On);
    match on.or(products.first()) {
        Some((name, state)) => antivirus_from_wsc(name, *state),
        None => unknown("Security Center lists no antivirus product"),
    }
}

/// Defender from `MSFT_MpComputerStatus`.
pub fn antivirus_from_defender(status: &Value) -> Reading<Antivirus> {
    let service = status.get("AMServiceEnabled").and_then(as_bool);
    let realtime = status.get("RealTimeProtectionEnabled").and_then(as_bool);
    let (Some(service), Some(realtime)) = (service, realtime) else {
        return unknown("Defender's status lacks AMServiceEnabled or RealTimeProtectionEnabled");
    };
    Reading::Value(Antivirus {
        product: "Microsoft Defender Antivirus".to_string(),
        running: service && realtime,
        updater_running: service,
        signatures_at: status.get("AntivirusSignatureLastUpdated").and_then(decode_cim_datetime),
    })
}

/// The last full scan from `MSFT_MpComputerStatus` and the `MSFT_MpThreatDetection` list (one
/// object, an array, or null when there are none).
pub fn scan_from_defender(status: &Value, detections: &Value) -> Reading<Scan> {
    let Some(end) = status.get("FullScanEndTime").and_then(decode_cim_datetime) else {
        return unknown("Defender has recorded no full scan");
    };
    let start = status.get("FullScanStartTime").and_then(decode_cim_datetime).unwrap_or(end);
    let mut found = 0u32;
    let mut cleaned = 0u32;
    for detection in as_list(detections) {
        let Some(at) = detection.get("InitialDetectionTime").and_then(decode_cim_datetime) else {
            continue;
        };
        if (start..=end).contains(&at) {
            found = found.saturating_add(1);
            if detection.get("ActionSuccess").and_then(as_bool) == Some(true) {
                cleaned = cleaned.saturating_add(1);
            }
        }
    }
    Reading::Value(Scan { finished_at: end, threats_found: found, threats_cleaned: cleaned })
}

/// Windows Defender Firewall from `Get-NetFirewallProfile` (`Name`, `Enabled`,
/// `DefaultInboundAction`) and the number of enabled inbound rules.
pub fn firewall_from_profiles(profiles: &Value, inbound_rules: u64) -> Reading<Firewall> {
    let mut any = false;
    let mut enabled_any = false;
    let mut all_block = true;
    for profile in as_list(profiles) {
        any = true;
        let enabled = match profile.get("Enabled") {
            // GpoBoolean: False 0, True 1, NotConfigured 2 (Windows' default: on).
            Some(Value::Number(n)) => n.as_u64() != Some(0),
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => !s.eq_ignore_ascii_case("false"),
            _ => return unknown("a firewall profile lacks Enabled"),
        };
        if !enabled {
            continue;
        }
        enabled_any = true;
        // Action: NotConfigured 0, Allow 2, Block 4.
        let blocks = match profile.get("DefaultInboundAction") {
            Some(Value::Number(n)) => matches!(n.as_u64(), Some(0 | 4)),
            Some(Value::String(s)) => s.eq_ignore_ascii_case("Block") || s.eq_ignore_ascii_case("NotConfigured"),
            _ => return unknown("a firewall profile lacks DefaultInboundAction"),
        };
        all_block &= blocks;
    }
    if !any {
        return unknown("no firewall profile listed");
    }
    Reading::Value(Firewall {
        backend: FirewallBackend::WindowsSecurityCenter,
        active: enabled_any,
        rules: if enabled_any { u32::try_from(inbound_rules).unwrap_or(u32::MAX) } else { 0 },
        default_deny: enabled_any && all_block,
    })
}

/// A CIM datetime as PowerShell prints it: DMTF `yyyymmddHHMMSS.ffffff±UUU` (offset in
/// minutes), `/Date(ms)/` (Windows PowerShell's JSON), or ISO 8601 with an offset (PowerShell 7).
/// A `DateTime` object (`{"value": "/Date(…)/", …}`) is read through its `value`.
pub fn decode_cim_datetime(value: &Value) -> Option<UnixTime> {
    let text = match value {
        Value::String(text) => text.as_str(),
        Value::Object(map) => return map.get("value").and_then(decode_cim_datetime),
        _ => return None,
    };
    let text = text.trim();
    if let Some(inner) = text.strip_prefix("/Date(").and_then(|t| t.strip_suffix(")/")) {
        // `/Date(1796004847000)/`, possibly with a zone suffix (`+0100`) that does not change the
        // instant.
        let digits_end =
            inner.char_indices().skip(1).find(|(_, c)| !c.is_ascii_digit()).map_or(inner.len(), |(i, _)| i);
        let millis: i64 = inner[..digits_end].parse().ok()?;
        return Some(millis.div_euclid(1000));
    }
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(at.unix_timestamp());
    }
    decode_dmtf(text)
}

/// DMTF `20261130021407.000000+060`: local time and its offset from UTC in minutes.
fn decode_dmtf(text: &str) -> Option<UnixTime> {
    if text.len() != 25 || !text.is_ascii() {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = text.get(range)?;
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let year = i32::try_from(number(0..4)?).ok()?;
    let month = Month::try_from(u8::try_from(number(4..6)?).ok()?).ok()?;
    let day = u8::try_from(number(6..8)?).ok()?;
    let hour = u8::try_from(number(8..10)?).ok()?;
    let minute = u8::try_from(number(10..12)?).ok()?;
    let second = u8::try_from(number(12..14)?).ok()?;
    if text.as_bytes()[14] != b'.' {
        return None;
    }
    number(15..21)?;
    let sign = match text.as_bytes()[21] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let minutes = i32::try_from(number(22..25)?).ok()? * sign;
    let offset = UtcOffset::from_whole_seconds(minutes * 60).ok()?;
    let date = Date::from_calendar_date(year, month, day).ok()?;
    let time = Time::from_hms(hour, minute, second).ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_offset(offset).unix_timestamp())
}

fn as_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_u64().map(|n| n != 0),
        _ => None,
    }
}

/// ConvertTo-Json prints one object for one result, an array for several, nothing for none.
fn as_list(value: &Value) -> impl Iterator<Item = &Value> {
    match value {
        Value::Array(items) => items.iter().collect::<Vec<_>>().into_iter(),
        Value::Null => Vec::new().into_iter(),
        other => vec![other].into_iter(),
    }
}

#[cfg(windows)]
pub(crate) use query::collect;

#[cfg(windows)]
mod query {
    //! The CIM queries, through PowerShell.

    use protocols::telemetry::{Disk, Reading, Report};
    use serde_json::Value;

    use super::super::run::{run, Limits};
    use super::super::{backup, CollectorConfig};
    use super::*;

    const ANTIVIRUS: &str = "Get-CimInstance -Namespace root/SecurityCenter2 -ClassName AntiVirusProduct \
        | Select-Object displayName,productState | ConvertTo-Json -Compress";
    const DEFENDER: &str = "Get-CimInstance -Namespace root/Microsoft/Windows/Defender -ClassName MSFT_MpComputerStatus \
        | Select-Object AMServiceEnabled,RealTimeProtectionEnabled,AntivirusSignatureLastUpdated,FullScanStartTime,FullScanEndTime \
        | ConvertTo-Json -Compress";
    const DETECTIONS: &str =
        "@(Get-CimInstance -Namespace root/Microsoft/Windows/Defender -ClassName MSFT_MpThreatDetection \
        | Select-Object InitialDetectionTime,ActionSuccess) | ConvertTo-Json -Compress";
    const FIREWALL: &str = "@{Profiles = @(Get-NetFirewallProfile | Select-Object Name,Enabled,DefaultInboundAction); \
        InboundRules = @(Get-NetFirewallRule -Direction Inbound -Enabled True).Count} | ConvertTo-Json -Compress -Depth 3";
    const SYSTEM: &str = "Get-CimInstance -ClassName Win32_OperatingSystem \
        | Select-Object Caption,LastBootUpTime | ConvertTo-Json -Compress";
    const DISK: &str = "Get-CimInstance -ClassName Win32_LogicalDisk -Filter \"DeviceID='$env:SystemDrive'\" \
        | Select-Object Size,FreeSpace | ConvertTo-Json -Compress";

    async fn query(config: &CollectorConfig, limits: Limits, script: &str) -> Result<Value, String> {
        let out = run(&config.powershell, &[script], limits).await.map_err(|e| e.to_string())?;
        if out.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&out).map_err(|e| format!("PowerShell printed invalid JSON: {e}"))
    }

    pub(crate) async fn collect(config: &CollectorConfig, limits: Limits) -> Report {
        let (wsc, defender, detections, firewall, system, disk, backup) = tokio::join!(
            query(config, limits, ANTIVIRUS),
            query(config, limits, DEFENDER),
            query(config, limits, DETECTIONS),
            query(config, limits, FIREWALL),
            query(config, limits, SYSTEM),
            query(config, limits, DISK),
            backup::collect(&config.root, config.backup_marker.as_deref(), config.backup_command.as_deref(), limits),
        );
        let defender_on = matches!(&defender, Ok(status) if !status.is_null());
        let antivirus = match &wsc {
            Ok(list) => match antivirus_from_wsc_json(list) {
                Reading::Value(av) if av.product.contains("Defender") && defender_on => {
                    defender.as_ref().map_or_else(|e| unknown(e.clone()), antivirus_from_defender)
                }
                other => other,
            },
            Err(e) => unknown(e.clone()),
        };
        let last_full_scan = match (&defender, &detections) {
            (Ok(status), Ok(found)) if !status.is_null() => scan_from_defender(status, found),
            (Err(e), _) => unknown(e.clone()),
            (Ok(status), _) if status.is_null() => unknown("Defender's status is not available"),
            (Ok(_), Err(e)) => unknown(e.clone()),
            (Ok(_), Ok(_)) => unknown("Defender's status is not available"),
        };
        let firewall = match &firewall {
            Ok(value) => firewall_from_profiles(
                value.get("Profiles").unwrap_or(&Value::Null),
                value.get("InboundRules").and_then(Value::as_u64).unwrap_or(0),
            ),
            Err(e) => unknown(e.clone()),
        };
        let (os_version, boot_time) = match &system {
            Ok(os) => (
                os.get("Caption")
                    .and_then(Value::as_str)
                    .map(|caption| Reading::Value(caption.trim().chars().take(200).collect()))
                    .unwrap_or_else(|| unknown("Win32_OperatingSystem has no Caption")),
                os.get("LastBootUpTime")
                    .and_then(decode_cim_datetime)
                    .map(Reading::Value)
                    .unwrap_or_else(|| unknown("Win32_OperatingSystem has no LastBootUpTime")),
            ),
            Err(e) => (unknown(e.clone()), unknown(e.clone())),
        };
        let disk = match &disk {
            Ok(volume) => {
                match (volume.get("FreeSpace").and_then(Value::as_u64), volume.get("Size").and_then(Value::as_u64)) {
                    (Some(free_bytes), Some(total_bytes)) => Reading::Value(Disk { free_bytes, total_bytes }),
                    _ => unknown("the system drive reports no size"),
                }
            }
            Err(e) => unknown(e.clone()),
        };
        Report {
            firewall,
            antivirus,
            last_full_scan,
            updates: unknown("updates are not read on Windows yet"),
            backup,
            os_version,
            boot_time,
            disk,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

#[cfg(test)]
#[path = "windows_test.rs"]
mod tests;
