//! What the library costs per message on the embedded broker, counted exactly:
//! instructions (callgrind) and heap allocations (a counting allocator), in the steady
//! state, and the cold start on its own. CI checks the figures against
//! `benches/cost-baseline.json`.
//!
//! ```text
//! cargo bench --bench cost --features redis,nats            # the table
//! cargo bench --bench cost --features redis,nats -- --check benches/cost-baseline.json
//! cargo bench --bench cost --features redis,nats -- --write benches/cost-baseline.json
//! ```
//!
//! The baseline holds for the build CI runs, with the throughput bench's features
//! `redis,nats` (the registry's dispatch covers the backends built in, so another set
//! of features counts other figures).
//!
//! Each scenario runs in a child process (this binary with `--child`) under
//! `valgrind --tool=callgrind`, on a single-threaded runtime (the same work gives the
//! same count). Only the measured phase is counted: callgrind collects inside
//! `measured_phase` alone (`--toggle-collect`), and the allocator counts while the
//! phase runs. A scenario runs at two lengths and the difference is divided by the
//! difference in messages, so what is paid once (starting consumers, waiting for the
//! last message) is not spread over the messages. `cold` is one message's run taken
//! whole: a router's start, one publish, its handling.

#[path = "shared/callgrind.rs"]
mod callgrind;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use alarm_domain::{sample_alarm_to_log, AlarmToLog, BrokerChannel};
use anybroker::{
    handler_fn, Channel, HandlerError, MemoryBroker, MessageContext, MessageRouter, PublishOptions,
    RouterConfig,
};
use clap::Parser;
use serde::{Deserialize, Serialize};

/// Counts allocations (and their bytes) while `COUNTING` is on.
struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            ALLOCATED_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        }
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[derive(Parser)]
struct Args {
    /// Scenarios to run; default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The two run lengths whose difference is measured.
    #[arg(long, value_delimiter = ',', default_value = "2000,4000")]
    lengths: Vec<usize>,
    /// Compare with this baseline: fail when a scenario's instructions rise more than
    /// 2% or its allocations rise at all.
    #[arg(long)]
    check: Option<String>,
    /// Write the figures to this baseline file.
    #[arg(long)]
    write: Option<String>,
    /// Internal: run one scenario with this many messages and print its counts.
    #[arg(long, hide = true, requires = "messages")]
    child: Option<String>,
    #[arg(long, hide = true)]
    messages: Option<usize>,
    /// Accepted for `cargo bench` compatibility.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The scenarios, each a measured phase over `n` messages.
const SCENARIOS: [(&str, &str); 7] = [
    (
        "publish",
        "publish one message (no consumer running; a group keeps it)",
    ),
    (
        "consume",
        "handle one message already queued: decode the AlarmToLog, acknowledge",
    ),
    (
        "consume_inline",
        "consume, decoding into a struct that holds its strings in place (no heap data)",
    ),
    ("end_to_end", "publish, then handle, one message"),
    ("keyed", "end_to_end with an ordering key (20 keys)"),
    (
        "retry",
        "end_to_end where the first attempt fails and the retry succeeds",
    ),
    (
        "cold",
        "a router's start, one publish and its handling, whole",
    ),
];

const CHANNEL: Channel<AlarmToLog> = BrokerChannel::AlarmToLog;

/// The same channel, read as an [`AlarmInline`].
const INLINE_CHANNEL: Channel<AlarmInline> = Channel::new("alarm.to.log");

/// An AlarmToLog read into a type that owns no heap data: what consuming costs apart
/// from the payload's own allocations (its two strings).
#[derive(Serialize, Deserialize)]
struct AlarmInline {
    message: InlineText,
    extra: Option<InlineText>,
}

/// Text of up to 64 bytes, held in place.
struct InlineText {
    len: u8,
    bytes: [u8; 64],
}

impl Serialize for InlineText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = std::str::from_utf8(&self.bytes[..usize::from(self.len)]);
        serializer.serialize_str(text.map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for InlineText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = InlineText;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("text of up to 64 bytes")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<InlineText, E> {
                let mut bytes = [0; 64];
                bytes
                    .get_mut(..text.len())
                    .ok_or_else(|| E::invalid_length(text.len(), &self))?
                    .copy_from_slice(text.as_bytes());
                Ok(InlineText {
                    len: text.len() as u8,
                    bytes,
                })
            }
        }
        deserializer.deserialize_str(Text)
    }
}

