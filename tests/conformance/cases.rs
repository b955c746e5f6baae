//! The conformance suite: each function is one promise of the API (its doc line),
//! written once against the public API and run by every backend's module.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anybroker::{
    handler_fn, header, DeadLetterReason, DeadLetterSelector, Envelope, ErrorKind, HandlerError,
    HandlerOptions, MessageContext, NewGroupStart, PublishOptions, RetryPolicy,
};
use tokio::time::Instant;

use crate::support::*;
/// The telemetry cases, under the features they check.
#[cfg(any(feature = "opentelemetry", feature = "metrics"))]
pub use crate::telemetry::*;

pub(crate) fn seen(m: &TestMessage, cx: &MessageContext, handler: usize) -> Seen {
    Seen {
        seq: m.seq,
        attempt: cx.attempt(),
        key: cx.key().map(str::to_string),
        headers: cx.headers().clone(),
        id: cx.id().to_string(),
        at: Instant::now(),
        handler,
    }
}

/// A recording handler that succeeds.
fn recording(rec: &Recorder, handler: usize) -> impl anybroker::MessageHandler<TestMessage> {
    let rec = rec.clone();
    handler_fn(move |m: TestMessage, cx: MessageContext| {
        let rec = rec.clone();
        async move {
            rec.record(seen(&m, &cx, handler));
            Ok(())
        }
    })
}

/// Records every call and fails it (retryable, "not yet") before attempt `succeeds_at`.
pub(crate) fn recording_failing_before(
    rec: &Recorder,
    succeeds_at: u32,
) -> impl anybroker::MessageHandler<TestMessage> {
    let rec = rec.clone();
    handler_fn(move |m: TestMessage, cx: MessageContext| {
        let rec = rec.clone();
        async move {
            rec.record(seen(&m, &cx, 0));
            if cx.attempt() < succeeds_at {
                return Err(HandlerError::retryable("not yet"));
            }
            Ok(())
        }
    })
}

