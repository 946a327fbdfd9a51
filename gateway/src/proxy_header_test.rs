//! Tests of the trusted-proxy list (parsing, matching, TOML) and of reading the header over
//! in-memory duplex streams: whole, split over many writes, stalled, cut short, not a header at
//! all, and the bytes after it left in the stream.

use super::*;
use protocols::proxy::{encode, Header};
use tokio::io::{AsyncWriteExt, DuplexStream};

// ---------------------------------------------------------------------------------------------
// Trusted proxies

fn ip(s: &str) -> IpAddr {
    s.parse().expect("IP address")
}

fn trusted(entries: &[&str]) -> TrustedProxies {
    TrustedProxies::new(entries).expect("valid entries")
}

#[test]
fn networks_and_bare_addresses() {
    let list = trusted(&["127.0.0.1/32", "10.0.0.0/8", "::1/128", "192.0.2.7", "2001:db8::/32", "fe80::1"]);
    for inside in ["127.0.0.1", "10.0.0.0", "10.255.255.255", "10.1.2.3", "::1", "192.0.2.7", "2001:db8::42", "fe80::1"]
    {
        assert!(list.contains(ip(inside)), "{inside}");
    }
    for outside in ["127.0.0.2", "11.0.0.1", "9.255.255.255", "::2", "192.0.2.8", "2001:db9::1", "fe80::2", "0.0.0.0"] {
        assert!(!list.contains(ip(outside)), "{outside}");
    }
    assert_eq!(list.networks().len(), 6);
    assert_eq!(list.networks()[3].to_string(), "192.0.2.7/32");
    assert_eq!(list.networks()[5].to_string(), "fe80::1/128");
}

#[test]
fn ipv4_mapped_addresses_match_as_ipv4() {
    let list = trusted(&["10.0.0.0/8", "::/0"]);
    assert!(list.contains(ip("::ffff:10.1.2.3")));
    assert!(!trusted(&["::/0"]).contains(ip("::ffff:10.1.2.3")), "::/0 is every IPv6 address, not IPv4");
    assert!(trusted(&["::/0"]).contains(ip("2001:db8::1")));
    // A mapped network is the IPv4 network it maps.
    let mapped = trusted(&["::ffff:10.0.0.0/104"]);
    assert!(mapped.contains(ip("10.9.9.9")) && mapped.contains(ip("::ffff:10.9.9.9")));
    assert_eq!(mapped.networks()[0].to_string(), "10.0.0.0/8");
}

#[test]
fn zero_prefixes_match_a_whole_family() {
    let v4 = trusted(&["0.0.0.0/0"]);
    assert!(v4.contains(ip("255.255.255.255")) && v4.contains(ip("0.0.0.0")));
    assert!(!v4.contains(ip("::1")));
    assert!(trusted(&["::/0"]).contains(ip("ffff::1")));
}

#[test]
fn nobody_is_trusted_by_default() {
    let list = TrustedProxies::default();
    assert!(list.is_empty());
    assert!(!list.contains(ip("127.0.0.1")));
    assert_eq!(trusted(&[]), list);
}

#[test]
fn bad_entries_are_named() {
    let error = |entries: &[&str]| TrustedProxies::new(entries).expect_err("invalid").to_string();
    let message = error(&["10.0.0.0/8", "proxy.example"]);
    assert!(message.contains("\"proxy.example\"") && message.contains("not an IP address"), "{message}");
    let message = error(&["10.0.0.0/33"]);
    assert!(message.contains("\"10.0.0.0/33\"") && message.contains("0 to 32"), "{message}");
    let message = error(&["::1/129"]);
    assert!(message.contains("0 to 128"), "{message}");
    let message = error(&["10.0.0.0/"]);
    assert!(message.contains("prefix length \"\""), "{message}");
    let message = error(&["10.1.2.3/8"]);
    assert!(message.contains("write 10.0.0.0/8"), "{message}");
    let message = error(&["2001:db8::1/32"]);
    assert!(message.contains("write 2001:db8::/32"), "{message}");
    let message = error(&[""]);
    assert!(message.contains("trusted proxy \"\""), "{message}");
}

