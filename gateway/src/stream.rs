//! A stream to one device port through a tunnel, whatever the transport: [`DeviceStream`] is what
//! users inside the gateway hold (the technician WebSocket relay, and later the WS-MAN client, the
//! redirection tap, health probes), and [`StreamEnd`] is what the tunnel's driver holds.
//!
//! Flow control is the tunnel's, end to end:
//! - device → user: the driver pushes what the device sent; it never exceeds the window the driver
//!   advertised, because credit goes back only for bytes the user *released*
//!   ([`Wanted::released`]). Reading through `AsyncRead` releases at once; the chunk API
//!   ([`DeviceStream::chunk`] + [`DeviceStream::release`]) lets a relay release only once its bytes
//!   have left for the technician. Queued chunks keep their message boundaries until
//!   [`StreamConfig::max_queued_chunks`] are waiting; after that, small messages are merged, so a
//!   device sending one-byte messages cannot make the gateway queue one entry per byte.
//! - user → device: writes are accepted up to [`StreamConfig::send_budget`] bytes not yet written
//!   to the device's socket. The driver takes bytes as the device's window allows and hands back a
//!   [`Written`] guard per batch; the budget returns when the writer drops it after the socket took
//!   the bytes.
//!
//! What it does not do: speak any tunnel protocol. The driver maps these calls onto its session
//! (APF for CIRA) and is woken through the per-tunnel wake queue whenever a stream needs it.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

/// Limits of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// Bytes a user may write ahead of what the device's socket has taken.
    pub send_budget: usize,
    /// Device messages queued with their boundaries before small ones are merged.
    pub max_queued_chunks: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self { send_budget: 256 * 1024, max_queued_chunks: 64 }
    }
}

/// How a stream ended, as its user sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamClosed {
    /// The device closed the channel: reads drain what was queued, then end of stream.
    Device,
    /// The tunnel went away (device disconnected, gateway shutting down, tunnel replaced).
    TunnelGone,
}

/// The key a driver knows a stream by (its channel id on the tunnel).
pub type StreamKey = u32;

#[derive(Debug, Default)]
struct State {
    // Device → user.
    inbound: VecDeque<Bytes>,
    /// Merged small messages, queued after `inbound` once it holds `max_queued_chunks`.
    tail: BytesMut,
    inbound_eof: bool,
    /// Bytes the user released that the driver has not yet turned into credit.
    released: usize,
    read_waker: Option<Waker>,
    // User → device.
    outbound: BytesMut,
    /// Taken by the driver, not yet written to the device's socket.
    in_flight: usize,
    write_shutdown: bool,
    /// The driver has passed the shutdown on (EOF sent).
    eof_sent: bool,
    write_waker: Option<Waker>,
    // Life cycle.
    closed: Option<StreamClosed>,
    user_dropped: bool,
    /// A wake for this stream sits in the driver's queue.
    wake_pending: bool,
}

#[derive(Debug)]
struct Inner {
    key: StreamKey,
    port: u16,
    config: StreamConfig,
    state: Mutex<State>,
    wake: mpsc::UnboundedSender<StreamKey>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a wake for the driver unless one is queued already: at most one per stream, so the
    /// unbounded queue holds at most as many entries as the tunnel has streams.
    fn wake_driver(&self, state: &mut State) {
        if !state.wake_pending && state.closed.is_none() {
            state.wake_pending = true;
            let _ = self.wake.send(self.key);
        }
    }

    fn inbound_len(state: &State) -> usize {
        state.inbound.iter().map(Bytes::len).sum::<usize>() + state.tail.len()
    }
}

/// Creates both ends of a new stream to `port`. `wake` is the driver's per-tunnel wake queue.
pub fn pair(
    key: StreamKey,
    port: u16,
    config: StreamConfig,
    wake: mpsc::UnboundedSender<StreamKey>,
) -> (DeviceStream, StreamEnd) {
    let inner = Arc::new(Inner { key, port, config, state: Mutex::default(), wake });
    let guard = Arc::new(UserGuard(Arc::clone(&inner)));
    let stream = DeviceStream {
        reader: DeviceReader { inner: Arc::clone(&inner), _guard: Arc::clone(&guard) },
        writer: DeviceWriter { inner: Arc::clone(&inner), _guard: guard },
    };
    (stream, StreamEnd { inner })
}

/// Marks the stream dropped by its user once both halves are gone.
#[derive(Debug)]
struct UserGuard(Arc<Inner>);

