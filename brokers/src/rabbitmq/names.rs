//! The wire names of one channel: queues and routing keys, made from its name.

/// The queue and routing-key names of one channel.
pub(crate) struct Names;

impl Names {
    pub(crate) fn group_queue(channel: &str, group: &str) -> String {
        format!("{channel}:{group}")
    }
    pub(crate) fn retry_queue(channel: &str, group: &str, delay_ms: u64) -> String {
        format!("{}{delay_ms}", Self::retry_queue_prefix(channel, group))
    }
    pub(crate) fn retry_queue_prefix(channel: &str, group: &str) -> String {
        format!("{channel}:{group}:retry:")
    }
    pub(crate) fn dead_letters(channel: &str) -> String {
        format!("{channel}.dlq")
    }
    pub(crate) fn delay_queue(channel: &str, delay_ms: u64) -> String {
        format!("{}{delay_ms}", Self::delay_queue_prefix(channel))
    }
    pub(crate) fn delay_queue_prefix(channel: &str) -> String {
        format!("{channel}.delay.")
    }
    pub(crate) fn presence(channel: &str) -> String {
        format!("{channel}.presence")
    }
    pub(crate) fn rpc(channel: &str) -> String {
        format!("{channel}.rpc")
    }
    pub(crate) fn delayed_exchange(exchange: &str) -> String {
        format!("{exchange}.delayed")
    }
    pub(crate) fn unroutable(exchange: &str) -> String {
        format!("{exchange}.unroutable")
    }
}
