//! The RabbitMQ broker handle: publishing, delayed publishing, dead letters, requests.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicAckOptions, BasicGetOptions};

use super::codec::{from_delivery, to_properties};
use super::connection::{publish_confirmed, Link, Route};
use super::consumer::{QueueRole, RabbitSubscription};
use super::error::from_lapin;
use super::{topology, Names, RabbitMqConfig};
use crate::core::{
    BrokerKind, Capabilities, Envelope, Error, MessagePublisher, Result, SubscribeOptions,
    Subscription,
};

/// A connection to RabbitMQ. Cloning shares it.
#[derive(Clone)]
pub struct RabbitMqBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) link: Link,
    closed: crate::core::ShutdownFlag,
}

impl std::fmt::Debug for RabbitMqBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqBroker")
            .field("config", self.inner.link.config())
            .finish_non_exhaustive()
    }
}

/// AMQP short strings (queue names, routing keys) hold at most 255 bytes; the longest
/// name built from a channel adds the group and a delay.
const MAX_CHANNEL_NAME: usize = 180;

impl RabbitMqBroker {
    /// Connects, and declares the exchanges; later connection losses are recovered.
    pub async fn connect(config: &RabbitMqConfig) -> Result<Self> {
        Ok(RabbitMqBroker {
            inner: Arc::new(Inner {
                link: Link::connect(config).await?,
                closed: crate::core::ShutdownFlag::new("rabbitmq"),
            }),
        })
    }

    pub(crate) fn config(&self) -> &RabbitMqConfig {
        self.inner.link.config()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.closed.is_closed()
    }

    fn check_open(&self, operation: &'static str) -> Result<()> {
        self.inner.closed.check(operation)
    }

    pub(crate) fn validate_name(channel: &str) -> Result<()> {
        if channel.is_empty() || channel.len() > MAX_CHANNEL_NAME {
            return Err(Error::config(format!(
                "channel {channel:?} cannot be a RabbitMQ routing key: expected 1 to {MAX_CHANNEL_NAME} bytes"
            ))
            .with_broker("rabbitmq"));
        }
        Ok(())
    }

    /// Publishes `envelope` to the default exchange, straight into `queue`.
    pub(crate) async fn publish_to_queue(&self, queue: &str, envelope: &Envelope) -> Result<()> {
        let route = Route {
            exchange: "",
            routing_key: queue,
            mandatory: true,
        };
        self.inner
            .link
            .publish(&route, &envelope.payload, &to_properties(envelope))
            .await
            .map_err(|e| e.with_channel(&*envelope.channel))
    }

    /// Publishes `envelope` into a delay queue that releases it after `delay` to
    /// `exchange` with `routing_key`.
    pub(crate) async fn publish_after(
        &self,
        envelope: &Envelope,
        queue: &str,
        delay: Duration,
        exchange: &str,
        routing_key: &str,
    ) -> Result<()> {
        let session = self.inner.link.session().await?;
        session
            .ensure_delay_queue(queue, delay, exchange, routing_key)
            .await
            .map_err(|e| e.with_channel(&*envelope.channel))?;
        self.publish_to_queue(queue, envelope).await
    }

    /// Takes up to `limit` dead letters (unacknowledged) on a channel of their own,
    /// passes them to `each`, then closes the channel, which gives back whatever `each`
    /// did not ack.
    async fn with_dead_letters(
        &self,
        channel: &str,
        limit: usize,
        replay: bool,
    ) -> Result<(Vec<Envelope>, usize)> {
        let session = self.inner.link.session().await?;
        let ch = session.declaring_channel().await?;
        let result = async {
            let (queue, present) = topology::declare_dead_letters(&ch, channel).await?;
            // No more than were there at the start: a replayed message that fails at
            // once is dead-lettered again, and must not be replayed again by this call.
            let limit = limit.min(present as usize);
            if replay {
                ch.confirm_select(Default::default())
                    .await
                    .map_err(|e| from_lapin(e, "confirm select"))?;
            }
            let channel_arc: Arc<str> = Arc::from(channel);
            let (mut read, mut moved) = (Vec::new(), 0);
            while read.len() + moved < limit {
                let Some(got) = ch
                    .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                    .await
                    .map_err(|e| from_lapin(e, "read dead letters").with_channel(channel))?
                else {
                    break;
                };
                let delivery = got.delivery;
                let envelope = from_delivery(&channel_arc, &delivery.properties, delivery.data);
                if !replay {
                    read.push(envelope);
                    continue;
                }
                // Published (confirmed) first, acked after: a crash in between
                // duplicates, never loses.
                let replayed = envelope.into_replayed();
                let route = Route {
                    exchange: &self.config().exchange,
                    routing_key: channel,
                    mandatory: true,
                };
                publish_confirmed(&ch, &route, &replayed.payload, to_properties(&replayed))
                    .await
                    .map_err(|e| e.with_channel(channel))?;
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| from_lapin(e, "replay dead letters").with_channel(channel))?;
                moved += 1;
            }
            Ok((read, moved))
        }
        .await;
        // Closing gives back the dead letters only read (in their original order).
        let _ = ch.close(200, "done".into()).await;
        result
    }
}

