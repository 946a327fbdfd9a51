//! Reconnect delays: exponential back-off with jitter, reset after a good connection.
//!
//! Attempt k waits `d = min(min · 2^k, max)` plus up to half of `d` at random; once that would
//! pass `max`, a random delay in `[¾ max, max]`. The jitter spreads a fleet that lost its gateway
//! at the same moment, so that the reconnects do not arrive as one wave.

use std::time::Duration;

use rand::Rng;

/// Bounds of the reconnect delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    pub min: Duration,
    pub max: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self { min: Duration::from_secs(1), max: Duration::from_secs(30) }
    }
}

/// The state of one device's back-off.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: ReconnectPolicy,
    attempt: u32,
}

impl Backoff {
    pub fn new(policy: ReconnectPolicy) -> Self {
        let max = policy.max.max(policy.min);
        Self { policy: ReconnectPolicy { min: policy.min, max }, attempt: 0 }
    }

    /// Starts over from `min` (after a connection that got established).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    pub fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let ReconnectPolicy { min, max } = self.policy;
        let base = min.saturating_mul(1u32 << self.attempt.min(20)).min(max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = rng.random_range(Duration::ZERO..=base / 2);
        let delay = base + jitter;
        if delay <= max {
            delay
        } else {
            rng.random_range((max * 3 / 4).max(min)..=max)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_within_bounds_and_resets() {
        let policy = ReconnectPolicy { min: Duration::from_secs(1), max: Duration::from_secs(30) };
        let mut backoff = Backoff::new(policy);
        let mut previous_base = Duration::ZERO;
        for k in 0..12 {
            let delay = backoff.next_delay();
            assert!(delay >= policy.min && delay <= policy.max, "attempt {k}: {delay:?}");
            let base = (policy.min * (1 << k)).min(policy.max);
            assert!(delay >= base.min(policy.max * 3 / 4), "attempt {k}: {delay:?} below {base:?}");
            assert!(base >= previous_base);
            previous_base = base;
        }
        backoff.reset();
        let delay = backoff.next_delay();
        assert!(delay >= Duration::from_secs(1) && delay <= Duration::from_millis(1500), "{delay:?}");
    }

    #[test]
    fn min_above_max_is_clamped() {
        let mut backoff = Backoff::new(ReconnectPolicy { min: Duration::from_secs(5), max: Duration::from_secs(1) });
        for _ in 0..5 {
            let delay = backoff.next_delay();
            assert!(delay >= Duration::from_secs(5) && delay <= Duration::from_millis(7500), "{delay:?}");
        }
    }
}
