//! The tunnel driver over in-memory duplex streams (no sockets, no TLS): a simulated AMT device
//! (amt-sim's own driver) on one end, [`Tunnel::run`] on the other, with a real store in a temp
//! dir and real argon2.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use loadtest::amt::{self, DeviceConfig, Services, Shutdown, ShutdownTrigger, Trust};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadBuf};

use super::*;
use crate::auth::hash_password;
use crate::config::{Config, DevicePolicy};
use crate::limits::ConnectionCaps;
use crate::state::TestState;

const USER: &str = "mpsuser";
const PASSWORD: &str = "P@ssw0rd-in-memory";

struct Bed {
    shared: Arc<Shared>,
    pool: Arc<ConnectionCaps>,
    slots: Arc<Semaphore>,
    _state: TestState,
}

async fn bed(policy: DevicePolicy) -> Bed {
    let mut config = Config::default();
    config.devices.policy = policy;
    config.devices.liveness_timeout_ms = 300;
    let state = TestState::new(config).await;
    let shared = Arc::clone(&state.shared);
    shared.store.set_mps_account(USER, &hash_password(PASSWORD.as_bytes()).unwrap()).await.unwrap();
    let gauge = shared.metrics.pending_connections().clone();
    Bed {
        shared,
        pool: Arc::new(ConnectionCaps::new(100, 100).with_gauge(gauge)),
        slots: Arc::new(Semaphore::new(100)),
        _state: state,
    }
}

/// A device end that can be frozen: from then on it neither reads nor writes (like a PC whose
/// network went away without a FIN).
struct Freezable {
    inner: DuplexStream,
    frozen: Arc<AtomicBool>,
}

