//! Envelope <-> NATS headers and payload.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::header::HeaderName;
use async_nats::{HeaderMap, HeaderValue};

use std::borrow::Cow;

use crate::core::{message_id_time, Envelope, Error, ErrorKind, Result};

pub(crate) const MSG_ID: &str = "Nats-Msg-Id";
const KEY: &str = "Anybroker-Key";
const PUBLISHED_AT: &str = "Anybroker-Published-At";
/// The standard header other frameworks read (and write, in any case).
const CONTENT_TYPE: &str = "content-type";
/// The content type's header as anybroker 0.1 named it (written for other than JSON
/// only); still read.
const CONTENT_TYPE_BEFORE: &str = "Anybroker-Content-Type";
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

/// The headers carrying `envelope`'s metadata and application headers, and the content
/// type: always with `content_type_header`, else only when it is not JSON. NATS headers
/// are lines of text: line breaks in a value travel as spaces, and a header name that
/// is not printable ASCII without `:` is refused (`Encode`, naming it), where the
/// client would panic.
pub(crate) fn to_headers(
    envelope: &Envelope,
    ids: IdHeaders,
    content_type_header: bool,
) -> Result<HeaderMap> {
    let mut h = HeaderMap::new();
    // itoa, not `format!`: the formatting machinery cost ~450 instructions a publish.
    let mut digits = itoa::Buffer::new();
    let id = one_line(&envelope.id);
    match (ids, envelope.published_micros_to_send()) {
        (IdHeaders::JetStream, time) => {
            h.insert(MSG_ID_NAME, &*id);
            if let Some(micros) = time {
                h.insert(PUBLISHED_AT_NAME, digits.format(micros));
            }
        }
        (IdHeaders::Core, None) => h.insert(META_NAME, &*id),
        (IdHeaders::Core, Some(micros)) => {
            let micros = digits.format(micros);
            let mut meta = String::with_capacity(micros.len() + 1 + id.len());
            meta.push_str(micros);
            meta.push(' ');
            meta.push_str(&id);
            h.insert(META_NAME, meta);
        }
    }
    if let Some(k) = &envelope.key {
        h.insert(KEY_NAME, &*one_line(k));
    }
    if &*envelope.content_type == crate::CONTENT_TYPE_JSON {
        if content_type_header {
            h.insert(CONTENT_TYPE_NAME, json_content_type());
        }
    } else {
        h.insert(CONTENT_TYPE_NAME, &*one_line(&envelope.content_type));
    }
    if envelope.attempt != 1 {
        h.insert(ATTEMPT_NAME, envelope.attempt.to_string());
    }
    for (name, value) in &envelope.headers {
        check_header_name(name)?;
        h.insert(name.as_str(), &*one_line(value));
    }
    Ok(h)
}

/// The JSON content type as a header value, made (and checked by the client) once; a
/// publish clones it.
fn json_content_type() -> HeaderValue {
    static JSON: std::sync::LazyLock<HeaderValue> =
        std::sync::LazyLock::new(|| HeaderValue::from(crate::CONTENT_TYPE_JSON));
    JSON.clone()
}

/// `value` as one line: line breaks become spaces (the client panics on them).
pub(crate) fn one_line(value: &str) -> Cow<'_, str> {
    // Byte by byte: `contains` with a set of chars decodes each char first.
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        Cow::Owned(value.replace(['\r', '\n'], " "))
    } else {
        Cow::Borrowed(value)
    }
}

/// Refuses a header name NATS cannot carry (the client panics on it).
fn check_header_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains(|c: char| !c.is_ascii_graphic() || c == ':') {
        return Err(Error::new(
            ErrorKind::Encode,
            format!(
                "header name {name:?} cannot travel on NATS: expected printable ASCII \
                 without spaces or ':'"
            ),
        ));
    }
    Ok(())
}

/// Where a message was read, for one published around the library: the id it gets
/// when no header names one, and the time the broker stored it (if it says).
pub(crate) struct Origin {
    pub(crate) id: String,
    pub(crate) time: Option<SystemTime>,
}

impl Origin {
    /// A core NATS message: nothing stored, so a fresh id and no time.
    pub(crate) fn unstored() -> Origin {
        Origin {
            id: crate::new_message_id().to_string(),
            time: None,
        }
    }

    /// A JetStream message: `<stream>/<sequence>@<stored nanoseconds>`, which a stream
    /// deleted and created again under the same name does not repeat (its sequences
    /// start again at 1, its times do not), and the time the stream stored it.
    pub(crate) fn stored(stream: &str, sequence: u64, nanos: Option<u128>) -> Origin {
        let time = nanos.and_then(|n| {
            let n = u64::try_from(n).ok()?;
            UNIX_EPOCH.checked_add(Duration::from_nanos(n))
        });
        let id = match nanos {
            Some(n) => format!("{stream}/{sequence}@{n}"),
            None => format!("{stream}/{sequence}"),
        };
        Origin { id, time }
    }

