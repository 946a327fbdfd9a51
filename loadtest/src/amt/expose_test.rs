use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use protocols::session::ChannelId;

use super::*;
use crate::amt::channel::HandlerChannel;
use crate::amt::service::WakeSet;

const CH: ChannelId = ChannelId(3);

/// A handler over a pipe whose task side the test plays, and the channel's wake-ups.
fn handler() -> (ExposeChannel, Arc<Pipe>, Arc<WakeSet>) {
    let wakes = WakeSet::new();
    let pipe = Pipe::new(wakes.waker(CH));
    (ExposeChannel::with_pipe(Arc::clone(&pipe)), pipe, wakes)
}

/// The channel's output buffer and flags, as a driver keeps them.
#[derive(Default)]
struct Out {
    buf: BytesMut,
    close: bool,
    end: bool,
}

impl Out {
    fn outbox(&mut self, limit: usize) -> Outbox<'_> {
        Outbox::new(&mut self.buf, limit, &mut self.close).with_end(&mut self.end)
    }
}

async fn soon<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f).await.expect("in time")
}

async fn not_yet<T>(f: impl std::future::Future<Output = T>) {
    assert!(tokio::time::timeout(Duration::from_millis(50), f).await.is_err(), "should still wait");
}

#[tokio::test]
async fn input_stops_at_the_bound_and_resumes_once_written() {
    let (mut handler, pipe, wakes) = handler();
    let mut out = Out::default();
    let input = vec![7u8; MAX_TO_SOCKET + 1000];
    assert_eq!(handler.on_data(&input, &mut out.outbox(1024)), MAX_TO_SOCKET);
    assert_eq!(handler.on_data(&input[MAX_TO_SOCKET..], &mut out.outbox(1024)), 0, "full");

    // The writer takes the lot; it still counts until written.
    let chunk = soon(pipe.next_for_socket()).await.expect("bytes");
    assert_eq!(chunk.len(), MAX_TO_SOCKET);
    assert_eq!(handler.on_data(&input[MAX_TO_SOCKET..], &mut out.outbox(1024)), 0, "being written");
    assert!(!wakes.take_one(CH));
    pipe.written();
    assert!(wakes.take_one(CH), "a write wakes the channel");
    assert_eq!(handler.on_data(&input[MAX_TO_SOCKET..], &mut out.outbox(1024)), 1000);
    let chunk = soon(pipe.next_for_socket()).await.expect("bytes");
    assert_eq!(chunk.len(), 1000);
    assert!(out.buf.is_empty() && !out.close && !out.end);
}

#[tokio::test]
async fn socket_bytes_go_out_within_the_room_and_the_reader_waits_for_it() {
    let (mut handler, pipe, wakes) = handler();
    let mut out = Out::default();
    let data: Vec<u8> = (0..100u8).collect();
    pipe.socket_read(Bytes::from(data.clone()));
    assert!(wakes.take_one(CH));
    handler.on_wake(&mut out.outbox(40));
    assert_eq!(&out.buf[..], &data[..40], "only the room");
    not_yet(pipe.wait_until_taken()).await;
    handler.on_wake(&mut out.outbox(40));
    assert_eq!(out.buf.len(), 40, "no room, nothing more");

    // The driver sent the output: the rest goes, and the reader may read again.
    let sent = out.buf.split();
    handler.on_wake(&mut out.outbox(100));
    assert_eq!([&sent[..], &out.buf[..]].concat(), data);
    soon(pipe.wait_until_taken()).await;
    assert!(!out.end && !out.close);
}