impl AsyncRead for Freezable {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Freezable {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct Device {
    frozen: Arc<AtomicBool>,
    stop: ShutdownTrigger,
    task: tokio::task::JoinHandle<amt::ConnectionOutcome>,
    gateway: tokio::task::JoinHandle<()>,
}

fn device_config(uuid: Uuid, user: &str, password: &str) -> DeviceConfig {
    let tls = amt::client_config(&Trust::Insecure).expect("a TLS client config");
    let name = amt::server_name("gateway.test").expect("a server name");
    let mut config = DeviceConfig::new("in-memory:0", name, tls, uuid, user, password);
    // Echo on every port, and firmware-like small window steps.
    config.services = Services::none().with_fallback(amt::Echo);
    config
}

/// Connects a simulated device to a new tunnel driver with connection id `id`.
fn connect(bed: &Bed, id: u64, config: DeviceConfig, from: &str) -> Device {
    let (gateway_end, device_end) = tokio::io::duplex(64 * 1024);
    let frozen = Arc::new(AtomicBool::new(false));
    let stream = Freezable { inner: device_end, frozen: Arc::clone(&frozen) };
    let (stop, shutdown): (ShutdownTrigger, Shutdown) = amt::shutdown_pair();
    let task = tokio::spawn(async move {
        let mut shutdown = shutdown;
        amt::run_connection(&config, stream, &mut shutdown).await
    });
    let slot = bed.pool.try_enter(from.parse::<SocketAddr>().unwrap().ip()).unwrap();
    let tunnel = Tunnel::new(Arc::clone(&bed.shared), from.parse().unwrap(), id, slot, Arc::clone(&bed.slots));
    let gateway = tokio::spawn(tunnel.run(gateway_end));
    Device { frozen, stop, task, gateway }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn holder(bed: &Bed, uuid: Uuid) -> Option<u64> {
    bed.shared.registry.get(uuid, TunnelKind::Cira).map(|h| h.id)
}

async fn established(bed: &Bed, uuid: Uuid, id: u64) {
    wait_until(&format!("connection {id} to hold {uuid}"), || {
        holder(bed, uuid) == Some(id)
            && bed.shared.registry.get(uuid, TunnelKind::Cira).is_some_and(|h| h.ports().contains(&16994))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_streams_through_the_driver_without_sockets() {
    let bed = bed(DevicePolicy::Pinned).await;
    let uuid = Uuid::new_v4();
    let device = connect(&bed, 1, device_config(uuid, USER, PASSWORD), "198.18.0.1:1000");
    established(&bed, uuid, 1).await;
    let tunnel = bed.shared.registry.get(uuid, TunnelKind::Cira).unwrap();
    let mut stream = tunnel.open_stream(16994, "198.18.9.9:5".parse().unwrap(), Duration::from_secs(5)).await.unwrap();
    // More than the channel's window and the stream's budget, both ways at once.
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut echoed = Vec::new();
    rd.read_to_end(&mut echoed).await.unwrap();
    writer.await.unwrap();
    assert!(echoed == payload, "echo differs ({} of {} bytes)", echoed.len(), payload.len());
    // The stream's user API is the same for every transport: open a second one and drop it.
    stream = tunnel.open_stream(16992, "198.18.9.9:6".parse().unwrap(), Duration::from_secs(5)).await.unwrap();
    drop(stream);
    device.stop.trigger();
    device.task.await.unwrap();
    device.gateway.await.unwrap();
    assert!(holder(&bed, uuid).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_device_keeps_its_uuid_against_a_newer_claim() {
    let bed = bed(DevicePolicy::Open).await;
    let uuid = Uuid::new_v4();
    let real = connect(&bed, 1, device_config(uuid, USER, PASSWORD), "198.18.0.1:1000");
    established(&bed, uuid, 1).await;
    // Same credentials, same NAT address, newer connection: refused after the real device
    // answered the probe.
    let impostor = connect(&bed, 2, device_config(uuid, USER, PASSWORD), "198.18.0.1:2000");
    let outcome = impostor.task.await.unwrap();
    assert!(!outcome.established, "the impostor got in: {outcome:?}");
    impostor.gateway.await.unwrap();
    assert_eq!(holder(&bed, uuid), Some(1));
    let text = bed.shared.metrics.render();
    assert!(text.contains("tether_connections_rejected_total{reason=\"uuid_conflict\"} 1"), "{text}");
    real.stop.trigger();
    real.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_went_silent_is_replaced_by_its_reconnect() {
    let bed = bed(DevicePolicy::Pinned).await;
    let uuid = Uuid::new_v4();
    let old = connect(&bed, 1, device_config(uuid, USER, PASSWORD), "198.18.0.1:1000");
    established(&bed, uuid, 1).await;
    old.frozen.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let new = connect(&bed, 2, device_config(uuid, USER, PASSWORD), "198.18.0.2:1000");
    established(&bed, uuid, 2).await;
    // Within the liveness timeout (300 ms) plus the handshake.
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    // The old tunnel was told to close; its driver ends without touching the new record.
    old.gateway.await.unwrap();
    assert_eq!(holder(&bed, uuid), Some(2));
    let text = bed.shared.metrics.render();
    assert!(text.contains("tether_tunnels_closed_total{kind=\"cira\",reason=\"replaced\"} 1"), "{text}");
    old.stop.trigger();
    new.stop.trigger();
    new.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_connection_whose_auth_finishes_late_never_evicts_a_newer_one() {
    let bed = bed(DevicePolicy::Open).await;
    let uuid = Uuid::new_v4();
    // Connection 6 was accepted after connection 5, but 5's authentication finishes later.
    let newer = connect(&bed, 6, device_config(uuid, USER, PASSWORD), "198.18.0.2:1000");
    established(&bed, uuid, 6).await;
    newer.frozen.store(true, Ordering::SeqCst);
    let older = connect(&bed, 5, device_config(uuid, USER, PASSWORD), "198.18.0.1:1000");
    let outcome = older.task.await.unwrap();
    assert!(!outcome.established, "{outcome:?}");
    // Even though the newer one no longer answers: order decides, not liveness.
    assert_eq!(holder(&bed, uuid), Some(6));
    newer.stop.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uuid_pinned_to_one_account_refuses_another() {
    let bed = bed(DevicePolicy::Pinned).await;
    bed.shared.store.set_mps_account("other", &hash_password(b"other-password").unwrap()).await.unwrap();
    let uuid = Uuid::new_v4();
    let first = connect(&bed, 1, device_config(uuid, USER, PASSWORD), "198.18.0.1:1000");
    established(&bed, uuid, 1).await;
    first.stop.trigger();
    first.task.await.unwrap();
    first.gateway.await.unwrap();
    let mut config = device_config(uuid, "other", "other-password");
    config.stop_on_auth_failure = true;
    let second = connect(&bed, 2, config, "198.18.0.1:2000");
    let outcome = second.task.await.unwrap();
    assert!(outcome.auth_rejected, "{outcome:?}");
    let text = bed.shared.metrics.render();
    assert!(text.contains("tether_auth_failures_total{reason=\"credential_mismatch\"} 1"), "{text}");
    assert_eq!(
        bed.shared.store.device(uuid).await.unwrap().unwrap().pinned_credential.as_deref(),
        Some("account:mpsuser")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_registered_only_devices_with_their_own_password_get_in() {
    let bed = bed(DevicePolicy::Registered).await;
    let (known, unknown) = (Uuid::new_v4(), Uuid::new_v4());
    bed.shared.store.add_device(known, Some(&hash_password(b"own-password").unwrap())).await.unwrap();
    let good = connect(&bed, 1, device_config(known, USER, "own-password"), "198.18.0.1:1000");
    established(&bed, known, 1).await;
    let mut config = device_config(unknown, USER, PASSWORD);
    config.stop_on_auth_failure = true;
    let stranger = connect(&bed, 2, config, "198.18.0.3:1000");
    assert!(stranger.task.await.unwrap().auth_rejected);
    let text = bed.shared.metrics.render();
    assert!(text.contains("tether_auth_failures_total{reason=\"not_registered\"} 1"), "{text}");
    good.stop.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_see_a_closing_tunnel_as_gone_not_as_end_of_stream() {
    let bed = bed(DevicePolicy::Pinned).await;
    let uuid = Uuid::new_v4();
    let device = connect(&bed, 1, device_config(uuid, USER, PASSWORD), "198.18.0.1:1000");
    established(&bed, uuid, 1).await;
    let tunnel = bed.shared.registry.get(uuid, TunnelKind::Cira).unwrap();
    let mut stream = tunnel.open_stream(16994, "198.18.9.9:5".parse().unwrap(), Duration::from_secs(5)).await.unwrap();
    tunnel.close(CloseReason::Shutdown);
    let r = stream.chunk().await;
    device.stop.trigger();
    assert!(r.is_err(), "tunnel gone seen as {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacker_failing_for_a_uuid_does_not_lock_the_real_device_out() {
    let bed = bed(DevicePolicy::Registered).await;
    let uuid = Uuid::new_v4();
    bed.shared.store.add_device(uuid, Some(&hash_password(b"own-password").unwrap())).await.unwrap();
    // An attacker who only knows the UUID fails from a few addresses.
    for i in 0..20u8 {
        bed.shared.limiter.auth_failed(format!("198.51.100.{i}").parse().unwrap(), Some(uuid));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let r = identity::authenticate(
        &bed.shared,
        uuid,
        "203.0.113.5:1".parse().unwrap(),
        USER.as_bytes(),
        b"own-password",
        deadline,
    )
    .await;
    assert!(r.is_ok(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_peer_flooding_keepalives_is_closed_in_time() {
    use protocols::apf::Message;
    let mut config = Config::default();
    config.apf.handshake_timeout_secs = 2;
    let state = TestState::new(config).await;
    let shared = Arc::clone(&state.shared);
    let pool = Arc::new(ConnectionCaps::new(100, 100));
    let slots = Arc::new(Semaphore::new(100));
    let (gateway_end, mut peer) = tokio::io::duplex(64 * 1024);
    let slot = pool.try_enter("198.18.0.7".parse().unwrap()).unwrap();
    let tunnel = Tunnel::new(Arc::clone(&shared), "198.18.0.7:1".parse().unwrap(), 1, slot, slots);
    let started = Instant::now();
    let gateway = tokio::spawn(tunnel.run(gateway_end));
    let mut hello = BytesMut::new();
    Message::ProtocolVersion { major: 1, minor: 0, trigger_reason: 0, uuid: Uuid::new_v4() }.encode(&mut hello);
    peer.write_all(&hello).await.unwrap();
    let mut chunk = BytesMut::new();
    for i in 0..1000u32 {
        Message::KeepaliveRequest { cookie: i }.encode(&mut chunk);
    }
    let chunk = chunk.freeze();
    let mut written = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), peer.write_all(&chunk)).await {
            Ok(Ok(())) => written += chunk.len(),
            _ => break,
        }
        if written > 64 * 1024 * 1024 {
            break;
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(15), gateway).await.is_ok();
    let _ = started;
    drop(peer);
    assert!(written < 64 * 1024 && ended, "{written} {ended}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_tunnels_a_device_replacing_its_dead_tunnel_takes_its_slot() {
    let mut b = bed(DevicePolicy::Pinned).await;
    b.slots = Arc::new(Semaphore::new(1));
    let uuid = Uuid::new_v4();
    let old = connect(&b, 1, device_config(uuid, USER, PASSWORD), "198.18.0.1:1000");
    established(&b, uuid, 1).await;
    old.frozen.store(true, Ordering::SeqCst);
    let new = connect(&b, 2, device_config(uuid, USER, PASSWORD), "198.18.0.2:1000");
    let got_in = tokio::time::timeout(Duration::from_secs(8), established(&b, uuid, 2)).await.is_ok();
    let text = b.shared.metrics.render();
    let line: Vec<&str> = text.lines().filter(|l| l.contains("too_many_tunnels") && !l.starts_with('#')).collect();
    old.stop.trigger();
    new.stop.trigger();
    assert!(got_in, "{line:?}; holder {:?}", holder(&b, uuid));
}
