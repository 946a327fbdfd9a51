//! Fuzzes the server (gateway) side of an APF tunnel, `ServerSession`, driven by a script.
//!
//! The input is read as a sequence of steps, each one chosen by a byte: feed raw bytes or an
//! encoded device message (whole or split), run the valid handshake prefix (version, auth,
//! USERAUTH, pfwd, forwards), advance the simulated clock, or act as the driver does
//! (accept/reject auth, open a channel, send, consume, EOF, close, disconnect, probe).
//!
//! Invariants checked after every step, besides "never panics":
//! - every byte the session transmits decodes as whole APF messages;
//! - the session never sends more CHANNEL_DATA on a channel than the device granted (its
//!   CHANNEL_OPEN_CONFIRMATION window plus its WINDOW_ADJUSTs, followed by a model that decodes
//!   what was fed), sends data only when `send` is called, exactly the bytes `send` took, to the
//!   device's id for that channel;
//! - `Event::Closed` is emitted exactly once, when the session reports closed, and no event
//!   follows it; a cause that calls for a DISCONNECT leaves a DISCONNECT with its reason as the
//!   last message sent, a peer's DISCONNECT leaves none; nothing is transmitted after that;
//! - a `poll_timeout` deadline that has passed is handled by `handle_timeout` (the session then
//!   has a later deadline, or is closed);
//! - `probe` returns a cookie only on an open session, and sends a KEEPALIVE_REQUEST with it.

#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use protocols::apf::{
    self, AuthMethod, ChannelOpen, ChannelType, DisconnectReason, GlobalRequest, Limits, Message, OpenFailureReason,
};
use protocols::session::{ChannelConfig, ChannelId, CloseCause, Event, ServerConfig, ServerSession};
use uuid::Uuid;

const UUID: Uuid = Uuid::from_u128(0x12345678_9abc_def0_1234_56789abcdef0);
const PORTS: [u32; 9] = [16993, 16992, 664, 623, 16995, 16994, 5900, 0, 70000];
const MAX_STEPS: usize = 400;
static ZEROS: [u8; 1 << 17] = [0; 1 << 17];

fuzz_target!(|input: &[u8]| {
    let mut u = Unstructured::new(input);
    if let Ok(config) = server_config(&mut u) {
        let mut harness = Harness::new(config);
        let _ = harness.run(&mut u);
        harness.finish();
    }
});

/// Settings from the first bytes: small windows, limits and counts reach their edges sooner.
fn server_config(u: &mut Unstructured) -> Result<ServerConfig> {
    let window = *u.choose(&[1u32, 512, 4096, 65_536, 256 * 1024])?;
    Ok(ServerConfig {
        limits: Limits {
            max_string: u.int_in_range(16..=2048)?,
            max_data: *u.choose(&[64usize, 4096, 70_000, 1 << 20])?,
        },
        pre_auth_limits: if u.arbitrary()? {
            Limits::for_max_message(u.int_in_range(0..=8192)?)
        } else {
            ServerConfig::default().pre_auth_limits
        },
        channels: ChannelConfig {
            max_channels: u.int_in_range(0..=6)?,
            window,
            adjust_threshold: u.int_in_range(0..=window)?,
            max_send_chunk: *u.choose(&[0usize, 1, 100, 4096, 32 * 1024])?,
        },
        keepalive_interval: Duration::from_secs(u.int_in_range(0..=120)?),
        keepalive_timeout_secs: u.arbitrary()?,
        handshake_timeout: Duration::from_secs(u.int_in_range(0..=120)?),
        forward_settle: Duration::from_millis(u.int_in_range(0..=2000)?),
        max_auth_attempts: u.int_in_range(0..=4)?,
        max_forwarded_ports: u.int_in_range(0..=8)?,
    })
}

