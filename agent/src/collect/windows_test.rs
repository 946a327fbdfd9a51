use serde_json::json;

use super::*;

#[test]
fn product_state_table() {
    use ScannerState::*;
    use SignatureState::*;
    // (productState, providers, scanner, Microsoft's, signatures): values Windows reports.
    let table = [
        (397_568, 0x06, On, true, UpToDate),   // 0x061100: Defender on, up to date
        (397_584, 0x06, On, true, OutOfDate),  // 0x061110: Defender on, out of date
        (393_472, 0x06, Off, true, UpToDate),  // 0x060100: Defender off
        (393_488, 0x06, Off, true, OutOfDate), // 0x060110: Defender off, out of date
        (266_240, 0x04, On, false, UpToDate),  // 0x041000: another vendor, on
        (262_144, 0x04, Off, false, UpToDate), // 0x040000: another vendor, off
        (266_256, 0x04, On, false, OutOfDate), // 0x041010
        (0x04_20_00, 0x04, Snoozed, false, UpToDate),
        (0x04_30_00, 0x04, Expired, false, UpToDate),
        (0x01_10_00, 0x01, On, false, UpToDate), // a firewall product
        (0x04_50_00, 0x04, ScannerState::Other(5), false, UpToDate),
        (0x04_10_20, 0x04, On, false, SignatureState::Other(2)),
    ];
    for (state, providers, scanner, microsoft, signatures) in table {
        assert_eq!(
            decode_product_state(state),
            ProductState { providers, scanner, microsoft, signatures },
            "productState {state:#x}"
        );
    }
}

#[test]
fn wsc_antivirus_readings() {
    assert_eq!(
        antivirus_from_wsc("Windows Defender", 397_568),
        Reading::Value(Antivirus {
            product: "Windows Defender".into(),
            running: true,
            updater_running: true,
            signatures_at: None,
        })
    );
    let off = antivirus_from_wsc("Avast Antivirus", 262_160).value().cloned().unwrap();
    assert!(!off.running && !off.updater_running);
    assert!(matches!(antivirus_from_wsc("X", 0x04_50_00), Reading::Unknown(_)));

    let list = json!([
        {"displayName": "Windows Defender", "productState": 393_472},
        {"displayName": "ESET Security", "productState": 266_240}
    ]);
    assert_eq!(antivirus_from_wsc_json(&list).value().map(|a| a.product.as_str()), Some("ESET Security"));
    let single = json!({"displayName": "Windows Defender", "productState": 393_472});
    assert_eq!(antivirus_from_wsc_json(&single).value().map(|a| a.running), Some(false));
    assert_eq!(antivirus_from_wsc_json(&Value::Null), Reading::unknown("Security Center lists no antivirus product"));
}

#[test]
fn wsc_firewall_readings() {
    assert_eq!(firewall_from_wsc(0x01_10_00).value().map(|f| f.active), Some(true));
    assert_eq!(firewall_from_wsc(0x01_00_00).value().map(|f| f.active), Some(false));
    assert!(matches!(firewall_from_wsc(0x01_f0_00), Reading::Unknown(_)));
}

#[test]
fn cim_datetimes() {
    // 2026-11-30 02:14:07 UTC.
    let at = 1_796_004_847;
    assert_eq!(decode_cim_datetime(&json!("20261130021407.000000+000")), Some(at));
    assert_eq!(decode_cim_datetime(&json!("20261130031407.123456+060")), Some(at));
    assert_eq!(decode_cim_datetime(&json!("20261129211407.000000-300")), Some(at));
    assert_eq!(decode_cim_datetime(&json!("/Date(1796004847000)/")), Some(at));
    assert_eq!(decode_cim_datetime(&json!("/Date(1796004847999+0100)/")), Some(at));
    assert_eq!(decode_cim_datetime(&json!("2026-11-30T03:14:07.1234567+01:00")), Some(at));
    assert_eq!(decode_cim_datetime(&json!("2026-11-30T02:14:07Z")), Some(at));
    assert_eq!(decode_cim_datetime(&json!({"value": "/Date(1796004847000)/", "DateTime": "…"})), Some(at));
    for bad in [
        json!(null),
        json!(1796004847),
        json!(""),
        json!("2026-11-30T02:14:07"), // no zone: not guessed
        json!("20261130021407.000000+0600"),
        json!("20261330021407.000000+000"),
        json!("20261130021407x000000+000"),
        json!("2026113002140é.00000+000"),
        json!("/Date()/"),
        json!("/Date(x)/"),
        json!("/Date(99999999999999999999)/"),
    ] {
        assert_eq!(decode_cim_datetime(&bad), None, "{bad}");
    }
}

