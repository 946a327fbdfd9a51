//! The channel table of one APF tunnel and its flow control, shared by both roles.
//!
//! Channel ids are per direction, SSH style: each side picks its own id for a channel and the
//! peer addresses it by that id in "recipient channel". Our ids start at 4, as real MPSs do.
//!
//! Flow control: we never send more than the peer's window (its credit to us). We advertise our
//! own window when a channel opens and grant more (WINDOW_ADJUST) only once the application has
//! consumed data: after half the window (server default) or after a smaller step (firmware-like
//! clients), so that bytes buffered for a channel never exceed the window we advertised.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use super::{ChannelId, CloseCause, Event, ProtocolErrorKind};
use crate::apf::{ChannelOpen, ChannelType, Message, OpenFailureReason};

/// Flow-control settings for the channels of one tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Most channels open (or opening) at once on one tunnel.
    pub max_channels: usize,
    /// The receive window we advertise per channel.
    pub window: u32,
    /// Consumed bytes that trigger a WINDOW_ADJUST (at most `window`; `window / 2` is SSH's and
    /// the MPSs' rule, firmware grants in much smaller steps).
    pub adjust_threshold: u32,
    /// Largest CHANNEL_DATA payload we send.
    pub max_send_chunk: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self { max_channels: 64, window: 256 * 1024, adjust_threshold: 128 * 1024, max_send_chunk: 32 * 1024 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// We sent CHANNEL_OPEN and wait for the confirmation.
    OpeningOut,
    /// The peer sent CHANNEL_OPEN; the application has not decided yet.
    OpeningIn,
    Open,
}

#[derive(Debug)]
struct Channel {
    state: State,
    peer_id: u32,
    port: u32,
    /// Bytes we may still send (the peer's window to us).
    send_credit: u64,
    /// Largest packet the peer takes (0 = no limit stated).
    peer_max_packet: u32,
    /// Bytes the peer may still send before we grant more.
    recv_remaining: u64,
    /// Bytes the application consumed that we have not granted back yet.
    consumed_unacked: u32,
    close_sent: bool,
    /// Close requested while opening: send CLOSE as soon as the peer's id is known.
    close_pending: bool,
    eof_sent: bool,
}

/// Output produced by the session: bytes for the wire and events for the application.
#[derive(Debug, Default)]
pub(crate) struct Output {
    pub(crate) transmit: BytesMut,
    pub(crate) events: std::collections::VecDeque<Event>,
}

impl Output {
    pub(crate) fn send(&mut self, message: &Message) {
        message.encode(&mut self.transmit);
    }
}

/// Why a channel could not be opened locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the tunnel is not established yet")]
    NotEstablished,
    #[error("the device has not forwarded port {0}")]
    PortNotForwarded(u32),
    #[error("too many channels open on this tunnel")]
    TooManyChannels,
    #[error("the tunnel is closed")]
    Closed,
}

#[derive(Debug)]
pub(crate) struct Channels {
    config: ChannelConfig,
    map: HashMap<u32, Channel>,
    next_id: u32,
}

const FIRST_CHANNEL_ID: u32 = 4;

