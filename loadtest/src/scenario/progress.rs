//! Progress on stderr: an indicatif bar when stderr is a terminal, else a log line every few
//! seconds (and at every change of phase), so that a CI log shows a long run moving.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often the log lines come without a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last_log: Option<Instant>,
    phase: String,
}

impl Progress {
    /// A bar on a terminal, log lines elsewhere.
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            if let Ok(style) =
                ProgressStyle::with_template("{elapsed_precise} {prefix} [{bar:30.cyan/blue}] {pos}/{len} {wide_msg}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Self { bar, started: Instant::now(), last_log: None, phase: String::new() }
    }

    /// The current phase (`ramp`, `hold`, `storm`, …) at `pos` of `len`, with a message.
    pub fn set(&mut self, phase: &str, pos: u64, len: u64, message: impl FnOnce() -> String) {
        let new_phase = phase != self.phase;
        if new_phase {
            self.phase = phase.to_owned();
        }
        match &self.bar {
            Some(bar) => {
                if new_phase {
                    bar.set_prefix(phase.to_owned());
                }
                bar.set_length(len);
                bar.set_position(pos);
                bar.set_message(message());
            }
            None => {
                let due = self.last_log.is_none_or(|at| at.elapsed() >= LOG_EVERY);
                if new_phase || due {
                    eprintln!("[{:7.1}s] {phase}: {pos}/{len} {}", self.started.elapsed().as_secs_f64(), message());
                    self.last_log = Some(Instant::now());
                }
            }
        }
    }

    /// A line on stderr that does not tear the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}
