//! Reading what other clients write: the standard content-type header and a
//! publisher's own message id, under the names other frameworks give them.

use std::sync::Arc;

use super::{Envelope, Headers, MessageId, CONTENT_TYPE_JSON};

/// Application headers, in order of preference, that carry the id another framework's
/// publisher gave a message when the broker has no message-id field of its own
/// (FastStream and Spring on Kafka, NATS and Redis).
#[allow(dead_code)] // read by the server backends only
const PUBLISHER_ID_HEADERS: [&str; 3] = ["message_id", "message-id", "correlation_id"];

/// Whether `content_type` is one the JSON decoder reads: `application/json`,
/// `text/json` or any `…/…+json`, parameters (`; charset=utf-8`) ignored. An empty one
/// (not said) is tried as JSON too.
#[inline]
pub fn is_json(content_type: &str) -> bool {
    if content_type == CONTENT_TYPE_JSON {
        return true;
    }
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence.is_empty() {
        return true;
    }
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let json_subtype = subtype.eq_ignore_ascii_case("json")
        || subtype.len() > 5
            && subtype.is_char_boundary(subtype.len() - 5)
            && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json");
    (kind.eq_ignore_ascii_case("application") || kind.eq_ignore_ascii_case("text")) && json_subtype
}

/// Whether a header name is the standard content type: `content-type` in any case
/// (HTTP's, NATS's, Kafka's and FastStream's), or Spring's `contentType`.
pub fn is_content_type_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-type") || name == "contentType"
}

/// The id another framework's publisher put in the application headers, if any.
#[allow(dead_code)] // called by the server backends only
pub(crate) fn publisher_id(headers: &Headers) -> Option<MessageId> {
    PUBLISHER_ID_HEADERS.iter().find_map(|wanted| {
        headers
            .iter()
            .find(|(name, value)| name.eq_ignore_ascii_case(wanted) && !value.is_empty())
            .map(|(_, value)| MessageId::from(value.as_str()))
    })
}

impl Envelope {
    /// Sets the content type from what the wire says; JSON keeps the shared value, so
    /// reading the usual content type allocates nothing. Spring writes header values
    /// JSON-quoted (`"application/json"`): the quotes are dropped.
    pub fn set_content_type_from_wire(&mut self, value: &str) {
        // The usual value, before the trimming (which decodes characters at both ends).
        if value == CONTENT_TYPE_JSON {
            return;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        if value != CONTENT_TYPE_JSON && !value.is_empty() {
            self.content_type = Arc::from(value);
        }
    }

    /// Moves a standard content-type header of the application headers (one another
    /// framework wrote) into the content type.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // read by the Redis codec only
    pub(crate) fn take_content_type_header(&mut self) {
        let found = self
            .headers
            .keys()
            .find(|name| is_content_type_header(name))
            .cloned();
        if let Some(name) = found {
            if let Some(value) = self.headers.remove(&name) {
                self.set_content_type_from_wire(&value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_told_from_others() {
        for json in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "text/json",
            "application/cloudevents+json",
            "application/vnd.acme.order+JSON;v=2",
            "",
        ] {
            assert!(is_json(json), "{json:?}");
        }
        for other in [
            "application/x-protobuf",
            "text/plain",
            "application/octet-stream",
            "json",
            "application/jsonl",
            "image/json+x",
            "application/+json",
        ] {
            assert!(!is_json(other), "{other:?}");
        }
    }

    #[test]
    fn publisher_ids_and_content_types_are_found_under_other_names() {
        let mut headers = Headers::new();
        headers.insert("correlation_id".into(), "c-1".into());
        assert_eq!(publisher_id(&headers).as_deref(), Some("c-1"));
        headers.insert("Message-Id".into(), "m-1".into());
        assert_eq!(publisher_id(&headers).as_deref(), Some("m-1"));
        headers.insert("message_id".into(), "".into());
        assert_eq!(
            publisher_id(&headers).as_deref(),
            Some("m-1"),
            "empty skipped"
        );

        let mut e = Envelope::new("c", &b"x"[..]).with_header("Content-Type", "text/plain");
        e.take_content_type_header();
        assert_eq!(&*e.content_type, "text/plain");
        assert!(e.headers.is_empty());
        let mut e =
            Envelope::new("c", &b"x"[..]).with_header("contentType", "\"application/json\"");
        e.take_content_type_header();
        assert_eq!(&*e.content_type, CONTENT_TYPE_JSON);
        assert!(e.headers.is_empty());
    }
}