impl Drop for UserGuard {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.user_dropped = true;
        self.0.wake_driver(&mut state);
    }
}

/// The user's end: `AsyncRead + AsyncWrite` to a device port, with the tunnel's flow control.
/// Dropping it closes the channel.
#[derive(Debug)]
pub struct DeviceStream {
    reader: DeviceReader,
    writer: DeviceWriter,
}

/// The reading half of a [`DeviceStream`].
#[derive(Debug)]
pub struct DeviceReader {
    inner: Arc<Inner>,
    _guard: Arc<UserGuard>,
}

/// The writing half of a [`DeviceStream`].
#[derive(Debug)]
pub struct DeviceWriter {
    inner: Arc<Inner>,
    _guard: Arc<UserGuard>,
}

impl DeviceStream {
    /// The device port this stream reaches.
    pub fn port(&self) -> u16 {
        self.reader.inner.port
    }

    /// Splits into halves that can be used from different tasks (or one `select!`).
    pub fn into_split(self) -> (DeviceReader, DeviceWriter) {
        (self.reader, self.writer)
    }

    /// See [`DeviceReader::chunk`].
    pub async fn chunk(&mut self) -> io::Result<Option<Bytes>> {
        self.reader.chunk().await
    }

    /// See [`DeviceReader::release`].
    pub fn release(&self, n: usize) {
        self.reader.release(n)
    }
}

fn gone_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the device's tunnel closed")
}

impl DeviceReader {
    /// The next message from the device, whole (merged with others only when many were queued);
    /// `None` at end of stream. The bytes are not credited back to the device until
    /// [`release`](Self::release)d.
    pub async fn chunk(&mut self) -> io::Result<Option<Bytes>> {
        poll_fn(|cx| self.poll_chunk(cx)).await
    }

    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        let mut state = self.inner.lock();
        if let Some(chunk) = state.inbound.pop_front() {
            return Poll::Ready(Ok(Some(chunk)));
        }
        if !state.tail.is_empty() {
            return Poll::Ready(Ok(Some(state.tail.split().freeze())));
        }
        match state.closed {
            Some(StreamClosed::TunnelGone) => Poll::Ready(Err(gone_error())),
            Some(StreamClosed::Device) => Poll::Ready(Ok(None)),
            None if state.inbound_eof => Poll::Ready(Ok(None)),
            None => {
                state.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Credits `n` bytes taken with [`chunk`](Self::chunk) back to the device.
    pub fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut state = self.inner.lock();
        state.released += n;
        self.inner.wake_driver(&mut state);
    }

    /// Bytes from the device queued for this reader (for tests and metrics).
    pub fn queued(&self) -> (usize, usize) {
        let state = self.inner.lock();
        (state.inbound.len() + usize::from(!state.tail.is_empty()), Inner::inbound_len(&state))
    }
}

impl AsyncRead for DeviceReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut state = this.inner.lock();
        let mut copied = 0;
        while buf.remaining() > 0 {
            let Some(front) = state.inbound.front_mut() else { break };
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front.split_to(n));
            copied += n;
            if front.is_empty() {
                state.inbound.pop_front();
            }
        }
        if state.inbound.is_empty() && buf.remaining() > 0 && !state.tail.is_empty() {
            let n = state.tail.len().min(buf.remaining());
            buf.put_slice(&state.tail.split_to(n));
            copied += n;
        }
        if copied > 0 {
            state.released += copied;
            this.inner.wake_driver(&mut state);
            return Poll::Ready(Ok(()));
        }
        match state.closed {
            Some(StreamClosed::TunnelGone) => Poll::Ready(Err(gone_error())),
            Some(StreamClosed::Device) => Poll::Ready(Ok(())),
            None if state.inbound_eof => Poll::Ready(Ok(())),
            None => {
                state.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl DeviceWriter {
    fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.inner.lock();
        if state.outbound.is_empty() && state.in_flight == 0 {
            return Poll::Ready(Ok(()));
        }
        if state.closed.is_some() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "the device channel closed")));
        }
        state.write_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for DeviceWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut state = this.inner.lock();
        if state.closed.is_some() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "the device channel closed")));
        }
        if state.write_shutdown {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "write after shutdown")));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let used = state.outbound.len() + state.in_flight;
        let available = this.inner.config.send_budget.saturating_sub(used);
        if available == 0 {
            state.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = available.min(buf.len());
        state.outbound.extend_from_slice(&buf[..n]);
        this.inner.wake_driver(&mut state);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_drained(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let mut state = self.inner.lock();
            if !state.write_shutdown {
                state.write_shutdown = true;
                self.inner.wake_driver(&mut state);
            }
        }
        self.poll_drained(cx)
    }
}

