//! The LAN device on 127.0.0.1 with ephemeral ports: RMCP presence, WS-MAN over TLS and plain
//! HTTP, one certificate on both TLS ports, the connection cap.

use std::time::Duration;

use protocols::rmcp::{self, AmtPresence, Message, Provisioning};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;

use super::*;
use crate::amt::wsman::{Firmware, FirmwareConfig, WsmanService};
use crate::amt::{
    amt_services_with_firmware, client_config, self_signed_config, shutdown_pair, RedirectionConfig,
    RedirectionService, SerialConsoles, ShutdownTrigger, Trust,
};

const UUID: Uuid = Uuid::from_u128(0x12345678_9abc_def0_1234_56789abcdef0);
const VERSION: &str = "11.8.50";
const WAIT: Duration = Duration::from_secs(10);

/// A device on 127.0.0.1 reporting [`VERSION`], serving until the trigger is dropped.
async fn start(plain: bool, max_connections: usize) -> (LanDevice, ShutdownTrigger) {
    let firmware = Firmware::new(
        FirmwareConfig { amt_version: VERSION.to_owned(), ..FirmwareConfig::default() },
        SerialConsoles::new(),
    );
    let services =
        amt_services_with_firmware(WsmanService::new(firmware), RedirectionService::new(RedirectionConfig::default()));
    let tls = self_signed_config("amt.local").unwrap();
    let mut config = LanConfig::new([127, 0, 0, 1].into(), UUID, services, tls);
    config.plain = plain;
    config.ports = LanPorts::ephemeral();
    config.amt_version = VERSION.to_owned();
    config.max_connections = max_connections;
    let device = LanDevice::bind(config).await.unwrap();
    let (trigger, _) = shutdown_pair();
    (device, trigger)
}

/// Binds a device and serves it in the background; returns its addresses by AMT port.
async fn serve(plain: bool, max_connections: usize) -> (impl Fn(u16) -> SocketAddr, ShutdownTrigger) {
    let (device, trigger) = start(plain, max_connections).await;
    let addrs: Vec<(u16, SocketAddr)> = [623, 16992, 16993, 16994, 16995]
        .into_iter()
        .filter_map(|port| device.local_addr(port).map(|addr| (port, addr)))
        .collect();
    tokio::spawn(device.run(trigger.subscribe()));
    let lookup = move |port: u16| addrs.iter().find(|(p, _)| *p == port).map(|(_, a)| *a).expect("bound");
    (lookup, trigger)
}

/// Reads one HTTP response (head and Content-Length body); the head as text.
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end + 4]).into_owned();
            let length: usize =
                head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).map_or(0, |v| v.trim().parse().unwrap());
            if data.len() >= end + 4 + length {
                return head;
            }
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf)).await.expect("answer in time").unwrap();
        assert!(n > 0, "closed before the response ended: {:?}", String::from_utf8_lossy(&data));
        data.extend_from_slice(&buf[..n]);
    }
}

async fn get(stream: &mut (impl AsyncRead + AsyncWrite + Unpin)) -> String {
    stream.write_all(b"GET /index.htm HTTP/1.1\r\nHost: amt\r\n\r\n").await.unwrap();
    read_response(stream).await
}

fn assert_challenge(head: &str) {
    assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
    assert!(head.contains(&format!("\r\nServer: Intel(R) Active Management Technology {VERSION}.")), "{head}");
    assert!(head.contains("\r\nWWW-Authenticate: Digest realm=\"Digest:"), "{head}");
}

async fn tls_connect(addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = TlsConnector::from(client_config(&Trust::Insecure).unwrap());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("amt.local").unwrap();
    tokio::time::timeout(WAIT, connector.connect(name, tcp)).await.expect("handshake in time").unwrap()
}

#[tokio::test]
async fn a_ping_gets_a_pong_with_the_version_and_provisioning() {
    let (addr, _trigger) = serve(false, 4).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(b"not RMCP", addr(623)).await.unwrap();
    let mut ping = Vec::new();
    rmcp::encode(&Message::ping(42), &mut ping);
    socket.send_to(&ping, addr(623)).await.unwrap();
    let mut buf = [0u8; 600];
    let (n, from) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf)).await.expect("pong in time").unwrap();
    assert_eq!(from, addr(623));
    let Message::Pong { tag, pong, .. } = rmcp::decode(&buf[..n]).unwrap() else { panic!("not a pong") };
    assert_eq!(tag, 42, "the answer is to the ping; the garbage got none");
    let expected =
        AmtPresence { major: 11, minor: 8, provisioning: Provisioning::Post, port: 16993, both_ports: false };
    assert_eq!(pong.amt(), Some(expected));
}

#[tokio::test]
async fn tls_ports_challenge_with_one_certificate() {
    let (addr, _trigger) = serve(false, 4).await;
    let mut wsman = tls_connect(addr(16993)).await;
    assert_challenge(&get(&mut wsman).await);
    let redirection = tls_connect(addr(16995)).await;
    let certificate = |stream: &tokio_rustls::client::TlsStream<TcpStream>| {
        stream.get_ref().1.peer_certificates().expect("a certificate")[0].clone()
    };
    assert_eq!(certificate(&wsman), certificate(&redirection), "the same certificate on 16993 and 16995");
    // The device's WS-MAN keeps the connection open for the next request.
    assert_challenge(&get(&mut wsman).await);
}

#[tokio::test]
async fn plain_ports_only_when_asked() {
    let (device, _trigger) = start(false, 4).await;
    assert!(device.local_addr(16992).is_none() && device.local_addr(16994).is_none());
    let (addr, _trigger) = serve(true, 4).await;
    let mut plain = TcpStream::connect(addr(16992)).await.unwrap();
    assert_challenge(&get(&mut plain).await);
    assert!(TcpStream::connect(addr(16994)).await.is_ok());
}

#[tokio::test]
async fn a_connection_beyond_the_cap_is_closed_and_the_others_go_on() {
    let (addr, _trigger) = serve(true, 2).await;
    let mut first = TcpStream::connect(addr(16992)).await.unwrap();
    assert_challenge(&get(&mut first).await);
    let mut second = TcpStream::connect(addr(16992)).await.unwrap();
    assert_challenge(&get(&mut second).await);

    let mut third = TcpStream::connect(addr(16992)).await.unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, third.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "the third connection is closed: {read:?}");

    assert_challenge(&get(&mut first).await);
    drop(second);
    // Its slot comes free once the device saw it end.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut next = TcpStream::connect(addr(16992)).await.unwrap();
        let _ = next.write_all(b"GET / HTTP/1.1\r\nHost: amt\r\n\r\n").await;
        let mut byte = [0u8; 1];
        if let Ok(Ok(1)) = tokio::time::timeout(WAIT, next.read(&mut byte)).await {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot was not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
