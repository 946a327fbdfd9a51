//! Tests of the agent protocol's codec: exact bytes of a few frames, round-trips of every message
//! type, streaming (every strict prefix is incomplete), limits enforced from the header on, typed
//! errors, signed payloads, and arbitrary bytes.

use super::*;
use crate::telemetry::tests::arbitrary_report;
use crate::test_util::hex;
use proptest::prelude::*;

fn encode(message: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    message.encode(&mut out);
    out.to_vec()
}

fn decode_default(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
    decode(buf, &Limits::default())
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn uuid() -> Uuid {
    Uuid::parse_str("12345678-9abc-def0-1234-56789abcdef0").expect("valid UUID")
}

fn assert_round_trip(message: &Message, limits: &Limits) {
    let bytes = encode(message);
    assert_eq!(bytes.len(), message.encoded_len(), "encoded_len of {message:?}");
    assert_eq!(decode(&bytes, limits), Ok(Some((message.clone(), bytes.len()))), "decode of {message:?}");
    for cut in 0..bytes.len() {
        assert_eq!(decode(&bytes[..cut], limits), Ok(None), "prefix of {cut} bytes of {message:?}");
    }
}

fn report() -> telemetry::Report {
    use telemetry::*;
    Report {
        firewall: Reading::unknown("nft: permission denied"),
        antivirus: Reading::unknown("not installed"),
        last_full_scan: Reading::unknown(NOT_REPORTED),
        updates: Reading::Value(Updates {
            pending: 1,
            security_pending: 0,
            security_pending_since: None,
            last_success: None,
        }),
        backup: Reading::Value(Backup { last_snapshot: 5 }),
        os_version: Reading::Value("Debian GNU/Linux 12 (bookworm)".into()),
        boot_time: Reading::Value(7),
        disk: Reading::Value(Disk { free_bytes: 1, total_bytes: 2 }),
        agent_version: "0.1.0".into(),
    }
}

/// One message of every type.
fn samples() -> Vec<Message> {
    let mut config = BytesMut::new();
    ConfigBody { issued_at: 1, heartbeat_secs: 60, keepalive_secs: 15, gateways: vec!["gw.example:4433".into()] }
        .encode(&mut config);
    vec![
        Message::Hello {
            uuid: uuid(),
            agent_version: "0.1.0".into(),
            hostname: "pc-7".into(),
            os: "Debian GNU/Linux 12".into(),
            capabilities: Capabilities::TELEMETRY | Capabilities::RELAY | Capabilities(1 << 31),
            remote_help: true,
        },
        Message::Welcome { server_time: 1_700_000_000, heartbeat_secs: 60 },
        Message::Report { seq: 3, taken_at: -1, report: report() },
        Message::Ack { seq: 3 },
        Message::Config(Signed { payload: config.freeze(), signature: [7; 64] }),
        Message::SiloKey(Signed { payload: Bytes::from_static(b"silo"), signature: [9; 64] }),
        Message::Move { cert_der: Bytes::from_static(b"cert"), handover: handover() },
        Message::Transfer(handover()),
        Message::ContentGet { uuid: uuid(), name: "rescue-2026.iso".into(), offset: 1 << 33 },
        Message::ContentItem(Signed { payload: Bytes::from_static(b"manifest"), signature: [3; 64] }),
        Message::Message(Signed { payload: Bytes::new(), signature: [0; 64] }),
        Message::RemoteHelp { enabled: false },
        Message::ChannelOpen { channel: 9, port: 3389, requested_by: "Ada (tech)".into() },
        Message::ChannelAccept { channel: 9 },
        Message::ChannelRefuse { channel: 9, reason: RefuseReason::RemoteHelpDisabled, text: "nö".into() },
        Message::Enroll {
            token: "tok".into(),
            uuid: uuid(),
            hostname: "pc-7".into(),
            csr_der: Bytes::from_static(b"\x30\x03\x02\x01\x00"),
        },
        Message::Enrolled {
            cert_der: Bytes::from_static(b"cert"),
            ca_der: Bytes::from_static(b"ca"),
            signing_key: [0xaa; 32],
            gateways: vec!["a:1".into(), "b:2".into()],
        },
        Message::Close { code: CloseCode::Revoked, text: String::new() },
        Message::Ping { nonce: u64::MAX },
        Message::Pong { nonce: 0 },
        Message::Action(Signed { payload: Bytes::from_static(b"action"), signature: [1; 64] }),
        Message::ActionResult(ActionResult {
            id: uuid(),
            status: ActionStatus::Completed,
            exit_code: -1,
            duration_ms: 12,
            report_seq: Some(4),
            text: String::new(),
            output: Bytes::from_static(b"ok\n"),
            output_truncated: true,
        }),
        Message::MessageState { id: uuid(), read: true },
        Message::Receipt { id: uuid() },
    ]
}

fn action() -> ActionBody {
    ActionBody {
        id: uuid(),
        target: Uuid::nil(),
        kind: ActionKind::Script,
        issued_at: 1,
        expires_at: 2,
        timeout_secs: 60,
        issued_by: "ada".into(),
        body: "echo hi\n".into(),
    }
}

#[test]
fn action_body_exact_bytes_limits_and_codes() {
    let body = action();
    let mut out = BytesMut::new();
    body.encode(&mut out);
    let expected = cat(&[
        uuid().as_bytes(),
        &[0; 16],
        &hex("01 0000000000000001 0000000000000002 0000003c 0003"),
        b"ada",
        &hex("00000008"),
        b"echo hi\n",
    ]);
    assert_eq!(out.to_vec(), expected);
    assert_eq!(out.len(), body.encoded_len());
    assert_eq!(ActionBody::decode(&out), Ok(body.clone()));

    let mut bad_kind = out.to_vec();
    bad_kind[32] = 9;
    assert_eq!(ActionBody::decode(&bad_kind), Err(DecodeError::UnknownCode { field: "action.kind", value: 9 }));

    let longest = ActionBody { body: "x".repeat(MAX_ACTION_BODY), ..body.clone() };
    let mut out = BytesMut::new();
    longest.encode(&mut out);
    assert_eq!(ActionBody::decode(&out), Ok(longest.clone()));
    let longer = ActionBody { body: "x".repeat(MAX_ACTION_BODY + 1), ..body };
    let mut out = BytesMut::new();
    longer.encode(&mut out);
    assert_eq!(
        ActionBody::decode(&out),
        Err(DecodeError::TooLong { field: "action.body", len: MAX_ACTION_BODY + 1, max: MAX_ACTION_BODY })
    );
    // The longest action fits a frame under the default limits, signature and all.
    let mut payload = BytesMut::new();
    longest.encode(&mut payload);
    assert_round_trip(&Message::Action(Signed { payload: payload.freeze(), signature: [2; 64] }), &Limits::default());
}

#[test]
fn action_statuses_round_trip_and_refusals_are_16_up() {
    let defined: Vec<ActionStatus> = (0..=u8::MAX).filter_map(ActionStatus::from_u8).collect();
    assert_eq!(defined.len(), 12);
    for status in defined {
        assert_eq!(ActionStatus::from_u8(status as u8), Some(status));
        assert_eq!(status.is_refusal(), status.as_str().starts_with("refused_"), "{status:?}");
    }
    let mut frame = encode(&Message::MessageState { id: uuid(), read: false });
    assert_eq!(frame.len(), HEADER_LEN + 17);
    *frame.last_mut().unwrap() = 2;
    assert_eq!(decode_default(&frame), Err(DecodeError::UnknownCode { field: "message_state.read", value: 2 }));
}

#[test]
fn samples_cover_every_type_and_round_trip() {
    let samples = samples();
    let types: std::collections::HashSet<_> = samples.iter().map(Message::message_type).collect();
    assert_eq!(types.len(), (0..=u8::MAX).filter_map(MessageType::from_u8).count());
    for message in &samples {
        assert_round_trip(message, &Limits::default());
    }
}

#[test]
fn exact_bytes() {
    assert_eq!(encode(&Message::Ping { nonce: 0x0102 }), hex("01 0e 00000008 0000000000000102"));
    assert_eq!(encode(&Message::Ack { seq: 5 }), hex("01 04 00000008 0000000000000005"));
    assert_eq!(encode(&Message::RemoteHelp { enabled: true }), hex("01 07 00000001 01"));
    assert_eq!(
        encode(&Message::ChannelOpen { channel: 2, port: 5900, requested_by: "ab".into() }),
        cat(&[&hex("01 08 0000000a 00000002 170c 0002"), b"ab"])
    );
    assert_eq!(
        encode(&Message::Close { code: CloseCode::Shutdown, text: "bye".into() }),
        cat(&[&hex("01 0d 00000007 0009 0003"), b"bye"])
    );
    assert_eq!(
        encode(&Message::Hello {
            uuid: uuid(),
            agent_version: "1".into(),
            hostname: String::new(),
            os: "L".into(),
            capabilities: Capabilities::TELEMETRY | Capabilities::MESSAGES,
            remote_help: false,
        }),
        cat(&[
            &hex("01 01 0000001d 123456789abcdef0123456789abcdef0 0001"),
            b"1",
            &hex("0000 0001"),
            b"L",
            &hex("00000005 00"),
        ])
    );
}

#[test]
fn frames_decode_back_to_back_and_byte_by_byte() {
    let samples = samples();
    let stream: Vec<u8> = samples.iter().flat_map(encode).collect();
    let mut buffered = Vec::new();
    let mut decoded = Vec::new();
    for &byte in &stream {
        buffered.push(byte);
        while let Some((message, consumed)) = decode_default(&buffered).expect("valid stream") {
            decoded.push(message);
            buffered.drain(..consumed);
        }
    }
    assert_eq!(decoded, samples);
    assert!(buffered.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Header errors, early

#[test]
fn a_huge_length_is_an_error_with_six_bytes_in() {
    let header = hex("01 03 40000000");
    assert_eq!(
        decode_default(&header),
        Err(DecodeError::TooLong { field: "frame", len: 1 << 30, max: DEFAULT_MAX_FRAME })
    );
    assert_eq!(decode_default(&header[..5]), Ok(None));
    // Exactly at the limit is fine (and incomplete).
    let at_limit = (DEFAULT_MAX_FRAME as u32).to_be_bytes();
    assert_eq!(decode_default(&cat(&[&hex("01 03"), &at_limit])), Ok(None));
    let limits = Limits { max_frame: 7, ..Limits::default() };
    assert_eq!(
        decode(&encode(&Message::Ping { nonce: 1 }), &limits),
        Err(DecodeError::TooLong { field: "frame", len: 8, max: 7 })
    );
}

#[test]
fn bad_version_is_an_error_with_one_byte_in() {
    assert_eq!(decode_default(&[2]), Err(DecodeError::UnsupportedVersion(2)));
    assert_eq!(decode_default(&[0, 1, 0, 0, 0, 0]), Err(DecodeError::UnsupportedVersion(0)));
    assert_eq!(DecodeError::UnsupportedVersion(2).close_code(), CloseCode::UnsupportedVersion);
}

#[test]
fn unknown_type_is_an_error_with_two_bytes_in() {
    assert_eq!(decode_default(&[1, 0]), Err(DecodeError::UnknownType(0)));
    assert_eq!(decode_default(&[1, 25]), Err(DecodeError::UnknownType(25)));
    assert_eq!(DecodeError::UnknownType(25).close_code(), CloseCode::BadMessage);
    assert_eq!(decode_default(&[]), Ok(None));
    assert_eq!(decode_default(&[1]), Ok(None));
}

// ---------------------------------------------------------------------------------------------
// Body errors

#[test]
fn trailing_bytes_in_a_frame_are_an_error() {
    let frame = hex("01 0e 00000009 0000000000000001 00");
    assert_eq!(decode_default(&frame), Err(DecodeError::TrailingBytes { what: "ping", extra: 1 }));
}

#[test]
fn a_body_shorter_than_its_fields_is_truncated() {
    let frame = hex("01 0e 00000007 00000000000000");
    assert_eq!(decode_default(&frame), Err(DecodeError::Truncated { field: "ping.nonce" }));
    // A string claiming more than the frame holds.
    let frame = hex("01 0d 00000005 0000 0005 61");
    assert_eq!(decode_default(&frame), Err(DecodeError::Truncated { field: "close.text" }));
}

#[test]
fn bad_utf8_is_an_error() {
    let frame = hex("01 0d 00000005 0000 0001 ff");
    assert_eq!(decode_default(&frame), Err(DecodeError::BadUtf8 { field: "close.text" }));
}

#[test]
fn unknown_codes_are_errors() {
    assert_eq!(
        decode_default(&hex("01 0d 00000004 000a 0000")),
        Err(DecodeError::UnknownCode { field: "close.code", value: 10 })
    );
    assert_eq!(
        decode_default(&hex("01 0a 00000007 00000001 05 0000")),
        Err(DecodeError::UnknownCode { field: "channel_refuse.reason", value: 5 })
    );
    assert_eq!(
        decode_default(&hex("01 07 00000001 02")),
        Err(DecodeError::UnknownCode { field: "remote_help.enabled", value: 2 })
    );
}

#[test]
fn limits_inside_the_body() {
    let limits = Limits { max_frame: 1 << 20, max_text: 3, max_blob: 4 };
    let close = Message::Close { code: CloseCode::Normal, text: "four".into() };
    assert_eq!(decode(&encode(&close), &limits), Err(DecodeError::TooLong { field: "close.text", len: 4, max: 3 }));
    // The string's length is checked before its bytes arrive: the frame's first 10 bytes suffice.
    let bytes = encode(&close);
    assert_eq!(decode(&bytes[..10], &limits), Ok(None), "the frame is not complete yet");

    let enroll = Message::Enroll {
        token: "t".into(),
        uuid: uuid(),
        hostname: "h".into(),
        csr_der: Bytes::from_static(b"12345"),
    };
    assert_eq!(
        decode(&encode(&enroll), &limits),
        Err(DecodeError::TooLong { field: "enroll.csr_der", len: 5, max: 4 })
    );

    let config = Message::Config(Signed { payload: Bytes::from_static(b"12345"), signature: [0; 64] });
    assert_eq!(
        decode(&encode(&config), &limits),
        Err(DecodeError::TooLong { field: "config.payload", len: 5, max: 4 })
    );

    let gateways: Vec<String> = (0..17).map(|i| format!("g{i}")).collect();
    let enrolled = Message::Enrolled { cert_der: Bytes::new(), ca_der: Bytes::new(), signing_key: [0; 32], gateways };
    assert_eq!(
        decode_default(&encode(&enrolled)),
        Err(DecodeError::TooMany { field: "enrolled.gateways", count: 17, max: MAX_GATEWAYS })
    );
}

#[test]
fn a_bad_nested_report_is_a_telemetry_error() {
    // A report frame whose telemetry has no agent version.
    let frame = hex("01 03 00000014 0000000000000001 0000000000000002 00000000");
    assert_eq!(decode_default(&frame), Err(DecodeError::Telemetry(TelemetryError::MissingAgentVersion)));
    // A nested length past the frame's end.
    let frame = hex("01 03 00000014 0000000000000001 0000000000000002 00000001");
    assert_eq!(decode_default(&frame), Err(DecodeError::Truncated { field: "report.telemetry" }));
}

#[test]
fn a_short_signature_is_truncated() {
    let mut frame = hex("01 05 00000046 00000003 616263");
    frame.extend([0u8; 63]);
    assert_eq!(decode_default(&frame), Err(DecodeError::Truncated { field: "config.signature" }));
}

/// The decoder fills in the parameters a report left out, so a report re-encodes longer than it
/// came: the encoding of a report is not canonical (only the decoded report round-trips).
#[test]
fn a_sparse_report_re_encodes_longer() {
    let frame = hex("01 03 0000001e 0000000000000001 0000000000000002 0000000a 09 0007 0005 302e312e30");
    let (message, consumed) = decode_default(&frame).expect("decodes").expect("complete");
    assert_eq!(consumed, frame.len());
    let again = encode(&message);
    assert!(again.len() > frame.len());
    assert_eq!(decode_default(&again), Ok(Some((message, again.len()))));
}

// ---------------------------------------------------------------------------------------------
// Signed payloads

#[test]
fn signed_message_is_prefix_then_payload() {
    assert_eq!(signed_message(SignDomain::Config, b"abc"), b"tether-config-v1\0abc");
    assert_eq!(signed_message(SignDomain::Message, b""), b"tether-message-v1\0");
    assert_eq!(signed_message(SignDomain::Action, b"x"), b"tether-action-v1\0x");
    // No prefix is a prefix of another: a signature cannot be replayed across kinds.
    assert_eq!(signed_message(SignDomain::PortalSignin, b"{}"), b"tether-portal-signin-v1\0{}");
    let domains = [
        SignDomain::Config,
        SignDomain::Message,
        SignDomain::Action,
        SignDomain::Revocations,
        SignDomain::SiloKey,
        SignDomain::Move,
        SignDomain::SiloExport,
        SignDomain::SiloReport,
        SignDomain::Content,
        SignDomain::PortalSignin,
    ];
    for a in domains {
        for b in domains {
            if a != b {
                assert!(!a.prefix().starts_with(b.prefix()), "{a:?} starts with {b:?}");
            }
        }
    }
}

#[test]
fn config_body_exact_bytes_and_errors() {
    let body = ConfigBody { issued_at: 1, heartbeat_secs: 2, keepalive_secs: 3, gateways: vec!["g:1".into()] };
    let mut out = BytesMut::new();
    body.encode(&mut out);
    assert_eq!(out.to_vec(), cat(&[&hex("0000000000000001 00000002 00000003 0001 0003"), b"g:1"]));
    assert_eq!(out.len(), body.encoded_len());
    assert_eq!(ConfigBody::decode(&out), Ok(body));

    out.put_u8(0);
    assert_eq!(ConfigBody::decode(&out), Err(DecodeError::TrailingBytes { what: "config payload", extra: 1 }));
    assert_eq!(ConfigBody::decode(&out[..5]), Err(DecodeError::Truncated { field: "config.issued_at" }));
}

fn handover() -> Handover {
    let signed = |payload: &'static [u8], byte| Signed { payload: Bytes::from_static(payload), signature: [byte; 64] };
    Handover { order: signed(b"order", 1), silo_key: signed(b"key", 2), export: signed(b"{}", 3) }
}

#[test]
fn move_order_exact_bytes_and_errors() {
    let order = MoveOrder {
        id: uuid(),
        machine: uuid(),
        from: "a".into(),
        to: "b".into(),
        location: "b:1".into(),
        cert_sha256: [0x22; 32],
        issued_at: 5,
    };
    let mut out = BytesMut::new();
    order.encode(&mut out);
    let expected = cat(&[
        uuid().as_bytes(),
        uuid().as_bytes(),
        &hex("0001"),
        b"a",
        &hex("0001"),
        b"b",
        &hex("0003"),
        b"b:1",
        &[0x22; 32],
        &hex("0000000000000005"),
    ]);
    assert_eq!(out.to_vec(), expected);
    assert_eq!(out.len(), order.encoded_len());
    assert_eq!(MoveOrder::decode(&out), Ok(order));
    out.put_u8(0);
    assert_eq!(MoveOrder::decode(&out), Err(DecodeError::TrailingBytes { what: "move order", extra: 1 }));
    assert_eq!(MoveOrder::decode(&out[..36]), Err(DecodeError::Truncated { field: "move.to" }));
}

#[test]
fn a_handover_export_may_be_larger_than_a_blob_but_not_than_its_own_limit() {
    let big = Bytes::from(vec![b'x'; MAX_EXPORT]);
    let mut handover = handover();
    handover.export.payload = big;
    let message = Message::Transfer(handover.clone());
    let mut out = BytesMut::new();
    message.encode(&mut out);
    assert_eq!(decode(&out, &Limits::default()).unwrap().unwrap().0, message);
    handover.export.payload = Bytes::from(vec![b'x'; MAX_EXPORT + 1]);
    let mut out = BytesMut::new();
    Message::Transfer(handover).encode(&mut out);
    let err = decode(&out, &Limits::default()).unwrap_err();
    assert_eq!(err, DecodeError::TooLong { field: "handover.export", len: MAX_EXPORT + 1, max: MAX_EXPORT });
}

#[test]
fn content_manifest_exact_bytes_names_and_limits() {
    let manifest = ContentManifest {
        name: "av-sigs".into(),
        kind: ContentKind::Signatures,
        published_at: 0x0102_0304_0506_0708,
        size: 0x1_0000_0000,
        sha256: [0xAB; 32],
    };
    let mut out = BytesMut::new();
    manifest.encode(&mut out);
    let expected = cat(&[&[0, 7], b"av-sigs", &[1], &[1, 2, 3, 4, 5, 6, 7, 8], &[0, 0, 0, 1, 0, 0, 0, 0], &[0xAB; 32]]);
    assert_eq!(&out[..], &expected[..]);
    assert_eq!(out.len(), manifest.encoded_len());
    assert_eq!(ContentManifest::decode(&out), Ok(manifest.clone()));

    for bad in ["", "Upper", "../etc", "a/b", "-lead", ".hidden", "sp ace", &"x".repeat(65)] {
        assert!(!is_content_name(bad), "{bad:?}");
        let mut out = BytesMut::new();
        ContentManifest { name: bad.into(), ..manifest.clone() }.encode(&mut out);
        assert!(ContentManifest::decode(&out).is_err(), "{bad:?} decoded");
    }
    for good in ["a", "rescue-2026.iso", "av_sigs.v2", &"x".repeat(64)] {
        assert!(is_content_name(good), "{good:?}");
    }

    let mut out = BytesMut::new();
    ContentManifest { size: MAX_CONTENT_SIZE + 1, ..manifest.clone() }.encode(&mut out);
    assert_eq!(
        ContentManifest::decode(&out),
        Err(DecodeError::TooLarge { field: "content.size", size: MAX_CONTENT_SIZE + 1, max: MAX_CONTENT_SIZE })
    );
    let mut out = BytesMut::new();
    manifest.encode(&mut out);
    out[2 + 7] = 4;
    assert_eq!(ContentManifest::decode(&out), Err(DecodeError::UnknownCode { field: "content.kind", value: 4 }));

    // A content request names its item the same way.
    let mut frame = BytesMut::new();
    Message::ContentGet { uuid: uuid(), name: "ok".into(), offset: 0 }.encode(&mut frame);
    let at = HEADER_LEN + 16 + 2;
    frame[at] = b'/';
    assert_eq!(decode_default(&frame), Err(DecodeError::BadName { field: "content_get.name" }));
    assert_eq!(SignDomain::Content.prefix(), b"tether-content-v1\0");
}

#[test]
fn silo_key_body_exact_bytes_and_errors() {
    let body = SiloKeyBody { silo: "a".into(), key: [0x11; 32], issued_at: 2, not_after: 3 };
    let mut out = BytesMut::new();
    body.encode(&mut out);
    let expected = cat(&[&hex("0001"), b"a", &[0x11; 32], &hex("0000000000000002 0000000000000003")]);
    assert_eq!(out.to_vec(), expected);
    assert_eq!(out.len(), body.encoded_len());
    assert_eq!(SiloKeyBody::decode(&out), Ok(body));

    out.put_u8(0);
    assert_eq!(SiloKeyBody::decode(&out), Err(DecodeError::TrailingBytes { what: "silo key payload", extra: 1 }));
    assert_eq!(SiloKeyBody::decode(&out[..10]), Err(DecodeError::Truncated { field: "silo_key.key" }));
}

#[test]
fn message_body_text_limit() {
    let body = MessageBody {
        id: uuid(),
        issued_at: 1,
        expires_at: 2,
        target: Uuid::nil(),
        from: "IT".into(),
        text: "x".repeat(MAX_MESSAGE_TEXT),
    };
    let mut out = BytesMut::new();
    body.encode(&mut out);
    assert_eq!(out.len(), body.encoded_len());
    assert_eq!(MessageBody::decode(&out), Ok(body.clone()));

    let longer = MessageBody { text: "x".repeat(MAX_MESSAGE_TEXT + 1), ..body };
    let mut out = BytesMut::new();
    longer.encode(&mut out);
    assert_eq!(
        MessageBody::decode(&out),
        Err(DecodeError::TooLong { field: "message.text", len: MAX_MESSAGE_TEXT + 1, max: MAX_MESSAGE_TEXT })
    );
}

#[test]
fn capabilities_keep_unknown_bits() {
    let caps = Capabilities::ACTIONS | Capabilities(0x100);
    assert!(caps.contains(Capabilities::ACTIONS));
    assert!(!caps.contains(Capabilities::RELAY));
    assert_eq!(caps.bits(), 0x102);
    let mut all = Capabilities::empty();
    all |= Capabilities::TELEMETRY;
    assert_eq!(all, Capabilities(1));
}

#[test]
fn constants() {
    assert_eq!(ALPN, b"tether/1");
    assert_eq!(DEFAULT_PORT, 4433);
    assert_eq!(Limits::default().max_frame_len(), 256 * 1024 + 6);
}

// ---------------------------------------------------------------------------------------------
// Properties

fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(any::<char>(), 0..=max / 4).prop_map(|c| c.into_iter().collect()),
        proptest::collection::vec(proptest::char::range(' ', '~'), 0..=max).prop_map(|c| c.into_iter().collect()),
    ]
}

fn short_text() -> impl Strategy<Value = String> {
    text(64)
}

fn blob(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn uuids() -> impl Strategy<Value = Uuid> {
    any::<[u8; 16]>().prop_map(Uuid::from_bytes)
}

fn gateways() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(short_text(), 0..=MAX_GATEWAYS)
}

fn signed() -> impl Strategy<Value = Signed> {
    (blob(256), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(payload, a, b)| {
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&a);
        signature[32..].copy_from_slice(&b);
        Signed { payload, signature }
    })
}

