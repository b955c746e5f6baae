//! The wire names of one channel: keys, made from its name.

/// The Redis key names of one channel.
pub(crate) struct Keys;

impl Keys {
    pub(crate) fn dead_letters(channel: &str) -> String {
        format!("{channel}:dlt")
    }
    pub(crate) fn delayed(channel: &str) -> String {
        format!("{channel}:delayed")
    }
    pub(crate) fn delayed_message(channel: &str, id: &str) -> String {
        format!("{channel}:delayed:{id}")
    }
    pub(crate) fn retry_schedule(channel: &str, group: &str) -> String {
        format!("{channel}:retry:{group}")
    }
    pub(crate) fn retry_message(channel: &str, group: &str, id: &str) -> String {
        format!("{channel}:retry:{group}:m:{id}")
    }
    pub(crate) fn retry_stream(channel: &str, group: &str) -> String {
        format!("{channel}:retry:{group}:s")
    }
    /// A sorted set of the routers using the channel: member a router's instance id,
    /// score when its presence expires (Unix milliseconds).
    pub(crate) fn presence(channel: &str) -> String {
        format!("{channel}:presence")
    }
}
