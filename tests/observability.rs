//! What the library tells a `tracing` subscriber: a span per publish and one per
//! handling (the handler's own logs nest in it), named in OpenTelemetry's messaging
//! terms, and an event for each retry (info) and dead letter (warn) naming the message
//! and its attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anybroker::{handler_fn, HandlerError, MessageContext, MessageRouter, RouterConfig};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

mod common;
use common::{unique_channel, wait_until, Numbered};

/// A span's or event's fields, as text.
#[derive(Clone, Debug, Default)]
struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.to_string());
    }
}

impl Fields {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

#[derive(Debug)]
struct SeenEvent {
    level: Level,
    fields: Fields,
    /// The spans it happened in, innermost first: name and fields.
    scope: Vec<(String, Fields)>,
}

/// Keeps every span opened and every event.
#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<(String, Fields)>>>,
    events: Arc<Mutex<Vec<SeenEvent>>>,
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let span = ctx.span(id).expect("a new span is known");
        span.extensions_mut().insert(fields.clone());
        self.spans
            .lock()
            .unwrap()
            .push((span.name().to_string(), fields));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let scope = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .map(|s| {
                        let fields = s.extensions().get::<Fields>().cloned().unwrap_or_default();
                        (s.name().to_string(), fields)
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.events.lock().unwrap().push(SeenEvent {
            level: *event.metadata().level(),
            fields,
            scope,
        });
    }
}

/// Two messages on the embedded broker: the first fails once and is retried, the
/// second fails for good. Every publish has its span; every handling runs in a span
/// naming the channel, group, message id and attempt, and the handler's log is inside
/// it; the retry and the dead letter are events naming the message.
#[tokio::test(flavor = "current_thread")]
async fn publishes_and_handlings_have_spans_and_failures_have_events() {
    let capture = Capture::default();
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let ch = unique_channel::<Numbered>("spans");
    let config = RouterConfig::from_toml_str(
        "default_broker = \"memory\"\n[defaults]\nretry = { attempts = 2, initial = \"10ms\" }\n\
         [brokers.memory]\nkind = \"memory\"\n",
    )
    .unwrap();
    // What the handler saw: (seq, id, attempt).
    let calls: Arc<Mutex<Vec<(u64, String, u32)>>> = Arc::default();
    let handler = {
        let calls = calls.clone();
        handler_fn(move |m: Numbered, cx: MessageContext| {
            let calls = calls.clone();
            async move {
                tracing::info!(seq = m.seq, "handling");
                calls
                    .lock()
                    .unwrap()
                    .push((m.seq, cx.id().to_string(), cx.attempt()));
                match (m.seq, cx.attempt()) {
                    (1, 1) => Err(HandlerError::retryable("not yet")),
                    (2, _) => Err(HandlerError::permanent("never")),
                    _ => Ok(()),
                }
            }
        })
    };
    let router = MessageRouter::builder(config)
        .handle(ch, handler)
        .start()
        .await
        .unwrap();
    router.publish(ch, &Numbered { seq: 1 }).await.unwrap();
    router.publish(ch, &Numbered { seq: 2 }).await.unwrap();
    wait_until("three calls", Duration::from_secs(10), || {
        calls.lock().unwrap().len() == 3
    })
    .await;
    router.shutdown().await.unwrap();

    let calls = calls.lock().unwrap().clone();
    let id_of = |seq| calls.iter().find(|c| c.0 == seq).unwrap().1.clone();
    let spans = capture.spans.lock().unwrap();
    for seq in [1, 2] {
        let publish = spans
            .iter()
            .find(|(name, f)| {
                name == "publish" && f.get("messaging.message.id") == Some(&id_of(seq))
            })
            .unwrap_or_else(|| panic!("no publish span for message {seq}: {spans:?}"));
        assert_eq!(publish.1.get("messaging.destination.name"), Some(ch.name()));
        assert_eq!(publish.1.get("messaging.system"), Some("memory"));
        assert_eq!(publish.1.get("anybroker.broker"), Some("memory"));
    }
    drop(spans);

    let events = capture.events.lock().unwrap();
    // The handler's own log, once per call, inside the handling span of that call.
    let handling: Vec<&SeenEvent> = events
        .iter()
        .filter(|e| e.fields.get("message") == Some("handling"))
        .collect();
    assert_eq!(handling.len(), 3);
    for (seq, id, attempt) in &calls {
        let inside = handling.iter().any(|e| {
            let (name, span) = &e.scope[0];
            e.fields.get("seq") == Some(&seq.to_string())
                && name == "process"
                && span.get("messaging.message.id") == Some(id)
                && span.get("anybroker.attempt") == Some(&attempt.to_string())
                && span.get("messaging.destination.name") == Some(ch.name())
                && span.get("messaging.consumer.group.name") == Some("default")
                && span.get("messaging.system") == Some("memory")
        });
        assert!(inside, "message {seq} attempt {attempt}: {handling:?}");
    }
    let retry = events
        .iter()
        .find(|e| e.fields.get("message") == Some("handler failed; retrying"))
        .expect("a retry event");
    assert_eq!(retry.level, Level::INFO);
    assert_eq!(retry.fields.get("messaging.message.id"), Some(&*id_of(1)));
    assert_eq!(retry.fields.get("anybroker.attempt"), Some("1"));
    assert_eq!(retry.fields.get("anybroker.retry_in_ms"), Some("10"));
    assert_eq!(retry.fields.get("error"), Some("not yet"));
    let dead = events
        .iter()
        .find(|e| e.fields.get("message") == Some("message dead-lettered"))
        .expect("a dead-letter event");
    assert_eq!(dead.level, Level::WARN);
    assert_eq!(dead.fields.get("messaging.message.id"), Some(&*id_of(2)));
    assert_eq!(
        dead.fields.get("anybroker.dead_letter_reason"),
        Some("permanent-error")
    );
    assert_eq!(dead.fields.get("anybroker.attempt"), Some("1"));
}