    /// A JetStream message, from its `$JS.ACK.` reply subject (ADR-15: stream,
    /// sequence and stored time); a fresh id when there is none.
    pub(crate) fn of_reply(reply: Option<&str>) -> Origin {
        let parsed = reply.and_then(|reply| {
            let tokens: Vec<&str> = reply.strip_prefix("$JS.ACK.")?.split('.').collect();
            let first = match tokens.len() {
                7 => 0,
                n if n >= 9 => 2,
                _ => return None,
            };
            let sequence = tokens[first + 3].parse().ok()?;
            Some(Origin::stored(
                tokens[first],
                sequence,
                tokens[first + 5].parse().ok(),
            ))
        });
        parsed.unwrap_or_else(Origin::unstored)
    }
}

/// Rebuilds an envelope of `channel` from either header layout, or from the headers
/// another client wrote: the id is anybroker's, else `Nats-Msg-Id`, else the
/// publisher's own (a `message_id` or `correlation_id` header), else `origin`'s; the
/// content type is the standard `content-type` header (any case) or anybroker's
/// earlier one. The payload is kept whatever it is.
pub(crate) fn from_message(
    channel: &Arc<str>,
    headers: Option<&HeaderMap>,
    payload: bytes::Bytes,
    origin: impl FnOnce() -> Origin,
) -> Envelope {
    let mut e = Envelope::reading(channel.clone());
    // One pass over the headers: a lookup by name hashes it, as costly as the visit.
    let (mut id, mut published_at) = (None, None);
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
            KEY => e.key = Some(Arc::from(value)),
            CONTENT_TYPE | CONTENT_TYPE_BEFORE => e.set_content_type_from_wire(value),
            other if crate::is_content_type_header(other) => e.set_content_type_from_wire(value),
            ATTEMPT => e.attempt = value.parse().unwrap_or(1),
            other => {
                application.insert(other.to_string(), value.to_string());
            }
        }
    }
    let id = id
        .map(crate::MessageId::from)
        .or_else(|| crate::core::publisher_id(&application));
    // Without a time header the id carries it (a foreign id of the same shape reads as
    // some time too); else the time the stream stored the message; else now.
    let time = published_at.or_else(|| id.as_deref().and_then(message_id_time));
    (e.id, e.published_at) = match (id, time) {
        (Some(id), Some(time)) => (id, time),
        (id, time) => {
            let origin = origin();
            (
                id.unwrap_or_else(|| crate::MessageId::from(origin.id)),
                time.or(origin.time).unwrap_or_else(SystemTime::now),
            )
        }
    };
    e.payload = payload;
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
    UNIX_EPOCH.checked_add(Duration::from_micros(us))
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
            let h = to_headers(e, ids, true).unwrap();
            from_message(&Arc::from("a.b"), Some(&h), e.payload.clone(), || Origin {
                id: "x".into(),
                time: None,
            })
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
        let h = to_headers(&e, IdHeaders::JetStream, true).unwrap();
        assert_eq!(
            h.iter().count(),
            4,
            "msg id, key, content type and one application header"
        );
        assert_eq!(
            h.get("content-type").map(|v| v.as_str()),
            Some(crate::CONTENT_TYPE_JSON),
            "the standard content type, written always"
        );
        assert!(h.get(PUBLISHED_AT).is_none());
        let h = to_headers(&e, IdHeaders::Core, true).unwrap();
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
        let h = to_headers(&with_space, IdHeaders::Core, true).unwrap();
        assert_eq!(
            h.iter().count(),
            4,
            "meta, key, content type and one application header"
        );
        // A message from a publisher that still names the header `Anybroker-Meta`.
        let mut before = HeaderMap::new();
        before.insert(META_BEFORE, format!("1700000000000001 {}", e.id).as_str());
        let back = from_message(&Arc::from("a.b"), Some(&before), e.payload.clone(), || {
            unreachable!("the header names the id and time")
        });
        assert_eq!(back.id, e.id);
        assert_eq!(unix_micros(back.published_at), 1_700_000_000_000_001);
        let bare = from_message(&Arc::from("a.b"), None, e.payload.clone(), || {
            Origin::of_reply(Some("$JS.ACK.S.c.1.42.17.1700000000123456789.0"))
        });
        assert_eq!(&*bare.id, "S/42@1700000000123456789");
        assert_eq!(unix_micros(bare.published_at), 1_700_000_000_123_456);
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

    #[test]
    fn foreign_messages_keep_their_publishers_id_content_type_and_stored_time() {
        let read = |h: &HeaderMap, reply: &str| {
            from_message(&Arc::from("c"), Some(h), bytes::Bytes::new(), || {
                Origin::of_reply(Some(reply))
            })
        };
        let reply = "$JS.ACK.S.c.1.42.17.1700000000123456789.0";
        // FastStream's way: its id in `correlation_id`, the standard content type.
        let mut h = HeaderMap::new();
        h.insert("correlation_id", "fs-1");
        h.insert("Content-Type", "application/x-protobuf");
        let e = read(&h, reply);
        assert_eq!(&*e.id, "fs-1");
        assert_eq!(&*e.content_type, "application/x-protobuf");
        assert_eq!(e.headers.get("correlation_id").map(|v| v.as_str()), Some("fs-1"));
        assert!(!e.headers.contains_key("Content-Type"));
        assert_eq!(unix_micros(e.published_at), 1_700_000_000_123_456, "stored time");
        // `Nats-Msg-Id` first; the time is still the stream's.
        h.insert(MSG_ID, "own-7");
        let e = read(&h, reply);
        assert_eq!(&*e.id, "own-7");
        assert_eq!(unix_micros(e.published_at), 1_700_000_000_123_456);
        // No id at all: stream, sequence and stored time, so a stream created again
        // (sequence 42 again, later) gives another id.
        let bare = HeaderMap::new();
        let first = read(&bare, reply);
        let again = read(&bare, "$JS.ACK.S.c.1.42.17.1800000000000000000.0");
        assert_eq!(&*first.id, "S/42@1700000000123456789");
        assert_ne!(first.id, again.id);
        // The 9-token layout (domain and account) names the same parts.
        let domain = read(&bare, "$JS.ACK._.ACC.S.c.1.42.17.1700000000123456789.0.tok");
        assert_eq!(domain.id, first.id);
    }

    #[test]
    fn header_lines_and_names_nats_cannot_carry() {
        let e = Envelope::new("c", &b"{}"[..])
            .with_key("k\r\n1")
            .with_header("x-anybroker-error", "first line\nsecond line");
        let h = to_headers(&e, IdHeaders::JetStream, true).unwrap();
        assert_eq!(
            h.get("x-anybroker-error").map(|v| v.as_str()),
            Some("first line second line")
        );
        assert_eq!(h.get(KEY).map(|v| v.as_str()), Some("k  1"));
        assert_eq!(
            h.get(CONTENT_TYPE).map(|v| v.as_str()),
            Some(crate::CONTENT_TYPE_JSON)
        );
        // `content_type_header = false`: JSON says nothing, another type still does.
        let quiet = |e: &Envelope| to_headers(e, IdHeaders::Core, false).unwrap();
        assert!(quiet(&e).get(CONTENT_TYPE).is_none());
        let other = e.clone().with_content_type("application/x-protobuf");
        assert_eq!(
            quiet(&other).get(CONTENT_TYPE).map(|v| v.as_str()),
            Some("application/x-protobuf")
        );
        for bad in ["with space", "colon:name", "é", ""] {
            let e = Envelope::new("c", &b"{}"[..]).with_header(bad, "v");
            let err = to_headers(&e, IdHeaders::Core, true).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Encode);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn decoding_arbitrary_messages_and_subjects_never_panics() {
        crate::core::arbitrary::Arbitrary::run(|a| {
            let known = [
                META,
                META_BEFORE,
                MSG_ID,
                PUBLISHED_AT,
                DUE,
                KEY,
                CONTENT_TYPE,
                CONTENT_TYPE_BEFORE,
                ATTEMPT,
                "Content-Type",
                "correlation_id",
            ];
            let mut h = HeaderMap::new();
            for _ in 0..a.below(6) {
                // The client itself refuses (panics on) names and values it cannot
                // carry; the decoder sees only those it can.
                let name: String = a.name(&known).chars().filter(|c| c.is_ascii_graphic() && *c != ':').collect();
                let value = one_line(&a.value()).into_owned();
                if !name.is_empty() {
                    h.insert(name.as_str(), value.as_str());
                }
            }
            let reply = match a.below(3) {
                0 => format!(
                    "$JS.ACK.{}",
                    (0..a.below(12)).map(|_| a.value()).collect::<Vec<_>>().join(".")
                ),
                1 => format!("$JS.ACK.{}", a.text(60)),
                _ => a.text(60),
            };
            let _ = delivery_numbers(&reply);
            let e = from_message(&Arc::from("c"), Some(&h), a.bytes(64).into(), || {
                Origin::of_reply(Some(&reply))
            });
            let _ = to_headers(&e, IdHeaders::JetStream, true);
        });
    }
}