#[async_trait]
impl MessagePublisher for RabbitMqBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::RabbitMq
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
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
        }
    }

    async fn prepare_channel(&self, channel: &str, default_group: &str) -> Result<()> {
        self.check_open("prepare_channel")?;
        Self::validate_name(channel)?;
        let session = self.inner.link.session().await?;
        let ch = session.declaring_channel().await?;
        let result =
            topology::declare_group(&ch, &self.config().exchange, channel, default_group).await;
        let _ = ch.close(200, "declared".into()).await;
        result.map(drop)
    }

    async fn publish(&self, envelope: Envelope) -> Result<()> {
        self.check_open("publish")?;
        Self::validate_name(&envelope.channel)?;
        let route = Route {
            exchange: &self.config().exchange,
            routing_key: &envelope.channel,
            mandatory: true,
        };
        self.inner
            .link
            .publish(&route, &envelope.payload, &to_properties(&envelope))
            .await
            .map_err(|e| e.with_channel(&*envelope.channel))
    }

    async fn publish_delayed(&self, envelope: Envelope, delay: Duration) -> Result<()> {
        self.check_open("publish_delayed")?;
        Self::validate_name(&envelope.channel)?;
        let ms = delay.as_millis() as u64;
        let queue = Names::delay_queue(&envelope.channel, ms);
        let exchange = Names::delayed_exchange(&self.config().exchange);
        self.publish_after(
            &envelope,
            &queue,
            Duration::from_millis(ms),
            &exchange,
            &envelope.channel,
        )
        .await
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        self.check_open("subscribe")?;
        Self::validate_name(&options.channel)?;
        Ok(Box::new(
            RabbitSubscription::start(self.clone(), options, QueueRole::Group).await?,
        ))
    }

    async fn dead_letters(&self, channel: &str, limit: usize) -> Result<Vec<Envelope>> {
        self.check_open("dead_letters")?;
        Self::validate_name(channel)?;
        Ok(self.with_dead_letters(channel, limit, false).await?.0)
    }

    async fn replay_dead_letters(&self, channel: &str, limit: usize) -> Result<usize> {
        self.check_open("replay_dead_letters")?;
        Self::validate_name(channel)?;
        Ok(self.with_dead_letters(channel, limit, true).await?.1)
    }

    async fn request(&self, envelope: Envelope, timeout: Duration) -> Result<Envelope> {
        self.check_open("request")?;
        Self::validate_name(&envelope.channel)?;
        let rpc = Names::rpc(&envelope.channel);
        let route = Route {
            exchange: &self.config().exchange,
            routing_key: &rpc,
            mandatory: true,
        };
        let (properties, body) = self
            .inner
            .link
            .request(&route, &envelope.payload, to_properties(&envelope), timeout)
            .await
            .map_err(|e| e.with_channel(&*envelope.channel))?;
        Ok(from_delivery(&envelope.channel, &properties, body))
    }

    async fn serve(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        self.check_open("serve")?;
        Self::validate_name(&options.channel)?;
        Ok(Box::new(
            RabbitSubscription::start(self.clone(), options, QueueRole::Requests).await?,
        ))
    }

    async fn shutdown(&self) -> Result<()> {
        self.inner.closed.close();
        self.inner.link.close().await
    }
}
