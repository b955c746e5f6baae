//! The envelope: what travels on every broker, whatever the payload type.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::{message_id_at, message_id_carries_micros, MessageId};

/// String headers carried with a message.
pub type Headers = BTreeMap<String, String>;

/// The content type of JSON payloads, the default codec.
pub const CONTENT_TYPE_JSON: &str = "application/json";

static JSON: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(CONTENT_TYPE_JSON));

/// Header names anybroker sets. All start with `x-anybroker-` so they never clash
/// with an application's own headers.
pub mod header {
    /// Why a message was dead-lettered: see [`DeadLetterReason`](crate::DeadLetterReason).
    pub const DEAD_LETTER_REASON: &str = "x-anybroker-dead-letter-reason";
    /// The error text of the last failed attempt.
    pub const ERROR: &str = "x-anybroker-error";
    /// How many attempts were made before the message was dead-lettered.
    pub const ATTEMPTS: &str = "x-anybroker-attempts";
    /// The channel the message was published on.
    pub const ORIGINAL_CHANNEL: &str = "x-anybroker-original-channel";
    /// When the first attempt failed, in milliseconds since the Unix epoch.
    pub const FIRST_FAILED_AT: &str = "x-anybroker-first-failed-at";
    /// When the message was dead-lettered, in milliseconds since the Unix epoch.
    pub const DEAD_LETTERED_AT: &str = "x-anybroker-dead-lettered-at";
    /// On a reply: the request handler failed, with this error text.
    pub const REPLY_ERROR: &str = "x-anybroker-reply-error";
}

/// A message with its metadata. The payload is opaque bytes (JSON by default); the
/// router encodes and decodes it to the channel's type.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Envelope {
    /// Unique id, set at publish.
    pub id: MessageId,
    /// The channel's wire name, e.g. `alarm.to.bot`.
    pub channel: Arc<str>,
    /// Messages with the same key are handled in publish order within a group.
    pub key: Option<Arc<str>>,
    /// Application and anybroker headers.
    pub headers: Headers,
    /// MIME type of the payload, `application/json` by default.
    pub content_type: Arc<str>,
    /// The encoded payload.
    pub payload: Bytes,
    /// When the message was published.
    pub published_at: SystemTime,
    /// Delivery attempt, starting at 1 for the first delivery.
    pub attempt: u32,
}

impl Envelope {
    /// A new envelope with a fresh id, JSON content type, published now, attempt 1.
    pub fn new(channel: impl Into<Arc<str>>, payload: impl Into<Bytes>) -> Self {
        // One clock read for both: the id carries the publish time (see `message_id`).
        let now = SystemTime::now();
        Envelope {
            id: message_id_at(now),
            channel: channel.into(),
            key: None,
            headers: Headers::new(),
            content_type: JSON.clone(),
            payload: payload.into(),
            published_at: now,
            attempt: 1,
        }
    }

    /// An envelope being rebuilt from the wire: the given id, empty payload, no key or
    /// headers, attempt 1; the backend fills in the rest.
    pub fn received(channel: Arc<str>, id: impl Into<MessageId>) -> Self {
        Envelope {
            id: id.into(),
            channel,
            key: None,
            headers: Headers::new(),
            content_type: JSON.clone(),
            payload: Bytes::new(),
            published_at: UNIX_EPOCH,
            attempt: 1,
        }
    }

    /// An envelope a backend is about to read from the wire, id included: like
    /// [`received`](Self::received) with an empty id.
    pub fn reading(channel: Arc<str>) -> Self {
        Self::received(channel, MessageId::default())
    }

