//! Envelope <-> NATS headers and payload.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::header::HeaderName;
use async_nats::HeaderMap;

use crate::core::{message_id_time, Envelope};

pub(crate) const MSG_ID: &str = "Nats-Msg-Id";
const KEY: &str = "Anybroker-Key";
const PUBLISHED_AT: &str = "Anybroker-Published-At";
const CONTENT_TYPE: &str = "Anybroker-Content-Type";
const ATTEMPT: &str = "Anybroker-Attempt";
/// Core NATS: the id, or `<micros> <id>` when the id does not carry the publish time.
/// The name's length is chosen: async-nats builds the header block in a `Vec` grown
/// from empty, and with a name of 18 characters or more the block (name, 22-character
/// id) fits after two reallocations, not three (`to_bytes` −245 instructions a publish,
/// measured, on the client's one connection task).
const META: &str = "Anybroker-Message-Id";
/// The same header as anybroker 0.1 named it; still read.
const META_BEFORE: &str = "Anybroker-Meta";
/// When a delayed message is due, in microseconds since the Unix epoch.
pub(crate) const DUE: &str = "Anybroker-Due";

// Header names built once, so a publish does not parse or allocate them.
const MSG_ID_NAME: HeaderName = HeaderName::from_static(MSG_ID);
const KEY_NAME: HeaderName = HeaderName::from_static(KEY);
const PUBLISHED_AT_NAME: HeaderName = HeaderName::from_static(PUBLISHED_AT);
const CONTENT_TYPE_NAME: HeaderName = HeaderName::from_static(CONTENT_TYPE);
const ATTEMPT_NAME: HeaderName = HeaderName::from_static(ATTEMPT);
const META_NAME: HeaderName = HeaderName::from_static(META);

/// How the id and publish time travel.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum IdHeaders {
    /// `Nats-Msg-Id` (JetStream deduplicates on it), and `Anybroker-Published-At` only
    /// when the id does not carry the publish time (an id the application chose).
    JetStream,
    /// One `Anybroker-Message-Id` header, the id alone or `<micros> <id>` when the id does not
    /// carry the publish time: nothing on core NATS reads `Nats-Msg-Id`, and every
    /// header costs the client a map entry out and a parse in (one header fewer took a
    /// 12,000-message callgrind run from 555 M to 495 M instructions; BENCHMARKS.md).
    Core,
}

