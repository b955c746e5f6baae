//! Runs the same alarm workload through every broker of a config, one after another,
//! and prints what each one costs and guarantees: publish and end-to-end throughput,
//! latency, delivered / duplicated / lost counts and the mode's declared guarantees; a
//! chart and optionally JSON.
//!
//! ```text
//! cargo run --release --features redis,nats,rabbitmq,kafka --example compare
//! cargo run --release --example compare -- --messages 100000 --chart compare.svg --json compare.json
//! ```
//!
//! Every broker under `[brokers]` of the config (default: `examples/anybroker.toml`:
//! memory plus the loopback Redis, RabbitMQ, NATS and Kafka) gets both alarm channels
//! routed to it by configuration (the `ANYBROKER_CHANNELS__…__BROKER` overrides) and
//! runs through the public `MessageRouter` API only. A broker that cannot be reached,
//! or whose cargo feature is not built, is reported in its row and the others still
//! run. Exit code 0 when every broker that ran delivered everything its mode promises
//! (and, with `--require-all`, every broker ran).

mod chart;
mod report;
mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anybroker::{BrokerKind, RouterConfig};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use report::Row;
use workload::{Outcome, Workload};

#[derive(Parser)]
struct Args {
    /// Config file whose brokers are compared.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/anybroker.toml"))]
    config: PathBuf,
    /// AlarmToLog messages per broker (plus one AlarmToBot per ten).
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Publishes in flight at once.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Only these brokers (names under [brokers]); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to write the chart (SVG).
    #[arg(long, default_value = "compare.svg")]
    chart: PathBuf,
    /// Also write the figures as JSON to this file (`-` for standard output).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seconds without a delivery after which missing messages count as lost.
    #[arg(long, default_value_t = 15)]
    stall: u64,
    /// Fail (exit 1) when a broker could not run at all, e.g. in CI.
    #[arg(long)]
    require_all: bool,
}

/// Embedded first, then the networked brokers in a stable order.
fn kind_order(kind: BrokerKind) -> u8 {
    match kind {
        BrokerKind::Memory => 0,
        BrokerKind::Redis => 1,
        BrokerKind::RabbitMq => 2,
        BrokerKind::Nats => 3,
        BrokerKind::Kafka => 4,
        _ => 5,
    }
}

fn progress_bar(broker: &str, total: usize) -> ProgressBar {
    // Draws only on a terminal; piped output gets the summary lines alone.
    let bar = ProgressBar::new(total as u64).with_prefix(broker.to_string());
    bar.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:40}] {pos}/{len} handled {elapsed}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| format!("cannot read {}: {e}", args.config.display()))?;
    let base = RouterConfig::from_toml_str(&text)?;
    let mut brokers: Vec<(String, BrokerKind, String)> = base
        .brokers
        .iter()
        .filter(|(name, _)| args.only.is_empty() || args.only.contains(name))
        .map(|(name, c)| (name.clone(), c.kind(), c.mode().to_string()))
        .collect();
    brokers.sort_by_key(|(name, kind, _)| (kind_order(*kind), name.clone()));
    if brokers.is_empty() {
        return Err(format!("no broker to compare in {}", args.config.display()).into());
    }
    let workload = Workload {
        messages: args.messages,
        window: args.window,
        stall: Duration::from_secs(args.stall),
    };
    println!(
        "{} AlarmToLog + {} AlarmToBot messages per broker, {} publishes in flight, config {}",
        workload.messages,
        workload.messages / 10,
        workload.window,
        args.config.display()
    );

    let mut rows = Vec::new();
    for (name, kind, mode) in brokers {
        let outcome = if !kind.is_built() {
            Outcome::Failed(format!(
                "not built (run with --features {kind} to include it)"
            ))
        } else {
            // Routing both channels to this broker is a configuration change only.
            let overrides = ["ALARM_TO_LOG", "ALARM_TO_BOT"]
                .map(|c| (format!("ANYBROKER_CHANNELS__{c}__BROKER"), name.clone()));
            let config = RouterConfig::from_toml_with_env(&text, overrides)?;
            let bar = progress_bar(&name, workload.messages + workload.messages / 10);
            let started = Instant::now();
            let outcome = workload::run(config, &workload, &bar).await;
            bar.finish_and_clear();
            match &outcome {
                Outcome::Ran { measured, .. } => println!(
                    "{name:>9}: {} of {} handled in {:.1} s",
                    measured.delivered,
                    measured.published,
                    started.elapsed().as_secs_f64()
                ),
                Outcome::Failed(e) => println!("{name:>9}: not run: {e}"),
            }
            outcome
        };
        rows.push(Row {
            broker: name,
            kind: kind.to_string(),
            mode,
            outcome,
        });
    }

    println!();
    report::print_table(&rows);
    for path in std::iter::once(&args.chart).chain(&args.json) {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
    }
    match chart::write(&args.chart, &rows, args.messages) {
        Ok(()) => println!("chart: {}", args.chart.display()),
        Err(e) => println!("chart not written: {e}"),
    }
    if let Some(path) = &args.json {
        let json = report::to_json(&rows, args.messages, args.window);
        if path.as_os_str() == "-" {
            println!("{json}");
        } else {
            std::fs::write(path, json)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            println!("json: {}", path.display());
        }
    }

    let ran_and_failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.measured().is_some() && !r.passed())
        .map(|r| r.broker.as_str())
        .collect();
    let not_run: Vec<&str> = rows
        .iter()
        .filter(|r| r.measured().is_none())
        .map(|r| r.broker.as_str())
        .collect();
    if !ran_and_failed.is_empty() {
        eprintln!("lost or refused messages on: {}", ran_and_failed.join(", "));
        std::process::exit(1);
    }
    if args.require_all && !not_run.is_empty() {
        eprintln!("--require-all: not run on {}", not_run.join(", "));
        std::process::exit(1);
    }
    Ok(())
}
