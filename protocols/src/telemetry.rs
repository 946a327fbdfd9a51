//! Support parameters: what an agent reports about its PC, shared by the agent (which collects
//! them) and the gateway (which stores them and rates them on the health meter).
//!
//! Every parameter is a [`Reading`]: a value, or "unknown" with the reason the collector could not
//! tell (a file it could not read, a tool that is not installed). A collector never guesses, and the
//! health meter never turns a machine red on an unknown.
//!
//! Times are Unix seconds (UTC). Text fields are bounded by [`MAX_TEXT_LEN`] when decoded.
//!
//! The wire encoding of a [`Report`] lives beside the types (see [`Report::encode`] and
//! [`decode_report`]): a sequence of tagged parameters, so that an older gateway skips the
//! parameters a newer agent adds.

/// Longest text (a product name, an OS version, an "unknown" reason) accepted when decoding.
pub const MAX_TEXT_LEN: usize = 512;

/// Unix time in seconds (UTC).
pub type UnixTime = i64;

/// One support parameter: its value, or why it is not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading<T> {
    Value(T),
    /// The collector could not tell; the text says why ("clamd is not installed",
    /// "/var/log/apt/history.log: permission denied").
    Unknown(String),
}

impl<T> Reading<T> {
    pub fn unknown(reason: impl Into<String>) -> Self {
        Reading::Unknown(reason.into())
    }

    pub fn value(&self) -> Option<&T> {
        match self {
            Reading::Value(value) => Some(value),
            Reading::Unknown(_) => None,
        }
    }
}

/// Which firewall the collector read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FirewallBackend {
    Nftables = 1,
    Iptables = 2,
    /// Windows Security Center's firewall product (or Windows Defender Firewall).
    WindowsSecurityCenter = 3,
}

/// The host firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firewall {
    pub backend: FirewallBackend,
    /// Whether it filters: an input chain (or profile) with a drop/reject policy or filtering rules.
    pub active: bool,
    /// Filtering rules counted in the ruleset (0 when off).
    pub rules: u32,
    /// Whether the input hook's default policy drops or rejects.
    pub default_deny: bool,
}

/// The antivirus product and its processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Antivirus {
    /// "ClamAV", "Microsoft Defender Antivirus", …
    pub product: String,
    /// The scanning engine (clamd, real-time protection) is running.
    pub running: bool,
    /// The signature updater (freshclam) is running or scheduled.
    pub updater_running: bool,
    /// The signature database's own date (ClamAV: the header of daily.cvd/cld), when known.
    pub signatures_at: Option<UnixTime>,
}

/// The last full scan the scanner logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub finished_at: UnixTime,
    /// Infected files (threats) the scan found.
    pub threats_found: u32,
    /// Of those, how many were removed or quarantined.
    pub threats_cleaned: u32,
}

/// Operating-system updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updates {
    /// Upgradable packages (all origins).
    pub pending: u32,
    /// Of those, from a security origin.
    pub security_pending: u32,
    /// When the agent first saw a security update pending that is still pending (the oldest).
    pub security_pending_since: Option<UnixTime>,
    /// The last successful update run (apt's history), when known.
    pub last_success: Option<UnixTime>,
}

/// The last backup snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub last_snapshot: UnixTime,
}

/// Free space on the system volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk {
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// A telemetry report's support parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub firewall: Reading<Firewall>,
    pub antivirus: Reading<Antivirus>,
    pub last_full_scan: Reading<Scan>,
    pub updates: Reading<Updates>,
    pub backup: Reading<Backup>,
    /// "Debian GNU/Linux 12 (bookworm)", "Windows 11 Pro 23H2".
    pub os_version: Reading<String>,
    pub boot_time: Reading<UnixTime>,
    pub disk: Reading<Disk>,
    /// The reporting agent's version ("0.1.0").
    pub agent_version: String,
}