impl AsyncRead for DeviceStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for DeviceStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().writer).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_shutdown(cx)
    }
}

/// The driver's end of a stream.
#[derive(Debug)]
pub struct StreamEnd {
    inner: Arc<Inner>,
}

/// What a driver should do for a stream after a wake.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// Bytes released by the user: grant this much window to the device.
    pub released: usize,
    /// Bytes the user wrote that wait for the device's window.
    pub outbound: usize,
    /// The user shut down writing and everything written has been taken: send EOF once.
    pub eof: bool,
    /// The user dropped the stream: close the channel.
    pub close: bool,
}

impl StreamEnd {
    pub fn key(&self) -> StreamKey {
        self.inner.key
    }

    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// Takes the stream's pending work (and re-arms its wake).
    pub fn poll_wanted(&self) -> Wanted {
        let mut state = self.inner.lock();
        state.wake_pending = false;
        let released = std::mem::take(&mut state.released);
        let eof = state.write_shutdown && !state.eof_sent && state.outbound.is_empty();
        if eof {
            state.eof_sent = true;
        }
        Wanted { released, outbound: state.outbound.len(), eof, close: state.user_dropped }
    }

    /// Whether an EOF is due now (the user shut down and all its bytes were taken); true once.
    pub fn take_eof(&self) -> bool {
        let mut state = self.inner.lock();
        let eof = state.write_shutdown && !state.eof_sent && state.outbound.is_empty();
        if eof {
            state.eof_sent = true;
        }
        eof
    }

    /// Device data for the user. Boundaries are kept while fewer than `max_queued_chunks`
    /// messages wait; beyond that, data is appended to one merged tail.
    pub fn push(&self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        let mut state = self.inner.lock();
        if state.user_dropped || state.closed.is_some() {
            // Nobody will read it: credit it straight back (the driver is closing the channel).
            state.released += data.len();
            return;
        }
        if state.tail.is_empty() && state.inbound.len() < self.inner.config.max_queued_chunks {
            state.inbound.push_back(data);
        } else {
            state.tail.extend_from_slice(&data);
        }
        if let Some(waker) = state.read_waker.take() {
            waker.wake();
        }
    }

    /// The device will send no more data.
    pub fn push_eof(&self) {
        let mut state = self.inner.lock();
        state.inbound_eof = true;
        if let Some(waker) = state.read_waker.take() {
            waker.wake();
        }
    }

    /// The channel is gone; the user's reads drain what is queued, writes fail.
    pub fn close(&self, how: StreamClosed) {
        let mut state = self.inner.lock();
        if state.closed.is_none() {
            state.closed = Some(how);
        }
        state.outbound.clear();
        if let Some(waker) = state.read_waker.take() {
            waker.wake();
        }
        if let Some(waker) = state.write_waker.take() {
            waker.wake();
        }
    }

    /// Takes up to `max` bytes the user wrote. They count against the user's budget until the
    /// returned guard is dropped (after the socket took them).
    pub fn take_outbound(&self, max: usize) -> Option<(Bytes, Written)> {
        let mut state = self.inner.lock();
        let n = state.outbound.len().min(max);
        if n == 0 {
            return None;
        }
        let data = state.outbound.split_to(n).freeze();
        state.in_flight += n;
        Some((data, Written { inner: Arc::clone(&self.inner), n }))
    }
}

impl Drop for StreamEnd {
    fn drop(&mut self) {
        self.close(StreamClosed::TunnelGone);
    }
}

/// Bytes of one stream that are on their way to the device's socket; dropping this returns them
/// to the user's budget.
#[derive(Debug)]
pub struct Written {
    inner: Arc<Inner>,
    n: usize,
}