/// The session, the simulated clock, and what the harness knows about the tunnel.
struct Harness {
    now: Instant,
    session: ServerSession,
    /// Fed bytes the model has not decoded yet (a partial message).
    model_input: Vec<u8>,
    /// The model met bytes that do not decode: it follows no more grants (the session must
    /// have closed, or will, on those bytes).
    model_broken: bool,
    /// Per channel (our id): the device's id for it and the credit it granted, less what the
    /// session sent.
    granted: HashMap<u32, (u32, u64)>,
    /// Every channel id `open_channel` returned (kept after close, to poke stale ids).
    known: Vec<ChannelId>,
    forwarded: Vec<u32>,
    auth_pending: bool,
    last_probe: Option<u32>,
    /// The channel a `send` is queueing on, while its output is checked.
    sending: Option<ChannelId>,
    /// CHANNEL_DATA bytes transmitted during the current `send`.
    sent_in_send: usize,
    last_sent: Option<Message>,
    disconnect_sent: bool,
    closed_events: u32,
    /// The session is closed and its last output has been taken: nothing may follow.
    silent: bool,
}

impl Harness {
    fn new(config: ServerConfig) -> Self {
        let now = Instant::now();
        Self {
            now,
            session: ServerSession::new(config, now),
            model_input: Vec::new(),
            model_broken: false,
            granted: HashMap::new(),
            known: Vec::new(),
            forwarded: Vec::new(),
            auth_pending: false,
            last_probe: None,
            sending: None,
            sent_in_send: 0,
            last_sent: None,
            disconnect_sent: false,
            closed_events: 0,
            silent: false,
        }
    }

    fn run(&mut self, u: &mut Unstructured) -> Result<()> {
        for _ in 0..MAX_STEPS {
            if u.is_empty() {
                break;
            }
            self.step(u)?;
        }
        Ok(())
    }

    fn step(&mut self, u: &mut Unstructured) -> Result<()> {
        match u.int_in_range(0..=19u8)? {
            0 => {
                let n = u.int_in_range(0..=64)?;
                let bytes = u.bytes(n.min(u.len()))?.to_vec();
                self.feed(&bytes);
            }
            1..=4 => {
                let message = self.device_message(u)?;
                let wire = encode(&[message]);
                if u.ratio(1, 4)? {
                    let cut = u.int_in_range(0..=wire.len())?;
                    self.feed(&wire[..cut]);
                    self.feed(&wire[cut..]);
                } else {
                    self.feed(&wire);
                }
            }
            5 => self.handshake(u)?,
            6 => {
                let unit = *u.choose(&[1u64, 100, 1000, 60_000])?;
                self.now += Duration::from_millis(u.int_in_range(0..=1000u64)? * unit);
                self.session.handle_timeout(self.now);
                self.settle();
            }
            7 => {
                if let Some(deadline) = self.session.poll_timeout() {
                    self.now = self.now.max(deadline);
                }
                self.session.handle_timeout(self.now);
                self.settle();
            }
            8 => {
                self.session.accept_auth(self.now);
                self.auth_pending = false;
                self.settle();
            }
            9 => {
                self.session.reject_auth(self.now);
                self.auth_pending = false;
                self.settle();
            }
            10 | 11 => {
                let port = if !self.forwarded.is_empty() && u.ratio(7, 8)? {
                    *u.choose(&self.forwarded)?
                } else {
                    *u.choose(&PORTS)?
                };
                let was_closed = self.session.is_closed();
                match self.session.open_channel(port, (Bytes::from_static(b"198.18.0.9"), 40000)) {
                    Ok(ch) => {
                        assert!(!was_closed, "a channel opened on a closed session");
                        self.known.push(ch);
                        if u.arbitrary()? {
                            // The device confirms at once.
                            self.settle();
                            let confirm = Message::ChannelOpenConfirmation {
                                recipient_channel: ch.0,
                                sender_channel: u.int_in_range(0..=3)?,
                                initial_window: window(u)?,
                                max_packet: *u.choose(&[0, 1, 1000, u32::MAX])?,
                            };
                            self.feed(&encode(&[confirm]));
                        }
                    }
                    Err(_) => {}
                }
                self.settle();
            }
            12 | 13 => {
                let ch = self.pick_channel(u)?;
                let n = *u.choose(&[0usize, 1, 499, 4096, 40_000, ZEROS.len()])?;
                let capacity = self.session.send_capacity(ch);
                self.sending = Some(ch);
                self.sent_in_send = 0;
                let taken = self.session.send(ch, &ZEROS[..n]);
                assert!(taken <= n && taken <= capacity, "took {taken} of {n}, capacity {capacity}");
                self.settle();
                assert_eq!(self.sent_in_send, taken, "CHANNEL_DATA bytes sent for a send of {taken}");
                self.sending = None;
            }
            14 => {
                let ch = self.pick_channel(u)?;
                let n = u.int_in_range(0..=300_000)?;
                self.session.consumed(ch, n);
                self.settle();
            }
            15 => {
                let ch = self.pick_channel(u)?;
                self.session.send_eof(ch);
                self.settle();
            }
            16 => {
                let ch = self.pick_channel(u)?;
                self.session.close_channel(ch);
                self.settle();
            }
            17 => {
                let reason = DisconnectReason::from_u32(u.int_in_range(1..=20)?);
                self.session.disconnect(reason);
                self.settle();
            }
            18 => {
                let was_closed = self.session.is_closed();
                let probe = self.session.probe();
                self.settle();
                if let Some(cookie) = probe {
                    assert!(!was_closed, "probe on a closed session");
                    assert_eq!(self.last_sent, Some(Message::KeepaliveRequest { cookie }), "a probe sends its cookie");
                    self.last_probe = Some(cookie);
                }
                if was_closed {
                    assert_eq!(probe, None);
                }
            }
            _ => {
                // A read the driver splits oddly: several messages in one buffer.
                let count = u.int_in_range(1..=4)?;
                let mut messages = Vec::new();
                for _ in 0..count {
                    messages.push(self.device_message(u)?);
                }
                self.feed(&encode(&messages));
            }
        }
        Ok(())
    }