/// How many handlers run at once, and the most that ran together.
#[derive(Clone, Default)]
struct InFlight {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

impl InFlight {
    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// A recording handler that takes `pause` per call, counted in `in_flight` meanwhile.
fn recording_in_flight(
    rec: &Recorder,
    in_flight: &InFlight,
    pause: Duration,
) -> impl anybroker::MessageHandler<TestMessage> {
    let (rec, in_flight) = (rec.clone(), in_flight.clone());
    handler_fn(move |m: TestMessage, cx: MessageContext| {
        let (rec, in_flight) = (rec.clone(), in_flight.clone());
        async move {
            let now = in_flight.now.fetch_add(1, Ordering::SeqCst) + 1;
            in_flight.max.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(pause).await;
            in_flight.now.fetch_sub(1, Ordering::SeqCst);
            rec.record(seen(&m, &cx, 0));
            Ok(())
        }
    })
}

/// A provisioned group's backlog counts what was published and not handled yet, and
/// nothing once its members handled it all. Modes that keep nothing for a group answer
/// `Unsupported`.
pub async fn backlog_counts_what_a_group_has_not_handled(t: &Target) {
    const N: u64 = 10;
    let ch = unique_channel::<TestMessage>("backlog");
    let publisher = t.router("").start().await.unwrap();
    if t.capabilities().await.new_group_start == NewGroupStart::Live {
        let err = publisher.backlog(ch, "g").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        publisher.shutdown().await.unwrap();
        return;
    }
    publisher.provision(ch, &["g"]).await.unwrap();
    for i in 0..N {
        publisher.publish(ch, &TestMessage::new(i)).await.unwrap();
    }
    wait_until_async("the backlog counts every message", LONG, || {
        let publisher = publisher.clone();
        async move { publisher.backlog(ch, "g").await.unwrap().waiting == N }
    })
    .await;
    let rec = Recorder::default();
    let consumer = t
        .router("")
        .handle_with(ch, recording(&rec, 0), HandlerOptions::new().group("g"))
        .start()
        .await
        .unwrap();
    wait_until("all handled", LONG, || rec.distinct() as u64 == N).await;
    wait_until_async("the backlog is empty", LONG, || {
        let publisher = publisher.clone();
        async move {
            let b = publisher.backlog(ch, "g").await.unwrap();
            b.waiting == 0 && b.in_flight.unwrap_or(0) == 0
        }
    })
    .await;
    consumer.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
}

/// Reads `group`'s backlog on `ch` until it has counted `count` messages (waiting plus
/// in flight) on 10 reads in a row: a settlement in between (an in-flight message
/// moving to a retry queue) must not make it drop.
async fn backlog_settles_at(
    router: &anybroker::MessageRouter,
    ch: anybroker::Channel<TestMessage>,
    group: &str,
    count: u64,
    what: &str,
) {
    let in_a_row = Arc::new(AtomicUsize::new(0));
    wait_until_async(what, Duration::from_secs(20), || {
        let (router, group, in_a_row) = (router.clone(), group.to_string(), in_a_row.clone());
        async move {
            let b = router.backlog(ch, &group).await.unwrap();
            if b.waiting + b.in_flight.unwrap_or(0) == count {
                in_a_row.fetch_add(1, Ordering::SeqCst) + 1 >= 10
            } else {
                in_a_row.store(0, Ordering::SeqCst);
                false
            }
        }
    })
    .await;
}

/// Each router that publishes or handles a channel is counted on its broker as using
/// it, from its first use of the channel until its shutdown.
pub async fn routers_using_a_channel_are_announced(t: &Target) {
    require!(t, presence);
    let ch = unique_channel::<TestMessage>("presence");
    let broker = t.connect().await;
    let spec = anybroker::ChannelSpec::new(ch.name(), "default");
    let announced = |n: u64| {
        let (broker, spec) = (broker.clone(), spec.clone());
        move || {
            let (broker, spec) = (broker.clone(), spec.clone());
            async move { broker.announced(&spec).await.unwrap() == n }
        }
    };
    assert_eq!(broker.announced(&spec).await.unwrap(), 0, "none before use");
    let publishing = t.router("").start().await.unwrap();
    publishing.publish(ch, &TestMessage::new(1)).await.unwrap();
    wait_until_async("the publishing router announced", LONG, announced(1)).await;
    let rec = Recorder::default();
    let handling = t
        .router("")
        .handle(ch, recording(&rec, 0))
        .start()
        .await
        .unwrap();
    wait_until_async("the handling router announced too", LONG, announced(2)).await;
    // Withdrawn by the time shutdown returns.
    publishing.shutdown().await.unwrap();
    assert_eq!(broker.announced(&spec).await.unwrap(), 1);
    handling.shutdown().await.unwrap();
    assert_eq!(broker.announced(&spec).await.unwrap(), 0);
    let other = anybroker::ChannelSpec::new(
        unique_channel::<TestMessage>("presence-other").name(),
        "default",
    );
    assert_eq!(
        broker.announced(&other).await.unwrap(),
        0,
        "another channel"
    );
}

/// A message waiting for its retry is in the group's backlog until it is handled.
pub async fn backlog_counts_a_waiting_retry(t: &Target) {
    require!(t, retry);
    let ch = unique_channel::<TestMessage>("backlog-retry");
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        handler_fn(move |_: TestMessage, _: MessageContext| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(HandlerError::retryable("later").retry_after(Duration::from_secs(120))) }
        })
    };
    let router = t
        .router(&channel_toml(ch, "retry = { attempts = 3 }"))
        .handle_with(ch, handler, HandlerOptions::new().group("g"))
        .start()
        .await
        .unwrap();
    router.publish(ch, &TestMessage::new(1)).await.unwrap();
    wait_until("the first attempt", LONG, || {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    backlog_settles_at(&router, ch, "g", 1, "the retry counted in the backlog").await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the retry is not due yet");
    router.shutdown().await.unwrap();
}

/// A delayed message not yet due is in the backlog of the channel's groups.
pub async fn backlog_counts_a_delayed_message(t: &Target) {
    require!(t, delay);
    let ch = unique_channel::<TestMessage>("backlog-delay");
    let rec = Recorder::default();
    let router = t
        .router("")
        .handle_with(ch, recording(&rec, 0), HandlerOptions::new().group("g"))
        .start()
        .await
        .unwrap();
    router
        .publish_delayed(ch, &TestMessage::new(1), Duration::from_secs(120))
        .await
        .unwrap();
    backlog_settles_at(
        &router,
        ch,
        "g",
        1,
        "the delayed message counted in the backlog",
    )
    .await;
    assert_eq!(rec.len(), 0, "the delayed message is not due yet");
    router.shutdown().await.unwrap();
}

/// The router's health names the broker connected and counts the consumers running on
/// it, none after shutdown.
pub async fn health_reports_connection_and_consumers(t: &Target) {
    let ch = unique_channel::<TestMessage>("health");
    let rec = Recorder::default();
    let router = t
        .router(&channel_toml(ch, "consumers = 2"))
        .handle(ch, recording(&rec, 0))
        .start()
        .await
        .unwrap();
    let health = router.health().await;
    let target = health.brokers.iter().find(|b| b.name == "target").unwrap();
    assert_eq!(
        target.connection,
        anybroker::ConnectionState::Connected,
        "{health:?}"
    );
    assert_eq!(target.consumers, 2, "{health:?}");
    assert!(target.last_error.is_none(), "{health:?}");
    assert!(health.is_ready(), "{health:?}");
    router.shutdown().await.unwrap();
    let health = router.health().await;
    let target = health.brokers.iter().find(|b| b.name == "target").unwrap();
    assert_eq!(target.consumers, 0, "{health:?}");
}

/// Every published message is delivered, with payload, key and headers intact and a
/// unique id.
pub async fn publish_then_subscribe_delivers_all(t: &Target) {
    const N: u64 = 2000;
    let ch = unique_channel::<TestMessage>("delivers_all");
    let rec = Recorder::default();
    let router = t
        .router("")
        .handle(ch, recording(&rec, 0))
        .start()
        .await
        .unwrap();
    for i in 0..N {
        let options = PublishOptions::new()
            .key(format!("k{}", i % 7))
            .header("x-test-seq", i.to_string())
            .header("tenant", "acme");
        router
            .publish_with(ch, &TestMessage::new(i), options)
            .await
            .unwrap();
    }
    wait_until("all delivered", LONG, || rec.distinct() as u64 == N).await;
    router.shutdown().await.unwrap();
    let all = rec.all();
    let mut ids = std::collections::HashSet::new();
    for s in &all {
        assert_eq!(
            s.headers["x-test-seq"],
            s.seq.to_string(),
            "headers travel with their message"
        );
        assert_eq!(s.headers["tenant"], "acme");
        assert_eq!(s.key.as_deref(), Some(format!("k{}", s.seq % 7).as_str()));
        assert_eq!(s.attempt, 1);
        ids.insert(s.id.clone());
    }
    assert_eq!(ids.len() as u64, N, "every message has its own id");
}

/// A batch publish answers once per message, in order, and every message of it is
/// handled once; an empty batch publishes nothing.
pub async fn batch_publish_answers_each_and_delivers_each_once(t: &Target) {
    const N: u64 = 500;
    let ch = unique_channel::<TestMessage>("batch");
    let rec = Recorder::default();
    let router = t
        .router("")
        .handle(ch, recording(&rec, 0))
        .start()
        .await
        .unwrap();
    assert!(router.publish_batch(ch, &[]).await.unwrap().is_empty());
    let messages: Vec<TestMessage> = (0..N).map(TestMessage::new).collect();
    for batch in messages.chunks(100) {
        let results = router.publish_batch(ch, batch).await.unwrap();
        assert_eq!(results.len(), batch.len(), "one answer per message");
        for (m, r) in batch.iter().zip(&results) {
            assert!(r.is_ok(), "message {}: {r:?}", m.seq);
        }
    }
    wait_until("all delivered", LONG, || rec.distinct() as u64 == N).await;
    router.shutdown().await.unwrap();
    let counts = rec.counts();
    assert!(
        counts.values().all(|n| *n == 1),
        "each handled once: {counts:?}"
    );
}

/// Many concurrent publishers and several members of one group: every message is
/// handled (at least once).
pub async fn many_publishers_and_subscribers_all_delivered(t: &Target) {
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 1000;
    let ch = unique_channel::<TestMessage>("many");
    let rec = Recorder::default();
    let router = t
        .router("")
        .handle_with(ch, recording(&rec, 0), HandlerOptions::new().consumers(3))
        .start()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let router = router.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                router
                    .publish(ch, &TestMessage::new(p * EACH + i))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    wait_until("all delivered", LONG, || {
        rec.distinct() as u64 == PUBLISHERS * EACH
    })
    .await;
    router.shutdown().await.unwrap();
    let duplicates = rec.len() as u64 - PUBLISHERS * EACH;
    println!("{}: {} duplicates", t.name, duplicates);
}

/// A channel's handlers see only that channel's messages.
pub async fn channels_are_isolated(t: &Target) {
    const N: u64 = 500;
    let a = unique_channel::<TestMessage>("isolated_a");
    let b = unique_channel::<TestMessage>("isolated_b");
    let (ra, rb) = (Recorder::default(), Recorder::default());
    let router = t
        .router("")
        .handle(a, recording(&ra, 0))
        .handle(b, recording(&rb, 1))
        .start()
        .await
        .unwrap();
    for i in 0..N {
        router.publish(a, &TestMessage::new(i)).await.unwrap();
        router
            .publish(b, &TestMessage::new(10_000 + i))
            .await
            .unwrap();
    }
    wait_until("both delivered", LONG, || {
        ra.distinct() as u64 == N && rb.distinct() as u64 == N
    })
    .await;
    router.shutdown().await.unwrap();
    assert!(
        ra.all().iter().all(|s| s.seq < 10_000),
        "channel a got b's messages"
    );
    assert!(
        rb.all().iter().all(|s| s.seq >= 10_000),
        "channel b got a's messages"
    );
}

/// A failed handler is retried with the configured backoff: attempt n+1 comes no
/// earlier than initial × multiplier^(n-1) after attempt n (and not much later).
pub async fn failed_handler_retried_with_backoff(t: &Target) {
    require!(t, retry);
    let ch = unique_channel::<TestMessage>("backoff");
    let rec = Recorder::default();
    let handler = recording_failing_before(&rec, 3);
    let toml = channel_toml(
        ch,
        "retry = { attempts = 3, initial = \"300ms\", multiplier = 2.0, max = \"5s\" }",
    );
    let router = t.router(&toml).handle(ch, handler).start().await.unwrap();
    router.publish(ch, &TestMessage::new(1)).await.unwrap();
    wait_until("third attempt", LONG, || rec.len() == 3).await;
    router.shutdown().await.unwrap();
    let all = rec.all();
    assert_eq!(
        all.iter().map(|s| s.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let gap1 = all[1].at - all[0].at;
    let gap2 = all[2].at - all[1].at;
    // Lower bounds are the promise; upper bounds allow a loaded shared machine.
    assert!(
        gap1 >= Duration::from_millis(290),
        "first backoff too short: {gap1:?}"
    );
    assert!(
        gap1 < Duration::from_millis(300 + 1500),
        "first backoff too long: {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(590),
        "second backoff too short: {gap2:?}"
    );
    assert!(
        gap2 < Duration::from_millis(600 + 1500),
        "second backoff too long: {gap2:?}"
    );
    assert!(all[1].headers.contains_key(header::FIRST_FAILED_AT));
    assert_eq!(all[1].headers[header::ERROR], "not yet");
}

/// With `jitter = "equal"`, 20 messages that all fail at once come back spread over
/// `[b/2, b]` of their backoff `b` (600 ms), not all together: each no earlier than
/// half the backoff (and not much later than all of it), and the earliest and latest
/// return at least 30 ms apart (20 draws over 300 ms all falling within 30 ms of each
/// other has a chance below 1e-15).
pub async fn jittered_backoff_spreads_retries_within_bounds(t: &Target) {
    require!(t, retry);
    const N: u64 = 20;
    let ch = unique_channel::<TestMessage>("jitter");
    let rec = Recorder::default();
    let handler = recording_failing_before(&rec, 2);
    let toml = channel_toml(
        ch,
        "retry = { attempts = 2, initial = \"600ms\", max = \"5s\", jitter = \"equal\" }",
    );
    let router = t.router(&toml).handle(ch, handler).start().await.unwrap();
    for i in 0..N {
        router.publish(ch, &TestMessage::new(i)).await.unwrap();
    }
    wait_until("every message's second attempt", LONG, || {
        rec.all().iter().filter(|s| s.attempt == 2).count() as u64 == N
    })
    .await;
    router.shutdown().await.unwrap();
    let all = rec.all();
    let gaps: Vec<Duration> = (0..N)
        .map(|i| {
            let at = |attempt| {
                all.iter()
                    .find(|s| s.seq == i && s.attempt == attempt)
                    .unwrap()
                    .at
            };
            at(2) - at(1)
        })
        .collect();
    for gap in &gaps {
        assert!(
            *gap >= Duration::from_millis(290),
            "earlier than b/2: {gap:?}"
        );
        assert!(
            *gap < Duration::from_millis(600 + 1500),
            "much later than b: {gap:?}"
        );
    }
    let (min, max) = (gaps.iter().min().unwrap(), gaps.iter().max().unwrap());
    assert!(
        *max - *min >= Duration::from_millis(30),
        "retries in lockstep: every gap within {min:?}..{max:?}"
    );
}

/// A handler's requested delay replaces the policy's backoff for that retry.
pub async fn handler_requested_delay_overrides_backoff(t: &Target) {
    require!(t, retry);
    let ch = unique_channel::<TestMessage>("retry_after");
    let rec = Recorder::default();
    let handler = {
        let rec = rec.clone();
        handler_fn(move |m: TestMessage, cx: MessageContext| {
            let rec = rec.clone();
            async move {
                rec.record(seen(&m, &cx, 0));
                if cx.attempt() == 1 {
                    return Err(
                        HandlerError::retryable("later").retry_after(Duration::from_millis(400))
                    );
                }
                Ok(())
            }
        })
    };
    let toml = channel_toml(
        ch,
        "retry = { attempts = 2, initial = \"10ms\", max = \"10ms\" }",
    );
    let router = t.router(&toml).handle(ch, handler).start().await.unwrap();
    router.publish(ch, &TestMessage::new(1)).await.unwrap();
    wait_until("second attempt", LONG, || rec.len() == 2).await;
    router.shutdown().await.unwrap();
    let all = rec.all();
    let gap = all[1].at - all[0].at;
    assert!(
        gap >= Duration::from_millis(390),
        "retry came after {gap:?}, asked for 400ms"
    );
}

/// When every attempt fails, the message lands in the channel's dead-letter
/// destination with reason, error, attempts, original channel and first-failure time;
/// the handler was called exactly `attempts` times per message.
pub async fn dead_letter_after_attempts(t: &Target) {
    require!(t, retry && dead_letters);
    const N: u64 = 100;
    let ch = unique_channel::<TestMessage>("dead_letter");
    let rec = Recorder::default();
    let handler = {
        let rec = rec.clone();
        handler_fn(move |m: TestMessage, cx: MessageContext| {
            let rec = rec.clone();
            async move {
                rec.record(seen(&m, &cx, 0));
                Err(HandlerError::retryable(format!("cannot store {}", m.seq)))
            }
        })
    };
    let toml = channel_toml(
        ch,
        "retry = { attempts = 2, initial = \"20ms\", max = \"20ms\" }",
    );
    let router = t.router(&toml).handle(ch, handler).start().await.unwrap();
    for i in 0..N {
        router.publish(ch, &TestMessage::new(i)).await.unwrap();
    }
    let dead = wait_for_dead_letters(&router, ch, N, "all dead-lettered").await;
    router.shutdown().await.unwrap();
    assert_eq!(rec.len() as u64, 2 * N, "each message tried exactly twice");
    assert!(rec.counts().values().all(|&c| c == 2));
    let mut seqs: Vec<u64> = dead.iter().map(|d| d.message().unwrap().seq).collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (0..N).collect::<Vec<_>>(),
        "the original payloads are kept"
    );
    for d in &dead {
        let seq = d.message().unwrap().seq;
        assert_eq!(d.reason, Some(DeadLetterReason::AttemptsExhausted));
        assert_eq!(d.error.as_deref(), Some(&*format!("cannot store {seq}")));
        assert_eq!(d.attempts, 2);
        assert_eq!(&*d.channel, ch.name());
        let (first, dead_at) = (d.first_failed_at.unwrap(), d.dead_lettered_at.unwrap());
        assert!(
            first <= dead_at,
            "failed first at {first:?}, dead at {dead_at:?}"
        );
        // Raw too: the headers every broker carries.
        assert_eq!(
            d.envelope.headers[header::DEAD_LETTER_REASON],
            "attempts-exhausted"
        );
    }
}

/// A permanent error dead-letters the message at once, without retries; its error
/// text, over two lines, is in the dead letter.
pub async fn permanent_error_dead_lettered_without_retry(t: &Target) {
    require!(t, dead_letters);
    const N: u64 = 50;
    let ch = unique_channel::<TestMessage>("permanent");
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        handler_fn(move |_m: TestMessage, _cx: MessageContext| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                // Over two lines, as error chains print: no header may break on it.
                Err(HandlerError::permanent(
                    "schema mismatch\ncaused by: field order",
                ))
            }
        })
    };
    let router = t.router("").handle(ch, handler).start().await.unwrap();
    for i in 0..N {
        router.publish(ch, &TestMessage::new(i)).await.unwrap();
    }
    let dead = wait_for_dead_letters(&router, ch, N, "all dead-lettered").await;
    router.shutdown().await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst) as u64,
        N,
        "no retries after a permanent error"
    );
    for d in dead {
        assert_eq!(d.reason, Some(DeadLetterReason::PermanentError));
        assert_eq!(d.attempts, 1);
        let error = d.error.unwrap_or_default();
        assert!(
            error.starts_with("schema mismatch") && error.ends_with("caused by: field order"),
            "the error text, its line break kept or a space on NATS: {error:?}"
        );
    }
}

