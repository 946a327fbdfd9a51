//! The `[health]` section of the gateway's configuration: the thresholds of the health meter,
//! each with its documented default (`docs/health.md`), and [`HealthRules::validate`].
//!
//! Every threshold counts whole days (or heartbeats, minutes, machines) and `0` turns its rule
//! off; a rule without a threshold (the firewall is off) has a `bool`. A threshold is a strict
//! "older than": signatures exactly 3 days old are still green with `signatures_yellow_days = 3`.
//!
//! What it does not do: read the file (`config` does, and will embed this section), or rate a
//! machine (`health::evaluate`).

use serde::{Deserialize, Serialize};

/// The health meter's rules: the `[health]` section of `tether.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthRules {
    /// The firewall does not filter: red. `false` turns the rule off.
    pub firewall_off_red: bool,
    /// The antivirus' scanning engine is not running: red. `false` turns the rule off.
    pub antivirus_off_red: bool,
    /// Antivirus signatures older than this many days: yellow (0: off).
    pub signatures_yellow_days: u32,
    /// Antivirus signatures older than this many days: red (0: off).
    pub signatures_red_days: u32,
    /// A security update pending for more than this many days: yellow (0: off).
    pub security_updates_yellow_days: u32,
    /// The last full scan older than this many days: yellow (0: off).
    pub scan_yellow_days: u32,
    /// The last full scan found threats it did not clean (remove or quarantine): red. `false`
    /// turns the rule off.
    pub threats_not_cleaned_red: bool,
    /// The last backup older than this many days: yellow (0: off).
    pub backup_yellow_days: u32,
    /// The last backup older than this many days: red (0: off).
    pub backup_red_days: u32,
    /// No report for more than this many heartbeats of the agent: yellow, "stale" (0: off).
    pub stale_heartbeats: u32,
    /// An AMT PC without an agent whose CIRA tunnel is down: yellow ("offline"). `false` turns
    /// the rule off.
    pub amt_offline_yellow: bool,
    /// An AMT PC's tunnel may be down this many minutes before it counts as offline (0: at once;
    /// 720 or more keeps PCs switched off at night green).
    pub amt_offline_grace_minutes: u32,
    /// When at least this many machines of one subscriber merely went stale together (a gateway
    /// outage, a site's network down), their contacts get one summary instead of one alert each
    /// (0: never summarise).
    pub stale_summary_threshold: u32,
}

impl Default for HealthRules {
    fn default() -> Self {
        Self {
            firewall_off_red: true,
            antivirus_off_red: true,
            signatures_yellow_days: 3,
            signatures_red_days: 7,
            security_updates_yellow_days: 7,
            scan_yellow_days: 14,
            threats_not_cleaned_red: true,
            backup_yellow_days: 7,
            backup_red_days: 30,
            stale_heartbeats: 3,
            amt_offline_yellow: true,
            amt_offline_grace_minutes: 0,
            stale_summary_threshold: 5,
        }
    }
}

/// Longest threshold in days accepted (ten years): anything longer is a typo.
const MAX_DAYS: u32 = 3650;

