//! Deletes what anybroker stored for channels whose name starts with a prefix, on the
//! Redis and NATS servers given: the channel streams, retry/delay/dead-letter keys and
//! JetStream streams. `scripts/test` runs it for `test.` before the tests, so data left
//! by earlier runs does not pile up on a long-lived machine.
//!
//! ```text
//! cargo run --features redis,nats --example purge -- --prefix test.
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
    println!(
        "purged prefix {:?}: {redis_deleted} Redis keys, {streams_deleted} JetStream streams",
        args.prefix
    );
    Ok(())
}
