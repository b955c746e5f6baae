//! The soak run: every backend at once (the embedded broker, Redis Streams, JetStream,
//! RabbitMQ, Kafka), a million messages in all, handlers failing and panicking at
//! random, and servers restarted along the way. Reports, per backend, what was lost,
//! handled twice and dead-lettered, and the process's peak memory. Not part of the
//! test command (it takes minutes):
//!
//! ```text
//! scripts/brokers   # tansu on 9092 for Kafka; the other servers are the run's own
//! cargo bench --bench soak --features redis,nats,rabbitmq,kafka
//! cargo bench --bench soak --features redis,nats,rabbitmq,kafka -- --messages 100000 --restarts 2
//! cargo bench --bench soak --features redis,nats,rabbitmq,kafka -- --backends nats,kafka --drain 1800
//! ```
//!
//! Redis (AOF, fsync always), NATS (JetStream on disk) and RabbitMQ are servers of the
//! run's own, on their own ports and data dirs, restarted in turn (Redis and RabbitMQ
//! shut down, NATS killed) at even steps of the slowest backend's publishing. Kafka runs on the shared
//! tansu, whose memory storage does not survive a restart: it is not restarted.
//! A publish that fails during an outage is retried by the publisher, as an
//! application does. A message counts as kept when a handler finished it or it is in
//! its channel's dead letters; the run fails if any message of any backend is not.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anybroker::{handler_fn, Channel, HandlerError, MessageContext, MessageRouter, RouterConfig};
use clap::Parser;
use futures::StreamExt;

#[path = "../tests/common/mod.rs"]
mod common;
use common::{Numbered, OwnRabbitMq, OwnServer, KAFKA_TANSU_TABLE};

#[derive(Parser)]
struct Args {
    /// Messages in all, split evenly over the backends.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// The backends to run, comma-separated (all five by default).
    #[arg(long, value_delimiter = ',', default_values_t = BACKENDS.map(String::from))]
    backends: Vec<String>,
    /// Seconds to wait, after the last publish, for every message to be kept.
    #[arg(long, default_value_t = 600)]
    drain: u64,
    /// Server restarts, spread evenly over the publishing (Redis, NATS, RabbitMQ in turn).
    #[arg(long, default_value_t = 5)]
    restarts: u64,
    /// Share of handler calls that fail (retryable).
    #[arg(long, default_value_t = 0.01)]
    fail: f64,
    /// Share of handler calls that panic.
    #[arg(long, default_value_t = 0.005)]
    panic: f64,
    /// Share of handler calls that fail for good (dead-lettered at once).
    #[arg(long, default_value_t = 0.001)]
    permanent: f64,
    /// Publishes in flight per backend.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Accepted for `cargo bench` compatibility.
    #[arg(long, hide = true)]
    bench: bool,
}

const BACKENDS: [&str; 5] = ["memory", "redis", "nats", "rabbitmq", "kafka"];
const ATTEMPTS: u32 = 3;
/// How far a backend's publishing may run ahead of the slowest one's.
const LEAD: u64 = 2_000;

/// Messages published by the backend that has published fewest.
fn slowest(tallies: &[Arc<Tally>]) -> u64 {
    tallies
        .iter()
        .map(|t| t.published.load(Ordering::Relaxed))
        .min()
        .unwrap_or(0)
}

/// What one backend's handlers did.
#[derive(Default)]
struct Tally {
    /// Handler calls that finished a message, and the distinct messages they finished.
    finished_calls: AtomicU64,
    finished: Mutex<HashSet<u64>>,
    /// Messages whose last call failed: they go to the dead letters.
    dead: Mutex<HashSet<u64>>,
    published: AtomicU64,
    publish_errors: AtomicU64,
}

impl Tally {
    fn kept(&self) -> u64 {
        let finished = self.finished.lock().unwrap();
        let dead = self.dead.lock().unwrap();
        finished.union(&dead).count() as u64
    }
}

/// A random number in [0, 1) (SplitMix64 over a shared counter: spread, not secrecy).
fn draw() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0x5EED);
    let mut z = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// The servers the run restarts.
struct Servers {
    redis: OwnServer,
    nats: OwnServer,
    rabbitmq: OwnRabbitMq,
}

