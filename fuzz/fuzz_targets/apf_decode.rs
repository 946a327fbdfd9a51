//! Fuzzes the APF decoder with arbitrary bytes, as a peer could send them.
//!
//! Decodes messages from the front of the input until it is incomplete or rejected, and checks
//! for each one: it consumed at least one byte, no more than it had and no more than
//! `Limits::max_message_len`; the message re-encodes to `encoded_len()` bytes, which decode to
//! the same message consuming exactly that many; and every strict prefix of those bytes is
//! incomplete. Runs under the default limits and under tiny ones
//! (so that the limit checks are reached with small inputs too).

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocols::apf::{decode, Limits, Message};

/// Ends the lookahead of the messages whose end depends on the byte after them (REQUEST_SUCCESS
/// without a port, USERAUTH_FAILURE with a one-byte flag).
fn sentinel() -> Message {
    Message::KeepaliveRequest { cookie: 0x5e57_1e11 }
}

fuzz_target!(|input: &[u8]| {
    decode_all(input, &Limits::default());
    decode_all(input, &Limits { max_string: 16, max_data: 64 });
});

fn decode_all(input: &[u8], limits: &Limits) {
    let mut rest = input;
    while let Ok(Some((message, consumed))) = decode(rest, limits) {
        assert!(consumed > 0, "consumed nothing: {message:?}");
        assert!(consumed <= rest.len(), "consumed {consumed} of {} bytes: {message:?}", rest.len());
        assert!(consumed <= limits.max_message_len(), "a {consumed}-byte message under {limits:?}: {message:?}");
        check_round_trip(&message, limits);
        rest = &rest[consumed..];
    }
}

fn check_round_trip(message: &Message, limits: &Limits) {
    let mut wire = BytesMut::new();
    message.encode(&mut wire);
    let len = message.encoded_len();
    assert_eq!(wire.len(), len, "encoded_len disagrees with encode: {message:?}");

    for cut in 0..len {
        assert_eq!(decode(&wire[..cut], limits), Ok(None), "prefix of {cut} of {len} bytes: {message:?}");
    }

    sentinel().encode(&mut wire);
    match decode(&wire, limits) {
        Ok(Some((again, consumed))) => {
            assert_eq!(&again, message, "re-encoded message decodes differently");
            assert_eq!(consumed, len, "re-encoded message consumed differently: {message:?}");
        }
        other => panic!("re-encoded {message:?} does not decode: {other:?}"),
    }
}
