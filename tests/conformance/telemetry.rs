//! The conformance cases of what the router tells telemetry: trace context carried from
//! the publish span to every handling span (feature `opentelemetry`, checked with an
//! in-memory OpenTelemetry exporter) and the metric counters (feature `metrics`,
//! checked with a test recorder). Both are installed once per test process; each case
//! reads only what its own unique channel produced.

#[cfg(feature = "opentelemetry")]
pub use self::traces::*;

#[cfg(feature = "metrics")]
pub use self::counters::*;

#[cfg(feature = "opentelemetry")]
mod traces {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, OnceLock};

    use anybroker::{handler_fn, HandlerError, MessageContext};
    use opentelemetry::trace::{SpanId, TraceContextExt, TracerProvider};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    use crate::cases::recording_failing_before;
    use crate::support::*;

    /// The spans every router of this process ended, kept in memory.
    fn finished_spans() -> &'static InMemorySpanExporter {
        static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
        EXPORTER.get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("conformance"));
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
                .expect("no other subscriber in the conformance suite");
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            exporter
        })
    }

    /// The ended spans named `name`.
    fn spans_named(name: &str) -> Vec<SpanData> {
        finished_spans()
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }

    /// Publishes one message inside a span of the test's own and returns that span's id.
    async fn publish_in_a_span(
        router: &anybroker::MessageRouter,
        ch: anybroker::Channel<TestMessage>,
    ) -> SpanId {
        let request = tracing::info_span!("request");
        let id = request.context().span().span_context().span_id();
        assert_ne!(id, SpanId::INVALID, "the test's span is recorded");
        router
            .publish(ch, &TestMessage::new(1))
            .instrument(request)
            .await
            .unwrap();
        id
    }

    /// Waits for `handlings` handling spans of `ch`, then checks that each is a child of
    /// the one publish span, itself a child of `request`, all in one trace.
    async fn assert_handlings_are_children_of_the_publish(
        ch: anybroker::Channel<TestMessage>,
        request: SpanId,
        handlings: usize,
    ) {
        let process = format!("process {}", ch.name());
        wait_until("the handling spans ended", LONG, || {
            spans_named(&process).len() >= handlings
        })
        .await;
        let publishes = spans_named(&format!("publish {}", ch.name()));
        assert_eq!(publishes.len(), 1, "one publish span: {publishes:#?}");
        let publish = &publishes[0];
        assert_eq!(
            publish.parent_span_id, request,
            "the publish span is the request's child"
        );
        let process = spans_named(&process);
        assert_eq!(process.len(), handlings, "one handling span per call");
        for span in &process {
            assert_eq!(
                span.span_context.trace_id(),
                publish.span_context.trace_id(),
                "a handling span is in the publish's trace"
            );
            assert_eq!(
                span.parent_span_id,
                publish.span_context.span_id(),
                "a handling span's parent is the publish span"
            );
            assert!(
                span.parent_span_is_remote,
                "the parent came through the broker"
            );
        }
    }

    /// A message published inside a span is handled in a span whose parent is the
    /// publish span, itself a child of the caller's: the trace context crossed the
    /// broker in the message's headers.
    pub async fn handling_span_is_child_of_publish_span(t: &Target) {
        finished_spans();
        let ch = unique_channel::<TestMessage>("trace");
        let rec = Recorder::default();
        let router = t
            .router("")
            .handle(ch, recording_failing_before(&rec, 1))
            .start()
            .await
            .unwrap();
        let request = publish_in_a_span(&router, ch).await;
        wait_until("handled", LONG, || rec.len() == 1).await;
        assert!(rec.all()[0].headers.contains_key("traceparent"));
        assert_handlings_are_children_of_the_publish(ch, request, 1).await;
        router.shutdown().await.unwrap();
    }

    /// Every attempt of a retried message is handled in a child of its publish span.
    pub async fn retried_handlings_are_children_of_publish_span(t: &Target) {
        require!(t, retry);
        finished_spans();
        let ch = unique_channel::<TestMessage>("trace-retry");
        let rec = Recorder::default();
        let toml = channel_toml(ch, "retry = { attempts = 3, initial = \"100ms\" }");
        let router = t
            .router(&toml)
            .handle(ch, recording_failing_before(&rec, 2))
            .start()
            .await
            .unwrap();
        let request = publish_in_a_span(&router, ch).await;
        wait_until("handled on the second attempt", LONG, || rec.len() == 2).await;
        assert_handlings_are_children_of_the_publish(ch, request, 2).await;
        router.shutdown().await.unwrap();
    }

    /// A delayed message is handled, when due, in a child of its publish span.
    pub async fn delayed_handling_is_child_of_publish_span(t: &Target) {
        require!(t, delay);
        finished_spans();
        let ch = unique_channel::<TestMessage>("trace-delay");
        let rec = Recorder::default();
        let router = t
            .router("")
            .handle(ch, recording_failing_before(&rec, 1))
            .start()
            .await
            .unwrap();
        let request = tracing::info_span!("request");
        let request_id = request.context().span().span_context().span_id();
        router
            .publish_delayed(
                ch,
                &TestMessage::new(1),
                std::time::Duration::from_millis(300),
            )
            .instrument(request)
            .await
            .unwrap();
        wait_until("handled when due", LONG, || rec.len() == 1).await;
        assert_handlings_are_children_of_the_publish(ch, request_id, 1).await;
        router.shutdown().await.unwrap();
    }

    /// A dead letter replayed is handled in a child of the original publish span.
    pub async fn replayed_dead_letter_keeps_trace_context(t: &Target) {
        require!(t, dead_letters);
        finished_spans();
        let ch = unique_channel::<TestMessage>("trace-replay");
        let broken = Arc::new(AtomicBool::new(true));
        let handled = Recorder::default();
        let handler = {
            let (broken, handled) = (broken.clone(), handled.clone());
            handler_fn(move |m: TestMessage, cx: MessageContext| {
                let (broken, handled) = (broken.clone(), handled.clone());
                async move {
                    if broken.load(Ordering::SeqCst) {
                        return Err(HandlerError::permanent("downstream is down"));
                    }
                    handled.record(crate::cases::seen(&m, &cx, 0));
                    Ok(())
                }
            })
        };
        let router = t.router("").handle(ch, handler).start().await.unwrap();
        let request = publish_in_a_span(&router, ch).await;
        wait_for_dead_letters(&router, ch, 1, "dead-lettered").await;
        broken.store(false, Ordering::SeqCst);
        assert_eq!(router.replay_dead_letters(ch, 10).await.unwrap(), 1);
        wait_until("the replayed message handled", LONG, || handled.len() == 1).await;
        assert_handlings_are_children_of_the_publish(ch, request, 2).await;
        router.shutdown().await.unwrap();
    }
}