fn refuse_reason() -> impl Strategy<Value = RefuseReason> {
    (1u8..=4).prop_map(|code| RefuseReason::from_u8(code).expect("defined"))
}

fn close_code() -> impl Strategy<Value = CloseCode> {
    (0u16..=9).prop_map(|code| CloseCode::from_u16(code).expect("defined"))
}

fn action_status() -> impl Strategy<Value = ActionStatus> {
    prop_oneof![1u8..=4, 16u8..=23].prop_map(|code| ActionStatus::from_u8(code).expect("defined"))
}

fn action_result() -> impl Strategy<Value = ActionResult> {
    (uuids(), action_status(), any::<i32>(), any::<u32>(), any::<Option<u64>>(), short_text(), blob(512), any::<bool>())
        .prop_map(|(id, status, exit_code, duration_ms, report_seq, text, output, output_truncated)| ActionResult {
            id,
            status,
            exit_code,
            duration_ms,
            report_seq,
            text,
            output,
            output_truncated,
        })
}

fn any_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (uuids(), text(DEFAULT_MAX_TEXT), short_text(), short_text(), any::<u32>(), any::<bool>()).prop_map(
            |(uuid, agent_version, hostname, os, caps, remote_help)| Message::Hello {
                uuid,
                agent_version,
                hostname,
                os,
                capabilities: Capabilities(caps),
                remote_help,
            }
        ),
        (any::<i64>(), any::<u32>())
            .prop_map(|(server_time, heartbeat_secs)| Message::Welcome { server_time, heartbeat_secs }),
        (any::<u64>(), any::<i64>(), arbitrary_report()).prop_map(|(seq, taken_at, report)| Message::Report {
            seq,
            taken_at,
            report
        }),
        any::<u64>().prop_map(|seq| Message::Ack { seq }),
        signed().prop_map(Message::Config),
        signed().prop_map(Message::SiloKey),
        (proptest::collection::vec(any::<u8>(), 0..64), signed(), signed(), signed()).prop_map(
            |(cert, order, silo_key, export)| Message::Move {
                cert_der: Bytes::from(cert),
                handover: Handover { order, silo_key, export }
            }
        ),
        (signed(), signed(), signed()).prop_map(|(order, silo_key, export)| Message::Transfer(Handover {
            order,
            silo_key,
            export
        })),
        signed().prop_map(Message::Message),
        any::<bool>().prop_map(|enabled| Message::RemoteHelp { enabled }),
        (any::<u32>(), any::<u16>(), short_text()).prop_map(|(channel, port, requested_by)| Message::ChannelOpen {
            channel,
            port,
            requested_by
        }),
        any::<u32>().prop_map(|channel| Message::ChannelAccept { channel }),
        (any::<u32>(), refuse_reason(), short_text()).prop_map(|(channel, reason, text)| Message::ChannelRefuse {
            channel,
            reason,
            text
        }),
        (short_text(), uuids(), short_text(), blob(512)).prop_map(|(token, uuid, hostname, csr_der)| Message::Enroll {
            token,
            uuid,
            hostname,
            csr_der
        }),
        (blob(512), blob(512), any::<[u8; 32]>(), gateways()).prop_map(|(cert_der, ca_der, signing_key, gateways)| {
            Message::Enrolled { cert_der, ca_der, signing_key, gateways }
        }),
        (close_code(), short_text()).prop_map(|(code, text)| Message::Close { code, text }),
        any::<u64>().prop_map(|nonce| Message::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Message::Pong { nonce }),
        signed().prop_map(Message::Action),
        action_result().prop_map(Message::ActionResult),
        (uuids(), any::<bool>()).prop_map(|(id, read)| Message::MessageState { id, read }),
        uuids().prop_map(|id| Message::Receipt { id }),
        (uuids(), content_names(), any::<u64>()).prop_map(|(uuid, name, offset)| Message::ContentGet {
            uuid,
            name,
            offset
        }),
        signed().prop_map(Message::ContentItem),
    ]
}

