//! Exposed ports (`amt-sim --expose`): a channel to the port is carried over TCP to a fixed
//! address, as if the device's port were that server's (an `iperf3 -s` for a benchmark).
//!
//! [`ExposeService::open`] spawns one task per channel that connects to the address (within
//! [`CONNECT_TIMEOUT`]; a failure closes the channel), then reads the socket and writes to it.
//! The handler and the task share a `Pipe` and nothing else, so a slow channel holds back only
//! itself. Both ways are bounded:
//!
//! - toward the socket, the handler takes input only while fewer than [`MAX_TO_SOCKET`] bytes
//!   wait for it or are being written (the rest stays with the driver, and the gateway gets no
//!   window for it); the task wakes the channel when a write is done;
//! - from the socket, the task reads up to [`READ_CHUNK`] bytes at a time and reads again only
//!   once the handler moved the whole chunk into the channel's output, which it does only as far
//!   as [`Outbox::room`] goes (it is woken again when the output drains).
//!
//! Half-close passes through: the gateway's EOF shuts down the socket's write side once what
//! came before it is written; the socket's EOF ends the channel's output
//! ([`Outbox::end_output`], a CHANNEL_EOF). The channel closes once both ways are done, or at
//! once when the socket fails. Dropping the handler (the channel closed) aborts the task and
//! closes the socket. No TLS and no protocol: the bytes are carried as they are.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::service::{ChannelHandler, ChannelInfo, ChannelWaker, Outbox, Service};

/// How long the connect to the exposed address may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest read from the socket.
pub const READ_CHUNK: usize = 64 * 1024;
/// Bytes from the gateway waiting for the socket, or being written to it, at most.
pub const MAX_TO_SOCKET: usize = 256 * 1024;

/// Carries every channel to its port over TCP to `addr`.
#[derive(Debug, Clone)]
pub struct ExposeService {
    addr: SocketAddr,
    connect_timeout: Duration,
}

impl ExposeService {
    /// Channels carried to `addr`, connected within [`CONNECT_TIMEOUT`].
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, connect_timeout: CONNECT_TIMEOUT }
    }

    /// Another connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Where channels are carried.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Service for ExposeService {
    /// Refuses the channel only outside a tokio runtime (the task cannot be spawned).
    fn open(&self, channel: &ChannelInfo) -> Option<Box<dyn ChannelHandler>> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("expose: channel to {} refused: no tokio runtime", channel.port);
            return None;
        };
        let pipe = Pipe::new(channel.waker.clone());
        let carrier = Carrier {
            pipe: Arc::clone(&pipe),
            addr: self.addr,
            port: channel.port,
            connect_timeout: self.connect_timeout,
            log_level: channel.log_level,
        };
        let task = runtime.spawn(carrier.run());
        Some(Box::new(ExposeChannel { pipe, _task: Some(AbortOnDrop(task)) }))
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, Default)]
struct PipeState {
    /// Taken from the gateway, not yet handed to the socket writer.
    to_socket: BytesMut,
    /// Handed to the writer, not yet written.
    writing: usize,
    /// The gateway's EOF: the writer shuts down the socket's write side after `to_socket`.
    gateway_eof: bool,
    /// The socket's write side is shut down.
    write_ended: bool,
    /// Read from the socket, not yet in the channel's output.
    from_socket: Bytes,
    /// The socket's EOF was read.
    socket_eof: bool,
    /// The connect failed or the socket broke: close the channel.
    failed: bool,
}

/// What one channel's handler and its task share. The handler's side is plain calls (no I/O),
/// the task's side waits on [`Notify`]s; each side wakes the other when it made room or data.
#[derive(Debug)]
pub(crate) struct Pipe {
    state: Mutex<PipeState>,
    /// Wakes the handler (driver side).
    waker: ChannelWaker,
    /// Bytes (or the EOF) for the socket writer.
    to_socket_ready: Notify,
    /// `from_socket` was emptied: the reader may read again.
    from_socket_taken: Notify,
}

impl Pipe {
    /// An empty pipe whose task side wakes `waker`.
    pub(crate) fn new(waker: ChannelWaker) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(PipeState::default()),
            waker,
            to_socket_ready: Notify::new(),
            from_socket_taken: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // The handler's side.

    /// Takes as much of `data` as fits toward the socket; returns how much. Everything when the
    /// socket is gone (discarded).
    fn take_input(&self, data: &[u8]) -> usize {
        let mut state = self.lock();
        if state.failed {
            return data.len();
        }
        let room = MAX_TO_SOCKET.saturating_sub(state.to_socket.len() + state.writing);
        let n = data.len().min(room);
        if n > 0 {
            state.to_socket.extend_from_slice(&data[..n]);
            drop(state);
            self.to_socket_ready.notify_one();
        }
        n
    }

    fn gateway_eof(&self) {
        self.lock().gateway_eof = true;
        self.to_socket_ready.notify_one();
    }

    /// Moves what the socket gave into `out` (within its room), ends the output after the
    /// socket's EOF, closes once both ways are done or the socket failed.
    fn flush(&self, out: &mut Outbox<'_>) {
        let mut state = self.lock();
        if state.failed {
            out.close();
            return;
        }
        let n = state.from_socket.len().min(out.room());
        if n > 0 {
            let chunk = state.from_socket.split_to(n);
            out.write(&chunk);
            if state.from_socket.is_empty() {
                // Drop the last reference to the read buffer, so the reader reuses it.
                state.from_socket = Bytes::new();
                self.from_socket_taken.notify_one();
            }
        }
        if state.socket_eof && state.from_socket.is_empty() && !out.is_output_ended() {
            out.end_output();
        }
        if state.socket_eof && state.from_socket.is_empty() && state.write_ended {
            out.close();
        }
    }

