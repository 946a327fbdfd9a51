//! A [`DeviceStream`] over any byte stream, for transports that are a plain connection per
//! stream (the fleet link, LAN devices) rather than channels multiplexed on a tunnel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

use crate::stream::{self, DeviceStream, StreamClosed, StreamConfig};

/// Bytes read from the connection ahead of what the stream's user has taken.
const WINDOW: usize = 256 * 1024;

/// A [`DeviceStream`] over a byte stream (the fleet link's upgraded connection, a direct TCP or TLS connection to a LAN device), with the same flow
/// control as a tunnel's: at most [`WINDOW`] bytes are read from the link ahead of what the
/// stream's user took, and the user's writes are bounded by its send budget.
///
/// Three tasks, so that neither direction ever waits on the other: the reader (link → user,
/// while there is credit), the writer (user → link, in order, then the half-close), and the
/// control task, which turns the user's wakes into credit for the reader and bytes for the
/// writer. All three end when the user drops the stream or either direction of the link fails.
pub fn bridge<IO>(io: IO, port: u16) -> DeviceStream
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    bridge_holding(io, port, ())
}

/// [`bridge`], keeping `guard` (a place under a cap) until the stream ends.
pub fn bridge_holding<IO, G>(io: IO, port: u16, guard: G) -> DeviceStream
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
    G: Send + 'static,
{
    enum Out {
        Bytes(Bytes, crate::stream::Written),
        Eof,
    }
    let (wake_tx, mut wake_rx) = mpsc::unbounded_channel();
    let (user, end) = stream::pair(0, port, StreamConfig::default(), wake_tx);
    let end = Arc::new(end);
    let (mut rd, mut wr) = tokio::io::split(io);
    let credit = Arc::new((AtomicUsize::new(WINDOW), Notify::new()));
    // Either direction of the link failed: everything ends.
    let failed = Arc::new(Notify::new());
    // Bounded by the user's send budget: each entry holds its bytes' share of it.
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Out>();

    let reader = {
        let (end, credit, failed) = (Arc::clone(&end), Arc::clone(&credit), Arc::clone(&failed));
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let available = credit.0.load(Ordering::Acquire);
                if available == 0 {
                    credit.1.notified().await;
                    continue;
                }
                let want = available.min(buf.len());
                match rd.read(&mut buf[..want]).await {
                    Ok(0) => return end.push_eof(),
                    Ok(n) => {
                        credit.0.fetch_sub(n, Ordering::AcqRel);
                        end.push(Bytes::copy_from_slice(&buf[..n]));
                    }
                    Err(_) => {
                        end.close(StreamClosed::TunnelGone);
                        return failed.notify_one();
                    }
                }
            }
        })
    };
    let writer = {
        let (end, failed) = (Arc::clone(&end), Arc::clone(&failed));
        tokio::spawn(async move {
            while let Some(out) = out_rx.recv().await {
                let done = match out {
                    // The budget returns (the guard drops) once the link took the bytes.
                    Out::Bytes(data, _written) => wr.write_all(&data).await,
                    Out::Eof => wr.shutdown().await,
                };
                if done.is_err() {
                    end.close(StreamClosed::TunnelGone);
                    return failed.notify_one();
                }
            }
        })
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                woken = wake_rx.recv() => if woken.is_none() { break },
                _ = failed.notified() => break,
            }
            let wanted = end.poll_wanted();
            if wanted.released > 0 {
                credit.0.fetch_add(wanted.released, Ordering::AcqRel);
                credit.1.notify_one();
            }
            if wanted.close {
                break;
            }
            while let Some((data, written)) = end.take_outbound(64 * 1024) {
                let _ = out_tx.send(Out::Bytes(data, written));
            }
            if wanted.eof || end.take_eof() {
                let _ = out_tx.send(Out::Eof);
            }
        }
        reader.abort();
        writer.abort();
        drop(guard);
    });
    user
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The far end (like a device) writes all it has before it reads anything, while the user
    /// writes and reads at once: credit for the far end's bytes must flow while the user's
    /// writes wait for the far end.
    #[tokio::test]
    async fn credit_flows_while_writes_wait() {
        let (near, mut far) = tokio::io::duplex(4096);
        let stream = bridge(near, 16994);
        let (mut reader, mut writer) = tokio::io::split(stream);
        let size = 4 * WINDOW;
        let far_task = tokio::spawn(async move {
            far.write_all(&vec![1u8; size]).await.unwrap();
            let mut got = vec![0u8; size];
            far.read_exact(&mut got).await.unwrap();
            assert!(got.iter().all(|b| *b == 2));
        });
        let user_reads = tokio::spawn(async move {
            let mut got = vec![0u8; size];
            reader.read_exact(&mut got).await.unwrap();
            assert!(got.iter().all(|b| *b == 1));
        });
        writer.write_all(&vec![2u8; size]).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), async {
            far_task.await.unwrap();
            user_reads.await.unwrap();
        })
        .await
        .expect("the bridge deadlocked");
    }

    /// A link that fails (a peer killed without a TLS goodbye) ends the stream, and its tasks.
    #[tokio::test]
    async fn a_failed_link_ends_the_stream() {
        let (near, far) = tokio::io::duplex(4096);
        let mut stream = bridge(near, 16994);
        drop(far);
        let mut buf = [0u8; 16];
        // The duplex reports EOF, not an error: the user sees the end of the stream.
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
        // Writes fail once the writer finds the link gone.
        let failed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if stream.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(failed.is_ok(), "writes to a dead link kept succeeding");
    }

    #[tokio::test]
    async fn a_bridged_stream_carries_bytes_both_ways_with_half_closes() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut stream = bridge(near, 16992);
        stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        // More than the window and the duplex buffer, while nobody reads on one side for a while.
        let big = vec![7u8; 3 * WINDOW];
        let writer = tokio::spawn(async move {
            far.write_all(&big).await.unwrap();
            far.shutdown().await.unwrap();
            far
        });
        let mut got = Vec::new();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 3 * WINDOW);
        let mut far = writer.await.unwrap();
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}
