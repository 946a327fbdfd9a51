//! Fuzzes the agent protocol's frame decoder and the telemetry decoder with arbitrary bytes, as an
//! agent (or a gateway) could send them.
//!
//! Decodes frames from the front of the input until it is incomplete or rejected, and checks for
//! each one: it consumed at least a header, no more than it had and no more than
//! `Limits::max_frame_len`; the message re-encodes to `encoded_len()` bytes, which decode to the
//! same message consuming exactly that many; and every strict prefix of those bytes is incomplete.
//! Runs under the default limits and under tiny ones (so that the limit checks are reached with
//! small inputs too). The whole input is also decoded as a telemetry report, and a report that
//! decodes must re-encode to `encoded_len()` bytes that decode to the same report; signed payloads
//! that decode must round-trip likewise.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocols::tap::{
    decode, ActionBody, ConfigBody, ContentManifest, Limits, Message, MessageBody, MoveOrder, SiloKeyBody, HEADER_LEN,
};
use protocols::telemetry::decode_report;

fuzz_target!(|input: &[u8]| {
    decode_all(input, &Limits::default());
    decode_all(input, &Limits { max_frame: 64, max_text: 8, max_blob: 16 });
    check_report(input);
    check_payloads(input);
});

fn decode_all(input: &[u8], limits: &Limits) {
    let mut rest = input;
    while let Ok(Some((message, consumed))) = decode(rest, limits) {
        assert!(consumed >= HEADER_LEN, "consumed {consumed} bytes: {message:?}");
        assert!(consumed <= rest.len(), "consumed {consumed} of {} bytes: {message:?}", rest.len());
        assert!(consumed <= limits.max_frame_len(), "a {consumed}-byte frame under {limits:?}: {message:?}");
        check_round_trip(&message, limits);
        rest = &rest[consumed..];
    }
}

fn check_round_trip(message: &Message, limits: &Limits) {
    let mut wire = BytesMut::new();
    message.encode(&mut wire);
    let len = message.encoded_len();
    assert_eq!(wire.len(), len, "encoded_len disagrees with encode: {message:?}");
    // A report's encoding is not canonical: the decoder fills in parameters that were absent and
    // skips tags it does not know, so the re-encoded frame may be longer than the one decoded, and
    // over a tiny `max_frame`. Every other message re-encodes to the length it was decoded from.
    let limits = &match message {
        Message::Report { .. } => Limits { max_frame: limits.max_frame.max(len - HEADER_LEN), ..*limits },
        _ => *limits,
    };

    for cut in 0..len {
        assert_eq!(decode(&wire[..cut], limits), Ok(None), "prefix of {cut} of {len} bytes: {message:?}");
    }

    // Followed by another frame, the message still ends where it should.
    Message::Ping { nonce: 0x5e57_1e11 }.encode(&mut wire);
    match decode(&wire, limits) {
        Ok(Some((again, consumed))) => {
            assert_eq!(&again, message, "re-encoded message decodes differently");
            assert_eq!(consumed, len, "re-encoded message consumed differently: {message:?}");
        }
        other => panic!("re-encoded {message:?} does not decode: {other:?}"),
    }
}

fn check_report(input: &[u8]) {
    let Ok(report) = decode_report(input) else { return };
    let mut wire = BytesMut::new();
    report.encode(&mut wire);
    assert_eq!(wire.len(), report.encoded_len(), "encoded_len disagrees with encode: {report:?}");
    assert_eq!(decode_report(&wire), Ok(report), "re-encoded report decodes differently");
}

fn check_payloads(input: &[u8]) {
    if let Ok(config) = ConfigBody::decode(input) {
        let mut wire = BytesMut::new();
        config.encode(&mut wire);
        assert_eq!(wire.len(), config.encoded_len());
        assert_eq!(&wire[..], input, "a config payload has one encoding");
    }
    if let Ok(body) = MessageBody::decode(input) {
        let mut wire = BytesMut::new();
        body.encode(&mut wire);
        assert_eq!(wire.len(), body.encoded_len());
        assert_eq!(&wire[..], input, "a message payload has one encoding");
    }
    if let Ok(body) = ActionBody::decode(input) {
        let mut wire = BytesMut::new();
        body.encode(&mut wire);
        assert_eq!(wire.len(), body.encoded_len());
        assert_eq!(&wire[..], input, "an action payload has one encoding");
    }
    if let Ok(body) = SiloKeyBody::decode(input) {
        let mut wire = BytesMut::new();
        body.encode(&mut wire);
        assert_eq!(wire.len(), body.encoded_len());
        assert_eq!(&wire[..], input, "a silo key payload has one encoding");
    }
    if let Ok(order) = MoveOrder::decode(input) {
        let mut wire = BytesMut::new();
        order.encode(&mut wire);
        assert_eq!(wire.len(), order.encoded_len());
        assert_eq!(&wire[..], input, "a move order has one encoding");
    }
    if let Ok(manifest) = ContentManifest::decode(input) {
        let mut wire = BytesMut::new();
        manifest.encode(&mut wire);
        assert_eq!(wire.len(), manifest.encoded_len());
        assert_eq!(&wire[..], input, "a content manifest has one encoding");
    }
}