    /// The valid start of a tunnel, as firmware sends it; the driver accepts the password, or
    /// now and then refuses it.
    fn handshake(&mut self, u: &mut Unstructured) -> Result<()> {
        self.feed(&encode(&[
            Message::ProtocolVersion { major: 1, minor: 0, trigger_reason: 0, uuid: UUID },
            Message::ServiceRequest { service: Bytes::from_static(apf::SERVICE_AUTH) },
            Message::UserauthRequest {
                username: Bytes::from_static(b"admin"),
                service: Bytes::from_static(apf::SERVICE_PFWD),
                method: AuthMethod::Password(Bytes::from_static(b"P@ssw0rd")),
            },
        ]));
        if self.auth_pending {
            if u.ratio(1, 4)? {
                self.session.reject_auth(self.now);
            } else {
                self.session.accept_auth(self.now);
            }
            self.auth_pending = false;
            self.settle();
        }
        let mut messages = vec![Message::ServiceRequest { service: Bytes::from_static(apf::SERVICE_PFWD) }];
        for port in [16992, 16993, 5900] {
            messages.push(Message::GlobalRequest {
                want_reply: true,
                request: GlobalRequest::TcpipForward { address: Bytes::new(), port },
            });
        }
        self.feed(&encode(&messages));
        Ok(())
    }

    /// A channel to act on: mostly one the session opened, sometimes any id.
    fn pick_channel(&self, u: &mut Unstructured) -> Result<ChannelId> {
        if !self.known.is_empty() && u.ratio(7, 8)? {
            Ok(*u.choose(&self.known)?)
        } else {
            Ok(ChannelId(u.int_in_range(0..=8)?))
        }
    }

    fn pick_channel_id(&self, u: &mut Unstructured) -> Result<u32> {
        Ok(self.pick_channel(u)?.0)
    }

