//! What a backend and mode guarantee. The router asks these instead of knowing brokers.

/// The guarantees of one backend in one mode. Asking a backend for something it
/// lacks returns [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Publish returns only after the broker accepted the message, and messages wait
    /// for consumers that are not running (a restarted consumer gets them).
    pub persistent: bool,
    /// Messages survive a restart of the broker process itself.
    pub survives_broker_restart: bool,
    /// Handlers in one group share messages; each group receives all of them.
    pub groups: bool,
    /// Messages with the same key are handled in publish order by a group member,
    /// while it handles other keys concurrently.
    pub ordering_by_key: bool,
    /// Same-key order also holds when a group has several members (and across retries).
    pub ordering_across_members: bool,
    /// Failed messages are redelivered after a backoff.
    pub retry: bool,
    /// Failed messages go to a dead-letter destination that can be read and replayed.
    pub dead_letters: bool,
    /// `publish_delayed` delivers no earlier than the delay.
    pub delay: bool,
    /// The broker itself counts redeliveries.
    pub native_redelivery_count: bool,
    /// Request/reply.
    pub request_reply: bool,
}

impl Capabilities {
    /// Nothing guaranteed: the base to build a mode's capabilities from.
    pub const NONE: Capabilities = Capabilities {
        persistent: false,
        survives_broker_restart: false,
        groups: false,
        ordering_by_key: false,
        ordering_across_members: false,
        retry: false,
        dead_letters: false,
        delay: false,
        native_redelivery_count: false,
        request_reply: false,
    };

    /// Named list of the flags, for tables and messages.
    pub fn flags(&self) -> [(&'static str, bool); 10] {
        [
            ("persistent", self.persistent),
            ("survives-broker-restart", self.survives_broker_restart),
            ("groups", self.groups),
            ("ordering-by-key", self.ordering_by_key),
            ("ordering-across-members", self.ordering_across_members),
            ("retry", self.retry),
            ("dead-letters", self.dead_letters),
            ("delay", self.delay),
            ("native-redelivery-count", self.native_redelivery_count),
            ("request-reply", self.request_reply),
        ]
    }
}
