//! Dead letters as typed records: why and when a message failed, and the message.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anybroker_brokers::{header, DeadLetterReason, Envelope, Error, ErrorKind, MessageId, Result};
use bytes::Bytes;
use serde::de::DeserializeOwned;

/// A dead letter of a channel carrying `M`: why it failed, after how many attempts and
/// when, and the message itself, decodable as `M` ([`message`](Self::message)) or raw
/// ([`payload`](Self::payload)), e.g. when it is dead because it does not decode.
#[non_exhaustive]
pub struct DeadLetterRecord<M> {
    /// The message id: the same as when it was published, and when it is replayed.
    pub id: MessageId,
    /// The channel the message was published on.
    pub channel: Arc<str>,
    /// Why it was dead-lettered; `None` for a dead letter that does not say (written
    /// by another program).
    pub reason: Option<DeadLetterReason>,
    /// Attempts made before it was dead-lettered.
    pub attempts: u32,
    /// The error text of the last attempt, if any.
    pub error: Option<String>,
    /// When the first attempt failed, if known.
    pub first_failed_at: Option<SystemTime>,
    /// When it was dead-lettered, if known.
    pub dead_lettered_at: Option<SystemTime>,
    /// The dead letter as the broker holds it: payload, key, all headers.
    pub envelope: Envelope,
    _message: PhantomData<fn() -> M>,
}

impl<M> DeadLetterRecord<M> {
    pub(crate) fn new(envelope: Envelope) -> Self {
        let headers = &envelope.headers;
        let time = |name: &str| {
            let millis: u64 = headers.get(name)?.parse().ok()?;
            UNIX_EPOCH.checked_add(Duration::from_millis(millis))
        };
        DeadLetterRecord {
            id: envelope.id.clone(),
            channel: headers
                .get(header::ORIGINAL_CHANNEL)
                .map_or_else(|| envelope.channel.clone(), |c| Arc::from(c.as_str())),
            reason: headers
                .get(header::DEAD_LETTER_REASON)
                .and_then(|r| DeadLetterReason::parse(r)),
            attempts: headers
                .get(header::ATTEMPTS)
                .and_then(|a| a.parse().ok())
                .unwrap_or(envelope.attempt),
            error: headers.get(header::ERROR).cloned(),
            first_failed_at: time(header::FIRST_FAILED_AT),
            dead_lettered_at: time(header::DEAD_LETTERED_AT),
            _message: PhantomData,
            envelope,
        }
    }

    /// The encoded payload, as it was published.
    pub fn payload(&self) -> &Bytes {
        &self.envelope.payload
    }

    /// The ordering key it was published with.
    pub fn key(&self) -> Option<&str> {
        self.envelope.key.as_deref()
    }
}

impl<M: DeserializeOwned> DeadLetterRecord<M> {
    /// The message decoded as the channel's type; a `Decode` error (for a dead letter
    /// whose reason is `Undecodable`, always) says why not.
    pub fn message(&self) -> Result<M> {
        crate::codec::decode(&self.envelope).map_err(|e| {
            Error::new(
                ErrorKind::Decode,
                format!(
                    "dead letter {} is not a valid {}",
                    self.id,
                    std::any::type_name::<M>()
                ),
            )
            .with_channel(&*self.channel)
            .with_source(e)
        })
    }
}

impl<M> Clone for DeadLetterRecord<M> {
    fn clone(&self) -> Self {
        DeadLetterRecord {
            id: self.id.clone(),
            channel: self.channel.clone(),
            reason: self.reason,
            attempts: self.attempts,
            error: self.error.clone(),
            first_failed_at: self.first_failed_at,
            dead_lettered_at: self.dead_lettered_at,
            envelope: self.envelope.clone(),
            _message: PhantomData,
        }
    }
}

impl<M> fmt::Debug for DeadLetterRecord<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterRecord")
            .field("id", &self.id)
            .field("channel", &self.channel)
            .field("reason", &self.reason)
            .field("attempts", &self.attempts)
            .field("error", &self.error)
            .field("first_failed_at", &self.first_failed_at)
            .field("dead_lettered_at", &self.dead_lettered_at)
            .field("payload_bytes", &self.envelope.payload.len())
            .finish_non_exhaustive()
    }
}