fn config() -> RouterConfig {
    RouterConfig::from_toml_str(
        "default_broker = \"memory\"\n\
         [defaults]\n\
         retry = { attempts = 3, initial = \"1ms\", multiplier = 1.0, max = \"1ms\" }\n\
         [brokers.memory]\nkind = \"memory\"\nmax_backlog = 0\n\
         [channels.\"alarm.to.log\"]\nprovision_groups = [\"default\"]\n",
    )
    .expect("cost config")
}

/// The embedded broker of `config`, for two routers to share: no bound on what it
/// holds, so the queue fills before the consumer starts.
fn unbounded() -> anybroker::memory::MemoryConfig {
    match &config().brokers["memory"] {
        anybroker::BrokerConfig::Memory(c) => c.clone(),
        other => panic!("expected the embedded broker, got {other:?}"),
    }
}

/// Counts every handling, and wakes the waiter once `n` succeeded.
#[derive(Clone)]
struct Handled {
    count: Arc<AtomicUsize>,
    all: Arc<tokio::sync::Notify>,
    n: usize,
}

impl Handled {
    fn new(n: usize) -> Self {
        Handled {
            count: Arc::default(),
            all: Arc::default(),
            n,
        }
    }
    fn one(&self) {
        if self.count.fetch_add(1, Ordering::Relaxed) + 1 == self.n {
            self.all.notify_one();
        }
    }
    async fn wait(&self) {
        if self.count.load(Ordering::Relaxed) < self.n {
            self.all.notified().await;
        }
    }
}

/// A handler that decodes the message (the router does), keeps it from being
/// optimised away, and counts; with `fail_first`, the first attempt fails.
fn handler<M: anybroker::Message>(
    handled: &Handled,
    fail_first: bool,
) -> impl anybroker::MessageHandler<M> {
    let handled = handled.clone();
    handler_fn(move |alarm: M, cx: MessageContext| {
        std::hint::black_box(&alarm);
        let result = if fail_first && cx.attempt() == 1 {
            Err(HandlerError::retryable("first attempt"))
        } else {
            handled.one();
            Ok(())
        };
        async move { result }
    })
}

/// Runs `phase` to completion on `rt`, counting its allocations. Callgrind collects
/// inside this function only (`--toggle-collect`); on a current-thread runtime every
/// task the phase wakes is polled within it.
#[inline(never)]
fn measured_phase<F: std::future::Future>(rt: &tokio::runtime::Runtime, phase: F) -> F::Output {
    COUNTING.store(true, Ordering::SeqCst);
    let out = rt.block_on(phase);
    COUNTING.store(false, Ordering::SeqCst);
    out
}