fn content_names() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,63}"
}

#[test]
fn strategy_generates_every_message_type() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let types = (0..=u8::MAX).filter_map(MessageType::from_u8).count();
    let strategy = any_message();
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..2000 {
        seen.insert(strategy.new_tree(&mut runner).expect("a value").current().message_type());
    }
    assert_eq!(seen.len(), types, "seen {seen:?}");
}

/// Decodes frames from the front of `bytes` until incomplete or rejected, checking each: consumed
/// within bounds, re-encodes to the same message and length.
fn check_decode_all(bytes: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
    let mut rest = bytes;
    while let Ok(Some((message, consumed))) = decode(rest, limits) {
        prop_assert!(consumed >= HEADER_LEN && consumed <= rest.len());
        prop_assert!(consumed <= limits.max_frame_len());
        let again = encode(&message);
        prop_assert_eq!(again.len(), message.encoded_len());
        // A report may re-encode longer than it came (absent parameters filled in), past a tiny
        // max_frame; every other message re-encodes to the length it was decoded from.
        let limits = &match message {
            Message::Report { .. } => Limits { max_frame: limits.max_frame.max(again.len() - HEADER_LEN), ..*limits },
            _ => {
                prop_assert_eq!(again.len(), consumed);
                *limits
            }
        };
        prop_assert_eq!(decode(&again, limits), Ok(Some((message, again.len()))));
        rest = &rest[consumed..];
    }
    Ok(())
}

