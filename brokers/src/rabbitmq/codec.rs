//! Envelope <-> AMQP properties and body.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::core::{
    message_id_carries_micros, message_id_time, publisher_id, unix_micros, Envelope, MessageId,
    CONTENT_TYPE_JSON,
};

const KEY: &str = "x-anybroker-key";
/// Microseconds since the Unix epoch; sent only when the message id does not carry
/// the publish time (an id the application chose).
const PUBLISHED_AT: &str = "x-anybroker-published-at";
const ATTEMPT: &str = "x-anybroker-attempt";
/// The id or content type when it is longer than an AMQP property holds (255 bytes).
const LONG_ID: &str = "x-anybroker-id";
const LONG_CONTENT_TYPE: &str = "x-anybroker-content-type";
/// The most bytes an AMQP short string (a property, a header name) holds.
const SHORT_STRING_MAX: usize = 255;
/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// AMQP properties that travel as application headers of the same name, so a handler
/// sees them and a retry or dead letter writes them back as properties. (`correlation_id`
/// and `reply_to` are also the header names FastStream gives them on other brokers.)
const CORRELATION_ID: &str = "correlation_id";
const REPLY_TO: &str = "reply_to";
const TYPE: &str = "type";
const APP_ID: &str = "app_id";

/// The properties carrying `envelope`'s metadata (id, content type, key, publish time,
/// attempt, the properties above) and application headers; persistent delivery.
/// A header name longer than AMQP allows is refused with [`check_header_names`] before
/// a publish; here it would panic.
pub(crate) fn to_properties(envelope: &Envelope) -> BasicProperties {
    let mut h = FieldTable::default();
    let published_micros = unix_micros(envelope.published_at);
    // An id or content type too long for its property (one read from another broker)
    // travels in a header instead.
    let mut properties = if *envelope.content_type == *CONTENT_TYPE_JSON {
        // Most messages: their fixed properties are made once and cloned, two builder
        // calls fewer (each moves all the properties, some 300 bytes, in and out).
        json_persistent().clone()
    } else {
        let properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
        match ShortString::try_new(String::from(&*envelope.content_type)) {
            Ok(ct) => properties.with_content_type(ct),
            Err(_) => {
                h.insert(LONG_CONTENT_TYPE.into(), text(&envelope.content_type));
                properties
            }
        }
    }
    // Seconds, as the AMQP property is read by other clients; anybroker's own readers
    // take the finer time the id (or the header below) carries.
    .with_timestamp(published_micros / 1_000_000);
    match ShortString::try_new(String::from(envelope.id.as_str())) {
        Ok(id) => properties = properties.with_message_id(id),
        Err(_) => {
            h.insert(LONG_ID.into(), text(&envelope.id));
        }
    }
    if let Some(k) = &envelope.key {
        h.insert(KEY.into(), text(k));
    }
    // `published_micros_to_send`, with the time read once for both.
    if !message_id_carries_micros(&envelope.id, published_micros) {
        h.insert(PUBLISHED_AT.into(), AMQPValue::LongLongInt(published_micros as i64));
    }
    if envelope.attempt != 1 {
        h.insert(ATTEMPT.into(), AMQPValue::LongUInt(envelope.attempt));
    }
    for (name, value) in &envelope.headers {
        let property = || ShortString::from(value.as_str());
        // A property holds at most 255 bytes: a longer value stays a header.
        match name.as_str() {
            _ if value.len() > SHORT_STRING_MAX => {
                h.insert(ShortString::from(name.as_str()), text(value));
            }
            CORRELATION_ID => properties = properties.with_correlation_id(property()),
            REPLY_TO => properties = properties.with_reply_to(property()),
            TYPE => properties = properties.with_type(property()),
            APP_ID => properties = properties.with_app_id(property()),
            _ => {
                h.insert(ShortString::from(name.as_str()), text(value));
            }
        }
    }
    // No header table when there is nothing in it (every message with a made id and
    // no key or headers): the same on the wire to every reader, and a copy of the
    // properties fewer (each builder call moves all of them).
    if h.inner().is_empty() {
        properties
    } else {
        properties.with_headers(h)
    }
}

/// The properties every persistent JSON message starts from.
fn json_persistent() -> &'static BasicProperties {
    static PROPERTIES: std::sync::LazyLock<BasicProperties> = std::sync::LazyLock::new(|| {
        BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type(CONTENT_TYPE_JSON.into())
    });
    &PROPERTIES
}

/// Refuses an envelope with a header name AMQP cannot carry (over 255 bytes).
pub(crate) fn check_header_names(envelope: &Envelope) -> crate::core::Result<()> {
    match envelope.headers.keys().find(|n| n.len() > SHORT_STRING_MAX) {
        Some(name) => Err(crate::core::Error::new(
            crate::core::ErrorKind::Encode,
            format!(
                "header name of {} bytes ({}…) cannot travel on RabbitMQ: at most {SHORT_STRING_MAX}",
                name.len(),
                name.chars().take(40).collect::<String>()
            ),
        )),
        None => Ok(()),
    }
}