/// Runs scenario `name` over `n` messages and prints `allocations bytes` of its phase.
fn child(name: &str, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let messages: Vec<AlarmToLog> = (0..n).map(sample_alarm_to_log).collect();
    let keys: Vec<PublishOptions> = (0..20)
        .map(|k| PublishOptions::new().key(format!("k{k}")))
        .collect();
    let handled = Handled::new(n);
    match name {
        "publish" => {
            let router = rt
                .block_on(MessageRouter::builder(config()).start())
                .unwrap();
            measured_phase(&rt, async {
                for m in &messages {
                    router.publish(CHANNEL, m).await.unwrap();
                }
            });
            rt.block_on(router.shutdown()).unwrap();
        }
        "consume" => consume(&rt, &messages, CHANNEL, &handled),
        "consume_inline" => consume(&rt, &messages, INLINE_CHANNEL, &handled),
        "end_to_end" | "keyed" | "retry" => {
            let router = rt
                .block_on(
                    MessageRouter::builder(config())
                        .handle(CHANNEL, handler(&handled, name == "retry"))
                        .start(),
                )
                .unwrap();
            measured_phase(&rt, async {
                for (i, m) in messages.iter().enumerate() {
                    if name == "keyed" {
                        router
                            .publish_with(CHANNEL, m, keys[i % keys.len()].clone())
                            .await
                            .unwrap();
                    } else {
                        router.publish(CHANNEL, m).await.unwrap();
                    }
                }
                handled.wait().await;
            });
            rt.block_on(router.shutdown()).unwrap();
        }
        "cold" => {
            let router = measured_phase(&rt, async {
                let router = MessageRouter::builder(config())
                    .handle(CHANNEL, handler(&handled, false))
                    .start()
                    .await
                    .unwrap();
                for m in &messages {
                    router.publish(CHANNEL, m).await.unwrap();
                }
                handled.wait().await;
                router
            });
            rt.block_on(router.shutdown()).unwrap();
        }
        other => panic!("unknown scenario {other:?}"),
    }
    println!(
        "{} {}",
        ALLOCATIONS.load(Ordering::SeqCst),
        ALLOCATED_BYTES.load(Ordering::SeqCst)
    );
}

/// Queues `messages`, then measures a consumer handling them from `channel`.
fn consume<M: anybroker::Message>(
    rt: &tokio::runtime::Runtime,
    messages: &[AlarmToLog],
    channel: Channel<M>,
    handled: &Handled,
) {
    let broker = MemoryBroker::new(&unbounded());
    let publisher = rt
        .block_on(
            MessageRouter::builder(config())
                .with_broker("memory", broker.clone())
                .start(),
        )
        .unwrap();
    rt.block_on(async {
        for m in messages {
            publisher.publish(CHANNEL, m).await.unwrap();
        }
    });
    let consumer = measured_phase(rt, async {
        let consumer = MessageRouter::builder(config())
            .with_broker("memory", broker.clone())
            .handle(channel, handler(handled, false))
            .start()
            .await
            .unwrap();
        handled.wait().await;
        consumer
    });
    rt.block_on(consumer.shutdown()).unwrap();
    rt.block_on(publisher.shutdown()).unwrap();
}

/// One run's counts: instructions, allocations, bytes allocated.
type Counts = [f64; 3];

