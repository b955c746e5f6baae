//! Moves `alarm.to.log` from one broker to another while it runs, as a rolling deploy
//! does: an instance on the old config and one on the moving config (`moving_from`)
//! side by side, both publishing and handling; the old one stops midway. The moving one
//! handles what is left on the old broker and reports it drained, and an instance on the
//! final config finds nothing left behind.
//!
//! ```text
//! cargo run --features redis,nats --example move -- --from nats --to redis
//! ```
//!
//! The three configs are `examples/anybroker.toml` with the overrides an operator would
//! set in the environment, phase by phase:
//! `ANYBROKER_CHANNELS__ALARM_TO_LOG__BROKER=<from>`, then `…__BROKER=<to>` with
//! `…__MOVING_FROM=<from>`, then `…__BROKER=<to>` alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alarm_domain::{AlarmToLog, BrokerChannel};
use anybroker::{
    Channel, HandlerError, MemoryBroker, MessageContext, MessageHandler, MessageRouter,
    RouterConfig,
};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Broker (a name under [brokers] in the config) alarm.to.log moves away from.
    #[arg(long, default_value = "nats")]
    from: String,
    /// Broker it moves to.
    #[arg(long, default_value = "redis")]
    to: String,
    /// Alarms published during the move, half by each instance.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Config file.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/anybroker.toml"))]
    config: String,
}

const CHANNEL: Channel<AlarmToLog> = BrokerChannel::AlarmToLog;
const GROUP: &str = "default";
const WITHIN: Duration = Duration::from_secs(60);

/// Every handling of every alarm, by message id: the broker it came through.
#[derive(Clone, Default)]
struct Handlings(Arc<Mutex<HashMap<String, Vec<String>>>>);

impl MessageHandler<AlarmToLog> for Handlings {
    async fn handle(&self, _: AlarmToLog, cx: &MessageContext) -> Result<(), HandlerError> {
        let mut all = self.0.lock().unwrap();
        all.entry(cx.id().to_string())
            .or_default()
            .push(cx.broker().to_string());
        Ok(())
    }
}

impl Handlings {
    fn distinct(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// The demo's config with the channel's table overridden as in the environment.
fn config(text: &str, overrides: &[(&str, &str)]) -> Result<RouterConfig, anybroker::Error> {
    RouterConfig::from_toml_with_env(
        text,
        overrides.iter().map(|(key, value)| {
            (
                format!("ANYBROKER_CHANNELS__ALARM_TO_LOG__{key}"),
                value.to_string(),
            )
        }),
    )
}

/// Waits up to [`WITHIN`] for `done`, polling.
async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !done().await {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{what}: not within {WITHIN:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.config)?;
    let old_config = config(&text, &[("BROKER", &args.from)])?;
    let moving_config = config(&text, &[("BROKER", &args.to), ("MOVING_FROM", &args.from)])?;
    let final_config = config(&text, &[("BROKER", &args.to)])?;
    // One embedded broker for the three instances, should one side be `memory`.
    let memory = MemoryBroker::default();
    let handlings = Handlings::default();
    let instance = |config: RouterConfig| {
        MessageRouter::builder(config)
            .with_broker("memory", memory.clone())
            .handle(CHANNEL, handlings.clone())
            .start()
    };

    println!("phase 1: instances on the old config and on the moving config, side by side");
    let old = instance(old_config).await?;
    let moving = instance(moving_config).await?;
    for i in 0..args.messages {
        // The old instance stops midway, as a rolling deploy replaces it.
        let publisher = if i % 2 == 0 && i < args.messages / 2 {
            &old
        } else {
            &moving
        };
        let alarm = AlarmToLog {
            message: format!("alarm {i}"),
            extra: None,
        };
        publisher.publish(CHANNEL, &alarm).await?;
        if i + 1 == args.messages / 2 {
            old.shutdown().await?;
            println!("  the old instance stopped after {} alarms", i + 1);
        }
    }
    wait_for("every alarm handled", async || {
        handlings.distinct() == args.messages
    })
    .await?;

    println!("phase 2: wait until {:?} is drained", args.from);
    wait_for("the old broker drained", async || {
        moving
            .move_status(CHANNEL, GROUP)
            .await
            .is_ok_and(|s| s.drained)
    })
    .await?;
    let status = moving.move_status(CHANNEL, GROUP).await?;
    let routers = match status.old_config_routers {
        Some(n) => n.to_string(),
        None => "unknown".to_string(),
    };
    println!(
        "  move_status: {} -> {}, group {:?}: {} waiting, drained = {}, routers on the old config: {routers}",
        status.from, status.to, status.group, status.old.waiting, status.drained
    );
    moving.shutdown().await?;

    println!("phase 3: the final config, moving_from dropped");
    let moved = instance(final_config).await?;
    let left = moved.leftovers().await?;
    moved.shutdown().await?;
    if !left.is_empty() {
        return Err(format!("messages left behind: {left:?}").into());
    }
    println!("  nothing left on {:?}", args.from);

    let all = handlings.0.lock().unwrap();
    let via = |broker: &str| all.values().filter(|b| b[0] == broker).count();
    let twice = all.values().filter(|b| b.len() > 1).count();
    println!(
        "handled {} alarms: {} via {}, {} via {}, {twice} handled twice",
        all.len(),
        via(&args.from),
        args.from,
        via(&args.to),
        args.to
    );
    if all.len() != args.messages || twice != 0 {
        return Err("an alarm was lost or handled twice".into());
    }
    Ok(())
}
