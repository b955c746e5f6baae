//! Metrics for Prometheus, spans on the console, and one trace from a publish to its
//! handling (through a retry), on any configured broker:
//!
//! ```text
//! cargo run --example observability --features opentelemetry,metrics
//! cargo run --example observability --features redis,opentelemetry,metrics -- --config examples/redis.toml
//! cargo run --example observability --features opentelemetry,metrics -- --serve   # then curl 127.0.0.1:9464/metrics
//! ```
//!
//! It publishes a few orders inside a `checkout` span; the handler fails the first
//! attempt of one of them. Each handling prints the trace id it runs in: the checkout's,
//! carried in the message's `traceparent` header. Then it reads its own `/metrics` page
//! and prints anybroker's series, and the router's health.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anybroker::{
    handler_fn, Channel, HandlerError, HandlerOptions, MessageContext, MessageRouter, RetryPolicy,
    RouterConfig,
};
use clap::Parser;
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Parser)]
struct Args {
    /// A config file whose default broker carries the example's channel; the embedded
    /// broker if none.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Where the Prometheus page is served.
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: SocketAddr,
    /// Keep serving the page after the run (stop with Ctrl-C).
    #[arg(long)]
    serve: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Order {
    id: u64,
}

const ORDERS: Channel<Order> = Channel::new("example.observability.orders");

/// The trace id of the current span, as a W3C trace id.
fn current_trace_id() -> String {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id()
        .to_string()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // Traces: W3C trace context in the messages' headers; spans to an OpenTelemetry
    // tracer (add your collector's exporter to the provider) and to the console.
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("observability")))
        .with(
            tracing_subscriber::fmt::layer()
                .with_span_events(FmtSpan::CLOSE)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
        )
        .with(tracing_subscriber::EnvFilter::new("info"))
        .init();
    // Metrics: installed before the router starts, which registers its series.
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(args.listen)
        .install()?;

    let config = match &args.config {
        Some(path) => RouterConfig::load(path)?,
        None => RouterConfig::from_toml_str(
            "default_broker = \"memory\"\n[brokers.memory]\nkind = \"memory\"",
        )?,
    };
    let failed_once = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(tokio::sync::Semaphore::new(0));
    let router = MessageRouter::builder(config)
        .handle_with(
            ORDERS,
            {
                let (failed_once, handled) = (failed_once.clone(), handled.clone());
                handler_fn(move |order: Order, cx: MessageContext| {
                    let (failed_once, handled) = (failed_once.clone(), handled.clone());
                    async move {
                        tracing::info!(
                            order = order.id,
                            attempt = cx.attempt(),
                            trace_id = %current_trace_id(),
                            "handling"
                        );
                        if order.id == 2 && !failed_once.swap(true, Ordering::SeqCst) {
                            return Err(HandlerError::retryable("payment gateway busy"));
                        }
                        handled.add_permits(1);
                        Ok(())
                    }
                })
            },
            HandlerOptions::new().retry(RetryPolicy::new(3).initial(Duration::from_millis(200))),
        )
        .start()
        .await?;

    let checkout = tracing::info_span!("checkout");
    async {
        tracing::info!(trace_id = %current_trace_id(), "publishing 3 orders");
        for id in 1..=3 {
            router.publish(ORDERS, &Order { id }).await?;
        }
        Ok::<_, anybroker::Error>(())
    }
    .instrument(checkout)
    .await?;
    tokio::time::timeout(Duration::from_secs(30), handled.acquire_many(3))
        .await??
        .forget();

    println!("\nanybroker's series on http://{}/metrics:", args.listen);
    for line in scrape(args.listen).await?.lines() {
        if line.starts_with("anybroker_") && !line.contains("_bucket") {
            println!("  {line}");
        }
    }
    println!("\nhealth:");
    for broker in router.health().await.brokers {
        println!(
            "  {} ({}): {:?}, {} consumers, last error {:?}",
            broker.name, broker.kind, broker.connection, broker.consumers, broker.last_error
        );
    }
    if args.serve {
        println!("\nserving http://{}/metrics until Ctrl-C", args.listen);
        tokio::signal::ctrl_c().await?;
    }
    router.shutdown().await?;
    Ok(())
}

/// The metrics page, read the way Prometheus reads it (HTTP GET).
async fn scrape(at: SocketAddr) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(at).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut page = String::new();
    stream.read_to_string(&mut page).await?;
    Ok(page)
}