/// A header value as text: numbers and booleans as written, byte arrays as (lossy)
/// UTF-8, arrays and tables as JSON, no value as the empty string.
fn value_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        AMQPValue::Void => String::new(),
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => value_json(value).to_string(),
        AMQPValue::DecimalValue(d) => decimal_text(d.value, d.scale),
        other => match value_json(other) {
            serde_json::Value::String(s) => s,
            json => json.to_string(),
        },
    }
}

/// A header value as JSON, for arrays and tables.
fn value_json(value: &AMQPValue) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        AMQPValue::Boolean(b) => J::from(*b),
        AMQPValue::ShortShortInt(n) => J::from(*n),
        AMQPValue::ShortShortUInt(n) => J::from(*n),
        AMQPValue::ShortInt(n) => J::from(*n),
        AMQPValue::ShortUInt(n) => J::from(*n),
        AMQPValue::LongInt(n) => J::from(*n),
        AMQPValue::LongUInt(n) => J::from(*n),
        AMQPValue::LongLongInt(n) => J::from(*n),
        AMQPValue::Timestamp(n) => J::from(*n),
        // Not-a-number and infinities have no JSON number: their text.
        AMQPValue::Float(f) => serde_json::Number::from_f64(f64::from(*f))
            .map_or_else(|| J::from(f.to_string()), J::Number),
        AMQPValue::Double(f) => serde_json::Number::from_f64(*f)
            .map_or_else(|| J::from(f.to_string()), J::Number),
        AMQPValue::FieldArray(a) => J::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::FieldTable(t) => J::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), value_json(v)))
                .collect(),
        ),
        AMQPValue::Void => J::Null,
        other => J::from(value_text(other)),
    }
}

/// `value` × 10^-`scale` as decimal text, e.g. (12345, 2) → `123.45`.
fn decimal_text(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{whole}.{fraction}")
}

fn as_u64(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        other => value_text(other).parse().ok(),
    }
}

/// The id a message was published with by [`to_properties`]: its `message_id`
/// property, or the header carrying an id too long for it.
pub(crate) fn sent_id(properties: &BasicProperties) -> Option<String> {
    if let Some(id) = properties.message_id() {
        return Some(id.to_string());
    }
    let headers = properties.headers().as_ref()?;
    headers.inner().get(LONG_ID).map(value_text)
}

