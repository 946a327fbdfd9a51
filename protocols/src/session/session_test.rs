//! A server and a client driven against each other in memory, with a simulated clock.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use uuid::Uuid;

use super::*;
use crate::apf::{GlobalRequest, Message};

const UUID: Uuid = Uuid::from_u128(0x12345678_9abc_def0_1234_56789abcdef0);

struct Pair {
    now: Instant,
    server: ServerSession,
    client: ClientSession,
    server_events: Vec<Event>,
    client_events: Vec<Event>,
    /// Largest CHANNEL_DATA seen in flight from server to client, against the credit allowed.
    password_ok: bool,
    /// Client: accept channel open requests automatically.
    auto_accept: bool,
    /// Client: consume (and so grant credit for) data as it arrives.
    client_consumes: bool,
    client_received: Vec<u8>,
    server_received: Vec<u8>,
}

impl Pair {
    fn new(server_config: ServerConfig, client_config: ClientConfig) -> Self {
        let now = Instant::now();
        Self {
            now,
            server: ServerSession::new(server_config, now),
            client: ClientSession::new(client_config, now),
            server_events: Vec::new(),
            client_events: Vec::new(),
            password_ok: true,
            auto_accept: true,
            client_consumes: true,
            client_received: Vec::new(),
            server_received: Vec::new(),
        }
    }

    fn default_pair() -> Self {
        Self::new(ServerConfig::default(), ClientConfig::new(UUID, "user", "secret"))
    }

