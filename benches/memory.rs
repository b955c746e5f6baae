//! Resident memory of the embedded broker end to end: it must stay flat (within 20%)
//! between 100,000 and 1,000,000 messages, since the in-flight window is bounded.
//!
//! ```text
//! cargo bench --bench memory                         # 100k and 1M
//! cargo bench --bench memory -- --sizes 100000,2000000
//! ```
//!
//! Each size runs five times (the median counts), each in a fresh child process (this
//! binary with `--child N`), which publishes N AlarmToLog messages through the router
//! with a bounded number of publishes in flight while one handler consumes them, and
//! reports its peak resident set (VmHWM from /proc/self/status) after the last message
//! was handled.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alarm_domain::{sample_alarm_to_log, BrokerChannel};
use anybroker::{handler_fn, MessageRouter, RouterConfig};
use clap::Parser;
use futures::StreamExt;

#[derive(Parser)]
struct Args {
    /// Message counts to compare; the first is the baseline.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    sizes: Vec<usize>,
    /// Publishes in flight at once.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Runs per size; the median peak counts.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Largest allowed growth of peak resident memory over the baseline.
    #[arg(long, default_value_t = 1.2)]
    max_growth: f64,
    /// The embedded broker's `max_backlog`; default: the broker's own default.
    #[arg(long)]
    max_backlog: Option<usize>,
    /// Internal: run one size in this process and print its figures.
    #[arg(long, hide = true)]
    child: Option<usize>,
    /// Accepted for `cargo bench` compatibility.
    #[arg(long, hide = true)]
    bench: bool,
}

/// A field of /proc/self/status in KiB, e.g. `VmHWM`.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/self/status"))
}

async fn child(n: usize, window: usize, max_backlog: Option<usize>) {
    let mut toml = "default_broker = \"memory\"\n[brokers.memory]\nkind = \"memory\"\n".to_string();
    if let Some(max) = max_backlog {
        toml.push_str(&format!("max_backlog = {max}\n"));
    }
    let config = RouterConfig::from_toml_str(&toml).expect("config");
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let router = MessageRouter::builder(config)
        .handle(
            BrokerChannel::AlarmToLog,
            handler_fn(move |_alarm, _cx| {
                counter.fetch_add(1, Ordering::Relaxed);
                async { Ok(()) }
            }),
        )
        .start()
        .await
        .expect("start");
    let start = Instant::now();
    // Messages are made as they are published, so the workload itself holds none.
    futures::stream::iter(0..n)
        .map(|i| {
            let router = &router;
            async move {
                router
                    .publish(BrokerChannel::AlarmToLog, &sample_alarm_to_log(i))
                    .await
            }
        })
        .buffer_unordered(window)
        .for_each(|r| {
            r.expect("publish");
            async {}
        })
        .await;
    while handled.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    router.shutdown().await.expect("shutdown");
    println!(
        "{n} {} {} {:.0}",
        status_kib("VmHWM"),
        status_kib("VmRSS"),
        n as f64 / elapsed.as_secs_f64()
    );
}

fn main() {
    let args = Args::parse();
    if let Some(n) = args.child {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(child(n, args.window, args.max_backlog));
        return;
    }
    println!(
        "embedded broker end to end, window {}, peak resident memory (median of {} runs)",
        args.window, args.runs
    );
    println!(
        "{:>10} {:>12} {:>12} {:>10} {:>8}",
        "messages", "peak RSS", "final RSS", "msg/s", "growth"
    );
    let me = std::env::current_exe().expect("current exe");
    let mut baseline = None;
    let mut worst: f64 = 0.0;
    for n in &args.sizes {
        let mut child = std::process::Command::new(&me);
        child.args([
            "--child",
            &n.to_string(),
            "--window",
            &args.window.to_string(),
        ]);
        if let Some(max) = args.max_backlog {
            child.args(["--max-backlog", &max.to_string()]);
        }
        // The process's fixed part (runtime, allocator arenas) varies by about a MiB
        // from one start to the next: the median of several runs per size.
        let mut runs: Vec<[f64; 3]> = (0..args.runs.max(1))
            .map(|_| {
                let out = child.output().expect("run child");
                assert!(out.status.success(), "child for {n} failed: {out:?}");
                let line = String::from_utf8_lossy(&out.stdout);
                let f: Vec<f64> = line
                    .split_whitespace()
                    .map(|v| v.parse().unwrap())
                    .collect();
                [f[1], f[2], f[3]]
            })
            .collect();
        runs.sort_by(|a, b| a[0].total_cmp(&b[0]));
        let [peak, last, rate] = runs[runs.len() / 2];
        let growth = peak / *baseline.get_or_insert(peak);
        worst = worst.max(growth);
        println!(
            "{:>10} {:>9.1} MiB {:>8.1} MiB {:>10.0} {:>7.2}x",
            n,
            peak / 1024.0,
            last / 1024.0,
            rate,
            growth
        );
    }
    let verdict = if worst <= args.max_growth {
        "flat"
    } else {
        "NOT flat"
    };
    println!(
        "{verdict}: largest peak is {worst:.2}x the baseline's (allowed {:.2}x)",
        args.max_growth
    );
    if worst > args.max_growth {
        std::process::exit(1);
    }
}