impl HealthRules {
    /// Checks thresholds that contradict each other or cannot be meant. The error names the key
    /// (`health.signatures_red_days is 2; …`).
    pub fn validate(&self) -> Result<(), String> {
        for (key, days) in [
            ("health.signatures_yellow_days", self.signatures_yellow_days),
            ("health.signatures_red_days", self.signatures_red_days),
            ("health.security_updates_yellow_days", self.security_updates_yellow_days),
            ("health.scan_yellow_days", self.scan_yellow_days),
            ("health.backup_yellow_days", self.backup_yellow_days),
            ("health.backup_red_days", self.backup_red_days),
        ] {
            if days > MAX_DAYS {
                return Err(format!("{key} is {days}; at most {MAX_DAYS} days, or 0 to turn the rule off"));
            }
        }
        for (yellow_key, yellow, red_key, red) in [
            (
                "health.signatures_yellow_days",
                self.signatures_yellow_days,
                "health.signatures_red_days",
                self.signatures_red_days,
            ),
            ("health.backup_yellow_days", self.backup_yellow_days, "health.backup_red_days", self.backup_red_days),
        ] {
            if yellow != 0 && red != 0 && red < yellow {
                return Err(format!(
                    "{red_key} is {red}; it must be at least {yellow_key} ({yellow}), or 0 to turn red off"
                ));
            }
        }
        if self.stale_heartbeats > 1000 {
            return Err(format!(
                "health.stale_heartbeats is {}; at most 1000, or 0 to turn the rule off",
                self.stale_heartbeats
            ));
        }
        if self.amt_offline_grace_minutes > MAX_DAYS * 24 * 60 {
            return Err(format!(
                "health.amt_offline_grace_minutes is {}; at most {} (ten years)",
                self.amt_offline_grace_minutes,
                MAX_DAYS * 24 * 60
            ));
        }
        if self.stale_summary_threshold == 1 {
            return Err(
                "health.stale_summary_threshold is 1; a summary needs at least 2 machines, or 0 for none".into()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_documented_ones_and_valid() {
        let rules = HealthRules::default();
        rules.validate().unwrap();
        assert!(rules.firewall_off_red && rules.antivirus_off_red && rules.threats_not_cleaned_red);
        assert_eq!((rules.signatures_yellow_days, rules.signatures_red_days), (3, 7));
        assert_eq!(rules.security_updates_yellow_days, 7);
        assert_eq!(rules.scan_yellow_days, 14);
        assert_eq!((rules.backup_yellow_days, rules.backup_red_days), (7, 30));
        assert_eq!(rules.stale_heartbeats, 3);
        assert!(rules.amt_offline_yellow);
        assert_eq!((rules.amt_offline_grace_minutes, rules.stale_summary_threshold), (0, 5));
    }

    #[test]
    fn a_partial_section_keeps_the_other_defaults_and_unknown_keys_fail() {
        let rules: HealthRules = toml::from_str("signatures_red_days = 10\nfirewall_off_red = false\n").unwrap();
        assert_eq!(rules.signatures_red_days, 10);
        assert!(!rules.firewall_off_red);
        assert_eq!(rules.backup_red_days, 30);
        let err = toml::from_str::<HealthRules>("signature_red_days = 10\n").unwrap_err().to_string();
        assert!(err.contains("signature_red_days"), "{err}");
        let text = toml::to_string(&HealthRules::default()).unwrap();
        assert_eq!(toml::from_str::<HealthRules>(&text).unwrap(), HealthRules::default());
    }

    /// A change to the default rules.
    type Change = fn(&mut HealthRules);

    #[test]
    fn contradicting_or_absurd_thresholds_are_errors_naming_the_key() {
        let cases: [(&str, Change); 6] = [
            ("health.signatures_red_days", |r| r.signatures_red_days = 2),
            ("health.backup_red_days", |r| r.backup_red_days = 6),
            ("health.scan_yellow_days", |r| r.scan_yellow_days = 100_000),
            ("health.stale_heartbeats", |r| r.stale_heartbeats = 5000),
            ("health.amt_offline_grace_minutes", |r| r.amt_offline_grace_minutes = u32::MAX),
            ("health.stale_summary_threshold", |r| r.stale_summary_threshold = 1),
        ];
        for (key, change) in cases {
            let mut rules = HealthRules::default();
            change(&mut rules);
            let err = rules.validate().unwrap_err();
            assert!(err.starts_with(key), "{key}: {err}");
        }
        // Off (0) on either side, or yellow equal to red (straight to red), is fine.
        let mut rules = HealthRules { signatures_yellow_days: 0, backup_red_days: 0, ..HealthRules::default() };
        rules.validate().unwrap();
        rules.signatures_yellow_days = 7;
        rules.validate().unwrap();
    }
}
