//! Throughput and latency of anybroker per backend, printed as one table.
//!
//! ```text
//! cargo bench --bench throughput                       # 200,000 messages, 5 rounds
//! cargo bench --bench throughput -- --messages 20000 --rounds 3
//! ```
//!
//! Publish: one task awaiting each `publish` of an AlarmToLog, no consumer running.
//! End to end: the same publishing while a handler (one consumer, prefetch 256)
//! counts the messages; from the first publish to the last handled message. Latency:
//! publish time (in the envelope) to handler start. Each figure is the median of the
//! rounds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use alarm_domain::{sample_alarm_to_log, AlarmToLog, BrokerChannel};
use anybroker::{handler_fn, MessageContext, MessageRouter, RouterConfig};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Messages per round.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Rounds; each figure is the median.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Accepted for `cargo bench` compatibility.
    #[arg(long, hide = true)]
    bench: bool,
}

struct Round {
    publish: f64,
    end_to_end: f64,
    p50: Duration,
    p99: Duration,
}

fn config(broker_table: &str) -> RouterConfig {
    RouterConfig::from_toml_str(&format!(
        "default_broker = \"bench\"\n[brokers.bench]\n{broker_table}\n"
    ))
    .expect("bench config")
}

async fn publish_round(broker_table: &str, n: usize, messages: &[AlarmToLog]) -> f64 {
    let router = MessageRouter::builder(config(broker_table))
        .start()
        .await
        .unwrap();
    let start = Instant::now();
    for m in messages.iter().take(n) {
        router.publish(BrokerChannel::AlarmToLog, m).await.unwrap();
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    router.shutdown().await.unwrap();
    rate
}

async fn end_to_end_round(
    broker_table: &str,
    n: usize,
    messages: &[AlarmToLog],
) -> (f64, Vec<Duration>) {
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
    let router = MessageRouter::builder(config(broker_table))
        .handle(BrokerChannel::AlarmToLog, handler)
        .start()
        .await
        .unwrap();
    let start = Instant::now();
    for m in messages.iter().take(n) {
        router.publish(BrokerChannel::AlarmToLog, m).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(300), done.notified())
        .await
        .expect("all messages handled within 300 s");
    let rate = n as f64 / start.elapsed().as_secs_f64();
    router.shutdown().await.unwrap();
    let mut l = std::mem::take(&mut *latencies.lock().unwrap());
    l.sort();
    (rate, l)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let n = args.messages;
    let messages: Vec<AlarmToLog> = (0..n).map(sample_alarm_to_log).collect();
    let backends = [("memory", "kind = \"memory\"")];
    println!(
        "anybroker throughput, {n} AlarmToLog messages ({} bytes JSON), median of {} rounds",
        serde_json::to_vec(&messages[0]).unwrap().len(),
        args.rounds
    );
    println!(
        "{:<10} {:>14} {:>14} {:>10} {:>10}",
        "broker", "publish msg/s", "e2e msg/s", "p50", "p99"
    );
    for (name, table) in backends {
        let mut rounds = Vec::new();
        for _ in 0..args.rounds {
            let publish = publish_round(table, n, &messages).await;
            let (end_to_end, lat) = end_to_end_round(table, n, &messages).await;
            rounds.push(Round {
                publish,
                end_to_end,
                p50: percentile(&lat, 0.5),
                p99: percentile(&lat, 0.99),
            });
        }
        let p50 = median(rounds.iter().map(|r| r.p50.as_secs_f64()).collect());
        let p99 = median(rounds.iter().map(|r| r.p99.as_secs_f64()).collect());
        println!(
            "{:<10} {:>14.0} {:>14.0} {:>8.1}ms {:>8.1}ms",
            name,
            median(rounds.iter().map(|r| r.publish).collect()),
            median(rounds.iter().map(|r| r.end_to_end).collect()),
            p50 * 1e3,
            p99 * 1e3
        );
    }
}