/// An undecodable payload is dead-lettered and the consumer goes on with the rest.
pub async fn undecodable_payload_dead_lettered_and_consumer_continues(t: &Target) {
    require!(t, dead_letters);
    const N: u64 = 100;
    let ch = unique_channel::<TestMessage>("undecodable");
    let rec = Recorder::default();
    let router = t
        .router("")
        .handle(ch, recording(&rec, 0))
        .start()
        .await
        .unwrap();
    for i in 0..N {
        router
            .publish_envelope(Envelope::new(
                ch.name(),
                format!("not json {i}").into_bytes(),
            ))
            .await
            .unwrap();
        router.publish(ch, &TestMessage::new(i)).await.unwrap();
    }
    wait_until("valid ones handled", LONG, || rec.distinct() as u64 == N).await;
    let dead = wait_for_dead_letters(&router, ch, N, "garbage dead-lettered").await;
    router.shutdown().await.unwrap();
    for d in dead {
        assert_eq!(d.reason, Some(DeadLetterReason::Undecodable));
        assert!(
            d.payload().starts_with(b"not json"),
            "the original bytes are kept"
        );
        assert_eq!(d.message().unwrap_err().kind(), ErrorKind::Decode);
        assert_eq!(d.attempts, 1, "decoding is not retried");
    }
}

/// 1,000 payloads written around the library with the broker's own client (not JSON,
/// JSON of another shape, empty), among 200 valid messages: every one of them ends as
/// a dead letter with reason `undecodable`, holding its bytes, and every valid message
/// is handled once.
pub async fn foreign_payloads_dead_lettered_among_valid_ones(t: &Target) {
    require!(t, dead_letters);
    const POISON: u64 = 1000;
    let ch = unique_channel::<TestMessage>("foreign");
    let rec = Recorder::default();
    let router = t
        .router("")
        .handle(ch, recording(&rec, 0))
        .start()
        .await
        .unwrap();
    let mut valid = 0;
    for i in 0..POISON {
        let payload: &[u8] = match i % 3 {
            0 => b"\x01not json",
            1 => br#"{"message": 7}"#,
            _ => b"",
        };
        t.publish_raw(ch.name(), payload).await;
        if i % 5 == 0 {
            router.publish(ch, &TestMessage::new(valid)).await.unwrap();
            valid += 1;
        }
    }
    wait_until("valid ones handled", LONG, || {
        rec.distinct() as u64 == valid
    })
    .await;
    let dead = wait_for_dead_letters(&router, ch, POISON, "foreign payloads dead-lettered").await;
    router.shutdown().await.unwrap();
    assert_eq!(
        dead.len() as u64,
        POISON,
        "every foreign payload is a dead letter"
    );
    assert!(dead
        .iter()
        .all(|d| d.reason == Some(DeadLetterReason::Undecodable)));
    let not_json = dead
        .iter()
        .filter(|d| d.payload().as_ref() == b"\x01not json")
        .count() as u64;
    assert_eq!(not_json, POISON.div_ceil(3), "dead letters keep the bytes");
    assert_eq!(
        rec.all().len() as u64,
        valid,
        "each valid message handled once"
    );
}

/// 10,000 messages published while consumed, with the broker taken away twice
/// mid-stream (a server of the case's own restarted, or the case's connections cut):
/// every message is handled at least once.
pub async fn outage_under_load_loses_none(t: &Target) {
    let mut outage = t.outage();
    let config = t.config(&outage.table, "");
    crate::common::restart_under_load(t.name, config, async || (outage.cut)().await).await;
}