    // The task's side.

    /// The connect failed or the socket broke.
    fn fail(&self) {
        self.lock().failed = true;
        self.waker.wake();
    }

    /// A chunk read from the socket; the previous one was taken.
    fn socket_read(&self, chunk: Bytes) {
        self.lock().from_socket = chunk;
        self.waker.wake();
    }

    fn socket_eof(&self) {
        self.lock().socket_eof = true;
        self.waker.wake();
    }

    /// Waits until the last chunk read was moved into the channel's output.
    async fn wait_until_taken(&self) {
        loop {
            if self.lock().from_socket.is_empty() {
                return;
            }
            self.from_socket_taken.notified().await;
        }
    }

    /// Waits for bytes for the socket (`Some`), or for the gateway's EOF after them (`None`).
    async fn next_for_socket(&self) -> Option<Bytes> {
        loop {
            {
                let mut state = self.lock();
                if !state.to_socket.is_empty() {
                    let chunk = state.to_socket.split().freeze();
                    state.writing = chunk.len();
                    return Some(chunk);
                }
                if state.gateway_eof {
                    return None;
                }
            }
            self.to_socket_ready.notified().await;
        }
    }

    /// The chunk from [`Pipe::next_for_socket`] was written: room for more input.
    fn written(&self) {
        self.lock().writing = 0;
        self.waker.wake();
    }

    fn write_ended(&self) {
        self.lock().write_ended = true;
        self.waker.wake();
    }
}

/// One channel's handler: moves bytes between the driver and the [`Pipe`].
#[derive(Debug)]
pub(crate) struct ExposeChannel {
    pipe: Arc<Pipe>,
    /// The channel's task (none in tests that play it).
    _task: Option<AbortOnDrop>,
}

impl ExposeChannel {
    /// A handler over `pipe`, whose task side the test plays.
    #[cfg(test)]
    pub(crate) fn with_pipe(pipe: Arc<Pipe>) -> Self {
        Self { pipe, _task: None }
    }
}

impl ChannelHandler for ExposeChannel {
    fn on_data(&mut self, data: &[u8], out: &mut Outbox<'_>) -> usize {
        let n = self.pipe.take_input(data);
        // The socket may have failed meanwhile.
        self.pipe.flush(out);
        n
    }

    fn on_eof(&mut self, out: &mut Outbox<'_>) {
        self.pipe.gateway_eof();
        self.pipe.flush(out);
    }

    fn on_wake(&mut self, out: &mut Outbox<'_>) {
        self.pipe.flush(out);
    }
}

/// The task of one channel: connects, then reads and writes the socket.
struct Carrier {
    pipe: Arc<Pipe>,
    addr: SocketAddr,
    port: u32,
    connect_timeout: Duration,
    log_level: tracing::Level,
}

impl Carrier {
    async fn run(self) {
        let (addr, port, level) = (self.addr, self.port, self.log_level);
        let stream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                device_warn!(level, "expose: channel to {port} closed: cannot connect to {addr}: {err}");
                self.pipe.fail();
                return;
            }
            Err(_) => {
                device_warn!(
                    level,
                    "expose: channel to {port} closed: no connection to {addr} within {:?}",
                    self.connect_timeout
                );
                self.pipe.fail();
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        tracing::debug!("expose: channel to {port} carried to {addr}");
        let (rd, wr) = stream.into_split();
        tokio::join!(read_socket(&self.pipe, rd, port), write_socket(&self.pipe, wr, port));
    }
}

/// Reads the socket a chunk at a time, each once the last was taken, until its EOF.
async fn read_socket(pipe: &Pipe, mut rd: OwnedReadHalf, port: u32) {
    let mut buf = BytesMut::new();
    loop {
        pipe.wait_until_taken().await;
        // Reuses the last chunk's memory once the handler dropped it.
        buf.reserve(READ_CHUNK);
        match rd.read_buf(&mut buf).await {
            Ok(0) => {
                tracing::debug!("expose: channel to {port}: the socket's EOF ends the channel's output");
                pipe.socket_eof();
                return;
            }
            Ok(_) => pipe.socket_read(buf.split().freeze()),
            Err(err) => {
                tracing::debug!("expose: channel to {port} closed: socket read failed: {err}");
                pipe.fail();
                return;
            }
        }
    }
}

/// Writes what the gateway sent; shuts down the write side after the gateway's EOF.
async fn write_socket(pipe: &Pipe, mut wr: OwnedWriteHalf, port: u32) {
    while let Some(chunk) = pipe.next_for_socket().await {
        if let Err(err) = wr.write_all(&chunk).await {
            tracing::debug!("expose: channel to {port} closed: socket write failed: {err}");
            pipe.fail();
            return;
        }
        drop(chunk);
        pipe.written();
    }
    if let Err(err) = wr.shutdown().await {
        tracing::debug!("expose: channel to {port}: shutting down the socket's write side failed: {err}");
    }
    pipe.write_ended();
}

#[cfg(test)]
#[path = "expose_test.rs"]
mod tests;
