//! Envelope <-> Redis stream fields, and the length-prefixed frame used by pub/sub.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use redis::Value;

use crate::core::{message_id_time, Envelope, Error, ErrorKind, MessageId, Result};

const ID: &str = "id";
const KEY: &str = "k";
const CONTENT_TYPE: &str = "ct";
/// Microseconds since the Unix epoch; written only when the id does not carry the
/// publish time (an id the application chose): one field fewer per entry, i.e. two
/// arguments fewer to send and store and two allocations fewer to read it.
const PUBLISHED_AT: &str = "ts";
const ATTEMPT: &str = "a";
const PAYLOAD: &str = "p";
const HEADER_PREFIX: &str = "h:";

/// The fields of a stream entry (or hash) holding `envelope`.
pub(crate) fn to_fields(envelope: &Envelope) -> Vec<(Bytes, Bytes)> {
    let mut f = Vec::with_capacity(6 + envelope.headers.len());
    f.push((
        Bytes::from_static(ID.as_bytes()),
        Bytes::copy_from_slice(envelope.id.as_bytes()),
    ));
    if let Some(k) = &envelope.key {
        f.push((
            Bytes::from_static(KEY.as_bytes()),
            Bytes::copy_from_slice(k.as_bytes()),
        ));
    }
    if &*envelope.content_type != crate::CONTENT_TYPE_JSON {
        f.push((
            Bytes::from_static(CONTENT_TYPE.as_bytes()),
            Bytes::copy_from_slice(envelope.content_type.as_bytes()),
        ));
    }
    if let Some(micros) = envelope.published_micros_to_send() {
        f.push((
            Bytes::from_static(PUBLISHED_AT.as_bytes()),
            Bytes::from(micros.to_string()),
        ));
    }
    if envelope.attempt != 1 {
        f.push((
            Bytes::from_static(ATTEMPT.as_bytes()),
            Bytes::from(envelope.attempt.to_string()),
        ));
    }
    for (name, value) in &envelope.headers {
        f.push((
            Bytes::from(format!("{HEADER_PREFIX}{name}")),
            Bytes::copy_from_slice(value.as_bytes()),
        ));
    }
    f.push((
        Bytes::from_static(PAYLOAD.as_bytes()),
        envelope.payload.clone(),
    ));
    f
}

/// The argument count and bytes [`write_fields`] adds at most, to size a command up
/// front: grown one argument at a time, its two buffers were reallocated about ten
/// times per publish (a fifth of the publish path's instructions, measured).
pub(crate) fn fields_size(envelope: &Envelope) -> (usize, usize) {
    // Id, content type, publish time, attempt and payload, each a name and a value;
    // every name is at most 2 bytes but the headers', numbers at most 20 digits.
    let mut args = 10;
    let mut bytes = 5 * 2 + envelope.id.len() + 20 + 10 + envelope.payload.len();
    if let Some(k) = &envelope.key {
        args += 2;
        bytes += 2 + k.len();
    }
    bytes += envelope.content_type.len();
    for (name, value) in &envelope.headers {
        args += 2;
        bytes += HEADER_PREFIX.len() + name.len() + value.len();
    }
    (args, bytes)
}

/// Appends `envelope`'s fields to an XADD/HSET command: the same fields as
/// [`to_fields`], written straight into the command (the publish hot path).
pub(crate) fn write_fields(cmd: &mut redis::Cmd, envelope: &Envelope) {
    cmd.arg(ID).arg(envelope.id.as_bytes());
    if let Some(k) = &envelope.key {
        cmd.arg(KEY).arg(k.as_bytes());
    }
    if &*envelope.content_type != crate::CONTENT_TYPE_JSON {
        cmd.arg(CONTENT_TYPE).arg(envelope.content_type.as_bytes());
    }
    if let Some(micros) = envelope.published_micros_to_send() {
        cmd.arg(PUBLISHED_AT).arg(micros);
    }
    if envelope.attempt != 1 {
        cmd.arg(ATTEMPT).arg(envelope.attempt);
    }
    for (name, value) in &envelope.headers {
        cmd.arg(format!("{HEADER_PREFIX}{name}"))
            .arg(value.as_bytes());
    }
    cmd.arg(PAYLOAD).arg(&envelope.payload[..]);
}

