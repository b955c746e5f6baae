//! A RabbitMQ channel: a routing key on the exchange, validated and given its default
//! group's queue once, when it opens.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use super::codec::{check_header_names, from_delivery, to_properties};
use super::connection::{publish_confirmed, Link, Route};
use super::error::from_lapin;
use super::subscription::{QueueRole, RabbitSubscription};
use super::names::Names;
use super::topology;
use crate::core::{
    Backlog, DeadLetterAction, DeadLetterSelector,
    BackendChannel, Capabilities, NewGroupStart, ChannelSpec, Envelope, Error, Result, SubscribeOptions,
    Subscription,
};

/// What RabbitMQ guarantees.
const CAPABILITIES: Capabilities = Capabilities {
    persistent: true,
    survives_broker_restart: true,
    groups: true,
    ordering_by_key: true,
    ordering_across_members: false,
    retry: true,
    dead_letters: true,
    delay: true,
    native_redelivery_count: false,
    request_reply: true,
    presence: true,
    new_group_start: NewGroupStart::Provisioned,
};

/// AMQP short strings (queue names, routing keys) hold at most 255 bytes; the longest
/// name built from a channel adds the group and a delay.
const MAX_CHANNEL_NAME: usize = 180;

/// A channel: its routing key on the configured exchange.
pub struct RabbitMqChannel {
    link: Arc<Link>,
    name: Arc<str>,
    rpc_routing_key: String,
    delayed_exchange: String,
}

impl RabbitMqChannel {
    /// Validates the name and declares the default group's queue, so what is published
    /// before the group's first member subscribes is kept; then moves what was parked
    /// for the channel before it had a queue into it.
    pub(crate) async fn open(link: Arc<Link>, spec: &ChannelSpec) -> Result<Self> {
        let name = &spec.name;
        if name.is_empty() || name.len() > MAX_CHANNEL_NAME {
            return Err(Error::config(format!(
                "channel {name:?} cannot be a RabbitMQ routing key: expected 1 to {MAX_CHANNEL_NAME} bytes"
            )));
        }
        declare_group(&link, name, &spec.default_group).await?;
        recover_parked(&link, name).await?;
        Ok(RabbitMqChannel {
            rpc_routing_key: Names::rpc(name),
            delayed_exchange: Names::delayed_exchange(&link.config().exchange),
            name: name.clone(),
            link,
        })
    }

    fn route(&self) -> Route<'_> {
        Route {
            exchange: &self.link.config().exchange,
            routing_key: &self.name,
            mandatory: true,
        }
    }

    /// Takes, on a channel of its own, the dead letters there when it starts, oldest
    /// first, unacknowledged; of those `selector` picks (up to `limit`), reads them
    /// (`action` `None`) or replays or discards them, acking each. Closing the channel
    /// gives back the rest in their original order.
    async fn with_dead_letters(
        &self,
        selector: &DeadLetterSelector,
        action: Option<DeadLetterAction>,
        limit: usize,
    ) -> Result<(Vec<Envelope>, usize)> {
        let channel = &*self.name;
        let operation = action.map_or("dead_letters", DeadLetterAction::operation);
        let session = self.link.session().await?;
        let ch = session.declaring_channel().await?;
        let result = async {
            // No more than were there at the start: a replayed message that fails at
            // once is dead-lettered again, and must not be taken again by this call.
            let (queue, present) = topology::declare_dead_letters(&ch, channel).await?;
            if action == Some(DeadLetterAction::Replay) {
                ch.confirm_select(Default::default())
                    .await
                    .map_err(|e| from_lapin(e, "confirm select"))?;
            }
            let (mut read, mut settled) = (Vec::new(), 0);
            for _ in 0..present {
                if read.len() + settled >= limit {
                    break;
                }
                let Some(got) = ch
                    .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                    .await
                    .map_err(|e| from_lapin(e, operation))?
                else {
                    break;
                };
                let delivery = got.delivery;
                let envelope = from_delivery(&self.name, &delivery.properties, delivery.data);
                if !selector.matches(&envelope) {
                    continue;
                }
                match action {
                    None => {
                        read.push(envelope);
                        continue;
                    }
                    // Published (confirmed) first, acked after: a crash in between
                    // duplicates, never loses.
                    Some(DeadLetterAction::Replay) => {
                        let replayed = envelope.into_replayed();
                        let properties = to_properties(&replayed);
                        publish_confirmed(&ch, &self.route(), &replayed.payload, properties)
                            .await?;
                    }
                    Some(_) => {}
                }
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| from_lapin(e, operation))?;
                settled += 1;
            }
            Ok((read, settled))
        }
        .await;
        let _ = ch.close(200, "done".into()).await;
        result
    }
}

impl BackendChannel for RabbitMqChannel {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn publish(&self, envelope: Envelope) -> impl Future<Output = Result<()>> + Send {
        // Boxed whole: the link's future (a publish, its confirm, a wait to send it
        // again after a reconnect) is ~2 KB, and every backend's publish future through
        // the registry would be that size (see docs/backends.md).
        Box::pin(async move {
            check_header_names(&envelope)?;
            self.link
                .publish(&self.route(), &envelope.payload, || to_properties(&envelope))
                .await
        })
    }

