//! Payload <-> the channel's type: JSON, the one codec, for every way a payload is
//! written (publishes, requests, replies) and read (handlers, responders, replies,
//! dead letters, the test recorder).

use std::cell::RefCell;

use anybroker_brokers::{is_json, Envelope};
use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How much each thread's payload buffer holds: payloads are copied one after another
/// into it, each a slice of it, so one allocation (and one count of the slices alive)
/// serves the payloads of many messages.
const PAYLOAD_CHUNK: usize = 8 * 1024;

/// Largest scratch buffer a thread keeps between messages.
const SCRATCH_KEPT: usize = 64 * 1024;

/// A thread's encoding buffers: JSON is written into `scratch` (a `Vec`, the fastest
/// writer, reused), then copied into `payloads`, which the payload is a slice of.
struct Encoding {
    scratch: Vec<u8>,
    payloads: BytesMut,
}

thread_local! {
    static ENCODING: RefCell<Encoding> = RefCell::new(Encoding {
        scratch: Vec::with_capacity(256),
        payloads: BytesMut::with_capacity(PAYLOAD_CHUNK),
    });
}

/// `message` as JSON. The payload is a slice of this thread's payload buffer, shared
/// with the payloads encoded before and after it: the buffer is freed (or written over
/// from its start) only once all of them are dropped, so a payload kept long keeps up
/// to [`PAYLOAD_CHUNK`] bytes; a store that keeps payloads long (the embedded broker's
/// dead letters and delayed messages) keeps a copy of its own.
pub(crate) fn encode<M: Serialize + ?Sized>(message: &M) -> serde_json::Result<Bytes> {
    ENCODING.with(|encoding| {
        // Taken only when the message's own `Serialize` is not encoding another one on
        // this thread (a payload that encodes itself).
        let Ok(mut encoding) = encoding.try_borrow_mut() else {
            // serde_json itself, whose bytes the writer matches: a second call of the
            // writer here kept it from being inlined into the path every publish takes
            // (publish +1.1% instructions).
            return serde_json::to_vec(message).map(Bytes::from);
        };
        let Encoding { scratch, payloads } = &mut *encoding;
        scratch.clear();
        crate::json_writer::write(scratch, message)?;
        // Starts again at the buffer's beginning when no payload of it is alive any
        // more, else in a new chunk, when the rest is too small.
        payloads.reserve(scratch.len());
        payloads.extend_from_slice(scratch);
        // One large message must not leave its size behind on the thread.
        if scratch.capacity() > SCRATCH_KEPT {
            *scratch = Vec::new();
        }
        Ok(payloads.split().freeze())
    })
}

/// Why an envelope's payload is not an `M`.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// The content type says the payload is not JSON, so it is not read at all.
    ContentType(String),
    /// The payload is not JSON of `M`'s shape.
    Json(serde_json::Error),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::ContentType(ct) => write!(
                f,
                "content type {ct:?} cannot be decoded: the channel reads JSON (application/json, text/json, */*+json)"
            ),
            DecodeError::Json(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::Json(e) => Some(e),
            DecodeError::ContentType(_) => None,
        }
    }
}

/// The payload of `envelope` as an `M`, refused unread when its content type is not
/// JSON (a foreign publisher's protobuf that happens to parse is not taken for JSON).
pub(crate) fn decode<M: DeserializeOwned>(envelope: &Envelope) -> Result<M, DecodeError> {
    if !is_json(&envelope.content_type) {
        return Err(DecodeError::ContentType(envelope.content_type.to_string()));
    }
    // Checked as UTF-8 once, the payload is read as a `str`: no string in it is then
    // checked again. An ASCII payload (nearly every one) is checked eight bytes at a
    // time, with less work than `from_utf8`'s. Any payload reads the same either way;
    // one that is not UTF-8 is read as bytes for serde_json's error, which says where.
    let payload = &envelope.payload[..];
    let text = if payload.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        Ok(unsafe { std::str::from_utf8_unchecked(payload) })
    } else {
        std::str::from_utf8(payload)
    };
    match text {
        Ok(text) => crate::json_reader::read(text),
        Err(_) => serde_json::from_slice(payload),
    }
    .map_err(DecodeError::Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Numbered {
        seq: u64,
    }

    #[test]
    fn payloads_encoded_in_turn_share_a_buffer_and_each_reads_as_its_message() {
        let payloads: Vec<Bytes> = (0..1000)
            .map(|seq| encode(&Numbered { seq }).unwrap())
            .collect();
        for (seq, payload) in payloads.iter().enumerate() {
            assert_eq!(&payload[..], format!("{{\"seq\":{seq}}}").as_bytes());
        }
        let adjacent = payloads
            .windows(2)
            .filter(|p| p[0].as_ptr().wrapping_add(p[0].len()) == p[1].as_ptr())
            .count();
        // ~12 bytes each: a new chunk every few hundred payloads.
        assert!(adjacent > 990, "{adjacent} of 999 follow the one before");
    }

    /// A payload whose `Serialize` encodes another message on the same thread.
    struct EncodesWhileEncoded;

    impl Serialize for EncodesWhileEncoded {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let inner = encode(&Numbered { seq: 7 }).map_err(serde::ser::Error::custom)?;
            serializer.serialize_str(std::str::from_utf8(&inner).unwrap())
        }
    }

    #[test]
    fn a_payload_encoding_another_while_encoded_gets_both_right() {
        let payload = encode(&EncodesWhileEncoded).unwrap();
        assert_eq!(&payload[..], br#""{\"seq\":7}""#);
    }
}
