//! One channel's handler with its buffers, as a driver runs it: the bytes received and not yet
//! taken, the bytes written and not yet sent (with their message boundaries), and the order in
//! which the handler is called (timer, wake-up, input, EOF). No I/O: the APF driver
//! ([`device`](super::device)) sends the output as CHANNEL_DATA within the gateway's window, the
//! LAN driver ([`lan`](super::lan)) writes it to a TCP socket; both use this.
//!
//! Backpressure (see [`service`](super::service)): the handler is offered input only while its
//! unsent output is under `max_pending`, and `on_wake` runs after a wake-up or once some output
//! was sent (its [`Outbox::room`] grew). A handler that asked to close gets no more calls; input
//! that arrives then is discarded. A handler that ended its output ([`Outbox::end_output`]) keeps
//! getting input; the driver sends the end once the output before it is sent
//! ([`HandlerChannel::take_output_end`]).

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Buf, BytesMut};

use super::service::{ChannelHandler, Outbox};

/// A channel buffer this large is freed once empty, rather than kept.
const KEEP_BUFFER: usize = 16 * 1024;

/// A handler and its buffers.
pub struct HandlerChannel {
    handler: Box<dyn ChannelHandler>,
    max_pending: usize,
    /// Received, not yet taken by the handler.
    inbound: BytesMut,
    /// Written by the handler, not yet sent (bounded by `max_pending` plus one handler call's
    /// overshoot).
    outbound: BytesMut,
    /// Ends of messages in `outbound` (offsets, increasing), each sent on its own.
    boundaries: VecDeque<usize>,
    /// The handler was woken, or room grew: call `on_wake`.
    woken: bool,
    eof_received: bool,
    eof_delivered: bool,
    /// The handler asked to close once its output is sent.
    close_requested: bool,
    close_reported: bool,
    /// The handler ended its output (a half-close) once what it wrote is sent.
    end_requested: bool,
    end_reported: bool,
}

impl std::fmt::Debug for HandlerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerChannel")
            .field("inbound", &self.inbound.len())
            .field("outbound", &self.outbound.len())
            .field("eof_received", &self.eof_received)
            .field("close_requested", &self.close_requested)
            .finish_non_exhaustive()
    }
}

/// What one [`HandlerChannel::step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Step {
    /// Input bytes taken (or discarded after a close): the peer may send that many more.
    pub consumed: usize,
    /// Something changed (output written, input taken, EOF delivered, close requested).
    pub moved: bool,
}

impl HandlerChannel {
    /// A channel run by `handler`, whose `on_open` is called at once.
    pub fn open(handler: Box<dyn ChannelHandler>, max_pending: usize) -> Self {
        let mut channel = Self {
            handler,
            max_pending,
            inbound: BytesMut::new(),
            outbound: BytesMut::new(),
            boundaries: VecDeque::new(),
            woken: false,
            eof_received: false,
            eof_delivered: false,
            close_requested: false,
            close_reported: false,
            end_requested: false,
            end_reported: false,
        };
        channel.call(|handler, _, out| handler.on_open(out));
        channel
    }

