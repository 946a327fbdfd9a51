//! The technician's terminal during `tether console`: raw mode while the serial console is on
//! screen, restored on every way out (normal end, error, panic unwinding, a signal ending the
//! loop), and keystrokes read on a thread of their own.
//!
//! Keystrokes come from a plain thread rather than tokio's stdin: a blocking read that never
//! returns must not keep the runtime from shutting down when the session ends.

use std::io::{IsTerminal, Read};

use rustix::termios::{tcgetattr, tcsetattr, OptionalActions, Termios};
use tokio::sync::mpsc;

/// The key that ends `tether console`: Ctrl-] (0x1D), as in telnet and amtterm.
pub const ESCAPE: u8 = 0x1d;

/// Raw mode on standard input while alive (nothing when stdin is not a terminal).
#[derive(Debug)]
pub struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    /// Switches a terminal stdin to raw mode: keys arrive one by one, unechoed, with Ctrl-C and
    /// Ctrl-Z passed to the PC instead of signalling this process.
    pub fn enter() -> std::io::Result<Self> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(Self { saved: None });
        }
        let saved = tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Now, &raw)?;
        Ok(Self { saved: Some(saved) })
    }

    /// Whether the terminal is in raw mode (so lines printed need `\r\n`).
    pub fn is_raw(&self) -> bool {
        self.saved.is_some()
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = self.saved.take() {
            let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &saved);
        }
    }
}

/// Reads standard input on a thread of its own; `None` from the receiver means end of input.
pub fn keystrokes() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(64);
    let spawned = std::thread::Builder::new().name("tether-keys".into()).spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    if spawned.is_err() {
        // No thread, no keys: the receiver reports end of input at once.
        let (_, rx) = mpsc::channel(1);
        return rx;
    }
    rx
}
