//! Trace context across brokers (feature `opentelemetry`): a publish writes its span's
//! OpenTelemetry context into the message's headers, and the handling span of every
//! delivery of that message (retries, delayed deliveries, a replayed dead letter: they
//! all keep the headers) takes it as its parent.
//!
//! The headers are written and read by the globally installed text-map propagator
//! (`opentelemetry::global::set_text_map_propagator`), so an application chooses the
//! format as it does for its HTTP calls: W3C `traceparent` and `tracestate` with
//! `TraceContextPropagator`. Without the feature, or without a span a subscriber wants,
//! both calls are nothing.

use anybroker_brokers::Headers;

#[cfg(feature = "opentelemetry")]
mod propagation {
    use anybroker_brokers::Headers;
    use opentelemetry::propagation::{Extractor, Injector};
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    struct HeaderWriter<'a>(&'a mut Headers);

    impl Injector for HeaderWriter<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.to_owned(), value);
        }
    }

    struct HeaderReader<'a>(&'a Headers);

    impl Extractor for HeaderReader<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(String::as_str)
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(String::as_str).collect()
        }
    }

    pub(super) fn inject(span: &tracing::Span, headers: &mut Headers) {
        let context = span.context();
        if context.span().span_context().is_valid() {
            opentelemetry::global::get_text_map_propagator(|p| {
                p.inject_context(&context, &mut HeaderWriter(headers))
            });
        }
    }

    pub(super) fn adopt_parent(span: &tracing::Span, headers: &Headers) {
        let parent =
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderReader(headers)));
        if parent.span().span_context().is_valid() {
            // Fails only when the span was already started, which a handling span
            // never is here: it is set up before it is first entered.
            let _ = span.set_parent(parent);
        }
    }
}

/// Writes the context of `span` (a publish span) into `headers`.
#[inline]
pub(crate) fn inject(span: &tracing::Span, headers: &mut Headers) {
    #[cfg(feature = "opentelemetry")]
    if !span.is_disabled() {
        propagation::inject(span, headers);
    }
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, headers);
}

/// Makes the context `headers` carry the parent of `span` (a handling span).
#[inline]
pub(crate) fn adopt_parent(span: &tracing::Span, headers: &Headers) {
    #[cfg(feature = "opentelemetry")]
    if !span.is_disabled() {
        propagation::adopt_parent(span, headers);
    }
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, headers);
}
