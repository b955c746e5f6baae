//! Retry policy: how often and how long to wait before a failed message comes back.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Attempts and exponential backoff of a channel. The default is 3 attempts, waiting
/// 2 s, then ×2 each time, at most 10 s, without jitter.
///
/// ```toml
/// [channels."alarm.to.log"]
/// retry = { attempts = 3, initial = "2s", multiplier = 2.0, max = "10s", jitter = "equal" }
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
    /// How each wait is spread below its backoff, so many consumers that failed at once
    /// do not all retry at once. Default [`Jitter::None`].
    pub jitter: Jitter,
}

/// How a retry's wait is drawn from its backoff `b` (see [`RetryPolicy::delay`]). The
/// wait is one of five evenly spaced levels of its range, picked at random: brokers
/// that keep a queue or topic per distinct wait (RabbitMQ, Kafka) keep five per
/// backoff, not one per millisecond, and a crowd that failed together comes back in
/// five waves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Jitter {
    /// Exactly `b`.
    #[default]
    None,
    /// From 0 to `b` (0, b/4, b/2, 3b/4, b): the widest spread.
    Full,
    /// From `b / 2` to `b` (b/2, 5b/8, 3b/4, 7b/8, b): spread, and never much shorter
    /// than the backoff.
    Equal,
}

/// Levels of a jittered wait's range, both ends included.
const JITTER_LEVELS: u32 = 5;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            initial: Duration::from_secs(2),
            multiplier: 2.0,
            max: Duration::from_secs(10),
            jitter: Jitter::None,
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

    /// Sets the jitter.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
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

    /// The wait before the next attempt after attempt `attempt` failed: the
    /// [`backoff`](Self::backoff) `b` itself, or with jitter one of the levels of
    /// `[0, b]` (full) or `[b/2, b]` (equal), picked at random. Never longer than `b`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let level = (random_fraction() * f64::from(JITTER_LEVELS)) as u32;
        self.level(attempt, level.min(JITTER_LEVELS - 1))
    }

    /// Every wait [`delay`](Self::delay) can return after attempt `attempt`, shortest
    /// first.
    pub fn possible_delays(&self, attempt: u32) -> Vec<Duration> {
        let levels = match self.jitter {
            Jitter::None => 1,
            _ => JITTER_LEVELS,
        };
        let mut delays: Vec<Duration> = (0..levels).map(|l| self.level(attempt, l)).collect();
        delays.dedup();
        delays
    }

    /// Level `level` (0 = shortest) of the jittered range after attempt `attempt`.
    fn level(&self, attempt: u32, level: u32) -> Duration {
        let b = self.backoff(attempt);
        let step = JITTER_LEVELS - 1;
        match self.jitter {
            Jitter::None => b,
            Jitter::Full => b * level / step,
            Jitter::Equal => b / 2 + (b / 2) * level / step,
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

/// A random number in `[0, 1)`: a per-thread SplitMix64 sequence seeded from the
/// operating system's randomness (see `message_id`). Jitter needs spread, not secrecy.
fn random_fraction() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(super::message_id::random_pair().0);
    }
    let mut z = STATE.with(|s| {
        let next = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(next);
        next
    });
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // The top 53 bits: every value is an exact f64 below 1.
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jittered_waits_stay_within_their_bounds_and_spread() {
        let base = RetryPolicy::default();
        for (jitter, low) in [(Jitter::Full, 0.0), (Jitter::Equal, 0.5)] {
            let p = base.jitter(jitter);
            for attempt in 1..=4 {
                let b = p.backoff(attempt);
                let levels = p.possible_delays(attempt);
                assert_eq!(levels.len(), 5, "{jitter:?}");
                assert_eq!(levels[0], b.mul_f64(low), "{jitter:?}");
                assert_eq!(levels[4], b, "{jitter:?}");
                let mut drawn: Vec<Duration> = (0..1000).map(|_| p.delay(attempt)).collect();
                assert!(drawn.iter().all(|w| levels.contains(w)), "{jitter:?}");
                drawn.sort();
                drawn.dedup();
                // 1,000 draws over five levels: every level drawn.
                assert_eq!(drawn, levels, "{jitter:?}");
            }
        }
        assert_eq!(base.possible_delays(1), vec![base.backoff(1)]);
        assert_eq!(
            base.delay(2),
            base.backoff(2),
            "no jitter: the backoff itself"
        );
        let parsed: RetryPolicy = serde_json::from_str(r#"{"jitter": "equal"}"#).unwrap();
        assert_eq!(parsed.jitter, Jitter::Equal);
    }

    #[test]
    fn default_backoff_is_2_4_8_then_capped_at_10() {
        let p = RetryPolicy::default();
        let waits: Vec<_> = (1..=4).map(|a| p.backoff(a).as_secs()).collect();
        assert_eq!(waits, vec![2, 4, 8, 10]);
        assert!(p.allows_retry_after(2));
        assert!(!p.allows_retry_after(3));
    }
}