impl Written {
    /// Takes `n` bytes off this guard into a new one (for bytes the session took only in part).
    pub fn split(&mut self, n: usize) -> Written {
        let n = n.min(self.n);
        self.n -= n;
        Written { inner: Arc::clone(&self.inner), n }
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if self.n == 0 {
            return;
        }
        let mut state = self.inner.lock();
        state.in_flight = state.in_flight.saturating_sub(self.n);
        if let Some(waker) = state.write_waker.take() {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn new(config: StreamConfig) -> (DeviceStream, StreamEnd, mpsc::UnboundedReceiver<StreamKey>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stream, end) = pair(7, 16994, config, tx);
        (stream, end, rx)
    }

    #[tokio::test]
    async fn messages_keep_their_boundaries_until_many_are_queued() {
        let (mut stream, end, _rx) = new(StreamConfig { send_budget: 1024, max_queued_chunks: 4 });
        for i in 0..10u8 {
            end.push(Bytes::from(vec![i; 3]));
        }
        assert_eq!(stream.reader.queued(), (5, 30));
        for i in 0..4u8 {
            assert_eq!(stream.chunk().await.unwrap().unwrap(), vec![i; 3]);
        }
        // The rest arrived under pressure: merged into one chunk, in order.
        let merged = stream.chunk().await.unwrap().unwrap();
        assert_eq!(merged.len(), 18);
        assert_eq!(&merged[..3], &[4, 4, 4]);
        assert_eq!(&merged[15..], &[9, 9, 9]);
        // Once drained, boundaries are kept again.
        end.push(Bytes::from_static(b"ab"));
        end.push(Bytes::from_static(b"cd"));
        assert_eq!(stream.chunk().await.unwrap().unwrap(), "ab");
    }

    #[tokio::test]
    async fn a_flood_of_one_byte_messages_stays_a_few_entries() {
        let (stream, end, _rx) = new(StreamConfig::default());
        for _ in 0..200_000 {
            end.push(Bytes::from_static(b"x"));
        }
        let (entries, bytes) = stream.reader.queued();
        assert_eq!(bytes, 200_000);
        assert!(entries <= 65, "{entries} entries queued");
    }

    #[tokio::test]
    async fn credit_returns_only_for_released_bytes() {
        let (mut stream, end, mut rx) = new(StreamConfig::default());
        end.push(Bytes::from_static(b"hello"));
        let chunk = stream.chunk().await.unwrap().unwrap();
        assert_eq!(end.poll_wanted().released, 0);
        stream.release(chunk.len());
        assert_eq!(rx.recv().await, Some(7));
        assert_eq!(end.poll_wanted().released, 5);
        // AsyncRead releases what it copies.
        end.push(Bytes::from_static(b"world!"));
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(end.poll_wanted().released, 4);
    }

    #[tokio::test]
    async fn writes_wait_until_the_socket_took_earlier_bytes() {
        let (mut stream, end, _rx) = new(StreamConfig { send_budget: 8, max_queued_chunks: 4 });
        assert_eq!(stream.write(b"0123456789").await.unwrap(), 8);
        let (data, mut written) = end.take_outbound(5).unwrap();
        assert_eq!(data, "01234");
        // Taken by the driver but not written yet: still counts.
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut stream).poll_write(&mut cx, b"x").is_pending());
        let part = written.split(2);
        drop(part);
        assert!(matches!(Pin::new(&mut stream).poll_write(&mut cx, b"xyz"), Poll::Ready(Ok(2))));
        drop(written);
        let (rest, _w) = end.take_outbound(100).unwrap();
        assert_eq!(rest, "567xy");
    }

    #[tokio::test]
    async fn shutdown_asks_for_eof_after_the_data_and_drop_asks_for_close() {
        let (mut stream, end, _rx) = new(StreamConfig::default());
        stream.write_all(b"abc").await.unwrap();
        let shutdown = tokio::spawn(async move {
            stream.shutdown().await.unwrap();
            stream
        });
        tokio::task::yield_now().await;
        assert!(!end.poll_wanted().eof, "EOF before the data left");
        let (_, written) = end.take_outbound(10).unwrap();
        assert!(end.poll_wanted().eof);
        assert!(!end.poll_wanted().eof, "EOF asked for twice");
        drop(written);
        let stream = shutdown.await.unwrap();
        drop(stream);
        assert!(end.poll_wanted().close);
    }

    #[tokio::test]
    async fn a_closed_tunnel_ends_reads_with_an_error_and_fails_writes() {
        let (mut stream, end, _rx) = new(StreamConfig::default());
        end.push(Bytes::from_static(b"last"));
        drop(end);
        assert_eq!(stream.chunk().await.unwrap().unwrap(), "last");
        assert!(stream.chunk().await.is_err());
        assert!(stream.write(b"x").await.is_err());
    }

    #[tokio::test]
    async fn a_device_close_is_end_of_stream() {
        let (mut stream, end, _rx) = new(StreamConfig::default());
        end.push(Bytes::from_static(b"bye"));
        end.close(StreamClosed::Device);
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"bye");
    }
}
