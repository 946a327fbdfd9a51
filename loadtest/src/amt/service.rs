//! What a simulated device runs behind its forwarded ports.
//!
//! When the gateway opens a channel to a port, the device driver asks the [`Services`] map for
//! that port's [`Service`], which makes one [`ChannelHandler`] for the channel (or refuses it).
//! The driver then offers the handler the bytes that arrive and sends what the handler writes
//! to its [`Outbox`], with backpressure both ways:
//!
//! - the driver grants the gateway more window (`consumed`) only for bytes a handler took;
//! - it offers input only while the channel's unsent output is under a bound
//!   ([`DeviceConfig::max_pending`](super::DeviceConfig::max_pending)); [`Outbox::room`] says
//!   how much more fits, and a handler that takes input for which it has no room should take
//!   less (return a smaller count) rather than buffer it.
//!
//! Handlers are state machines driven by the driver: they get input ([`ChannelHandler::on_data`]),
//! wake-ups ([`ChannelHandler::on_wake`]) and timers ([`ChannelHandler::poll_deadline`],
//! [`ChannelHandler::on_timer`]), and write to their [`Outbox`]. A handler that needs I/O of its
//! own (SOL's shell on a pseudo-terminal) runs it in tasks it owns and ends with itself (dropped
//! when the channel closes), which hand their results over through shared state and call
//! [`ChannelWaker::wake`]; the driver then calls `on_wake` on the driver's task. A new device
//! service (SOL, IDE-R, WS-MAN) is a new `Service` plus an entry in the map.
//!
//! Half-close: a handler whose peer stopped sending (a socket's EOF) but that still takes input
//! ends its output with [`Outbox::end_output`] (the driver sends CHANNEL_EOF), and closes later;
//! the gateway's EOF reaches it as [`ChannelHandler::on_eof`].
//!
//! Message boundaries: a protocol whose peers read "one message per read" (amtterm, see
//! redirection.md §1.8) marks the end of each such message with [`Outbox::end_message`]; the driver
//! then never puts bytes of two messages in one APF CHANNEL_DATA.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use protocols::session::ChannelId;
use uuid::Uuid;

/// Who a channel is for and from, handed to [`Service::open`].
#[derive(Debug, Clone)]
pub struct ChannelInfo {
    /// The device's UUID.
    pub uuid: Uuid,
    pub ch: ChannelId,
    /// The device port the gateway asked for (16992, 16994, …).
    pub port: u32,
    /// The connection's source as the gateway reported it.
    pub originator: Bytes,
    pub originator_port: u32,
    /// The level of this device's log lines (`INFO` alone, `DEBUG` in a fleet).
    pub log_level: tracing::Level,
    /// Wakes this channel's handler ([`ChannelHandler::on_wake`]) from another task.
    pub waker: ChannelWaker,
}

/// The channels of one connection that were woken since the driver last looked, and the signal
/// that tells the driver to look. At most one entry per channel, so it stays bounded.
#[derive(Debug, Default)]
pub struct WakeSet {
    pending: Mutex<BTreeSet<ChannelId>>,
    notify: tokio::sync::Notify,
}

impl WakeSet {
    /// An empty set, shared by a driver and the wakers it hands out.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A waker for channel `ch`.
    pub fn waker(self: &Arc<Self>, ch: ChannelId) -> ChannelWaker {
        ChannelWaker { ch, set: Arc::clone(self) }
    }

    /// The channels woken since the last call (and forgets them).
    pub fn take(&self) -> Vec<ChannelId> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *pending).into_iter().collect()
    }

    /// Whether `ch` was woken (and forgets it); for drivers that poll one channel.
    pub fn take_one(&self, ch: ChannelId) -> bool {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&ch)
    }

    /// Resolves once a channel was woken after the last `take` (a wake before the call counts).
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

/// Wakes one channel's handler: the driver calls its [`ChannelHandler::on_wake`] soon. Cheap to
/// clone; waking a closed channel does nothing.
#[derive(Debug, Clone)]
pub struct ChannelWaker {
    ch: ChannelId,
    set: Arc<WakeSet>,
}

impl ChannelWaker {
    /// Asks the driver to call the handler's `on_wake`.
    pub fn wake(&self) {
        self.set.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(self.ch);
        self.set.notify.notify_one();
    }

    /// The channel this waker wakes.
    pub fn channel(&self) -> ChannelId {
        self.ch
    }
}

/// A device-side service: makes a handler per channel.
pub trait Service: Send + Sync + fmt::Debug {
    /// A handler for a new channel, or `None` to refuse it (the gateway gets "connect failed").
    fn open(&self, channel: &ChannelInfo) -> Option<Box<dyn ChannelHandler>>;
}

