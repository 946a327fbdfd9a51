//! Fuzzes the Wake-on-LAN pattern search with arbitrary captured bytes: it never panics, and a
//! target it finds is one whose magic payload is really in the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::wol::{find_target, magic_packet};

fuzz_target!(|bytes: &[u8]| {
    if let Some(target) = find_target(bytes) {
        let magic = magic_packet(target, None);
        assert!(bytes.windows(magic.len()).any(|w| w == magic.as_slice()), "{target} found but not there");
    }
});
