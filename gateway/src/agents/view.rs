//! Support parameters as the API and the portal show them: each parameter is `{"value": …}` or
//! `{"unknown": "reason"}`; times are RFC 3339.
//!
//! What it does not do: rate them (the health meter).

use protocols::telemetry::{Reading, Report};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// RFC 3339 text of a Unix time (seconds), or the number when out of range.
pub fn rfc3339(unix: i64) -> Value {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .map(Value::String)
        .unwrap_or_else(|| json!(unix))
}

fn reading<T>(reading: &Reading<T>, value: impl Fn(&T) -> Value) -> Value {
    match reading {
        Reading::Value(v) => json!({ "value": value(v) }),
        Reading::Unknown(reason) => json!({ "unknown": reason }),
    }
}

/// The JSON of a report's support parameters.
pub fn report_json(report: &Report) -> Value {
    let when = |t: &Option<i64>| t.map(rfc3339).unwrap_or(Value::Null);
    json!({
        "firewall": reading(&report.firewall, |f| json!({
            "backend": format!("{:?}", f.backend).to_lowercase(),
            "active": f.active,
            "rules": f.rules,
            "default_deny": f.default_deny,
        })),
        "antivirus": reading(&report.antivirus, |a| json!({
            "product": a.product,
            "running": a.running,
            "updater_running": a.updater_running,
            "signatures_at": when(&a.signatures_at),
        })),
        "last_full_scan": reading(&report.last_full_scan, |s| json!({
            "finished_at": rfc3339(s.finished_at),
            "threats_found": s.threats_found,
            "threats_cleaned": s.threats_cleaned,
        })),
        "updates": reading(&report.updates, |u| json!({
            "pending": u.pending,
            "security_pending": u.security_pending,
            "security_pending_since": when(&u.security_pending_since),
            "last_success": when(&u.last_success),
        })),
        "backup": reading(&report.backup, |b| json!({ "last_snapshot": rfc3339(b.last_snapshot) })),
        "os_version": reading(&report.os_version, |v| json!(v)),
        "boot_time": reading(&report.boot_time, |t| rfc3339(*t)),
        "disk": reading(&report.disk, |d| json!({ "free_bytes": d.free_bytes, "total_bytes": d.total_bytes })),
        "agent_version": report.agent_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::telemetry::{Disk, Firewall, FirewallBackend};

    #[test]
    fn values_and_unknowns_are_told_apart() {
        let report = Report {
            firewall: Reading::Value(Firewall {
                backend: FirewallBackend::Nftables,
                active: true,
                rules: 3,
                default_deny: true,
            }),
            antivirus: Reading::unknown("ClamAV is not installed"),
            last_full_scan: Reading::unknown("no scan log"),
            updates: Reading::unknown("apt-get not found"),
            backup: Reading::unknown("no backup source configured"),
            os_version: Reading::Value("Debian GNU/Linux 12 (bookworm)".into()),
            boot_time: Reading::Value(1_764_633_600),
            disk: Reading::Value(Disk { free_bytes: 10, total_bytes: 20 }),
            agent_version: "0.1.0".into(),
        };
        let json = report_json(&report);
        assert_eq!(json["firewall"]["value"]["backend"], "nftables");
        assert_eq!(json["antivirus"]["unknown"], "ClamAV is not installed");
        assert_eq!(json["boot_time"]["value"], "2025-12-02T00:00:00Z");
        assert_eq!(json["disk"]["value"]["free_bytes"], 10);
    }
}