/// A panicking handler does not kill the consumer: the panic counts as a retryable
/// failure and the message is handled on a later attempt.
pub async fn panicking_handler_is_retried(t: &Target) {
    require!(t, retry);
    const N: u64 = 200;
    let ch = unique_channel::<TestMessage>("panic");
    let rec = Recorder::default();
    let handler = {
        let rec = rec.clone();
        handler_fn(move |m: TestMessage, cx: MessageContext| {
            let rec = rec.clone();
            async move {
                if cx.attempt() == 1 {
                    panic!("handler bug on {}", m.seq);
                }
                rec.record(seen(&m, &cx, 0));
                Ok(())
            }
        })
    };
    let toml = channel_toml(
        ch,
        "retry = { attempts = 2, initial = \"10ms\", max = \"10ms\" }",
    );
    let router = t.router(&toml).handle(ch, handler).start().await.unwrap();
    for i in 0..N {
        router.publish(ch, &TestMessage::new(i)).await.unwrap();
    }
    wait_until("all handled after the panic", LONG, || {
        rec.distinct() as u64 == N
    })
    .await;
    router.shutdown().await.unwrap();
    assert!(rec.all().iter().all(|s| s.attempt == 2));
    let s = &rec.all()[0];
    assert!(s.headers[header::ERROR].starts_with("handler panicked: handler bug on"));
}

/// Two groups each receive every message; members of one group split them.
pub async fn two_groups_each_get_all_members_split(t: &Target) {
    require!(t, groups);
    const N: u64 = 2000;
    let ch = unique_channel::<TestMessage>("groups");
    let (g1, g2) = (Recorder::default(), Recorder::default());
    let slow = |rec: &Recorder, handler: usize| {
        let rec = rec.clone();
        handler_fn(move |m: TestMessage, cx: MessageContext| {
            let rec = rec.clone();
            async move {
                rec.record(seen(&m, &cx, handler));
                tokio::time::sleep(Duration::from_micros(200)).await;
                Ok(())
            }
        })
    };
    let toml = channel_toml(ch, "prefetch = 16");
    let router = t
        .router(&toml)
        .handle_with(ch, slow(&g1, 1), HandlerOptions::new().group("g1"))
        .handle_with(ch, slow(&g1, 2), HandlerOptions::new().group("g1"))
        .handle_with(ch, recording(&g2, 3), HandlerOptions::new().group("g2"))
        .start()
        .await
        .unwrap();
    for i in 0..N {
        router.publish(ch, &TestMessage::new(i)).await.unwrap();
    }
    wait_until("both groups got all", LONG, || {
        g1.distinct() as u64 == N && g2.distinct() as u64 == N
    })
    .await;
    router.shutdown().await.unwrap();
    let first = g1.all().iter().filter(|s| s.handler == 1).count();
    let second = g1.all().iter().filter(|s| s.handler == 2).count();
    assert!(
        first > 0 && second > 0,
        "members of g1 split the messages: {first} / {second}"
    );
    println!("{}: g1 members {first} + {second}, g2 {}", t.name, g2.len());
}

/// Publishes `per_key` messages on each of `keys` keys, taking turns between the keys
/// (`seq = i * keys + k`, key `key-{k}`); waits until all are recorded, shuts the router
/// down and checks every key's messages were handled in publish order.
async fn handle_keyed_round_robin(
    router: &anybroker::MessageRouter,
    ch: anybroker::Channel<TestMessage>,
    rec: &Recorder,
    keys: u64,
    per_key: u64,
) {
    for i in 0..per_key {
        for k in 0..keys {
            router
                .publish_with(
                    ch,
                    &TestMessage::new(i * keys + k),
                    PublishOptions::new().key(format!("key-{k}")),
                )
                .await
                .unwrap();
        }
    }
    wait_until("all handled", LONG, || {
        rec.distinct() as u64 == keys * per_key
    })
    .await;
    router.shutdown().await.unwrap();
    let mut seqs_of: HashMap<String, Vec<u64>> = HashMap::new();
    for s in rec.all() {
        seqs_of
            .entry(s.key.clone().unwrap())
            .or_default()
            .push(s.seq);
    }
    assert_eq!(seqs_of.len() as u64, keys, "every key was handled");
    for (key, seqs) in &seqs_of {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of order: {seqs:?}"
        );
    }
}