impl Servers {
    /// Restarts the server of `backend` (Redis and RabbitMQ shut down, NATS killed).
    fn restart(&mut self, backend: &str) {
        match backend {
            "redis" => {
                self.redis.stop("TERM");
                self.redis.up();
            }
            "nats" => {
                self.nats.stop("KILL");
                self.nats.up();
            }
            "rabbitmq" => {
                self.rabbitmq.stop();
                self.rabbitmq.up();
            }
            other => unreachable!("{other} has no server of the run's own"),
        }
    }
}

fn config(servers: &Servers, run: &str, backends: &[String]) -> RouterConfig {
    let mut toml = format!(
        "[defaults]\nretry = {{ attempts = {ATTEMPTS}, initial = \"20ms\", max = \"200ms\", jitter = \"equal\" }}\n\
         prefetch = 128\nconsumers = 2\n\
         [brokers.memory]\nkind = \"memory\"\n\
         [brokers.redis]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\nclaim_idle = \"5s\"\nresponse_timeout = \"5s\"\n\
         [brokers.nats]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:{}\"\nack_wait = \"5s\"\n\
         [brokers.rabbitmq]\nkind = \"rabbitmq\"\nurl = \"{}\"\nreconnect_timeout = \"120s\"\n\
         [brokers.kafka]\n{}",
        servers.redis.port,
        servers.nats.port,
        servers.rabbitmq.url(),
        // tansu answers a fetch with nothing when reading takes longer than the fetch's
        // wait, and reading a deep topic does: a 10 ms wait (the tests' setting, for
        // latency) stalls the consumer for good once the topic holds tens of thousands.
        KAFKA_TANSU_TABLE.replace(
            "\"fetch.wait.max.ms\" = \"10\"",
            "\"fetch.wait.max.ms\" = \"1000\""
        ),
    );
    for backend in backends {
        toml.push_str(&format!(
            "[channels.\"soak.{run}.{backend}\"]\nbroker = \"{backend}\"\n"
        ));
    }
    RouterConfig::from_toml_str(&toml).unwrap()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::parse();
    // What the library warns about (a rebalance, a failed commit) says where a stall is.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,anybroker::consumer=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Thousands of handler panics are the point of the run: they are not printed.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"soak: panicking handler") {
            default_hook(info);
        }
    }));
    let backends = &args.backends;
    if let Some(unknown) = backends.iter().find(|b| !BACKENDS.contains(&b.as_str())) {
        eprintln!("unknown backend {unknown:?}: the backends are {BACKENDS:?}");
        std::process::exit(2);
    }
    // Restarts go to the run's own servers of the chosen backends, in turn.
    let restartable: Vec<&str> = ["redis", "nats", "rabbitmq"]
        .into_iter()
        .filter(|b| backends.iter().any(|c| c == b))
        .collect();
    let restarts = if restartable.is_empty() {
        0
    } else {
        args.restarts
    };
    let per_backend = args.messages / backends.len() as u64;
    let run = format!("{}", std::process::id());
    println!("starting the run's own Redis, NATS and RabbitMQ");
    let servers = Servers {
        redis: common::own_redis(),
        nats: common::own_nats(),
        rabbitmq: OwnRabbitMq::start(),
    };
    let channels: Vec<Channel<Numbered>> = backends
        .iter()
        .map(|b| Channel::named(format!("soak.{run}.{b}")))
        .collect();
    let tallies: Vec<Arc<Tally>> = backends.iter().map(|_| Arc::default()).collect();
    let mut builder = MessageRouter::builder(config(&servers, &run, backends));
    for (ch, tally) in channels.iter().zip(&tallies) {
        let tally = tally.clone();
        let (fail, panic, permanent) = (args.fail, args.panic, args.permanent);
        builder = builder.handle(
            *ch,
            handler_fn(move |m: Numbered, cx: MessageContext| {
                let tally = tally.clone();
                async move {
                    let roll = draw();
                    let last = cx.attempt() >= ATTEMPTS;
                    let outcome = if roll < permanent {
                        Err(HandlerError::permanent("soak: for good"))
                    } else if roll < permanent + fail {
                        Err(HandlerError::retryable("soak: not now"))
                    } else if roll < permanent + fail + panic {
                        if last {
                            tally.dead.lock().unwrap().insert(m.seq);
                        }
                        panic!("soak: panicking handler");
                    } else {
                        Ok(())
                    };
                    match &outcome {
                        Ok(()) => {
                            tally.finished_calls.fetch_add(1, Ordering::Relaxed);
                            tally.finished.lock().unwrap().insert(m.seq);
                        }
                        Err(e) if e.is_permanent() || last => {
                            tally.dead.lock().unwrap().insert(m.seq);
                        }
                        Err(_) => {}
                    }
                    outcome
                }
            }),
        );
    }
    let router = builder.start().await.unwrap();
    let started = Instant::now();
    println!(
        "publishing {per_backend} messages on each of {} backends, {} restarts",
        backends.len(),
        restarts
    );

    let publishers: Vec<_> = channels
        .iter()
        .zip(&tallies)
        .map(|(&ch, tally)| {
            let (router, tally, window) = (router.clone(), tally.clone(), args.window);
            let all = tallies.clone();
            tokio::spawn(async move {
                futures::stream::iter(0..per_backend)
                    .for_each_concurrent(window, |seq| {
                        let (router, tally, all) = (router.clone(), tally.clone(), all.clone());
                        async move {
                            // In step with the slowest backend, so every restart falls
                            // under load on all of them.
                            while seq > slowest(&all) + LEAD {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            while router.publish(ch, &Numbered { seq }).await.is_err() {
                                tally.publish_errors.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            tally.published.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                    .await;
            })
        })
        .collect();

    let servers = Arc::new(Mutex::new(servers));
    // An interrupted run stops its servers too (`process::exit` runs no destructor).
    {
        let servers = servers.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: stopping the run's servers");
                let stop = move || {
                    let mut servers = servers.lock().unwrap_or_else(|p| p.into_inner());
                    servers.redis.stop("KILL");
                    servers.nats.stop("KILL");
                    servers.rabbitmq.stop();
                };
                let _ = tokio::task::spawn_blocking(stop).await;
                std::process::exit(130);
            }
        });
    }
    let total = per_backend * backends.len() as u64;
    let progress = {
        let (tallies, backends) = (tallies.clone(), backends.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let counts: Vec<String> = backends
                    .iter()
                    .zip(&tallies)
                    .map(|(b, t)| {
                        format!("{b} {}/{}", t.kept(), t.published.load(Ordering::Relaxed))
                    })
                    .collect();
                println!(
                    "{:>6.1}s  kept/published: {}",
                    started.elapsed().as_secs_f64(),
                    counts.join(", ")
                );
            }
        })
    };
    // Steps of the slowest backend's publishing, so every restart falls under load.
    for n in 0..restarts {
        let at = per_backend * (n + 1) / (restarts + 1);
        while slowest(&tallies) < at {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let servers = servers.clone();
        let which = restartable[n as usize % restartable.len()];
        tokio::task::spawn_blocking(move || servers.lock().unwrap().restart(which))
            .await
            .unwrap();
        println!(
            "{:>6.1}s  restarted {which} (every backend {at}+ published)",
            started.elapsed().as_secs_f64()
        );
    }
    for p in publishers {
        p.await.unwrap();
    }
    println!("{:>6.1}s  all published", started.elapsed().as_secs_f64());
    let deadline = Instant::now() + Duration::from_secs(args.drain);
    while tallies.iter().any(|t| t.kept() < per_backend) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    progress.abort();

    println!(
        "\n| backend | published | finished | handled twice | dead letters | lost | publishes retried |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut lost_any = false;
    for ((backend, ch), tally) in backends.iter().zip(&channels).zip(&tallies) {
        let dead_letters = router
            .dead_letters(*ch, per_backend as usize)
            .await
            .unwrap();
        let dead_seqs: HashSet<u64> = dead_letters
            .iter()
            .filter_map(|d| d.message().ok().map(|m| m.seq))
            .collect();
        let finished = tally.finished.lock().unwrap().clone();
        let lost = (0..per_backend)
            .filter(|s| !finished.contains(s) && !dead_seqs.contains(s))
            .count();
        lost_any |= lost > 0;
        let calls = tally.finished_calls.load(Ordering::Relaxed);
        println!(
            "| {backend} | {} | {} | {} | {} | {lost} | {} |",
            tally.published.load(Ordering::Relaxed),
            finished.len(),
            calls - finished.len() as u64,
            dead_seqs.len(),
            tally.publish_errors.load(Ordering::Relaxed),
        );
    }
    println!(
        "\n{total} messages in {:.0} s; peak resident memory of the process {:.0} MiB",
        elapsed.as_secs_f64(),
        peak_rss_mib()
    );
    router.shutdown().await.unwrap();
    // The servers stop here, before any exit: `process::exit` runs no destructor.
    drop(servers);
    if lost_any {
        eprintln!("messages were lost");
        std::process::exit(1);
    }
}
