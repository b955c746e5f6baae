//! Envelope <-> Kafka record headers, key and value.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};

use crate::core::{message_id_time, Envelope, MessageId};

const ID: &str = "anybroker-id";
/// Microseconds since the Unix epoch; sent only when the id does not carry the
/// publish time (an id the application chose).
const PUBLISHED_AT: &str = "anybroker-published-at";
/// The standard header other frameworks read (and write, in any case).
const CONTENT_TYPE: &str = "content-type";
/// The content type's header as anybroker 0.1 named it (written for other than JSON
/// only); still read.
const CONTENT_TYPE_BEFORE: &str = "anybroker-content-type";
const ATTEMPT: &str = "anybroker-attempt";
/// When a retried or delayed record is due, in microseconds since the Unix epoch.
pub(crate) const DUE: &str = "anybroker-due";
/// The group a retried record is for; other groups skip it.
pub(crate) const GROUP: &str = "anybroker-group";
/// Where a dead letter was read from.
pub(crate) const ORIGINAL_TOPIC: &str = "x-anybroker-original-topic";
pub(crate) const ORIGINAL_PARTITION: &str = "x-anybroker-original-partition";
pub(crate) const ORIGINAL_OFFSET: &str = "x-anybroker-original-offset";
/// The header of a marker record in the dead-letter topic: the offset, in the marker's
/// partition, of the dead letter it settles (`dead_letters.rs`).
pub(crate) const SETTLES: &str = "x-anybroker-settles";

/// The headers carrying `envelope`'s metadata and application headers, plus `extra`
/// (due time, group).
pub(crate) fn to_headers(envelope: &Envelope, extra: &[(&str, &str)]) -> OwnedHeaders {
    let published_at = envelope
        .published_micros_to_send()
        .map(|micros| micros.to_string());
    // Written only for a redelivery, so a first publish formats nothing.
    let attempt = (envelope.attempt != 1).then(|| envelope.attempt.to_string());
    let mut h =
        OwnedHeaders::new_with_capacity(4 + envelope.headers.len() + extra.len()).insert(Header {
            key: ID,
            value: Some(envelope.id.as_bytes()),
        });
    if let Some(published_at) = &published_at {
        h = h.insert(Header {
            key: PUBLISHED_AT,
            value: Some(published_at.as_bytes()),
        });
    }
    // Always: other frameworks decode by it instead of guessing.
    h = h.insert(Header {
        key: CONTENT_TYPE,
        value: Some(envelope.content_type.as_bytes()),
    });
    if let Some(attempt) = &attempt {
        h = h.insert(Header {
            key: ATTEMPT,
            value: Some(attempt.as_bytes()),
        });
    }
    for (name, value) in &envelope.headers {
        h = h.insert(Header {
            key: name.as_str(),
            value: Some(value.as_bytes()),
        });
    }
    for (name, value) in extra {
        h = h.insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
    }
    h
}

/// Anybroker's routing headers of a record: due time (µs) and target group.
pub(crate) struct Routing {
    pub(crate) due: Option<u64>,
    pub(crate) group: Option<String>,
}

/// The id of a record produced around the library with no id of its own:
/// `topic/partition/offset@timestamp` (milliseconds), which a topic deleted and created
/// again under the same name does not repeat (its offsets start again at 0, its
/// timestamps do not); `topic/partition/offset` for a record without a timestamp.
fn record_id(message: &OwnedMessage) -> MessageId {
    let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
    MessageId::from(match message.timestamp().to_millis() {
        Some(ms) => format!("{topic}/{partition}/{offset}@{ms}"),
        None => format!("{topic}/{partition}/{offset}"),
    })
}