/// Messages with the same key are handled in publish order by a group, while
/// different keys are handled concurrently.
pub async fn same_key_order_kept_under_concurrency(t: &Target) {
    require!(t, ordering_by_key);
    const KEYS: u64 = 20;
    const PER_KEY: u64 = 100;
    let ch = unique_channel::<TestMessage>("ordering");
    let rec = Recorder::default();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (rec, in_flight, max_in_flight) =
            (rec.clone(), in_flight.clone(), max_in_flight.clone());
        handler_fn(move |m: TestMessage, cx: MessageContext| {
            let (rec, in_flight, max_in_flight) =
                (rec.clone(), in_flight.clone(), max_in_flight.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                max_in_flight.fetch_max(now, Ordering::SeqCst);
                // Uneven handling times, so a broken order would show.
                tokio::time::sleep(Duration::from_micros((m.seq * 7919) % 1500)).await;
                rec.record(seen(&m, &cx, 0));
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
    };
    let router = t.router("").handle(ch, handler).start().await.unwrap();
    handle_keyed_round_robin(&router, ch, &rec, KEYS, PER_KEY).await;
    assert!(
        max_in_flight.load(Ordering::SeqCst) > 1,
        "different keys were handled concurrently"
    );
}

/// Same-key order also holds when handlers finish without ever waiting: the runtime
/// then passes a key to its next message at once, many times over within one batch.
pub async fn same_key_order_kept_when_handlers_finish_at_once(t: &Target) {
    require!(t, ordering_by_key);
    const KEYS: u64 = 4;
    const PER_KEY: u64 = 250;
    let ch = unique_channel::<TestMessage>("ordering_sync");
    let rec = Recorder::default();
    let handler = {
        let rec = rec.clone();
        handler_fn(move |m: TestMessage, cx: MessageContext| {
            rec.record(seen(&m, &cx, 0));
            async { Ok(()) }
        })
    };
    let router = t.router("").handle(ch, handler).start().await.unwrap();
    handle_keyed_round_robin(&router, ch, &rec, KEYS, PER_KEY).await;
}

/// Where declared, same-key order holds across the members of a group and across
/// retries: a later message of a key waits until the earlier one is done.
pub async fn same_key_order_kept_across_members_and_retries(t: &Target) {
    require!(t, ordering_across_members && retry);
    const KEYS: u64 = 10;
    const PER_KEY: u64 = 50;
    let ch = unique_channel::<TestMessage>("ordering_members");
    let rec = Recorder::default();
    let member = |n: usize| {
        let rec = rec.clone();
        handler_fn(move |m: TestMessage, cx: MessageContext| {
            let rec = rec.clone();
            async move {
                tokio::time::sleep(Duration::from_micros((m.seq * 7919) % 700)).await;
                // Every 7th message fails once: its successors of the key must wait.
                if m.seq.is_multiple_of(7) && cx.attempt() == 1 {
                    return Err(HandlerError::retryable("transient"));
                }
                rec.record(seen(&m, &cx, n));
                Ok(())
            }
        })
    };
    let toml = channel_toml(
        ch,
        "retry = { attempts = 3, initial = \"5ms\", max = \"5ms\" }",
    );
    let router = t
        .router(&toml)
        .handle_with(ch, member(1), HandlerOptions::new().consumers(2))
        .handle(ch, member(2))
        .start()
        .await
        .unwrap();
    handle_keyed_round_robin(&router, ch, &rec, KEYS, PER_KEY).await;
    let members: std::collections::HashSet<usize> = rec.all().iter().map(|s| s.handler).collect();
    assert_eq!(members.len(), 2, "both registrations handled messages");
}

/// A delayed message is not delivered before its delay.
pub async fn delayed_publish_not_delivered_early(t: &Target) {
    require!(t, delay);
    const N: u64 = 50;
    let delay = Duration::from_millis(500);
    let ch = unique_channel::<TestMessage>("delay");
    let rec = Recorder::default();
    let router = t
        .router("")
        .handle(ch, recording(&rec, 0))
        .start()
        .await
        .unwrap();
    let published = Instant::now();
    for i in 0..N {
        router
            .publish_delayed(ch, &TestMessage::new(i), delay)
            .await
            .unwrap();
    }
    router.publish(ch, &TestMessage::new(1000)).await.unwrap();
    // On a loaded machine the delayed publishes can take longer than the delay; the
    // undelayed message can only be expected first if it went out before any was due.
    let undelayed_before_due = published.elapsed() < delay;
    wait_until("all delivered", LONG, || rec.distinct() as u64 == N + 1).await;
    router.shutdown().await.unwrap();
    let all = rec.all();
    if undelayed_before_due {
        assert_eq!(all[0].seq, 1000, "the undelayed message comes first");
    }
    for s in all.iter().filter(|s| s.seq < 1000) {
        assert!(
            s.at - published >= delay,
            "message {} came after {:?}",
            s.seq,
            s.at - published
        );
    }
}

/// Shutdown while messages are in flight loses none and handles none twice: what was
/// handled is acknowledged, the rest goes to the next consumer of the group.
pub async fn shutdown_with_in_flight_loses_none(t: &Target) {
    require!(t, persistent);
    const N: u64 = 1000;
    let ch = unique_channel::<TestMessage>("shutdown");
    let toml = channel_toml(ch, "prefetch = 16");
    let slow = |rec: &Recorder, handler: usize| {
        let rec = rec.clone();
        handler_fn(move |m: TestMessage, cx: MessageContext| {
            let rec = rec.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                rec.record(seen(&m, &cx, handler));
                Ok(())
            }
        })
    };
    let rec = Recorder::default();
    // Everything is published before the first consumer starts, so it is still busy
    // when shutdown comes.
    let publisher = t.router(&toml).start().await.unwrap();
    for i in 0..N {
        publisher.publish(ch, &TestMessage::new(i)).await.unwrap();
    }
    publisher.shutdown().await.unwrap();
    let first = t
        .router(&toml)
        .handle(ch, slow(&rec, 1))
        .start()
        .await
        .unwrap();
    wait_until("some handled", LONG, || rec.len() >= 100).await;
    first.shutdown().await.unwrap();
    let by_first = rec.len();
    assert!((by_first as u64) < N, "shutdown came before the end");
    let second = t
        .router(&toml)
        .handle(ch, slow(&rec, 2))
        .start()
        .await
        .unwrap();
    wait_until("the rest handled", LONG, || rec.distinct() as u64 == N).await;
    second.shutdown().await.unwrap();
    let duplicates = rec.len() as u64 - N;
    println!(
        "{}: first {by_first}, total {}, duplicates {duplicates}",
        t.name,
        rec.len()
    );
    for (seq, _) in rec.counts().into_iter().filter(|(_, c)| *c > 1) {
        let calls: Vec<_> = rec
            .all()
            .into_iter()
            .filter(|s| s.seq == seq)
            .map(|s| (s.handler, s.attempt))
            .collect();
        println!("  seq {seq} handled by (consumer, attempt): {calls:?}");
    }
    {
        assert_eq!(
            duplicates, 0,
            "nothing handled twice because of shutdown alone"
        );
    }
}

/// A consumer (re)started later receives what was published while it was away.
pub async fn restarted_consumer_receives_published_meanwhile(t: &Target) {
    require!(t, persistent);
    const N: u64 = 500;
    let ch = unique_channel::<TestMessage>("restart_consumer");
    let rec = Recorder::default();
    let consumer = t
        .router("")
        .handle(ch, recording(&rec, 1))
        .start()
        .await
        .unwrap();
    if !consumer.capabilities(ch).await.unwrap().persistent {
        consumer.shutdown().await.unwrap();
        return; // Declared: a non-persistent mode keeps nothing for absent consumers.
    }
    for i in 0..N {
        consumer.publish(ch, &TestMessage::new(i)).await.unwrap();
    }
    wait_until("first batch handled", LONG, || rec.distinct() as u64 == N).await;
    consumer.shutdown().await.unwrap();

    let publisher = t.router("").start().await.unwrap();
    for i in N..2 * N {
        publisher.publish(ch, &TestMessage::new(i)).await.unwrap();
    }
    let restarted = t
        .router("")
        .handle(ch, recording(&rec, 2))
        .start()
        .await
        .unwrap();
    wait_until("published-meanwhile handled", LONG, || {
        rec.distinct() as u64 == 2 * N
    })
    .await;
    restarted.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
    let late: Vec<u64> = rec
        .all()
        .iter()
        .filter(|s| s.handler == 2)
        .map(|s| s.seq)
        .collect();
    assert!(
        late.iter().all(|&s| s >= N),
        "the restarted consumer got only new messages"
    );
    assert_eq!(late.len() as u64, N);
}

/// Dead letters can be replayed to their channel, where they are handled again as the
/// same messages (same id) on attempt 1, without the dead-letter headers, leaving the
/// dead-letter destination empty; replayed ones that fail again are dead-lettered
/// again, none dropped.
pub async fn dead_letters_can_be_replayed(t: &Target) {
    require!(t, dead_letters);
    const N: u64 = 100;
    let ch = unique_channel::<TestMessage>("replay");
    let broken = Arc::new(AtomicBool::new(true));
    let rec = Recorder::default();
    let failed = Recorder::default();
    let handler = {
        let (rec, failed, broken) = (rec.clone(), failed.clone(), broken.clone());
        handler_fn(move |m: TestMessage, cx: MessageContext| {
            let (rec, failed, broken) = (rec.clone(), failed.clone(), broken.clone());
            async move {
                if broken.load(Ordering::SeqCst) {
                    failed.record(seen(&m, &cx, 0));
                    return Err(HandlerError::permanent("downstream is down"));
                }
                rec.record(seen(&m, &cx, 0));
                Ok(())
            }
        })
    };
    let router = t.router("").handle(ch, handler).start().await.unwrap();
    for i in 0..N {
        router.publish(ch, &TestMessage::new(i)).await.unwrap();
    }
    wait_for_dead_letters(&router, ch, N, "all dead-lettered").await;
    // Replayed while the handler still fails: dead-lettered again, none dropped (a
    // replayed message keeps its id, as its first dead letter did).
    assert_eq!(
        router.replay_dead_letters(ch, 10_000).await.unwrap() as u64,
        N
    );
    wait_until("replayed ones failed again", LONG, || {
        failed.all().len() as u64 >= 2 * N
    })
    .await;
    wait_for_dead_letters(&router, ch, N, "all dead-lettered again").await;
    broken.store(false, Ordering::SeqCst);
    assert_eq!(
        router.replay_dead_letters(ch, 10_000).await.unwrap() as u64,
        N
    );
    wait_until("replayed ones handled", LONG, || rec.distinct() as u64 == N).await;
    assert!(rec.all().iter().all(|s| s.attempt == 1));
    assert!(rec
        .all()
        .iter()
        .all(|s| !s.headers.contains_key(header::DEAD_LETTER_REASON)));
    let original: HashMap<u64, String> = failed.all().into_iter().map(|s| (s.seq, s.id)).collect();
    let changed: Vec<(u64, String, Option<&String>)> = rec
        .all()
        .into_iter()
        .filter(|s| original.get(&s.seq) != Some(&s.id))
        .map(|s| (s.seq, s.id, original.get(&s.seq)))
        .take(3)
        .collect();
    assert!(
        changed.is_empty(),
        "a replayed message keeps its id; (seq, replayed id, original id): {changed:?}"
    );
    assert!(router.dead_letters(ch, 10_000).await.unwrap().is_empty());
    router.shutdown().await.unwrap();
}

/// Dead letters can be replayed or discarded by id or by reason, leaving the others
/// as they were, and the oldest of those left taken after.
pub async fn dead_letters_replayed_and_discarded_by_id_and_reason(t: &Target) {
    require!(t, retry && dead_letters);
    const N: u64 = 6;
    let ch = unique_channel::<TestMessage>("dead_selected");
    let healed = Arc::new(AtomicBool::new(false));
    let rec = Recorder::default();
    let handler = {
        let (rec, healed) = (rec.clone(), healed.clone());
        handler_fn(move |m: TestMessage, cx: MessageContext| {
            let (rec, healed) = (rec.clone(), healed.clone());
            async move {
                if healed.load(Ordering::SeqCst) {
                    rec.record(seen(&m, &cx, 0));
                    return Ok(());
                }
                // Even: permanent-error; odd: attempts-exhausted.
                match m.seq % 2 {
                    0 => Err(HandlerError::permanent("rejected")),
                    _ => Err(HandlerError::retryable("unavailable")),
                }
            }
        })
    };
    let router = t.router("").handle(ch, handler).start().await.unwrap();
    for i in 0..N {
        router.publish(ch, &TestMessage::new(i)).await.unwrap();
    }
    let dead = wait_for_dead_letters(&router, ch, N, "all dead-lettered").await;
    healed.store(true, Ordering::SeqCst);
    let seq_of = |id: &str| {
        dead.iter()
            .find(|d| &*d.id == id)
            .map(|d| d.message().unwrap().seq)
            .unwrap()
    };
    let first = dead.iter().find(|d| d.message().unwrap().seq == 0).unwrap();
    let by_id = DeadLetterSelector::ids([first.id.clone()]);
    assert_eq!(
        router.discard_dead_letters(ch, &by_id, 10).await.unwrap(),
        1,
        "the one id"
    );
    let permanent = DeadLetterSelector::Reason(DeadLetterReason::PermanentError);
    let replayed = router
        .replay_dead_letters_matching(ch, &permanent, 100)
        .await
        .unwrap();
    assert_eq!(replayed, 2, "seq 2 and 4; seq 0 was discarded");
    wait_until("the replayed handled", LONG, || rec.distinct() == 2).await;
    let mut handled: Vec<u64> = rec.all().iter().map(|s| s.seq).collect();
    handled.sort();
    assert_eq!(handled, vec![2, 4]);
    let left = router.dead_letters(ch, 100).await.unwrap();
    let mut left_seqs: Vec<u64> = left.iter().map(|d| seq_of(&d.id)).collect();
    left_seqs.sort();
    assert_eq!(left_seqs, vec![1, 3, 5], "the others are as they were");
    assert!(left
        .iter()
        .all(|d| d.reason == Some(DeadLetterReason::AttemptsExhausted)));
    // The oldest of the rest, then the others by reason.
    assert_eq!(router.replay_dead_letters(ch, 1).await.unwrap(), 1);
    wait_until("the oldest left handled", LONG, || rec.distinct() == 3).await;
    let exhausted = DeadLetterSelector::Reason(DeadLetterReason::AttemptsExhausted);
    assert_eq!(
        router
            .discard_dead_letters(ch, &exhausted, 100)
            .await
            .unwrap(),
        2
    );
    assert!(router.dead_letters(ch, 100).await.unwrap().is_empty());
    router.shutdown().await.unwrap();
}

/// A consumer never holds more unsettled messages than its prefetch window.
pub async fn in_flight_window_is_bounded(t: &Target) {
    const N: u64 = 300;
    const WINDOW: usize = 8;
    let ch = unique_channel::<TestMessage>("window");
    let (rec, in_flight) = (Recorder::default(), InFlight::default());
    let handler = recording_in_flight(&rec, &in_flight, Duration::from_millis(1));
    let toml = channel_toml(ch, &format!("prefetch = {WINDOW}"));
    let router = t.router(&toml).handle(ch, handler).start().await.unwrap();
    for i in 0..N {
        router.publish(ch, &TestMessage::new(i)).await.unwrap();
    }
    wait_until("all handled", LONG, || rec.len() as u64 >= N).await;
    router.shutdown().await.unwrap();
    let max = in_flight.max();
    assert!(max <= WINDOW, "{max} in flight with a window of {WINDOW}");
    assert!(max >= 2, "the window allows concurrency ({max})");
}

/// `publish_via` sends on an explicitly chosen broker kind.
pub async fn publish_via_explicit_broker(t: &Target) {
    const N: u64 = 200;
    let ch = unique_channel::<TestMessage>("via");
    let rec = Recorder::default();
    let router = t
        .router("")
        .handle(ch, recording(&rec, 0))
        .start()
        .await
        .unwrap();
    let (_, kind) = router.broker_of(ch).await.unwrap();
    for i in 0..N {
        router
            .publish_via(kind, ch, &TestMessage::new(i))
            .await
            .unwrap();
    }
    wait_until("all delivered", LONG, || rec.distinct() as u64 == N).await;
    let other = anybroker::BrokerKind::ALL
        .into_iter()
        .find(|k| *k != kind)
        .unwrap();
    let err = router
        .publish_via(other, ch, &TestMessage::new(0))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{err}");
    router.shutdown().await.unwrap();
}

/// A request is answered by a responder of the channel with its typed reply; a
/// responder's error comes back as the request's error; with nobody serving the
/// channel, the request fails within its timeout.
pub async fn request_reply_round_trip(t: &Target) {
    require!(t, request_reply);
    const N: u64 = 200;
    let ch = unique_channel::<TestMessage>("rpc");
    let failing = unique_channel::<TestMessage>("rpc_failing");
    let unserved = unique_channel::<TestMessage>("rpc_unserved");
    let router = t
        .router("")
        .serve(ch, |m: TestMessage, _cx| async move {
            Ok::<_, HandlerError>(TestMessage {
                seq: m.seq * 2,
                text: m.text.to_uppercase(),
            })
        })
        .serve(failing, |_m: TestMessage, _cx| async move {
            Err::<TestMessage, _>(HandlerError::permanent("no such sensor"))
        })
        .start()
        .await
        .unwrap();
    let timeout = Duration::from_secs(5);
    let replies = futures::future::join_all((0..N).map(|i| {
        let router = router.clone();
        async move {
            router
                .request::<_, TestMessage>(ch, &TestMessage::new(i), timeout)
                .await
        }
    }))
    .await;
    for (i, reply) in replies.into_iter().enumerate() {
        let reply = reply.unwrap();
        assert_eq!(reply.seq, 2 * i as u64);
        assert_eq!(reply.text, format!("MESSAGE {i}"));
    }
    let err = router
        .request::<_, TestMessage>(failing, &TestMessage::new(1), timeout)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no such sensor"), "{err}");
    let started = Instant::now();
    let err = router
        .request::<_, TestMessage>(unserved, &TestMessage::new(1), Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::NoResponder | ErrorKind::Timeout),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout was kept"
    );
    router.shutdown().await.unwrap();
}

