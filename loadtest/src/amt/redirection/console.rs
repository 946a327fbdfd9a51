//! The device's serial console: what its SOL session shows. The SOL shell's output and the
//! simulated firmware's messages (IDE-R boot results) both go into a [`SerialSink`], which the SOL
//! handler drains into SOLDataFromHost messages. [`SerialConsoles`] maps a device UUID to the sink
//! of its open SOL session, if any, so that the firmware can print without knowing about SOL.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use crate::amt::service::ChannelWaker;

/// Default capacity of a [`SerialSink`]: output waiting for the console beyond this is held back
/// (the shell's reader stops reading) or, for firmware lines, dropped.
pub const SINK_CAPACITY: usize = 64 * 1024;

#[derive(Debug, Default)]
struct SinkState {
    data: VecDeque<u8>,
    /// Set once the producer (the shell) is gone; nothing more will be pushed by it.
    ended: bool,
}

/// Bytes on their way to one SOL console, bounded. Pushing wakes the SOL channel's handler.
#[derive(Debug)]
pub struct SerialSink {
    state: Mutex<SinkState>,
    waker: ChannelWaker,
    capacity: usize,
    /// Signalled when bytes were taken (room for the producer).
    space: tokio::sync::Notify,
}

impl SerialSink {
    /// An empty sink of [`SINK_CAPACITY`] bytes whose pushes wake `waker`.
    pub fn new(waker: ChannelWaker) -> Arc<Self> {
        Self::with_capacity(waker, SINK_CAPACITY)
    }

    /// An empty sink holding at most `capacity` bytes.
    pub fn with_capacity(waker: ChannelWaker, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(SinkState::default()),
            waker,
            capacity: capacity.max(1),
            space: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends as much of `data` as fits; returns how many bytes that was.
    pub fn push(&self, data: &[u8]) -> usize {
        let n = {
            let mut state = self.lock();
            let n = data.len().min(self.capacity.saturating_sub(state.data.len()));
            state.data.extend(&data[..n]);
            n
        };
        if n > 0 {
            self.waker.wake();
        }
        n
    }

    /// Appends `line` and CRLF, whole or not at all; returns whether it fit.
    pub fn push_line(&self, line: &str) -> bool {
        let fits = {
            let mut state = self.lock();
            let fits = state.data.len() + line.len() + 2 <= self.capacity;
            if fits {
                state.data.extend(line.as_bytes());
                state.data.extend(b"\r\n");
            }
            fits
        };
        if fits {
            self.waker.wake();
        }
        fits
    }

    /// Takes up to `max` bytes from the front.
    pub fn take(&self, max: usize) -> Vec<u8> {
        let taken: Vec<u8> = {
            let mut state = self.lock();
            let n = max.min(state.data.len());
            state.data.drain(..n).collect()
        };
        if !taken.is_empty() {
            self.space.notify_one();
        }
        taken
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.lock().data.len()
    }

    /// Whether no bytes wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks the producer as gone (and wakes the handler).
    pub fn end(&self) {
        self.lock().ended = true;
        self.waker.wake();
    }

    /// Whether the producer is gone and every byte was taken.
    pub fn is_finished(&self) -> bool {
        let state = self.lock();
        state.ended && state.data.is_empty()
    }

    /// Waits until the sink has room for more bytes.
    pub async fn wait_for_room(&self) {
        loop {
            if self.len() < self.capacity {
                return;
            }
            self.space.notified().await;
        }
    }
}

/// The serial consoles of the devices served by one redirection service: device UUID → the sink
/// of its open SOL session. Cloning shares the map.
#[derive(Debug, Clone, Default)]
pub struct SerialConsoles {
    sinks: Arc<Mutex<HashMap<Uuid, Arc<SerialSink>>>>,
}

impl SerialConsoles {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Arc<SerialSink>>> {
        self.sinks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `sink` the console of device `uuid` until the returned attachment is dropped.
    pub fn attach(&self, uuid: Uuid, sink: Arc<SerialSink>) -> Attachment {
        self.lock().insert(uuid, Arc::clone(&sink));
        Attachment { consoles: self.clone(), uuid, sink }
    }

    /// A firmware message of device `uuid`: logged at INFO, and written with CRLF to the device's
    /// SOL console when one is open (dropped there if the console is full).
    pub fn print(&self, uuid: Uuid, line: &str) {
        tracing::info!("console: {line}");
        let sink = self.lock().get(&uuid).cloned();
        if let Some(sink) = sink {
            if !sink.push_line(line) {
                tracing::debug!("SOL console full: firmware line not shown there");
            }
        }
    }
}

/// A sink attached to [`SerialConsoles`]; detaches it when dropped (unless another sink replaced
/// it meanwhile).
#[derive(Debug)]
pub struct Attachment {
    consoles: SerialConsoles,
    uuid: Uuid,
    sink: Arc<SerialSink>,
}

impl Attachment {
    /// The attached sink.
    pub fn sink(&self) -> &Arc<SerialSink> {
        &self.sink
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut sinks = self.consoles.lock();
        if sinks.get(&self.uuid).is_some_and(|s| Arc::ptr_eq(s, &self.sink)) {
            sinks.remove(&self.uuid);
        }
    }
}
