//! `tether console`: the PC's serial console (Serial-over-LAN) on the technician's terminal.
//!
//! Opens a SOL session, switches the terminal to raw mode, and then copies: what the PC prints
//! (SOLDataFromHost) to stdout as it arrives, and every key typed (SOLDataToHost) to the PC, with
//! a heartbeat every few seconds. Ctrl-] ([`ESCAPE`]) quits, as do the end of standard input,
//! SIGTERM and SIGHUP; the terminal is restored on every way out, and the device is told the
//! session ends (EndSOL, EndRedirectionSession) whenever the connection still stands.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Result};
use bytes::Bytes;
use protocols::redir::{sol_status, Message, SessionType, SolSettings};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{Instant, MissedTickBehavior};

use super::terminal::{keystrokes, RawMode, ESCAPE};
use super::{finish, open, Account, Endpoint, Session};

/// How often the console tells the device it is still there.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Silence from the device (it sends heartbeats) after which the session is given up.
const DEVICE_SILENCE: Duration = Duration::from_secs(30);

/// The SOL settings this console asks for (as MeshCommander does: 10,000-byte buffers, 100 ms
/// transmit timeout, heartbeats every 5 s).
pub fn settings() -> SolSettings {
    SolSettings {
        max_tx_buffer: 10_000,
        tx_buffer_timeout: 100,
        tx_overflow_timeout: 0,
        host_session_rx_timeout: 10_000,
        host_fifo_rx_flush_timeout: 100,
        heartbeat_interval: 5_000,
    }
}

/// Why the copy loop stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The technician quit (escape key, end of input, signal): end the session politely.
    Quit(&'static str),
    /// The device ended SOL or closed the connection.
    DeviceEnded(String),
}

/// A started SOL session and its sequence counter.
#[derive(Debug)]
pub struct Sol {
    session: Session,
    seq: u32,
}

/// Opens a SOL session and starts SOL.
pub async fn start(endpoint: &Endpoint, account: &Account) -> Result<Sol> {
    let mut session = open(endpoint, SessionType::Sol, account).await?;
    let seq = 0u32;
    session.writer.send(&Message::StartSol { seq, settings: settings() }).await?;
    match session.expect("its answer to the SOL start").await? {
        Message::StartSolReply { status: 0, .. } => {}
        Message::StartSolReply { status, .. } => {
            bail!("{} refused to start Serial-over-LAN (status {status})", session.target)
        }
        other => bail!("{} answered the SOL start with {:?}", session.target, other.message_type()),
    }
    Ok(Sol { session, seq })
}

/// Types `line` on the PC's serial console as a shell comment (`# …`, so that a shell in the
/// rescue image shows it and runs nothing), waits briefly for its echo, and ends the session.
/// AMT cannot show the PC user a message itself; this is how the end of a remote fix tells them.
pub async fn type_message(endpoint: &Endpoint, account: &Account, line: &str) -> Result<()> {
    let Sol { mut session, mut seq } = start(endpoint, account).await?;
    let text: String = line.chars().filter(|c| !c.is_control()).collect();
    let typed = format!("\r# {text}\r");
    seq = seq.wrapping_add(1);
    session.writer.send(&Message::SolDataToHost { seq, data: Bytes::from(typed) }).await?;
    let needle = text.chars().take(16).collect::<String>();
    let mut shown = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(Some(message)) = session.reader.next().await {
            if let Message::SolDataFromHost { data, .. } = message {
                shown.push_str(&String::from_utf8_lossy(&data));
                if shown.contains(&needle) {
                    break;
                }
            }
        }
    })
    .await;
    seq = seq.wrapping_add(1);
    let _ = session.writer.send(&Message::EndSol { seq }).await;
    finish(&mut session.writer).await;
    Ok(())
}

/// Runs a console session until the technician quits or the device ends it.
pub async fn run(endpoint: Endpoint, account: Account) -> Result<()> {
    let sol = start(&endpoint, &account).await?;
    eprintln!("Serial-over-LAN on {} started; Ctrl-] quits.", sol.session.target);
    let raw = RawMode::enter()?;
    let mut keys = keystrokes();
    let end = pump(sol, &raw, &mut keys).await;
    drop(raw);
    end.map(drop)
}

