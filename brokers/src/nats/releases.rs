//! Messages given back, counted apart from attempts. JetStream's delivery count is the
//! attempt number, but a member that gives back a message it never handled (it is
//! closing) raises that count too. Each channel keeps, in a stream of its own, how often
//! each message was given back per group; a delivery's attempt is its delivery count
//! less that. Only messages delivered more than once are looked up: the first delivery
//! of a message costs nothing here.

use async_nats::jetstream::stream::{Config, LastRawMessageErrorKind, StorageType, Stream};

use super::codec::stream_name;
use super::error::from_nats;
use super::NatsBroker;
use crate::core::Result;

/// Suffix of the name of a channel's release-count stream.
const RELEASES: &str = "_RELEASES";

pub(crate) struct ReleaseCounts {
    broker: NatsBroker,
    stream: Stream,
    /// `anybroker-releases.<stream>.<consumer>.`: the subjects of one group's counts,
    /// each followed by a stream sequence. The stream name (no dots) keeps one channel's
    /// subjects apart from another's whose name extends it.
    prefix: String,
}

impl ReleaseCounts {
    pub(crate) async fn open(broker: &NatsBroker, channel: &str, consumer: &str) -> Result<Self> {
        let c = &broker.inner.config;
        let name = stream_name(&c.stream_prefix, channel, RELEASES);
        let subjects = format!("anybroker-releases.{name}.>");
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
        let stream = broker.get_or_create_stream(&config, channel).await?;
        Ok(ReleaseCounts {
            broker: broker.clone(),
            stream,
            prefix: format!("anybroker-releases.{name}.{consumer}."),
        })
    }

    fn subject(&self, stream_sequence: u64) -> String {
        format!("{}{stream_sequence}", self.prefix)
    }

    /// How often the message at `stream_sequence` was given back. A failed lookup
    /// counts none (the attempt then reads high, never low) and is logged.
    pub(crate) async fn of(&self, stream_sequence: u64) -> u32 {
        match self
            .stream
            .get_last_raw_message_by_subject(&self.subject(stream_sequence))
            .await
        {
            Ok(m) => std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => 0,
            Err(e) => {
                tracing::warn!(error = %e, "reading a message's release count failed; its attempt may read high");
                0
            }
        }
    }

    /// Records one more release of a message given back `before` times already.
    pub(crate) async fn record(&self, stream_sequence: u64, before: u32) -> Result<()> {
        let count = (before + 1).to_string();
        let ack = self
            .broker
            .inner
            .js
            .publish(self.subject(stream_sequence), count.into())
            .await
            .map_err(|e| from_nats(e, "release"))?;
        ack.await.map(drop).map_err(|e| from_nats(e, "release"))
    }

    /// Drops the count of a message settled for good.
    pub(crate) async fn forget(&self, stream_sequence: u64) {
        if let Err(e) = self
            .stream
            .purge()
            .filter(self.subject(stream_sequence))
            .await
        {
            tracing::debug!(error = %e, "dropping a release count failed; it expires with the stream's max_age");
        }
    }
}
