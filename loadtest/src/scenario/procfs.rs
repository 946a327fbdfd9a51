//! The gateway's resident memory and CPU time, and the kernel's slab, from /proc (Linux).
//!
//! CPU time is `utime + stime` of /proc/PID/stat in clock ticks, divided by the ticks per second
//! the system reports (`sysconf(_SC_CLK_TCK)` through rustix, not an assumed 100 Hz).

use serde::Serialize;

use super::ScenarioError;

/// Reads one process's figures.
#[derive(Debug, Clone, Copy)]
pub struct GatewayProbe {
    pub pid: u32,
    ticks_per_second: u64,
}

/// The gateway's figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub cpu_seconds: f64,
}

impl GatewayProbe {
    /// A probe of `pid`; fails when /proc has no such process.
    pub fn new(pid: u32) -> Result<Self, ScenarioError> {
        let probe = Self { pid, ticks_per_second: rustix::param::clock_ticks_per_second().max(1) };
        probe.sample().ok_or_else(|| ScenarioError::Gateway { pid, detail: "no such process in /proc".into() })?;
        Ok(probe)
    }

    /// RSS and CPU time now; `None` once the process is gone.
    pub fn sample(&self) -> Option<ProcSample> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        let ticks = cpu_ticks(&stat)?;
        Some(ProcSample {
            rss_kib: kib_field(&status, "VmRSS:")?,
            cpu_seconds: ticks as f64 / self.ticks_per_second as f64,
        })
    }
}

/// `Slab:` of /proc/meminfo (kernel slab, sockets' memory among it), in KiB.
pub fn slab_kib() -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "Slab:")
}

/// The value of a `Name:   123 kB` line.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `utime + stime` (fields 14 and 15) of a /proc/PID/stat line. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name() {
        let stat = "4242 (tether (gw) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 150 25 0 0 20 0 9 0 100 1000 200";
        assert_eq!(cpu_ticks(stat), Some(175));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn kib_fields_and_our_own_process() {
        assert_eq!(kib_field("VmPeak:\t  100 kB\nVmRSS:\t  2048 kB\n", "VmRSS:"), Some(2048));
        assert_eq!(kib_field("Slab:  77 kB\n", "VmRSS:"), None);
        let probe = GatewayProbe::new(std::process::id()).expect("this process");
        let sample = probe.sample().expect("a sample");
        assert!(sample.rss_kib > 0 && sample.cpu_seconds >= 0.0, "{sample:?}");
        assert!(slab_kib().is_some_and(|kib| kib > 0));
        assert!(GatewayProbe::new(u32::MAX).is_err());
    }
}
