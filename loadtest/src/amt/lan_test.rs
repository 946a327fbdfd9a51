//! The LAN device on 127.0.0.1 with ephemeral ports: RMCP presence, WS-MAN over TLS and plain
//! HTTP, one certificate on both TLS ports, the connection cap.

use std::time::Duration;

use protocols::http_digest::{Authorization, Challenge};
use protocols::rmcp::{self, AmtPresence, Message, Provisioning};
use protocols::wsman::{self, Class, EndpointReference, Envelope, Method, Property};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;

use super::*;
use crate::amt::wsman::{platform_guid, Firmware, FirmwareConfig, WsmanService};
use crate::amt::{
    amt_services_with_firmware, client_config, self_signed_config, shutdown_pair, RedirectionConfig,
    RedirectionService, SerialConsoles, ShutdownTrigger, Trust,
};

const UUID: Uuid = Uuid::from_u128(0x12345678_9abc_def0_1234_56789abcdef0);
const VERSION: &str = "11.8.50";
const WAIT: Duration = Duration::from_secs(10);

/// A device on 127.0.0.1 reporting [`VERSION`], powered on.
async fn start(plain: bool, max_connections: usize) -> (LanDevice, ShutdownTrigger) {
    start_with(plain, max_connections, true).await
}

async fn start_with(plain: bool, max_connections: usize, powered_on: bool) -> (LanDevice, ShutdownTrigger) {
    let firmware = Firmware::new(
        FirmwareConfig { amt_version: VERSION.to_owned(), powered_on, ..FirmwareConfig::default() },
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
    serve_with(plain, max_connections, true).await
}

async fn serve_with(
    plain: bool,
    max_connections: usize,
    powered_on: bool,
) -> (impl Fn(u16) -> SocketAddr, ShutdownTrigger) {
    let (device, trigger) = start_with(plain, max_connections, powered_on).await;
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
    read_response_and_body(stream).await.0
}

async fn read_response_and_body(stream: &mut (impl AsyncRead + Unpin)) -> (String, Vec<u8>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end + 4]).into_owned();
            let length: usize =
                head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).map_or(0, |v| v.trim().parse().unwrap());
            if data.len() >= end + 4 + length {
                return (head, data[end + 4..end + 4 + length].to_vec());
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

/// Posts a WS-MAN request with the admin account's digest (after the 401 that gives the nonce).
async fn wsman_call(stream: &mut (impl AsyncRead + AsyncWrite + Unpin), request: &wsman::Request) -> Envelope {
    let body = request.to_bytes().unwrap();
    let post = |authorization: Option<String>| {
        let mut head = format!(
            "POST /wsman HTTP/1.1\r\nHost: amt\r\nContent-Type: application/soap+xml;charset=UTF-8\r\n\
             Content-Length: {}\r\n",
            body.len()
        );
        if let Some(value) = authorization {
            head.push_str(&format!("Authorization: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    };
    stream.write_all(&post(None)).await.unwrap();
    let head = read_response(stream).await;
    assert_challenge(&head);
    let value = head.lines().find_map(|l| l.strip_prefix("WWW-Authenticate: ")).unwrap();
    let challenge = Challenge::parse(value).unwrap();
    let answer = Authorization::answer(&challenge, "admin", "admin", "POST", "/wsman", "0a4f113b", 1).unwrap();
    stream.write_all(&post(Some(answer.to_header_value().unwrap()))).await.unwrap();
    let (head, body) = read_response_and_body(stream).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    Envelope::parse(&body, &Default::default()).unwrap()
}

#[tokio::test]
async fn connections_share_the_firmware_state() {
    let (addr, _trigger) = serve_with(true, 4, false).await;
    const TO: &str = "http://amt:16992/wsman";
    let power_state = |envelope: &Envelope| envelope.payload().unwrap().child_text("PowerState").unwrap().to_owned();
    let power_uri = Class::CimAssociatedPowerManagementService.resource_uri();
    let mut tls = tls_connect(addr(16993)).await;
    let reply = wsman_call(&mut tls, &wsman::Request::get(TO, power_uri, Uuid::new_v4())).await;
    assert_eq!(power_state(&reply), "8", "--power off");
    let platform = Class::CimComputerSystemPackage.resource_uri();
    let reply = wsman_call(&mut tls, &wsman::Request::get(TO, platform, Uuid::new_v4())).await;
    assert_eq!(reply.payload().unwrap().child_text("PlatformGUID"), Some(platform_guid(UUID).as_str()));

    let mut plain = TcpStream::connect(addr(16992)).await.unwrap();
    let on = vec![
        Property::text("PowerState", "2"),
        Property::reference("ManagedElement", EndpointReference::managed_system()),
    ];
    let request = wsman::Request::invoke(TO, Method::RequestPowerStateChange, Uuid::new_v4(), on);
    assert_eq!(wsman::return_value(&wsman_call(&mut plain, &request).await).unwrap(), 0);
    let reply = wsman_call(&mut tls, &wsman::Request::get(TO, power_uri, Uuid::new_v4())).await;
    assert_eq!(power_state(&reply), "2", "the power-on made on 16992 is seen on 16993");
}