/// Id headers for publishing a message again under its id: a dead letter, a replayed
/// dead letter. The id goes in the header a reader prefers, and `Nats-Msg-Id` gets
/// `dedup_key`: under the id itself, JetStream would drop the message as a duplicate of
/// its first publish (or first dead letter) within `duplicate_window`. A key derived
/// from a stream sequence still drops a repeat after a crash between publish and
/// delete or ack.
pub(crate) fn same_id_headers(id: &str, dedup_key: String) -> [(&'static str, String); 2] {
    [(MSG_ID, dedup_key), (META, id.to_string())]
}

/// The headers carrying `envelope`'s metadata and application headers.
pub(crate) fn to_headers(envelope: &Envelope, ids: IdHeaders) -> HeaderMap {
    let mut h = HeaderMap::new();
    // itoa, not `format!`: the formatting machinery cost ~450 instructions a publish.
    let mut digits = itoa::Buffer::new();
    match (ids, envelope.published_micros_to_send()) {
        (IdHeaders::JetStream, time) => {
            h.insert(MSG_ID_NAME, &*envelope.id);
            if let Some(micros) = time {
                h.insert(PUBLISHED_AT_NAME, digits.format(micros));
            }
        }
        (IdHeaders::Core, None) => h.insert(META_NAME, &*envelope.id),
        (IdHeaders::Core, Some(micros)) => {
            let micros = digits.format(micros);
            let mut meta = String::with_capacity(micros.len() + 1 + envelope.id.len());
            meta.push_str(micros);
            meta.push(' ');
            meta.push_str(&envelope.id);
            h.insert(META_NAME, meta);
        }
    }
    if let Some(k) = &envelope.key {
        h.insert(KEY_NAME, &**k);
    }
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

/// Rebuilds an envelope of `channel` from either header layout. A message published
/// around the library (no id header) gets `fallback_id()`; its payload is kept
/// whatever it is.
pub(crate) fn from_message(
    channel: &Arc<str>,
    fallback_id: impl FnOnce() -> String,
    headers: Option<&HeaderMap>,
    payload: bytes::Bytes,
) -> Envelope {
    // One pass over the headers: a lookup by name hashes it, as costly as the visit.
    let (mut id, mut published_at) = (None, None);
    let (mut key, mut content_type, mut attempt) = (None, None, 1);
    let mut application = crate::Headers::new();
    for (name, values) in headers.into_iter().flat_map(|h| h.iter()) {
        let Some(value) = values.first() else {
            continue;
        };
        let value = value.as_str();
        match name.as_ref() {
            META | META_BEFORE => match value.split_once(' ') {
                Some((micros, meta_id)) => {
                    id = Some(meta_id);
                    published_at = time_of(micros);
                }
                None => id = Some(value),
            },
            MSG_ID => id = id.or(Some(value)),
            PUBLISHED_AT => published_at = published_at.or(time_of(value)),
            DUE => {}
            KEY => key = Some(Arc::from(value)),
            CONTENT_TYPE => content_type = Some(Arc::from(value)),
            ATTEMPT => attempt = value.parse().unwrap_or(1),
            other => {
                application.insert(other.to_string(), value.to_string());
            }
        }
    }
    // Without a time header the id carries it (a foreign id of the same shape reads as
    // some time too; without either, the time of receipt stands in).
    let published_at = published_at
        .or_else(|| id.and_then(message_id_time))
        .unwrap_or_else(SystemTime::now);
    let id = id.map_or_else(|| Arc::from(fallback_id()), Arc::from);
    let mut e = Envelope::received(channel.clone(), id);
    e.payload = payload;
    e.published_at = published_at;
    e.key = key;
    if let Some(content_type) = content_type {
        e.content_type = content_type;
    }
    e.attempt = attempt;
    e.headers = application;
    e
}

/// The delivery count and stream sequence in a JetStream message's `$JS.ACK.` reply
/// subject, in either layout (ADR-15): `<stream>.<consumer>.<delivered>.<stream seq>…`
/// (7 tokens) or `<domain>.<account>.<stream>.<consumer>.<delivered>.<stream seq>…`
/// (9 or more). One pass over the bytes: splitting the subject with `str::split` (two
/// passes, ~100 bytes) cost ~2,000 instructions a message, as much as the client's
/// `info()` it replaced (which also parses the publish time into a date).
pub(crate) fn delivery_numbers(reply: &str) -> Option<(u64, u64)> {
    let tokens = reply.strip_prefix("$JS.ACK.")?;
    // Where each of the first tokens starts; the layout is told by how many there are.
    let mut starts = [0usize; 8];
    let mut count = 1;
    for (i, b) in tokens.bytes().enumerate() {
        if b == b'.' {
            if count < starts.len() {
                starts[count] = i + 1;
            }
            count += 1;
        }
    }
    let first = match count {
        7 => 2,
        n if n >= 9 => 4,
        _ => return None,
    };
    // Token k ends where token k + 1 starts (there is one: count >= first + 3); the
    // bounds sit next to ASCII dots, so slicing the str is valid.
    let number = |k: usize| tokens[starts[k]..starts[k + 1] - 1].parse().ok();
    Some((number(first)?, number(first + 1)?))
}

/// The time `micros` (microseconds since the Unix epoch) names.
fn time_of(micros: &str) -> Option<SystemTime> {
    let us = micros.parse::<u64>().ok()?;
    Some(UNIX_EPOCH + Duration::from_micros(us))
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
    use crate::core::unix_micros;

    #[test]
    fn headers_round_trip() {
        let e = Envelope::new("a.b", &b"{}"[..])
            .with_key("k")
            .with_header("tenant", "acme");
        // Encoded in one layout, decoded as a consumer does.
        let round_trip = |e: &Envelope, ids| {
            let h = to_headers(e, ids);
            from_message(
                &Arc::from("a.b"),
                || "x".into(),
                Some(&h),
                e.payload.clone(),
            )
        };
        for ids in [IdHeaders::JetStream, IdHeaders::Core] {
            let back = round_trip(&e, ids);
            assert_eq!(back.id, e.id, "{ids:?}");
            assert_eq!(back.key, e.key, "{ids:?}");
            assert_eq!(back.headers, e.headers, "{ids:?}");
            assert_eq!(
                unix_micros(back.published_at),
                unix_micros(e.published_at),
                "{ids:?}"
            );
        }
        // A made id carries the publish time: no time header, the id alone in the meta.
        let h = to_headers(&e, IdHeaders::JetStream);
        assert_eq!(
            h.iter().count(),
            3,
            "msg id, key and one application header"
        );
        assert!(h.get(PUBLISHED_AT).is_none());
        let h = to_headers(&e, IdHeaders::Core);
        assert_eq!(h.get(META).map(|v| v.as_str()), Some(&*e.id));
        // An id the application chose travels with the time beside it, either layout.
        let with_space = e.clone().with_id("an id with spaces");
        for ids in [IdHeaders::JetStream, IdHeaders::Core] {
            let back = round_trip(&with_space, ids);
            assert_eq!(&*back.id, "an id with spaces", "{ids:?}");
            assert_eq!(
                unix_micros(back.published_at),
                unix_micros(e.published_at),
                "{ids:?}"
            );
        }
        let h = to_headers(&with_space, IdHeaders::Core);
        assert_eq!(h.iter().count(), 3, "meta, key and one application header");
        // A message from a publisher that still names the header `Anybroker-Meta`.
        let mut before = HeaderMap::new();
        before.insert(META_BEFORE, format!("1700000000000001 {}", e.id).as_str());
        let back = from_message(
            &Arc::from("a.b"),
            || "x".into(),
            Some(&before),
            e.payload.clone(),
        );
        assert_eq!(back.id, e.id);
        assert_eq!(unix_micros(back.published_at), 1_700_000_000_000_001);
        let bare = from_message(&Arc::from("a.b"), || "x".into(), None, e.payload.clone());
        assert_eq!(&*bare.id, "x");
        assert_eq!(
            delivery_numbers("$JS.ACK.S.c.3.42.17.1700000000000000000.5"),
            Some((3, 42))
        );
        assert_eq!(
            delivery_numbers("$JS.ACK._.ACCHASH.S.c.2.7.9.1700000000000000000.0.tok"),
            Some((2, 7))
        );
        assert_eq!(delivery_numbers("_INBOX.x.y"), None);
        assert_eq!(delivery_numbers("$JS.ACK.S.c.x.42.17.1.0"), None);
        assert_eq!(delivery_numbers("$JS.ACK.S.c..42.17.1.0"), None);
        assert_eq!(delivery_numbers("$JS.ACK.S.c.3.42.17.1"), None, "6 tokens");
        assert_eq!(
            delivery_numbers("$JS.ACK.S.c.3.99999999999999999999.17.1.0"),
            None,
            "overflow"
        );
        assert_eq!(
            delivery_numbers("$JS.ACK._.H.S.c.18446744073709551615.1.9.1.0"),
            Some((u64::MAX, 1))
        );
        assert_eq!(
            stream_name("AB", "alarm.to.log", "_DLT"),
            "AB_alarm_to_log_DLT"
        );
    }
}
