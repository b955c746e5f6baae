//! One round through the public anybroker API.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use alarm_domain::{sample_alarm_to_log, AlarmToLog};
use anybroker::{handler_fn, Channel, MessageContext, MessageRouter, RouterConfig};
use futures::StreamExt;

use crate::{percentile, Args, Figures};

/// The bench's config; `ANYBROKER_BROKERS__BENCH__*` variables change the broker's
/// settings (e.g. `ANYBROKER_BROKERS__BENCH__CONTENT_TYPE_HEADER=false`). With
/// `--moving-from`, the channel is moving to the bench broker from an idle one.
fn router_config(broker_table: &str, channel: &str, args: &Args) -> RouterConfig {
    let window = args.window;
    let (old_broker, moving) = match args.moving_from.as_deref() {
        None => (String::new(), ""),
        Some(kind) => (
            format!("[brokers.old]\n{}\n", moving_from_table(kind)),
            "moving_from = \"old\"\n",
        ),
    };
    RouterConfig::from_toml_with_env(
        &format!(
            "default_broker = \"bench\"\n[defaults]\nretry = {{ attempts = 1 }}\n[brokers.bench]\n{broker_table}\n\
             {old_broker}[channels.\"{channel}\"]\nprefetch = {window}\n{moving}"
        ),
        std::env::vars(),
    )
    .expect("bench config")
}

/// The broker a `--moving-from` channel moves away from, on loopback.
fn moving_from_table(kind: &str) -> &'static str {
    match kind {
        "memory" => "kind = \"memory\"",
        "redis" => "kind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"",
        "nats" => "kind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"",
        other => panic!("--moving-from {other}: expected memory, redis or nats"),
    }
}

/// Waits until `n` were handled; a fire-and-forget mode may lose some, so waiting also
/// ends after 3 s without progress, and the loss is printed.
pub async fn wait_for_all(handled: &AtomicUsize, done: &tokio::sync::Notify, n: usize) -> usize {
    let mut last = 0;
    loop {
        let _ = tokio::time::timeout(Duration::from_secs(3), done.notified()).await;
        let now = handled.load(Ordering::Relaxed);
        if now >= n {
            return now;
        }
        if now == last {
            println!(
                "  ({} of {n} delivered: fire-and-forget mode lost {})",
                now,
                n - now
            );
            return now;
        }
        last = now;
    }
}

fn fresh_channel() -> Channel<AlarmToLog> {
    Channel::named(crate::fresh_channel_name())
}

async fn publish_all(
    router: &MessageRouter,
    channel: Channel<AlarmToLog>,
    messages: &[AlarmToLog],
    window: usize,
    batch: bool,
) {
    if batch && window > 1 {
        for chunk in messages.chunks(window) {
            for r in router
                .publish_batch(channel, chunk)
                .await
                .expect("publish_batch")
            {
                r.expect("publish");
            }
        }
        return;
    }
    if window <= 1 {
        for m in messages {
            router.publish(channel, m).await.expect("publish");
        }
        return;
    }
    futures::stream::iter(messages)
        .map(|m| router.publish(channel, m))
        .buffer_unordered(window)
        .for_each(|r| {
            r.expect("publish");
            async {}
        })
        .await;
}

/// Publish-only, then end to end, each on a fresh channel. `publish_window` 1 publishes
/// one message at a time (for the embedded broker, where publish completes at once and
/// a window only adds overhead).
pub async fn round(broker_table: &str, args: &Args, publish_window: usize) -> Figures {
    let n = args.messages;
    let messages: Vec<AlarmToLog> = (0..n).map(sample_alarm_to_log).collect();

    let channel = fresh_channel();
    let router = MessageRouter::builder(router_config(broker_table, channel.name(), args))
        .start()
        .await
        .unwrap();
    // One message first, untimed: the raw rounds create their stream before timing too.
    router.publish(channel, &messages[0]).await.unwrap();
    let start = Instant::now();
    publish_all(&router, channel, &messages, publish_window, args.batch).await;
    let publish = n as f64 / start.elapsed().as_secs_f64();
    router.shutdown().await.unwrap();

    let channel = fresh_channel();
    let handled = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let done = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (handled, latencies, done) = (handled.clone(), latencies.clone(), done.clone());
        handler_fn(move |_m: AlarmToLog, cx: MessageContext| {
            let latency = SystemTime::now()
                .duration_since(cx.published_at())
                .unwrap_or_default();
            latencies.lock().unwrap().push(latency);
            if handled.fetch_add(1, Ordering::Relaxed) + 1 == n {
                done.notify_one();
            }
            async { Ok(()) }
        })
    };
    let router = MessageRouter::builder(router_config(broker_table, channel.name(), args))
        .handle(channel, handler)
        .start()
        .await
        .unwrap();
    let start = Instant::now();
    publish_all(&router, channel, &messages, publish_window, args.batch).await;
    let delivered = wait_for_all(&handled, &done, n).await;
    let end_to_end = delivered as f64 / start.elapsed().as_secs_f64();
    router.shutdown().await.unwrap();
    let mut l = std::mem::take(&mut *latencies.lock().unwrap());
    l.sort();
    Figures {
        publish,
        end_to_end,
        p50: percentile(&l, 0.5),
        p99: percentile(&l, 0.99),
        ..Default::default()
    }
}
