//! Reading the gateway's Prometheus text exposition in a test: one sample by its exact series
//! (`name{label="value",…}` as the gateway prints it), telling a series that is absent (the
//! gateway does not export it, perhaps not yet) from one at zero. The gateway pre-creates its
//! label sets at zero, so an absent series is worth a failure message of its own.
//!
//! Also the one figure the gateway cannot report about itself honestly: its resident memory, as
//! the kernel sees it, sampled while a test runs ([`RssSampler`]).
//!
//! What it does not do: parse histograms into buckets or reorder labels (series are matched as
//! printed).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::process::{poll_until, rss_kib_of, Gateway};

/// One scrape of `/metrics`.
#[derive(Debug, Clone)]
pub struct Metrics {
    text: String,
}

impl Metrics {
    pub fn parse(text: impl Into<String>) -> Metrics {
        Metrics { text: text.into() }
    }

    /// The value of `series` (e.g. `tether_auth_failures_total{reason="not_registered"}`), or
    /// `None` when the scrape has no such line.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
        })
    }

    /// The value of `series`; panics, listing the series of the same metric that do exist, when
    /// it is absent.
    pub fn value(&self, series: &str) -> f64 {
        self.get(series).unwrap_or_else(|| panic!("{}", self.absent(series)))
    }

    /// A message saying that `series` is missing and what the scrape has of that metric.
    pub fn absent(&self, series: &str) -> String {
        let name = series.split('{').next().unwrap_or(series);
        let family: Vec<&str> = self
            .text
            .lines()
            .filter(|l| {
                !l.starts_with('#') && (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            })
            .collect();
        if family.is_empty() {
            format!("the gateway exports no metric {name} (looked for {series})")
        } else {
            format!("the gateway exports {name}, but not the series {series}; it has:\n  {}", family.join("\n  "))
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

impl Gateway {
    /// `GET /metrics`, parsed.
    pub fn metrics(&self) -> Metrics {
        Metrics::parse(self.metrics_text())
    }

    /// Waits until `series` is at least `min`; panics after `timeout` with the last value seen
    /// (or with the series of that metric that exist, when it is absent).
    pub fn wait_for_metric_at_least(&self, series: &str, min: f64, timeout: Duration) -> f64 {
        let mut last = self.metrics();
        let reached = poll_until(timeout, || {
            last = self.metrics();
            last.get(series).is_some_and(|v| v >= min)
        });
        match last.get(series) {
            Some(value) if reached || value >= min => value,
            Some(value) => panic!("{series} stayed at {value} for {timeout:?}; expected at least {min}"),
            None => panic!("{} (waited {timeout:?} for it to reach {min})", last.absent(series)),
        }
    }

    /// Waits until `series` equals `value`; panics after `timeout` like
    /// [`Gateway::wait_for_metric_at_least`].
    pub fn wait_for_metric(&self, series: &str, value: f64, timeout: Duration) {
        let mut last = self.metrics();
        let reached = poll_until(timeout, || {
            last = self.metrics();
            last.get(series) == Some(value)
        });
        if !reached {
            match last.get(series) {
                Some(seen) => panic!("{series} was still {seen} after {timeout:?}; expected {value}"),
                None => panic!("{} (waited {timeout:?} for it to be {value})", last.absent(series)),
            }
        }
    }
}

/// Samples a process's RSS every `interval` on a thread of its own, keeping the peak, until
/// [`RssSampler::stop`].
#[derive(Debug)]
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32, interval: Duration) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib_of(pid).unwrap_or(0)));
        let thread = {
            let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match rss_kib_of(pid) {
                        Some(kib) => peak.fetch_max(kib, Ordering::SeqCst),
                        None => return,
                    };
                    std::thread::sleep(interval);
                }
            })
        };
        RssSampler { stop, peak, thread: Some(thread) }
    }

    /// The peak so far, in KiB.
    pub fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// Stops sampling; returns the peak in KiB.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak_kib()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// KiB as MiB, for figures.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_found_by_its_exact_labels_and_absent_is_not_zero() {
        let m = Metrics::parse(
            "# HELP x\ntether_a_total{reason=\"one\"} 3\ntether_a_total{reason=\"one_more\"} 5\ntether_b 0\n",
        );
        assert_eq!(m.get("tether_a_total{reason=\"one\"}"), Some(3.0));
        assert_eq!(m.get("tether_a_total{reason=\"one_more\"}"), Some(5.0));
        assert_eq!(m.get("tether_b"), Some(0.0));
        assert_eq!(m.get("tether_a_total{reason=\"two\"}"), None);
        let why = m.absent("tether_a_total{reason=\"two\"}");
        assert!(why.contains("reason=\"one_more\"") && why.contains("not the series"), "{why}");
        assert!(m.absent("tether_c").contains("no metric tether_c"));
    }
}
