//! Declaring exchanges and queues. Every declaration is idempotent: declaring what
//! exists with the same arguments is a no-op on the server.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use super::error::from_lapin;
use super::names::Names;
use crate::core::Result;

/// How long an unused delay queue outlives its delay before RabbitMQ deletes it.
const DELAY_QUEUE_IDLE: Duration = Duration::from_secs(600);
/// How long an unserved request queue lives after its last use.
const RPC_QUEUE_IDLE: Duration = Duration::from_secs(3600);
/// How long a presence queue no router consumes is kept.
const PRESENCE_QUEUE_IDLE: Duration = Duration::from_secs(60);

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

/// The channels' exchange `X`, the exchange delayed messages expire into (`X.delayed`),
/// and the alternate exchange of both with its queue (`X.unroutable`), which parks what
/// no queue takes. Declared on a channel of their own: a refused declaration closes
/// the channel it was made on. True when `X` surely has that alternate exchange (it
/// was declared with it), so a message published to `X` never comes back unroutable.
pub(crate) async fn declare_exchanges(
    connection: &Connection,
    exchange: &str,
    park_unroutable: bool,
) -> Result<bool> {
    let ch = connection
        .create_channel()
        .await
        .map_err(|e| from_lapin(e, "open channel"))?;
    let declared = declare_exchanges_on(&ch, exchange, park_unroutable).await;
    let _ = ch.close(200, "declared".into()).await;
    declared
}

async fn declare_exchanges_on(ch: &Channel, exchange: &str, park_unroutable: bool) -> Result<bool> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let unroutable = Names::unroutable(exchange);
    let op = "declare exchange";
    ch.exchange_declare(
        unroutable.as_str().into(),
        ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
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
    let mut parked = FieldTable::default();
    parked.insert("alternate-exchange".into(), text(&unroutable));
    ch.exchange_declare(
        Names::delayed_exchange(exchange).into(),
        ExchangeKind::Direct,
        durable,
        parked.clone(),
    )
    .await
    .map_err(|e| from_lapin(e, op))?;
    // Last: an exchange declared with other arguments (by an earlier version, or with
    // the other `park_unroutable`) refuses this declaration (its arguments cannot
    // change) and closes the channel; it is used as it is.
    let arguments = if park_unroutable {
        parked
    } else {
        FieldTable::default()
    };
    match ch
        .exchange_declare(exchange.into(), ExchangeKind::Direct, durable, arguments)
        .await
    {
        Ok(()) => Ok(park_unroutable),
        Err(e) if is_precondition_failed(&e) && !park_unroutable => Ok(false),
        Err(e) if is_precondition_failed(&e) => {
            tracing::warn!(
                broker = "rabbitmq",
                exchange,
                "the exchange exists without an alternate exchange, so a message published \
                 on a channel before it has a queue is refused (anybroker's publish) or \
                 dropped (other publishers); give it one with a policy: rabbitmqctl \
                 set_policy {exchange}-unroutable '^{exchange}$' \
                 '{{\"alternate-exchange\":\"{unroutable}\"}}' --apply-to exchanges"
            );
            Ok(false)
        }
        Err(e) => Err(from_lapin(e, op)),
    }
}

/// Whether the server refused a declaration because what exists differs from it.
fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
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

/// The channel's presence queue `C.presence`: bound to nothing, so it never holds a
/// message; each router using the channel consumes from it, and its consumer count
/// is how many do. It goes once no one has consumed it for a minute.
pub(crate) async fn declare_presence(ch: &Channel, channel: &str) -> Result<String> {
    let queue = Names::presence(channel);
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), millis(PRESENCE_QUEUE_IDLE));
    ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .map_err(|e| from_lapin(e, "declare presence queue"))?;
    Ok(queue)
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
