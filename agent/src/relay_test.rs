use tokio::io::DuplexStream;
use tokio::net::TcpListener;

use super::*;
use crate::state::AgentState;

fn relay(remote_help: bool, ports: Vec<u16>) -> (tempfile::TempDir, Relay) {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    state.save_state(&AgentState { next_seq: 0, remote_help }).unwrap();
    (dir, Relay::new(state, ports))
}

/// The gateway's end of a new stream, with the agent serving the other end.
fn open_stream(relay: &Relay) -> DuplexStream {
    let (gateway, agent) = tokio::io::duplex(64 * 1024);
    let (recv, send) = tokio::io::split(agent);
    relay.spawn(recv, send);
    gateway
}

async fn send_open(gateway: &mut DuplexStream, port: u16, after: &[u8]) {
    let mut frame = BytesMut::new();
    Message::ChannelOpen { channel: 7, port, requested_by: "bob via the gateway".into() }.encode(&mut frame);
    // The session's first bytes right behind the frame, in the same write.
    frame.extend_from_slice(after);
    gateway.write_all(&frame).await.unwrap();
}

async fn answer(gateway: &mut DuplexStream) -> Message {
    let mut header = [0u8; tap::HEADER_LEN];
    gateway.read_exact(&mut header).await.unwrap();
    let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    let mut frame = header.to_vec();
    frame.resize(tap::HEADER_LEN + len, 0);
    gateway.read_exact(&mut frame[tap::HEADER_LEN..]).await.unwrap();
    tap::decode(&frame, &tap::Limits::default()).unwrap().unwrap().0
}

fn refusal(message: Message) -> (RefuseReason, String) {
    match message {
        Message::ChannelRefuse { channel: 7, reason, text } => (reason, text),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn an_allowed_port_is_relayed_byte_for_byte() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = tcp.split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
    });
    let (_dir, relay) = relay(true, vec![port]);
    let mut gateway = open_stream(&relay);
    send_open(&mut gateway, port, b"raw bytes, not a frame").await;
    assert_eq!(answer(&mut gateway).await, Message::ChannelAccept { channel: 7 });
    let mut echoed = [0u8; 22];
    tokio::time::timeout(Duration::from_secs(5), gateway.read_exact(&mut echoed)).await.unwrap().unwrap();
    assert_eq!(&echoed, b"raw bytes, not a frame");
    assert_eq!(relay.open_channels(), 1);
    // The gateway ends: the local side sees the end, and the stream is finished.
    gateway.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), gateway.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert!(rest.is_empty());
    for _ in 0..50 {
        if relay.open_channels() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(relay.open_channels(), 0);
}

#[tokio::test]
async fn remote_help_off_is_refused_first() {
    let (_dir, relay) = relay(false, vec![22]);
    let mut gateway = open_stream(&relay);
    send_open(&mut gateway, 22, b"").await;
    let (reason, text) = refusal(answer(&mut gateway).await);
    assert_eq!(reason, RefuseReason::RemoteHelpDisabled);
    assert_eq!(text, "the PC user has turned remote help off");
}

#[tokio::test]
async fn a_port_outside_the_policy_is_refused() {
    let (_dir, relay) = relay(true, vec![22]);
    let mut gateway = open_stream(&relay);
    send_open(&mut gateway, 5900, b"").await;
    let (reason, text) = refusal(answer(&mut gateway).await);
    assert_eq!(reason, RefuseReason::PortNotAllowed);
    assert_eq!(text, "port 5900 is not in this PC's forward policy ([forward] ports in policy.toml)");
}

#[tokio::test]
async fn nothing_listening_is_a_connect_failure() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let (_dir, relay) = relay(true, vec![port]);
    let mut gateway = open_stream(&relay);
    send_open(&mut gateway, port, b"").await;
    let (reason, text) = refusal(answer(&mut gateway).await);
    assert_eq!(reason, RefuseReason::ConnectFailed);
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
}

#[tokio::test]
async fn beyond_the_channel_limit_is_busy() {
    let (_dir, relay) = relay(true, vec![22]);
    let _all = Arc::clone(&relay.slots).try_acquire_many_owned(MAX_CHANNELS as u32).unwrap();
    let mut gateway = open_stream(&relay);
    send_open(&mut gateway, 22, b"").await;
    assert_eq!(refusal(answer(&mut gateway).await).0, RefuseReason::Busy);
}

#[tokio::test]
async fn a_stream_not_starting_with_a_channel_open_is_dropped() {
    let (_dir, relay) = relay(true, vec![22]);
    let mut gateway = open_stream(&relay);
    let mut frame = BytesMut::new();
    Message::Ping { nonce: 1 }.encode(&mut frame);
    gateway.write_all(&frame).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), gateway.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert!(rest.is_empty());
}
