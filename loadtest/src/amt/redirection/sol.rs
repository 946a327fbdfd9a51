//! SOL: the host's serial port, played by a shell on a pseudo-terminal.
//!
//! [`SolSession::start`] spawns the shell (`--sol-shell`, `TERM=vt100`) on a new pty and two
//! tasks: a reader that moves the shell's output into the device's [`SerialSink`] (stopping while
//! the sink is full), and a writer that types the console's keystrokes into the pty (fed through a
//! small bounded queue, so a console typing faster than the shell reads is held back by the APF
//! window). Dropping the session aborts both tasks and kills the shell. The handler drains the
//! sink into SOLDataFromHost (0x2A) messages of at most the console's MaxTxBuffer bytes, and sends
//! a heartbeat (0x2B) every [`RedirectionConfig::heartbeat`](super::RedirectionConfig::heartbeat).
//!
//! When the shell exits, the reader writes `SOL: shell exited (<status>)` and CRLF to the console
//! (status as Rust prints an exit status: `exit status: 0`, `signal: 9 (SIGKILL)`) and ends the
//! sink; once that is sent the channel closes.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocols::redir::{sol_control, sol_status, Message, SolSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::console::{Attachment, SerialConsoles, SerialSink};
use crate::amt::service::{ChannelWaker, Outbox};

/// Keystroke messages queued for the pty at most.
const INPUT_QUEUE: usize = 8;
/// MaxTxBuffer used when the console sends 0.
const DEFAULT_MAX_TX: usize = 1000;
/// How long the reader waits for the shell's exit status after its output ended.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// Why the shell could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the SOL shell {shell}: {source}")]
pub struct SpawnError {
    shell: String,
    #[source]
    source: pty_process::Error,
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One running SOL session (after StartSOLRedirection). See the module doc.
#[derive(Debug)]
pub(super) struct SolSession {
    /// The device's next sequence number.
    seq: u32,
    max_tx: usize,
    heartbeat: Duration,
    next_heartbeat: Instant,
    sink: Arc<SerialSink>,
    input: mpsc::Sender<Bytes>,
    _console: Attachment,
    _reader: AbortOnDrop,
    _writer: AbortOnDrop,
}

impl SolSession {
    /// Spawns `shell` on a pty, attaches the device's console, and writes the StartSOL reply
    /// (0x21, sequence 0, echoing `settings`) and the modem lines (0x29: RTS, DTR, power on), each
    /// as its own message. Needs a tokio runtime.
    pub(super) fn start(
        shell: &Path,
        uuid: Uuid,
        consoles: &SerialConsoles,
        waker: ChannelWaker,
        settings: SolSettings,
        heartbeat: Duration,
        out: &mut Outbox<'_>,
    ) -> Result<Self, SpawnError> {
        let spawn_error = |source| SpawnError { shell: shell.display().to_string(), source };
        let (pty, pts) = pty_process::open().map_err(spawn_error)?;
        pty.resize(pty_process::Size::new(24, 80)).map_err(spawn_error)?;
        let child =
            pty_process::Command::new(shell).env("TERM", "vt100").kill_on_drop(true).spawn(pts).map_err(spawn_error)?;
        let (mut rd, mut wr) = pty.into_split();
        let sink = SerialSink::new(waker.clone());
        let console = consoles.attach(uuid, Arc::clone(&sink));

        let reader_sink = Arc::clone(&sink);
        let reader = tokio::spawn(async move {
            let mut child = child;
            let mut buf = vec![0u8; 4096];
            loop {
                reader_sink.wait_for_room().await;
                match rd.read(&mut buf).await {
                    // EIO once the shell (and every process holding the pty) is gone.
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut data = &buf[..n];
                        while !data.is_empty() {
                            let pushed = reader_sink.push(data);
                            data = &data[pushed..];
                            if !data.is_empty() {
                                reader_sink.wait_for_room().await;
                            }
                        }
                    }
                }
            }
            let status = match tokio::time::timeout(EXIT_WAIT, child.wait()).await {
                Ok(Ok(status)) => status.to_string(),
                Ok(Err(err)) => format!("status unknown: {err}"),
                Err(_) => "output closed, still running: killed".to_owned(),
            };
            reader_sink.wait_for_room().await;
            reader_sink.push_line(&format!("\r\nSOL: shell exited ({status})"));
            reader_sink.end();
        });

        let (input, mut keys) = mpsc::channel::<Bytes>(INPUT_QUEUE);
        let writer = tokio::spawn(async move {
            while let Some(data) = keys.recv().await {
                if wr.write_all(&data).await.is_err() {
                    break;
                }
                // Room in the queue again: the handler may take keystrokes it held back.
                waker.wake();
            }
        });

        let mut session = SolSession {
            seq: 0,
            max_tx: match settings.max_tx_buffer {
                0 => DEFAULT_MAX_TX,
                n => usize::from(n),
            },
            heartbeat,
            next_heartbeat: Instant::now() + heartbeat,
            sink,
            input,
            _console: console,
            _reader: AbortOnDrop(reader),
            _writer: AbortOnDrop(writer),
        };
        let seq = session.next_seq();
        super::send(&Message::StartSolReply { status: 0, seq, settings }, out);
        let seq = session.next_seq();
        super::send(
            &Message::SolControlsFromHost {
                seq,
                control: sol_control::RTS | sol_control::DTR,
                status: sol_status::SYSTEM_POWER_ON,
            },
            out,
        );
        Ok(session)
    }

    fn next_seq(&mut self) -> u32 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        seq
    }

    /// Queues keystrokes for the shell; `false` when the queue is full (try again after a wake).
    pub(super) fn type_keys(&self, data: Bytes) -> bool {
        match self.input.try_send(data) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => false,
            // The shell is gone; its exit is reported through the sink.
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }

    /// Sends what the sink holds as 0x2A messages, within the outbox's room. Returns `true` once
    /// the shell has exited and everything was sent.
    pub(super) fn flush(&mut self, out: &mut Outbox<'_>) -> bool {
        const HEADER: usize = 10;
        loop {
            let room = out.room();
            if room <= HEADER {
                return false;
            }
            let max = self.max_tx.min(room - HEADER).min(usize::from(u16::MAX));
            let data = self.sink.take(max);
            if data.is_empty() {
                return self.sink.is_finished();
            }
            let seq = self.next_seq();
            super::send(&Message::SolDataFromHost { seq, data: Bytes::from(data) }, out);
        }
    }

    /// When the next heartbeat is due.
    pub(super) fn deadline(&self) -> Instant {
        self.next_heartbeat
    }

    /// Sends a heartbeat if one is due.
    pub(super) fn on_timer(&mut self, now: Instant, out: &mut Outbox<'_>) {
        if now >= self.next_heartbeat {
            let seq = self.next_seq();
            super::send(&Message::SolHeartbeat { seq }, out);
            self.next_heartbeat = now + self.heartbeat;
        }
    }
}
