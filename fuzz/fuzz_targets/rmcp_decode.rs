//! Fuzzes the RMCP presence decoder with arbitrary datagrams, as anything on a LAN could answer a
//! scan on UDP 623. A decoded message re-encodes to `encoded_len()` bytes that decode to the same
//! message, and a pong's AMT reading never panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::rmcp::{decode, encode, Message};

fuzz_target!(|datagram: &[u8]| {
    if let Ok(message) = decode(datagram) {
        let mut wire = Vec::new();
        encode(&message, &mut wire);
        assert_eq!(wire.len(), message.encoded_len());
        assert_eq!(decode(&wire), Ok(message));
        if let Message::Pong { pong, .. } = message {
            let _ = pong.amt();
        }
    }
});
