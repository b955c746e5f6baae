//! The wire names of one channel: topics and groups, made from its name.

/// The topic names of one channel.
pub(crate) struct Topics;

impl Topics {
    pub(crate) fn retry(channel: &str, n: u32) -> String {
        format!("{channel}-retry-{n}")
    }
    /// Whether `topic` is one of `channel`'s retry topics.
    pub(crate) fn is_retry_of(topic: &str, channel: &str) -> bool {
        topic
            .strip_prefix(channel)
            .and_then(|rest| rest.strip_prefix("-retry-"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
    pub(crate) fn dead_letters(channel: &str) -> String {
        format!("{channel}-dlt")
    }
    /// Where routers say they use the channel (`presence`).
    pub(crate) fn presence(channel: &str) -> String {
        format!("{channel}-presence")
    }
    pub(crate) fn delay(channel: &str) -> String {
        format!("{channel}-delay")
    }
    /// The Kafka consumer group of anybroker group `group` on `channel`: one per
    /// channel, so members joining on one channel never rebalance another channel's
    /// consumers (a Kafka group spans every topic its members read).
    pub(crate) fn group_id(group: &str, channel: &str) -> String {
        format!("{group}.{channel}")
    }
    /// The group whose committed offset on `C-dlt` marks what was replayed.
    pub(crate) fn replay_group(channel: &str) -> String {
        format!("anybroker-dlt-{channel}")
    }
}