    /// Moves bytes and reacts to events until neither side has anything to say.
    fn pump(&mut self) {
        loop {
            let mut progress = false;
            while let Some(bytes) = self.client.poll_transmit() {
                progress = true;
                self.server.handle_input(&bytes, self.now);
            }
            while let Some(event) = self.server.poll_event() {
                progress = true;
                match &event {
                    Event::AuthRequest { password, .. } => {
                        if self.password_ok && password.0 == "secret" {
                            self.server.accept_auth(self.now)
                        } else {
                            self.server.reject_auth(self.now)
                        }
                    }
                    Event::ChannelData { ch, data } => {
                        self.server_received.extend_from_slice(data);
                        self.server.consumed(*ch, data.len());
                    }
                    _ => {}
                }
                self.server_events.push(event);
            }
            while let Some(bytes) = self.server.poll_transmit() {
                progress = true;
                self.client.handle_input(&bytes, self.now);
            }
            while let Some(event) = self.client.poll_event() {
                progress = true;
                match &event {
                    Event::ChannelOpenRequest { ch, .. } if self.auto_accept => {
                        assert!(self.client.accept_channel(*ch));
                    }
                    Event::ChannelData { ch, data } => {
                        self.client_received.extend_from_slice(data);
                        if self.client_consumes {
                            self.client.consumed(*ch, data.len());
                        }
                    }
                    _ => {}
                }
                self.client_events.push(event);
            }
            if !progress {
                break;
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.server.handle_timeout(self.now);
        self.client.handle_timeout(self.now);
        self.pump();
    }

    fn established(&mut self) {
        self.pump();
        assert!(self.server.is_established(), "server events: {:?}", self.server_events);
        assert!(self.client.is_established(), "client events: {:?}", self.client_events);
    }

    fn server_closed(&self) -> Option<&CloseCause> {
        self.server_events.iter().find_map(|e| match e {
            Event::Closed(cause) => Some(cause),
            _ => None,
        })
    }

    fn client_closed(&self) -> Option<&CloseCause> {
        self.client_events.iter().find_map(|e| match e {
            Event::Closed(cause) => Some(cause),
            _ => None,
        })
    }

    fn open(&mut self, port: u32) -> ChannelId {
        let ch = self.server.open_channel(port, (Bytes::from_static(b"198.18.0.9"), 40000)).expect("open");
        self.pump();
        assert!(
            self.server_events.iter().any(|e| matches!(e, Event::ChannelOpened { ch: c, .. } if *c == ch)),
            "{:?}",
            self.server_events
        );
        ch
    }
}

fn encode(messages: &[Message]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for m in messages {
        m.encode(&mut buf);
    }
    buf.to_vec()
}

#[test]
fn handshake_in_firmware_order_establishes_both_sides() {
    let mut pair = Pair::default_pair();
    pair.established();
    assert!(matches!(pair.server_events[0], Event::Hello { uuid: UUID, major: 1, minor: 0, .. }));
    let forwarded: Vec<u32> = pair
        .server_events
        .iter()
        .filter_map(|e| match e {
            Event::PortForwarded { port } => Some(*port),
            _ => None,
        })
        .collect();
    assert_eq!(forwarded, client::AMT_PORTS.to_vec());
    assert_eq!(pair.server.forwarded_ports().count(), 7);
    // 5900 came last, so the keepalive options went out at once and the device accepted them.
    assert!(pair.server_events.iter().any(|e| matches!(e, Event::KeepaliveOptions { interval_secs: 30, .. })));
    assert!(pair.client_events.iter().any(|e| matches!(e, Event::KeepaliveOptions { interval_secs: 30, .. })));
}

#[test]
fn keepalive_options_are_sent_without_a_5900_forward() {
    let mut client = ClientConfig::new(UUID, "user", "secret");
    client.ports = vec![16992, 16994];
    let mut pair = Pair::new(ServerConfig::default(), client);
    pair.established();
    assert!(!pair.client_events.iter().any(|e| matches!(e, Event::KeepaliveOptions { .. })));
    let deadline = pair.server.poll_timeout().expect("a settle deadline");
    assert!(deadline <= pair.now + Duration::from_secs(1));
    pair.advance(Duration::from_millis(600));
    assert!(pair.client_events.iter().any(|e| matches!(e, Event::KeepaliveOptions { interval_secs: 30, .. })));
    assert!(pair.server_events.iter().any(|e| matches!(e, Event::KeepaliveOptions { .. })));
}

#[test]
fn keepalives_keep_a_quiet_tunnel_up_and_silence_drops_it() {
    let mut pair = Pair::default_pair();
    pair.established();
    // Ten minutes of 30 s keepalives from the device: the tunnel stays.
    for _ in 0..20 {
        pair.advance(Duration::from_secs(30));
    }
    assert!(pair.server_closed().is_none(), "{:?}", pair.server_closed());
    assert!(pair.server_events.iter().filter(|e| matches!(e, Event::Keepalive)).count() >= 19);
    // The device goes silent (stops being driven): the server drops it after 3 intervals.
    let start = pair.now;
    while pair.server_closed().is_none() {
        pair.now += Duration::from_secs(5);
        pair.server.handle_timeout(pair.now);
        while let Some(event) = pair.server.poll_event() {
            pair.server_events.push(event);
        }
        assert!(pair.now - start <= Duration::from_secs(95));
    }
    assert_eq!(pair.server_closed(), Some(&CloseCause::IdleTimeout));
    assert!(pair.now - start >= Duration::from_secs(90));
    let bytes = pair.server.poll_transmit().expect("a DISCONNECT");
    assert_eq!(bytes[0], 1);
}

#[test]
fn wrong_password_is_refused() {
    let mut pair = Pair::default_pair();
    pair.password_ok = false;
    pair.pump();
    assert!(pair.client_events.contains(&Event::AuthRejected));
    assert_eq!(pair.client_closed(), Some(&CloseCause::AuthFailed));
    // The client hung up with a DISCONNECT, which the server saw.
    assert!(matches!(pair.server_closed(), Some(CloseCause::PeerDisconnected(_))));
    assert!(!pair.server.is_established());
}

#[test]
fn repeated_failed_attempts_end_the_tunnel() {
    let now = Instant::now();
    let mut server = ServerSession::new(ServerConfig::default(), now);
    let mut input = encode(&[
        Message::ProtocolVersion { major: 1, minor: 0, trigger_reason: 0, uuid: UUID },
        Message::ServiceRequest { service: Bytes::from_static(apf::SERVICE_AUTH) },
    ]);
    let attempt = encode(&[Message::UserauthRequest {
        username: Bytes::from_static(b"u"),
        service: Bytes::from_static(apf::SERVICE_PFWD),
        method: apf::AuthMethod::Password(Bytes::from_static(b"bad")),
    }]);
    input.extend_from_slice(&attempt);
    server.handle_input(&input, now);
    let mut rejected = 0;
    loop {
        match server.poll_event() {
            Some(Event::AuthRequest { .. }) => {
                rejected += 1;
                server.reject_auth(now);
                server.handle_input(&attempt, now);
            }
            Some(Event::Closed(cause)) => {
                assert_eq!(cause, CloseCause::AuthFailed);
                break;
            }
            Some(_) => {}
            None => panic!("server neither asked nor closed"),
        }
    }
    assert_eq!(rejected, 3);
}

#[test]
fn messages_out_of_handshake_order_are_a_protocol_error() {
    let now = Instant::now();
    let mut server = ServerSession::new(ServerConfig::default(), now);
    let input = encode(&[
        Message::ProtocolVersion { major: 1, minor: 0, trigger_reason: 0, uuid: UUID },
        Message::GlobalRequest {
            want_reply: true,
            request: GlobalRequest::TcpipForward { address: Bytes::new(), port: 16992 },
        },
    ]);
    server.handle_input(&input, now);
    let events: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
    assert!(matches!(
        events.last(),
        Some(Event::Closed(CloseCause::Protocol { kind: ProtocolErrorKind::UnexpectedMessage, .. }))
    ));
    let out = server.poll_transmit().expect("disconnect");
    let (message, _) = apf::decode(&out, &apf::Limits::default()).unwrap().unwrap();
    assert_eq!(message, Message::Disconnect { reason: apf::DisconnectReason::ProtocolError });
}

#[test]
fn garbage_and_oversized_messages_close_with_a_reason() {
    for (input, kind) in [
        (vec![0x0a], ProtocolErrorKind::UnknownType),
        (
            {
                let mut v = vec![94, 0, 0, 0, 4];
                v.extend_from_slice(&(2u32 << 20).to_be_bytes());
                v
            },
            ProtocolErrorKind::TooLong,
        ),
    ] {
        let now = Instant::now();
        let mut server = ServerSession::new(ServerConfig::default(), now);
        server.handle_input(&input, now);
        let events: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
        assert!(
            matches!(events.last(), Some(Event::Closed(CloseCause::Protocol { kind: k, .. })) if *k == kind),
            "{events:?}"
        );
        assert!(server.is_closed());
        assert!(server.poll_transmit().is_some());
    }
}

#[test]
fn unsupported_version_is_refused() {
    let now = Instant::now();
    let mut server = ServerSession::new(ServerConfig::default(), now);
    server
        .handle_input(&encode(&[Message::ProtocolVersion { major: 2, minor: 0, trigger_reason: 0, uuid: UUID }]), now);
    let events: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
    assert!(matches!(
        events.last(),
        Some(Event::Closed(CloseCause::Protocol { kind: ProtocolErrorKind::UnsupportedVersion, .. }))
    ));
}

#[test]
fn a_stalled_handshake_times_out() {
    let now = Instant::now();
    let mut server = ServerSession::new(ServerConfig::default(), now);
    server
        .handle_input(&encode(&[Message::ProtocolVersion { major: 1, minor: 0, trigger_reason: 0, uuid: UUID }]), now);
    let deadline = server.poll_timeout().unwrap();
    assert_eq!(deadline, now + Duration::from_secs(30));
    server.handle_timeout(deadline);
    let events: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
    assert_eq!(events.last(), Some(&Event::Closed(CloseCause::HandshakeTimeout)));
}

#[test]
fn data_flows_both_ways_within_windows() {
    let mut pair = Pair::default_pair();
    pair.established();
    let ch = pair.open(16992);
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();

    // Server → client: the device's window is 4 KiB, granted back in 512-byte steps.
    let mut sent = 0;
    let mut rounds = 0;
    while sent < payload.len() {
        let cap = pair.server.send_capacity(ch);
        assert!(cap <= 4096, "credit {cap} beyond the device window");
        let n = pair.server.send(ch, &payload[sent..]);
        assert!(n <= cap);
        sent += n;
        pair.pump();
        rounds += 1;
        assert!(rounds < 10_000, "no progress");
    }
    assert_eq!(pair.client_received, payload);

    // Client → server: the server's window is 256 KiB, granted at half.
    let client_ch = pair
        .client_events
        .iter()
        .find_map(|e| match e {
            Event::ChannelOpenRequest { ch, .. } => Some(*ch),
            _ => None,
        })
        .unwrap();
    let mut sent = 0;
    while sent < payload.len() {
        sent += pair.client.send(client_ch, &payload[sent..]);
        pair.pump();
    }
    assert_eq!(pair.server_received, payload);
}

#[test]
fn a_peer_that_does_not_consume_stops_the_sender_at_its_window() {
    let mut pair = Pair::default_pair();
    pair.established();
    pair.client_consumes = false;
    let ch = pair.open(16992);
    let payload = vec![7u8; 100_000];
    let mut sent = 0;
    for _ in 0..10 {
        sent += pair.server.send(ch, &payload[sent..]);
        pair.pump();
    }
    assert_eq!(sent, 4096, "exactly the device's window went out");
    assert_eq!(pair.server.send_capacity(ch), 0);
    assert_eq!(pair.client_received.len(), 4096);
}

#[test]
fn many_small_window_adjusts_are_accepted() {
    let mut pair = Pair::default_pair();
    pair.established();
    let ch = pair.open(16994);
    // Drain the server's credit to zero, then grant it back 499 bytes at a time as firmware does.
    pair.client_consumes = false;
    let mut sent = pair.server.send(ch, &[1u8; 4096]);
    pair.pump();
    assert_eq!(pair.server.send_capacity(ch), 0);
    let mut writable = 0;
    for _ in 0..40 {
        // A firmware-style adjust (499 bytes) straight on the wire.
        let adjust = encode(&[Message::ChannelWindowAdjust { recipient_channel: ch.0, bytes_to_add: 499 }]);
        pair.server.handle_input(&adjust, pair.now);
        while let Some(e) = pair.server.poll_event() {
            if matches!(e, Event::ChannelWritable { .. }) {
                writable += 1;
            }
        }
        sent += pair.server.send(ch, &[2u8; 10_000]);
        assert_eq!(pair.server.send_capacity(ch), 0);
        // The device end is played by hand here: what the server sends is dropped.
        while pair.server.poll_transmit().is_some() {}
    }
    assert_eq!(sent, 4096 + 40 * 499);
    assert_eq!(writable, 40);
    assert!(pair.server_closed().is_none());
}

#[test]
fn data_beyond_the_granted_window_is_a_protocol_error() {
    let mut pair = Pair::default_pair();
    pair.established();
    let ch = pair.open(16992);
    // The device lies: 300 KiB of data against a 256 KiB window.
    let chunk = vec![0u8; 100 * 1024];
    let mut bytes = Vec::new();
    for _ in 0..3 {
        bytes.extend(encode(&[Message::ChannelData { recipient_channel: ch.0, data: Bytes::from(chunk.clone()) }]));
    }
    pair.server.handle_input(&bytes, pair.now);
    let events: Vec<Event> = std::iter::from_fn(|| pair.server.poll_event()).collect();
    assert!(matches!(
        events.last(),
        Some(Event::Closed(CloseCause::Protocol { kind: ProtocolErrorKind::WindowExceeded, .. }))
    ));
    assert!(events.contains(&Event::ChannelClosed { ch }));
}

#[test]
fn channels_per_tunnel_are_capped() {
    let mut server_config = ServerConfig::default();
    server_config.channels.max_channels = 3;
    let mut pair = Pair::new(server_config, ClientConfig::new(UUID, "user", "secret"));
    pair.established();
    for _ in 0..3 {
        pair.open(16992);
    }
    assert_eq!(pair.server.open_channel(16992, (Bytes::new(), 0)), Err(OpenError::TooManyChannels));
    assert_eq!(pair.server.open_channel(1234, (Bytes::new(), 0)), Err(OpenError::PortNotForwarded(1234)));
}

#[test]
fn channels_close_from_either_side_and_ids_are_freed() {
    let mut pair = Pair::default_pair();
    pair.established();
    let ch = pair.open(16992);
    assert_eq!(ch, ChannelId(4));
    pair.server.close_channel(ch);
    pair.pump();
    assert_eq!(pair.server.channel_count(), 0);
    assert_eq!(pair.client.channel_count(), 0);
    assert!(pair.client_events.iter().any(|e| matches!(e, Event::ChannelClosed { .. })));

    let ch2 = pair.open(16993);
    pair.client.close_channel(ChannelId(5));
    pair.pump();
    assert!(pair.server_events.contains(&Event::ChannelClosed { ch: ch2 }));
    assert_eq!(pair.server.channel_count(), 0);
}

#[test]
fn a_channel_closed_while_opening_is_closed_after_the_confirmation() {
    let mut pair = Pair::default_pair();
    pair.established();
    let ch = pair.server.open_channel(16992, (Bytes::new(), 0)).unwrap();
    pair.server.close_channel(ch);
    pair.pump();
    assert!(!pair.server_events.iter().any(|e| matches!(e, Event::ChannelOpened { .. })));
    assert_eq!(pair.server.channel_count(), 0);
    assert_eq!(pair.client.channel_count(), 0);
}

#[test]
fn a_refused_channel_is_reported() {
    let mut pair = Pair::default_pair();
    pair.established();
    pair.auto_accept = false;
    let ch = pair.server.open_channel(16992, (Bytes::new(), 0)).unwrap();
    pair.pump();
    let request = pair
        .client_events
        .iter()
        .find_map(|e| match e {
            Event::ChannelOpenRequest { ch, .. } => Some(*ch),
            _ => None,
        })
        .unwrap();
    pair.client.reject_channel(request, apf::OpenFailureReason::ConnectFailed);
    pair.pump();
    assert!(pair
        .server_events
        .contains(&Event::ChannelOpenFailed { ch, reason: apf::OpenFailureReason::ConnectFailed }));
    assert_eq!(pair.server.channel_count(), 0);
}

#[test]
fn device_initiated_channels_are_refused() {
    let mut pair = Pair::default_pair();
    pair.established();
    let open = Message::ChannelOpen(apf::ChannelOpen {
        channel_type: apf::ChannelType::DirectTcpip,
        sender_channel: 9,
        initial_window: 4096,
        max_packet: u32::MAX,
        connected_address: Bytes::new(),
        connected_port: 80,
        originator_address: Bytes::new(),
        originator_port: 0,
    });
    pair.server.handle_input(&encode(&[open]), pair.now);
    let out = pair.server.poll_transmit().unwrap();
    let (message, _) = apf::decode(&out, &apf::Limits::default()).unwrap().unwrap();
    assert_eq!(
        message,
        Message::ChannelOpenFailure {
            recipient_channel: 9,
            reason: apf::OpenFailureReason::AdministrativelyProhibited
        }
    );
    assert!(!pair.server.is_closed());
}

#[test]
fn input_split_at_every_byte_gives_the_same_result() {
    // The whole device side of a handshake, fed one byte at a time.
    let mut client = ClientSession::new(ClientConfig::new(UUID, "user", "secret"), Instant::now());
    let first = client.poll_transmit().unwrap();
    let now = Instant::now();
    let mut server = ServerSession::new(ServerConfig::default(), now);
    for b in first.iter() {
        server.handle_input(std::slice::from_ref(b), now);
    }
    let events: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
    assert!(matches!(events[0], Event::Hello { uuid: UUID, .. }));
    assert!(!server.is_closed());
}

#[test]
fn input_is_held_while_auth_is_pending() {
    let now = Instant::now();
    let mut server = ServerSession::new(ServerConfig::default(), now);
    let mut input = encode(&[
        Message::ProtocolVersion { major: 1, minor: 0, trigger_reason: 0, uuid: UUID },
        Message::ServiceRequest { service: Bytes::from_static(apf::SERVICE_AUTH) },
        Message::UserauthRequest {
            username: Bytes::from_static(b"u"),
            service: Bytes::from_static(apf::SERVICE_PFWD),
            method: apf::AuthMethod::Password(Bytes::from_static(b"p")),
        },
    ]);
    // The device pipelines its pfwd request before the auth answer.
    input.extend(encode(&[Message::ServiceRequest { service: Bytes::from_static(apf::SERVICE_PFWD) }]));
    server.handle_input(&input, now);
    assert!(!server.wants_input());
    let events: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
    assert!(matches!(events.last(), Some(Event::AuthRequest { .. })));
    server.accept_auth(now);
    assert!(server.is_established());
}

#[test]
fn a_channel_opened_before_the_last_forward_is_answered_works() {
    let mut pair = Pair::default_pair();
    // Step by hand until the server has accepted 16992 (the second of seven forwards).
    let mut opened = None;
    for _ in 0..100 {
        if let Some(bytes) = pair.client.poll_transmit() {
            pair.server.handle_input(&bytes, pair.now);
        }
        while let Some(event) = pair.server.poll_event() {
            match event {
                Event::AuthRequest { .. } => pair.server.accept_auth(pair.now),
                Event::PortForwarded { port: 16992 } if opened.is_none() => {
                    opened = Some(pair.server.open_channel(16992, (Bytes::new(), 0)).unwrap());
                }
                _ => {}
            }
        }
        if opened.is_some() {
            break;
        }
        if let Some(bytes) = pair.server.poll_transmit() {
            pair.client.handle_input(&bytes, pair.now);
        }
    }
    let ch = opened.expect("16992 was forwarded");
    assert!(!pair.client.is_established(), "the device is still forwarding");
    pair.pump();
    assert!(pair.server_events.iter().any(|e| matches!(e, Event::ChannelOpened { ch: c, .. } if *c == ch)));
    assert!(pair.server_closed().is_none() && pair.client_closed().is_none());
    assert!(pair.client.is_established());
    // A port the device has not forwarded (yet) is refused by the device, not a protocol error.
    assert_eq!(pair.server.open_channel(80, (Bytes::new(), 0)), Err(OpenError::PortNotForwarded(80)));
}

#[test]
fn a_device_cannot_stretch_the_idle_limit_without_bound() {
    let mut pair = Pair::default_pair();
    pair.established();
    // The device claims it will send keepalives once every 136 years.
    let reply = encode(&[Message::KeepaliveOptionsReply { interval_secs: u32::MAX, timeout_secs: 0 }]);
    pair.server.handle_input(&reply, pair.now);
    let silent_since = pair.now;
    let deadline = pair.server.poll_timeout().expect("an idle deadline");
    // At most three times four times the 30 s interval the gateway asked for.
    assert_eq!(deadline, silent_since + Duration::from_secs(360));
    pair.server.handle_timeout(deadline);
    let events: Vec<Event> = std::iter::from_fn(|| pair.server.poll_event()).collect();
    assert!(events.contains(&Event::Closed(CloseCause::IdleTimeout)), "{events:?}");
}

#[test]
fn auth_methods_other_than_password_are_refused_and_reported() {
    let now = Instant::now();
    let mut server = ServerSession::new(ServerConfig::default(), now);
    server.handle_input(
        &encode(&[
            Message::ProtocolVersion { major: 1, minor: 0, trigger_reason: 0, uuid: UUID },
            Message::ServiceRequest { service: Bytes::from_static(apf::SERVICE_AUTH) },
            Message::UserauthRequest {
                username: Bytes::from_static(b"u"),
                service: Bytes::from_static(apf::SERVICE_PFWD),
                method: apf::AuthMethod::None,
            },
        ]),
        now,
    );
    let events: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
    assert!(events.contains(&Event::AuthMethodRefused { method: Bytes::from_static(b"none") }), "{events:?}");
    assert!(!server.is_closed(), "one refused probe is not the end");
}

/// Version, auth service request and a password USERAUTH_REQUEST, as a device sends them.
fn pre_auth_input(username: &[u8], password: &[u8]) -> Vec<u8> {
    encode(&[
        Message::ProtocolVersion { major: 1, minor: 0, trigger_reason: 0, uuid: UUID },
        Message::ServiceRequest { service: Bytes::from_static(apf::SERVICE_AUTH) },
        Message::UserauthRequest {
            username: Bytes::copy_from_slice(username),
            service: Bytes::from_static(apf::SERVICE_PFWD),
            method: apf::AuthMethod::Password(Bytes::copy_from_slice(password)),
        },
    ])
}

fn drain_events(server: &mut ServerSession) -> Vec<Event> {
    std::iter::from_fn(|| server.poll_event()).collect()
}

/// Every message in `bytes`, which must decode whole.
fn decode_all(bytes: &[u8]) -> Vec<Message> {
    let mut rest = bytes;
    let mut messages = Vec::new();
    while !rest.is_empty() {
        let (message, consumed) = apf::decode(rest, &apf::Limits::default()).unwrap().expect("whole messages");
        messages.push(message);
        rest = &rest[consumed..];
    }
    messages
}

#[test]
fn a_long_username_and_password_fit_the_pre_auth_limits() {
    let now = Instant::now();
    let mut server = ServerSession::new(ServerConfig::default(), now);
    server.handle_input(&pre_auth_input(&[b'u'; 1000], &[b'p'; 1000]), now);
    let events = drain_events(&mut server);
    assert!(matches!(events.last(), Some(Event::AuthRequest { password, .. }) if password.0.len() == 1000));
    server.accept_auth(now);
    assert!(!server.is_closed());
}

#[test]
fn an_oversized_message_before_authentication_closes_with_a_reason() {
    let pre_auth_max = ServerConfig::default().pre_auth_limits.max_string;
    let cases: Vec<(Vec<u8>, ProtocolErrorKind)> = vec![
        // A password over the pre-auth string limit (but within the 2048 allowed after auth).
        (pre_auth_input(b"u", &vec![b'p'; pre_auth_max + 1]), ProtocolErrorKind::TooLong),
        // Channel data before authentication, 4 KiB: over the pre-auth data limit.
        (
            {
                let mut input = pre_auth_input(b"u", b"p")[..93].to_vec();
                input.extend(encode(&[Message::ChannelData { recipient_channel: 4, data: vec![0; 4096].into() }]));
                input
            },
            ProtocolErrorKind::TooLong,
        ),
        // Small messages, but 16 KiB of them piled up behind a pending USERAUTH_REQUEST.
        (
            {
                let mut input = pre_auth_input(b"u", b"p");
                for _ in 0..16 {
                    input.extend(encode(&[Message::ChannelData { recipient_channel: 4, data: vec![0; 1024].into() }]));
                }
                input
            },
            ProtocolErrorKind::InputOverflow,
        ),
    ];
    for (input, kind) in cases {
        let now = Instant::now();
        let mut server = ServerSession::new(ServerConfig::default(), now);
        server.handle_input(&input, now);
        let events = drain_events(&mut server);
        assert!(
            matches!(events.last(), Some(Event::Closed(CloseCause::Protocol { kind: k, .. })) if *k == kind),
            "{kind:?}: {events:?}"
        );
        let sent = decode_all(&server.poll_transmit().expect("a DISCONNECT"));
        assert_eq!(sent.last(), Some(&Message::Disconnect { reason: apf::DisconnectReason::ProtocolError }));
        assert_eq!(server.buffered_input(), 0);
        assert_eq!(server.buffered_capacity(), 0, "the input buffer is freed on close");
    }
}

#[test]
fn input_fed_in_pieces_before_authentication_is_capped_too() {
    let now = Instant::now();
    let mut server = ServerSession::new(ServerConfig::default(), now);
    server.handle_input(&pre_auth_input(b"u", b"p"), now);
    assert!(!server.wants_input());
    let keepalive = encode(&[Message::KeepaliveRequest { cookie: 1 }]);
    // A driver that ignores `wants_input` and keeps feeding small messages.
    let mut fed = 0;
    while !server.is_closed() {
        server.handle_input(&keepalive, now);
        fed += keepalive.len();
        assert!(fed <= 16 * 1024, "still buffering after {fed} bytes");
    }
    assert_eq!(server.buffered_capacity(), 0);
    let events = drain_events(&mut server);
    assert!(matches!(
        events.last(),
        Some(Event::Closed(CloseCause::Protocol { kind: ProtocolErrorKind::InputOverflow, .. }))
    ));
}

#[test]
fn large_messages_are_fine_after_authentication() {
    let mut pair = Pair::default_pair();
    pair.established();
    // A bind address over the pre-auth string limit, within the normal one.
    let forward = encode(&[Message::GlobalRequest {
        want_reply: true,
        request: GlobalRequest::TcpipForward { address: vec![b'a'; 2000].into(), port: 8080 },
    }]);
    pair.server.handle_input(&forward, pair.now);
    assert!(drain_events(&mut pair.server).contains(&Event::PortForwarded { port: 8080 }));
    // The device end is played by hand here: the gateway's reply is dropped.
    let reply = decode_all(&pair.server.poll_transmit().unwrap());
    assert_eq!(reply, [Message::RequestSuccess { port: Some(8080) }]);
    // 200 KiB of channel data in one message, within the 256 KiB window the gateway granted.
    let ch = pair.open(16992);
    let data = Bytes::from(vec![9u8; 200 * 1024]);
    pair.server
        .handle_input(&encode(&[Message::ChannelData { recipient_channel: ch.0, data: data.clone() }]), pair.now);
    let events = drain_events(&mut pair.server);
    assert!(events.contains(&Event::ChannelData { ch, data }), "{events:?}");
    assert!(!pair.server.is_closed(), "{events:?}");
}

#[test]
fn the_input_buffer_shrinks_back_after_a_large_message() {
    let mut pair = Pair::default_pair();
    pair.established();
    let ch = pair.open(16992);
    let small = pair.server.buffered_capacity();
    assert!(small <= 4096, "{small} bytes after the handshake");

    let mut wire = encode(&[Message::ChannelData { recipient_channel: ch.0, data: vec![1u8; 200 * 1024].into() }]);
    let next = encode(&[Message::KeepaliveRequest { cookie: 7 }]);
    wire.extend_from_slice(&next[..3]);
    // The first half of the message is held: the buffer has grown.
    let half = wire.len() / 2;
    pair.server.handle_input(&wire[..half], pair.now);
    assert_eq!(pair.server.buffered_input(), half);
    assert!(pair.server.buffered_capacity() >= half);
    // The rest, and the start of the next message: the large allocation is given back.
    pair.server.handle_input(&wire[half..], pair.now);
    assert_eq!(pair.server.buffered_input(), 3);
    assert!(pair.server.buffered_capacity() <= 4096, "{} bytes kept", pair.server.buffered_capacity());
    pair.server.handle_input(&next[3..], pair.now);
    assert_eq!(pair.server.buffered_input(), 0);
    let events = drain_events(&mut pair.server);
    assert!(events.iter().any(|e| matches!(e, Event::ChannelData { data, .. } if data.len() == 200 * 1024)));
    assert!(events.contains(&Event::Keepalive));
}

#[test]
fn a_probe_is_answered_with_its_cookie() {
    let mut pair = Pair::default_pair();
    pair.established();
    let first = pair.server.probe().expect("an established tunnel can be probed");
    pair.pump();
    assert!(pair.server_events.contains(&Event::KeepaliveReply { cookie: first }), "{:?}", pair.server_events);
    // The device saw a keepalive request, not a reply.
    assert!(pair.client_events.contains(&Event::Keepalive));
    let second = pair.server.probe().unwrap();
    assert_ne!(first, second, "every probe has a fresh cookie");
    pair.pump();
    assert!(pair.server_events.contains(&Event::KeepaliveReply { cookie: second }));
    assert!(pair.server_closed().is_none() && pair.client_closed().is_none());
}

#[test]
fn the_device_keepalive_replies_are_reported_with_their_cookie() {
    let mut pair = Pair::default_pair();
    pair.established();
    pair.advance(Duration::from_secs(30));
    assert!(pair.server_events.contains(&Event::Keepalive), "the device's request");
    assert!(pair.client_events.iter().any(|e| matches!(e, Event::KeepaliveReply { .. })), "the gateway's reply");
}

#[test]
fn a_probe_before_authentication_or_after_close_sends_nothing() {
    let now = Instant::now();
    let mut server = ServerSession::new(ServerConfig::default(), now);
    assert_eq!(server.probe(), None);
    server.handle_input(&pre_auth_input(b"u", b"p"), now);
    assert_eq!(server.probe(), None, "authentication pending");
    let before = server.pending_transmit();
    server.accept_auth(now);
    assert!(server.probe().is_some(), "authenticated, pfwd not requested yet");
    assert!(server.pending_transmit() > before);

    let mut pair = Pair::default_pair();
    pair.established();
    pair.server.disconnect(apf::DisconnectReason::ByApplication);
    let sent = decode_all(&pair.server.poll_transmit().unwrap());
    assert_eq!(sent.last(), Some(&Message::Disconnect { reason: apf::DisconnectReason::ByApplication }));
    assert_eq!(pair.server.probe(), None);
    assert_eq!(pair.server.poll_transmit(), None, "nothing after the DISCONNECT");
}

#[test]
fn each_close_cause_sends_its_disconnect_reason() {
    let protocol = |kind| CloseCause::Protocol { kind, detail: String::new() };
    let cases = [
        (CloseCause::PeerDisconnected(DisconnectReason::ByApplication), None),
        (protocol(ProtocolErrorKind::UnsupportedVersion), Some(DisconnectReason::ProtocolVersionNotSupported)),
        (protocol(ProtocolErrorKind::UnknownService), Some(DisconnectReason::ServiceNotAvailable)),
        (protocol(ProtocolErrorKind::WindowExceeded), Some(DisconnectReason::ProtocolError)),
        (protocol(ProtocolErrorKind::InputOverflow), Some(DisconnectReason::ProtocolError)),
        (CloseCause::HandshakeTimeout, Some(DisconnectReason::ConnectionTimedOut)),
        (CloseCause::IdleTimeout, Some(DisconnectReason::ConnectionTimedOut)),
        (CloseCause::AuthFailed, Some(DisconnectReason::NoMoreAuthMethods)),
        (CloseCause::Local(DisconnectReason::HostNotAllowed), Some(DisconnectReason::HostNotAllowed)),
    ];
    for (cause, reason) in cases {
        assert_eq!(cause.disconnect_reason(), reason, "{cause}");
    }
}
