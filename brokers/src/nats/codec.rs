//! Envelope <-> NATS headers and payload.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::header::HeaderName;
use async_nats::HeaderMap;

use crate::core::{unix_micros, Envelope};

pub(crate) const MSG_ID: &str = "Nats-Msg-Id";
const KEY: &str = "Anybroker-Key";
const PUBLISHED_AT: &str = "Anybroker-Published-At";
const CONTENT_TYPE: &str = "Anybroker-Content-Type";
const ATTEMPT: &str = "Anybroker-Attempt";
/// When a delayed message is due, in microseconds since the Unix epoch.
pub(crate) const DUE: &str = "Anybroker-Due";

// Header names built once, so a publish does not parse or allocate them.
const MSG_ID_NAME: HeaderName = HeaderName::from_static(MSG_ID);
const KEY_NAME: HeaderName = HeaderName::from_static(KEY);
const PUBLISHED_AT_NAME: HeaderName = HeaderName::from_static(PUBLISHED_AT);
const CONTENT_TYPE_NAME: HeaderName = HeaderName::from_static(CONTENT_TYPE);
const ATTEMPT_NAME: HeaderName = HeaderName::from_static(ATTEMPT);

/// The headers carrying `envelope`'s metadata and application headers.
pub(crate) fn to_headers(envelope: &Envelope) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(MSG_ID_NAME, &*envelope.id);
    if let Some(k) = &envelope.key {
        h.insert(KEY_NAME, &**k);
    }
    h.insert(
        PUBLISHED_AT_NAME,
        unix_micros(envelope.published_at).to_string(),
    );
    if &*envelope.content_type != crate::CONTENT_TYPE_JSON {
        h.insert(CONTENT_TYPE_NAME, &*envelope.content_type);
    }
    if envelope.attempt != 1 {
        h.insert(ATTEMPT_NAME, envelope.attempt.to_string());
    }
    for (name, value) in &envelope.headers {
        h.insert(name.as_str(), value.as_str());
    }
    h
}

/// Rebuilds an envelope of `channel`. A message published around the library (no
/// id header) gets `fallback_id`; its payload is kept whatever it is.
pub(crate) fn from_message(
    channel: &Arc<str>,
    fallback_id: &str,
    headers: Option<&HeaderMap>,
    payload: bytes::Bytes,
) -> Envelope {
    let id = headers
        .and_then(|h| h.get(MSG_ID))
        .map(|v| Arc::from(v.as_str()))
        .unwrap_or_else(|| Arc::from(fallback_id));
    let mut e = Envelope::received(channel.clone(), id);
    e.payload = payload;
    let Some(headers) = headers else {
        e.published_at = SystemTime::now();
        return e;
    };
    for (name, values) in headers.iter() {
        let Some(value) = values.first() else {
            continue;
        };
        let value = value.as_str();
        match name.as_ref() {
            MSG_ID | DUE => {}
            KEY => e.key = Some(Arc::from(value)),
            PUBLISHED_AT => {
                if let Ok(us) = value.parse::<u64>() {
                    e.published_at = UNIX_EPOCH + Duration::from_micros(us);
                }
            }
            CONTENT_TYPE => e.content_type = Arc::from(value),
            ATTEMPT => e.attempt = value.parse().unwrap_or(1),
            other => {
                e.headers.insert(other.to_string(), value.to_string());
            }
        }
    }
    e
}

/// A NATS stream name for a channel: letters, digits, `_` and `-` only.
pub(crate) fn stream_name(prefix: &str, channel: &str, suffix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + channel.len() + suffix.len() + 1);
    s.push_str(prefix);
    s.push('_');
    s.extend(channel.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '-' {
            c
        } else {
            '_'
        }
    }));
    s.push_str(suffix);
    s
}

/// A durable consumer name for a group.
pub(crate) fn consumer_name(group: &str) -> String {
    group
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let e = Envelope::new("a.b", &b"{}"[..])
            .with_key("k")
            .with_header("tenant", "acme");
        let h = to_headers(&e);
        let back = from_message(&Arc::from("a.b"), "x", Some(&h), e.payload.clone());
        assert_eq!(back.id, e.id);
        assert_eq!(back.key, e.key);
        assert_eq!(back.headers, e.headers);
        assert_eq!(unix_micros(back.published_at), unix_micros(e.published_at));
        assert_eq!(
            stream_name("AB", "alarm.to.log", "_DLT"),
            "AB_alarm_to_log_DLT"
        );
    }
}
