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
    /// The broker tells which routers use the channel (see
    /// [`Backend::announced`](crate::Backend::announced)): a router moving the channel
    /// away with `moving_keeps_order` waits for those on the old config to be gone.
    pub presence: bool,
    /// What a group receives that was published before the group existed.
    pub new_group_start: NewGroupStart,
}

/// What a consumer group receives that was published before the group existed (before
/// it was provisioned or its first member subscribed). A group provisioned ahead of
/// time ([`BackendChannel::provision`](crate::BackendChannel::provision)) receives
/// everything published after that, on every mode but [`Live`](NewGroupStart::Live).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NewGroupStart {
    /// Everything the channel still retains, from its oldest message (Redis Streams,
    /// JetStream, Kafka with `auto_offset_reset = "earliest"`).
    Retained,
    /// Only what is published once the group exists: provision it before the messages
    /// it must not miss are published (RabbitMQ: the group's queue; Kafka with
    /// `auto_offset_reset = "latest"`). The channel's default group exists from the
    /// channel's first use.
    Provisioned,
    /// What the groups that exist have not all consumed yet (the embedded broker keeps
    /// a message until every group has taken it, or all of them while no group exists).
    Unconsumed,
    /// Only what is published while a member listens: nothing is kept, and a group
    /// cannot be provisioned (fire-and-forget modes).
    Live,
}

impl NewGroupStart {
    /// A short lowercase name, for tables and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            NewGroupStart::Retained => "retained",
            NewGroupStart::Provisioned => "from provisioning",
            NewGroupStart::Unconsumed => "unconsumed",
            NewGroupStart::Live => "live only",
        }
    }
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
        presence: false,
        new_group_start: NewGroupStart::Live,
    };

    /// Named list of the flags, for tables and messages.
    pub fn flags(&self) -> [(&'static str, bool); 11] {
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
            ("presence", self.presence),
        ]
    }
}