/// Rebuilds an envelope of `channel` from an entry's fields. Never fails, and keeps
/// everything the entry carried:
/// - a field anybroker does not write becomes an application header of the same name
///   (so a dead letter or a retry writes it again);
/// - an entry without the payload field takes its payload from FastStream's `__data__`
///   field (its binary or JSON format, whose headers become headers), else from its
///   only field when it has one; one that is none of these has an empty payload and
///   all its fields as headers, and the router dead-letters it as undecodable;
/// - without an `id` field, the id is the publisher's own (a `message_id` or
///   `correlation_id` header), else the stream entry id.
///
/// The publish time is the `ts` field's, else the one the id carries, else the time
/// the stream entry id says Redis added the entry.
pub(crate) fn from_fields(
    channel: &Arc<str>,
    entry_id: &str,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
) -> Envelope {
    let mut envelope = Envelope::reading(channel.clone());
    let (mut id, mut published_at, mut payload) = (None, None, None);
    let mut foreign = Vec::new();
    for (name, value) in fields {
        match name.as_slice() {
            b"id" => id = Some(MessageId::from(String::from_utf8_lossy(&value).as_ref())),
            b"k" => envelope.key = Some(Arc::from(String::from_utf8_lossy(&value))),
            b"ct" => envelope.content_type = Arc::from(String::from_utf8_lossy(&value)),
            b"ts" => {
                published_at = parse_u64(&value).and_then(|us| UNIX_EPOCH.checked_add(Duration::from_micros(us)));
            }
            b"a" => envelope.attempt = parse_u64(&value).map_or(1, |a| a.clamp(1, u32::MAX as u64) as u32),
            b"p" => payload = Some(Bytes::from(value)),
            n if n.starts_with(HEADER_PREFIX.as_bytes()) => {
                let name = String::from_utf8_lossy(&n[HEADER_PREFIX.len()..]).into_owned();
                envelope
                    .headers
                    .insert(name, String::from_utf8_lossy(&value).into_owned());
            }
            _ => foreign.push((name, value)),
        }
    }
    match payload {
        Some(payload) => envelope.payload = payload,
        None => read_foreign_body(&mut envelope, &mut foreign),
    }
    for (name, value) in foreign {
        envelope.headers.insert(
            String::from_utf8_lossy(&name).into_owned(),
            String::from_utf8_lossy(&value).into_owned(),
        );
    }
    envelope.id = id
        .or_else(|| crate::core::publisher_id(&envelope.headers))
        .unwrap_or_else(|| MessageId::from(entry_id));
    envelope.published_at = published_at
        .or_else(|| message_id_time(&envelope.id))
        .or_else(|| entry_time(entry_id))
        .unwrap_or(UNIX_EPOCH);
    envelope
}

/// FastStream's stream field, holding its message format.
const FASTSTREAM_FIELD: &[u8] = b"__data__";
/// The first bytes of FastStream's binary message format.
const FASTSTREAM_BINARY: &[u8] = b"\x89BIN\r\n\x1a\n";

/// The payload of an entry anybroker did not write, taken out of `fields`: FastStream's
/// message, else the only field.
fn read_foreign_body(envelope: &mut Envelope, fields: &mut Vec<(Vec<u8>, Vec<u8>)>) {
    let at = fields.iter().position(|(n, _)| n == FASTSTREAM_FIELD);
    let at = match at {
        Some(at) => at,
        None if fields.len() == 1 => 0,
        None => return,
    };
    let (name, value) = fields.remove(at);
    let parsed = if name == FASTSTREAM_FIELD {
        parse_faststream_binary(&value).or_else(|| parse_faststream_json(&value))
    } else {
        None
    };
    match parsed {
        Some((headers, body)) => {
            envelope.headers.extend(headers);
            envelope.take_content_type_header();
            envelope.payload = body;
        }
        None => envelope.payload = Bytes::from(value),
    }
}

/// FastStream's binary format: the 8 identifying bytes, a version (u16), the offsets
/// of the header count and of the data (u32 each), the header count (u16), each header
/// as a key and a value (u16 length, UTF-8), then the data. Big endian throughout.
fn parse_faststream_binary(raw: &[u8]) -> Option<(Vec<(String, String)>, Bytes)> {
    let rest = raw.strip_prefix(FASTSTREAM_BINARY)?;
    let u16_at = |at: usize| -> Option<usize> {
        Some(u16::from_be_bytes(raw.get(at..at.checked_add(2)?)?.try_into().ok()?) as usize)
    };
    let u32_at = |at: usize| -> Option<usize> {
        Some(u32::from_be_bytes(raw.get(at..at.checked_add(4)?)?.try_into().ok()?) as usize)
    };
    let start = raw.len() - rest.len();
    let (headers_at, data_at) = (u32_at(start + 2)?, u32_at(start + 6)?);
    let count = u16_at(headers_at)?;
    let mut at = headers_at + 2;
    let text = |at: &mut usize| -> Option<String> {
        let len = u16_at(*at)?;
        let s = raw.get(*at + 2..(*at + 2).checked_add(len)?)?;
        *at += 2 + len;
        Some(String::from_utf8_lossy(s).into_owned())
    };
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = text(&mut at)?;
        headers.push((name, text(&mut at)?));
    }
    let body = raw.get(data_at..)?;
    Some((headers, Bytes::copy_from_slice(body)))
}