/// Whatever a mode declares it lacks is refused with `Unsupported`, never silently
/// done less.
pub async fn missing_capabilities_are_unsupported(t: &Target) {
    let ch = unique_channel::<TestMessage>("caps");
    let router = t.router("").start().await.unwrap();
    let caps = router.capabilities(ch).await.unwrap();
    let mut checked = 0;
    if !caps.request_reply {
        let err = router
            .request::<_, TestMessage>(ch, &TestMessage::new(1), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        let ch3 = unique_channel::<TestMessage>("caps_serve");
        let err = t
            .router("")
            .serve(ch3, |m: TestMessage, _cx| async move {
                Ok::<_, HandlerError>(m)
            })
            .start()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        checked += 1;
    }
    if !caps.delay {
        let err = router
            .publish_delayed(ch, &TestMessage::new(1), Duration::from_millis(1))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        checked += 1;
    }
    if !caps.dead_letters {
        let err = router.dead_letters(ch, 1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        checked += 1;
    }
    if !caps.presence {
        let broker = t.connect().await;
        let spec = anybroker::ChannelSpec::new(ch.name(), "default");
        let err = broker.announce(&spec, "caps").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        let err = broker.announced(&spec).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        checked += 1;
    }
    if !caps.retry {
        let ch2 = unique_channel::<TestMessage>("caps_retry");
        let err = t
            .router(&channel_toml(ch2, "retry = { attempts = 3 }"))
            .handle(ch2, handler_fn(|_m: TestMessage, _cx| async { Ok(()) }))
            .start()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        checked += 1;
    }
    router.shutdown().await.unwrap();
    println!("{}: {checked} missing capabilities checked", t.name);
}

/// An error says where it happened, on every backend alike: the broker's name (its
/// key under `[brokers]`, not its kind) and kind, the channel and the operation. A call
/// after the router shut its broker down fails with `Closed`, with that context.
pub async fn errors_name_broker_channel_and_operation(t: &Target) {
    let ch = unique_channel::<TestMessage>("context");
    let router = t.own_router().start().await.unwrap();
    router.publish(ch, &TestMessage::new(1)).await.unwrap();
    let (name, kind) = router.broker_of(ch).await.unwrap();
    assert_eq!(name, "target");
    router.shutdown().await.unwrap();

    let err = router.publish(ch, &TestMessage::new(2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    assert_eq!(err.broker(), Some("target"), "{err}");
    assert_eq!(err.broker_kind(), Some(kind), "{err}");
    assert_eq!(err.channel(), Some(ch.name()), "{err}");
    let text = err.to_string();
    assert!(text.contains("operation publish"), "{text}");
    assert!(text.contains(&format!("broker target ({kind})")), "{text}");

    // A channel first used after the shutdown cannot be opened either.
    let fresh = unique_channel::<TestMessage>("context_fresh");
    let err = router
        .publish(fresh, &TestMessage::new(3))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    assert_eq!(err.channel(), Some(fresh.name()), "{err}");
}

/// The capabilities a target's module says the backend lacks (which skip the cases
/// needing them) are exactly those the backend declares false.
pub async fn declared_lacks_match_capabilities(t: &Target, lacks: &[&str]) {
    let declared: Vec<&str> = t
        .capabilities()
        .await
        .flags()
        .into_iter()
        .filter(|(_, has)| !has)
        .map(|(name, _)| name)
        .collect();
    // `outage` is not a capability: the target has no way to take its broker away.
    assert_eq!(
        lacks.contains(&"outage"),
        !t.has_outage(),
        "{}: `outage` is in the `lacks` list exactly when the target has no outage hook",
        t.name
    );
    let mut said: Vec<String> = lacks
        .iter()
        .filter(|l| **l != "outage")
        .map(|l| l.replace('_', "-"))
        .collect();
    said.sort();
    let mut declared: Vec<String> = declared.into_iter().map(String::from).collect();
    declared.sort();
    assert_eq!(
        said, declared,
        "{}: the module's `lacks` list and the capabilities the backend declares false differ",
        t.name
    );
}

/// A channel named at run time takes its settings from a `"<prefix>*"` table, and
/// dead letters and capabilities work on it as on a declared one.
pub async fn channel_named_at_run_time_takes_pattern_settings(t: &Target) {
    require!(t, retry && dead_letters);
    let run = unique_channel::<()>("pattern");
    let ch = anybroker::Channel::<TestMessage>::named(format!("{}.tenant-a", run.name()));
    let toml = format!(
        "[channels.\"{}.*\"]\nretry = {{ attempts = 2, initial = \"50ms\" }}\n",
        run.name()
    );
    let rec = Recorder::default();
    let handler = {
        let rec = rec.clone();
        handler_fn(move |m: TestMessage, cx: MessageContext| {
            rec.record(seen(&m, &cx, 0));
            async { Err::<(), _>(HandlerError::retryable("always")) }
        })
    };
    let router = t.router(&toml).handle(ch, handler).start().await.unwrap();
    assert_eq!(
        router.capabilities(ch).await.unwrap(),
        t.capabilities().await
    );
    router.publish(ch, &TestMessage::new(7)).await.unwrap();
    let dead = wait_for_dead_letters(&router, ch, 1, "the dead letter").await;
    router.shutdown().await.unwrap();
    assert_eq!(
        dead[0].attempts, 2,
        "the pattern's 2 attempts, not the default 3"
    );
    let attempts: Vec<u32> = rec.all().iter().map(|s| s.attempt).collect();
    assert_eq!(attempts, vec![1, 2]);
}

/// A registration's retry policy overrides the channel's, group by group; a mode that
/// cannot retry refuses one with more than one attempt.
pub async fn handler_retry_policy_overrides_config(t: &Target) {
    let ch = unique_channel::<TestMessage>("handler_retry");
    let caps = t.capabilities().await;
    let failing = |rec: &Recorder, handler: usize| {
        let rec = rec.clone();
        handler_fn(move |m: TestMessage, cx: MessageContext| {
            rec.record(seen(&m, &cx, handler));
            async { Err::<(), _>(HandlerError::retryable("always")) }
        })
    };
    let rec = Recorder::default();
    let policy = |attempts| RetryPolicy::new(attempts).initial(Duration::from_millis(50));
    if !caps.retry {
        let err = t
            .router("")
            .handle_with(ch, failing(&rec, 0), HandlerOptions::new().retry(policy(3)))
            .start()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains("handler options"), "{err}");
        return;
    }
    let router = t
        .router("")
        .handle_with(
            ch,
            failing(&rec, 0),
            HandlerOptions::new().group("two").retry(policy(2)),
        )
        .handle_with(
            ch,
            failing(&rec, 1),
            HandlerOptions::new().group("four").retry(policy(4)),
        )
        .start()
        .await
        .unwrap();
    router.publish(ch, &TestMessage::new(1)).await.unwrap();
    // Each group dead-letters its copy once its own attempts are used up.
    wait_for_dead_letters(&router, ch, 2, "both groups' dead letters").await;
    router.shutdown().await.unwrap();
    let attempts_of = |handler| {
        let mut a: Vec<u32> = rec
            .all()
            .iter()
            .filter(|s| s.handler == handler)
            .map(|s| s.attempt)
            .collect();
        a.sort();
        a
    };
    assert_eq!(attempts_of(0), vec![1, 2], "group two");
    assert_eq!(attempts_of(1), vec![1, 2, 3, 4], "group four");
}

/// A registration's prefetch overrides the channel's: it bounds the handlers running
/// at once.
pub async fn handler_prefetch_overrides_config(t: &Target) {
    const N: u64 = 60;
    let ch = unique_channel::<TestMessage>("handler_prefetch");
    let (rec, in_flight) = (Recorder::default(), InFlight::default());
    let handler = recording_in_flight(&rec, &in_flight, Duration::from_millis(2));
    let toml = channel_toml(ch, "prefetch = 64");
    let router = t
        .router(&toml)
        .handle_with(ch, handler, HandlerOptions::new().prefetch(2))
        .start()
        .await
        .unwrap();
    for i in 0..N {
        router.publish(ch, &TestMessage::new(i)).await.unwrap();
    }
    wait_until("all handled", LONG, || rec.distinct() as u64 == N).await;
    router.shutdown().await.unwrap();
    let max = in_flight.max();
    assert!(
        max <= 2,
        "{max} in flight with the handler's prefetch of 2 (config: 64)"
    );
}

/// An id chosen by the publisher arrives with the key and headers published beside it.
pub async fn own_id_key_and_headers_arrive_together(t: &Target) {
    let ch = unique_channel::<TestMessage>("own_id");
    let rec = Recorder::default();
    let router = t
        .router("")
        .handle(ch, recording(&rec, 0))
        .start()
        .await
        .unwrap();
    let options = |i: u64| {
        PublishOptions::new()
            .id(format!("order-{i}-created"))
            .key(format!("order-{i}"))
            .header("tenant", "acme")
    };
    for i in 0..3 {
        router
            .publish_with(ch, &TestMessage::new(i), options(i))
            .await
            .unwrap();
    }
    wait_until("all delivered", LONG, || rec.distinct() == 3).await;
    router.shutdown().await.unwrap();
    for s in rec.all() {
        assert_eq!(s.id, format!("order-{}-created", s.seq));
        assert_eq!(s.key.as_deref(), Some(&*format!("order-{}", s.seq)));
        assert_eq!(s.headers["tenant"], "acme");
    }
}

/// Every publish option combines with delay: id, key and headers arrive, not early.
pub async fn own_id_key_and_headers_combine_with_delay(t: &Target) {
    require!(t, delay);
    let ch = unique_channel::<TestMessage>("own_id_delay");
    let delay = Duration::from_millis(400);
    let rec = Recorder::default();
    let router = t
        .router("")
        .handle(ch, recording(&rec, 0))
        .start()
        .await
        .unwrap();
    let published = Instant::now();
    let options = PublishOptions::new()
        .id("invoice-9-due")
        .key("invoice-9")
        .header("tenant", "acme")
        .delay(delay);
    router
        .publish_with(ch, &TestMessage::new(9), options)
        .await
        .unwrap();
    wait_until("delivered", LONG, || rec.len() == 1).await;
    router.shutdown().await.unwrap();
    let s = &rec.all()[0];
    assert!(
        s.at - published >= delay,
        "came after {:?}",
        s.at - published
    );
    assert_eq!(
        (
            s.id.as_str(),
            s.key.as_deref(),
            s.headers["tenant"].as_str()
        ),
        ("invoice-9-due", Some("invoice-9"), "acme")
    );
}

/// Routers share one broker connection (`Broker::connect` + `with_broker`): one
/// router's shutdown leaves it open for the others; the application closes it.
pub async fn routers_share_one_broker_connection(t: &Target) {
    let ch = unique_channel::<TestMessage>("shared_connection");
    let broker = t.connect().await;
    let rec = Recorder::default();
    let sharing = || t.router("").with_broker("target", broker.clone());
    let consumer = sharing()
        .handle(ch, recording(&rec, 0))
        .start()
        .await
        .unwrap();
    let publisher = sharing().start().await.unwrap();
    publisher.publish(ch, &TestMessage::new(1)).await.unwrap();
    wait_until("the first delivered", LONG, || rec.len() == 1).await;
    publisher.shutdown().await.unwrap();
    assert!(
        !broker.is_closed(),
        "a router does not close a shared broker"
    );
    let another = sharing().start().await.unwrap();
    another.publish(ch, &TestMessage::new(2)).await.unwrap();
    wait_until("the second delivered", LONG, || rec.len() == 2).await;
    consumer.shutdown().await.unwrap();
    another.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
    assert!(broker.is_closed());
}

/// A group provisioned ahead of time receives what is published before its first
/// member starts; a group that was not receives of the earlier messages what
/// `new_group_start` says; a mode that keeps nothing refuses to provision.
pub async fn provisioned_group_receives_what_was_published_before_its_members(t: &Target) {
    let ch = unique_channel::<TestMessage>("provision");
    let start = t.capabilities().await.new_group_start;
    let publisher = t.router("").start().await.unwrap();
    if start == NewGroupStart::Live {
        let err = publisher.provision(ch, &["late"]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        publisher.shutdown().await.unwrap();
        return;
    }
    publisher.provision(ch, &["provisioned"]).await.unwrap();
    publisher.provision(ch, &["provisioned"]).await.unwrap(); // idempotent
                                                              // One key: both messages on one partition, each group handles them in order.
    let keyed = || PublishOptions::new().key("k");
    publisher
        .publish_with(ch, &TestMessage::new(1), keyed())
        .await
        .unwrap();
    let rec = Recorder::default();
    // The group that was not provisioned subscribes first: on the embedded broker the
    // provisioned group has consumed nothing yet.
    let consumer = t
        .router("")
        .handle_with(
            ch,
            recording(&rec, 1),
            HandlerOptions::new().group("unprovisioned"),
        )
        .handle_with(
            ch,
            recording(&rec, 0),
            HandlerOptions::new().group("provisioned"),
        )
        .start()
        .await
        .unwrap();
    publisher
        .publish_with(ch, &TestMessage::new(2), keyed())
        .await
        .unwrap();
    let seqs_of = |handler| -> Vec<u64> {
        rec.all()
            .iter()
            .filter(|s| s.handler == handler)
            .map(|s| s.seq)
            .collect()
    };
    wait_until("the provisioned group has both", LONG, || {
        seqs_of(0) == [1, 2]
    })
    .await;
    wait_until("the other group has the second", LONG, || {
        seqs_of(1).contains(&2)
    })
    .await;
    consumer.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
    let sees_earlier = match start {
        NewGroupStart::Retained | NewGroupStart::Unconsumed => true,
        NewGroupStart::Provisioned => false,
        other => panic!("{}: unexpected new_group_start {other:?}", t.name),
    };
    let expected: &[u64] = if sees_earlier { &[1, 2] } else { &[2] };
    assert_eq!(
        seqs_of(1),
        expected,
        "{}: a group that was not provisioned, with new_group_start = {start:?}",
        t.name
    );
}

/// The README's capability table says of the target's backend and mode what the
/// backend declares, row by row.
pub async fn capabilities_match_the_readme_table(t: &Target) {
    let column = match t.name {
        "memory" | "harness" => "memory",
        "redis" => "redis (streams)",
        "redis-pubsub" => "redis (pubsub)",
        "nats" => "nats (jetstream)",
        "nats-core" => "nats (core)",
        "rabbitmq" => "rabbitmq",
        "kafka" | "kafka-mock" => "kafka",
        other => panic!("{other}: which column of the README's capability table is it?"),
    };
    // Each flag's row, by how its label starts.
    const ROWS: [(&str, &str); 11] = [
        ("persistent", "persistent"),
        ("survives broker restart", "survives-broker-restart"),
        ("groups", "groups"),
        ("ordering by key within", "ordering-by-key"),
        ("ordering by key across", "ordering-across-members"),
        ("retry", "retry"),
        ("dead letters", "dead-letters"),
        ("delay", "delay"),
        ("broker counts redeliveries", "native-redelivery-count"),
        ("request/reply", "request-reply"),
        ("tells which routers use a channel", "presence"),
    ];
    const NEW_GROUP_ROW: &str = "a group that was not provisioned receives";
    let readme = include_str!("../../README.md");
    let table: Vec<Vec<&str>> = readme
        .lines()
        .skip_while(|l| !l.starts_with("| capability |"))
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    assert!(!table.is_empty(), "the README has a capability table");
    let col = table[0]
        .iter()
        .position(|c| *c == column)
        .unwrap_or_else(|| panic!("the capability table has a {column:?} column"));
    let caps = t.capabilities().await;
    let row = table
        .iter()
        .find(|r| r[0].starts_with(NEW_GROUP_ROW))
        .unwrap_or_else(|| panic!("the capability table has a row {NEW_GROUP_ROW:?}"));
    assert!(
        row[col].starts_with(caps.new_group_start.as_str()),
        "{}: the README says {:?} in column {column:?}, row {NEW_GROUP_ROW:?}; the backend declares new_group_start = {:?}",
        t.name,
        row[col],
        caps.new_group_start.as_str()
    );
    let flags = caps.flags();
    assert_eq!(flags.len(), ROWS.len(), "every flag has a row");
    for (label, flag) in ROWS {
        let row = table
            .iter()
            .find(|r| r[0].starts_with(label))
            .unwrap_or_else(|| panic!("the capability table has a row {label:?}"));
        let cell = row[col];
        let says = match cell.split([' ', '(', ',']).next() {
            Some("yes") => true,
            Some("no") => false,
            _ => panic!("{column} / {label}: expected a cell starting yes or no, got {cell:?}"),
        };
        let declared = flags.iter().find(|(name, _)| *name == flag).unwrap().1;
        assert_eq!(
            says, declared,
            "{}: the README says {cell:?} in column {column:?}, row {label:?}; the backend declares {flag} = {declared}",
            t.name
        );
    }
}

/// Every case, for a backend module to instantiate:
/// `conformance_cases!(target, lacks [capability, ...])`, where `lacks` names the
/// capability flags the backend declares false (`declared_lacks_match_capabilities`
/// checks it does). Each case names the capabilities its promise needs; a case needing
/// one the backend lacks is emitted ignored, so the runner lists it as skipped, with
/// the capability as the reason.
macro_rules! conformance_cases {
    ($target:expr) => {
        conformance_cases!($target, lacks []);
    };
    ($target:expr, lacks [$($lack:ident),* $(,)?]) => {
        // `$` handed in as a token, for the metavariables of the macro defined below.
        conformance_cases!(@with ($) $target; [$($lack),*]);
    };
    (@with ($d:tt) $target:expr; [$($lack:ident),*]) => {
        /// A case as a test, or as an ignored one if it needs a capability the
        /// backend lacks (one arm per lacked capability).
        macro_rules! case {
            $(
                ([$lack $d(, $d rest:ident)*] $d name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    #[ignore = concat!("the backend declares no ", stringify!($lack))]
                    async fn $d name() {
                        $crate::cases::$d name(&$target).await;
                    }
                };
            )*
            ([$d first:ident $d(, $d rest:ident)*] $d name:ident) => {
                case!([$d($d rest),*] $d name);
            };
            ([] $d name:ident) => {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $d name() {
                    $crate::cases::$d name(&$target).await;
                }
            };
        }
        case!([] publish_then_subscribe_delivers_all);
        case!([] many_publishers_and_subscribers_all_delivered);
        case!([] batch_publish_answers_each_and_delivers_each_once);
        case!([] channels_are_isolated);
        case!([retry] failed_handler_retried_with_backoff);
        case!([retry] handler_requested_delay_overrides_backoff);
        case!([retry] jittered_backoff_spreads_retries_within_bounds);
        case!([retry, dead_letters] dead_letter_after_attempts);
        case!([dead_letters] permanent_error_dead_lettered_without_retry);
        case!([dead_letters] undecodable_payload_dead_lettered_and_consumer_continues);
        case!([dead_letters] foreign_payloads_dead_lettered_among_valid_ones);
        case!([outage] outage_under_load_loses_none);
        case!([retry] panicking_handler_is_retried);
        case!([groups] two_groups_each_get_all_members_split);
        case!([ordering_by_key] same_key_order_kept_under_concurrency);
        case!([ordering_by_key] same_key_order_kept_when_handlers_finish_at_once);
        case!([ordering_across_members, retry] same_key_order_kept_across_members_and_retries);
        case!([delay] delayed_publish_not_delivered_early);
        case!([persistent] shutdown_with_in_flight_loses_none);
        case!([persistent] restarted_consumer_receives_published_meanwhile);
        case!([dead_letters] dead_letters_can_be_replayed);
        case!([] in_flight_window_is_bounded);
        case!([] publish_via_explicit_broker);
        case!([request_reply] request_reply_round_trip);
        case!([] missing_capabilities_are_unsupported);
        case!([] errors_name_broker_channel_and_operation);
        case!([] capabilities_match_the_readme_table);
        case!([retry, dead_letters] channel_named_at_run_time_takes_pattern_settings);
        case!([] handler_retry_policy_overrides_config);
        case!([] handler_prefetch_overrides_config);
        case!([] own_id_key_and_headers_arrive_together);
        case!([delay] own_id_key_and_headers_combine_with_delay);
        case!([] routers_share_one_broker_connection);
        case!([] provisioned_group_receives_what_was_published_before_its_members);
        case!([retry, dead_letters] dead_letters_replayed_and_discarded_by_id_and_reason);
        case!([] health_reports_connection_and_consumers);
        case!([] backlog_counts_what_a_group_has_not_handled);
        case!([retry] backlog_counts_a_waiting_retry);
        case!([delay] backlog_counts_a_delayed_message);
        case!([presence] routers_using_a_channel_are_announced);
        #[cfg(feature = "opentelemetry")]
        case!([] handling_span_is_child_of_publish_span);
        #[cfg(feature = "opentelemetry")]
        case!([retry] retried_handlings_are_children_of_publish_span);
        #[cfg(feature = "opentelemetry")]
        case!([dead_letters] replayed_dead_letter_keeps_trace_context);
        #[cfg(feature = "opentelemetry")]
        case!([delay] delayed_handling_is_child_of_publish_span);
        #[cfg(feature = "metrics")]
        case!([] metrics_count_publishes_and_handlings);
        #[cfg(feature = "metrics")]
        case!([retry, dead_letters] metrics_count_retries_and_dead_letters);

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn declared_lacks_match_capabilities() {
            $crate::cases::declared_lacks_match_capabilities(&$target, &[$(stringify!($lack)),*])
                .await;
        }
    };
}
