//! `tether ider`: serves a rescue image to the PC's virtual CD drive (and/or a floppy image to its
//! virtual floppy) over IDE-R, read-only, until the technician stops it or the device ends it.
//!
//! The PC's firmware sends ATAPI packets (CommandWritten); [`Target`] answers each one, and a read
//! of the medium is served from the file at the offset asked, never loading the file whole. The
//! protocol allows one command at a time, so what this side controls is how fast each answer
//! leaves: the whole answer to a read goes out at once (in DataToHost chunks no larger than the
//! device's read buffer, one write) for the relay and the device's channel window to pace, and
//! the range after it is read ahead while the device consumes it, so that a sequential read never
//! waits for the disk. A progress bar shows the bytes served and the rate; a summary ends the run.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use protocols::redir::{
    self, AtaCommand, AtaRegisters, FeaturesRequest, IderOpen, Message, RegisterArea, SessionType, ATTR_COMPLETED,
    ATTR_DMA,
};
use protocols::scsi::{DeviceKind, Response, Sense, Target};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::{finish, open, Account, Endpoint, Session};

/// How often this side sends a heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// The most bytes read from the image and sent in one go; longer reads are served piece by piece.
const PIECE: u32 = 256 * 1024;
/// ATA PACKET, the only ATA command IDE-R carries.
const ATA_PACKET: u8 = 0xA0;
/// Enable IDE-R, taking effect on the PC's next boot (what MeshCommander asks).
const ENABLE_ON_REBOOT: u32 = 0x01 | 0x08;

/// The images to serve.
#[derive(Debug, Clone, Default)]
pub struct Images {
    /// An ISO served as the CD-ROM (2048-byte blocks).
    pub cd: Option<PathBuf>,
    /// An image served as the floppy / removable disk (512-byte blocks).
    pub floppy: Option<PathBuf>,
    /// An image already opened (and checked) by the caller, served as the CD-ROM instead of
    /// `cd`: the gateway serves the very file it hashed, whatever happens to its path.
    pub cd_opened: Option<Arc<std::fs::File>>,
}

/// What a run served, for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    pub bytes: u64,
    pub reads: u64,
    pub commands: u64,
}

/// What has been served so far, for whoever watches from elsewhere (the gateway's status of an
/// IDE-R session it serves).
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes: AtomicU64,
    pub reads: AtomicU64,
    pub commands: AtomicU64,
}

impl Progress {
    /// The counts now.
    pub fn served(&self) -> Served {
        Served {
            bytes: self.bytes.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
        }
    }
}

/// One image file, read at offsets, with one range read ahead.
struct Image {
    file: Arc<std::fs::File>,
    len: u64,
    ahead: Option<(u64, u32, JoinHandle<io::Result<Bytes>>)>,
}

impl Image {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let meta = file.metadata().with_context(|| format!("reading {}", path.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        if meta.len() == 0 {
            bail!("{} is empty", path.display());
        }
        Ok(Self { file: Arc::new(file), len: meta.len(), ahead: None })
    }

    /// An image from a file the caller opened.
    fn opened(file: Arc<std::fs::File>) -> Result<Self> {
        let len = file.metadata().context("reading the image's size")?.len();
        if len == 0 {
            bail!("the image is empty");
        }
        Ok(Self { file, len, ahead: None })
    }

    /// `len` bytes from `offset`, zeros past the file's end.
    async fn read(&mut self, offset: u64, len: u32) -> io::Result<Bytes> {
        let data = match self.ahead.take() {
            Some((o, l, handle)) if o == offset && l == len => handle.await.map_err(io::Error::other)??,
            Some((_, _, handle)) => {
                handle.abort();
                read_at(self.file.clone(), self.len, offset, len).await?
            }
            None => read_at(self.file.clone(), self.len, offset, len).await?,
        };
        let next = offset + u64::from(len);
        if next < self.len {
            let file = self.file.clone();
            let image_len = self.len;
            self.ahead = Some((next, len, tokio::spawn(read_at(file, image_len, next, len))));
        }
        Ok(data)
    }
}

async fn read_at(file: Arc<std::fs::File>, image_len: u64, offset: u64, len: u32) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len as usize];
        let available = image_len.saturating_sub(offset).min(u64::from(len)) as usize;
        file.read_exact_at(&mut buf[..available], offset)?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)?
}