proptest! {
    #[test]
    fn prop_round_trip(message in any_message()) {
        let bytes = encode(&message);
        prop_assert_eq!(bytes.len(), message.encoded_len());
        prop_assert_eq!(decode_default(&bytes), Ok(Some((message.clone(), bytes.len()))));
        for cut in 0..bytes.len() {
            prop_assert_eq!(decode_default(&bytes[..cut]), Ok(None), "prefix of {} bytes", cut);
        }
        // Followed by another frame, it still ends where it should.
        let mut stream = bytes.clone();
        stream.extend(encode(&Message::Ping { nonce: 1 }));
        prop_assert_eq!(decode_default(&stream), Ok(Some((message, bytes.len()))));
    }

    #[test]
    fn prop_signed_payloads_round_trip(
        issued_at in any::<i64>(), heartbeat_secs in any::<u32>(), keepalive_secs in any::<u32>(),
        gateways in gateways(),
        id in uuids(), expires_at in any::<i64>(), target in uuids(),
        from in text(MAX_PAYLOAD_TEXT), text in text(MAX_MESSAGE_TEXT),
    ) {
        let config = ConfigBody { issued_at, heartbeat_secs, keepalive_secs, gateways };
        let mut out = BytesMut::new();
        config.encode(&mut out);
        prop_assert_eq!(out.len(), config.encoded_len());
        prop_assert_eq!(ConfigBody::decode(&out), Ok(config));

        let message = MessageBody { id, issued_at, expires_at, target, from: from.clone(), text: text.clone() };
        let mut out = BytesMut::new();
        message.encode(&mut out);
        prop_assert_eq!(out.len(), message.encoded_len());
        prop_assert_eq!(MessageBody::decode(&out), Ok(message));

        let kind = if heartbeat_secs % 2 == 0 { ActionKind::Script } else { ActionKind::Instructions };
        let action = ActionBody { id, target, kind, issued_at, expires_at, timeout_secs: keepalive_secs, issued_by: from.clone(), body: text };
        let mut out = BytesMut::new();
        action.encode(&mut out);
        prop_assert_eq!(out.len(), action.encoded_len());
        prop_assert_eq!(ActionBody::decode(&out), Ok(action));

        let mut key = [0u8; 32];
        key[..16].copy_from_slice(id.as_bytes());
        key[16..].copy_from_slice(target.as_bytes());
        let silo_key = SiloKeyBody { silo: target.to_string(), key, issued_at, not_after: expires_at };
        let mut out = BytesMut::new();
        silo_key.encode(&mut out);
        prop_assert_eq!(out.len(), silo_key.encoded_len());
        prop_assert_eq!(SiloKeyBody::decode(&out), Ok(silo_key));

        let order = MoveOrder { id, machine: target, from: from.clone(), to: from.clone(), location: from, cert_sha256: key, issued_at };
        let mut out = BytesMut::new();
        order.encode(&mut out);
        prop_assert_eq!(out.len(), order.encoded_len());
        prop_assert_eq!(MoveOrder::decode(&out), Ok(order));
    }

    #[test]
    fn prop_content_manifests_round_trip(
        name in content_names(), kind in 1u8..=3, published_at in any::<i64>(),
        size in 0..=MAX_CONTENT_SIZE, sha256 in any::<[u8; 32]>(),
    ) {
        let kind = ContentKind::from_u8(kind).expect("defined");
        prop_assert_eq!(ContentKind::from_name(kind.name()), Some(kind));
        let manifest = ContentManifest { name, kind, published_at, size, sha256 };
        let mut out = BytesMut::new();
        manifest.encode(&mut out);
        prop_assert_eq!(out.len(), manifest.encoded_len());
        prop_assert_eq!(ContentManifest::decode(&out), Ok(manifest));
    }

    #[test]
    fn prop_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_decode_all(&bytes, &Limits::default())?;
        check_decode_all(&bytes, &Limits { max_frame: 64, max_text: 8, max_blob: 16 })?;
        let _ = ConfigBody::decode(&bytes);
        let _ = MessageBody::decode(&bytes);
        let _ = ActionBody::decode(&bytes);
        let _ = SiloKeyBody::decode(&bytes);
        let _ = MoveOrder::decode(&bytes);
        let _ = ContentManifest::decode(&bytes);
    }

    /// Valid headers and small lengths, so that decoding gets into the bodies.
    #[test]
    fn prop_arbitrary_bodies(
        code in 1u8..=24,
        body in proptest::collection::vec(prop_oneof![3 => 0u8..4, 1 => any::<u8>()], 0..256),
    ) {
        let mut bytes = vec![VERSION, code];
        bytes.extend((body.len() as u32).to_be_bytes());
        bytes.extend(body);
        check_decode_all(&bytes, &Limits::default())?;
        check_decode_all(&bytes, &Limits { max_frame: 64, max_text: 3, max_blob: 5 })?;
    }

    /// Valid streams with some bytes overwritten: no panic, consistent results.
    #[test]
    fn prop_mutated_frames(
        messages in proptest::collection::vec(any_message(), 1..4),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes: Vec<u8> = messages.iter().flat_map(encode).collect();
        for (at, value) in edits {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        check_decode_all(&bytes, &Limits::default())?;
    }
}
