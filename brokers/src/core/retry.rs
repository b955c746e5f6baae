//! Retry policy: how often and how long to wait before a failed message comes back.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Attempts and exponential backoff of a channel. The default is 3 attempts, waiting
/// 2 s, then ×2 each time, at most 10 s.
///
/// ```toml
/// [channels."alarm.to.log"]
/// retry = { attempts = 3, initial = "2s", multiplier = 2.0, max = "10s" }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Deliveries in all, the first included (1 means no retry). Default 3.
    pub attempts: u32,
    /// Wait before the second attempt. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Factor applied to the wait after each further failure. Default 2.0.
    pub multiplier: f64,
    /// Upper bound of the wait. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            initial: Duration::from_secs(2),
            multiplier: 2.0,
            max: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// A policy with `attempts` deliveries and the default backoff.
    pub fn new(attempts: u32) -> Self {
        RetryPolicy {
            attempts,
            ..Default::default()
        }
    }

    /// Sets the first wait.
    pub fn initial(mut self, initial: Duration) -> Self {
        self.initial = initial;
        self
    }

    /// Sets the multiplier.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Sets the maximum wait.
    pub fn max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// Whether a message whose attempt number `attempt` (1-based) failed gets another.
    pub fn allows_retry_after(&self, attempt: u32) -> bool {
        attempt < self.attempts
    }

    /// The wait after attempt `attempt` (1-based) failed:
    /// `min(initial × multiplier^(attempt-1), max)`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs.max(0.0))
        }
    }

    /// Checks the values make sense; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.attempts == 0 {
            return Err("retry.attempts must be at least 1 (1 = no retry)".into());
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(format!(
                "retry.multiplier must be a number >= 1.0, got {}",
                self.multiplier
            ));
        }
        if self.max < self.initial {
            return Err("retry.max must not be shorter than retry.initial".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_backoff_is_2_4_8_then_capped_at_10() {
        let p = RetryPolicy::default();
        let waits: Vec<_> = (1..=4).map(|a| p.backoff(a).as_secs()).collect();
        assert_eq!(waits, vec![2, 4, 8, 10]);
        assert!(p.allows_retry_after(2));
        assert!(!p.allows_retry_after(3));
    }
}
