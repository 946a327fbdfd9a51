//! The technician side's byte movers and what they talk to: a TCP echo server, `push` (bytes
//! written while they are read back), `rtt` (one message at a time, ping-ponged), and
//! [`TetherForward`] (a `tether forward UUID PORT` process, the technician's end of a relayed
//! stream). Every loop is bounded by a count; the callers bound them in time.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::ScenarioError;

/// Bytes per write of `push`.
const BLOCK: usize = 64 * 1024;
/// How long the echo may take to end the stream after the last byte came back.
const EOF_WAIT: Duration = Duration::from_secs(10);
/// How long `tether forward` may take to say where it listens.
const FORWARD_START: Duration = Duration::from_secs(30);

/// Starts a TCP echo server on `listen`; returns its address and its accept loop (abort it to
/// stop taking connections).
pub async fn echo_server(listen: SocketAddr) -> Result<(SocketAddr, JoinHandle<()>), ScenarioError> {
    let listener =
        TcpListener::bind(listen).await.map_err(ScenarioError::io(format!("binding the echo to {listen}")))?;
    let addr = listener.local_addr().map_err(ScenarioError::io("the echo's address"))?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                // Out of files or similar: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = socket.set_nodelay(true);
            tokio::spawn(async move {
                let (mut reader, mut writer) = socket.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
                let _ = writer.shutdown().await;
            });
        }
    });
    Ok((addr, task))
}

/// What one push did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Pushed {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// From the connect until the last byte sent came back.
    pub seconds: f64,
}

impl Pushed {
    /// MiB per second each way.
    pub fn mib_per_second(&self) -> f64 {
        self.bytes_sent as f64 / 1048576.0 / self.seconds.max(1e-9)
    }
}

/// Writes `bytes` to `addr` (which must echo) while reading them back, then half-closes and
/// reads until the echo ends, so that a byte too many is seen. Fails when the echo ends early or
/// changes a byte.
pub async fn push(addr: SocketAddr, bytes: u64) -> Result<Pushed, ScenarioError> {
    let fail = |detail: String| ScenarioError::Traffic { stream: 0, detail };
    let socket = TcpStream::connect(addr).await.map_err(ScenarioError::io(format!("connecting to {addr}")))?;
    let (mut reader, mut writer) = socket.into_split();
    let started = Instant::now();
    let write = tokio::spawn(async move {
        let block = pattern(BLOCK);
        let mut left = bytes;
        while left > 0 {
            let n = left.min(BLOCK as u64) as usize;
            writer.write_all(&block[..n]).await?;
            left -= n as u64;
        }
        writer.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });
    let expected = pattern(BLOCK);
    let mut buf = vec![0u8; BLOCK];
    let mut got = 0u64;
    let mut seconds = None;
    loop {
        let read = if seconds.is_none() {
            reader.read(&mut buf).await
        } else {
            match tokio::time::timeout(EOF_WAIT, reader.read(&mut buf)).await {
                Ok(read) => read,
                Err(_) => {
                    return Err(fail(format!(
                        "the echo did not end the stream within {EOF_WAIT:?} after the last byte"
                    )))
                }
            }
        };
        let n = read.map_err(ScenarioError::io(format!("reading from {addr}")))?;
        if n == 0 {
            break;
        }
        // The pattern repeats every BLOCK bytes, so each byte's expected value is its offset's.
        for (i, &b) in buf[..n].iter().enumerate() {
            let at = ((got + i as u64) % BLOCK as u64) as usize;
            if b != expected[at] {
                return Err(fail(format!("byte {} came back changed", got + i as u64)));
            }
        }
        got += n as u64;
        if got >= bytes && seconds.is_none() {
            seconds = Some(started.elapsed().as_secs_f64());
        }
    }
    write
        .await
        .map_err(|err| fail(format!("the writer: {err}")))?
        .map_err(ScenarioError::io(format!("writing to {addr}")))?;
    match seconds {
        Some(seconds) => Ok(Pushed { bytes_sent: bytes, bytes_received: got, seconds }),
        None => Err(fail(format!("the echo ended after {got} of {bytes} bytes"))),
    }
}

/// Bytes that are not all alike, so that a reordering shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Message sizes: one size, or a range drawn from per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub min: usize,
    pub max: usize,
}

impl std::str::FromStr for Sizes {
    type Err = String;

