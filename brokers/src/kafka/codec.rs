//! Envelope <-> Kafka record headers, key and value.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};

use crate::core::{message_id_time, Envelope};

const ID: &str = "anybroker-id";
/// Microseconds since the Unix epoch; sent only when the id does not carry the
/// publish time (an id the application chose).
const PUBLISHED_AT: &str = "anybroker-published-at";
const CONTENT_TYPE: &str = "anybroker-content-type";
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
    if &*envelope.content_type != crate::CONTENT_TYPE_JSON {
        h = h.insert(Header {
            key: CONTENT_TYPE,
            value: Some(envelope.content_type.as_bytes()),
        });
    }
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

/// Rebuilds an envelope of `channel`; a record produced around the library (no id
/// header) gets `topic/partition/offset` as its id. The value is kept whatever it is.
/// The publish time is the header's, else the one the id carries, else the record's
/// timestamp, else now.
pub(crate) fn from_record(channel: &Arc<str>, message: &OwnedMessage) -> (Envelope, Routing) {
    let mut routing = Routing {
        due: None,
        group: None,
    };
    let mut id: Option<Arc<str>> = None;
    let mut e = Envelope::received(channel.clone(), Arc::from(""));
    e.payload = bytes::Bytes::copy_from_slice(message.payload().unwrap_or_default());
    e.key = message
        .key()
        .map(|k| Arc::from(String::from_utf8_lossy(k).as_ref()));
    let mut published_at = None;
    if let Some(headers) = message.headers() {
        for h in headers.iter() {
            let value = String::from_utf8_lossy(h.value.unwrap_or_default());
            match h.key {
                ID => id = Some(Arc::from(value.as_ref())),
                PUBLISHED_AT => {
                    published_at = value
                        .parse::<u64>()
                        .ok()
                        .map(|us| UNIX_EPOCH + Duration::from_micros(us));
                }
                CONTENT_TYPE => e.content_type = Arc::from(value.as_ref()),
                ATTEMPT => e.attempt = value.parse().unwrap_or(1),
                DUE => routing.due = value.parse().ok(),
                GROUP => routing.group = Some(value.into_owned()),
                other => {
                    e.headers.insert(other.to_string(), value.into_owned());
                }
            }
        }
    }
    e.id = id.unwrap_or_else(|| {
        Arc::from(format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        ))
    });
    e.published_at = published_at
        .or_else(|| message_id_time(&e.id))
        .or_else(|| {
            let ms = message.timestamp().to_millis()?;
            Some(UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).ok()?))
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
        assert_eq!(&*back.id, "a.b/0/8");
        assert_eq!(unix_micros(back.published_at), 1_700_000_000_123_000);
    }
}