/// Rebuilds an envelope of `channel` from a delivery's properties and body. Every header
/// is kept (as text where it is not text); the properties `correlation_id`, `reply_to`,
/// `type` and `app_id` become headers of those names. A message published around the
/// library keeps its body whatever it is.
/// RabbitMQ's own dead-lettering headers (`x-death`, …) are dropped. The publish time
/// is the header's, else the one the id carries, else the `timestamp` property's, else
/// now. Without a message id, the id is the publisher's (a `message_id` or
/// `correlation_id` header), else a fresh one.
pub(crate) fn from_delivery(
    channel: &Arc<str>,
    properties: &BasicProperties,
    body: Vec<u8>,
) -> Envelope {
    let mut e = Envelope::reading(channel.clone());
    e.payload = bytes::Bytes::from(body);
    if let Some(ct) = properties.content_type() {
        e.set_content_type_from_wire(ct.as_str());
    }
    let mut published_at = None;
    for (name, property) in [
        (CORRELATION_ID, properties.correlation_id()),
        (REPLY_TO, properties.reply_to()),
        (TYPE, properties.kind()),
        (APP_ID, properties.app_id()),
    ] {
        if let Some(value) = property {
            e.headers.insert(name.to_string(), value.as_str().to_string());
        }
    }
    if let Some(headers) = properties.headers() {
        for (name, value) in headers.inner() {
            match name.as_str() {
                KEY => e.key = Some(Arc::from(value_text(value))),
                LONG_ID => e.id = MessageId::from(value_text(value)),
                LONG_CONTENT_TYPE => e.set_content_type_from_wire(&value_text(value)),
                PUBLISHED_AT => {
                    if let Some(us) = as_u64(value) {
                        published_at = UNIX_EPOCH.checked_add(Duration::from_micros(us));
                    }
                }
                ATTEMPT => {
                    e.attempt = as_u64(value).map_or(1, |n| n.clamp(1, u32::MAX as u64) as u32)
                }
                n if n.starts_with("x-death")
                    || n.starts_with("x-first-death")
                    || n.starts_with("x-last-death") => {}
                n => {
                    e.headers.insert(n.to_string(), value_text(value));
                }
            }
        }
    }
    if e.id.is_empty() {
        e.id = match properties.message_id() {
            Some(id) => MessageId::from(id.as_str()),
            None => publisher_id(&e.headers).unwrap_or_else(crate::new_message_id),
        };
    }
    e.published_at = published_at
        .or_else(|| message_id_time(&e.id))
        .or_else(|| {
            let secs = (*properties.timestamp())?;
            UNIX_EPOCH.checked_add(Duration::from_secs(secs))
        })
        .unwrap_or_else(SystemTime::now);
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
    fn a_message_with_nothing_for_the_header_table_goes_without_one() {
        let e = Envelope::new("a.b", &b"{}"[..]);
        let p = to_properties(&e);
        assert_eq!(p.headers(), &None);
        let back = from_delivery(&Arc::from("a.b"), &p, e.payload.to_vec());
        assert_eq!((back.id, back.key, back.attempt), (e.id, None, 1));
        assert!(back.headers.is_empty());
        assert_eq!(unix_micros(back.published_at), unix_micros(e.published_at));
    }

    /// What other AMQP clients read: every message persistent, with its content type,
    /// id and publish time (seconds) as properties, whether its content type is the
    /// usual JSON, another, or one too long for its property.
    #[test]
    fn every_message_is_persistent_and_says_its_content_type_id_and_time() {
        let json = Envelope::new("a.b", &b"{}"[..]);
        let text = Envelope::new("a.b", &b"hi"[..]).with_content_type("text/plain");
        let long_type = format!("application/{}", "x".repeat(300));
        let long = Envelope::new("a.b", &b"hi"[..]).with_content_type(long_type.as_str());
        for e in [&json, &text, &long] {
            let p = to_properties(e);
            assert_eq!(p.delivery_mode(), &Some(PERSISTENT), "{}", e.content_type);
            assert_eq!(p.message_id().as_ref().map(|id| id.as_str()), Some(&*e.id));
            let seconds = e.published_at.duration_since(UNIX_EPOCH).unwrap().as_secs();
            assert_eq!(p.timestamp(), &Some(seconds));
            let back = from_delivery(&Arc::from("a.b"), &p, e.payload.to_vec());
            assert_eq!(back.content_type, e.content_type);
        }
        let content_type = |e: &Envelope| to_properties(e).content_type().as_ref().map(|c| c.to_string());
        assert_eq!(content_type(&json).as_deref(), Some(CONTENT_TYPE_JSON));
        assert_eq!(content_type(&text).as_deref(), Some("text/plain"));
        assert_eq!(content_type(&long), None, "too long for the property: a header");
    }

    #[test]
    fn foreign_message_gets_an_id_and_keeps_its_body() {
        let back = from_delivery(&Arc::from("a"), &BasicProperties::default(), b"x".to_vec());
        assert!(!back.id.is_empty());
        assert_eq!(&back.payload[..], b"x");
        assert_eq!(back.attempt, 1);
    }

    #[test]
    fn every_header_and_the_properties_reach_the_handler_and_go_back_out() {
        use lapin::types::{ByteArray, DecimalValue, FieldArray};
        let mut table = FieldTable::default();
        table.insert("region".into(), text("eu"));
        table.insert("weight".into(), AMQPValue::Double(2.5));
        let mut h = FieldTable::default();
        h.insert("ratio".into(), AMQPValue::Float(0.25));
        h.insert("big".into(), AMQPValue::Double(1e300));
        h.insert("nan".into(), AMQPValue::Double(f64::NAN));
        h.insert(
            "tags".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![text("a"), AMQPValue::LongInt(2)])),
        );
        h.insert("origin".into(), AMQPValue::FieldTable(table));
        h.insert(
            "price".into(),
            AMQPValue::DecimalValue(DecimalValue {
                scale: 3,
                value: 12,
            }),
        );
        h.insert(
            "raw".into(),
            AMQPValue::ByteArray(ByteArray::from(b"bytes".to_vec())),
        );
        h.insert("nothing".into(), AMQPValue::Void);
        h.insert("x-death".into(), AMQPValue::FieldArray(FieldArray::default()));
        let properties = BasicProperties::default()
            .with_correlation_id("corr-1".into())
            .with_reply_to("replies".into())
            .with_type("order.created".into())
            .with_app_id("shop".into())
            .with_timestamp(1_700_000_000)
            .with_headers(h);
        let e = from_delivery(&Arc::from("c"), &properties, b"{}".to_vec());
        let header = |name: &str| e.headers.get(name).map(String::as_str);
        assert_eq!(header("ratio"), Some("0.25"));
        assert_eq!(header("big"), Some("1e+300"));
        assert_eq!(header("nan"), Some("NaN"));
        assert_eq!(header("tags"), Some(r#"["a",2]"#));
        assert_eq!(header("origin"), Some(r#"{"region":"eu","weight":2.5}"#));
        assert_eq!(header("price"), Some("0.012"));
        assert_eq!(header("raw"), Some("bytes"));
        assert_eq!(header("nothing"), Some(""));
        assert_eq!(header("x-death"), None, "RabbitMQ's own bookkeeping");
        assert_eq!(header("correlation_id"), Some("corr-1"));
        assert_eq!(header("reply_to"), Some("replies"));
        assert_eq!(header("type"), Some("order.created"));
        assert_eq!(header("app_id"), Some("shop"));
        assert_eq!(&*e.id, "corr-1", "no message id: the publisher's correlation id");
        assert_eq!(unix_micros(e.published_at), 1_700_000_000_000_000, "the broker's timestamp");
        // A retry or dead letter of it writes the properties back as properties.
        let out = to_properties(&e);
        assert_eq!(out.correlation_id().as_ref().map(|v| v.as_str()), Some("corr-1"));
        assert_eq!(out.reply_to().as_ref().map(|v| v.as_str()), Some("replies"));
        assert_eq!(out.kind().as_ref().map(|v| v.as_str()), Some("order.created"));
        assert_eq!(out.app_id().as_ref().map(|v| v.as_str()), Some("shop"));
        let written = out.headers().as_ref().unwrap();
        assert!(!written.contains_key("correlation_id"));
        assert_eq!(written.inner().get("ratio"), Some(&text("0.25")));
        assert_eq!(decimal_text(5, 0), "5");
        assert_eq!(decimal_text(12_345, 2), "123.45");
    }

    /// An arbitrary AMQP value, nested up to `depth`.
    fn arbitrary_value(a: &mut crate::core::arbitrary::Arbitrary, depth: u32) -> AMQPValue {
        use lapin::types::{ByteArray, DecimalValue, FieldArray};
        let n = a.next();
        match a.below(if depth == 0 { 16 } else { 18 }) {
            0 => AMQPValue::Boolean(n.is_multiple_of(2)),
            1 => AMQPValue::ShortShortInt(n as i8),
            2 => AMQPValue::ShortShortUInt(n as u8),
            3 => AMQPValue::ShortInt(n as i16),
            4 => AMQPValue::ShortUInt(n as u16),
            5 => AMQPValue::LongInt(n as i32),
            6 => AMQPValue::LongUInt(n as u32),
            7 => AMQPValue::LongLongInt(n as i64),
            8 => AMQPValue::Float(f32::from_bits(n as u32)),
            9 => AMQPValue::Double(f64::from_bits(n)),
            10 => AMQPValue::DecimalValue(DecimalValue {
                scale: n as u8,
                value: (n >> 8) as u32,
            }),
            11 => AMQPValue::ShortString(a.text(20).into()),
            12 => AMQPValue::LongString(LongString::from(a.bytes(40))),
            13 => AMQPValue::Timestamp(n),
            14 => AMQPValue::ByteArray(ByteArray::from(a.bytes(20))),
            15 => AMQPValue::Void,
            16 => AMQPValue::FieldArray(FieldArray::from(
                (0..a.below(4))
                    .map(|_| arbitrary_value(a, depth - 1))
                    .collect::<Vec<_>>(),
            )),
            _ => {
                let mut t = FieldTable::default();
                for _ in 0..a.below(4) {
                    t.insert(a.text(10).into(), arbitrary_value(a, depth - 1));
                }
                AMQPValue::FieldTable(t)
            }
        }
    }

    #[test]
    fn decoding_arbitrary_deliveries_never_panics() {
        crate::core::arbitrary::Arbitrary::run(|a| {
            let known = [KEY, PUBLISHED_AT, ATTEMPT, "x-death", CORRELATION_ID, "message_id"];
            let mut headers = FieldTable::default();
            for _ in 0..a.below(6) {
                headers.insert(a.name(&known).into(), arbitrary_value(a, 3));
            }
            let mut p = BasicProperties::default().with_headers(headers);
            if a.one_in(2) {
                p = p.with_message_id(a.value().into());
            }
            if a.one_in(2) {
                p = p.with_content_type(a.text(30).into());
            }
            if a.one_in(2) {
                p = p.with_timestamp(a.next());
            }
            if a.one_in(2) {
                p = p.with_correlation_id(a.text(30).into());
            }
            let e = from_delivery(&Arc::from("c"), &p, a.bytes(64));
            // What was read goes out again, and reads back the same.
            let back = from_delivery(&Arc::from("c"), &to_properties(&e), e.payload.to_vec());
            assert_eq!((&back.id, &back.content_type, &back.key), (&e.id, &e.content_type, &e.key));
        });
    }
}