    /// Sets the ordering key.
    pub fn with_key(mut self, key: impl Into<Arc<str>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Replaces all headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the delivery attempt (1 for the first), e.g. to build the context of a
    /// redelivery in a test.
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Sets the id (e.g. to re-publish a message idempotently).
    pub fn with_id(mut self, id: impl Into<MessageId>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<Arc<str>>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// Records a failed attempt: keeps the first failure time and the last error,
    /// and counts the next attempt. Every backend calls this when it schedules a retry.
    pub fn record_failure(&mut self, error: &str) {
        self.headers
            .entry(header::FIRST_FAILED_AT.to_string())
            .or_insert_with(|| unix_millis(SystemTime::now()).to_string());
        self.headers
            .insert(header::ERROR.to_string(), error.to_string());
        self.attempt += 1;
    }

    /// Turns this envelope into its dead letter: same id and payload, plus the reason
    /// headers. The channel stays the original one.
    pub fn into_dead_letter(mut self, dead_letter: &DeadLetter) -> Self {
        let now = unix_millis(SystemTime::now()).to_string();
        let h = &mut self.headers;
        h.insert(
            header::DEAD_LETTER_REASON.to_string(),
            dead_letter.reason.as_str().to_string(),
        );
        h.insert(header::ERROR.to_string(), dead_letter.error.clone());
        h.insert(header::ATTEMPTS.to_string(), self.attempt.to_string());
        h.insert(
            header::ORIGINAL_CHANNEL.to_string(),
            self.channel.to_string(),
        );
        h.entry(header::FIRST_FAILED_AT.to_string())
            .or_insert_with(|| now.clone());
        h.insert(header::DEAD_LETTERED_AT.to_string(), now);
        self
    }

    /// The publish time to send beside the id, in microseconds since the Unix epoch;
    /// `None` when the id carries it (every id anybroker makes), so a backend sends
    /// the id alone. Only an id the application chose needs the time beside it.
    pub fn published_micros_to_send(&self) -> Option<u64> {
        let micros = unix_micros(self.published_at);
        (!message_id_carries_micros(&self.id, micros)).then_some(micros)
    }

    /// Turns a dead letter back into a fresh message for its channel: the reason
    /// headers are removed and the attempt count starts again at 1.
    pub fn into_replayed(mut self) -> Self {
        self.headers.retain(|name, _| {
            !matches!(
                name.as_str(),
                header::DEAD_LETTER_REASON
                    | header::ERROR
                    | header::ATTEMPTS
                    | header::ORIGINAL_CHANNEL
                    | header::FIRST_FAILED_AT
                    | header::DEAD_LETTERED_AT
            )
        });
        self.attempt = 1;
        self
    }
}

/// Microseconds since the Unix epoch, as backends carry publish and due times.
pub fn unix_micros(t: SystemTime) -> u64 {
    // Seconds and microseconds apart: `as_micros` works in u128.
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    since
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(since.subsec_micros()))
}

/// Milliseconds since the Unix epoch, as used in time headers.
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// Why a message was moved to its channel's dead-letter destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// Every attempt of the channel's retry policy failed.
    AttemptsExhausted,
    /// The handler returned a permanent error.
    PermanentError,
    /// The payload could not be decoded into the channel's type.
    Undecodable,
}

impl DeadLetterReason {
    /// The value of the reason header.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::AttemptsExhausted => "attempts-exhausted",
            DeadLetterReason::PermanentError => "permanent-error",
            DeadLetterReason::Undecodable => "undecodable",
        }
    }

    /// The reason a header value names, if it names one.
    pub fn parse(value: &str) -> Option<Self> {
        [
            DeadLetterReason::AttemptsExhausted,
            DeadLetterReason::PermanentError,
            DeadLetterReason::Undecodable,
        ]
        .into_iter()
        .find(|r| r.as_str() == value)
    }
}

/// What the dead letter records about the failure.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Why the message was dead-lettered.
    pub reason: DeadLetterReason,
    /// The error text of the last attempt.
    pub error: String,
}

impl DeadLetter {
    /// A dead letter with its reason and error text.
    pub fn new(reason: DeadLetterReason, error: impl Into<String>) -> Self {
        DeadLetter {
            reason,
            error: error.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_round_trip_keeps_payload_and_app_headers() {
        let mut e = Envelope::new("c", &b"{}"[..]).with_header("app", "1");
        e.record_failure("boom");
        assert_eq!(e.attempt, 2);
        let d = e.clone().into_dead_letter(&DeadLetter::new(
            DeadLetterReason::AttemptsExhausted,
            "boom2",
        ));
        assert_eq!(d.headers[header::DEAD_LETTER_REASON], "attempts-exhausted");
        assert_eq!(d.headers[header::ERROR], "boom2");
        assert_eq!(d.headers[header::ATTEMPTS], "2");
        assert_eq!(d.headers[header::ORIGINAL_CHANNEL], "c");
        assert_eq!(
            d.headers[header::FIRST_FAILED_AT],
            e.headers[header::FIRST_FAILED_AT]
        );
        let r = d.into_replayed();
        assert_eq!(r.attempt, 1);
        assert_eq!(r.headers.len(), 1);
        assert_eq!(r.payload, e.payload);
        assert_eq!(r.id, e.id);
    }
}