/// One channel's handler: takes the bytes the gateway sent, writes the replies.
pub trait ChannelHandler: Send {
    /// Called once, right after the channel was accepted (a service that speaks first writes here).
    fn on_open(&mut self, _out: &mut Outbox<'_>) {}

    /// Offers received bytes; returns how many of them the handler took (the rest is offered
    /// again later, and the gateway gets window back only for taken bytes).
    fn on_data(&mut self, data: &[u8], out: &mut Outbox<'_>) -> usize;

    /// The gateway will send nothing more. By default the channel is closed once the output is
    /// sent.
    fn on_eof(&mut self, out: &mut Outbox<'_>) {
        out.close();
    }

    /// Called after [`ChannelWaker::wake`], and after some of the channel's output was sent (its
    /// [`Outbox::room`] grew). Not called once the channel is closing.
    fn on_wake(&mut self, _out: &mut Outbox<'_>) {}

    /// When the handler next wants [`ChannelHandler::on_timer`] called, if ever.
    fn poll_deadline(&self) -> Option<Instant> {
        None
    }

    /// Called once `now` reached [`ChannelHandler::poll_deadline`] (possibly somewhat later).
    fn on_timer(&mut self, _now: Instant, _out: &mut Outbox<'_>) {}
}

/// Where a handler writes. Writes past [`Outbox::room`] are kept too, but the driver stops
/// offering input until the output drains.
#[derive(Debug)]
pub struct Outbox<'a> {
    buf: &'a mut BytesMut,
    limit: usize,
    close: &'a mut bool,
    boundaries: Option<&'a mut VecDeque<usize>>,
    /// Set by [`Outbox::end_output`] when the driver can half-close.
    end: Option<&'a mut bool>,
}

impl<'a> Outbox<'a> {
    /// An outbox appending to `buf`, with room up to `limit` bytes pending in all. Message
    /// boundaries are not kept ([`Outbox::end_message`] does nothing).
    pub fn new(buf: &'a mut BytesMut, limit: usize, close: &'a mut bool) -> Self {
        Self { buf, limit, close, boundaries: None, end: None }
    }

    /// An outbox that also records message boundaries, as offsets into `buf` (in increasing
    /// order; the driver lowers them as it sends the front of `buf`).
    pub fn with_boundaries(
        buf: &'a mut BytesMut,
        limit: usize,
        close: &'a mut bool,
        boundaries: &'a mut VecDeque<usize>,
    ) -> Self {
        Self { buf, limit, close, boundaries: Some(boundaries), end: None }
    }

    /// An outbox whose driver can end the output alone ([`Outbox::end_output`] sets `end`).
    pub fn with_end(mut self, end: &'a mut bool) -> Self {
        self.end = Some(end);
        self
    }

    /// Ends a message: what was written so far goes out without the bytes written after it in
    /// the same APF CHANNEL_DATA (it may still be split in several when the window is short).
    pub fn end_message(&mut self) {
        let len = self.buf.len();
        if let Some(marks) = self.boundaries.as_deref_mut() {
            if len > 0 && marks.back() != Some(&len) {
                marks.push_back(len);
            }
        }
    }

    /// Bytes that fit before the channel's pending output reaches its bound.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.buf.len())
    }

    /// Appends `data` to the channel's output.
    pub fn write(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Closes the channel once everything written has been sent. Later input is discarded.
    pub fn close(&mut self) {
        *self.close = true;
    }

    /// Ends the channel's output once everything written has been sent (APF CHANNEL_EOF, or a
    /// LAN socket's write side shut down), while input keeps coming: a half-close. Write nothing
    /// after it. An outbox made without [`Outbox::with_end`] closes the channel instead.
    pub fn end_output(&mut self) {
        match self.end.as_deref_mut() {
            Some(end) => *end = true,
            None => self.close(),
        }
    }

    /// Whether [`Outbox::end_output`] was called (or the channel is closing).
    pub fn is_output_ended(&self) -> bool {
        self.end.as_deref().copied().unwrap_or(false) || *self.close
    }

    /// Whether [`Outbox::close`] was called.
    pub fn is_closing(&self) -> bool {
        *self.close
    }
}

/// Which service answers on which port.
#[derive(Clone, Default)]
pub struct Services {
    by_port: BTreeMap<u32, Arc<dyn Service>>,
    fallback: Option<Arc<dyn Service>>,
}

impl fmt::Debug for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Services").field("by_port", &self.by_port).field("fallback", &self.fallback).finish()
    }
}

impl Services {
    /// No services: every channel is refused.
    pub fn none() -> Self {
        Self::default()
    }

    /// Serves `port` with `service`.
    pub fn with(self, port: u32, service: impl Service + 'static) -> Self {
        self.with_shared(port, Arc::new(service))
    }

    pub fn with_shared(mut self, port: u32, service: Arc<dyn Service>) -> Self {
        self.by_port.insert(port, service);
        self
    }

    /// Serves every port without its own service with `service`.
    pub fn with_fallback(mut self, service: impl Service + 'static) -> Self {
        self.fallback = Some(Arc::new(service));
        self
    }

    /// The service for `port`, if any.
    pub fn get(&self, port: u32) -> Option<&Arc<dyn Service>> {
        self.by_port.get(&port).or(self.fallback.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_boundaries_are_kept_once_each() {
        let mut buf = BytesMut::new();
        let mut close = false;
        let mut marks = VecDeque::new();
        let mut out = Outbox::with_boundaries(&mut buf, 100, &mut close, &mut marks);
        out.end_message(); // nothing written yet: no boundary
        out.write(b"abc");
        out.end_message();
        out.end_message(); // twice at the same place: one boundary
        out.write(b"de");
        out.end_message();
        assert_eq!(out.room(), 95);
        assert_eq!(Vec::from(marks), [3, 5]);
        // Without boundaries, end_message does nothing.
        let mut plain = BytesMut::new();
        let mut out = Outbox::new(&mut plain, 10, &mut close);
        out.write(b"x");
        out.end_message();
        assert_eq!(&plain[..], b"x");
    }

    #[tokio::test]
    async fn a_wake_before_the_wait_is_not_lost() {
        let set = WakeSet::new();
        let a = set.waker(ChannelId(4));
        let b = set.waker(ChannelId(5));
        a.wake();
        b.wake();
        a.wake();
        tokio::time::timeout(std::time::Duration::from_secs(5), set.notified()).await.expect("notified");
        assert_eq!(set.take(), [ChannelId(4), ChannelId(5)]);
        assert!(set.take().is_empty());
        b.wake();
        assert!(set.take_one(ChannelId(5)));
        assert!(!set.take_one(ChannelId(5)));
    }
}