/// Runs scenario `name` over `n` messages in a child under callgrind.
fn counted_run(name: &str, n: usize) -> Counts {
    let (out, instructions) = callgrind::run_counted(
        &["--child", name, "--messages", &n.to_string()],
        Some("*measured_phase*"),
        &format!("scenario {name} ({n} messages)"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let a: Vec<f64> = stdout
        .split_whitespace()
        .map(|v| v.parse().expect("allocation counts"))
        .collect();
    [instructions, a[0], a[1]]
}

/// One scenario's figures, as the baseline keeps them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
struct Figures {
    instructions: f64,
    allocations: f64,
    bytes: f64,
}

#[derive(Serialize, Deserialize)]
struct Baseline {
    /// The day the figures were measured.
    measured: String,
    /// Per message (`cold`: per start).
    scenarios: BTreeMap<String, Figures>,
}

/// Instructions may rise by this much before the check fails.
const INSTRUCTION_SLACK: f64 = 0.02;
/// Allocations per message may rise by this much: less than one, so one more
/// allocation per message fails, while a buffer's amortized growth does not.
const ALLOCATION_SLACK: f64 = 0.25;
/// The cold start's allocations (a whole start, not per message) may rise by this
/// share, as its instructions may.
const COLD_ALLOCATION_SLACK: f64 = 0.02;

fn measure(name: &str, lengths: &[usize]) -> Figures {
    if name == "cold" {
        let [instructions, allocations, bytes] = counted_run(name, 1);
        return Figures {
            instructions,
            allocations,
            bytes,
        };
    }
    let (short, long) = (lengths[0], lengths[1]);
    let a = counted_run(name, short);
    let b = counted_run(name, long);
    let per = |i: usize| (b[i] - a[i]) / (long - short) as f64;
    Figures {
        instructions: per(0),
        allocations: per(1),
        bytes: per(2),
    }
}

fn main() {
    let args = Args::parse();
    if let Some(name) = &args.child {
        child(name, args.messages.expect("--messages"));
        return;
    }
    assert!(
        args.lengths.len() == 2 && args.lengths[0] < args.lengths[1],
        "--lengths: two run lengths, the shorter first"
    );
    let baseline: Option<Baseline> = args.check.as_ref().map(|path| {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    });
    println!(
        "embedded broker, per message (cold: per start); steady state from {} and {} messages",
        args.lengths[0], args.lengths[1]
    );
    println!(
        "{:<14} {:>13} {:>12} {:>10}  against the baseline",
        "scenario", "instructions", "allocations", "bytes"
    );
    let mut measured = BTreeMap::new();
    let mut failures = Vec::new();
    let mut legend = Vec::new();
    for (name, what) in SCENARIOS {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        let f = measure(name, &args.lengths);
        let verdict = match baseline.as_ref().map(|b| b.scenarios.get(name)) {
            None => String::new(),
            // A scenario the baseline lacks is not gated: checking fails until it is.
            Some(None) => {
                failures.push(format!(
                    "{name}: not in the baseline; write it with --write"
                ));
                "FAIL (not in the baseline)".to_string()
            }
            Some(Some(base)) => {
                let rise = f.instructions / base.instructions - 1.0;
                let mut v = format!(
                    "{:+.1}% instructions, {:+.2} allocations",
                    rise * 100.0,
                    f.allocations - base.allocations
                );
                if rise > INSTRUCTION_SLACK {
                    failures.push(format!(
                        "{name}: {:.0} instructions, baseline {:.0} (+{:.1}%, at most +{:.0}%)",
                        f.instructions,
                        base.instructions,
                        rise * 100.0,
                        INSTRUCTION_SLACK * 100.0
                    ));
                    v.push_str("  FAIL");
                }
                let allocation_slack = if name == "cold" {
                    base.allocations * COLD_ALLOCATION_SLACK
                } else {
                    ALLOCATION_SLACK
                };
                if f.allocations > base.allocations + allocation_slack {
                    failures.push(format!(
                        "{name}: {:.2} allocations, baseline {:.2}",
                        f.allocations, base.allocations
                    ));
                    v.push_str("  FAIL");
                }
                if rise < -INSTRUCTION_SLACK || f.allocations < base.allocations - allocation_slack
                {
                    v.push_str("  (lower: write the baseline anew)");
                }
                v
            }
        };
        println!(
            "{:<14} {:>13.0} {:>12.2} {:>10.0}  {verdict}",
            name, f.instructions, f.allocations, f.bytes
        );
        legend.push(format!("  {name}: {what}"));
        measured.insert(name.to_string(), f);
    }
    for line in legend {
        println!("{line}");
    }
    if let Some(path) = &args.write {
        let today = Command::new("date")
            .arg("+%Y-%m-%d")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let baseline = Baseline {
            measured: today,
            scenarios: measured,
        };
        let text = serde_json::to_string_pretty(&baseline).expect("baseline") + "\n";
        std::fs::write(path, text).unwrap_or_else(|e| panic!("{path}: {e}"));
        println!("baseline written to {path}");
    }
    if !failures.is_empty() {
        eprintln!("cost above the baseline:");
        for f in &failures {
            eprintln!("  {f}");
        }
        std::process::exit(1);
    }
}
