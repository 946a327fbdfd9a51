//! Fuzzes the maintenance entitlement decoder with arbitrary bytes, as anyone who can get a
//! certificate in front of a silo or a client could put them in the extension.
//!
//! An input that decodes is DER, and DER is canonical: the entitlement re-encodes to exactly the
//! input, and those bytes decode to the same entitlement. An input over `MAX_LEN` never decodes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::entitlement::{Entitlement, MAX_LEN};

fuzz_target!(|input: &[u8]| {
    let Ok(entitlement) = Entitlement::decode(input) else { return };
    assert!(input.len() <= MAX_LEN, "decoded {} bytes: {entitlement:?}", input.len());
    let wire = match entitlement.encode() {
        Ok(wire) => wire,
        Err(e) => panic!("decoded {entitlement:?} does not encode: {e}"),
    };
    assert_eq!(wire, input, "a decoded entitlement has one encoding: {entitlement:?}");
    assert_eq!(Entitlement::decode(&wire), Ok(entitlement));
});