/// One emulated drive.
struct Drive {
    target: Target,
    image: Option<Image>,
}

impl Drive {
    fn new(kind: DeviceKind, path: Option<&Path>) -> Result<Self> {
        let image = path.map(Image::open).transpose()?;
        Ok(Self::with(kind, image))
    }

    fn with(kind: DeviceKind, image: Option<Image>) -> Self {
        let target = Target::new(kind, image.as_ref().map_or(0, |i| i.len));
        Self { target, image }
    }
}

/// How `tether rescue` runs IDE-R beside the console: quietly (no progress bar or messages on
/// the terminal the console owns), until told to stop, saying when the device is ready to boot.
#[derive(Debug, Default)]
pub struct ServeOptions {
    pub quiet: bool,
    /// Serving stops (politely: EndIDER, EndRedirectionSession) once this turns true.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Told once IDE-R is enabled for the next boot.
    pub ready: Option<tokio::sync::oneshot::Sender<()>>,
    /// Counts what is served, as it is served.
    pub progress: Option<Arc<Progress>>,
    /// Leave SIGTERM and Ctrl-C alone (inside the gateway, whose own shutdown stops serving).
    pub ignore_signals: bool,
}

/// Serves `images` to the device until the technician stops (Ctrl-C, SIGTERM) or the device ends
/// the session.
pub async fn run(endpoint: Endpoint, account: Account, images: Images) -> Result<Served> {
    run_with(endpoint, account, images, ServeOptions::default()).await.map(|(served, _)| served)
}

