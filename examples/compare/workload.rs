//! One broker's run of the alarm workload through the public `MessageRouter` API.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use alarm_domain::{AlarmToBot, AlarmToLog, BrokerChannel};
use anybroker::{handler_fn, Capabilities, MessageContext, MessageRouter, RouterConfig};
use futures::StreamExt;
use indicatif::ProgressBar;

/// What the workload is asked to do.
pub struct Workload {
    /// AlarmToLog messages; one AlarmToBot is published after every ten of them.
    pub messages: usize,
    /// Publishes in flight at once.
    pub window: usize,
    /// How long delivery may make no progress before the missing ones count as lost.
    pub stall: Duration,
}

impl Workload {
    fn bots(&self) -> usize {
        self.messages / 10
    }
    fn is_bot(&self, seq: usize) -> bool {
        seq % 11 == 10 && seq < 11 * self.bots()
    }
    fn total(&self) -> usize {
        self.messages + self.bots()
    }
}

/// The figures of one broker's run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    /// Messages published (both channels).
    pub published: usize,
    /// Publishes per second, with `window` in flight.
    pub publish_per_sec: f64,
    /// Messages handled per second, from the first publish to the last message handled.
    pub end_to_end_per_sec: f64,
    /// Publish time to handling, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Slowest, milliseconds.
    pub max_ms: f64,
    /// Distinct messages of this run handled.
    pub delivered: usize,
    /// Deliveries beyond the first of a message.
    pub duplicated: usize,
    /// Published but never handled within the stall timeout.
    pub lost: usize,
    /// Messages of earlier runs still queued on the broker, handled and ignored.
    pub stale: usize,
    /// Publishes the broker refused.
    pub publish_errors: usize,
}

/// A broker's run either measured, or why it could not run.
pub enum Outcome {
    /// It ran.
    Ran {
        /// The figures.
        measured: Measured,
        /// What the mode guarantees.
        capabilities: Capabilities,
    },
    /// The router could not start on it (unreachable broker, bad config, feature off).
    Failed(String),
}

/// Counts deliveries of this run's messages by sequence number.
struct Tally {
    run: String,
    seen: Vec<AtomicU8>,
    distinct: AtomicUsize,
    duplicated: AtomicUsize,
    stale: AtomicUsize,
    latencies: Mutex<Vec<Duration>>,
}