/// FastStream's JSON format: `{"data": <body as text>, "headers": {...}}`.
fn parse_faststream_json(raw: &[u8]) -> Option<(Vec<(String, String)>, Bytes)> {
    let serde_json::Value::Object(mut message) = serde_json::from_slice(raw).ok()? else {
        return None;
    };
    let serde_json::Value::String(data) = message.remove("data")? else {
        return None;
    };
    let headers = match message.remove("headers") {
        Some(serde_json::Value::Object(h)) => h
            .into_iter()
            .map(|(name, value)| match value {
                serde_json::Value::String(s) => (name, s),
                other => (name, other.to_string()),
            })
            .collect(),
        _ => Vec::new(),
    };
    Some((headers, Bytes::from(data)))
}

/// When Redis added a stream entry: the milliseconds before the `-` of its id.
fn entry_time(entry_id: &str) -> Option<std::time::SystemTime> {
    let (ms, _) = entry_id.split_once('-')?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms.parse().ok()?))
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// One entry of a stream reply: its id and fields.
pub(crate) type Entry = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// A string reply's text.
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// A string reply's text, moved out without copying when it is valid UTF-8.
fn into_text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(
            String::from_utf8(b)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A reply's bytes, moved out without copying.
fn into_bytes(v: Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

fn into_items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

fn malformed(what: &str) -> Error {
    Error::new(
        ErrorKind::Broker,
        format!("unexpected Redis reply to {what}"),
    )
}

/// Entries of an `XRANGE`/`XCLAIM` reply or of one stream in an `XREADGROUP` reply.
/// Entries whose body is nil (deleted while pending) come back with no fields.
pub(crate) fn parse_entries(v: Value) -> Result<Vec<Entry>> {
    let items = into_items(v);
    let mut out = Vec::with_capacity(items.len());
    for entry in items {
        let mut parts = into_items(entry).into_iter();
        let id = parts
            .next()
            .and_then(into_text)
            .ok_or_else(|| malformed("a stream read"))?;
        let mut fields = Vec::new();
        if let Some(body) = parts.next() {
            let mut flat = into_items(body).into_iter();
            fields.reserve_exact(flat.len() / 2);
            while let (Some(n), Some(v)) = (flat.next(), flat.next()) {
                fields.push((into_bytes(n), into_bytes(v)));
            }
        }
        out.push((id, fields));
    }
    Ok(out)
}

/// `XREADGROUP` reply: entries per stream key.
pub(crate) fn parse_read(v: Value) -> Result<Vec<(String, Vec<Entry>)>> {
    let mut out = Vec::new();
    match v {
        Value::Nil => {}
        Value::Map(m) => {
            for (k, entries) in m {
                let key = into_text(k).ok_or_else(|| malformed("XREADGROUP"))?;
                out.push((key, parse_entries(entries)?));
            }
        }
        other => {
            for stream in into_items(other) {
                let mut parts = into_items(stream).into_iter();
                let key = parts
                    .next()
                    .and_then(into_text)
                    .ok_or_else(|| malformed("XREADGROUP"))?;
                let entries = match parts.next() {
                    Some(e) => parse_entries(e)?,
                    None => Vec::new(),
                };
                out.push((key, entries));
            }
        }
    }
    Ok(out)
}

/// `XAUTOCLAIM` reply: next cursor and the claimed entries.
pub(crate) fn parse_autoclaim(v: Value) -> Result<(String, Vec<Entry>)> {
    let mut parts = into_items(v).into_iter();
    let cursor = parts
        .next()
        .and_then(into_text)
        .ok_or_else(|| malformed("XAUTOCLAIM"))?;
    let entries = match parts.next() {
        Some(e) => parse_entries(e)?,
        None => Vec::new(),
    };
    Ok((cursor, entries))
}

/// Pub/sub carries the fields in one message: `u32 count`, then per field
/// `u32 len, name, u32 len, value` (big endian).
pub(crate) fn frame(fields: &[(Bytes, Bytes)]) -> Vec<u8> {
    let size: usize = fields.iter().map(|(n, v)| 8 + n.len() + v.len()).sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(fields.len() as u32).to_be_bytes());
    for (n, v) in fields {
        out.extend_from_slice(&(n.len() as u32).to_be_bytes());
        out.extend_from_slice(n);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// The fields of a pub/sub frame; a message that is not a frame becomes one payload
/// field, so it is dead-lettered as undecodable rather than dropped.
pub(crate) fn unframe(data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    fn parse(data: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut pos = 0usize;
        let mut take = |len: usize| -> Option<&[u8]> {
            let s = data.get(pos..pos.checked_add(len)?)?;
            pos += len;
            Some(s)
        };
        let count = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        let mut out = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let n = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
            let name = take(n)?.to_vec();
            let n = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
            let value = take(n)?.to_vec();
            out.push((name, value));
        }
        (pos == data.len()).then_some(out)
    }
    parse(data).unwrap_or_else(|| vec![(PAYLOAD.as_bytes().to_vec(), data.to_vec())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::unix_micros;

    #[test]
    fn fields_round_trip() {
        let e = Envelope::new("c", &b"{\"a\":1}"[..])
            .with_key("k1")
            .with_header("tenant", "acme");
        let fields: Vec<(Vec<u8>, Vec<u8>)> = to_fields(&e)
            .into_iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        let back = from_fields(&Arc::from("c"), "1-0", fields.clone());
        assert_eq!(back.id, e.id);
        assert_eq!(back.key, e.key);
        assert_eq!(back.headers, e.headers);
        assert_eq!(back.payload, e.payload);
        assert_eq!(unix_micros(back.published_at), unix_micros(e.published_at));
        assert!(
            !fields.iter().any(|(n, _)| n == PUBLISHED_AT.as_bytes()),
            "a made id carries the publish time: no ts field"
        );
        // An id of the application's own: the time travels in `ts`.
        let own = e.clone().with_id("order-17");
        let own_fields: Vec<(Vec<u8>, Vec<u8>)> = to_fields(&own)
            .into_iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        assert!(own_fields.iter().any(|(n, _)| n == PUBLISHED_AT.as_bytes()));
        let back = from_fields(&Arc::from("c"), "1-0", own_fields);
        assert_eq!(&*back.id, "order-17");
        assert_eq!(unix_micros(back.published_at), unix_micros(e.published_at));
        // An entry written around the library: the entry id's time.
        let foreign = vec![(b"p".to_vec(), b"{}".to_vec())];
        let back = from_fields(&Arc::from("c"), "1700000000123-4", foreign);
        assert_eq!(unix_micros(back.published_at), 1_700_000_000_123_000);
        let mut cmd = redis::cmd("XADD");
        write_fields(&mut cmd, &e);
        let mut direct = redis::cmd("XADD");
        for (n, v) in to_fields(&e) {
            direct.arg(&n[..]).arg(&v[..]);
        }
        assert_eq!(cmd.get_packed_command(), direct.get_packed_command());
        let mut fully = e.clone().with_header("trace", "t-1");
        fully.content_type = Arc::from("application/x-protobuf");
        fully.attempt = 4_000_000_000;
        for envelope in [&e, &fully] {
            let (args, bytes) = fields_size(envelope);
            let mut cmd = redis::Cmd::new();
            write_fields(&mut cmd, envelope);
            let written: Vec<usize> = cmd
                .args_iter()
                .map(|a| match a {
                    redis::Arg::Simple(b) => b.len(),
                    _ => 0,
                })
                .collect();
            assert!(written.len() <= args, "{} args > {args}", written.len());
            let total: usize = written.iter().sum();
            assert!(total <= bytes, "{total} bytes > {bytes}");
        }
        let framed = frame(&to_fields(&e));
        assert_eq!(unframe(&framed), fields);
        assert_eq!(
            unframe(b"garbage"),
            vec![(b"p".to_vec(), b"garbage".to_vec())]
        );
    }

    fn fields(pairs: &[(&str, &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn foreign_entries_keep_every_field() {
        let c: Arc<str> = Arc::from("c");
        // Several fields and none is the payload: all kept, as headers, which a dead
        // letter writes again.
        let e = from_fields(&c, "1-0", fields(&[("order", b"17"), ("note", b"x")]));
        assert!(e.payload.is_empty());
        assert_eq!(e.headers.get("order").map(String::as_str), Some("17"));
        assert_eq!(e.headers.get("note").map(String::as_str), Some("x"));
        assert_eq!(&*e.id, "1-0");
        let again: Vec<(Vec<u8>, Vec<u8>)> = to_fields(&e)
            .into_iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(from_fields(&c, "2-0", again).headers, e.headers);
        // One field: its value is the payload.
        let e = from_fields(&c, "1-0", fields(&[("data", br#"{"n":1}"#)]));
        assert_eq!(&e.payload[..], br#"{"n":1}"#);
        // Beside anybroker's payload field, a foreign field is a header.
        let e = from_fields(&c, "1-0", fields(&[("p", b"{}"), ("extra", b"1")]));
        assert_eq!(&e.payload[..], b"{}");
        assert_eq!(e.headers.get("extra").map(String::as_str), Some("1"));
    }

    #[test]
    fn faststream_messages_are_read() {
        let c: Arc<str> = Arc::from("c");
        // Binary format: magic, version 1, offsets, two headers, the data.
        let headers = [("correlation_id", "fs-3"), ("content-type", "application/json")];
        let mut raw = FASTSTREAM_BINARY.to_vec();
        raw.extend_from_slice(&1u16.to_be_bytes());
        let headers_at = raw.len() + 8;
        let size: usize = headers.iter().map(|(k, v)| 4 + k.len() + v.len()).sum();
        raw.extend_from_slice(&(headers_at as u32).to_be_bytes());
        raw.extend_from_slice(&((headers_at + 2 + size) as u32).to_be_bytes());
        raw.extend_from_slice(&(headers.len() as u16).to_be_bytes());
        for (k, v) in headers {
            raw.extend_from_slice(&(k.len() as u16).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u16).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        raw.extend_from_slice(br#"{"n":3}"#);
        let e = from_fields(&c, "1700000000000-0", fields(&[("__data__", &raw)]));
        assert_eq!(&e.payload[..], br#"{"n":3}"#);
        assert_eq!(&*e.id, "fs-3");
        assert_eq!(&*e.content_type, crate::CONTENT_TYPE_JSON);
        assert_eq!(e.headers.get("correlation_id").map(String::as_str), Some("fs-3"));
        assert!(!e.headers.contains_key("content-type"));
        // A truncated binary message is kept whole as the payload.
        let e = from_fields(&c, "1-0", fields(&[("__data__", &raw[..20])]));
        assert_eq!(&e.payload[..], &raw[..20]);
        // JSON format.
        let json = br#"{"data": "{\"n\":4}", "headers": {"correlation_id": "fs-4", "content-type": "text/plain", "priority": 5}}"#;
        let e = from_fields(&c, "1-0", fields(&[("__data__", json)]));
        assert_eq!(&e.payload[..], br#"{"n":4}"#);
        assert_eq!(&*e.id, "fs-4");
        assert_eq!(&*e.content_type, "text/plain");
        assert_eq!(e.headers.get("priority").map(String::as_str), Some("5"));
    }

    /// An arbitrary reply value, nested up to `depth`.
    fn arbitrary_value(a: &mut crate::core::arbitrary::Arbitrary, depth: u32) -> Value {
        match a.below(if depth == 0 { 4 } else { 7 }) {
            0 => Value::Nil,
            1 => Value::BulkString(a.bytes(32)),
            2 => Value::SimpleString(a.text(16)),
            3 => Value::Int(a.next() as i64),
            4 => Value::Array((0..a.below(5)).map(|_| arbitrary_value(a, depth - 1)).collect()),
            5 => Value::Map(
                (0..a.below(4))
                    .map(|_| (arbitrary_value(a, depth - 1), arbitrary_value(a, depth - 1)))
                    .collect(),
            ),
            _ => Value::Set((0..a.below(4)).map(|_| arbitrary_value(a, depth - 1)).collect()),
        }
    }

    #[test]
    fn decoding_arbitrary_entries_and_replies_never_panics() {
        crate::core::arbitrary::Arbitrary::run(|a| {
            let known = ["id", "k", "ct", "ts", "a", "p", "h:x", "__data__", "correlation_id"];
            let fields: Vec<(Vec<u8>, Vec<u8>)> = (0..a.below(8))
                .map(|_| {
                    let name = a.name(&known).into_bytes();
                    let value = match a.below(3) {
                        0 => [FASTSTREAM_BINARY, &a.bytes(64)].concat(),
                        1 => a.value().into_bytes(),
                        _ => a.bytes(64),
                    };
                    (name, value)
                })
                .collect();
            let entry_id = if a.one_in(2) {
                format!("{}-{}", a.next(), a.below(9))
            } else {
                a.text(24)
            };
            let _ = from_fields(&Arc::from("c"), &entry_id, fields);
            let _ = unframe(&a.bytes(128));
            let _ = parse_read(arbitrary_value(a, 4));
            let _ = parse_autoclaim(arbitrary_value(a, 4));
            let _ = parse_entries(arbitrary_value(a, 4));
        });
    }
}
