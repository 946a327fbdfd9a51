//! The API in process (requests through the router, with the connection they came on) and on a
//! loopback listener without TLS (connection caps, relays through a fake device tunnel): what a
//! technician, a stranger trying tokens, and an operator revoking a token see.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request as HttpRequest};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use serde_json::json;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

use super::*;
use crate::auth;
use crate::config::Config;
use crate::limits::API_FAILURE_BURST;
use crate::registry::{OpenRequest, TunnelCommand, TunnelHandle, TunnelKind};
use crate::state::TestState;
use crate::store::TokenScope;
use crate::stream::{self, StreamConfig, StreamEnd};

pub(super) struct Bed {
    pub(super) api: Arc<Api>,
    app: Router,
    /// Connections for in-process requests (no caps worth the name).
    caps: Arc<ConnectionCaps>,
    _state: TestState,
}

pub(super) async fn bed(configure: impl FnOnce(&mut Config)) -> Bed {
    let mut config = Config::default();
    configure(&mut config);
    let state = TestState::new(config).await;
    let shared = Arc::clone(&state.shared);
    let api = Api::new(shared);
    Bed { app: router(Arc::clone(&api)), api, caps: Arc::new(ConnectionCaps::new(100_000, 100_000)), _state: state }
}

impl Bed {
    pub(super) async fn token(&self, name: &str, scope: TokenScope, expires_at: Option<OffsetDateTime>) -> String {
        let token = auth::new_token();
        self.api.shared.store.create_token(name, &auth::hash_token(&token), scope, expires_at).await.unwrap();
        token
    }

    /// A request from `from` through the router, as `serve` would pass it on.
    pub(super) async fn get(&self, from: &str, token: Option<&str>, path: &str) -> (StatusCode, HeaderMap, Value) {
        self.send(from, token, HttpRequest::get(path), Body::empty()).await
    }

    pub(super) async fn post(
        &self,
        from: &str,
        token: Option<&str>,
        path: &str,
        body: Value,
    ) -> (StatusCode, HeaderMap, Value) {
        let request = HttpRequest::post(path).header(header::CONTENT_TYPE, "application/json");
        self.send(from, token, request, Body::from(body.to_string())).await
    }

    pub(super) async fn delete(&self, from: &str, token: Option<&str>, path: &str) -> (StatusCode, HeaderMap, Value) {
        self.send(from, token, HttpRequest::delete(path), Body::empty()).await
    }

    pub(super) async fn send(
        &self,
        from: &str,
        token: Option<&str>,
        mut request: axum::http::request::Builder,
        body: Body,
    ) -> (StatusCode, HeaderMap, Value) {
        let ip: IpAddr = from.parse().unwrap();
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let mut request = request.body(body).unwrap();
        let slot = self.caps.try_enter(ip).unwrap();
        request.extensions_mut().insert(Connection::new(SocketAddr::new(ip, 40_000), slot));
        let response = self.app.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    fn counted(&self, series: &str) -> f64 {
        let text = self.api.shared.metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{series} missing"))
    }

    /// Makes every store lookup fail from now on.
    async fn break_token_store(&self) {
        self.api.shared.store.execute(crate::store::Stmt::new("DROP TABLE tokens")).await.unwrap();
    }

    /// Serves the API on a loopback listener, in plain HTTP.
    pub(super) async fn serve(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_api(listener, None, Arc::clone(&self.api)));
        addr
    }

    /// A device whose tunnel hands each opened stream's driver end to the test.
    pub(super) fn device(&self) -> (Uuid, mpsc::UnboundedReceiver<StreamEnd>) {
        let uuid = Uuid::new_v4();
        let (commands, mut requests) = mpsc::channel(8);
        let handle = TunnelHandle {
            id: self.api.shared.registry.next_id(),
            uuid,
            kind: TunnelKind::Cira,
            remote: "198.18.0.1:16993".parse().unwrap(),
            connected_since: OffsetDateTime::now_utc(),
            trigger_reason: 4,
            commands,
            ports: Arc::new(Mutex::new(BTreeSet::from([16994]))),
        };
        self.api.shared.registry.try_insert(handle).unwrap();
        let (ends_tx, ends) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (wake, _wakes) = mpsc::unbounded_channel();
            let mut key = 0;
            while let Some(command) = requests.recv().await {
                if let TunnelCommand::Open(request) = command {
                    let OpenRequest { port, reply, .. } = *request;
                    key += 1;
                    let (user, end) = stream::pair(key, port, StreamConfig::default(), wake.clone());
                    if reply.send(Ok(user)).is_ok() {
                        let _ = ends_tx.send(end);
                    }
                }
            }
        });
        (uuid, ends)
    }
}