    /// `64` or `1-64` (bytes, 1 to 65536).
    fn from_str(text: &str) -> Result<Self, String> {
        let parse = |s: &str| -> Result<usize, String> {
            let n: usize = s.trim().parse().map_err(|_| format!("{s:?} is not a number of bytes"))?;
            if (1..=65536).contains(&n) {
                Ok(n)
            } else {
                Err(format!("{n} is not within 1..=65536"))
            }
        };
        let (min, max) = match text.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => (parse(text)?, parse(text)?),
        };
        if min > max {
            return Err(format!("{min}-{max}: the smaller size goes first"));
        }
        Ok(Self { min, max })
    }
}

impl std::fmt::Display for Sizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

/// `warmup + count` round trips of messages of `sizes` through `addr` (which must echo), one at
/// a time; the round trips after the warm-up.
pub async fn rtt(addr: SocketAddr, sizes: Sizes, count: u32, warmup: u32) -> Result<Vec<Duration>, ScenarioError> {
    let fail = |detail: String| ScenarioError::Traffic { stream: 0, detail };
    let mut socket = TcpStream::connect(addr).await.map_err(ScenarioError::io(format!("connecting to {addr}")))?;
    socket.set_nodelay(true).map_err(ScenarioError::io("TCP_NODELAY"))?;
    let message = pattern(sizes.max);
    let mut back = vec![0u8; sizes.max];
    let mut rtts = Vec::with_capacity(count as usize);
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    for i in 0..warmup.saturating_add(count) {
        let size = rng.random_range(sizes.min..=sizes.max);
        let started = Instant::now();
        socket.write_all(&message[..size]).await.map_err(ScenarioError::io(format!("writing to {addr}")))?;
        socket.read_exact(&mut back[..size]).await.map_err(|err| fail(format!("the echo ended early: {err}")))?;
        if back[..size] != message[..size] {
            return Err(fail("the echo changed the message".into()));
        }
        if i >= warmup {
            rtts.push(started.elapsed());
        }
    }
    Ok(rtts)
}

/// A running `tether --data-dir DIR forward UUID PORT --listen 127.0.0.1:0`, killed on drop.
#[derive(Debug)]
pub struct TetherForward {
    pub addr: SocketAddr,
    _child: Child,
}

impl TetherForward {
    /// Starts it and waits (up to 30 s) for its `forwarding ADDR -> …` line.
    pub async fn start(tether: &Path, data_dir: &Path, uuid: Uuid, port: u32) -> Result<Self, ScenarioError> {
        let fail = |detail: String| ScenarioError::Forward { uuid, detail };
        let mut child = tokio::process::Command::new(tether)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["forward", &uuid.to_string(), &port.to_string(), "--listen", "127.0.0.1:0"])
            // Its per-connection lines would bury the progress; warnings still show.
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| fail(format!("cannot start {}: {err}", tether.display())))?;
        let stdout = child.stdout.take().ok_or_else(|| fail("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let find = async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("forwarding ") {
                    return rest.split_whitespace().next().and_then(|a| a.parse::<SocketAddr>().ok());
                }
            }
            None
        };
        match tokio::time::timeout(FORWARD_START, find).await {
            Ok(Some(addr)) => {
                // Keep draining its stdout so that it never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                Ok(Self { addr, _child: child })
            }
            Ok(None) => Err(fail("it exited without saying where it listens".into())),
            Err(_) => Err(fail(format!("it did not say where it listens within {FORWARD_START:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_one_or_a_range() {
        assert_eq!("64".parse::<Sizes>(), Ok(Sizes { min: 64, max: 64 }));
        assert_eq!("1-64".parse::<Sizes>(), Ok(Sizes { min: 1, max: 64 }));
        assert!("64-1".parse::<Sizes>().is_err());
        assert!("0".parse::<Sizes>().is_err());
        assert!("x".parse::<Sizes>().is_err());
        assert_eq!(Sizes { min: 1, max: 64 }.to_string(), "1-64");
    }

    #[tokio::test]
    async fn push_and_rtt_through_the_echo() {
        let (addr, echo) = echo_server(super::super::loopback_any()).await.unwrap();
        let pushed = push(addr, 3 * BLOCK as u64 + 17).await.unwrap();
        assert_eq!((pushed.bytes_sent, pushed.bytes_received), (3 * BLOCK as u64 + 17, 3 * BLOCK as u64 + 17));
        let rtts = rtt(addr, Sizes { min: 1, max: 64 }, 50, 5).await.unwrap();
        assert_eq!(rtts.len(), 50);
        echo.abort();
    }
}