#[test]
fn surrounding_spaces_are_ignored() {
    assert!(trusted(&[" 10.0.0.0/8 "]).contains(ip("10.0.0.1")));
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Listener {
    trusted_proxies: TrustedProxies,
}

#[test]
fn read_from_a_toml_list_of_strings() {
    let config: Listener = toml::from_str(r#"trusted_proxies = ["127.0.0.1/32", "10.0.0.0/8", "::1"]"#).unwrap();
    assert!(config.trusted_proxies.contains(ip("10.2.3.4")));
    assert!(config.trusted_proxies.contains(ip("::1")));
    // Written back as the same list (bare addresses get their prefix).
    let written = toml::to_string(&config).unwrap();
    assert_eq!(written.trim(), r#"trusted_proxies = ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]"#);
    assert_eq!(toml::from_str::<Listener>(&written).unwrap(), config);
}

#[test]
fn a_bad_toml_entry_is_named() {
    let error = toml::from_str::<Listener>(r#"trusted_proxies = ["10.0.0.0/8", "10.0.0.0/40"]"#).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("trusted proxy \"10.0.0.0/40\""), "{message}");
    assert!(toml::from_str::<Listener>(r#"trusted_proxies = "10.0.0.0/8""#).is_err(), "a list, not a string");
}

// ---------------------------------------------------------------------------------------------
// Reading the header

const LONG: Duration = Duration::from_secs(30);

fn header_bytes(header: &Header) -> Vec<u8> {
    let mut out = Vec::new();
    encode(header, &mut out);
    out
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn tcp4() -> Header {
    Header::proxy(addr("198.51.100.23:50123"), addr("192.0.2.1:4433"))
}

/// The first bytes of a TLS ClientHello, as a device behind the load balancer sends them next.
const CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";

fn pipe() -> (DuplexStream, DuplexStream) {
    tokio::io::duplex(64 * 1024)
}

/// Reads the header with a generous timeout, failing the test if it takes more than 5 s (it
/// must not wait for bytes it does not need).
async fn read(stream: &mut DuplexStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    tokio::time::timeout(Duration::from_secs(5), read_header(stream, LONG))
        .await
        .expect("read_header returned promptly")
}

#[tokio::test]
async fn reads_the_source_of_an_ipv4_header() {
    let (mut gateway, mut balancer) = pipe();
    balancer.write_all(&header_bytes(&tcp4())).await.unwrap();
    assert_eq!(read(&mut gateway).await.unwrap(), Some(addr("198.51.100.23:50123")));
}

#[tokio::test]
async fn reads_the_source_of_an_ipv6_header() {
    let (mut gateway, mut balancer) = pipe();
    let header = Header::proxy(addr("[2001:db8::23]:50123"), addr("[2001:db8::1]:4433"));
    balancer.write_all(&header_bytes(&header)).await.unwrap();
    assert_eq!(read(&mut gateway).await.unwrap(), Some(addr("[2001:db8::23]:50123")));
}

#[tokio::test]
async fn an_ipv4_mapped_source_is_given_as_ipv4() {
    let (mut gateway, mut balancer) = pipe();
    // A load balancer listening on IPv6 relaying an IPv4 client to an IPv4 gateway.
    let header = Header::proxy(addr("[::ffff:198.51.100.23]:50123"), addr("192.0.2.1:4433"));
    balancer.write_all(&header_bytes(&header)).await.unwrap();
    assert_eq!(read(&mut gateway).await.unwrap(), Some(addr("198.51.100.23:50123")));
}

#[tokio::test]
async fn a_health_check_has_no_address() {
    let (mut gateway, mut balancer) = pipe();
    balancer.write_all(&header_bytes(&Header::local())).await.unwrap();
    assert_eq!(read(&mut gateway).await.unwrap(), None);
}

#[tokio::test]
async fn families_without_an_address_give_none() {
    for family_transport in ["00", "31"] {
        let (mut gateway, mut balancer) = pipe();
        let len: usize = if family_transport == "31" { 216 } else { 0 };
        let mut bytes = proxy::SIGNATURE.to_vec();
        bytes.extend([0x21, u8::from_str_radix(family_transport, 16).unwrap()]);
        bytes.extend((len as u16).to_be_bytes());
        bytes.extend(vec![b'/'; len]);
        balancer.write_all(&bytes).await.unwrap();
        assert_eq!(read(&mut gateway).await.unwrap(), None, "{family_transport}");
    }
}

#[tokio::test]
async fn the_bytes_after_the_header_stay_in_the_stream() {
    // Header and ClientHello in one write, as they arrive in one segment; with TLVs too.
    let mut with_tlvs = header_bytes(&tcp4());
    with_tlvs.extend(b"\x04\x00\x02\x00\x00\x02\x00\x0agw.example");
    let len = (with_tlvs.len() - proxy::FIXED_LEN) as u16;
    with_tlvs[14..16].copy_from_slice(&len.to_be_bytes());
    for header in [header_bytes(&tcp4()), header_bytes(&Header::local()), with_tlvs] {
        let (mut gateway, mut balancer) = pipe();
        let mut stream = header.clone();
        stream.extend_from_slice(CLIENT_HELLO);
        balancer.write_all(&stream).await.unwrap();
        drop(balancer);
        read(&mut gateway).await.unwrap();
        let mut rest = Vec::new();
        gateway.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, CLIENT_HELLO, "after a {}-byte header", header.len());
    }
}

#[tokio::test]
async fn a_header_split_over_several_writes() {
    let mut stream = header_bytes(&Header::proxy(addr("[2001:db8::23]:50123"), addr("[2001:db8::1]:4433")));
    stream.extend_from_slice(CLIENT_HELLO);
    for chunks in [vec![1], vec![3, 1, 11, 2], vec![12, 1, 1, 2], vec![16, 36], vec![15, 2, 40]] {
        let (mut gateway, mut balancer) = pipe();
        let bytes = stream.clone();
        let chunk_sizes = chunks.clone();
        let writer = tokio::spawn(async move {
            let mut at = 0;
            for &size in chunk_sizes.iter().cycle() {
                if at == bytes.len() {
                    break;
                }
                let end = (at + size).min(bytes.len());
                balancer.write_all(&bytes[at..end]).await.unwrap();
                at = end;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            balancer
        });
        assert_eq!(read(&mut gateway).await.unwrap(), Some(addr("[2001:db8::23]:50123")), "chunks {chunks:?}");
        drop(writer.await.unwrap());
        let mut rest = Vec::new();
        gateway.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, CLIENT_HELLO, "chunks {chunks:?}");
    }
}

// These use real time (short timeouts): tokio's paused clock needs its `test-util` feature,
// which the workspace does not enable.

#[tokio::test]
async fn a_stalled_load_balancer_times_out() {
    let (mut gateway, _balancer) = pipe();
    let timeout = Duration::from_millis(100);
    match read_header(&mut gateway, timeout).await {
        Err(ProxyHeaderError::Timeout { timeout: t, received: 0 }) => assert_eq!(t, timeout),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn a_header_stalled_halfway_times_out() {
    let (mut gateway, mut balancer) = pipe();
    balancer.write_all(&header_bytes(&tcp4())[..20]).await.unwrap();
    let error = read_header(&mut gateway, Duration::from_millis(100)).await.unwrap_err();
    assert!(matches!(error, ProxyHeaderError::Timeout { received: 20, .. }), "{error:?}");
    assert!(error.to_string().contains("send-proxy-v2"), "{error}");
}

#[tokio::test]
async fn the_timeout_is_for_the_whole_header() {
    // A byte every 30 ms never lets a single read wait 100 ms, but 28 bytes take 840 ms.
    let (mut gateway, mut balancer) = pipe();
    let bytes = header_bytes(&tcp4());
    let _writer = tokio::spawn(async move {
        for byte in bytes {
            if balancer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    });
    let error = read_header(&mut gateway, Duration::from_millis(100)).await.unwrap_err();
    assert!(matches!(error, ProxyHeaderError::Timeout { received: 1..=27, .. }), "{error:?}");
}

#[tokio::test]
async fn tls_without_a_header_fails_on_its_first_byte() {
    let (mut gateway, mut balancer) = pipe();
    balancer.write_all(&CLIENT_HELLO[..1]).await.unwrap();
    let error = read(&mut gateway).await.unwrap_err();
    assert!(matches!(error, ProxyHeaderError::NotProxy { first_byte: 0x16 }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("TLS handshake") && message.contains("`send-proxy-v2`"), "{message}");
}

#[tokio::test]
async fn other_first_bytes_are_not_a_header() {
    let (mut gateway, mut balancer) = pipe();
    balancer.write_all(b"\r\n\r\nGET").await.unwrap();
    let error = read(&mut gateway).await.unwrap_err();
    assert!(matches!(error, ProxyHeaderError::NotProxy { first_byte: b'\r' }), "{error:?}");
    assert!(error.to_string().contains("byte 0x0d"), "{error}");
}

#[tokio::test]
async fn a_version_1_header_is_refused() {
    let (mut gateway, mut balancer) = pipe();
    balancer.write_all(b"PROXY TCP4 198.51.100.23 192.0.2.1 50123 4433\r\n").await.unwrap();
    let error = read(&mut gateway).await.unwrap_err();
    assert!(matches!(error, ProxyHeaderError::Version1), "{error:?}");
    assert!(error.to_string().contains("instead of `send-proxy`"), "{error}");
}

#[tokio::test]
async fn an_oversized_length_fails_before_the_body() {
    let (mut gateway, mut balancer) = pipe();
    let mut bytes = proxy::SIGNATURE.to_vec();
    bytes.extend([0x21, 0x11, 0xff, 0xff]);
    balancer.write_all(&bytes).await.unwrap();
    let error = read(&mut gateway).await.unwrap_err();
    assert!(matches!(error, ProxyHeaderError::Malformed(ProxyError::TooLong { len: 0xffff, .. })), "{error:?}");
    assert!(error.to_string().starts_with("malformed PROXY v2 header"), "{error}");
}

#[tokio::test]
async fn a_connection_closed_mid_header() {
    let (mut gateway, mut balancer) = pipe();
    balancer.write_all(&header_bytes(&tcp4())[..10]).await.unwrap();
    drop(balancer);
    let error = read(&mut gateway).await.unwrap_err();
    assert!(matches!(error, ProxyHeaderError::Eof { received: 10 }), "{error:?}");

    let (mut gateway, balancer) = pipe();
    drop(balancer);
    let error = read(&mut gateway).await.unwrap_err();
    assert!(matches!(error, ProxyHeaderError::Eof { received: 0 }), "{error:?}");
    assert!(error.to_string().contains("check-send-proxy"), "{error}");
}
