//! Tests of the maintenance entitlement: its URI, exact bytes of a known value,
//! the calendar arithmetic over its whole range, round-trips of arbitrary entitlements, every DER
//! rule the decoder enforces, and arbitrary or mutated bytes (no panic; what decodes re-encodes to
//! the same bytes).

use super::*;
use crate::test_util::hex;
use proptest::prelude::*;

fn sample() -> Entitlement {
    Entitlement {
        service: "support".into(),
        tier: "standard".into(),
        silo: "silo-a".into(),
        location: "silo-a.example.net:4433".into(),
        subscriber: "0b3c9a1e-5f7d-4c2a-9e61-2d8f4b7a6c10".into(),
        // 2027-01-01T00:00:00Z
        not_after: 1_798_761_600,
    }
}

/// A DER element, written independently of the module's encoder (short or long-form length).
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend([0x81, len as u8]);
    } else {
        out.extend([0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(content);
    out
}

/// The seven encoded fields of [`sample`], for tests that spoil one of them.
fn sample_fields() -> Vec<Vec<u8>> {
    let e = sample();
    vec![
        hex("02 01 01"),
        tlv(0x0c, e.service.as_bytes()),
        tlv(0x0c, e.tier.as_bytes()),
        tlv(0x0c, e.silo.as_bytes()),
        tlv(0x0c, e.location.as_bytes()),
        tlv(0x0c, e.subscriber.as_bytes()),
        tlv(0x18, b"20270101000000Z"),
    ]
}

fn sequence(fields: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &fields.concat())
}

/// The sample's fields with field `index` replaced by `element`.
fn with_field(index: usize, element: Vec<u8>) -> Vec<u8> {
    let mut fields = sample_fields();
    fields[index] = element;
    sequence(&fields)
}

fn with_time(time: &[u8]) -> Vec<u8> {
    with_field(6, tlv(0x18, time))
}

fn encode_ok(entitlement: &Entitlement) -> Vec<u8> {
    entitlement.encode().unwrap_or_else(|e| panic!("{entitlement:?} does not encode: {e}"))
}

#[test]
fn known_answer() {
    let expected = [
        hex("30 6e  02 01 01  0c 07"),
        b"support".to_vec(),
        hex("0c 08"),
        b"standard".to_vec(),
        hex("0c 06"),
        b"silo-a".to_vec(),
        hex("0c 17"),
        b"silo-a.example.net:4433".to_vec(),
        hex("0c 24"),
        b"0b3c9a1e-5f7d-4c2a-9e61-2d8f4b7a6c10".to_vec(),
        hex("18 0f"),
        b"20270101000000Z".to_vec(),
    ]
    .concat();
    assert_eq!(encode_ok(&sample()), expected);
    assert_eq!(sequence(&sample_fields()), expected, "the test's own writer agrees");
    assert_eq!(Entitlement::decode(&expected), Ok(sample()));
}

#[test]
fn long_form_lengths_at_their_limits() {
    // 127 bytes: short form; 128: 0x81; 256: 0x82 01 00. The largest value takes 0x82 outside.
    let at = |len: usize| Entitlement { location: "l".repeat(len), ..sample() };
    let der = encode_ok(&at(127));
    assert_eq!(der[..3], hex("30 81 d6"));
    assert!(der.windows(2).any(|w| w == [0x0c, 0x7f]));
    let der = encode_ok(&at(128));
    assert!(der.windows(3).any(|w| w == [0x0c, 0x81, 0x80]));
    let der = encode_ok(&at(256));
    assert!(der.windows(4).any(|w| w == [0x0c, 0x82, 0x01, 0x00]));
    for len in [1, 127, 128, 255, 256] {
        assert_eq!(Entitlement::decode(&encode_ok(&at(len))), Ok(at(len)), "location of {len} bytes");
    }

    let name = "n".repeat(MAX_NAME_LEN);
    let largest = Entitlement {
        service: name.clone(),
        tier: name.clone(),
        silo: name.clone(),
        location: "l".repeat(MAX_LOCATION_LEN),
        subscriber: name,
        not_after: MAX_NOT_AFTER,
    };
    let der = encode_ok(&largest);
    assert_eq!(der.len(), MAX_ENCODED_LEN);
    assert_eq!(der.len(), 548);
    assert_eq!(der[..4], hex("30 82 02 20"));
    assert_eq!(Entitlement::decode(&der), Ok(largest));
}

#[test]
fn an_entitlement_travels_as_a_urn_and_other_names_are_not_one() {
    let urn = sample().to_urn().unwrap();
    assert!(urn.starts_with(URN_PREFIX), "{urn}");
    assert!(urn.bytes().all(|b| b.is_ascii_alphanumeric() || b":-_".contains(&b)), "a plain URI: {urn}");
    assert_eq!(Entitlement::from_urn(&urn), Some(Ok(sample())));
    assert_eq!(Entitlement::from_urn("urn:uuid:0b3c9a1e-5f7d-4c2a-9e61-2d8f4b7a6c10"), None);
    assert!(matches!(Entitlement::from_urn(&format!("{URN_PREFIX}not base64!")), Some(Err(_))));
    let long = format!("{URN_PREFIX}{}", "A".repeat(4 * MAX_LEN));
    assert!(matches!(Entitlement::from_urn(&long), Some(Err(EntitlementError::TooLong { .. }))));
    // A URI whose DER was tampered with does not decode to another entitlement silently.
    let mut tampered = urn.clone();
    tampered.truncate(urn.len() - 2);
    assert!(matches!(Entitlement::from_urn(&tampered), Some(Err(_))));
}

#[test]
fn known_times() {
    for (unix, text) in [
        (0, "19700101000000Z"),
        (951_782_400, "20000229000000Z"),
        (1_798_761_600, "20270101000000Z"),
        (1_798_761_599, "20261231235959Z"),
        (4_107_542_400, "21000301000000Z"),
        (MAX_NOT_AFTER, "99991231235959Z"),
    ] {
        assert_eq!(generalized_time(unix).map(|t| t.to_vec()), Ok(text.as_bytes().to_vec()), "{unix}");
        assert_eq!(parse_generalized_time(text.as_bytes()), Ok(unix), "{text}");
    }
}

/// Every day from 1970-01-01 to 9999-12-31, counted one by one: `days_from_civil` and
/// `civil_from_days` agree with the count.
#[test]
fn calendar_over_the_whole_range() {
    let mut days = 0;
    for year in 1970..=9999 {
        let mut in_year = 0;
        for month in 1..=12 {
            for day in 1..=days_in_month(year, month) {
                assert_eq!(days_from_civil(year, month, day), days, "{year}-{month}-{day}");
                assert_eq!(civil_from_days(days), (year, month, day), "day {days}");
                days += 1;
                in_year += 1;
            }
        }
        assert_eq!(in_year, if is_leap_year(year) { 366 } else { 365 }, "{year}");
    }
    assert_eq!(days * SECS_PER_DAY - 1, MAX_NOT_AFTER);
    assert!(is_leap_year(2000) && is_leap_year(2028) && !is_leap_year(2100) && !is_leap_year(2027));
}

#[test]
fn is_valid_at_is_strictly_before_not_after() {
    let e = sample();
    assert!(e.is_valid_at(i64::MIN));
    assert!(e.is_valid_at(e.not_after - 1));
    assert!(!e.is_valid_at(e.not_after));
    assert!(!e.is_valid_at(e.not_after + 1));
    assert!(!e.is_valid_at(i64::MAX));
}

#[test]
fn encode_refuses_fields_out_of_range() {
    let refuse = |e: Entitlement| e.encode().expect_err("out of range");
    let long = "x".repeat(MAX_NAME_LEN + 1);
    assert_eq!(
        refuse(Entitlement { service: String::new(), ..sample() }),
        EntitlementError::BadField { field: "service", problem: "is empty" }
    );
    assert_eq!(
        refuse(Entitlement { subscriber: String::new(), ..sample() }),
        EntitlementError::BadField { field: "subscriber", problem: "is empty" }
    );
    assert_eq!(
        refuse(Entitlement { tier: long.clone(), ..sample() }),
        EntitlementError::TooLong { field: "tier", len: 65, max: 64 }
    );
    // Bytes, not characters: 22 three-byte characters are 66 bytes.
    assert_eq!(
        refuse(Entitlement { silo: "日".repeat(22), ..sample() }),
        EntitlementError::TooLong { field: "silo", len: 66, max: 64 }
    );
    assert_eq!(
        refuse(Entitlement { location: "x".repeat(MAX_LOCATION_LEN + 1), ..sample() }),
        EntitlementError::TooLong { field: "location", len: 257, max: 256 }
    );
    assert!(Entitlement { location: long, ..sample() }.encode().is_ok(), "location may be over 64 bytes");
    assert_eq!(
        refuse(Entitlement { not_after: -1, ..sample() }),
        EntitlementError::BadTime("is before 1970-01-01T00:00:00Z")
    );
    assert_eq!(
        refuse(Entitlement { not_after: MAX_NOT_AFTER + 1, ..sample() }),
        EntitlementError::BadTime("is after 9999-12-31T23:59:59Z")
    );
    assert_eq!(
        refuse(Entitlement { not_after: i64::MIN, ..sample() }).to_string(),
        "entitlement: notAfter is before 1970-01-01T00:00:00Z"
    );
    assert!(Entitlement { not_after: i64::MAX, ..sample() }.encode().is_err());
}

#[test]
fn decode_refuses_non_der_lengths() {
    // A long-form length for a short value.
    let service = [hex("0c 81 07"), b"support".to_vec()].concat();
    assert_eq!(
        Entitlement::decode(&with_field(1, service)),
        Err(EntitlementError::NotDer { field: "service", problem: "a long-form length (0x81) for a length below 128" })
    );
    let service = [hex("0c 82 00 07"), b"support".to_vec()].concat();
    assert_eq!(
        Entitlement::decode(&with_field(1, service)),
        Err(EntitlementError::NotDer {
            field: "service",
            problem: "a two-byte length (0x82) with a leading zero byte"
        })
    );
    // The same on the SEQUENCE itself.
    let der = sample_fields().concat();
    let long_form = [hex("30 81"), vec![der.len() as u8], der.clone()].concat();
    assert!(matches!(Entitlement::decode(&long_form), Err(EntitlementError::NotDer { field: "the SEQUENCE", .. })));
    // Indefinite length, with its end-of-contents octets.
    let indefinite = [hex("30 80"), der.clone(), hex("00 00")].concat();
    assert_eq!(
        Entitlement::decode(&indefinite),
        Err(EntitlementError::NotDer { field: "the SEQUENCE", problem: "an indefinite length (0x80)" })
    );
    let tier = [hex("0c 80"), b"standard".to_vec(), hex("00 00")].concat();
    assert!(matches!(Entitlement::decode(&with_field(2, tier)), Err(EntitlementError::NotDer { field: "tier", .. })));
    // Three length bytes, and the reserved 0xff.
    let three = [hex("30 83 00 00"), vec![der.len() as u8], der.clone()].concat();
    assert_eq!(
        Entitlement::decode(&three),
        Err(EntitlementError::NotDer { field: "the SEQUENCE", problem: "a length of more than two bytes" })
    );
    assert!(matches!(Entitlement::decode(&hex("30 ff")), Err(EntitlementError::NotDer { .. })));
}

#[test]
fn decode_refuses_other_versions() {
    let version = |bytes: &str| Entitlement::decode(&with_field(0, hex(bytes)));
    assert_eq!(version("02 01 02"), Err(EntitlementError::UnsupportedVersion(2)));
    assert_eq!(version("02 01 00"), Err(EntitlementError::UnsupportedVersion(0)));
    assert_eq!(version("02 01 ff"), Err(EntitlementError::UnsupportedVersion(-1)));
    assert_eq!(version("02 02 01 00"), Err(EntitlementError::UnsupportedVersion(256)));
    assert_eq!(version("02 02 ff 7f"), Err(EntitlementError::UnsupportedVersion(-129)));
    assert_eq!(version("02 08 7f ff ff ff ff ff ff ff"), Err(EntitlementError::UnsupportedVersion(i64::MAX)));
    assert_eq!(version("02 08 80 00 00 00 00 00 00 00"), Err(EntitlementError::UnsupportedVersion(i64::MIN)));
    assert!(matches!(
        version("02 09 01 00 00 00 00 00 00 00 00"),
        Err(EntitlementError::BadField { field: "version", .. })
    ));
    // Not the shortest form of 1, an empty INTEGER, and not an INTEGER at all.
    assert!(matches!(version("02 02 00 01"), Err(EntitlementError::NotDer { field: "version", .. })));
    assert!(matches!(version("02 02 ff 80"), Err(EntitlementError::NotDer { field: "version", .. })));
    assert!(matches!(version("02 00"), Err(EntitlementError::NotDer { field: "version", .. })));
    assert_eq!(
        version("0a 01 01"),
        Err(EntitlementError::UnexpectedTag { field: "version", expected: 0x02, found: 0x0a })
    );
    // Missing altogether: the service string is where the version should be.
    let mut fields = sample_fields();
    fields.remove(0);
    assert_eq!(
        Entitlement::decode(&sequence(&fields)),
        Err(EntitlementError::UnexpectedTag { field: "version", expected: 0x02, found: 0x0c })
    );
}

#[test]
fn decode_refuses_bad_times() {
    let bad = |time: &str| Entitlement::decode(&with_time(time.as_bytes()));
    let bad_time = |time: &str| match bad(time) {
        Err(EntitlementError::BadTime(_)) => {}
        other => panic!("{time}: {other:?}"),
    };
    // Days that their month does not have.
    assert_eq!(bad("20270230000000Z"), Err(EntitlementError::BadTime("has a day that its month does not have")));
    bad_time("20270229000000Z");
    bad_time("21000229000000Z");
    bad_time("20270431000000Z");
    bad_time("20270100000000Z");
    assert_eq!(Entitlement::decode(&with_time(b"20280229000000Z")).map(|e| e.not_after), Ok(1_835_395_200));
    assert_eq!(Entitlement::decode(&with_time(b"20000229235959Z")).map(|e| e.not_after), Ok(951_868_799));
    // Fields out of range.
    bad_time("20271301000000Z");
    bad_time("20270001000000Z");
    bad_time("20270101240000Z");
    bad_time("20270101006000Z");
    bad_time("20270101000060Z");
    bad_time("19691231235959Z");
    bad_time("00000101000000Z");
    // Not the DER shape: fractions, an offset, no Z, a lowercase z, no seconds, signs and spaces.
    bad_time("20270101000000.5Z");
    bad_time("20270101000000.0Z");
    bad_time("20270101000000+0000");
    bad_time("20270101000000");
    bad_time("20270101000000z");
    bad_time("202701010000Z");
    bad_time("2027010100000+Z");
    bad_time(" 2027010100000Z");
    bad_time("");
    // UTCTime (tag 0x17) is not GeneralizedTime.
    assert_eq!(
        Entitlement::decode(&with_field(6, tlv(0x17, b"270101000000Z"))),
        Err(EntitlementError::UnexpectedTag { field: "notAfter", expected: 0x18, found: 0x17 })
    );
}

#[test]
fn decode_refuses_bad_strings() {
    assert_eq!(
        Entitlement::decode(&with_field(1, tlv(0x0c, b""))),
        Err(EntitlementError::BadField { field: "service", problem: "is empty" })
    );
    assert_eq!(
        Entitlement::decode(&with_field(5, tlv(0x0c, b""))),
        Err(EntitlementError::BadField { field: "subscriber", problem: "is empty" })
    );
    assert_eq!(
        Entitlement::decode(&with_field(3, tlv(0x0c, &[b'x'; 65]))),
        Err(EntitlementError::TooLong { field: "silo", len: 65, max: 64 })
    );
    // The size is refused from the length alone, before the bytes are there.
    let claims_more = [hex("30 20 02 01 01 0c 82 01 01"), vec![b'x'; 25]].concat();
    assert_eq!(
        Entitlement::decode(&claims_more),
        Err(EntitlementError::TooLong { field: "service", len: 257, max: 64 })
    );
    assert_eq!(
        Entitlement::decode(&with_field(4, tlv(0x0c, &[b'x'; 257]))),
        Err(EntitlementError::TooLong { field: "location", len: 257, max: 256 })
    );
    assert_eq!(
        Entitlement::decode(&with_field(2, tlv(0x0c, b"st\xffndard"))),
        Err(EntitlementError::BadField { field: "tier", problem: "is not valid UTF-8" })
    );
    // PrintableString, and a constructed UTF8String, are not UTF8String.
    assert_eq!(
        Entitlement::decode(&with_field(2, tlv(0x13, b"standard"))),
        Err(EntitlementError::UnexpectedTag { field: "tier", expected: 0x0c, found: 0x13 })
    );
    assert_eq!(
        Entitlement::decode(&with_field(2, tlv(0x2c, &tlv(0x0c, b"standard")))),
        Err(EntitlementError::UnexpectedTag { field: "tier", expected: 0x0c, found: 0x2c })
    );
}

#[test]
fn decode_refuses_trailing_and_missing_bytes() {
    let der = encode_ok(&sample());
    let mut trailing = der.clone();
    trailing.push(0);
    assert_eq!(
        Entitlement::decode(&trailing),
        Err(EntitlementError::TrailingBytes { after: "the SEQUENCE", extra: 1 })
    );
    let mut fields = sample_fields();
    fields.push(hex("05 00"));
    assert_eq!(
        Entitlement::decode(&sequence(&fields)),
        Err(EntitlementError::TrailingBytes { after: "notAfter", extra: 2 })
    );
    // A field missing at the end.
    fields.truncate(6);
    assert_eq!(Entitlement::decode(&sequence(&fields)), Err(EntitlementError::Truncated { field: "notAfter" }));
    // Every strict prefix.
    for cut in 0..der.len() {
        assert!(
            matches!(Entitlement::decode(&der[..cut]), Err(EntitlementError::Truncated { .. })),
            "prefix of {cut} bytes: {:?}",
            Entitlement::decode(&der[..cut])
        );
    }
    // An element longer than the SEQUENCE that holds it.
    let mut overrun = der.clone();
    overrun[1] -= 1;
    overrun.pop();
    assert_eq!(Entitlement::decode(&overrun), Err(EntitlementError::Truncated { field: "notAfter" }));
    // Not a SEQUENCE.
    assert_eq!(
        Entitlement::decode(&tlv(0x31, &sample_fields().concat())),
        Err(EntitlementError::UnexpectedTag { field: "the SEQUENCE", expected: 0x30, found: 0x31 })
    );
}

#[test]
fn decode_refuses_too_long_input_before_parsing() {
    let mut der = encode_ok(&sample());
    der.resize(MAX_LEN, 0);
    assert_eq!(
        Entitlement::decode(&der),
        Err(EntitlementError::TrailingBytes { after: "the SEQUENCE", extra: MAX_LEN - 112 })
    );
    der.push(0);
    assert_eq!(
        Entitlement::decode(&der),
        Err(EntitlementError::TooLong { field: "the value", len: MAX_LEN + 1, max: MAX_LEN })
    );
    assert!(matches!(Entitlement::decode(&vec![0x30; 1 << 20]), Err(EntitlementError::TooLong { .. })));
}

/// Non-empty strings of at most `max` bytes of UTF-8, with characters of every encoded length.
fn text(max: usize) -> impl Strategy<Value = String> {
    let character = prop_oneof![
        4 => proptest::char::range('a', 'z'),
        1 => proptest::char::range('\u{a0}', '\u{7ff}'),
        1 => proptest::char::range('\u{3040}', '\u{9fff}'),
        1 => proptest::char::range('\u{1f300}', '\u{1faff}'),
        1 => any::<char>(),
    ];
    proptest::collection::vec(character, 1..=max).prop_map(move |characters| {
        let mut text = String::new();
        for c in characters {
            if text.len() + c.len_utf8() > max {
                break;
            }
            text.push(c);
        }
        text
    })
}

fn any_entitlement() -> impl Strategy<Value = Entitlement> {
    let not_after = prop_oneof![
        4 => MIN_NOT_AFTER..=MAX_NOT_AFTER,
        1 => Just(MIN_NOT_AFTER),
        1 => Just(MAX_NOT_AFTER),
        2 => 1_700_000_000i64..1_900_000_000,
    ];
    (text(MAX_NAME_LEN), text(MAX_NAME_LEN), text(MAX_NAME_LEN), text(MAX_LOCATION_LEN), text(MAX_NAME_LEN), not_after)
        .prop_map(|(service, tier, silo, location, subscriber, not_after)| Entitlement {
            service,
            tier,
            silo,
            location,
            subscriber,
            not_after,
        })
}

proptest! {
    #[test]
    fn prop_round_trip(entitlement in any_entitlement()) {
        let der = encode_ok(&entitlement);
        prop_assert!(der.len() <= MAX_ENCODED_LEN);
        prop_assert_eq!(Entitlement::decode(&der), Ok(entitlement));
    }

    #[test]
    fn prop_times_round_trip(unix in MIN_NOT_AFTER..=MAX_NOT_AFTER) {
        let text = generalized_time(unix).expect("in range");
        prop_assert_eq!(parse_generalized_time(&text), Ok(unix));
    }

    #[test]
    fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
        if let Ok(entitlement) = Entitlement::decode(&bytes) {
            prop_assert_eq!(encode_ok(&entitlement), bytes, "DER has one encoding");
        }
    }

    /// Arbitrary bytes rarely get past the first tag: valid values with bytes overwritten,
    /// inserted or removed reach every check. No panic, and what decodes re-encodes identically.
    #[test]
    fn prop_mutated_values_never_panic(
        entitlement in any_entitlement(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut bytes = encode_ok(&entitlement);
        for (at, value, kind) in edits {
            let at = at.index(bytes.len() + 1);
            match kind {
                0 if at < bytes.len() => bytes[at] = value,
                1 => bytes.insert(at, value),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        if let Ok(entitlement) = Entitlement::decode(&bytes) {
            prop_assert_eq!(encode_ok(&entitlement), bytes, "DER has one encoding");
        }
    }

    #[test]
    fn prop_any_time_text_never_panics(text in proptest::collection::vec(any::<u8>(), 0..20)) {
        if let Ok(unix) = parse_generalized_time(&text) {
            prop_assert_eq!(generalized_time(unix).map(|t| t.to_vec()), Ok(text));
        }
    }

    #[test]
    fn prop_time_digits_never_panic(text in "[0-9]{14}Z") {
        if let Ok(unix) = parse_generalized_time(text.as_bytes()) {
            prop_assert_eq!(generalized_time(unix).map(|t| t.to_vec()), Ok(text.into_bytes()));
        }
    }
}
