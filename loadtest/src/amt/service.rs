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
//! Handlers are plain state machines: no I/O, no clock, no tasks. A new device service (SOL,
//! IDE-R, WS-MAN) is a new `Service` plus an entry in the map.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

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
}

/// Where a handler writes. Writes past [`Outbox::room`] are kept too, but the driver stops
/// offering input until the output drains.
#[derive(Debug)]
pub struct Outbox<'a> {
    buf: &'a mut BytesMut,
    limit: usize,
    close: &'a mut bool,
}

impl<'a> Outbox<'a> {
    /// An outbox appending to `buf`, with room up to `limit` bytes pending in all.
    pub fn new(buf: &'a mut BytesMut, limit: usize, close: &'a mut bool) -> Self {
        Self { buf, limit, close }
    }

    /// Bytes that fit before the channel's pending output reaches its bound.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.buf.len())
    }

    pub fn write(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Closes the channel once everything written has been sent. Later input is discarded.
    pub fn close(&mut self) {
        *self.close = true;
    }

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
