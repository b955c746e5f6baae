//! Declaring exchanges and queues. Every declaration is idempotent: declaring what
//! exists with the same arguments is a no-op on the server.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use super::error::from_lapin;
use super::names::Names;
use crate::core::Result;

/// How long an unused delay queue outlives its delay before RabbitMQ deletes it.
const DELAY_QUEUE_IDLE: Duration = Duration::from_secs(600);
/// How long an unserved request queue lives after its last use.
const RPC_QUEUE_IDLE: Duration = Duration::from_secs(3600);

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

fn millis(d: Duration) -> AMQPValue {
    AMQPValue::LongLongInt(d.as_millis().min(i64::MAX as u128) as i64)
}

/// The channels' exchange `X`, the exchange delayed messages expire into (`X.delayed`)
/// and its alternate exchange and queue (`X.unroutable`).
pub(crate) async fn declare_exchanges(ch: &Channel, exchange: &str) -> Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let unroutable = Names::unroutable(exchange);
    let op = "declare exchange";
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Direct,
        durable,
        FieldTable::default(),
    )
    .await
    .map_err(|e| from_lapin(e, op))?;
    ch.exchange_declare(
        unroutable.as_str().into(),
        ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
    )
    .await
    .map_err(|e| from_lapin(e, op))?;
    let mut delayed_args = FieldTable::default();
    delayed_args.insert("alternate-exchange".into(), text(&unroutable));
    ch.exchange_declare(
        Names::delayed_exchange(exchange).into(),
        ExchangeKind::Direct,
        durable,
        delayed_args,
    )
    .await
    .map_err(|e| from_lapin(e, op))?;
    ch.queue_declare(
        unroutable.as_str().into(),
        durable_queue(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| from_lapin(e, "declare queue"))?;
    ch.queue_bind(
        unroutable.as_str().into(),
        unroutable.as_str().into(),
        ShortString::from(""),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| from_lapin(e, "bind queue"))?;
    Ok(())
}

/// The group's queue, bound to the channel's routing key on `X` and `X.delayed`, and
/// the channel's dead-letter queue.
pub(crate) async fn declare_group(
    ch: &Channel,
    exchange: &str,
    channel: &str,
    group: &str,
) -> Result<String> {
    let queue = Names::group_queue(channel, group);
    ch.queue_declare(
        queue.as_str().into(),
        durable_queue(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| from_lapin(e, "declare queue"))?;
    for source in [exchange.to_string(), Names::delayed_exchange(exchange)] {
        ch.queue_bind(
            queue.as_str().into(),
            source.into(),
            channel.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| from_lapin(e, "bind queue"))?;
    }
    declare_dead_letters(ch, channel).await?;
    Ok(queue)
}

/// The channel's dead-letter queue `C.dlq`, and how many messages it holds.
pub(crate) async fn declare_dead_letters(ch: &Channel, channel: &str) -> Result<(String, u32)> {
    let queue = Names::dead_letters(channel);
    let declared = ch
        .queue_declare(
            queue.as_str().into(),
            durable_queue(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| from_lapin(e, "declare queue"))?;
    Ok((queue, declared.message_count()))
}

/// A queue whose messages all wait `delay`, then expire into `exchange` with
/// `routing_key`. It deletes itself once unused for longer than any message can wait
/// in it.
pub(crate) async fn declare_delay_queue(
    ch: &Channel,
    queue: &str,
    delay: Duration,
    exchange: &str,
    routing_key: &str,
) -> Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), millis(delay));
    args.insert("x-dead-letter-exchange".into(), text(exchange));
    args.insert("x-dead-letter-routing-key".into(), text(routing_key));
    args.insert("x-expires".into(), millis(delay * 2 + DELAY_QUEUE_IDLE));
    ch.queue_declare(queue.into(), durable_queue(), args)
        .await
        .map_err(|e| from_lapin(e, "declare delay queue"))?;
    Ok(())
}

/// The channel's request queue `C.rpc`, shared by its serving members, bound to the
/// routing key `C.rpc`. Requests expire on their own (per-message TTL = the caller's
/// timeout), and the queue when no one has used it for an hour.
pub(crate) async fn declare_rpc(ch: &Channel, exchange: &str, channel: &str) -> Result<String> {
    let queue = Names::rpc(channel);
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), millis(RPC_QUEUE_IDLE));
    ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .map_err(|e| from_lapin(e, "declare queue"))?;
    ch.queue_bind(
        queue.as_str().into(),
        exchange.into(),
        queue.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| from_lapin(e, "bind queue"))?;
    Ok(queue)
}