fn reason(body: &Value) -> &str {
    body["reason"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn requests_over_the_source_budget_are_refused_before_any_token_lookup() {
    let bed = bed(|c| {
        c.api.requests_per_second_per_source = 1;
        c.api.request_burst_per_source = 3;
    })
    .await;
    let token = bed.token("alice", TokenScope::Attach, None).await;
    for _ in 0..3 {
        assert_eq!(bed.get("198.18.0.1", Some(&token), "/api/v1/devices").await.0, StatusCode::OK);
    }
    let (status, headers, body) = bed.get("198.18.0.1", Some(&token), "/api/v1/devices").await;
    assert_eq!((status, reason(&body)), (StatusCode::TOO_MANY_REQUESTS, "source_rate"));
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert!(body["error"].as_str().unwrap().contains("retry in 1 s"), "{body}");
    // Another source has its own budget.
    assert_eq!(bed.get("198.18.0.2", Some(&token), "/api/v1/devices").await.0, StatusCode::OK);
    // Refused before the lookup: a broken store does not change the answer.
    bed.break_token_store().await;
    assert_eq!(bed.get("198.18.0.1", Some(&token), "/api/v1/devices").await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(bed.counted("tether_api_rejected_total{reason=\"source_rate\"}"), 2.0);
}

#[tokio::test]
async fn missing_and_malformed_tokens_are_refused_without_a_lookup() {
    let bed = bed(|_| {}).await;
    bed.break_token_store().await;
    let malformed =
        ["tth_short", "Bearer-less", &format!("xyz_{}", "a".repeat(43)), &format!("tth_{}!", "a".repeat(42))];
    for token in malformed {
        let (status, _, body) = bed.get("198.18.0.1", Some(token), "/api/v1/devices").await;
        assert_eq!((status, reason(&body)), (StatusCode::UNAUTHORIZED, "invalid_token"), "{token}");
        assert!(body["error"].as_str().unwrap().contains("tether token create"), "{body}");
    }
    let (status, _, body) = bed.get("198.18.0.2", None, "/api/v1/devices").await;
    assert_eq!((status, reason(&body)), (StatusCode::UNAUTHORIZED, "invalid_token"));
    // A well-formed one is looked up (and the broken store shows it).
    let (status, _, _) = bed.get("198.18.0.3", Some(&auth::new_token()), "/api/v1/devices").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(bed.counted("tether_store_errors_total{task=\"api\"}"), 1.0);
    assert_eq!(bed.counted("tether_api_rejected_total{reason=\"invalid_token\"}"), 5.0);
}

/// Only a token that could have been one is charged to the source's failure budget: a client
/// that forgot its token (or sends something that is no token) is told so, again and again.
#[tokio::test]
async fn a_client_without_a_token_is_told_so_not_told_to_wait() {
    let bed = bed(|_| {}).await;
    let token = bed.token("alice", TokenScope::Read, None).await;
    for round in 0..3 * API_FAILURE_BURST {
        let sent = if round % 2 == 0 { None } else { Some("not-a-token") };
        let (status, _, body) = bed.get("198.18.0.7", sent, "/api/v1/devices").await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_token")), "{round}");
    }
    assert_eq!(bed.get("198.18.0.7", Some(&token), "/api/v1/devices").await.0, StatusCode::OK);
    // A well-formed token that fails is still charged.
    for _ in 0..=API_FAILURE_BURST {
        bed.get("198.18.0.7", Some(&auth::new_token()), "/api/v1/devices").await;
    }
    assert_eq!(bed.get("198.18.0.7", None, "/api/v1/devices").await.0, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn expired_unknown_and_out_of_scope_tokens_are_told_apart() {
    let bed = bed(|_| {}).await;
    let now = OffsetDateTime::now_utc();
    let expired = bed.token("old", TokenScope::Attach, Some(now - time::Duration::hours(1))).await;
    let reader = bed.token("auditor", TokenScope::Read, Some(now + time::Duration::hours(1))).await;
    let (status, _, body) = bed.get("198.18.0.1", Some(&expired), "/api/v1/devices").await;
    assert_eq!((status, reason(&body)), (StatusCode::UNAUTHORIZED, "expired_token"));
    assert!(body["error"].as_str().unwrap().contains("\"old\" expired at"), "{body}");
    let (status, _, body) = bed.get("198.18.0.1", Some(&auth::new_token()), "/api/v1/devices").await;
    assert_eq!((status, reason(&body)), (StatusCode::UNAUTHORIZED, "invalid_token"));

    // `read` lists and shows devices, but opens no relay.
    assert_eq!(bed.get("198.18.0.2", Some(&reader), "/api/v1/devices").await.0, StatusCode::OK);
    let path = format!("/api/v1/devices/{}/tcp/16994", Uuid::new_v4());
    let (status, _, body) = bed.get("198.18.0.2", Some(&reader), &path).await;
    assert_eq!((status, reason(&body)), (StatusCode::FORBIDDEN, "scope"));
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("scope read") && message.contains("needs scope attach"), "{message}");
    assert_eq!(bed.counted("tether_api_rejected_total{reason=\"scope\"}"), 1.0);
    assert_eq!(bed.counted("tether_api_rejected_total{reason=\"expired_token\"}"), 1.0);
}

#[tokio::test]
async fn a_source_that_keeps_failing_is_answered_429_and_others_are_not() {
    let bed = bed(|_| {}).await;
    let token = bed.token("alice", TokenScope::Attach, None).await;
    for _ in 0..=API_FAILURE_BURST {
        assert_eq!(
            bed.get("198.18.0.5", Some(&auth::new_token()), "/api/v1/devices").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    // Even a valid token from that source waits out the back-off (same address, same budget).
    let (status, headers, body) = bed.get("198.18.0.5", Some(&token), "/api/v1/devices").await;
    assert_eq!((status, reason(&body)), (StatusCode::TOO_MANY_REQUESTS, "source_rate"));
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert_eq!(bed.get("198.18.0.6", Some(&token), "/api/v1/devices").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_storm_of_wrong_tokens_is_answered_429_while_a_valid_token_from_elsewhere_works() {
    let bed = bed(|_| {}).await;
    let token = bed.token("alice", TokenScope::Read, None).await;
    let mut storm = HashMap::<StatusCode, usize>::new();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for i in 0..2000 {
        let (status, _, _) = bed.get("127.0.0.3", Some(&auth::new_token()), "/api/v1/devices").await;
        *storm.entry(status).or_default() += 1;
        if i % 20 == 0 {
            let asked = Instant::now();
            let (status, _, body) = bed.get("127.0.0.1", Some(&token), "/api/v1/devices").await;
            slowest = slowest.max(asked.elapsed());
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    let elapsed = started.elapsed();
    let refused = storm.get(&StatusCode::TOO_MANY_REQUESTS).copied().unwrap_or_default();
    let looked_up = storm.get(&StatusCode::UNAUTHORIZED).copied().unwrap_or_default();
    // The failure burst, then about one lookup a second.
    let most = API_FAILURE_BURST as usize + 2 + elapsed.as_secs() as usize;
    assert!(looked_up <= most && refused + looked_up == 2000, "{storm:?} in {elapsed:?}");
    eprintln!("storm: {storm:?} in {elapsed:?}; slowest valid request {slowest:?}");
}

async fn connect_from(addr: SocketAddr, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Whether the server closed `tcp` at once (rather than waiting for a request).
async fn closed_at_once(tcp: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
}

async fn health(tcp: &mut TcpStream) -> String {
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn connections_over_the_caps_are_closed_at_once() {
    let bed = bed(|c| {
        c.api.max_connections = 3;
        c.api.max_connections_per_source = 2;
    })
    .await;
    let addr = bed.serve().await;
    let mut first = connect_from(addr, "127.0.0.1").await;
    let _second = connect_from(addr, "127.0.0.1").await;
    let mut third = connect_from(addr, "127.0.0.1").await;
    assert!(closed_at_once(&mut third).await, "a third connection from one source was served");
    let mut other = connect_from(addr, "127.0.0.2").await;
    assert!(health(&mut other).await.starts_with("HTTP/1.1 200"));
    let mut fourth = connect_from(addr, "127.0.0.4").await;
    assert!(closed_at_once(&mut fourth).await, "a fourth connection in all was served");
    assert_eq!(bed.counted("tether_api_rejected_total{reason=\"connection_cap\"}"), 2.0);
    // A closed connection frees its place.
    assert!(health(&mut first).await.starts_with("HTTP/1.1 200"));
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = connect_from(addr, "127.0.0.1").await;
        if !closed_at_once(&mut again).await {
            break;
        }
        assert!(Instant::now() < deadline, "the closed connection's place was not freed");
    }
}

type Client = WebSocketStream<TcpStream>;

pub(super) async fn relay(
    addr: SocketAddr,
    from: &str,
    token: &str,
    uuid: Uuid,
) -> Result<Client, (StatusCode, Value)> {
    let tcp = connect_from(addr, from).await;
    let mut request = format!("ws://{addr}/api/v1/devices/{uuid}/tcp/16994").into_client_request().unwrap();
    request.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::client_async(request, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            Err((response.status(), serde_json::from_slice(body).unwrap_or(Value::Null)))
        }
        Err(err) => panic!("{err}"),
    }
}

async fn close_of(client: &mut Client) -> (u16, String) {
    let read = async {
        loop {
            match client.next().await {
                Some(Ok(WsMessage::Close(Some(frame)))) => return (u16::from(frame.code), frame.reason.to_string()),
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("a close frame within 10 s")
}

#[tokio::test]
async fn a_relay_carries_bytes_and_holds_its_connection_place() {
    let bed = bed(|c| c.api.max_connections_per_source = 1).await;
    let addr = bed.serve().await;
    let token = bed.token("alice", TokenScope::Attach, None).await;
    let (uuid, mut ends) = bed.device();
    let mut client = relay(addr, "127.0.0.1", &token, uuid).await.unwrap();
    let end = ends.recv().await.unwrap();
    end.push(Bytes::from_static(b"hello technician"));
    loop {
        match client.next().await.unwrap().unwrap() {
            WsMessage::Binary(data) => break assert_eq!(data, "hello technician"),
            _ => continue,
        }
    }
    // The upgraded connection still counts against the per-source cap.
    let mut another = connect_from(addr, "127.0.0.1").await;
    assert!(closed_at_once(&mut another).await);
    client.close(None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while bed.api.live_relays() > 0 || bed.api.connections.open().0 > 0 {
        assert!(Instant::now() < deadline, "the relay's places were not freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(bed.counted("tether_relays_closed_total{reason=\"technician_closed\"}"), 1.0);
}

#[tokio::test]
async fn relays_are_capped_per_token_and_device() {
    let bed = bed(|c| c.api.max_relays_per_token_per_device = 1).await;
    let addr = bed.serve().await;
    let alice = bed.token("alice", TokenScope::Attach, None).await;
    let bob = bed.token("bob", TokenScope::Attach, None).await;
    let (pc1, _ends1) = bed.device();
    let (pc2, _ends2) = bed.device();
    let mut first = relay(addr, "127.0.0.1", &alice, pc1).await.unwrap();
    let (status, body) = relay(addr, "127.0.0.1", &alice, pc1).await.unwrap_err();
    assert_eq!((status, reason(&body)), (StatusCode::TOO_MANY_REQUESTS, "relay_cap"));
    assert!(body["error"].as_str().unwrap().contains("api.max_relays_per_token_per_device"), "{body}");
    // Another device, or another token, is not affected.
    let _other_device = relay(addr, "127.0.0.1", &alice, pc2).await.unwrap();
    let _other_token = relay(addr, "127.0.0.1", &bob, pc1).await.unwrap();
    // Once the first is closed, there is room again.
    first.close(None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay(addr, "127.0.0.1", &alice, pc1).await.is_err() {
        assert!(Instant::now() < deadline, "the closed relay still counts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bed.counted("tether_api_rejected_total{reason=\"relay_cap\"}"), 1.0);
}

#[tokio::test]
async fn revoking_or_expiring_a_token_ends_its_relays() {
    let bed = bed(|_| {}).await;
    let addr = bed.serve().await;
    let (uuid, _ends) = bed.device();
    let alice = bed.token("alice", TokenScope::Attach, None).await;
    let bob = bed.token("bob", TokenScope::Attach, None).await;
    let carol =
        bed.token("carol", TokenScope::Attach, Some(OffsetDateTime::now_utc() + time::Duration::seconds(2))).await;
    let mut alices = relay(addr, "127.0.0.1", &alice, uuid).await.unwrap();
    let mut bobs = relay(addr, "127.0.0.1", &bob, uuid).await.unwrap();
    let mut carols = relay(addr, "127.0.0.1", &carol, uuid).await.unwrap();

    let revoked = Instant::now();
    assert!(bed.api.shared.store.revoke_token("alice").await.unwrap());
    assert_eq!(close_of(&mut alices).await, (1008, "the token was revoked".into()));
    assert!(revoked.elapsed() < Duration::from_secs(3), "{:?}", revoked.elapsed());
    assert_eq!(close_of(&mut carols).await, (1008, "the token expired".into()));
    // Bob's relay is untouched.
    bobs.send(WsMessage::Ping(Default::default())).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), bobs.next()).await.unwrap().unwrap().unwrap() {
            WsMessage::Pong(_) => break,
            WsMessage::Close(frame) => panic!("bob's relay closed: {frame:?}"),
            _ => continue,
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while bed.counted("tether_relays_closed_total{reason=\"token_revoked\"}") < 2.0 {
        assert!(Instant::now() < deadline, "the stopped relays were not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(bed.api.live_relays(), 1);
}

/// Waits until the device has received `n` bytes from the technician.
async fn device_reads(end: &StreamEnd, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = 0;
    while got < n {
        match end.take_outbound(n - got) {
            Some((data, _written)) => got += data.len(),
            None => {
                assert!(Instant::now() < deadline, "the device got {got} of {n} bytes");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// The device's redirection sessions, as a technician with `token` lists them.
async fn sessions(bed: &Bed, token: &str, uuid: Uuid, active: bool) -> Vec<Value> {
    let path = format!("/api/v1/devices/{uuid}/redirections?active={active}");
    let (status, _, body) = bed.get("198.18.0.9", Some(token), &path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array().cloned().unwrap_or_default()
}

/// Waits until the listed sessions satisfy `done`.
async fn sessions_until(
    bed: &Bed,
    token: &str,
    uuid: Uuid,
    active: bool,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = sessions(bed, token, uuid, active).await;
        if done(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "sessions never got there: {list:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn who_holds_a_devices_sol_session_is_listed_and_a_refused_second_one_is_not() {
    let bed = bed(|_| {}).await;
    let addr = bed.serve().await;
    let (uuid, mut ends) = bed.device();
    let alice = bed.token("alice", TokenScope::Attach, None).await;
    let bob = bed.token("bob", TokenScope::Attach, None).await;
    let reader = bed.token("reader", TokenScope::Read, None).await;
    let start_sol = Bytes::from_static(b"\x10\x00\x00\x00SOL ");
    let accepted = Bytes::from_static(&[0x11, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);

    let mut alices = relay(addr, "127.0.0.1", &alice, uuid).await.unwrap();
    let alices_end = ends.recv().await.unwrap();
    alices.send(WsMessage::Binary(start_sol.clone())).await.unwrap();
    let auth = [&[0x13, 0, 0, 0, 1, 0x0b, 0, 0, 0, 5][..], b"admin", &[4], b"pass"].concat();
    alices.send(WsMessage::Binary(auth.into())).await.unwrap();
    device_reads(&alices_end, 8 + 20).await;
    alices_end.push(accepted);
    alices_end.push(Bytes::from_static(&[0x14, 0, 0, 0, 1, 0, 0, 0, 0]));
    let held =
        sessions_until(&bed, &reader, uuid, true, |l| l.first().is_some_and(|s| !s["device_user"].is_null())).await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!((held[0]["kind"].as_str(), held[0]["technician"].as_str()), (Some("sol"), Some("alice")));
    assert_eq!((held[0]["device_user"].as_str(), held[0]["outcome"].as_str()), (Some("admin"), Some("active")));
    assert_eq!((held[0]["port"].as_u64(), held[0]["ended_at"].is_null()), (Some(16994), true));
    assert!(held[0]["started_at"].as_str().is_some_and(|t| t.contains('T')), "{held:?}");

    // The device already has a SOL session: it refuses bob's, which is not listed as active.
    let mut bobs = relay(addr, "127.0.0.1", &bob, uuid).await.unwrap();
    let bobs_end = ends.recv().await.unwrap();
    bobs.send(WsMessage::Binary(start_sol)).await.unwrap();
    device_reads(&bobs_end, 8).await;
    bobs_end.push(Bytes::from_static(&[0x11, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]));
    let all = sessions_until(&bed, &reader, uuid, false, |l| l.len() == 2 && !l[0]["ended_at"].is_null()).await;
    assert_eq!((all[0]["technician"].as_str(), all[0]["outcome"].as_str()), (Some("bob"), Some("refused_in_use")));
    let held = sessions(&bed, &reader, uuid, true).await;
    assert_eq!(held.iter().map(|s| s["technician"].as_str()).collect::<Vec<_>>(), [Some("alice")]);
    assert_eq!(bed.counted("tether_redirection_refused_total{kind=\"sol\"}"), 1.0);

    // Alice closes: nothing is held.
    alices.close(None).await.unwrap();
    bobs.close(None).await.unwrap();
    let all = sessions_until(&bed, &reader, uuid, false, |l| l.iter().all(|s| !s["ended_at"].is_null())).await;
    assert_eq!((all[1]["outcome"].as_str(), all[1]["bytes_from_device"].as_u64()), (Some("closed"), Some(22)));
    assert!(sessions(&bed, &reader, uuid, true).await.is_empty());
    let (status, _, body) =
        bed.get("198.18.0.9", Some(&reader), &format!("/api/v1/devices/{uuid}/redirections?limit=0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[test]
fn token_format() {
    assert!(admission::well_formed(&auth::new_token()));
    assert!(!admission::well_formed(&format!("tth_{}", "a".repeat(44))));
    assert!(!admission::well_formed(&format!("tth_{}=", "a".repeat(42))));
    assert!(!admission::well_formed(&format!("TTH_{}", "a".repeat(43))));
    assert_eq!(retry_secs(Duration::from_millis(1)), 1);
    assert_eq!(retry_secs(Duration::from_millis(1500)), 2);
    assert_eq!(retry_secs(Duration::ZERO), 1);
}

/// Read-only tokens may not act on the LAN (not even the magic-packet fallback of a wake), and
/// with `lan.interfaces` empty nothing may be scanned, woken or adopted.
#[tokio::test]
async fn lan_actions_need_scope_attach_and_the_lan_tools_turned_on() {
    let bed = bed(|_| {}).await;
    let reader = bed.token("reader", TokenScope::Read, None).await;
    let actor = bed.token("actor", TokenScope::Attach, None).await;
    let uuid = Uuid::new_v4();
    let wake = format!("/api/v1/devices/{uuid}/wake");
    let (status, _, body) = bed.post("127.0.0.1", Some(&reader), &wake, json!({ "interface": "eth1" })).await;
    assert_eq!((status, reason(&body)), (StatusCode::FORBIDDEN, "scope"), "{body}");
    let scan = json!({ "interface": "eth1" });
    let (status, _, body) = bed.post("127.0.0.1", Some(&reader), "/api/v1/lan/scans", scan.clone()).await;
    assert_eq!((status, reason(&body)), (StatusCode::FORBIDDEN, "scope"), "{body}");
    for (path, request) in [
        ("/api/v1/lan/scans", scan),
        ("/api/v1/lan/wake", json!({ "mac": "02:00:00:00:00:01", "interface": "eth1" })),
        ("/api/v1/lan/devices", json!({ "ip": "192.168.1.20", "uuid": uuid })),
    ] {
        let (status, _, body) = bed.post("127.0.0.1", Some(&actor), path, request).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| e.contains("the LAN tools are off")), "{path}: {body}");
    }
    let (status, _, body) = bed.get("127.0.0.1", Some(&reader), "/api/v1/lan/hosts").await;
    assert_eq!((status, body), (StatusCode::OK, json!([])));
}