    /// Runs `f` on the handler with the channel's outbox and its waiting input.
    fn call<R>(&mut self, f: impl FnOnce(&mut dyn ChannelHandler, &[u8], &mut Outbox<'_>) -> R) -> R {
        let mut outbox = Outbox::with_boundaries(
            &mut self.outbound,
            self.max_pending,
            &mut self.close_requested,
            &mut self.boundaries,
        )
        .with_end(&mut self.end_requested);
        f(self.handler.as_mut(), &self.inbound, &mut outbox)
    }

    /// Bytes the peer sent; the handler is offered them by [`HandlerChannel::step`].
    pub fn received(&mut self, data: &[u8]) {
        self.inbound.extend_from_slice(data);
    }

    /// Received bytes the handler has not taken yet.
    pub fn unconsumed(&self) -> usize {
        self.inbound.len()
    }

    /// The peer will send nothing more; the handler hears of it once its input is taken.
    pub fn received_eof(&mut self) {
        self.eof_received = true;
    }

    pub fn eof_received(&self) -> bool {
        self.eof_received
    }

    /// The channel's handler asked for a wake-up ([`super::ChannelWaker::wake`]).
    pub fn wake(&mut self) {
        self.woken = true;
    }

    /// When the handler next wants its timer, unless it is closing.
    pub fn deadline(&self) -> Option<Instant> {
        if self.close_requested {
            None
        } else {
            self.handler.poll_deadline()
        }
    }

    /// Calls the handler's `on_timer` if its deadline is reached.
    pub fn run_timer(&mut self, now: Instant) {
        if self.deadline().is_some_and(|at| at <= now) {
            self.call(|handler, _, out| handler.on_timer(now, out));
        }
    }

    /// The next bytes to send, at most `limit`: up to the next message boundary.
    pub fn next_output(&self, limit: usize) -> &[u8] {
        let message = self.boundaries.front().copied().unwrap_or(self.outbound.len());
        &self.outbound[..message.min(self.outbound.len()).min(limit)]
    }

    /// The first `n` bytes of [`HandlerChannel::next_output`] were sent; the handler gets
    /// `on_wake` (its room grew).
    pub fn sent(&mut self, n: usize) {
        let n = n.min(self.outbound.len());
        self.outbound.advance(n);
        for mark in self.boundaries.iter_mut() {
            *mark = mark.saturating_sub(n);
        }
        while self.boundaries.front() == Some(&0) {
            self.boundaries.pop_front();
        }
        if self.outbound.is_empty() {
            self.boundaries.clear();
        }
        if n > 0 {
            self.woken = true;
        }
    }

    /// Whether output waits to be sent.
    pub fn has_output(&self) -> bool {
        !self.outbound.is_empty()
    }

    /// Calls the handler once each for what is due: `on_wake`, `on_data` (when there is room for
    /// its output), `on_eof` (once the input before it was taken). Call again while it moves.
    pub fn step(&mut self) -> Step {
        let mut step = Step::default();
        if self.woken && !self.close_requested && self.outbound.len() < self.max_pending {
            self.woken = false;
            let before = self.outbound.len();
            self.call(|handler, _, out| handler.on_wake(out));
            step.moved |= self.outbound.len() != before || self.close_requested;
        }
        if !self.inbound.is_empty() {
            let n = if self.close_requested {
                self.inbound.len()
            } else if self.outbound.len() < self.max_pending {
                self.call(|handler, input, out| handler.on_data(input, out).min(input.len()))
            } else {
                0
            };
            if n > 0 {
                self.inbound.advance(n);
                step.consumed = n;
                step.moved = true;
            }
        }
        if self.eof_received && !self.eof_delivered && self.inbound.is_empty() {
            self.eof_delivered = true;
            self.call(|handler, _, out| handler.on_eof(out));
            step.moved = true;
        }
        step
    }

    /// True once, when the handler asked to close and its output is all sent: the driver closes
    /// the channel then.
    pub fn take_close(&mut self) -> bool {
        if self.close_requested && !self.close_reported && self.outbound.is_empty() {
            self.close_reported = true;
            return true;
        }
        false
    }

    /// True once, when the handler ended its output ([`Outbox::end_output`]) and all of it was
    /// sent: the driver sends EOF (shuts down its socket's write side) then. Ask before
    /// [`HandlerChannel::take_close`], so that a handler that ends its output and closes at once
    /// sends EOF before CLOSE.
    pub fn take_output_end(&mut self) -> bool {
        if self.end_requested && !self.end_reported && self.outbound.is_empty() {
            self.end_reported = true;
            return true;
        }
        false
    }

    /// Whether the handler asked to close.
    pub fn closing(&self) -> bool {
        self.close_requested
    }

    /// Frees buffers grown by bulk traffic once they are empty.
    pub fn shrink(&mut self) {
        for buf in [&mut self.inbound, &mut self.outbound] {
            if buf.is_empty() && buf.capacity() > KEEP_BUFFER {
                *buf = BytesMut::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amt::echo::Echo;
    use crate::amt::service::{ChannelInfo, Service, WakeSet};

    fn echo(max_pending: usize) -> HandlerChannel {
        let ch = protocols::session::ChannelId(1);
        let info = ChannelInfo {
            uuid: uuid::Uuid::nil(),
            ch,
            port: 7,
            originator: bytes::Bytes::new(),
            originator_port: 0,
            log_level: tracing::Level::DEBUG,
            waker: WakeSet::new().waker(ch),
        };
        HandlerChannel::open(Echo.open(&info).unwrap(), max_pending)
    }

    #[test]
    fn input_waits_for_room_and_eof_closes_after_the_output() {
        let mut channel = echo(4);
        channel.received(b"abcdef");
        assert_eq!(channel.step(), Step { consumed: 4, moved: true });
        assert_eq!(channel.step(), Step { consumed: 0, moved: false }, "no room");
        assert_eq!(channel.next_output(3), b"abc");
        channel.sent(3);
        assert_eq!(channel.step().consumed, 2);
        channel.received_eof();
        assert!(channel.step().moved, "EOF delivered");
        assert!(channel.closing() && !channel.take_close(), "output still waits");
        assert_eq!(channel.next_output(100), b"def");
        channel.sent(3);
        assert!(channel.take_close());
        assert!(!channel.take_close(), "once");
        channel.received(b"late");
        assert_eq!(channel.step().consumed, 4, "discarded after the close");
    }

    /// Writes what it gets until "end", which ends its output; closes on the gateway's EOF.
    struct HalfClose;

    impl ChannelHandler for HalfClose {
        fn on_data(&mut self, data: &[u8], out: &mut Outbox<'_>) -> usize {
            if data == b"end" {
                out.end_output();
            } else if !out.is_output_ended() {
                out.write(data);
            }
            data.len()
        }
    }

    #[test]
    fn the_output_ends_after_what_was_written_and_input_still_flows() {
        let mut channel = HandlerChannel::open(Box::new(HalfClose), 100);
        channel.received(b"ab");
        channel.step();
        channel.received(b"end");
        channel.step();
        assert!(!channel.take_output_end(), "output still waits");
        channel.sent(2);
        assert!(channel.take_output_end());
        assert!(!channel.take_output_end(), "once");
        channel.received(b"more");
        assert_eq!(channel.step().consumed, 4, "input still taken");
        assert!(!channel.closing());
        channel.received_eof();
        channel.step();
        assert!(channel.take_close());
    }
}
