//! Envelope <-> AMQP properties and body.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::core::{message_id_time, Envelope};

const KEY: &str = "x-anybroker-key";
/// Microseconds since the Unix epoch; sent only when the message id does not carry
/// the publish time (an id the application chose).
const PUBLISHED_AT: &str = "x-anybroker-published-at";
const ATTEMPT: &str = "x-anybroker-attempt";
/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// The properties carrying `envelope`'s metadata (id, content type, key, publish time,
/// attempt) and application headers; persistent delivery.
pub(crate) fn to_properties(envelope: &Envelope) -> BasicProperties {
    let mut h = FieldTable::default();
    if let Some(k) = &envelope.key {
        h.insert(KEY.into(), text(k));
    }
    if let Some(micros) = envelope.published_micros_to_send() {
        h.insert(PUBLISHED_AT.into(), AMQPValue::LongLongInt(micros as i64));
    }
    if envelope.attempt != 1 {
        h.insert(ATTEMPT.into(), AMQPValue::LongUInt(envelope.attempt));
    }
    for (name, value) in &envelope.headers {
        h.insert(ShortString::from(name.as_str()), text(value));
    }
    BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_message_id(ShortString::from(&*envelope.id))
        .with_content_type(ShortString::from(&*envelope.content_type))
        .with_headers(h)
}

/// A header value as text, or `None` for values anybroker never writes (tables, arrays).
fn value_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        _ => return None,
    })
}

fn as_u64(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        other => value_text(other)?.parse().ok(),
    }
}

/// Rebuilds an envelope of `channel` from a delivery's properties and body. A message
/// published around the library (no message id) gets a fresh id; its body is kept
/// whatever it is. RabbitMQ's own dead-lettering headers (`x-death`, …) are dropped.
/// The publish time is the header's, else the one the id carries, else now.
pub(crate) fn from_delivery(
    channel: &Arc<str>,
    properties: &BasicProperties,
    body: Vec<u8>,
) -> Envelope {
    let id = properties
        .message_id()
        .as_ref()
        .map(|id| Arc::from(id.as_str()))
        .unwrap_or_else(crate::new_message_id);
    let mut e = Envelope::received(channel.clone(), id);
    e.payload = bytes::Bytes::from(body);
    if let Some(ct) = properties.content_type() {
        if ct.as_str() != crate::CONTENT_TYPE_JSON {
            e.content_type = Arc::from(ct.as_str());
        }
    }
    e.published_at = message_id_time(&e.id).unwrap_or_else(SystemTime::now);
    let Some(headers) = properties.headers() else {
        return e;
    };
    for (name, value) in headers.inner() {
        match name.as_str() {
            KEY => e.key = value_text(value).map(Arc::from),
            PUBLISHED_AT => {
                if let Some(us) = as_u64(value) {
                    e.published_at = UNIX_EPOCH + Duration::from_micros(us);
                }
            }
            ATTEMPT => e.attempt = as_u64(value).map_or(1, |n| n.clamp(1, u32::MAX as u64) as u32),
            n if n.starts_with("x-death")
                || n.starts_with("x-first-death")
                || n.starts_with("x-last-death") => {}
            n => {
                if let Some(v) = value_text(value) {
                    e.headers.insert(n.to_string(), v);
                }
            }
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::unix_micros;

    #[test]
    fn properties_round_trip() {
        let mut e = Envelope::new("a.b", &b"{}"[..])
            .with_key("k")
            .with_header("tenant", "acme");
        e.attempt = 3;
        let p = to_properties(&e);
        let back = from_delivery(&Arc::from("a.b"), &p, e.payload.to_vec());
        assert_eq!(back.id, e.id);
        assert_eq!(back.key, e.key);
        assert_eq!(back.headers, e.headers);
        assert_eq!(back.attempt, 3);
        assert_eq!(back.content_type, e.content_type);
        assert_eq!(unix_micros(back.published_at), unix_micros(e.published_at));
        let headers = p.headers().as_ref().unwrap();
        assert!(
            !headers.inner().contains_key(PUBLISHED_AT),
            "a made id carries the publish time"
        );
        // An id of the application's own: the time travels in the header.
        let own = e.clone().with_id("order-17");
        let p = to_properties(&own);
        assert!(p
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .contains_key(PUBLISHED_AT));
        let back = from_delivery(&Arc::from("a.b"), &p, own.payload.to_vec());
        assert_eq!(&*back.id, "order-17");
        assert_eq!(unix_micros(back.published_at), unix_micros(e.published_at));
    }

    #[test]
    fn foreign_message_gets_an_id_and_keeps_its_body() {
        let back = from_delivery(&Arc::from("a"), &BasicProperties::default(), b"x".to_vec());
        assert!(!back.id.is_empty());
        assert_eq!(&back.payload[..], b"x");
        assert_eq!(back.attempt, 1);
    }
}