/// Copies between the session and the terminal until the technician quits or the device ends
/// it, then ends the session politely.
pub async fn pump(mut sol: Sol, raw: &RawMode, keys: &mut tokio::sync::mpsc::Receiver<Vec<u8>>) -> Result<End> {
    let Sol { session, seq } = &mut sol;
    let end = copy(session, seq, raw, keys).await;
    let mut seq = *seq;
    match end {
        Ok(End::Quit(why)) => {
            seq = seq.wrapping_add(1);
            let _ = session.writer.send(&Message::EndSol { seq }).await;
            // Wait briefly for the device's EndSOL reply; output still arriving is shown.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(Some(message)) = session.reader.next().await {
                    match message {
                        Message::EndSolReply { .. } => break,
                        Message::SolDataFromHost { data, .. } => write_out(&data),
                        _ => {}
                    }
                }
            })
            .await;
            finish(&mut session.writer).await;
            note(raw, &format!("Serial-over-LAN on {} ended ({why})", session.target));
            Ok(End::Quit(why))
        }
        Ok(End::DeviceEnded(why)) => {
            finish(&mut session.writer).await;
            note(raw, &format!("Serial-over-LAN on {} ended: {why}", session.target));
            Ok(End::DeviceEnded(why))
        }
        Err(err) => {
            session.writer.close().await;
            Err(err)
        }
    }
}

fn write_out(data: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(data);
    let _ = stdout.flush();
}

/// Prints a status line on stderr, in a form that reads right in raw mode too.
pub fn note(raw: &RawMode, text: &str) {
    let newline = if raw.is_raw() { "\r\n" } else { "\n" };
    eprint!("{newline}[tether: {text}]{newline}");
}

async fn copy(
    session: &mut Session,
    seq: &mut u32,
    raw: &RawMode,
    keys: &mut tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<End> {
    let mut heartbeat = tokio::time::interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut heard = Instant::now();
    let mut powered: Option<bool> = None;
    loop {
        tokio::select! {
            message = session.reader.next() => {
                heard = Instant::now();
                match message? {
                    Some(Message::SolDataFromHost { data, .. }) => write_out(&data),
                    Some(Message::SolControlsFromHost { status, .. }) => {
                        let on = status & sol_status::SYSTEM_POWER_ON != 0;
                        if powered != Some(on) {
                            powered = Some(on);
                            if !on {
                                note(raw, "the PC is powered off");
                            }
                        }
                    }
                    Some(Message::EndSolReply { .. }) => return Ok(End::DeviceEnded("the device ended Serial-over-LAN".into())),
                    Some(_) => {}
                    None => {
                        let why = session.reader.close_reason().unwrap_or("the connection closed").to_owned();
                        return Ok(End::DeviceEnded(why));
                    }
                }
            }
            typed = keys.recv() => {
                let Some(typed) = typed else { return Ok(End::Quit("end of input")) };
                let (before, quit) = match typed.iter().position(|&b| b == ESCAPE) {
                    Some(at) => (&typed[..at], true),
                    None => (&typed[..], false),
                };
                for chunk in before.chunks(1024) {
                    *seq = seq.wrapping_add(1);
                    session.writer.send(&Message::SolDataToHost { seq: *seq, data: Bytes::copy_from_slice(chunk) }).await?;
                }
                if quit {
                    return Ok(End::Quit("Ctrl-]"));
                }
            }
            _ = heartbeat.tick() => {
                if heard.elapsed() > DEVICE_SILENCE {
                    bail!("{} sent nothing for {} s; giving up", session.target, DEVICE_SILENCE.as_secs());
                }
                *seq = seq.wrapping_add(1);
                session.writer.send(&Message::SolHeartbeat { seq: *seq }).await?;
            }
            _ = term.recv() => return Ok(End::Quit("SIGTERM")),
            _ = hangup.recv() => return Ok(End::Quit("SIGHUP")),
            _ = interrupt.recv() => return Ok(End::Quit("SIGINT")),
        }
    }
}