    /// A message a device (or something pretending to be one) could send.
    fn device_message(&self, u: &mut Unstructured) -> Result<Message> {
        Ok(match u.int_in_range(0..=18u8)? {
            0 => Message::ProtocolVersion {
                major: if u.ratio(1, 8)? { u.arbitrary()? } else { 1 },
                minor: u.int_in_range(0..=1)?,
                trigger_reason: u.arbitrary()?,
                uuid: UUID,
            },
            1 => Message::ServiceRequest { service: service(u, apf::SERVICE_AUTH)? },
            2 => Message::ServiceRequest { service: service(u, apf::SERVICE_PFWD)? },
            3 => Message::UserauthRequest {
                username: filler(u, b'u')?,
                service: service(u, apf::SERVICE_PFWD)?,
                method: AuthMethod::Password(filler(u, b'p')?),
            },
            4 => Message::UserauthRequest {
                username: filler(u, b'u')?,
                service: service(u, apf::SERVICE_PFWD)?,
                method: if u.arbitrary()? { AuthMethod::None } else { AuthMethod::Other(filler(u, b'm')?) },
            },
            5 | 6 => {
                let address = filler(u, b'a')?;
                let port = if u.ratio(7, 8)? { *u.choose(&PORTS)? } else { u.arbitrary()? };
                let request = if u.ratio(3, 4)? {
                    GlobalRequest::TcpipForward { address, port }
                } else {
                    GlobalRequest::CancelTcpipForward { address, port }
                };
                Message::GlobalRequest { want_reply: u.ratio(3, 4)?, request }
            }
            7 => {
                let request = if u.arbitrary()? {
                    GlobalRequest::Other { name: filler(u, b'n')? }
                } else {
                    GlobalRequest::UdpSendTo {
                        address: filler(u, b'a')?,
                        port: u.arbitrary()?,
                        originator_address: filler(u, b'o')?,
                        originator_port: u.arbitrary()?,
                        data: filler(u, b'd')?,
                    }
                };
                Message::GlobalRequest { want_reply: u.arbitrary()?, request }
            }
            8 => Message::ChannelOpenConfirmation {
                recipient_channel: self.pick_channel_id(u)?,
                sender_channel: u.int_in_range(0..=3)?,
                initial_window: window(u)?,
                max_packet: *u.choose(&[0, 1, 1000, u32::MAX])?,
            },
            9 => Message::ChannelOpenFailure {
                recipient_channel: self.pick_channel_id(u)?,
                reason: OpenFailureReason::from_u32(u.int_in_range(0..=5)?),
            },
            10 => {
                Message::ChannelWindowAdjust { recipient_channel: self.pick_channel_id(u)?, bytes_to_add: window(u)? }
            }
            11 => {
                let len = *u.choose(&[0usize, 1, 499, 4096, 70_000, 300_000])?;
                Message::ChannelData { recipient_channel: self.pick_channel_id(u)?, data: vec![b'd'; len].into() }
            }
            12 => Message::ChannelEof { recipient_channel: self.pick_channel_id(u)? },
            13 => Message::ChannelClose { recipient_channel: self.pick_channel_id(u)? },
            14 => Message::KeepaliveRequest { cookie: u.arbitrary()? },
            15 => Message::KeepaliveReply {
                cookie: match self.last_probe {
                    Some(cookie) if u.ratio(3, 4)? => cookie,
                    _ => u.arbitrary()?,
                },
            },
            16 => Message::KeepaliveOptionsReply {
                interval_secs: *u.choose(&[0, 1, 30, 90, u32::MAX])?,
                timeout_secs: u.arbitrary()?,
            },
            17 => Message::Disconnect { reason: DisconnectReason::from_u32(u.int_in_range(1..=20)?) },
            _ => Message::ChannelOpen(ChannelOpen {
                channel_type: match u.int_in_range(0..=2)? {
                    0 => ChannelType::ForwardedTcpip,
                    1 => ChannelType::DirectTcpip,
                    _ => ChannelType::Other(filler(u, b't')?),
                },
                sender_channel: u.arbitrary()?,
                initial_window: window(u)?,
                max_packet: u.arbitrary()?,
                connected_address: filler(u, b'c')?,
                connected_port: u.arbitrary()?,
                originator_address: filler(u, b'o')?,
                originator_port: u.arbitrary()?,
            }),
        })
    }