#[cfg(feature = "metrics")]
mod counters {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use anybroker::{handler_fn, metric_names, HandlerError, MessageContext};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    use crate::support::*;

    /// What the recorder saw for one channel: counter and gauge values by name (with a
    /// dead letter's reason after a `/`), and how many durations were recorded.
    #[derive(Clone, Debug, Default, PartialEq)]
    struct ChannelMetrics {
        values: HashMap<String, f64>,
        durations: usize,
    }

    /// The process's test recorder. A snapshot takes each value and leaves 0 in its
    /// place (counters, gauges and histograms alike), so what every channel recorded is
    /// summed here as it is read.
    struct Metrics {
        snapshotter: Snapshotter,
        totals: Mutex<HashMap<String, ChannelMetrics>>,
    }

    fn metrics() -> &'static Metrics {
        static METRICS: OnceLock<Metrics> = OnceLock::new();
        METRICS.get_or_init(|| {
            let recorder = DebuggingRecorder::new();
            let snapshotter = recorder.snapshotter();
            recorder
                .install()
                .expect("no other metrics recorder in the conformance suite");
            Metrics {
                snapshotter,
                totals: Mutex::default(),
            }
        })
    }

    /// The metrics labelled with `channel`, checking every series carries the broker
    /// label and no label that grows without bound.
    fn read(channel: &str) -> ChannelMetrics {
        let metrics = metrics();
        let mut totals = metrics.totals.lock().unwrap();
        for (key, _, _, value) in metrics.snapshotter.snapshot().into_vec() {
            let key = key.key();
            let labels: HashMap<&str, &str> = key.labels().map(|l| (l.key(), l.value())).collect();
            let Some(series_channel) = labels.get("channel") else {
                continue;
            };
            assert_eq!(labels.get("broker"), Some(&"target"), "{key:?}");
            let allowed = ["channel", "broker", "group", "reason"];
            assert!(labels.keys().all(|k| allowed.contains(k)), "{key:?}");
            let name = match labels.get("reason") {
                Some(reason) => format!("{}/{reason}", key.name()),
                None => key.name().to_string(),
            };
            let total = totals.entry(series_channel.to_string()).or_default();
            match value {
                DebugValue::Counter(n) => *total.values.entry(name).or_default() += n as f64,
                DebugValue::Gauge(v) => *total.values.entry(name).or_default() += v.into_inner(),
                DebugValue::Histogram(v) => total.durations += v.len(),
            }
        }
        totals.get(channel).cloned().unwrap_or_default()
    }

    fn value(metrics: &ChannelMetrics, name: &str) -> f64 {
        metrics.values.get(name).copied().unwrap_or(0.0)
    }

    /// After known publishes and handlings, the counters equal them: published,
    /// delivered, handled, and no handler call left in flight.
    pub async fn metrics_count_publishes_and_handlings(t: &Target) {
        metrics();
        const N: u64 = 20;
        let ch = unique_channel::<TestMessage>("metrics");
        let rec = Recorder::default();
        let handler = {
            let rec = rec.clone();
            handler_fn(move |m: TestMessage, cx: MessageContext| {
                let rec = rec.clone();
                async move {
                    rec.record(crate::cases::seen(&m, &cx, 0));
                    Ok(())
                }
            })
        };
        let router = t.router("").handle(ch, handler).start().await.unwrap();
        for i in 0..N {
            router.publish(ch, &TestMessage::new(i)).await.unwrap();
        }
        // Metrics are read once, after the draining shutdown finished every call: a
        // snapshot drains the histograms, and one taken while a call records its duration
        // can lose that value (metrics-util's bucket), so none is taken while calls run.
        wait_until("all handled", LONG, || rec.len() as u64 == N).await;
        router.shutdown().await.unwrap();
        let m = read(ch.name());
        let n = N as f64;
        assert_eq!(value(&m, metric_names::PUBLISHED), n, "{m:?}");
        assert_eq!(value(&m, metric_names::PUBLISH_ERRORS), 0.0, "{m:?}");
        assert_eq!(value(&m, metric_names::DELIVERED), n, "{m:?}");
        assert_eq!(value(&m, metric_names::HANDLED), n, "{m:?}");
        assert_eq!(value(&m, metric_names::RETRIED), 0.0, "{m:?}");
        assert_eq!(value(&m, metric_names::IN_FLIGHT), 0.0, "{m:?}");
        assert_eq!(m.durations, N as usize, "one duration per call: {m:?}");
        // A group the broker keeps messages for has its backlog sampled from its start.
        let keeps = t.capabilities().await.new_group_start != anybroker::NewGroupStart::Live;
        assert_eq!(
            m.values.contains_key(metric_names::BACKLOG_WAITING),
            keeps,
            "{m:?}"
        );
    }

    /// After a run of known successes, retries and dead letters, the counters equal
    /// them, dead letters counted by reason.
    pub async fn metrics_count_retries_and_dead_letters(t: &Target) {
        require!(t, retry && dead_letters);
        metrics();
        // Messages 0..10 succeed at once, 10..14 on their second attempt, 14..17 fail
        // for good, 17..19 fail every attempt (3).
        let ch = unique_channel::<TestMessage>("metrics-failures");
        let rec = Recorder::default();
        let handler = {
            let rec = rec.clone();
            handler_fn(move |m: TestMessage, cx: MessageContext| {
                let rec = rec.clone();
                async move {
                    rec.record(crate::cases::seen(&m, &cx, 0));
                    match m.seq {
                        10..14 if cx.attempt() == 1 => Err(HandlerError::retryable("not yet")),
                        14..17 => Err(HandlerError::permanent("never")),
                        17..19 => Err(HandlerError::retryable("not ever")),
                        _ => Ok(()),
                    }
                }
            })
        };
        let toml = channel_toml(
            ch,
            "retry = { attempts = 3, initial = \"50ms\", max = \"100ms\" }",
        );
        let router = t.router(&toml).handle(ch, handler).start().await.unwrap();
        for i in 0..19 {
            router.publish(ch, &TestMessage::new(i)).await.unwrap();
        }
        let calls = 10 + 4 * 2 + 3 + 2 * 3;
        wait_for_dead_letters(&router, ch, 5, "five dead-lettered").await;
        // Read once after the draining shutdown, as above.
        wait_until("every call made", LONG, || rec.len() == calls).await;
        router.shutdown().await.unwrap();
        let m = read(ch.name());
        assert_eq!(value(&m, metric_names::PUBLISHED), 19.0, "{m:?}");
        assert_eq!(value(&m, metric_names::DELIVERED), calls as f64, "{m:?}");
        assert_eq!(value(&m, metric_names::HANDLED), 14.0, "{m:?}");
        assert_eq!(value(&m, metric_names::RETRIED), 4.0 + 2.0 * 2.0, "{m:?}");
        let dead = |reason: &str| value(&m, &format!("{}/{reason}", metric_names::DEAD_LETTERED));
        assert_eq!(dead("permanent-error"), 3.0, "{m:?}");
        assert_eq!(dead("attempts-exhausted"), 2.0, "{m:?}");
        assert_eq!(value(&m, metric_names::IN_FLIGHT), 0.0, "{m:?}");
        assert_eq!(m.durations, calls, "one duration per call: {m:?}");
    }
}