    fn publish_batch(&self, envelopes: Vec<Envelope>) -> impl Future<Output = Vec<Result<()>>> + Send {
        // Boxed whole, as `publish` is.
        Box::pin(async move {
            // A header name AMQP cannot carry fails its message alone.
            let mut results: Vec<Result<()>> = envelopes.iter().map(check_header_names).collect();
            let checked: Vec<&Envelope> = envelopes
                .iter()
                .zip(&results)
                .filter(|(_, checked)| checked.is_ok())
                .map(|(envelope, _)| envelope)
                .collect();
            let mut published = self.link.publish_batch(&self.route(), &checked).await.into_iter();
            for result in results.iter_mut().filter(|r| r.is_ok()) {
                if let Some(answer) = published.next() {
                    *result = answer;
                }
            }
            results
        })
    }

    async fn provision(&self, options: &SubscribeOptions) -> Result<()> {
        declare_group(&self.link, &self.name, &options.group).await
    }

    async fn backlog(&self, group: &str) -> Result<Backlog> {
        // The group queue's ready messages (AMQP does not tell the unacknowledged); no
        // queue yet: what was published meanwhile is parked until it has one.
        let ready = self
            .link
            .ready_messages(&Names::group_queue(&self.name, group))
            .await?
            .unwrap_or(0);
        // Retries and delayed messages waiting in the delay queues this process
        // declared (the names of other processes' cannot be listed over AMQP).
        let retries = self
            .link
            .waiting_in_delay_queues(&Names::retry_queue_prefix(&self.name, group))
            .await?;
        let delayed = self
            .link
            .waiting_in_delay_queues(&Names::delay_queue_prefix(&self.name))
            .await?;
        Ok(Backlog::new(ready + retries + delayed, None))
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        Ok(Box::new(
            RabbitSubscription::start(self.link.clone(), self.name.clone(), options, QueueRole::Group).await?,
        ))
    }

    async fn publish_delayed(&self, envelope: Envelope, delay: Duration) -> Result<()> {
        check_header_names(&envelope)?;
        let ms = delay.as_millis() as u64;
        let queue = Names::delay_queue(&self.name, ms);
        self.link
            .publish_to_delay_queue(
                &queue,
                Duration::from_millis(ms),
                &self.delayed_exchange,
                &self.name,
                &envelope,
            )
            .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<Envelope>> {
        let all = DeadLetterSelector::All;
        Ok(self.with_dead_letters(&all, None, limit).await?.0)
    }

    async fn settle_dead_letters(
        &self,
        selector: &DeadLetterSelector,
        action: DeadLetterAction,
        limit: usize,
    ) -> Result<usize> {
        Ok(self.with_dead_letters(selector, Some(action), limit).await?.1)
    }

    async fn request(&self, envelope: Envelope, timeout: Duration) -> Result<Envelope> {
        check_header_names(&envelope)?;
        // Straight into the request queue through the default exchange, which has no
        // alternate exchange: with no queue (nobody serves), the request comes back
        // unroutable at once instead of being parked.
        let route = Route {
            exchange: "",
            routing_key: &self.rpc_routing_key,
            mandatory: true,
        };
        let (properties, body) = self
            .link
            .request(&route, &envelope.payload, to_properties(&envelope), timeout)
            .await?;
        Ok(from_delivery(&self.name, &properties, body))
    }

    async fn serve(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        Ok(Box::new(
            RabbitSubscription::start(self.link.clone(), self.name.clone(), options, QueueRole::Requests).await?,
        ))
    }
}

/// Declares `group`'s queue on `channel` and binds it: from then on the queue keeps
/// what is published on the channel, whether or not a member consumes it.
async fn declare_group(link: &Link, channel: &str, group: &str) -> Result<()> {
    let session = link.session().await?;
    let ch = session.declaring_channel().await?;
    let declared = topology::declare_group(&ch, &link.config().exchange, channel, group).await;
    let _ = ch.close(200, "declared".into()).await;
    declared.map(drop)
}

/// Moves what was parked for `channel` in `X.unroutable` to its queues (see
/// [`move_parked`]), on a channel of its own.
async fn recover_parked(link: &Link, channel: &str) -> Result<()> {
    let session = link.session().await?;
    let ch = session.declaring_channel().await?;
    let moved = move_parked(&ch, &link.config().exchange, channel).await;
    let _ = ch.close(200, "recovered".into()).await;
    let moved = moved?;
    if moved > 0 {
        tracing::info!(broker = "rabbitmq", channel, moved, "messages parked before the channel had a queue moved to it");
    }
    Ok(())
}

/// Moves the messages parked in `X.unroutable` for `channel` (published on it before it
/// had a queue, or delayed and due when it had none) back to `X`, where the channel's
/// queues now take them; the others are given back in their order. Each is published
/// (confirmed) before it is acked: a crash in between duplicates, never loses.
async fn move_parked(ch: &lapin::Channel, exchange: &str, channel: &str) -> Result<usize> {
    let unroutable = Names::unroutable(exchange);
    let present = ch
        .queue_declare(
            unroutable.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| from_lapin(e, "declare queue"))?
        .message_count();
    if present == 0 {
        return Ok(0);
    }
    ch.confirm_select(Default::default())
        .await
        .map_err(|e| from_lapin(e, "confirm select"))?;
    let route = Route {
        exchange,
        routing_key: channel,
        mandatory: true,
    };
    let mut moved = 0;
    for _ in 0..present {
        let Some(got) = ch
            .basic_get(unroutable.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| from_lapin(e, "recover parked"))?
        else {
            break;
        };
        let delivery = got.delivery;
        if delivery.routing_key.as_str() != channel {
            continue;
        }
        publish_confirmed(ch, &route, &delivery.data, delivery.properties.clone()).await?;
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| from_lapin(e, "recover parked"))?;
        moved += 1;
    }
    Ok(moved)
}
