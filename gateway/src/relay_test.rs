//! The relay between a real WebSocket client (tokio-tungstenite, on loopback) and a device stream
//! whose driver end the test plays: message boundaries, credit, half-close, and every way a relay
//! ends.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use super::*;
use crate::stream::{self, StreamClosed, StreamConfig, StreamEnd, StreamKey};

type Client = WebSocketStream<TcpStream>;

/// Socket buffers small enough that a technician who stops reading blocks the gateway's sends
/// after a few tens of KiB.
const SMALL_BUFFER: u32 = 8 * 1024;

struct Bed {
    end: StreamEnd,
    wake: mpsc::UnboundedReceiver<StreamKey>,
    stop: Option<oneshot::Sender<Stop>>,
    outcome: oneshot::Receiver<Outcome>,
    client: Client,
}

fn limits() -> RelayLimits {
    RelayLimits {
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        max_duration: Duration::from_secs(60),
        max_frame_bytes: 64 * 1024,
    }
}

/// One relay served on loopback, to a device stream the test drives, and its client.
async fn bed(limits: RelayLimits) -> Bed {
    let (wake_tx, wake) = mpsc::unbounded_channel();
    let (user, end) = stream::pair(1, 16994, StreamConfig::default(), wake_tx);
    let (stop_tx, stop_rx) = oneshot::channel();
    let (outcome_tx, outcome) = oneshot::channel();
    let parts = Arc::new(Mutex::new(Some((user, stop_rx, outcome_tx))));
    let app = Router::new().route(
        "/relay",
        get(move |ws: WebSocketUpgrade| async move {
            let (user, stop, outcome_tx) = parts.lock().unwrap().take().expect("one relay per bed");
            limit_frames(ws, &limits).on_upgrade(move |socket| async move {
                let _ = outcome_tx.send(run(socket, user, limits, stop).await);
            })
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        socket2::SockRef::from(&tcp).set_send_buffer_size(SMALL_BUFFER as usize).unwrap();
        let service = TowerToHyperService::new(app);
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades()
            .await;
    });
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(SMALL_BUFFER).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (client, _) = tokio_tungstenite::client_async(format!("ws://{addr}/relay"), tcp).await.unwrap();
    Bed { end, wake, stop: Some(stop_tx), outcome, client }
}

/// The next message other than ping/pong.
async fn next_message(client: &mut Client) -> WsMessage {
    let next = async {
        loop {
            match client.next().await {
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                Some(Ok(message)) => return message,
                other => panic!("the relay connection ended: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), next).await.expect("a message within 10 s")
}

/// Reads until the close frame; its code and reason.
async fn close_of(client: &mut Client) -> (u16, String) {
    loop {
        match next_message(client).await {
            WsMessage::Close(Some(frame)) => return (u16::from(frame.code), frame.reason.to_string()),
            WsMessage::Close(None) => panic!("a close frame without a reason"),
            _ => continue,
        }
    }
}

async fn outcome(done: oneshot::Receiver<Outcome>) -> Outcome {
    tokio::time::timeout(Duration::from_secs(10), done).await.expect("the relay ended").unwrap()
}

/// Takes `n` bytes the relay wrote to the device stream, as the driver would.
async fn take_outbound(end: &StreamEnd, n: usize) -> Vec<u8> {
    let mut taken = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while taken.len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} bytes reached the device stream", taken.len());
        match end.take_outbound(n - taken.len()) {
            Some((data, _written)) => taken.extend_from_slice(&data),
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    taken
}

#[tokio::test]
async fn device_messages_keep_their_boundaries_and_eof_half_closes_both_ways() {
    let mut bed = bed(limits()).await;
    bed.end.push(Bytes::from_static(b"ab"));
    bed.end.push(Bytes::from_static(b"cd"));
    assert_eq!(next_message(&mut bed.client).await, WsMessage::binary(&b"ab"[..]));
    assert_eq!(next_message(&mut bed.client).await, WsMessage::binary(&b"cd"[..]));
    // Credit goes back to the device for what was sent.
    let mut released = 0;
    while released < 4 {
        tokio::time::timeout(Duration::from_secs(5), bed.wake.recv()).await.expect("a wake for the credit");
        released += bed.end.poll_wanted().released;
    }
    assert_eq!(released, 4);

    bed.client.send(WsMessage::binary(&b"xyz"[..])).await.unwrap();
    assert_eq!(take_outbound(&bed.end, 3).await, b"xyz");

    // The device is done sending: the technician hears `eof`, and can still send.
    bed.end.push_eof();
    assert_eq!(next_message(&mut bed.client).await, WsMessage::text(EOF_MESSAGE));
    bed.client.send(WsMessage::binary(&b"more"[..])).await.unwrap();
    assert_eq!(take_outbound(&bed.end, 4).await, b"more");
    // The technician is done too: the device gets its EOF, and the relay ends.
    bed.client.send(WsMessage::text(EOF_MESSAGE)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !bed.end.take_eof() {
        assert!(Instant::now() < deadline, "no EOF for the device");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(close_of(&mut bed.client).await, (1000, "the device closed the connection".into()));
    let outcome = outcome(bed.outcome).await;
    assert_eq!((outcome.end, outcome.to_device, outcome.from_device), (RelayEnd::DeviceClosed, 7, 4));
}

/// The test's device driver: keeps the device's window full, and sees credit come back.
fn drive_device(
    end: StreamEnd,
    mut wake: mpsc::UnboundedReceiver<StreamKey>,
    window: usize,
    released: Arc<AtomicUsize>,
) {
    tokio::spawn(async move {
        const CHUNK: usize = 16 * 1024;
        let mut outstanding = 0;
        loop {
            let wanted = end.poll_wanted();
            outstanding -= wanted.released;
            released.fetch_add(wanted.released, Ordering::SeqCst);
            if wanted.close {
                return;
            }
            while outstanding + CHUNK <= window {
                end.push(Bytes::from(vec![0x5a; CHUNK]));
                outstanding += CHUNK;
            }
            if tokio::time::timeout(Duration::from_secs(30), wake.recv()).await.ok().flatten().is_none() {
                return;
            }
        }
    });
}

#[tokio::test]
async fn a_technician_who_stops_reading_stalls_the_device_and_is_dropped_after_the_ping_timeout() {
    let limits = RelayLimits { ping_timeout: Duration::from_millis(800), ..limits() };
    let Bed { end, wake, stop: _stop, outcome, client } = bed(limits).await;
    // The technician never reads again (and so never answers a ping).
    let stalled_at = Instant::now();
    let released = Arc::new(AtomicUsize::new(0));
    const WINDOW: usize = 256 * 1024;
    drive_device(end, wake, WINDOW, Arc::clone(&released));

    // The gateway's sends stall once the socket buffers are full; credit stops with them, so the
    // device stops too, with no more than its window waiting in the gateway.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let plateau = released.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(released.load(Ordering::SeqCst), plateau, "the relay kept sending to a technician who does not read");
    assert!(plateau < 4 << 20, "{plateau} bytes left for a technician who does not read");

    // The ping timeout fires although the relay's send is stuck.
    let outcome = tokio::time::timeout(Duration::from_secs(10), outcome).await.expect("the relay ended").unwrap();
    let took = stalled_at.elapsed();
    assert_eq!(outcome.end, RelayEnd::PingTimeout);
    assert!(
        took >= limits.ping_timeout && took < limits.ping_timeout + CLOSE_WAIT + Duration::from_secs(1),
        "{took:?}"
    );
    assert_eq!(outcome.from_device as usize, plateau);
    drop(client);
}

/// The test's device as an echo service: sends back what it takes, within its window, and stops
/// taking when the window is full (as AMT's services do).
fn echo_device(end: StreamEnd, mut wake: mpsc::UnboundedReceiver<StreamKey>, window: usize) {
    tokio::spawn(async move {
        let mut outstanding = 0;
        loop {
            let wanted = end.poll_wanted();
            outstanding -= wanted.released;
            if wanted.close {
                return;
            }
            while outstanding < window {
                let Some((data, _written)) = end.take_outbound(window - outstanding) else { break };
                outstanding += data.len();
                end.push(data);
            }
            if tokio::time::timeout(Duration::from_secs(30), wake.recv()).await.ok().flatten().is_none() {
                return;
            }
        }
    });
}

#[tokio::test]
async fn a_technician_who_writes_but_never_reads_is_dropped_after_the_ping_timeout() {
    let limits = RelayLimits { ping_timeout: Duration::from_millis(800), max_frame_bytes: 1 << 20, ..limits() };
    let Bed { end, wake, stop: _stop, outcome, mut client } = bed(limits).await;
    echo_device(end, wake, 256 * 1024);
    // Writes until the gateway stops taking them: the echo it never reads backs up through the
    // device into the relay's writes.
    let mut written = 0usize;
    let stalled = loop {
        match tokio::time::timeout(Duration::from_millis(500), client.send(WsMessage::binary(vec![1u8; 64 * 1024])))
            .await
        {
            Ok(sent) => {
                sent.unwrap();
                written += 64 * 1024;
                assert!(written < 64 << 20, "the gateway took 64 MiB from a technician who reads nothing");
            }
            Err(_) => break Instant::now(),
        }
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), outcome).await.expect("the relay ended").unwrap();
    assert_eq!(outcome.end, RelayEnd::PingTimeout, "after {written} bytes written");
    assert!(stalled.elapsed() < limits.ping_timeout + CLOSE_WAIT + Duration::from_secs(1), "{:?}", stalled.elapsed());
}

#[tokio::test]
async fn waiting_on_a_slow_device_is_not_the_technicians_silence() {
    let limits = RelayLimits { ping_timeout: Duration::from_millis(400), max_frame_bytes: 1 << 20, ..limits() };
    let mut bed = bed(limits).await;
    // More than the stream's send budget: the relay waits for the device to take it.
    const SIZE: usize = 300 * 1024;
    bed.client.send(WsMessage::binary(vec![7u8; SIZE])).await.unwrap();
    // The technician now says nothing at all (it does not even read, so it answers no ping).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(bed.outcome.try_recv().is_err(), "dropped for silence while the device was not taking data");
    let device_took = Instant::now();
    assert_eq!(take_outbound(&bed.end, SIZE).await.len(), SIZE);
    // From then on the silence counts again.
    let outcome = outcome(bed.outcome).await;
    assert_eq!((outcome.end, outcome.to_device), (RelayEnd::PingTimeout, SIZE as u64));
    assert!(device_took.elapsed() >= limits.ping_timeout, "{:?}", device_took.elapsed());
}

#[tokio::test]
async fn a_technician_who_reads_but_sends_nothing_is_kept_by_its_pongs() {
    let limits = RelayLimits { ping_timeout: Duration::from_millis(400), ..limits() };
    let mut bed = bed(limits).await;
    // Reading answers the relay's pings.
    let read = async {
        loop {
            let _ = bed.client.next().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(1500), read).await;
    assert!(bed.outcome.try_recv().is_err(), "the relay ended although the technician answered its pings");
    bed.client.close(None).await.unwrap();
    assert_eq!(outcome(bed.outcome).await.end, RelayEnd::TechnicianClosed);
}

#[tokio::test]
async fn a_relay_with_no_data_either_way_ends_after_the_idle_timeout() {
    let limits = RelayLimits { idle_timeout: Duration::from_millis(500), ..limits() };
    let mut bed = bed(limits).await;
    let started = Instant::now();
    let (code, reason) = close_of(&mut bed.client).await;
    assert!(started.elapsed() >= limits.idle_timeout);
    assert_eq!(code, 1000);
    assert!(reason.contains("api.relay_idle_timeout_secs"), "{reason}");
    assert_eq!(outcome(bed.outcome).await.end, RelayEnd::IdleTimeout);
}

#[tokio::test]
async fn a_busy_relay_ends_at_its_maximum_duration() {
    let limits =
        RelayLimits { idle_timeout: Duration::from_millis(300), max_duration: Duration::from_millis(900), ..limits() };
    let mut bed = bed(limits).await;
    let started = Instant::now();
    // Data every 100 ms: never idle.
    let (code, reason) = loop {
        bed.end.push(Bytes::from_static(b"tick"));
        match tokio::time::timeout(Duration::from_millis(100), close_of(&mut bed.client)).await {
            Ok(close) => break close,
            Err(_) => continue,
        }
    };
    assert!(started.elapsed() >= limits.max_duration);
    assert_eq!(code, 1008);
    assert!(reason.contains("api.relay_max_duration_secs"), "{reason}");
    assert_eq!(outcome(bed.outcome).await.end, RelayEnd::MaxDuration);
}

#[tokio::test]
async fn a_frame_header_over_the_limit_ends_the_relay_before_its_payload_arrives() {
    let mut bed = bed(limits()).await;
    // A masked binary frame announcing 1 GiB; not one byte of payload follows.
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    bed.client.get_mut().write_all(&header).await.unwrap();
    let (code, reason) = close_of(&mut bed.client).await;
    assert_eq!(code, 1009);
    assert!(reason.contains("65536") && reason.contains("api.max_frame_bytes"), "{reason}");
    let outcome = outcome(bed.outcome).await;
    assert_eq!((outcome.end, outcome.to_device), (RelayEnd::FrameTooLarge, 0));
}

#[tokio::test]
async fn a_whole_message_over_the_limit_ends_the_relay() {
    let mut bed = bed(limits()).await;
    bed.client.send(WsMessage::binary(vec![0u8; 100_000])).await.unwrap();
    assert_eq!(close_of(&mut bed.client).await.0, 1009);
    assert_eq!(outcome(bed.outcome).await.end, RelayEnd::FrameTooLarge);
}

#[tokio::test]
async fn a_stop_from_outside_closes_with_its_reason() {
    for (stop, reason) in [(Stop::TokenRevoked, "the token was revoked"), (Stop::TokenExpired, "the token expired")] {
        let mut bed = bed(limits()).await;
        bed.stop.take().unwrap().send(stop).unwrap();
        assert_eq!(close_of(&mut bed.client).await, (1008, reason.to_string()));
        assert_eq!(outcome(bed.outcome).await.end, RelayEnd::TokenRevoked);
    }
}

#[tokio::test]
async fn a_tunnel_gone_delivers_what_was_queued_then_closes() {
    let bed = bed(limits()).await;
    bed.end.push(Bytes::from_static(b"last words"));
    let Bed { end, outcome: done, mut client, .. } = bed;
    drop(end);
    assert_eq!(next_message(&mut client).await, WsMessage::binary(&b"last words"[..]));
    assert_eq!(close_of(&mut client).await.0, 1001);
    assert_eq!(outcome(done).await.end, RelayEnd::TunnelGone);
}

#[tokio::test]
async fn writing_to_a_device_that_closed_ends_the_relay_as_device_closed() {
    let mut bed = bed(limits()).await;
    bed.end.close(StreamClosed::Device);
    assert_eq!(next_message(&mut bed.client).await, WsMessage::text(EOF_MESSAGE));
    bed.client.send(WsMessage::binary(&b"anyone there?"[..])).await.unwrap();
    assert_eq!(close_of(&mut bed.client).await.0, 1000);
    assert_eq!(outcome(bed.outcome).await.end, RelayEnd::DeviceClosed);
}

#[tokio::test]
async fn a_technician_close_ends_the_relay_and_closes_the_device_stream() {
    let mut bed = bed(limits()).await;
    bed.client.close(None).await.unwrap();
    assert_eq!(outcome(bed.outcome).await.end, RelayEnd::TechnicianClosed);
    let end = bed.end;
    assert!(end.poll_wanted().close, "the device stream is still open");
}
