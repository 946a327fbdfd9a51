//! Tests of the telemetry wire encoding: exact bytes of one report, round-trips of arbitrary
//! reports, forward compatibility (unknown tags skipped, missing parameters unknown), and rejection
//! of duplicates, truncations and garbage without a panic.

use super::*;
use crate::test_util::hex;
use proptest::prelude::*;

fn encode(report: &Report) -> Vec<u8> {
    let mut out = BytesMut::new();
    report.encode(&mut out);
    out.to_vec()
}

fn sample() -> Report {
    Report {
        firewall: Reading::Value(Firewall {
            backend: FirewallBackend::Nftables,
            active: true,
            rules: 12,
            default_deny: true,
        }),
        antivirus: Reading::Value(Antivirus {
            product: "ClamAV".into(),
            running: true,
            updater_running: false,
            signatures_at: Some(1_700_000_000),
        }),
        last_full_scan: Reading::unknown("no scan logged"),
        updates: Reading::Value(Updates {
            pending: 3,
            security_pending: 1,
            security_pending_since: None,
            last_success: Some(1_699_000_000),
        }),
        backup: Reading::Value(Backup { last_snapshot: 1_698_000_000 }),
        os_version: Reading::Value("Debian GNU/Linux 12 (bookworm)".into()),
        boot_time: Reading::Value(1_697_000_000),
        disk: Reading::Value(Disk { free_bytes: 10 << 30, total_bytes: 100 << 30 }),
        agent_version: "0.1.0".into(),
    }
}

/// A report with only the agent version: every other parameter as a decoder fills it in.
fn only_agent_version(version: &str) -> Report {
    Report {
        firewall: Reading::unknown(NOT_REPORTED),
        antivirus: Reading::unknown(NOT_REPORTED),
        last_full_scan: Reading::unknown(NOT_REPORTED),
        updates: Reading::unknown(NOT_REPORTED),
        backup: Reading::unknown(NOT_REPORTED),
        os_version: Reading::unknown(NOT_REPORTED),
        boot_time: Reading::unknown(NOT_REPORTED),
        disk: Reading::unknown(NOT_REPORTED),
        agent_version: version.into(),
    }
}

/// The encoded parameters of `bytes`, as (tag, whole parameter bytes).
fn params(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut params = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = usize::from(u16::from_be_bytes([bytes[at + 1], bytes[at + 2]]));
        params.push((bytes[at], bytes[at..at + 3 + len].to_vec()));
        at += 3 + len;
    }
    params
}