impl Tally {
    fn record(&self, tag: &str, cx: &MessageContext, progress: &ProgressBar) {
        let seq = tag
            .strip_prefix(self.run.as_str())
            .and_then(|rest| rest.strip_prefix(" seq="))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n < self.seen.len());
        let Some(seq) = seq else {
            self.stale.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.seen[seq].swap(1, Ordering::Relaxed) == 1 {
            self.duplicated.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let latency = SystemTime::now()
            .duration_since(cx.published_at())
            .unwrap_or_default();
        self.latencies.lock().unwrap().push(latency);
        self.distinct.fetch_add(1, Ordering::Relaxed);
        progress.inc(1);
    }
}

/// The payload tag of message `seq` of `run`, parsed back by [`Tally::record`].
fn tag(run: &str, seq: usize) -> String {
    format!("{run} seq={seq}")
}

/// Runs the workload with both alarm channels routed to `broker`.
pub async fn run(config: RouterConfig, workload: &Workload, progress: &ProgressBar) -> Outcome {
    let run = format!("run={}", uuid::Uuid::new_v4().simple());
    let total = workload.total();
    let tally = Arc::new(Tally {
        run: run.clone(),
        seen: (0..total).map(|_| AtomicU8::new(0)).collect(),
        distinct: AtomicUsize::new(0),
        duplicated: AtomicUsize::new(0),
        stale: AtomicUsize::new(0),
        latencies: Mutex::new(Vec::with_capacity(total)),
    });
    let on_log = {
        let (tally, progress) = (tally.clone(), progress.clone());
        handler_fn(move |alarm: AlarmToLog, cx: MessageContext| {
            tally.record(alarm.extra.as_deref().unwrap_or(""), &cx, &progress);
            async { Ok(()) }
        })
    };
    let on_bot = {
        let (tally, progress) = (tally.clone(), progress.clone());
        handler_fn(move |alarm: AlarmToBot, cx: MessageContext| {
            tally.record(&alarm.message, &cx, &progress);
            async { Ok(()) }
        })
    };
    let starting = MessageRouter::builder(config)
        .handle(BrokerChannel::AlarmToLog, on_log)
        .handle(BrokerChannel::AlarmToBot, on_bot)
        .start();
    let router = match tokio::time::timeout(Duration::from_secs(60), starting).await {
        Ok(Ok(router)) => router,
        Ok(Err(e)) => return Outcome::Failed(e.to_string()),
        Err(_) => return Outcome::Failed("the router did not start within 60 s".into()),
    };
    let capabilities = match router.capabilities(BrokerChannel::AlarmToLog).await {
        Ok(c) => c,
        Err(e) => {
            let _ = router.shutdown().await;
            return Outcome::Failed(e.to_string());
        }
    };

    let publish_errors = AtomicUsize::new(0);
    let first_error = Mutex::new(None::<String>);
    let start = Instant::now();
    futures::stream::iter(0..total)
        .map(|seq| publish_one(&router, workload, &run, seq))
        .buffer_unordered(workload.window.max(1))
        .for_each(|result| {
            if let Err(e) = result {
                publish_errors.fetch_add(1, Ordering::Relaxed);
                first_error.lock().unwrap().get_or_insert(e.to_string());
            }
            async {}
        })
        .await;
    let publish_time = start.elapsed();
    let publish_errors = publish_errors.into_inner();
    let published = total - publish_errors;

    // Wait until every accepted message was handled, or until nothing moved for `stall`.
    let (mut last, mut last_move) = (0, Instant::now());
    loop {
        let now = tally.distinct.load(Ordering::Relaxed);
        if now >= published {
            break;
        }
        if now != last {
            (last, last_move) = (now, Instant::now());
        } else if last_move.elapsed() > workload.stall {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let handled_time = start.elapsed();
    if let Err(e) = router.shutdown().await {
        first_error.lock().unwrap().get_or_insert(e.to_string());
    }
    if let Some(e) = first_error.into_inner().unwrap() {
        progress.println(format!("  first error: {e}"));
    }

    let delivered = tally.distinct.load(Ordering::Relaxed);
    let mut latencies = std::mem::take(&mut *tally.latencies.lock().unwrap());
    latencies.sort();
    let ms = |p: f64| percentile(&latencies, p).as_secs_f64() * 1e3;
    Outcome::Ran {
        measured: Measured {
            published,
            publish_per_sec: published as f64 / publish_time.as_secs_f64(),
            end_to_end_per_sec: delivered as f64 / handled_time.as_secs_f64(),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            max_ms: ms(1.0),
            delivered,
            duplicated: tally.duplicated.load(Ordering::Relaxed),
            lost: published.saturating_sub(delivered),
            stale: tally.stale.load(Ordering::Relaxed),
            publish_errors,
        },
        capabilities,
    }
}

/// Message `seq` of the run: one in eleven is an AlarmToBot, the rest AlarmToLog.
async fn publish_one(
    router: &MessageRouter,
    workload: &Workload,
    run: &str,
    seq: usize,
) -> anybroker::Result<()> {
    if workload.is_bot(seq) {
        let alarm = AlarmToBot {
            message: tag(run, seq),
        };
        router.publish(BrokerChannel::AlarmToBot, &alarm).await
    } else {
        let alarm = AlarmToLog {
            message: format!("disk usage above 90% on node-{}", seq % 64),
            extra: Some(tag(run, seq)),
        };
        router.publish(BrokerChannel::AlarmToLog, &alarm).await
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
