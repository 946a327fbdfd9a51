//! Tests of the PROXY v2 codec: headers as HAProxy sends them, byte for byte; every family,
//! transport and command; TLVs; early failure on each field; the length limit; streaming (every
//! strict prefix is incomplete, never once the announced length is in); property tests over
//! every header, with TLVs, and over arbitrary bytes.

use super::*;
use crate::test_util::hex;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Helpers

/// The signature in hex, to start hand-made headers with.
const SIG: &str = "0d0a0d0a 000d0a51 5549540a";

/// A header from hex pieces after the signature.
fn after_sig(rest: &str) -> Vec<u8> {
    hex(&format!("{SIG} {rest}"))
}

fn wire(header: &Header) -> Vec<u8> {
    let mut out = Vec::new();
    encode(header, &mut out);
    out
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// Decodes one complete header, panicking on anything else.
fn decode_complete(bytes: &[u8]) -> (Header, usize) {
    match decode(bytes) {
        Ok(Some(decoded)) => decoded,
        other => panic!("expected a complete header from {bytes:02x?}, got {other:?}"),
    }
}

fn assert_every_strict_prefix_incomplete(bytes: &[u8]) {
    for cut in 0..bytes.len() {
        assert_eq!(decode(&bytes[..cut]), Ok(None), "prefix of {cut} bytes of {bytes:02x?}");
    }
}

/// `bytes` decode to `header`, consuming all of them, also when followed by other bytes, and
/// every strict prefix is incomplete.
fn assert_decodes_to(bytes: &[u8], header: Header) {
    assert_eq!(decode(bytes), Ok(Some((header, bytes.len()))), "{bytes:02x?}");
    assert_eq!(header_len(bytes), Ok(Some(bytes.len())));
    let mut followed = bytes.to_vec();
    followed.extend_from_slice(b"\x16\x03\x01\x02\x00");
    assert_eq!(decode(&followed), Ok(Some((header, bytes.len()))));
    assert_every_strict_prefix_incomplete(bytes);
}

fn proxy4(source: &str, destination: &str) -> Header {
    Header::proxy(addr(source), addr(destination))
}

// ---------------------------------------------------------------------------------------------
// Headers as HAProxy sends them

/// HAProxy (1.8 through 3.x, 2.6 included) with `send-proxy-v2` and no `proxy-v2-options`,
/// relaying a TCP connection from 172.19.0.1:42578 to 172.19.0.3:80: the 28 bytes of a public
/// capture (the PROXY v2 experiment in github.com/seriousben/experiment-proxy-protocol), the
/// client's first bytes (`GET `) right behind.
const HAPROXY_TCP4: &str = "0d0a0d0a 000d0a51 5549540a 21 11 000c ac130001 ac130003 a652 0050";

#[test]
fn haproxy_ipv4_tcp_header() {
    let bytes = hex(HAPROXY_TCP4);
    assert_eq!(bytes.len(), 28);
    let expected = proxy4("172.19.0.1:42578", "172.19.0.3:80");
    assert_decodes_to(&bytes, expected);
    assert_eq!(expected.addresses.map(|a| a.source()), Some(addr("172.19.0.1:42578")));
    assert_eq!(expected.addresses.map(|a| a.destination()), Some(addr("172.19.0.3:80")));

    let mut stream = bytes.clone();
    stream.extend_from_slice(b"GET / HTTP/1.1\r\n");
    assert_eq!(decode_complete(&stream), (expected, 28));
}

#[test]
fn encode_writes_what_haproxy_sends() {
    assert_eq!(wire(&proxy4("172.19.0.1:42578", "172.19.0.3:80")), hex(HAPROXY_TCP4));
    // Health checks: LOCAL, AF_UNSPEC, no address block (16 bytes).
    assert_eq!(wire(&Header::local()), after_sig("20 00 0000"));
}

#[test]
fn haproxy_health_check_is_local() {
    assert_decodes_to(&after_sig("20 00 0000"), Header::local());
}

#[test]
fn ipv6_tcp_header() {
    let bytes = after_sig(
        "21 21 0024
         20010db8 00000000 00000000 00000001
         20010db8 00000000 00000000 00000002
         d431 10e1",
    );
    let expected = Header::proxy(addr("[2001:db8::1]:54321"), addr("[2001:db8::2]:4321"));
    assert_decodes_to(&bytes, expected);
    assert_eq!(wire(&expected), bytes);
}

#[test]
fn mixed_families_are_sent_as_ipv4_mapped_ipv6() {
    let header = Header::proxy(addr("192.0.2.7:1234"), addr("[2001:db8::2]:4433"));
    let Some(Addresses::Inet6 { source, .. }) = header.addresses else { panic!("{header:?}") };
    assert_eq!(source, "[::ffff:192.0.2.7]:1234".parse().unwrap());
    let bytes = wire(&header);
    assert_eq!(bytes.len(), 52);
    assert_decodes_to(&bytes, header);
}

#[test]
fn udp_headers_report_addresses() {
    let bytes = after_sig("21 12 000c c0000207 c6336401 04d2 115c");
    assert_decodes_to(&bytes, proxy4("192.0.2.7:1234", "198.51.100.1:4444"));
    let bytes = after_sig(&format!("21 22 0024 {} {} 0001 0002", "00".repeat(15) + "01", "00".repeat(15) + "02"));
    assert_decodes_to(&bytes, Header::proxy(addr("[::1]:1"), addr("[::2]:2")));
}

#[test]
fn encoded_len_is_what_encode_writes() {
    for header in [
        Header::local(),
        Header { command: Command::Proxy, addresses: None },
        proxy4("10.0.0.1:1", "10.0.0.2:2"),
        Header::proxy(addr("[::1]:1"), addr("[::2]:2")),
    ] {
        assert_eq!(wire(&header).len(), header.encoded_len(), "{header:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Commands and families without addresses

#[test]
fn local_ignores_its_family_and_block() {
    // Addresses after a LOCAL command are skipped, not reported.
    let with_addresses = after_sig("20 11 000c 0a000001 0a000002 0001 0002");
    assert_decodes_to(&with_addresses, Header::local());
    let with = Header {
        command: Command::Local,
        addresses: Some(Addresses::from_pair(addr("10.0.0.1:1"), addr("10.0.0.2:2"))),
    };
    assert_eq!(wire(&with), with_addresses);
    // Even an unassigned family, and a block too short for any family.
    assert_decodes_to(&after_sig("20 ff 0005 0102030405"), Header::local());
}

#[test]
fn families_without_addresses_decode_to_none() {
    let unspec = Header { command: Command::Proxy, addresses: None };
    assert_decodes_to(&after_sig("21 00 0000"), unspec);
    // AF_UNSPEC's block (and whatever TLVs it may hold) is skipped whole.
    assert_decodes_to(&after_sig("21 00 0003 ffffff"), unspec);
    assert_eq!(wire(&unspec), after_sig("21 00 0000"));

    // AF_UNIX: two 108-byte paths, skipped.
    let unix = after_sig(&format!("21 31 00d8 {}", "2f".repeat(216)));
    assert_decodes_to(&unix, unspec);
    let unix_dgram = after_sig(&format!("21 32 00dc {} 04 0001 00", "00".repeat(216)));
    assert_decodes_to(&unix_dgram, unspec);

    // A known family over the UNSPEC transport: the block has no defined layout.
    assert_decodes_to(&after_sig("21 10 0003 010203"), unspec);
    assert_decodes_to(&after_sig("21 20 0000"), unspec);
}

// ---------------------------------------------------------------------------------------------
// TLVs

#[test]
fn tlvs_are_skipped() {
    let header = proxy4("172.19.0.1:42578", "172.19.0.3:80");
    // PP2_TYPE_NOOP with 3 bytes, PP2_TYPE_AUTHORITY "gw.example", an empty PP2_TYPE_UNIQUE_ID.
    let bytes = after_sig(&format!(
        "21 11 {:04x} ac130001 ac130003 a652 0050 04 0003 000000 02 000a {} 05 0000",
        12 + 6 + 13 + 3,
        hex_of(b"gw.example")
    ));
    assert_decodes_to(&bytes, header);
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn tlvs_must_fit_the_header() {
    // One or two bytes after the addresses: not even a TLV's type and length.
    assert_eq!(
        decode(&after_sig("21 11 000d 0a000001 0a000002 0001 0002 04")),
        Err(ProxyError::TlvTruncated { offset: 28, left: 1 })
    );
    assert_eq!(
        decode(&after_sig("21 11 000e 0a000001 0a000002 0001 0002 04 00")),
        Err(ProxyError::TlvTruncated { offset: 28, left: 2 })
    );
    // A TLV announcing more than the header holds (the second one, after a good NOOP).
    assert_eq!(
        decode(&after_sig("21 11 0014 0a000001 0a000002 0001 0002 04 0000 02 0005 6162")),
        Err(ProxyError::TlvTooLong { offset: 31, tlv_type: 0x02, len: 5, left: 2 })
    );
    // IPv6: TLVs start at byte 52.
    let bytes = after_sig(&format!("21 21 0025 {} 0001 0002 e0", "00".repeat(32)));
    assert_eq!(decode(&bytes), Err(ProxyError::TlvTruncated { offset: 52, left: 1 }));
}

#[test]
fn tlv_errors_wait_for_the_whole_block() {
    // The receiver must not parse the block before all of it has arrived.
    let bytes = after_sig("21 11 0014 0a000001 0a000002 0001 0002 04 0000 02 0005 6162");
    assert_every_strict_prefix_incomplete(&bytes);
}

// ---------------------------------------------------------------------------------------------
// Early failure, field by field

#[test]
fn other_protocols_fail_on_their_first_differing_byte() {
    // A device speaking TLS directly: its ClientHello's first byte.
    assert_eq!(decode(&[0x16]), Err(ProxyError::NotProxy));
    assert_eq!(header_len(&[0x16]), Err(ProxyError::NotProxy));
    assert_eq!(decode(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), Err(ProxyError::NotProxy));
    assert_eq!(decode(b"GET / HTTP/1.1\r\n"), Err(ProxyError::NotProxy));
    assert_eq!(decode(b"SSH-2.0-OpenSSH_9.6\r\n"), Err(ProxyError::NotProxy));
    // Right up to a byte that differs.
    assert_eq!(decode(b"\r\n\r\n\0\r\nQ"), Ok(None));
    assert_eq!(decode(b"\r\n\r\n\0\r\nX"), Err(ProxyError::NotProxy));
    assert_eq!(decode(b"\r\n\r\n\r\n"), Err(ProxyError::NotProxy));
    assert_eq!(decode(&SIGNATURE[..11]), Ok(None));
    assert_eq!(decode(&[]), Ok(None));
}

#[test]
fn version_1_is_refused_with_its_own_error() {
    assert_eq!(decode(b"PROXY TCP4 192.0.2.7 198.51.100.1 1234 4433\r\n"), Err(ProxyError::Version1));
    assert_eq!(decode(b"PROXY "), Err(ProxyError::Version1));
    assert_eq!(decode(b"PROXY UNKNOWN\r\n"), Err(ProxyError::Version1));
    // Until its sixth byte it might still be one.
    for cut in 0..6 {
        assert_eq!(decode(&b"PROXY "[..cut]), Ok(None), "{cut}");
    }
    assert_eq!(decode(b"PROXYZ"), Err(ProxyError::NotProxy));
    assert_eq!(decode(b"PUT /"), Err(ProxyError::NotProxy));
}

#[test]
fn version_and_command_are_checked_at_the_13th_byte() {
    assert_eq!(decode(&after_sig("11")), Err(ProxyError::UnsupportedVersion(1)));
    assert_eq!(decode(&after_sig("31")), Err(ProxyError::UnsupportedVersion(3)));
    assert_eq!(decode(&after_sig("01")), Err(ProxyError::UnsupportedVersion(0)));
    assert_eq!(decode(&after_sig("22")), Err(ProxyError::UnknownCommand(2)));
    assert_eq!(decode(&after_sig("2f 11 000c")), Err(ProxyError::UnknownCommand(0xf)));
    assert_eq!(header_len(&after_sig("22")), Err(ProxyError::UnknownCommand(2)));
}

#[test]
fn family_and_transport_are_checked_at_the_14th_byte() {
    assert_eq!(decode(&after_sig("21 41")), Err(ProxyError::UnknownFamily(4)));
    assert_eq!(decode(&after_sig("21 f1")), Err(ProxyError::UnknownFamily(0xf)));
    assert_eq!(decode(&after_sig("21 13")), Err(ProxyError::UnknownTransport(3)));
    assert_eq!(decode(&after_sig("21 0f")), Err(ProxyError::UnknownTransport(0xf)));
    // The family is checked before the transport.
    assert_eq!(decode(&after_sig("21 ff")), Err(ProxyError::UnknownFamily(0xf)));
}

#[test]
fn length_is_checked_as_soon_as_it_arrives() {
    let max = MAX_HEADER_LEN - FIXED_LEN;
    assert_eq!(max, 520);
    // Over the limit: refused with 16 bytes in, before the block arrives.
    assert_eq!(decode(&after_sig("21 11 0209")), Err(ProxyError::TooLong { len: 521, max }));
    assert_eq!(decode(&after_sig("20 00 ffff")), Err(ProxyError::TooLong { len: 0xffff, max }));
    assert_eq!(header_len(&after_sig("21 00 0209")), Err(ProxyError::TooLong { len: 521, max }));
    // At the limit: accepted, once all of it is in.
    let mut longest = after_sig("21 11 0208 0a000001 0a000002 0001 0002");
    let tlv_len = max - 12 - 3;
    longest.extend(hex(&format!("04 {tlv_len:04x}")));
    longest.extend(vec![0u8; tlv_len]);
    assert_eq!(longest.len(), MAX_HEADER_LEN);
    assert_eq!(header_len(&longest[..FIXED_LEN]), Ok(Some(MAX_HEADER_LEN)));
    assert_decodes_to(&longest, proxy4("10.0.0.1:1", "10.0.0.2:2"));
}

#[test]
fn length_must_hold_the_family_addresses() {
    assert_eq!(
        decode(&after_sig("21 11 000b")),
        Err(ProxyError::TooShort { family: Family::Inet, len: 11, needed: 12 })
    );
    assert_eq!(
        decode(&after_sig("21 12 0000")),
        Err(ProxyError::TooShort { family: Family::Inet, len: 0, needed: 12 })
    );
    assert_eq!(
        decode(&after_sig("21 21 0023")),
        Err(ProxyError::TooShort { family: Family::Inet6, len: 35, needed: 36 })
    );
    assert_eq!(
        decode(&after_sig("21 31 00d7")),
        Err(ProxyError::TooShort { family: Family::Unix, len: 215, needed: 216 })
    );
}

#[test]
fn header_len_is_known_once_the_fixed_part_is_in() {
    let bytes = hex(HAPROXY_TCP4);
    for cut in 0..FIXED_LEN {
        assert_eq!(header_len(&bytes[..cut]), Ok(None), "{cut}");
    }
    for cut in FIXED_LEN..=bytes.len() {
        assert_eq!(header_len(&bytes[..cut]), Ok(Some(28)), "{cut}");
    }
    assert_eq!(header_len(&after_sig("20 00 0000")), Ok(Some(16)));
}

#[test]
fn errors_name_the_field() {
    let message = |e: ProxyError| e.to_string();
    assert!(message(ProxyError::TooLong { len: 600, max: 520 }).contains("length field announces 600"));
    assert!(message(ProxyError::TooShort { family: Family::Inet6, len: 3, needed: 36 }).contains("AF_INET6"));
    assert!(message(ProxyError::UnknownFamily(4)).contains("address family 0x4"));
    assert!(
        message(ProxyError::TlvTooLong { offset: 31, tlv_type: 2, len: 5, left: 2 }).contains("type 0x02 at byte 31")
    );
    assert!(message(ProxyError::Version1).contains("version 1"));
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// Feeds `bytes` in two writes split at every position (and byte by byte), as reads from a socket
/// could deliver them: nothing before the whole header is in, then the header.
#[test]
fn input_split_at_every_position() {
    let headers = [
        hex(HAPROXY_TCP4),
        after_sig("20 00 0000"),
        after_sig(&format!("21 21 0028 {} d431 10e1 04 0001 00", "01".repeat(32))),
        after_sig(&format!("21 31 00d8 {}", "2f".repeat(216))),
    ];
    for bytes in headers {
        let expected = decode_complete(&bytes);
        assert_eq!(expected.1, bytes.len());
        for split in 0..=bytes.len() {
            let mut buffered = bytes[..split].to_vec();
            let first = decode(&buffered);
            if split < bytes.len() {
                assert_eq!(first, Ok(None), "first {split} bytes of {bytes:02x?}");
            }
            buffered.extend_from_slice(&bytes[split..]);
            buffered.extend_from_slice(b"rest");
            assert_eq!(decode(&buffered), Ok(Some(expected)), "split at {split}");
        }
        let mut buffered = Vec::new();
        for (i, &byte) in bytes.iter().enumerate() {
            buffered.push(byte);
            let decoded = decode(&buffered);
            if i + 1 < bytes.len() {
                assert_eq!(decoded, Ok(None));
            } else {
                assert_eq!(decoded, Ok(Some(expected)));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests

fn socket_v4() -> impl Strategy<Value = SocketAddrV4> {
    (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddrV4::new(Ipv4Addr::from(ip), port))
}

fn socket_v6() -> impl Strategy<Value = SocketAddrV6> {
    (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0))
}

fn any_addresses() -> impl Strategy<Value = Addresses> {
    prop_oneof![
        (socket_v4(), socket_v4()).prop_map(|(source, destination)| Addresses::Inet { source, destination }),
        (socket_v6(), socket_v6()).prop_map(|(source, destination)| Addresses::Inet6 { source, destination }),
    ]
}

/// Every header a decode can produce: LOCAL (always without addresses), PROXY with or without.
fn any_header() -> impl Strategy<Value = Header> {
    prop_oneof![
        Just(Header::local()),
        proptest::option::of(any_addresses()).prop_map(|addresses| Header { command: Command::Proxy, addresses }),
    ]
}

/// TLVs (type, value) whose encoding takes at most `room` bytes.
fn tlvs(room: usize) -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..8).prop_map(
        move |mut tlvs| {
            while tlvs.iter().map(|(_, value)| TLV_HEAD_LEN + value.len()).sum::<usize>() > room {
                tlvs.pop();
            }
            tlvs
        },
    )
}

/// `header` encoded with `tlvs` appended (and its length field grown to match). Only for headers
/// whose address block has a layout (TLVs after an AF_UNSPEC block are part of the skipped block).
fn wire_with_tlvs(header: &Header, tlvs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut bytes = wire(header);
    for (tlv_type, value) in tlvs {
        bytes.push(*tlv_type);
        bytes.extend_from_slice(&(value.len() as u16).to_be_bytes());
        bytes.extend_from_slice(value);
    }
    let len = (bytes.len() - FIXED_LEN) as u16;
    bytes[14..16].copy_from_slice(&len.to_be_bytes());
    bytes
}

/// The invariants of decoding `input`, whatever it is: no panic; a header consumes no more than
/// `input` and exactly what `header_len` announced, and re-encodes to bytes that decode to it;
/// `Ok(None)` only while fewer bytes than the announced length are in; `header_len` fails
/// exactly when `decode` fails on the fixed part.
fn check_decode(input: &[u8]) -> Result<(), TestCaseError> {
    let announced = header_len(input);
    match decode(input) {
        Ok(Some((header, consumed))) => {
            prop_assert!(consumed <= input.len() && consumed <= MAX_HEADER_LEN);
            prop_assert_eq!(announced, Ok(Some(consumed)));
            if header.command == Command::Local {
                prop_assert_eq!(header.addresses, None);
            }
            let again = wire(&header);
            prop_assert_eq!(again.len(), header.encoded_len());
            prop_assert_eq!(decode(&again), Ok(Some((header, again.len()))));
        }
        Ok(None) => match announced {
            Ok(None) => prop_assert!(input.len() < FIXED_LEN),
            Ok(Some(len)) => prop_assert!(input.len() < len, "incomplete with {} of {} bytes", input.len(), len),
            Err(e) => prop_assert!(false, "header_len failed ({:?}) where decode wants more", e),
        },
        // A failure in the fixed part is the same from both; one in the block comes only once
        // all of it is in.
        Err(e) => match announced {
            Err(fixed) => prop_assert_eq!(fixed, e),
            Ok(Some(len)) => prop_assert!(input.len() >= len, "{:?} with {} of {} bytes", e, input.len(), len),
            Ok(None) => prop_assert!(false, "{:?} from decode, but header_len wants more", e),
        },
    }
    Ok(())
}

proptest! {
    /// encode → decode is the identity, consuming `encoded_len()`, whatever follows; every
    /// strict prefix is incomplete.
    #[test]
    fn prop_round_trip(header in any_header(), after in proptest::collection::vec(any::<u8>(), 0..32)) {
        let bytes = wire(&header);
        prop_assert_eq!(bytes.len(), header.encoded_len());
        prop_assert_eq!(header_len(&bytes), Ok(Some(bytes.len())));
        let mut stream = bytes.clone();
        stream.extend_from_slice(&after);
        prop_assert_eq!(decode(&stream), Ok(Some((header, bytes.len()))));
        for cut in 0..bytes.len() {
            prop_assert_eq!(decode(&bytes[..cut]), Ok(None));
        }
    }

    /// Headers with TLVs decode to the header without them, consuming the TLVs too.
    #[test]
    fn prop_tlvs_are_skipped(
        addresses in any_addresses(),
        tlvs in tlvs(MAX_HEADER_LEN - FIXED_LEN - 36),
        split in any::<prop::sample::Index>(),
    ) {
        let header = Header { command: Command::Proxy, addresses: Some(addresses) };
        let bytes = wire_with_tlvs(&header, &tlvs);
        prop_assert!(bytes.len() <= MAX_HEADER_LEN);
        prop_assert_eq!(decode(&bytes), Ok(Some((header, bytes.len()))));
        let split = split.index(bytes.len());
        prop_assert_eq!(decode(&bytes[..split]), Ok(None));
    }

    /// Arbitrary bytes never panic the decoder; whatever it says is consistent.
    #[test]
    fn prop_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check_decode(&bytes)?;
    }

    /// The signature then arbitrary fields, mostly near the assigned codes and small lengths, so
    /// that decodes get past the signature far more often than with uniform bytes.
    #[test]
    fn prop_arbitrary_after_signature(
        version_command in prop_oneof![3 => prop::sample::select(vec![0x20u8, 0x21]), 1 => any::<u8>()],
        family_transport in prop_oneof![
            3 => prop::sample::select(vec![0x00u8, 0x01, 0x10, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32]),
            1 => any::<u8>(),
        ],
        len in prop_oneof![3 => 0u16..300, 1 => any::<u16>()],
        body in proptest::collection::vec(prop_oneof![3 => 0u8..6, 1 => any::<u8>()], 0..560),
    ) {
        let mut bytes = SIGNATURE.to_vec();
        bytes.push(version_command);
        bytes.push(family_transport);
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend(body);
        for cut in [FIXED_LEN - 2, FIXED_LEN, bytes.len() / 2, bytes.len()] {
            check_decode(&bytes[..cut.min(bytes.len())])?;
        }
    }

    /// Valid headers (with TLVs) with some bytes overwritten and cut short: no panic, consistent.
    #[test]
    fn prop_mutated_headers(
        header in any_header(),
        tlvs in tlvs(200),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        truncate in any::<prop::sample::Index>(),
    ) {
        let mut bytes = if header.addresses.is_some() { wire_with_tlvs(&header, &tlvs) } else { wire(&header) };
        for (at, value) in edits {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        let keep = truncate.index(bytes.len() + 1);
        check_decode(&bytes[..keep])?;
        check_decode(&bytes)?;
    }
}
