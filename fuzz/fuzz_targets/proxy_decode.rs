//! Fuzzes the PROXY v2 decoder with arbitrary bytes, as a load balancer (or anything else that
//! reaches a listener expecting the header) could send them.
//!
//! Checks, for the input and for the input behind a valid signature (so that most runs get past
//! the first 12 bytes): `header_len` and `decode` agree (a failure in the fixed part is the same
//! from both, `Ok(None)` only while fewer bytes than the announced length are in); a decoded
//! header consumed no more than it had, no more than `MAX_HEADER_LEN` and exactly the announced
//! length; a LOCAL header carries no addresses; and the header re-encodes to `encoded_len()`
//! bytes, which decode to the same header consuming exactly that many, with every strict prefix
//! incomplete.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::proxy::{decode, encode, header_len, Command, Header, FIXED_LEN, MAX_HEADER_LEN, SIGNATURE};

fuzz_target!(|input: &[u8]| {
    check(input);
    let mut signed = SIGNATURE.to_vec();
    signed.extend_from_slice(input);
    check(&signed);
});

fn check(input: &[u8]) {
    let announced = header_len(input);
    match decode(input) {
        Ok(Some((header, consumed))) => {
            assert!(consumed <= input.len(), "consumed {consumed} of {} bytes: {header:?}", input.len());
            assert!(consumed <= MAX_HEADER_LEN, "a {consumed}-byte header: {header:?}");
            assert_eq!(announced, Ok(Some(consumed)), "header_len disagrees with decode: {header:?}");
            if header.command == Command::Local {
                assert_eq!(header.addresses, None, "a LOCAL header with addresses");
            }
            check_round_trip(&header);
        }
        Ok(None) => match announced {
            Ok(None) => assert!(input.len() < FIXED_LEN, "incomplete fixed part of {} bytes", input.len()),
            Ok(Some(len)) => assert!(input.len() < len, "incomplete with {} of the {len} bytes announced", input.len()),
            Err(e) => panic!("decode wants more where header_len fails: {e:?}"),
        },
        Err(e) => match announced {
            Err(fixed) => assert_eq!(fixed, e, "header_len and decode fail differently"),
            Ok(Some(len)) => assert!(input.len() >= len, "{e:?} with {} of the {len} bytes announced", input.len()),
            Ok(None) => panic!("decode fails ({e:?}) where header_len wants more"),
        },
    }
}

fn check_round_trip(header: &Header) {
    let mut wire = Vec::new();
    encode(header, &mut wire);
    let len = header.encoded_len();
    assert_eq!(wire.len(), len, "encoded_len disagrees with encode: {header:?}");
    for cut in 0..len {
        assert_eq!(decode(&wire[..cut]), Ok(None), "prefix of {cut} of {len} bytes: {header:?}");
    }
    wire.extend_from_slice(b"\x16\x03\x01");
    assert_eq!(decode(&wire), Ok(Some((*header, len))), "re-encoded header decodes differently");
}
