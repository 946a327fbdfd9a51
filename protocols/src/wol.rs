//! Wake-on-LAN magic packets: six 0xFF bytes, then the target's MAC address sixteen times
//! (optionally followed by a 4- or 6-byte SecureOn password). Sent as the payload of a raw
//! Ethernet frame (EtherType 0x0842, to the broadcast address) or of a UDP broadcast to port 9;
//! a network card wakes its PC when the pattern appears anywhere in a frame it receives.
//!
//! What this module does: MAC addresses ([`Mac`]: parse and print), the magic payload
//! ([`magic_packet`]), the Ethernet frame ([`ethernet_frame`]), and finding the target of a magic
//! pattern in captured bytes ([`find_target`]), which tests use to check what went on the wire.
//! No I/O: the gateway sends the bytes (pnet for the raw frame).

use std::fmt;
use std::str::FromStr;

/// The EtherType of a Wake-on-LAN frame.
pub const ETHERTYPE: u16 = 0x0842;
/// The UDP port magic packets are broadcast to (the "discard" port; 7 is also used).
pub const UDP_PORT: u16 = 9;
/// The synchronisation stream.
pub const SYNC: [u8; 6] = [0xFF; 6];
/// Bytes of a magic payload without a password.
pub const MAGIC_LEN: usize = 6 + 16 * 6;
/// Bytes of an Ethernet header (destination, source, EtherType).
pub const ETHERNET_HEADER_LEN: usize = 14;

/// A 48-bit MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xFF; 6]);

    /// Whether the address is a unicast one a PC can have (not broadcast or multicast, not zero).
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0 && self.0 != [0; 6]
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Why text is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (six hex pairs separated by ':' or '-', e.g. 00:1a:2b:3c:4d:5e)")]
pub struct MacError(pub String);

impl FromStr for Mac {
    type Err = MacError;

    fn from_str(text: &str) -> Result<Mac, MacError> {
        let bad = || MacError(text.chars().take(40).collect());
        let separator = if text.contains('-') { '-' } else { ':' };
        let parts: Vec<&str> = text.trim().split(separator).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (slot, part) in mac.iter_mut().zip(parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        Ok(Mac(mac))
    }
}

/// A SecureOn password: 4 or 6 bytes after the repetitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Password {
    Four([u8; 4]),
    Six([u8; 6]),
}

/// The magic payload that wakes `target`.
pub fn magic_packet(target: Mac, password: Option<Password>) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC_LEN + 6);
    out.extend_from_slice(&SYNC);
    for _ in 0..16 {
        out.extend_from_slice(&target.0);
    }
    match password {
        Some(Password::Four(p)) => out.extend_from_slice(&p),
        Some(Password::Six(p)) => out.extend_from_slice(&p),
        None => {}
    }
    out
}

/// An Ethernet frame from `source` to the broadcast address carrying the magic payload for
/// `target` (EtherType 0x0842; the NIC adds the FCS).
pub fn ethernet_frame(source: Mac, target: Mac, password: Option<Password>) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETHERNET_HEADER_LEN + MAGIC_LEN + 6);
    frame.extend_from_slice(&Mac::BROADCAST.0);
    frame.extend_from_slice(&source.0);
    frame.extend_from_slice(&ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(&magic_packet(target, password));
    frame
}

/// The target of the first magic pattern in `bytes` (anywhere, as a NIC looks for it): six 0xFF
/// followed by one address sixteen times.
pub fn find_target(bytes: &[u8]) -> Option<Mac> {
    let mut start = 0;
    while start + MAGIC_LEN <= bytes.len() {
        let window = &bytes[start..start + MAGIC_LEN];
        if window[..6] == SYNC {
            let first: [u8; 6] = window[6..12].try_into().ok()?;
            if window[6..].chunks_exact(6).all(|chunk| chunk == first) {
                return Some(Mac(first));
            }
        }
        start += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn macs_parse_with_colons_or_dashes_and_print_with_colons() {
        let mac: Mac = "00:1A:2b:3c:4d:5E".parse().unwrap();
        assert_eq!(mac.0, [0x00, 0x1A, 0x2B, 0x3C, 0x4D, 0x5E]);
        assert_eq!(mac.to_string(), "00:1a:2b:3c:4d:5e");
        assert_eq!("00-1a-2b-3c-4d-5e".parse::<Mac>(), Ok(mac));
        for bad in
            ["", "00:1a:2b:3c:4d", "00:1a:2b:3c:4d:5e:6f", "0:1a:2b:3c:4d:5e", "zz:1a:2b:3c:4d:5e", "001a2b3c4d5e"]
        {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?}");
        }
        assert!(mac.is_unicast());
        assert!(!Mac::BROADCAST.is_unicast());
        assert!(!Mac([0x01, 0, 0x5E, 0, 0, 1]).is_unicast());
    }

    #[test]
    fn the_frame_is_broadcast_with_the_wol_ethertype_and_the_pattern() {
        let (source, target) = (Mac([2, 0, 0, 0, 0, 1]), Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        let frame = ethernet_frame(source, target, None);
        assert_eq!(frame.len(), ETHERNET_HEADER_LEN + MAGIC_LEN);
        assert_eq!(&frame[..6], &[0xFF; 6]);
        assert_eq!(&frame[6..12], &source.0);
        assert_eq!(&frame[12..14], &[0x08, 0x42]);
        assert_eq!(find_target(&frame), Some(target));
        let with_password = magic_packet(target, Some(Password::Six([1, 2, 3, 4, 5, 6])));
        assert_eq!(with_password.len(), MAGIC_LEN + 6);
        assert_eq!(find_target(&with_password), Some(target));
        let mut broken = magic_packet(target, None);
        broken[50] ^= 1;
        assert_eq!(find_target(&broken), None, "one repetition differs");
    }

    proptest! {
        #[test]
        fn the_target_is_found_behind_any_prefix(
            target: [u8; 6],
            prefix in proptest::collection::vec(0u8..0xFF, 0..40),
            suffix in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut bytes = prefix;
            bytes.extend_from_slice(&magic_packet(Mac(target), None));
            bytes.extend_from_slice(&suffix);
            prop_assert_eq!(find_target(&bytes), Some(Mac(target)));
        }

        #[test]
        fn any_bytes_are_searched_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = find_target(&bytes);
        }

        #[test]
        fn printed_macs_parse_back(mac: [u8; 6]) {
            prop_assert_eq!(Mac(mac).to_string().parse::<Mac>(), Ok(Mac(mac)));
        }
    }
}
