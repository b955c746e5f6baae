//! Moves `alarm.to.log` from one broker to another by changing only the configuration,
//! with the same handler code, and shows the alarms arriving through each broker.
//!
//! ```text
//! cargo run --features redis --example switch -- --to redis
//! cargo run --features nats  --example switch -- --to nats
//! ```
//!
//! The first run uses `examples/anybroker.toml` as it is (the channel on the embedded
//! broker); the second applies the override an operator would set in the environment,
//! `ANYBROKER_CHANNELS__ALARM_TO_LOG__BROKER=<to>`, to the same file.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alarm_domain::{AlarmToLog, BrokerChannel};
use anybroker::{HandlerError, MessageContext, MessageHandler, MessageRouter, RouterConfig};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Broker (a name under [brokers] in the config) to move alarm.to.log to.
    #[arg(long, default_value = "redis")]
    to: String,
    /// Config file.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/anybroker.toml"))]
    config: String,
}

/// The one handler, unchanged between the two runs.
struct LogWriter {
    handled: Arc<AtomicUsize>,
}

impl MessageHandler<AlarmToLog> for LogWriter {
    async fn handle(&self, alarm: AlarmToLog, cx: &MessageContext) -> Result<(), HandlerError> {
        println!(
            "  [{}] via {:<8} {:?}",
            cx.channel(),
            cx.broker(),
            alarm.message
        );
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn run(config: RouterConfig, label: &str) -> Result<(), Box<dyn std::error::Error>> {
    let broker = config
        .broker_for(BrokerChannel::AlarmToLog.name())?
        .to_string();
    println!("{label}: alarm.to.log -> broker {broker:?}");
    let handled = Arc::new(AtomicUsize::new(0));
    let router = MessageRouter::builder(config)
        .handle(
            BrokerChannel::AlarmToLog,
            LogWriter {
                handled: handled.clone(),
            },
        )
        .start()
        .await?;
    for i in 1..=3 {
        let alarm = AlarmToLog {
            message: format!("alarm {i} ({label})"),
            extra: None,
        };
        router.publish(BrokerChannel::AlarmToLog, &alarm).await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while handled.load(Ordering::SeqCst) < 3 {
        if tokio::time::Instant::now() > deadline {
            router.shutdown().await?;
            return Err(format!("alarms did not arrive through {broker} within 30 s").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    router.shutdown().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.config)?;
    run(RouterConfig::from_toml_str(&text)?, "before").await?;
    let overridden = RouterConfig::from_toml_with_env(
        &text,
        [(
            "ANYBROKER_CHANNELS__ALARM_TO_LOG__BROKER".to_string(),
            args.to.clone(),
        )],
    )?;
    run(overridden, "after").await?;
    println!("same handler code, moved by configuration only");
    Ok(())
}
