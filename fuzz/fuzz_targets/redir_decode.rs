//! Fuzzes the redirection decoder with arbitrary bytes, as either peer could send them.
//!
//! Decodes messages from the front of the input, as sent by the console and as sent by the
//! device, until it is incomplete or rejected, and checks for each one: it consumed at least one
//! byte, no more than it had and no more than `Limits::max_message_len`; the sender may send its
//! type; the message re-encodes to exactly as many bytes as were consumed, which decode to the
//! same message consuming all of them; and every strict prefix of those bytes is incomplete. Runs
//! under the default limits and under tiny ones (so that the limit checks are reached with small
//! inputs too).

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::redir::{decode, encode, Limits, Sender};

fuzz_target!(|input: &[u8]| {
    let tiny = Limits { max_data: 8, max_auth_payload: 24, max_auth_string: 4 };
    for from in [Sender::Console, Sender::Device] {
        decode_all(input, from, &Limits::default());
        decode_all(input, from, &tiny);
    }
});

fn decode_all(input: &[u8], from: Sender, limits: &Limits) {
    let mut rest = input;
    while let Ok(Some((message, consumed))) = decode(rest, from, limits) {
        assert!(consumed > 0, "consumed nothing: {message:?}");
        assert!(consumed <= rest.len(), "consumed {consumed} of {} bytes: {message:?}", rest.len());
        assert!(consumed <= limits.max_message_len(), "a {consumed}-byte message under {limits:?}: {message:?}");
        assert!(message.message_type().sent_by(from), "{message:?} decoded from the {from:?}");

        let mut wire = Vec::new();
        encode(&message, &mut wire);
        assert_eq!(wire.len(), consumed, "re-encoded to a different length: {message:?}");
        assert_eq!(decode(&wire, from, limits), Ok(Some((message.clone(), consumed))), "re-encoded {message:?}");
        for cut in 0..wire.len() {
            assert_eq!(decode(&wire[..cut], from, limits), Ok(None), "prefix of {cut} bytes: {message:?}");
        }
        rest = &rest[consumed..];
    }
}
