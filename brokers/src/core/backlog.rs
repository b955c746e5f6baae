//! How far a consumer group is behind on a channel.

/// What a group of a channel has not finished, as its broker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Backlog {
    /// Messages not yet handed to a member: not yet delivered (Redis group lag,
    /// JetStream pending, Kafka high watermark minus the committed offset on the
    /// channel's, delay and retry topics, the RabbitMQ queue's ready messages), and on
    /// Redis and the embedded broker also retries waiting for their backoff and delayed
    /// messages not yet due.
    pub waiting: u64,
    /// Messages handed to a member and not yet settled, where the broker tells it
    /// (Redis pending entries, JetStream ack-pending, the embedded broker's); `None`
    /// where it does not (RabbitMQ's AMQP, Kafka).
    pub in_flight: Option<u64>,
}

impl Backlog {
    /// A backlog of `waiting` messages and `in_flight` being handled.
    pub fn new(waiting: u64, in_flight: Option<u64>) -> Self {
        Backlog { waiting, in_flight }
    }

    /// Every message it counts: waiting, plus in flight where the broker tells.
    pub fn total(&self) -> u64 {
        self.waiting + self.in_flight.unwrap_or(0)
    }

    /// Nothing left: none waiting and none in flight.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }
}