/// [`run`] with options; also returns why serving ended.
pub async fn run_with(
    endpoint: Endpoint,
    account: Account,
    images: Images,
    mut options: ServeOptions,
) -> Result<(Served, String)> {
    if images.cd.is_none() && images.floppy.is_none() && images.cd_opened.is_none() {
        bail!("nothing to serve: give --image ISO and/or --floppy IMAGE");
    }
    let mut cd = match &images.cd_opened {
        Some(file) => Drive::with(DeviceKind::CdRom, Some(Image::opened(Arc::clone(file))?)),
        None => Drive::new(DeviceKind::CdRom, images.cd.as_deref())?,
    };
    let mut floppy = Drive::new(DeviceKind::Floppy, images.floppy.as_deref())?;
    let total = cd.target.image_len() + floppy.target.image_len();

    let mut session = open(&endpoint, SessionType::Ider, &account).await?;
    let mut out = Outgoing { seq: 0 };
    let open_request = IderOpen { seq: out.next(), rx_timeout: 30_000, tx_timeout: 0, heartbeat: 20_000, version: 1 };
    session.writer.send(&Message::StartIder(open_request)).await?;
    let chunk = match session.expect("its answer to the IDE-R start").await? {
        Message::StartIderReply(reply) if reply.status == 0 => usize::from(reply.read_buffer_size).clamp(512, 8192),
        Message::StartIderReply(reply) => bail!("{} refused to start IDE-R (status {})", session.target, reply.status),
        other => bail!("{} answered the IDE-R start with {:?}", session.target, other.message_type()),
    };
    let enable = FeaturesRequest::SetState(ENABLE_ON_REBOOT);
    session.writer.send(&Message::IderDisableEnableFeatures { seq: out.next(), request: enable }).await?;
    match session.expect("its answer to enabling IDE-R").await? {
        Message::IderDisableEnableFeaturesReply { value, .. } if value & 1 == 1 => {}
        Message::IderDisableEnableFeaturesReply { value, .. } => {
            bail!("{} did not enable IDE-R (answer {value:#x})", session.target)
        }
        other => bail!("{} answered the IDE-R enable with {:?}", session.target, other.message_type()),
    }
    if let Some(ready) = options.ready.take() {
        let _ = ready.send(());
    }
    let quiet = options.quiet;
    if !quiet {
        for (what, path) in [("CD-ROM", &images.cd), ("floppy", &images.floppy)] {
            if let Some(path) = path {
                let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                eprintln!("serving {} ({}) as the {what} of {}", path.display(), HumanBytes(len), session.target);
            }
        }
        eprintln!("IDE-R is enabled for the PC's next boot; Ctrl-C stops serving.");
    }

    let bar = if quiet { ProgressBar::hidden() } else { progress_bar(total) };
    let started = Instant::now();
    let mut served = Served::default();
    let mut server = Server {
        chunk,
        out,
        bar: &bar,
        served: &mut served,
        stop: options.stop.take(),
        progress: options.progress.take(),
        signals: !options.ignore_signals,
    };
    let ended = server.serve(&mut session, &mut cd, &mut floppy).await;
    bar.finish_and_clear();
    if quiet {
        return match ended {
            Ok(why) => Ok((served, why)),
            Err(err) => {
                session.writer.close().await;
                Err(err)
            }
        };
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "served {} ({} bytes) in {} reads and {} commands over {:.1} s ({}/s)",
        HumanBytes(served.bytes),
        served.bytes,
        served.reads,
        served.commands,
        elapsed,
        HumanBytes((served.bytes as f64 / elapsed) as u64)
    );
    match ended {
        Ok(why) => {
            eprintln!("IDE-R on {} ended: {why}.", session.target);
            Ok((served, why))
        }
        Err(err) => {
            session.writer.close().await;
            Err(err)
        }
    }
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} IDE-R {bytes} served of {total_bytes} ({binary_bytes_per_sec}) {msg}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Resolves once `stop` turns true (never without one, or once its sender is gone).
async fn stopped(stop: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    if let Some(stop) = stop {
        if stop.wait_for(|s| *s).await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// Resolves when `signal` arrives (never without one).
async fn received(signal: &mut Option<Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// The console's sequence numbers: 0 for the IDE-R start, then one more for every message.
struct Outgoing {
    seq: u32,
}

impl Outgoing {
    fn next(&mut self) -> u32 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        seq
    }
}

struct Server<'a> {
    /// Most bytes per DataToHost (the device's read buffer).
    chunk: usize,
    out: Outgoing,
    bar: &'a ProgressBar,
    served: &'a mut Served,
    stop: Option<tokio::sync::watch::Receiver<bool>>,
    progress: Option<Arc<Progress>>,
    /// Whether SIGTERM and SIGINT stop serving.
    signals: bool,
}

impl Server<'_> {
    async fn serve(&mut self, session: &mut Session, cd: &mut Drive, floppy: &mut Drive) -> Result<String> {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let (mut term, mut interrupt) = if self.signals {
            (Some(signal(SignalKind::terminate())?), Some(signal(SignalKind::interrupt())?))
        } else {
            (None, None)
        };
        let quit = loop {
            tokio::select! {
                message = session.reader.next() => match message? {
                    Some(Message::IderCommandWritten { command, .. }) => {
                        let drive = if command.drive_select & 0x10 != 0 { &mut *cd } else { &mut *floppy };
                        self.command(session, drive, &command).await?;
                    }
                    Some(Message::IderKeepAlivePing { .. }) => {
                        session.writer.send(&Message::IderKeepAlivePong { seq: self.out.next() }).await?;
                    }
                    Some(Message::IderResetOccurred { .. }) => {
                        session.writer.send(&Message::IderResetOccurredResponse { seq: self.out.next() }).await?;
                    }
                    Some(Message::IderErrorOccurred { code, .. }) => {
                        self.bar.suspend(|| eprintln!("the device reported IDE-R error {code:#04x}"));
                    }
                    Some(Message::EndIderReply { .. }) => return Ok("the device ended IDE-R".into()),
                    Some(_) => {}
                    None => {
                        let why = session.reader.close_reason().unwrap_or("the connection closed").to_owned();
                        return Ok(why);
                    }
                },
                _ = heartbeat.tick() => {
                    session.writer.send(&Message::IderHeartbeat { seq: self.out.next() }).await?;
                }
                _ = received(&mut term) => break "SIGTERM",
                _ = received(&mut interrupt) => break "Ctrl-C",
                _ = stopped(&mut self.stop) => break "done",
            }
        };
        session.writer.send(&Message::EndIder { seq: self.out.next() }).await?;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(Some(message)) = session.reader.next().await {
                if matches!(message, Message::EndIderReply { .. }) {
                    break;
                }
            }
        })
        .await;
        finish(&mut session.writer).await;
        Ok(format!("stopped ({quit})"))
    }

    /// Answers one CommandWritten.
    async fn command(&mut self, session: &mut Session, drive: &mut Drive, command: &AtaCommand) -> Result<()> {
        self.served.commands += 1;
        if let Some(progress) = &self.progress {
            progress.commands.fetch_add(1, Ordering::Relaxed);
        }
        let device = command.drive_select & 0xF0;
        let dma = command.feature & 1 != 0;
        let response = if command.command == ATA_PACKET {
            drive.target.handle(&command.packet)
        } else {
            Response::CheckCondition(Sense::INVALID_OPCODE)
        };
        let mut buf = Vec::new();
        match response {
            Response::Good => self.status(&mut buf, device, None),
            Response::CheckCondition(sense) => self.status(&mut buf, device, Some(sense)),
            Response::Data(data) => self.data(&mut buf, device, dma, &Bytes::from(data), true),
            Response::Read { offset, len } => return self.read(session, drive, device, dma, offset, len).await,
        }
        session.writer.send_bytes(Bytes::from(buf)).await
    }

    /// Serves a read of the medium piece by piece; the last chunk of the last piece completes it.
    #[allow(clippy::too_many_arguments)]
    async fn read(
        &mut self,
        session: &mut Session,
        drive: &mut Drive,
        device: u8,
        dma: bool,
        offset: u64,
        len: u32,
    ) -> Result<()> {
        self.served.reads += 1;
        if let Some(progress) = &self.progress {
            progress.reads.fetch_add(1, Ordering::Relaxed);
        }
        let Some(image) = drive.image.as_mut() else {
            // The target asks for reads only when it has a medium; answer as a read error anyway.
            let sense = drive.target.read_failed();
            let mut buf = Vec::new();
            self.status(&mut buf, device, Some(sense));
            return session.writer.send_bytes(Bytes::from(buf)).await;
        };
        let mut done = 0u32;
        while done < len {
            let piece = (len - done).min(PIECE);
            let data = match image.read(offset + u64::from(done), piece).await {
                Ok(data) => data,
                Err(err) => {
                    self.bar.suspend(|| eprintln!("reading the image at byte {}: {err}", offset + u64::from(done)));
                    let sense = drive.target.read_failed();
                    let mut buf = Vec::new();
                    self.status(&mut buf, device, Some(sense));
                    return session.writer.send_bytes(Bytes::from(buf)).await;
                }
            };
            done += piece;
            let mut buf = Vec::with_capacity(data.len() + 64 * data.len().div_ceil(self.chunk));
            self.data(&mut buf, device, dma, &data, done == len);
            session.writer.send_bytes(Bytes::from(buf)).await?;
            self.served.bytes += u64::from(piece);
            self.bar.inc(u64::from(piece));
            if let Some(progress) = &self.progress {
                progress.bytes.fetch_add(u64::from(piece), Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// DataToHost chunks of `data`; the last one completes the command when `last`.
    fn data(&mut self, buf: &mut Vec<u8>, device: u8, dma: bool, data: &Bytes, last: bool) {
        let count = data.len().div_ceil(self.chunk);
        for i in 0..count {
            let piece = data.slice(i * self.chunk..((i + 1) * self.chunk).min(data.len()));
            let final_chunk = last && i + 1 == count;
            let len = piece.len() as u16;
            let input = AtaRegisters {
                mask: if dma { 0xB4 } else { 0xB5 },
                sector_count: 2,
                byte_count: if dma { 0 } else { len },
                drive_select: device,
                status: 0x58,
                ..AtaRegisters::default()
            };
            let output = if final_chunk {
                AtaRegisters { mask: 0x85, sector_count: 3, drive_select: device, status: 0x50, ..Default::default() }
            } else {
                AtaRegisters::default()
            };
            let mut attributes = if final_chunk { ATTR_COMPLETED } else { 0 };
            if dma {
                attributes |= ATTR_DMA;
            }
            let message = Message::IderDataToHost {
                seq: self.out.next(),
                attributes,
                area: RegisterArea { input, output, ..RegisterArea::default() },
                data: piece,
            };
            redir::encode(&message, buf);
        }
    }

    /// CommandEndResponse: GOOD, or CHECK CONDITION with `sense`.
    fn status(&mut self, buf: &mut Vec<u8>, device: u8, sense: Option<Sense>) {
        let (output, sense) = match sense {
            None => (
                AtaRegisters { mask: 0xC5, sector_count: 3, drive_select: device, status: 0x50, ..Default::default() },
                redir::Sense::default(),
            ),
            Some(sense) => (
                AtaRegisters {
                    mask: 0x87,
                    error: sense.key.code() << 4,
                    sector_count: 3,
                    drive_select: device,
                    status: 0x51,
                    ..Default::default()
                },
                redir::Sense { key: sense.key.code(), asc: sense.asc, ascq: sense.ascq },
            ),
        };
        let message = Message::IderCommandEndResponse {
            seq: self.out.next(),
            attributes: ATTR_COMPLETED,
            transfer_bytes: 0,
            area: RegisterArea { output, sense, ..RegisterArea::default() },
        };
        redir::encode(&message, buf);
    }
}

#[cfg(test)]
mod tests {
    use protocols::redir::{Limits, Sender};

    use super::*;

    fn decode_all(mut bytes: &[u8]) -> Vec<Message> {
        let mut messages = Vec::new();
        while !bytes.is_empty() {
            let (message, used) = redir::decode(bytes, Sender::Console, &Limits::default()).unwrap().unwrap();
            messages.push(message);
            bytes = &bytes[used..];
        }
        messages
    }

    #[test]
    fn a_read_goes_out_in_chunks_of_the_read_buffer_numbered_without_gaps_and_only_the_last_completes() {
        let bar = ProgressBar::hidden();
        let mut served = Served::default();
        let mut server = Server {
            chunk: 8192,
            out: Outgoing { seq: 7 },
            bar: &bar,
            served: &mut served,
            stop: None,
            progress: None,
            signals: false,
        };
        let data: Bytes = (0..20_000u32).map(|i| i as u8).collect();
        let mut buf = Vec::new();
        server.data(&mut buf, 0xB0, false, &data, true);
        let messages = decode_all(&buf);
        assert_eq!(messages.len(), 3);
        let mut joined = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            let Message::IderDataToHost { seq, attributes, area, data } = message else { panic!("{message:?}") };
            assert_eq!(*seq, 7 + i as u32);
            let last = i == 2;
            assert_eq!(*attributes, if last { ATTR_COMPLETED } else { 0 });
            assert_eq!(area.input.byte_count as usize, data.len());
            assert_eq!(area.input.drive_select, 0xB0);
            assert_eq!(area.output.status, if last { 0x50 } else { 0 });
            joined.extend_from_slice(data);
        }
        assert_eq!(joined, data[..]);
        assert_eq!(server.out.seq, 10);
    }

    #[test]
    fn a_check_condition_carries_the_sense_and_the_error_register() {
        let bar = ProgressBar::hidden();
        let mut served = Served::default();
        let mut server = Server {
            chunk: 8192,
            out: Outgoing { seq: 0 },
            bar: &bar,
            served: &mut served,
            stop: None,
            progress: None,
            signals: false,
        };
        let mut buf = Vec::new();
        server.status(&mut buf, 0xA0, Some(Sense::LBA_OUT_OF_RANGE));
        server.status(&mut buf, 0xA0, None);
        let messages = decode_all(&buf);
        let Message::IderCommandEndResponse { seq: 0, attributes, area, .. } = &messages[0] else { panic!() };
        assert_eq!(*attributes, ATTR_COMPLETED);
        assert_eq!((area.sense.key, area.sense.asc, area.sense.ascq), (0x05, 0x21, 0x00));
        assert_eq!((area.output.error, area.output.status, area.output.drive_select), (0x50, 0x51, 0xA0));
        let Message::IderCommandEndResponse { seq: 1, area, .. } = &messages[1] else { panic!() };
        assert_eq!((area.output.status, area.sense.key), (0x50, 0));
    }

    #[tokio::test]
    async fn reads_past_the_end_of_the_file_are_zeros_and_the_next_range_is_read_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        std::fs::write(&path, vec![9u8; 3000]).unwrap();
        let mut image = Image::open(&path).unwrap();
        let first = image.read(0, 2048).await.unwrap();
        assert!(first.iter().all(|&b| b == 9));
        assert!(matches!(image.ahead, Some((2048, 2048, _))));
        let second = image.read(2048, 2048).await.unwrap();
        assert_eq!(&second[..952], &[9u8; 952][..]);
        assert!(second[952..].iter().all(|&b| b == 0));
        assert!(image.ahead.is_none());
    }
}
