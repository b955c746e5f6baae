//! Attempts counted apart from the server's delivery count. JetStream counts every
//! delivery, including one no handler saw: a message sent to a member's pull request
//! just as the member closes is either given back unhandled or, if the client had
//! already dropped the subscription, lost on the wire and sent again after `ack_wait`.
//! Counting those as attempts dead-letters early. So each channel keeps, per group and
//! in a stream of its own, how many attempts each message has had; the count is
//! written when a redelivered message is handed to a handler (a member that dies
//! during the attempt has still made it), when a first attempt fails, and taken back
//! when a handed-out message is given back unhandled. A first delivery, the common
//! case, costs nothing here: its attempt is 1.

use std::sync::Arc;

use async_nats::jetstream::stream::{Config, LastRawMessageErrorKind, StorageType, Stream};

use super::codec::stream_name;
use super::error::from_nats;
use super::connection::Connection;
use crate::core::Result;

/// Suffix of the name of a channel's attempt-count stream.
const ATTEMPTS: &str = "_ATTEMPTS";

pub(crate) struct AttemptCounts {
    connection: Arc<Connection>,
    stream: Stream,
    /// `anybroker-attempts.<stream>.<consumer>.`: the subjects of one group's counts,
    /// each followed by a stream sequence. The stream name (no dots) keeps one channel's
    /// subjects apart from another's whose name extends it.
    prefix: String,
}

impl AttemptCounts {
    pub(crate) async fn open(connection: &Arc<Connection>, channel: &str, consumer: &str) -> Result<Self> {
        let c = &connection.config;
        let name = stream_name(&c.stream_prefix, channel, ATTEMPTS);
        let subjects = format!("anybroker-attempts.{name}.>");
        let config = Config {
            name: name.clone(),
            subjects: vec![subjects],
            // One count per message: a new count replaces the last.
            max_messages_per_subject: 1,
            // Counts live no longer than the messages they are about.
            max_age: c.max_age,
            storage: StorageType::File,
            ..Default::default()
        };
        let stream = connection.get_or_create_stream(&config, channel).await?;
        Ok(AttemptCounts {
            connection: connection.clone(),
            stream,
            prefix: format!("anybroker-attempts.{name}.{consumer}."),
        })
    }

    fn subject(&self, stream_sequence: u64) -> String {
        format!("{}{stream_sequence}", self.prefix)
    }

    /// The attempts the message at `stream_sequence` has had; `None` if that could not
    /// be read (logged).
    pub(crate) async fn of(&self, stream_sequence: u64) -> Option<u32> {
        match self
            .stream
            .get_last_raw_message_by_subject(&self.subject(stream_sequence))
            .await
        {
            Ok(m) => Some(
                std::str::from_utf8(&m.payload)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            ),
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Some(0),
            Err(e) => {
                tracing::warn!(error = %e, "reading a message's attempt count failed");
                None
            }
        }
    }

    /// Sets the attempts the message at `stream_sequence` has had.
    pub(crate) async fn record(&self, stream_sequence: u64, attempts: u32) -> Result<()> {
        let ack = self
            .connection
            .js
            .publish(self.subject(stream_sequence), attempts.to_string().into())
            .await
            .map_err(|e| from_nats(e, "count attempt"))?;
        ack.await
            .map(drop)
            .map_err(|e| from_nats(e, "count attempt"))
    }

    /// Drops the count of a message settled for good.
    pub(crate) async fn forget(&self, stream_sequence: u64) {
        if let Err(e) = self
            .stream
            .purge()
            .filter(self.subject(stream_sequence))
            .await
        {
            tracing::debug!(error = %e, "dropping an attempt count failed; it expires with the stream's max_age");
        }
    }
}