/// Rebuilds an envelope of `channel`; a record produced around the library without an
/// `anybroker-id` header gets the publisher's own id (a `message_id` or
/// `correlation_id` header), else [`record_id`]. The content type is the standard
/// `content-type` header (any case, or Spring's `contentType`). The value is kept whatever it is.
/// The publish time is the header's, else the one the id carries, else the record's
/// timestamp, else now.
pub(crate) fn from_record(channel: &Arc<str>, message: &OwnedMessage) -> (Envelope, Routing) {
    let mut routing = Routing {
        due: None,
        group: None,
    };
    let mut id: Option<MessageId> = None;
    let mut e = Envelope::reading(channel.clone());
    e.payload = bytes::Bytes::copy_from_slice(message.payload().unwrap_or_default());
    e.key = message
        .key()
        .map(|k| Arc::from(String::from_utf8_lossy(k).as_ref()));
    let mut published_at = None;
    if let Some(headers) = message.headers() {
        for h in headers.iter() {
            let value = String::from_utf8_lossy(h.value.unwrap_or_default());
            match h.key {
                ID => id = Some(MessageId::from(value.as_ref())),
                PUBLISHED_AT => {
                    published_at = value
                        .parse::<u64>()
                        .ok()
                        .and_then(|us| UNIX_EPOCH.checked_add(Duration::from_micros(us)));
                }
                CONTENT_TYPE | CONTENT_TYPE_BEFORE => e.set_content_type_from_wire(&value),
                other if crate::is_content_type_header(other) => {
                    e.set_content_type_from_wire(&value)
                }
                ATTEMPT => e.attempt = value.parse().unwrap_or(1),
                DUE => routing.due = value.parse().ok(),
                GROUP => routing.group = Some(value.into_owned()),
                other => {
                    e.headers.insert(other.to_string(), value.into_owned());
                }
            }
        }
    }
    e.id = id
        .or_else(|| crate::core::publisher_id(&e.headers))
        .unwrap_or_else(|| record_id(message));
    e.published_at = published_at
        .or_else(|| message_id_time(&e.id))
        .or_else(|| {
            let ms = message.timestamp().to_millis()?;
            UNIX_EPOCH.checked_add(Duration::from_millis(u64::try_from(ms).ok()?))
        })
        .unwrap_or_else(SystemTime::now);
    (e, routing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::unix_micros;
    use rdkafka::Timestamp;

    #[test]
    fn headers_round_trip() {
        let mut e = Envelope::new("a.b", &b"{}"[..])
            .with_key("k")
            .with_header("tenant", "acme");
        e.attempt = 2;
        let h = to_headers(&e, &[(DUE, "123"), (GROUP, "g")]);
        let m = OwnedMessage::new(
            Some(e.payload.to_vec()),
            Some(b"k".to_vec()),
            "a.b".into(),
            Timestamp::NotAvailable,
            0,
            7,
            Some(h),
        );
        let (back, routing) = from_record(&Arc::from("a.b"), &m);
        assert_eq!(back.id, e.id);
        assert_eq!(back.key, e.key);
        assert_eq!(back.headers, e.headers);
        assert_eq!(back.attempt, 2);
        assert_eq!(routing.due, Some(123));
        assert_eq!(routing.group.as_deref(), Some("g"));
        assert_eq!(unix_micros(back.published_at), unix_micros(e.published_at));
        let sent = |e: &Envelope| to_headers(e, &[]).iter().any(|h| h.key == PUBLISHED_AT);
        assert!(!sent(&e), "a made id carries the publish time");
        // An id of the application's own: the time travels in its header.
        let own = e.clone().with_id("order-17");
        assert!(sent(&own));
        let record = |headers: Option<OwnedHeaders>, timestamp| {
            OwnedMessage::new(
                Some(b"{}".to_vec()),
                None,
                "a.b".into(),
                timestamp,
                0,
                8,
                headers,
            )
        };
        let (back, _) = from_record(
            &Arc::from("a.b"),
            &record(Some(to_headers(&own, &[])), Timestamp::NotAvailable),
        );
        assert_eq!(&*back.id, "order-17");
        assert_eq!(unix_micros(back.published_at), unix_micros(e.published_at));
        // A record produced around the library: the record's own timestamp.
        let (back, _) = from_record(
            &Arc::from("a.b"),
            &record(None, Timestamp::CreateTime(1_700_000_000_123)),
        );
        assert_eq!(&*back.id, "a.b/0/8@1700000000123");
        assert_eq!(unix_micros(back.published_at), 1_700_000_000_123_000);
        // A record another framework produced: its id and content type by their names.
        let foreign = OwnedHeaders::new()
            .insert(Header {
                key: "message_id",
                value: Some("fs-9"),
            })
            .insert(Header {
                key: "Content-Type",
                value: Some("text/plain"),
            });
        let (back, _) = from_record(
            &Arc::from("a.b"),
            &record(Some(foreign), Timestamp::CreateTime(1_700_000_000_123)),
        );
        assert_eq!(&*back.id, "fs-9");
        assert_eq!(&*back.content_type, "text/plain");
        assert!(!back.headers.contains_key("Content-Type"));
        // Anybroker writes the standard header, JSON included.
        assert!(to_headers(&e, &[])
            .iter()
            .any(|h| h.key == "content-type" && h.value == Some(&b"application/json"[..])));
    }

    #[test]
    fn decoding_arbitrary_records_never_panics() {
        crate::core::arbitrary::Arbitrary::run(|a| {
            let known = [ID, PUBLISHED_AT, CONTENT_TYPE, ATTEMPT, DUE, GROUP, "message_id"];
            let mut headers = OwnedHeaders::new();
            let names: Vec<String> = (0..a.below(6)).map(|_| a.name(&known)).collect();
            let values: Vec<Option<Vec<u8>>> = names
                .iter()
                .map(|_| match a.below(3) {
                    0 => None,
                    1 => Some(a.value().into_bytes()),
                    _ => Some(a.bytes(40)),
                })
                .collect();
            for (name, value) in names.iter().zip(&values) {
                headers = headers.insert(Header {
                    key: name.as_str(),
                    value: value.as_deref(),
                });
            }
            let timestamp = match a.below(3) {
                0 => Timestamp::NotAvailable,
                1 => Timestamp::CreateTime(a.next() as i64),
                _ => Timestamp::LogAppendTime(a.next() as i64),
            };
            let m = OwnedMessage::new(
                a.one_in(4).then(|| a.bytes(64)),
                a.one_in(2).then(|| a.bytes(16)),
                a.text(20),
                timestamp,
                a.next() as i32,
                a.next() as i64,
                a.one_in(5).then_some(headers),
            );
            let (e, _) = from_record(&Arc::from("c"), &m);
            let _ = to_headers(&e, &[]);
        });
    }
}