#[test]
fn defender_status() {
    let status = json!({
        "AMServiceEnabled": true,
        "RealTimeProtectionEnabled": true,
        "AntivirusSignatureLastUpdated": "/Date(1796000000000)/",
        "FullScanStartTime": "/Date(1796001000000)/",
        "FullScanEndTime": "/Date(1796004847000)/"
    });
    assert_eq!(
        antivirus_from_defender(&status),
        Reading::Value(Antivirus {
            product: "Microsoft Defender Antivirus".into(),
            running: true,
            updater_running: true,
            signatures_at: Some(1_796_000_000),
        })
    );
    let realtime_off = json!({"AMServiceEnabled": true, "RealTimeProtectionEnabled": false});
    assert_eq!(
        antivirus_from_defender(&realtime_off).value().map(|a| (a.running, a.updater_running, a.signatures_at)),
        Some((false, true, None))
    );
    assert!(matches!(antivirus_from_defender(&json!({})), Reading::Unknown(_)));

    let detections = json!([
        {"InitialDetectionTime": "/Date(1796002000000)/", "ActionSuccess": true},
        {"InitialDetectionTime": "/Date(1796003000000)/", "ActionSuccess": false},
        {"InitialDetectionTime": "/Date(1795000000000)/", "ActionSuccess": true}
    ]);
    assert_eq!(
        scan_from_defender(&status, &detections),
        Reading::Value(Scan { finished_at: 1_796_004_847, threats_found: 2, threats_cleaned: 1 })
    );
    assert_eq!(
        scan_from_defender(&status, &Value::Null),
        Reading::Value(Scan { finished_at: 1_796_004_847, threats_found: 0, threats_cleaned: 0 })
    );
    let never = json!({"AMServiceEnabled": true, "FullScanEndTime": null});
    assert_eq!(scan_from_defender(&never, &Value::Null), Reading::unknown("Defender has recorded no full scan"));
}

#[test]
fn firewall_profiles() {
    // Windows PowerShell prints enums as numbers; PowerShell 7 may print names.
    let numbers = json!([
        {"Name": "Domain", "Enabled": 1, "DefaultInboundAction": 0},
        {"Name": "Private", "Enabled": 1, "DefaultInboundAction": 4},
        {"Name": "Public", "Enabled": 1, "DefaultInboundAction": 4}
    ]);
    assert_eq!(
        firewall_from_profiles(&numbers, 42),
        Reading::Value(Firewall {
            backend: FirewallBackend::WindowsSecurityCenter,
            active: true,
            rules: 42,
            default_deny: true
        })
    );
    let names = json!([
        {"Name": "Domain", "Enabled": "False", "DefaultInboundAction": "Allow"},
        {"Name": "Public", "Enabled": "True", "DefaultInboundAction": "Allow"}
    ]);
    assert_eq!(firewall_from_profiles(&names, 3).value().map(|f| (f.active, f.default_deny)), Some((true, false)));
    let off = json!([{"Name": "Public", "Enabled": 0, "DefaultInboundAction": 4}]);
    assert_eq!(
        firewall_from_profiles(&off, 3),
        Reading::Value(Firewall {
            backend: FirewallBackend::WindowsSecurityCenter,
            active: false,
            rules: 0,
            default_deny: false
        })
    );
    assert!(matches!(firewall_from_profiles(&Value::Null, 0), Reading::Unknown(_)));
    assert!(matches!(firewall_from_profiles(&json!([{"Name": "Public"}]), 0), Reading::Unknown(_)));
}
