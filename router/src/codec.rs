//! Payload <-> the channel's type: JSON, the one codec, for every way a payload is
//! read (handlers, responders, replies, dead letters, the test recorder).

use anybroker_brokers::{is_json, Envelope};
use serde::de::DeserializeOwned;

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
    // Checked as UTF-8 once, the payload is read as a `str`: serde_json then checks no
    // string again (from bytes it checks each). It accepts the same payloads either
    // way; one that is not UTF-8 is read as bytes for serde_json's error, which says
    // where.
    match std::str::from_utf8(&envelope.payload) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(&envelope.payload),
    }
    .map_err(DecodeError::Json)
}