#[test]
fn firewall_and_agent_version_exact_bytes() {
    let bytes = encode(&sample());
    let params = params(&bytes);
    assert_eq!(params.iter().map(|(tag, _)| *tag).collect::<Vec<_>>(), (1..=9).collect::<Vec<u8>>());
    assert_eq!(params[0].1, hex("01 0008 00 01 01 0000000c 01"));
    assert_eq!(params[2].1, cat(&[&hex("03 0011 01 000e"), b"no scan logged"]));
    assert_eq!(params[3].1, hex("04 0013 00 00000003 00000001 00 01 00000000 6544aec0"));
    assert_eq!(params[8].1, cat(&[&hex("09 0007 0005"), b"0.1.0"]));
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn sample_round_trips_with_exact_length() {
    let report = sample();
    let bytes = encode(&report);
    assert_eq!(bytes.len(), report.encoded_len());
    assert_eq!(decode_report(&bytes), Ok(report));
}

#[test]
fn unknown_tags_are_skipped() {
    let report = sample();
    let bytes = encode(&report);
    let mut with_unknown = hex("00 0000");
    with_unknown.extend(hex("63 0004 deadbeef"));
    with_unknown.extend(&bytes[..11]); // the firewall parameter
    with_unknown.extend(hex("ff 0003 010203"));
    with_unknown.extend(&bytes[11..]);
    with_unknown.extend(hex("0a 0000"));
    assert_eq!(decode_report(&with_unknown), Ok(report));
}

#[test]
fn parameter_order_does_not_matter() {
    let report = sample();
    let mut reversed: Vec<u8> = Vec::new();
    for (_, param) in params(&encode(&report)).into_iter().rev() {
        reversed.extend(param);
    }
    assert_eq!(decode_report(&reversed), Ok(report));
}

#[test]
fn missing_parameters_are_not_reported() {
    let bytes = cat(&[&hex("09 0007 0005"), b"0.2.0"]);
    assert_eq!(decode_report(&bytes), Ok(only_agent_version("0.2.0")));

    // Only the disk and the agent version.
    let report = sample();
    let params = params(&encode(&report));
    let bytes = [params[7].1.clone(), params[8].1.clone()].concat();
    let decoded = decode_report(&bytes).expect("decodes");
    assert_eq!(decoded, Report { disk: report.disk, ..only_agent_version("0.1.0") });
}

#[test]
fn missing_agent_version_is_an_error() {
    let bytes = encode(&sample());
    let without: Vec<u8> =
        params(&bytes).into_iter().filter(|(tag, _)| *tag != 9).flat_map(|(_, param)| param).collect();
    assert_eq!(decode_report(&without), Err(TelemetryError::MissingAgentVersion));
    assert_eq!(decode_report(&[]), Err(TelemetryError::MissingAgentVersion));
}

#[test]
fn duplicate_parameters_are_rejected() {
    let bytes = encode(&sample());
    for (tag, param) in params(&bytes) {
        let mut doubled = bytes.clone();
        doubled.extend(&param);
        let tag = ParamTag::from_u8(tag).expect("known tag");
        assert_eq!(decode_report(&doubled), Err(TelemetryError::Duplicate(tag)));
    }
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = encode(&sample());
    for cut in 0..bytes.len() {
        assert!(decode_report(&bytes[..cut]).is_err(), "prefix of {cut} bytes decoded");
    }
}

#[test]
fn trailing_bytes_inside_a_parameter_are_rejected() {
    let bytes = hex("08 0012 00 0000000000000001 0000000000000002 ff");
    let mut buf = bytes.clone();
    buf.extend(cat(&[&hex("09 0003 0001"), b"1"]));
    assert_eq!(decode_report(&buf), Err(TelemetryError::TrailingBytes { param: ParamTag::Disk, extra: 1 }));
}

#[test]
fn a_parameter_shorter_than_its_fields_is_truncated() {
    // The disk's body claims 9 bytes: a value with only the free bytes.
    let buf = hex("08 0009 00 0000000000000001");
    assert_eq!(decode_report(&buf), Err(TelemetryError::Truncated { field: "disk.total_bytes" }));
}

#[test]
fn a_truncated_parameter_header_or_body_names_what_is_missing() {
    assert_eq!(decode_report(&hex("09")), Err(TelemetryError::Truncated { field: "parameter length" }));
    assert_eq!(decode_report(&hex("09 00")), Err(TelemetryError::Truncated { field: "parameter length" }));
    assert_eq!(decode_report(&hex("09 0005 0003")), Err(TelemetryError::Truncated { field: "parameter body" }));
    // An unknown tag is skipped only once its whole body is there.
    assert_eq!(decode_report(&hex("63 0004 dead")), Err(TelemetryError::Truncated { field: "parameter body" }));
}

#[test]
fn a_duplicate_is_rejected_before_its_body_is_read() {
    let buf = cat(&[&hex("09 0003 0001"), b"1", &hex("09 0001 ff")]);
    assert_eq!(decode_report(&buf), Err(TelemetryError::Duplicate(ParamTag::AgentVersion)));
}

#[test]
fn an_unknown_firewall_backend_skips_the_rest_of_its_body() {
    // Whatever follows an unknown backend code is not read, so it cannot be trailing bytes.
    let buf = cat(&[&hex("01 0005 00 07 ff ff ff"), &hex("09 0003 0001"), b"1"]);
    let report = decode_report(&buf).expect("decodes");
    assert!(matches!(report.firewall, Reading::Unknown(ref reason) if reason.contains("code 7")), "{report:?}");
}

#[test]
fn bad_bytes_are_typed_errors() {
    assert_eq!(
        decode_report(&hex("07 0009 02 0000000000000001")),
        Err(TelemetryError::BadByte { field: "boot_time", value: 2 })
    );
    assert_eq!(
        decode_report(&hex("01 0008 00 01 02 00000000 00")),
        Err(TelemetryError::BadByte { field: "firewall.active", value: 2 })
    );
    assert_eq!(decode_report(&hex("09 0003 0001 ff")), Err(TelemetryError::BadUtf8 { field: "agent_version" }));
    assert_eq!(
        decode_report(&hex("06 0003 01 0201")),
        Err(TelemetryError::TooLong { field: "os_version", len: 0x201, max: MAX_TEXT_LEN })
    );
}

#[test]
fn unknown_firewall_backend_reads_as_unknown() {
    let buf = cat(&[&hex("01 0008 00 07 01 00000001 01"), &hex("09 0003 0001"), b"1"]);
    let report = decode_report(&buf).expect("decodes");
    match report.firewall {
        Reading::Unknown(reason) => assert!(reason.contains("code 7"), "{reason}"),
        other => panic!("expected an unknown firewall, got {other:?}"),
    }
}

#[test]
fn long_text_is_clipped_at_a_character_boundary() {
    let long = "é".repeat(MAX_TEXT_LEN); // 2 bytes each
    let report = Report { os_version: Reading::Value(long.clone()), ..only_agent_version(&long) };
    let bytes = encode(&report);
    assert_eq!(bytes.len(), report.encoded_len());
    let decoded = decode_report(&bytes).expect("decodes");
    let clipped = "é".repeat(MAX_TEXT_LEN / 2);
    assert_eq!(decoded.agent_version, clipped);
    assert_eq!(decoded.os_version, Reading::Value(clipped));
}

// ---------------------------------------------------------------------------------------------
// Properties

fn text() -> impl Strategy<Value = String> {
    // Up to MAX_TEXT_LEN bytes: at most MAX_TEXT_LEN / 4 characters of any width, or ASCII.
    prop_oneof![
        proptest::collection::vec(any::<char>(), 0..=MAX_TEXT_LEN / 4).prop_map(|c| c.into_iter().collect()),
        "[ -~]{0,512}",
    ]
}

fn reading<T: std::fmt::Debug + Clone>(value: impl Strategy<Value = T>) -> impl Strategy<Value = Reading<T>> {
    prop_oneof![value.prop_map(Reading::Value), text().prop_map(Reading::Unknown)]
}

fn backend() -> impl Strategy<Value = FirewallBackend> {
    prop_oneof![
        Just(FirewallBackend::Nftables),
        Just(FirewallBackend::Iptables),
        Just(FirewallBackend::WindowsSecurityCenter)
    ]
}

fn any_report() -> impl Strategy<Value = Report> {
    let firewall = (backend(), any::<bool>(), any::<u32>(), any::<bool>())
        .prop_map(|(backend, active, rules, default_deny)| Firewall { backend, active, rules, default_deny });
    let antivirus = (text(), any::<bool>(), any::<bool>(), any::<Option<i64>>()).prop_map(
        |(product, running, updater_running, signatures_at)| Antivirus {
            product,
            running,
            updater_running,
            signatures_at,
        },
    );
    let scan = (any::<i64>(), any::<u32>(), any::<u32>())
        .prop_map(|(finished_at, threats_found, threats_cleaned)| Scan { finished_at, threats_found, threats_cleaned });
    let updates = (any::<u32>(), any::<u32>(), any::<Option<i64>>(), any::<Option<i64>>()).prop_map(
        |(pending, security_pending, security_pending_since, last_success)| Updates {
            pending,
            security_pending,
            security_pending_since,
            last_success,
        },
    );
    let backup = any::<i64>().prop_map(|last_snapshot| Backup { last_snapshot });
    let disk = (any::<u64>(), any::<u64>()).prop_map(|(free_bytes, total_bytes)| Disk { free_bytes, total_bytes });
    (
        (reading(firewall), reading(antivirus), reading(scan), reading(updates)),
        (reading(backup), reading(text()), reading(any::<i64>()), reading(disk), text()),
    )
        .prop_map(
            |((firewall, antivirus, last_full_scan, updates), (backup, os_version, boot_time, disk, agent_version))| {
                Report {
                    firewall,
                    antivirus,
                    last_full_scan,
                    updates,
                    backup,
                    os_version,
                    boot_time,
                    disk,
                    agent_version,
                }
            },
        )
}

/// Public so that the agent protocol's tests can generate reports too.
pub(crate) fn arbitrary_report() -> impl Strategy<Value = Report> {
    any_report()
}

proptest! {
    #[test]
    fn prop_round_trip(report in any_report()) {
        let bytes = encode(&report);
        prop_assert_eq!(bytes.len(), report.encoded_len());
        prop_assert_eq!(decode_report(&bytes), Ok(report));
    }

    #[test]
    fn prop_truncated_is_an_error(report in any_report(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&report);
        let cut = cut.index(bytes.len());
        prop_assert!(decode_report(&bytes[..cut]).is_err());
    }

    #[test]
    fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        if let Ok(report) = decode_report(&bytes) {
            prop_assert_eq!(decode_report(&encode(&report)), Ok(report));
        }
    }

    /// Valid reports with some bytes overwritten: no panic, and whatever decodes round-trips.
    #[test]
    fn prop_mutated_reports_never_panic(
        report in any_report(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = encode(&report);
        for (at, value) in edits {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        if let Ok(report) = decode_report(&bytes) {
            prop_assert_eq!(decode_report(&encode(&report)), Ok(report));
        }
    }
}
