//! Which retry topic a retried record goes to. A record not yet due pauses its
//! partition until it is, so a topic must hold records that fall due in the order they
//! were written: records retried after the same delay. Hence one topic per distinct
//! backoff delay of the group's policy (`C-retry-0` the shortest), not one per attempt:
//! a policy past its `max` retries every time after the same delay, so 10,000 attempts
//! with a 20 ms backoff take one topic.

use std::time::Duration;

use crate::core::RetryPolicy;

/// Most retry topics one group's policy may take; past that the policy is refused.
pub(crate) const MAX_RETRY_TOPICS: usize = 32;

#[derive(Debug)]
pub(crate) struct RetryTopics {
    /// The policy's distinct backoff delays, shortest first: topic `n` is for `delays[n]`.
    delays: Vec<Duration>,
}

impl RetryTopics {
    /// The topics `policy` retries through; an error (naming the policy's fields) if it
    /// has more than `MAX_RETRY_TOPICS` distinct delays.
    pub(crate) fn for_policy(policy: &RetryPolicy) -> Result<Self, String> {
        let mut delays = std::collections::BTreeSet::new();
        // Backoff never shrinks and stops growing at `max`; with jitter each backoff
        // has a few possible waits.
        for attempt in 1..policy.attempts {
            delays.extend(policy.possible_delays(attempt));
            if delays.len() > MAX_RETRY_TOPICS {
                return Err(format!(
                    "retry: the policy has more than {MAX_RETRY_TOPICS} distinct waits \
                     before it reaches retry.max ({:?}), and the Kafka backend keeps one \
                     retry topic per wait (five per backoff with jitter); raise \
                     retry.multiplier or lower retry.max",
                    policy.max
                ));
            }
            if policy.backoff(attempt) >= policy.max {
                break;
            }
        }
        Ok(RetryTopics {
            delays: delays.into_iter().collect(),
        })
    }

    /// How many retry topics the policy takes.
    pub(crate) fn count(&self) -> u32 {
        self.delays.len() as u32
    }

    /// The topic a retry after `delay` goes to: the one of the longest delay not above
    /// it, so a delay the handler chose rather than the policy is never early, and late
    /// at most by the records ahead of it in that topic.
    pub(crate) fn index_for(&self, delay: Duration) -> u32 {
        self.delays
            .partition_point(|&d| d <= delay)
            .saturating_sub(1) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(attempts: u32, initial_ms: u64, multiplier: f64, max_ms: u64) -> RetryPolicy {
        RetryPolicy::new(attempts)
            .initial(Duration::from_millis(initial_ms))
            .multiplier(multiplier)
            .max(Duration::from_millis(max_ms))
    }

    #[test]
    fn one_topic_per_distinct_delay_not_per_attempt() {
        // 2 s, 4 s, 8 s, then 10 s for every later attempt.
        let topics = RetryTopics::for_policy(&policy(10_000, 2000, 2.0, 10_000)).unwrap();
        assert_eq!(topics.count(), 4);
        let p = policy(10_000, 2000, 2.0, 10_000);
        let indexes: Vec<u32> = [1, 2, 3, 4, 5, 9_999]
            .iter()
            .map(|&a| topics.index_for(p.backoff(a)))
            .collect();
        assert_eq!(indexes, vec![0, 1, 2, 3, 3, 3]);
        let constant = RetryTopics::for_policy(&policy(10_000, 20, 2.0, 20)).unwrap();
        assert_eq!(constant.count(), 1);
    }

    #[test]
    fn few_attempts_take_few_topics() {
        assert_eq!(
            RetryTopics::for_policy(&policy(1, 2000, 2.0, 10_000))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(
            RetryTopics::for_policy(&policy(3, 2000, 2.0, 10_000))
                .unwrap()
                .count(),
            2
        );
    }

    #[test]
    fn other_delays_go_to_the_longest_topic_delay_not_above_them() {
        let topics = RetryTopics::for_policy(&policy(5, 1000, 2.0, 8000)).unwrap();
        let ms = |v| topics.index_for(Duration::from_millis(v));
        assert_eq!(
            (ms(0), ms(999), ms(1000), ms(3999), ms(4000), ms(60_000)),
            (0, 0, 0, 1, 2, 3)
        );
    }

    #[test]
    fn a_jittered_policy_has_a_topic_per_level_so_each_holds_one_wait() {
        use crate::core::Jitter;
        // 400 ms then 800 ms, each from five levels; 400 ms is a level of both.
        let p = policy(3, 400, 2.0, 800).jitter(Jitter::Equal);
        let topics = RetryTopics::for_policy(&p).unwrap();
        assert_eq!(topics.count(), 9);
        for attempt in 1..3 {
            for wait in p.possible_delays(attempt) {
                let i = topics.index_for(wait) as usize;
                assert_eq!(topics.delays[i], wait, "a wait's own topic");
            }
        }
        // Default backoff (2, 4, 8, 10 s) with jitter: 5 levels each, shared ones once.
        let p = RetryPolicy::new(10).jitter(Jitter::Full);
        assert!(RetryTopics::for_policy(&p).unwrap().count() <= 20);
    }

    #[test]
    fn a_policy_with_too_many_delays_is_refused_naming_its_fields() {
        let err = RetryTopics::for_policy(&policy(10_000, 1, 1.01, 3_600_000)).unwrap_err();
        assert!(
            err.contains("retry.multiplier") && err.contains("retry.max"),
            "{err}"
        );
    }

    #[test]
    fn a_channels_retry_topics_are_told_from_other_topics() {
        use super::super::names::Topics;
        assert!(Topics::is_retry_of("orders-retry-0", "orders"));
        assert!(Topics::is_retry_of("orders-retry-31", "orders"));
        assert!(!Topics::is_retry_of("orders-retry-", "orders"));
        assert!(!Topics::is_retry_of("orders-retry-x", "orders"));
        assert!(!Topics::is_retry_of("orders-eu-retry-0", "orders"));
        assert!(!Topics::is_retry_of("orders-retry-retry-0", "orders"));
    }
}