impl Channels {
    pub(crate) fn new(config: ChannelConfig) -> Self {
        let mut config = config;
        config.window = config.window.max(1);
        config.adjust_threshold = config.adjust_threshold.clamp(1, config.window);
        config.max_send_chunk = config.max_send_chunk.max(1);
        Self { config, map: HashMap::new(), next_id: FIRST_CHANNEL_ID }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    fn allocate_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(FIRST_CHANNEL_ID);
            if !self.map.contains_key(&id) {
                return id;
            }
        }
    }

    /// Opens a `forwarded-tcpip` channel to `port` (server role).
    pub(crate) fn open(
        &mut self,
        out: &mut Output,
        connected_address: Bytes,
        port: u32,
        originator: (Bytes, u32),
    ) -> Result<ChannelId, OpenError> {
        if self.map.len() >= self.config.max_channels {
            return Err(OpenError::TooManyChannels);
        }
        let id = self.allocate_id();
        self.map.insert(
            id,
            Channel {
                state: State::OpeningOut,
                peer_id: 0,
                port,
                send_credit: 0,
                peer_max_packet: 0,
                recv_remaining: u64::from(self.config.window),
                consumed_unacked: 0,
                close_sent: false,
                close_pending: false,
                eof_sent: false,
            },
        );
        out.send(&Message::ChannelOpen(ChannelOpen {
            channel_type: ChannelType::ForwardedTcpip,
            sender_channel: id,
            initial_window: self.config.window,
            max_packet: u32::MAX,
            connected_address,
            connected_port: port,
            originator_address: originator.0,
            originator_port: originator.1,
        }));
        Ok(ChannelId(id))
    }

    /// A CHANNEL_OPEN from the peer that the role wants the application to decide on (client
    /// role). Returns the new channel's id, or refuses it on the wire when the table is full.
    pub(crate) fn peer_open(&mut self, out: &mut Output, open: &ChannelOpen) -> Option<ChannelId> {
        if self.map.len() >= self.config.max_channels {
            out.send(&Message::ChannelOpenFailure {
                recipient_channel: open.sender_channel,
                reason: OpenFailureReason::ResourceShortage,
            });
            return None;
        }
        let id = self.allocate_id();
        self.map.insert(
            id,
            Channel {
                state: State::OpeningIn,
                peer_id: open.sender_channel,
                port: open.connected_port,
                send_credit: u64::from(open.initial_window),
                peer_max_packet: open.max_packet,
                recv_remaining: u64::from(self.config.window),
                consumed_unacked: 0,
                close_sent: false,
                close_pending: false,
                eof_sent: false,
            },
        );
        Some(ChannelId(id))
    }

    /// Accepts a channel the peer opened.
    pub(crate) fn accept(&mut self, out: &mut Output, ch: ChannelId) -> bool {
        let window = self.config.window;
        let Some(channel) = self.map.get_mut(&ch.0) else { return false };
        if channel.state != State::OpeningIn {
            return false;
        }
        channel.state = State::Open;
        out.send(&Message::ChannelOpenConfirmation {
            recipient_channel: channel.peer_id,
            sender_channel: ch.0,
            initial_window: window,
            max_packet: u32::MAX,
        });
        true
    }

    /// Refuses a channel the peer opened.
    pub(crate) fn reject(&mut self, out: &mut Output, ch: ChannelId, reason: OpenFailureReason) {
        if let Some(channel) = self.map.get(&ch.0) {
            if channel.state == State::OpeningIn {
                out.send(&Message::ChannelOpenFailure { recipient_channel: channel.peer_id, reason });
                self.map.remove(&ch.0);
            }
        }
    }

    /// Bytes that [`Channels::send`] would take now.
    pub(crate) fn send_capacity(&self, ch: ChannelId) -> usize {
        match self.map.get(&ch.0) {
            Some(c) if c.state == State::Open && !c.close_sent && !c.eof_sent => {
                usize::try_from(c.send_credit).unwrap_or(usize::MAX)
            }
            _ => 0,
        }
    }

    /// Queues as much of `data` as the peer's window allows; returns how many bytes were taken.
    pub(crate) fn send(&mut self, out: &mut Output, ch: ChannelId, data: &[u8]) -> usize {
        let max_chunk = self.config.max_send_chunk;
        let Some(c) = self.map.get_mut(&ch.0) else { return 0 };
        if c.state != State::Open || c.close_sent || c.eof_sent {
            return 0;
        }
        let take = data.len().min(usize::try_from(c.send_credit).unwrap_or(usize::MAX));
        let chunk = match c.peer_max_packet {
            0 => max_chunk,
            n => max_chunk.min(usize::try_from(n).unwrap_or(usize::MAX)).max(1),
        };
        for piece in data[..take].chunks(chunk) {
            out.send(&Message::ChannelData { recipient_channel: c.peer_id, data: Bytes::copy_from_slice(piece) });
        }
        c.send_credit -= take as u64;
        take
    }

    /// The application consumed `n` bytes of received data: grant credit back when due.
    pub(crate) fn consumed(&mut self, out: &mut Output, ch: ChannelId, n: usize) {
        let threshold = self.config.adjust_threshold;
        let window = u64::from(self.config.window);
        let Some(c) = self.map.get_mut(&ch.0) else { return };
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        c.consumed_unacked = c.consumed_unacked.saturating_add(n);
        // Never grant more than we have outstanding, whatever the application claims.
        let max_grant = window.saturating_sub(c.recv_remaining);
        c.consumed_unacked = c.consumed_unacked.min(u32::try_from(max_grant).unwrap_or(u32::MAX));
        if c.consumed_unacked >= threshold && c.state == State::Open && !c.close_sent {
            let grant = c.consumed_unacked;
            c.consumed_unacked = 0;
            c.recv_remaining += u64::from(grant);
            out.send(&Message::ChannelWindowAdjust { recipient_channel: c.peer_id, bytes_to_add: grant });
        }
    }

    pub(crate) fn send_eof(&mut self, out: &mut Output, ch: ChannelId) {
        if let Some(c) = self.map.get_mut(&ch.0) {
            if c.state == State::Open && !c.eof_sent && !c.close_sent {
                c.eof_sent = true;
                out.send(&Message::ChannelEof { recipient_channel: c.peer_id });
            }
        }
    }

    /// Closes a channel from our side. The entry stays until the peer's CLOSE arrives.
    pub(crate) fn close(&mut self, out: &mut Output, ch: ChannelId) {
        let Some(c) = self.map.get_mut(&ch.0) else { return };
        match c.state {
            State::OpeningOut => c.close_pending = true,
            State::OpeningIn => {
                out.send(&Message::ChannelOpenFailure {
                    recipient_channel: c.peer_id,
                    reason: OpenFailureReason::ConnectFailed,
                });
                self.map.remove(&ch.0);
            }
            State::Open if !c.close_sent => {
                c.close_sent = true;
                out.send(&Message::ChannelClose { recipient_channel: c.peer_id });
            }
            State::Open => {}
        }
    }

    fn get_mut(&mut self, id: u32) -> Result<&mut Channel, CloseCause> {
        self.map.get_mut(&id).ok_or_else(|| CloseCause::protocol(ProtocolErrorKind::UnknownChannel, "unknown channel"))
    }

    /// Handles a channel message from the peer.
    pub(crate) fn handle(&mut self, out: &mut Output, message: Message) -> Result<(), CloseCause> {
        match message {
            Message::ChannelOpenConfirmation { recipient_channel, sender_channel, initial_window, max_packet } => {
                let c = self.get_mut(recipient_channel)?;
                if c.state != State::OpeningOut {
                    return Err(CloseCause::protocol(
                        ProtocolErrorKind::UnexpectedMessage,
                        "confirmation of an open channel",
                    ));
                }
                c.state = State::Open;
                c.peer_id = sender_channel;
                c.send_credit = u64::from(initial_window);
                c.peer_max_packet = max_packet;
                let ch = ChannelId(recipient_channel);
                if c.close_pending {
                    c.close_sent = true;
                    out.send(&Message::ChannelClose { recipient_channel: sender_channel });
                } else {
                    out.events.push_back(Event::ChannelOpened { ch, port: c.port, send_window: initial_window });
                }
            }
            Message::ChannelOpenFailure { recipient_channel, reason } => {
                let c = self.get_mut(recipient_channel)?;
                if c.state != State::OpeningOut {
                    return Err(CloseCause::protocol(
                        ProtocolErrorKind::UnexpectedMessage,
                        "open failure for an open channel",
                    ));
                }
                let pending_close = c.close_pending;
                self.map.remove(&recipient_channel);
                if !pending_close {
                    out.events.push_back(Event::ChannelOpenFailed { ch: ChannelId(recipient_channel), reason });
                }
            }
            Message::ChannelWindowAdjust { recipient_channel, bytes_to_add } => {
                let c = self.get_mut(recipient_channel)?;
                let was_blocked = c.send_credit == 0;
                // A peer may grant more than 4 GiB in total over time; cap the credit at the
                // largest window a single message can express, which is plenty.
                c.send_credit = (c.send_credit + u64::from(bytes_to_add)).min(u64::from(u32::MAX));
                if was_blocked && bytes_to_add > 0 && c.state == State::Open && !c.close_sent {
                    out.events.push_back(Event::ChannelWritable { ch: ChannelId(recipient_channel) });
                }
            }
            Message::ChannelData { recipient_channel, data } => {
                let c = self.get_mut(recipient_channel)?;
                if c.state != State::Open {
                    return Err(CloseCause::protocol(
                        ProtocolErrorKind::UnexpectedMessage,
                        "data on a channel not open",
                    ));
                }
                let n = data.len() as u64;
                if n > c.recv_remaining {
                    return Err(CloseCause::protocol(
                        ProtocolErrorKind::WindowExceeded,
                        "channel data beyond the window granted",
                    ));
                }
                c.recv_remaining -= n;
                if c.close_sent {
                    // We are closing: drop the data but keep the books straight.
                    return Ok(());
                }
                if !data.is_empty() {
                    out.events.push_back(Event::ChannelData { ch: ChannelId(recipient_channel), data });
                }
            }
            Message::ChannelEof { recipient_channel } => {
                let c = self.get_mut(recipient_channel)?;
                if c.state == State::Open && !c.close_sent {
                    out.events.push_back(Event::ChannelEof { ch: ChannelId(recipient_channel) });
                }
            }
            Message::ChannelClose { recipient_channel } => {
                let c = self.get_mut(recipient_channel)?;
                if c.state != State::Open {
                    return Err(CloseCause::protocol(
                        ProtocolErrorKind::UnexpectedMessage,
                        "close of a channel not open",
                    ));
                }
                if !c.close_sent {
                    out.send(&Message::ChannelClose { recipient_channel: c.peer_id });
                }
                self.map.remove(&recipient_channel);
                out.events.push_back(Event::ChannelClosed { ch: ChannelId(recipient_channel) });
            }
            _ => unreachable_channel_message(),
        }
        Ok(())
    }

    /// Forgets every channel (the tunnel closed), telling the application about each.
    pub(crate) fn clear(&mut self, out: &mut Output) {
        let mut ids: Vec<u32> = self.map.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            out.events.push_back(Event::ChannelClosed { ch: ChannelId(id) });
        }
        self.map.clear();
    }
}

/// `handle` is only called with channel messages (see `is_channel_message`); anything else is a
/// bug in the caller, which we do not turn into a panic on peer input.
fn unreachable_channel_message() {
    debug_assert!(false, "Channels::handle called with a non-channel message");
}

pub(crate) fn is_channel_message(message: &Message) -> bool {
    matches!(
        message,
        Message::ChannelOpenConfirmation { .. }
            | Message::ChannelOpenFailure { .. }
            | Message::ChannelWindowAdjust { .. }
            | Message::ChannelData { .. }
            | Message::ChannelEof { .. }
            | Message::ChannelClose { .. }
    )
}
