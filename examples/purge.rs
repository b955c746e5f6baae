//! Deletes what anybroker stored for channels whose name starts with a prefix, on the
//! Redis, NATS and RabbitMQ servers given: the channel streams, retry/delay/dead-letter
//! keys, JetStream streams and RabbitMQ queues (listed with `rabbitmqctl`, which must
//! run on the broker's machine). `scripts/test` runs it for `test.` before the tests, so data left
//! by earlier runs does not pile up on a long-lived machine.
//!
//! ```text
//! cargo run --features redis,nats,rabbitmq --example purge -- --prefix test.
//! ```

use clap::Parser;
use futures::StreamExt;

#[derive(Parser)]
struct Args {
    /// Channel-name prefix whose data is deleted (required, so nothing is deleted by accident).
    #[arg(long)]
    prefix: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    /// Stream-name prefix of anybroker's JetStream streams.
    #[arg(long, default_value = "ANYBROKER")]
    stream_prefix: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.prefix.len() < 2 {
        return Err("--prefix must have at least 2 characters".into());
    }

    let client = redis::Client::open(args.redis.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    let mut redis_deleted = 0usize;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{}*", args.prefix))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            redis_deleted += keys.len();
            let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }

    let js = async_nats::jetstream::new(async_nats::connect(args.nats.as_str()).await?);
    let sanitized: String = args
        .prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let wanted = format!("{}_{sanitized}", args.stream_prefix);
    let names: Vec<String> = js
        .stream_names()
        .filter_map(|n| async { n.ok() })
        .collect()
        .await;
    let mut streams_deleted = 0usize;
    for name in names.into_iter().filter(|n| n.starts_with(&wanted)) {
        js.delete_stream(&name).await?;
        streams_deleted += 1;
    }
    let queues_deleted = purge_rabbitmq(&args.amqp, &args.prefix).await?;
    println!(
        "purged prefix {:?}: {redis_deleted} Redis keys, {streams_deleted} JetStream streams, {queues_deleted} RabbitMQ queues",
        args.prefix
    );
    Ok(())
}

/// Deletes the RabbitMQ queues whose name starts with `prefix`. AMQP cannot list
/// queues, so `rabbitmqctl` does.
async fn purge_rabbitmq(url: &str, prefix: &str) -> Result<usize, Box<dyn std::error::Error>> {
    let listing = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name"])
        .output()?;
    if !listing.status.success() {
        return Err(format!(
            "rabbitmqctl list_queues failed: {}",
            String::from_utf8_lossy(&listing.stderr)
        )
        .into());
    }
    let names: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect();
    let connection =
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    for name in &names {
        channel
            .queue_delete(
                name.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await?;
    }
    connection.close(200, "purged".into()).await?;
    Ok(names.len())
}