#[tokio::test]
async fn eof_passes_both_ways_and_the_channel_closes_when_both_are_done() {
    let (mut handler, pipe, _wakes) = handler();
    let mut out = Out::default();
    assert_eq!(handler.on_data(b"last", &mut out.outbox(100)), 4);
    handler.on_eof(&mut out.outbox(100));
    assert!(!out.end && !out.close, "the gateway's EOF is for the socket");
    assert_eq!(soon(pipe.next_for_socket()).await.as_deref(), Some(&b"last"[..]));
    pipe.written();
    assert_eq!(soon(pipe.next_for_socket()).await, None, "then the shutdown");

    // The socket still talks after the gateway's EOF; then its own EOF ends the output.
    pipe.socket_read(Bytes::from_static(b"reply"));
    pipe.socket_eof();
    handler.on_wake(&mut out.outbox(3));
    assert!(!out.end, "not before the bytes before the EOF");
    let _ = out.buf.split();
    handler.on_wake(&mut out.outbox(100));
    assert_eq!(&out.buf[..], b"ly");
    assert!(out.end && !out.close, "output ended, the write side not yet shut down");
    pipe.write_ended();
    handler.on_wake(&mut out.outbox(100));
    assert!(out.close, "both ways done");
}

#[tokio::test]
async fn the_socket_eof_first_leaves_input_flowing() {
    let (mut handler, pipe, _wakes) = handler();
    let mut out = Out::default();
    pipe.socket_eof();
    handler.on_wake(&mut out.outbox(100));
    assert!(out.end && !out.close);
    assert_eq!(handler.on_data(b"more", &mut out.outbox(100)), 4);
    assert_eq!(soon(pipe.next_for_socket()).await.as_deref(), Some(&b"more"[..]));
    assert!(out.buf.is_empty());
}

#[tokio::test]
async fn a_broken_socket_closes_the_channel_and_input_is_dropped() {
    let (mut handler, pipe, wakes) = handler();
    let mut out = Out::default();
    pipe.fail();
    assert!(wakes.take_one(CH));
    handler.on_wake(&mut out.outbox(100));
    assert!(out.close);
    let big = vec![0u8; 2 * MAX_TO_SOCKET];
    assert_eq!(handler.on_data(&big, &mut out.outbox(100)), big.len(), "discarded, not held");
}

fn info(wakes: &Arc<WakeSet>) -> ChannelInfo {
    ChannelInfo {
        uuid: uuid::Uuid::nil(),
        ch: CH,
        port: 5201,
        originator: Bytes::new(),
        originator_port: 0,
        log_level: tracing::Level::INFO,
        waker: wakes.waker(CH),
    }
}

/// Steps `channel` on every wake-up until `done` or the time is up.
async fn drive(channel: &mut HandlerChannel, wakes: &Arc<WakeSet>, mut done: impl FnMut(&mut HandlerChannel) -> bool) {
    soon(async {
        loop {
            while channel.step().moved {}
            if done(channel) {
                return;
            }
            // Output sent by `done` makes room without a wake-up: look again soon in any case.
            let _ = tokio::time::timeout(Duration::from_millis(10), wakes.notified()).await;
            if wakes.take_one(CH) {
                channel.wake();
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_failed_connect_closes_the_channel() {
    // A port nothing listens on: bound, then closed.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let wakes = WakeSet::new();
    let service = ExposeService::new(addr).with_connect_timeout(Duration::from_secs(2));
    let mut channel = HandlerChannel::open(service.open(&info(&wakes)).expect("handler"), 1024);
    drive(&mut channel, &wakes, HandlerChannel::take_close).await;
}

#[tokio::test]
async fn a_channel_is_carried_to_a_socket_and_back() {
    // The far end answers "<what it got>!" once it reads EOF, then closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        got.push(b'!');
        stream.write_all(&got).await.unwrap();
    });
    let wakes = WakeSet::new();
    let mut channel = HandlerChannel::open(ExposeService::new(addr).open(&info(&wakes)).expect("handler"), 1024);
    channel.received(b"hello");
    channel.received_eof();
    let mut reply = Vec::new();
    let mut ended = false;
    drive(&mut channel, &wakes, |channel| {
        let n = channel.next_output(usize::MAX).len();
        reply.extend_from_slice(channel.next_output(n));
        channel.sent(n);
        ended |= channel.take_output_end();
        channel.take_close()
    })
    .await;
    assert_eq!(reply, b"hello!");
    assert!(ended, "EOF before the close");
    server.await.unwrap();
}
