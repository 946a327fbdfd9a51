//! How fast the sans-IO layer moves channel data, without sockets or TLS: a gateway session and a
//! device session joined in memory, 256 MiB each way, and the APF decoder on CHANNEL_DATA alone.
//! Run with `cargo bench -p tether-protocols`; prints MiB/s (figures in docs/performance.md).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocols::apf::{self, Message};
use protocols::session::{ChannelConfig, ClientConfig, ClientSession, Event, ServerConfig, ServerSession};
use uuid::Uuid;

const TOTAL: usize = 256 << 20;

fn pump(server: &mut ServerSession, client: &mut ClientSession, now: Instant, received: &mut [usize; 2]) {
    loop {
        let mut progress = false;
        while let Some(b) = client.poll_transmit() {
            progress = true;
            server.handle_input(&b, now);
        }
        while let Some(e) = server.poll_event() {
            progress = true;
            match e {
                Event::AuthRequest { .. } => server.accept_auth(now),
                Event::ChannelData { ch, data } => {
                    received[1] += data.len();
                    server.consumed(ch, data.len());
                }
                _ => {}
            }
        }
        while let Some(b) = server.poll_transmit() {
            progress = true;
            client.handle_input(&b, now);
        }
        while let Some(e) = client.poll_event() {
            progress = true;
            match e {
                Event::ChannelOpenRequest { ch, .. } => {
                    client.accept_channel(ch);
                }
                Event::ChannelData { ch, data } => {
                    received[0] += data.len();
                    client.consumed(ch, data.len());
                }
                _ => {}
            }
        }
        if !progress {
            return;
        }
    }
}

fn sessions_both_ways() -> Duration {
    let now = Instant::now();
    let mut server = ServerSession::new(ServerConfig::default(), now);
    let mut config = ClientConfig::new(Uuid::new_v4(), "u", "p");
    config.channels =
        ChannelConfig { max_channels: 4, window: 256 * 1024, adjust_threshold: 64 * 1024, max_send_chunk: 32 * 1024 };
    let mut client = ClientSession::new(config, now);
    let mut received = [0usize; 2];
    pump(&mut server, &mut client, now, &mut received);
    let ch = server.open_channel(16994, (Bytes::new(), 0)).expect("forwarded");
    pump(&mut server, &mut client, now, &mut received);
    let device_ch = protocols::session::ChannelId(4);
    let chunk = vec![0x5au8; 64 * 1024];
    let (mut sent_down, mut sent_up) = (0usize, 0usize);
    let started = Instant::now();
    while received[0] < TOTAL || received[1] < TOTAL {
        if sent_down < TOTAL {
            sent_down += server.send(ch, &chunk[..chunk.len().min(TOTAL - sent_down)]);
        }
        if sent_up < TOTAL {
            sent_up += client.send(device_ch, &chunk[..chunk.len().min(TOTAL - sent_up)]);
        }
        pump(&mut server, &mut client, now, &mut received);
    }
    let elapsed = started.elapsed();
    assert_eq!(received, [TOTAL, TOTAL], "every byte arrived, once");
    assert!(!server.is_closed() && !client.is_closed());
    elapsed
}

fn decode_channel_data() -> Duration {
    let mut buf = BytesMut::new();
    let payload = Bytes::from(vec![7u8; 32 * 1024]);
    while buf.len() < 64 << 20 {
        Message::ChannelData { recipient_channel: 4, data: payload.clone() }.encode(&mut buf);
    }
    let limits = apf::Limits::default();
    let started = Instant::now();
    let mut rest = &buf[..];
    let mut bytes = 0usize;
    while let Ok(Some((m, n))) = apf::decode(rest, &limits) {
        if let Message::ChannelData { data, .. } = m {
            bytes += data.len();
        }
        rest = &rest[n..];
    }
    assert!(rest.is_empty() && bytes > 0);
    started.elapsed()
}

fn main() {
    let mib = |bytes: usize, d: Duration| bytes as f64 / (1 << 20) as f64 / d.as_secs_f64();
    let d = sessions_both_ways();
    println!("sessions in memory: 256 MiB each way in {:.2}s = {:.0} MiB/s each way", d.as_secs_f64(), mib(TOTAL, d));
    let d = decode_channel_data();
    println!("decode CHANNEL_DATA (32 KiB payloads): {:.0} MiB/s", mib(64 << 20, d));
}
