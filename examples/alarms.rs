//! The demo: AlarmToBot on `alarm.to.bot` and AlarmToLog on `alarm.to.log`, routed per
//! a config file, with one alarm whose handler always fails so the run also shows a
//! retry and a dead letter.
//!
//! ```text
//! cargo run --example alarms                      # examples/anybroker.toml: embedded broker
//! cargo run --example alarms -- --config my.toml
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alarm_domain::{AlarmToBot, AlarmToLog, BrokerChannel};
use anybroker::{HandlerError, MessageContext, MessageHandler, MessageRouter};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Routes the alarm pair through the brokers named in a config file")]
struct Args {
    /// Config file (TOML); ANYBROKER_* environment variables override it.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/anybroker.toml"))]
    config: String,
}

struct BotHandler {
    handled: Arc<AtomicUsize>,
}

impl MessageHandler<AlarmToBot> for BotHandler {
    async fn handle(&self, alarm: AlarmToBot, cx: &MessageContext) -> Result<(), HandlerError> {
        println!(
            "[{}] via {:<8} attempt {}  bot <- {:?}",
            cx.channel(),
            cx.broker(),
            cx.attempt(),
            alarm.message
        );
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct LogHandler {
    handled: Arc<AtomicUsize>,
}

impl MessageHandler<AlarmToLog> for LogHandler {
    async fn handle(&self, alarm: AlarmToLog, cx: &MessageContext) -> Result<(), HandlerError> {
        if alarm.extra.as_deref() == Some("corrupt") {
            println!(
                "[{}] via {:<8} attempt {}  log <- {:?}: failing on purpose",
                cx.channel(),
                cx.broker(),
                cx.attempt(),
                alarm.message
            );
            return Err(HandlerError::retryable("log sink rejected a corrupt alarm"));
        }
        println!(
            "[{}] via {:<8} attempt {}  log <- {:?} ({:?})",
            cx.channel(),
            cx.broker(),
            cx.attempt(),
            alarm.message,
            alarm.extra
        );
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let bot_handled = Arc::new(AtomicUsize::new(0));
    let log_handled = Arc::new(AtomicUsize::new(0));
    let router = MessageRouter::from_config(&args.config)?
        .channels::<BrokerChannel>()
        .handle(
            BrokerChannel::AlarmToBot,
            BotHandler {
                handled: bot_handled.clone(),
            },
        )
        .handle(
            BrokerChannel::AlarmToLog,
            LogHandler {
                handled: log_handled.clone(),
            },
        )
        .start()
        .await?;
    for ch in [
        BrokerChannel::AlarmToBot.name(),
        BrokerChannel::AlarmToLog.name(),
    ] {
        println!("{ch} -> broker {:?}", router.config().broker_for(ch)?);
    }

    // Dead letters already there from an earlier run on a persistent broker.
    let dead_before = router
        .dead_letters(BrokerChannel::AlarmToLog, 100_000)
        .await?
        .len();

    for text in ["reactor temperature high", "door 3 open"] {
        router
            .publish(
                BrokerChannel::AlarmToBot,
                &AlarmToBot {
                    message: text.into(),
                },
            )
            .await?;
    }
    let logs = [
        ("reactor temperature high", Some("sensor=t1")),
        ("door 3 open", None),
        ("unreadable sensor frame", Some("corrupt")),
    ];
    for (message, extra) in logs {
        router
            .publish(
                BrokerChannel::AlarmToLog,
                &AlarmToLog {
                    message: message.into(),
                    extra: extra.map(Into::into),
                },
            )
            .await?;
    }

    // Wait (with a deadline) until everything is handled and the bad alarm is a dead letter.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let dead = router
            .dead_letters(BrokerChannel::AlarmToLog, 100_000)
            .await?;
        if bot_handled.load(Ordering::SeqCst) >= 2
            && log_handled.load(Ordering::SeqCst) >= 2
            && dead.len() > dead_before
        {
            break dead;
        }
        if tokio::time::Instant::now() > deadline {
            router.shutdown().await?;
            return Err("the demo did not finish within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for d in &dead[dead_before..] {
        println!(
            "dead letter on {}: {} after {} attempts ({}), payload {}",
            d.channel,
            d.reason.map_or("?", |r| r.as_str()),
            d.attempts,
            d.error.as_deref().unwrap_or("?"),
            String::from_utf8_lossy(d.payload())
        );
    }
    router.shutdown().await?;
    println!(
        "done: {} bot alarms, {} log alarms handled, {} dead-lettered",
        bot_handled.load(Ordering::SeqCst),
        log_handled.load(Ordering::SeqCst),
        dead.len() - dead_before
    );
    Ok(())
}
