//! Throughput and latency per broker, anybroker next to the raw client crate doing the
//! same work with the same guarantees, printed as one table.
//!
//! ```text
//! cargo bench --bench throughput --features redis                  # 100,000 messages, 5 rounds
//! cargo bench --bench throughput --features redis -- --messages 20000 --rounds 3
//! ```
//!
//! Publish: `window` publishes in flight at once (each awaited until the broker
//! accepted it), no consumer running. End to end: the same publishing while one
//! consumer (prefetch = window) decodes each AlarmToLog and acknowledges it; from the
//! first publish to the last message handled. Latency: publish time (carried in the
//! message) to handling. Rounds alternate anybroker and raw; each figure is the median,
//! and a ratio is the median of the per-round pairs' ratios (with their range).

mod anybroker_runs;
#[path = "../shared/callgrind.rs"]
mod callgrind;
#[cfg(feature = "kafka")]
mod raw_kafka;
#[cfg(feature = "nats")]
mod raw_nats;
#[cfg(feature = "rabbitmq")]
mod raw_rabbitmq;
#[cfg(feature = "redis")]
mod raw_redis;

use std::time::Duration;

use clap::Parser;

#[derive(Parser, Clone)]
pub struct Args {
    /// Messages per round.
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Rounds; each figure is the median.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Publishes in flight at once, and the consumer's prefetch.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Only these rows (memory, redis, rabbitmq, nats-js, nats, kafka); default all.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Only this client's rounds (anybroker or raw), e.g. to count instructions of one
    /// side under `valgrind --tool=callgrind`; default both.
    #[arg(long)]
    pub client: Option<String>,
    /// Record metrics (`metrics`: a test recorder) or trace every message (`traces`:
    /// an OpenTelemetry layer whose spans go nowhere), or both, to count what the
    /// telemetry features cost. Built with `--features opentelemetry,metrics`.
    #[cfg(all(feature = "opentelemetry", feature = "metrics"))]
    #[arg(long, value_delimiter = ',')]
    pub telemetry: Vec<String>,
    /// Consume the channel while it moves to the row's broker from an idle one
    /// (`memory`, `redis` or `nats`): what consuming from two brokers costs.
    #[arg(long)]
    pub moving_from: Option<String>,
    /// Instead of timing: instructions per message of each wanted row's clients, each
    /// round run in a child under callgrind at these two lengths (the difference
    /// divided by the difference in messages), e.g. `--instructions 2000,4000`.
    #[arg(long, value_delimiter = ',')]
    pub instructions: Vec<usize>,
    /// Publish in batches of `window`: anybroker with `publish_batch`, raw Redis one
    /// pipeline of XADDs per batch (the other raw clients keep `window` in flight).
    #[arg(long)]
    pub batch: bool,
    /// Accepted for `cargo bench` compatibility.
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// The rows this build has, with the raw client each is measured against.
const BUILT_ROWS: [(&str, Option<&str>, bool); 6] = [
    ("memory", None, true),
    ("redis", Some("redis-rs"), cfg!(feature = "redis")),
    ("rabbitmq", Some("lapin"), cfg!(feature = "rabbitmq")),
    ("nats-js", Some("async-nats"), cfg!(feature = "nats")),
    ("nats", Some("async-nats"), cfg!(feature = "nats")),
    ("kafka", Some("rdkafka"), cfg!(feature = "kafka")),
];

/// Instructions of one round of `row` by `client` over `n` messages, counted by
/// callgrind in a child process (the whole process; the server is another process).
fn instructions_of(args: &Args, row: &str, client: &str, n: usize) -> f64 {
    let (n_text, window) = (n.to_string(), args.window.to_string());
    let child = [
        "--only",
        row,
        "--client",
        client,
        "--rounds",
        "1",
        "--messages",
        &n_text,
        "--window",
        &window,
    ];
    callgrind::run_counted(&child, None, &format!("{row} {client} ({n})")).1
}

/// `--instructions`: per message, anybroker next to the raw client, from the difference
/// between two run lengths (what is paid once per process is left out).
fn print_instructions(args: &Args) {
    let [short, long] = args.instructions[..] else {
        panic!("--instructions: two run lengths, e.g. 2000,4000");
    };
    assert!(short < long, "--instructions: the shorter length first");
    println!(
        "instructions per message (published twice, handled once), window {}, from {short} and {long} messages",
        args.window
    );
    println!(
        "{:<8} {:>12} {:>12} {:>7}  raw client",
        "broker", "anybroker", "raw", "ratio"
    );
    let per_message = |row: &str, client: &str| {
        let a = instructions_of(args, row, client, short);
        let b = instructions_of(args, row, client, long);
        (b - a) / (long - short) as f64
    };
    for (row, raw_client, built) in BUILT_ROWS {
        if !built || !args.wants(row) {
            continue;
        }
        let ours = per_message(row, "anybroker");
        match raw_client {
            Some(name) => {
                let raw = per_message(row, "raw");
                println!(
                    "{row:<8} {ours:>12.0} {raw:>12.0} {:>6.2}x  {name}",
                    ours / raw
                );
            }
            None => println!("{row:<8} {ours:>12.0} {:>12} {:>7}", "", ""),
        }
    }
}

/// Installs what `--telemetry` asks for.
#[cfg(all(feature = "opentelemetry", feature = "metrics"))]
fn install_telemetry(what: &[String]) {
    use opentelemetry::trace::TracerProvider;
    use tracing_subscriber::layer::SubscriberExt;
    if what.iter().any(|w| w == "traces") {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("bench"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .unwrap();
    }
    if what.iter().any(|w| w == "metrics") {
        metrics_util::debugging::DebuggingRecorder::new()
            .install()
            .unwrap();
    }
}

impl Args {
    fn wants(&self, row: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == row)
    }
    fn runs(&self, client: &str) -> bool {
        self.client.as_deref().is_none_or(|c| c == client)
    }
}

/// A fresh channel name, of one shape for both clients: a longer subject or key costs
/// every message a few bytes to write, route and parse.
pub fn fresh_channel_name() -> String {
    format!("bench.alarm.to.log.{}", uuid::Uuid::new_v4().simple())
}

/// One measured round.
#[derive(Default)]
pub struct Figures {
    pub publish: f64,
    pub end_to_end: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// This process' CPU time (user + system) over the round, per message handled.
    pub cpu_per_message: Duration,
}

/// CPU time this process has used so far, all threads, user and system.
fn process_cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF cannot fail.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Runs one round and charges it the CPU time it used: each message is published
/// twice (publish-only, then end to end) and handled once.
async fn measured(args: &Args, round: impl std::future::Future<Output = Figures>) -> Figures {
    let before = process_cpu_time();
    let mut figures = round.await;
    figures.cpu_per_message = (process_cpu_time() - before) / args.messages as u32;
    figures
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn summarize(rounds: &[Figures]) -> Figures {
    Figures {
        publish: median(rounds.iter().map(|r| r.publish).collect()),
        end_to_end: median(rounds.iter().map(|r| r.end_to_end).collect()),
        p50: Duration::from_secs_f64(median(rounds.iter().map(|r| r.p50.as_secs_f64()).collect())),
        p99: Duration::from_secs_f64(median(rounds.iter().map(|r| r.p99.as_secs_f64()).collect())),
        cpu_per_message: Duration::from_secs_f64(median(
            rounds
                .iter()
                .map(|r| r.cpu_per_message.as_secs_f64())
                .collect(),
        )),
    }
}

fn row(broker: &str, client: &str, f: &Figures) {
    println!(
        "{:<8} {:<10} {:>14.0} {:>12.0} {:>9.2}ms {:>9.2}ms {:>10.1}",
        broker,
        client,
        f.publish,
        f.end_to_end,
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3,
        f.cpu_per_message.as_secs_f64() * 1e6
    );
}

#[allow(dead_code)]
fn side_by_side(broker: &str, raw_client: &str, ours: &[Figures], raw: &[Figures]) {
    if !ours.is_empty() {
        row(broker, "anybroker", &summarize(ours));
    }
    if !raw.is_empty() {
        row(broker, raw_client, &summarize(raw));
    }
    if ours.is_empty() || raw.is_empty() {
        return;
    }
    // Each round of ours ran right next to one of raw's: the median of those pairs'
    // ratios cancels the machine's drift better than a ratio of two medians.
    let paired = |figure: fn(&Figures) -> f64| -> (f64, f64, f64) {
        let ratios: Vec<f64> = ours
            .iter()
            .zip(raw)
            .map(|(o, r)| figure(o) / figure(r))
            .collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        (median(ratios), lo, hi)
    };
    let (publish, p_lo, p_hi) = paired(|f| f.publish);
    let (e2e, e_lo, e_hi) = paired(|f| f.end_to_end);
    // Inverted so that, like the rest, above 1 means anybroker does better.
    let (cpu, c_lo, c_hi) = paired(|f| 1.0 / f.cpu_per_message.as_secs_f64());
    println!(
        "{:<8} {:<10} {:>13.2}x {:>11.2}x {:>23.2}x   per-round pairs: publish {p_lo:.2}-{p_hi:.2}x, e2e {e_lo:.2}-{e_hi:.2}x, cpu {c_lo:.2}-{c_hi:.2}x",
        broker, "ratio", publish, e2e, cpu
    );
}

/// Runs the rounds, ours and raw back to back, swapping which goes first each round so
/// neither always runs on the other's leftovers (a server still compacting, say).
#[allow(dead_code)] // unused when no broker feature is on
async fn paired_rounds<O, R>(
    args: &Args,
    mut ours: impl FnMut() -> O,
    mut raw: impl FnMut() -> R,
) -> (Vec<Figures>, Vec<Figures>)
where
    O: std::future::Future<Output = Figures>,
    R: std::future::Future<Output = Figures>,
{
    let (mut our_rounds, mut raw_rounds) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let ours_first = round % 2 == 0;
        if ours_first && args.runs("anybroker") {
            our_rounds.push(measured(args, ours()).await);
        }
        if args.runs("raw") {
            raw_rounds.push(measured(args, raw()).await);
        }
        if !ours_first && args.runs("anybroker") {
            our_rounds.push(measured(args, ours()).await);
        }
    }
    (our_rounds, raw_rounds)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    if !args.instructions.is_empty() {
        print_instructions(&args);
        return;
    }
    #[cfg(all(feature = "opentelemetry", feature = "metrics"))]
    install_telemetry(&args.telemetry);
    let sample = serde_json::to_vec(&alarm_domain::sample_alarm_to_log(0)).unwrap();
    println!(
        "{} AlarmToLog messages ({} bytes JSON), window {}, median of {} rounds",
        args.messages,
        sample.len(),
        args.window,
        args.rounds
    );
    println!(
        "{:<8} {:<10} {:>14} {:>12} {:>11} {:>11} {:>10}",
        "broker", "client", "publish msg/s", "e2e msg/s", "p50", "p99", "cpu us/msg"
    );

    if args.wants("memory") && args.runs("anybroker") {
        let mut memory = Vec::new();
        for _ in 0..args.rounds {
            memory
                .push(measured(&args, anybroker_runs::round("kind = \"memory\"", &args, 1)).await);
        }
        row("memory", "anybroker", &summarize(&memory));
    }

    #[cfg(feature = "redis")]
    if args.wants("redis") {
        let table = "kind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"";
        let (ours, raw) = paired_rounds(
            &args,
            || async {
                let figures = anybroker_runs::round(table, &args, args.window).await;
                raw_redis::delete_bench_keys("redis://127.0.0.1:6379").await;
                figures
            },
            || raw_redis::round("redis://127.0.0.1:6379", &args),
        )
        .await;
        side_by_side("redis", "redis-rs", &ours, &raw);
    }
    #[cfg(not(feature = "redis"))]
    println!("redis    not built (run with --features redis)");

    #[cfg(feature = "rabbitmq")]
    if args.wants("rabbitmq") {
        const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
        let table = format!("kind = \"rabbitmq\"\nurl = \"{URL}\"");
        let (ours, raw) = paired_rounds(
            &args,
            || async {
                let figures = anybroker_runs::round(&table, &args, args.window).await;
                raw_rabbitmq::delete_bench_queues(URL).await;
                figures
            },
            || raw_rabbitmq::round(URL, &args),
        )
        .await;
        side_by_side("rabbitmq", "lapin", &ours, &raw);
    }
    #[cfg(not(feature = "rabbitmq"))]
    println!("rabbitmq not built (run with --features rabbitmq)");

    #[cfg(feature = "nats")]
    if args.wants("nats-js") {
        let table = "kind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"";
        let (ours, raw) = paired_rounds(
            &args,
            || async {
                let figures = anybroker_runs::round(table, &args, args.window).await;
                raw_nats::delete_bench_streams("nats://127.0.0.1:4222").await;
                figures
            },
            || raw_nats::round("nats://127.0.0.1:4222", &args),
        )
        .await;
        side_by_side("nats-js", "async-nats", &ours, &raw);
    }
    #[cfg(feature = "nats")]
    if args.wants("nats") {
        let table = "kind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nmode = \"core\"";
        let (ours, raw) = paired_rounds(
            &args,
            || anybroker_runs::round(table, &args, 1),
            || raw_nats::core_round("nats://127.0.0.1:4222", &args),
        )
        .await;
        side_by_side("nats", "async-nats", &ours, &raw);
    }
    #[cfg(not(feature = "nats"))]
    println!("nats     not built (run with --features nats)");
    #[cfg(feature = "kafka")]
    if args.wants("kafka") {
        // tansu (CI's Kafka-protocol broker) answers a fetch only after fetch.wait.max.ms,
        // and a group join only after half the session timeout.
        let table = "kind = \"kafka\"\nbootstrap_servers = \"127.0.0.1:9092\"\n\
                     consumer_properties = { \"fetch.wait.max.ms\" = \"10\", \"session.timeout.ms\" = \"6000\" }";
        let (ours, raw) = paired_rounds(
            &args,
            || anybroker_runs::round(table, &args, args.window),
            || raw_kafka::round("127.0.0.1:9092", &args),
        )
        .await;
        side_by_side("kafka", "rdkafka", &ours, &raw);
    }
    #[cfg(not(feature = "kafka"))]
    println!("kafka    not built (run with --features kafka)");
}