    /// Feeds bytes to the session, and to the model that follows the device's grants.
    fn feed(&mut self, bytes: &[u8]) {
        self.model_absorb(bytes);
        self.session.handle_input(bytes, self.now);
        self.settle();
    }

    /// Decodes fed bytes as they come, under the default limits (never tighter than the
    /// session's: a message the model skips as invalid, the session refuses and closes on).
    /// Grants are counted as soon as they are fed, even while the session holds its input
    /// (authentication pending): no channel exists before authentication, so a grant the
    /// session processes later refers to no channel and closes it.
    fn model_absorb(&mut self, bytes: &[u8]) {
        if self.model_broken {
            return;
        }
        self.model_input.extend_from_slice(bytes);
        loop {
            match apf::decode(&self.model_input, &Limits::default()) {
                Ok(Some((message, consumed))) => {
                    self.model_input.drain(..consumed);
                    match message {
                        Message::ChannelOpenConfirmation {
                            recipient_channel, sender_channel, initial_window, ..
                        } => {
                            self.granted.insert(recipient_channel, (sender_channel, u64::from(initial_window)));
                        }
                        Message::ChannelWindowAdjust { recipient_channel, bytes_to_add } => {
                            if let Some((_, credit)) = self.granted.get_mut(&recipient_channel) {
                                *credit += u64::from(bytes_to_add);
                            }
                        }
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    self.model_broken = true;
                    self.model_input = Vec::new();
                    break;
                }
            }
        }
    }

    /// Takes the session's output and events and checks them, then handles a passed deadline.
    fn settle(&mut self) {
        self.drain();
        if let Some(deadline) = self.session.poll_timeout() {
            assert!(!self.session.is_closed(), "a deadline on a closed session");
            if deadline <= self.now {
                self.session.handle_timeout(self.now);
                self.drain();
                let next = self.session.poll_timeout();
                assert!(
                    self.session.is_closed() || next.is_none_or(|next| next > self.now),
                    "handle_timeout left a passed deadline ({:?} behind)",
                    next.map(|next| self.now - next)
                );
            }
        }
    }

    fn drain(&mut self) {
        while let Some(bytes) = self.session.poll_transmit() {
            self.check_transmit(&bytes);
        }
        assert_eq!(self.session.pending_transmit(), 0);
        while let Some(event) = self.session.poll_event() {
            self.on_event(event);
        }
        if self.session.is_closed() {
            assert_eq!(self.closed_events, 1, "closed without exactly one Event::Closed");
            assert!(!self.session.wants_input());
            assert_eq!(self.session.buffered_input(), 0);
            self.silent = true;
        } else {
            assert_eq!(self.closed_events, 0, "Event::Closed on an open session");
            assert!(!self.disconnect_sent, "DISCONNECT sent on an open session");
        }
    }

    /// The transmitted bytes must be whole messages (a sentinel appended must decode alone).
    fn check_transmit(&mut self, bytes: &[u8]) {
        assert!(!self.silent, "{} bytes transmitted after close", bytes.len());
        let sentinel = Message::KeepaliveRequest { cookie: 0x5e57_1e11 };
        let mut wire = BytesMut::from(bytes);
        sentinel.encode(&mut wire);
        let mut rest = &wire[..];
        loop {
            let (message, consumed) = match apf::decode(rest, &Limits::default()) {
                Ok(Some(decoded)) => decoded,
                other => panic!("transmitted bytes do not decode: {other:?}"),
            };
            rest = &rest[consumed..];
            if rest.is_empty() {
                assert_eq!(message, sentinel, "transmitted bytes end inside a message");
                break;
            }
            self.on_sent(message);
        }
    }

    fn on_sent(&mut self, message: Message) {
        assert!(!self.disconnect_sent, "{message:?} sent after DISCONNECT");
        match &message {
            Message::Disconnect { .. } => self.disconnect_sent = true,
            Message::ChannelData { recipient_channel, data } => {
                let ch = self.sending.expect("CHANNEL_DATA sent outside `send`");
                let (peer, credit) = self.granted.get_mut(&ch.0).expect("CHANNEL_DATA on an unconfirmed channel");
                assert_eq!(*recipient_channel, *peer, "CHANNEL_DATA for {ch} to the wrong device channel");
                let len = data.len() as u64;
                assert!(len <= *credit, "{len} bytes sent on {ch} with {credit} bytes of window");
                *credit -= len;
                self.sent_in_send += data.len();
            }
            _ => {}
        }
        self.last_sent = Some(message);
    }

    fn on_event(&mut self, event: Event) {
        assert_eq!(self.closed_events, 0, "{event:?} after Event::Closed");
        match event {
            Event::AuthRequest { .. } => self.auth_pending = true,
            Event::PortForwarded { port } => self.forwarded.push(port),
            Event::PortCancelled { port } => self.forwarded.retain(|&p| p != port),
            Event::ChannelClosed { ch } | Event::ChannelOpenFailed { ch, .. } => {
                self.granted.remove(&ch.0);
            }
            Event::Closed(cause) => {
                self.closed_events += 1;
                self.check_close(&cause);
            }
            _ => {}
        }
    }

    /// The DISCONNECT (or its absence) matches the cause.
    fn check_close(&self, cause: &CloseCause) {
        // The mapping itself is unit-tested in protocols; here: it is what went on the wire.
        let expected = cause.disconnect_reason();
        match expected {
            Some(reason) => assert_eq!(
                self.last_sent,
                Some(Message::Disconnect { reason }),
                "closed ({cause}) without DISCONNECT as the last message"
            ),
            None => assert!(!self.disconnect_sent, "DISCONNECT sent after the peer's ({cause})"),
        }
    }

    /// Closes the session if still open, and pokes it: it must stay silent.
    fn finish(&mut self) {
        if !self.session.is_closed() {
            self.session.disconnect(DisconnectReason::ByApplication);
            self.drain();
            assert_eq!(self.last_sent, Some(Message::Disconnect { reason: DisconnectReason::ByApplication }));
        }
        assert!(self.session.is_closed() && self.closed_events == 1);
        let ch = self.known.first().copied().unwrap_or(ChannelId(4));
        self.session.handle_input(&encode(&[Message::KeepaliveRequest { cookie: 1 }]), self.now);
        self.session.handle_timeout(self.now + Duration::from_secs(3600));
        assert_eq!(self.session.send(ch, b"late"), 0);
        assert_eq!(self.session.probe(), None);
        assert!(self.session.open_channel(16992, (Bytes::new(), 0)).is_err());
        self.session.accept_auth(self.now);
        self.session.consumed(ch, 1 << 20);
        self.session.send_eof(ch);
        self.session.close_channel(ch);
        self.session.disconnect(DisconnectReason::ProtocolError);
        assert_eq!(self.session.poll_timeout(), None);
        self.drain();
    }
}

/// A window or adjustment: small, typical and extreme values.
fn window(u: &mut Unstructured) -> Result<u32> {
    Ok(match u.int_in_range(0..=3)? {
        0 => *u.choose(&[0, 1, 499, 4096, 32_768, u32::MAX])?,
        _ => u.int_in_range(0..=70_000)?,
    })
}

/// `valid` most of the time, otherwise some other name.
fn service(u: &mut Unstructured, valid: &'static [u8]) -> Result<Bytes> {
    if u.ratio(7, 8)? {
        Ok(Bytes::from_static(valid))
    } else {
        filler(u, b's')
    }
}

/// A field of a length around the limits that matter (pre-auth 1348, default 2048).
fn filler(u: &mut Unstructured, byte: u8) -> Result<Bytes> {
    let len = match u.int_in_range(0..=3)? {
        0 => *u.choose(&[0usize, 1348, 1349, 2048, 2049, 5000])?,
        _ => u.int_in_range(0..=24)?,
    };
    Ok(vec![byte; len].into())
}

fn encode(messages: &[Message]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for message in messages {
        message.encode(&mut buf);
    }
    buf.to_vec()
}
