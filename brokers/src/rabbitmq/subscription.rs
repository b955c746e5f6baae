//! A member of a consumer group (or of a channel's request servers): a consumer with
//! manual acks on the group's queue, on an AMQP channel of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::Acker;

use super::codec::{from_delivery, to_properties};
use super::connection::Route;
use super::error::from_lapin;
use super::connection::Link;
use super::names::Names;
use super::topology;
use crate::core::{
    batch_of, header, Delivery, DeliveryTag, Envelope, Error, ErrorKind, InFlightTable, Result,
    Settlement, SubscribeOptions, Subscription,
};

/// Which queue a subscription consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueRole {
    /// The group's queue `C:G`.
    Group,
    /// The channel's request queue `C.rpc`.
    Requests,
}

struct InFlight {
    acker: Acker,
    envelope: Envelope,
    /// Requests only: where and under which id the reply goes.
    reply_to: Option<(ShortString, Option<ShortString>)>,
}

/// The AMQP channel and consumer currently delivering; replaced after a reconnect.
struct Consuming {
    amqp: lapin::Channel,
    consumer: lapin::Consumer,
}

pub(crate) struct RabbitSubscription {
    link: Arc<Link>,
    channel: Arc<str>,
    group: String,
    role: QueueRole,
    prefetch: u16,
    consuming: tokio::sync::Mutex<Option<Consuming>>,
    in_flight: InFlightTable<InFlight>,
    closed: AtomicBool,
}

impl RabbitSubscription {
    pub(crate) async fn start(
        link: Arc<Link>,
        channel: Arc<str>,
        options: SubscribeOptions,
        role: QueueRole,
    ) -> Result<Self> {
        let subscription = RabbitSubscription {
            link,
            channel,
            group: options.group,
            role,
            prefetch: options.prefetch.clamp(1, u16::MAX as usize) as u16,
            consuming: tokio::sync::Mutex::new(None),
            in_flight: InFlightTable::default(),
            closed: AtomicBool::new(false),
        };
        // Declared and consuming before start returns: messages published from now on
        // have a queue, and a refused declaration is reported here.
        let consuming = subscription.open().await?;
        *subscription.consuming.lock().await = Some(consuming);
        Ok(subscription)
    }

    /// Declares the queue and starts consuming it on a new AMQP channel.
    async fn open(&self) -> Result<Consuming> {
        let session = self.link.session().await?;
        let amqp = session.declaring_channel().await?;
        let exchange = &self.link.config().exchange;
        let queue = match self.role {
            QueueRole::Group => {
                topology::declare_group(&amqp, exchange, &self.channel, &self.group).await?
            }
            QueueRole::Requests => topology::declare_rpc(&amqp, exchange, &self.channel).await?,
        };
        amqp.basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| from_lapin(e, "qos"))?;
        let consumer = amqp
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| from_lapin(e, "consume"))?;
        Ok(Consuming { amqp, consumer })
    }

    fn deliver(&self, delivery: lapin::message::Delivery) -> Delivery {
        let envelope = from_delivery(&self.channel, &delivery.properties, delivery.data);
        let reply_to = match self.role {
            QueueRole::Requests => delivery
                .properties
                .reply_to()
                .clone()
                .map(|to| (to, delivery.properties.correlation_id().clone())),
            QueueRole::Group => None,
        };
        let tag = self.in_flight.insert(InFlight {
            acker: delivery.acker,
            envelope: envelope.clone(),
            reply_to,
        });
        Delivery::new(envelope, tag)
    }

    /// Carries out one settlement other than a plain ack: what must be published is
    /// confirmed before the original is acked.
    async fn settle_one(
        &self,
        f: InFlight,
        settlement: Settlement,
    ) -> Result<()> {
        let ack = BasicAckOptions::default();
        match settlement {
            Settlement::Ack => {}
            Settlement::Retry { delay, error } => {
                let mut envelope = f.envelope;
                envelope.record_failure(&error);
                let ms = delay.as_millis() as u64;
                let queue = Names::retry_queue(&self.channel, &self.group, ms);
                let back_to = Names::group_queue(&self.channel, &self.group);
                self.link
                    .publish_to_delay_queue(
                        &queue,
                        Duration::from_millis(ms),
                        "",
                        &back_to,
                        &envelope,
                    )
                    .await?;
            }
            Settlement::DeadLetter(dead) => {
                let envelope = f.envelope.into_dead_letter(&dead);
                self.link
                    .publish_to_queue(&Names::dead_letters(&self.channel), &envelope)
                    .await?;
            }
            Settlement::Release => {
                return f
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
                    .map(drop)
                    .map_err(|e| from_lapin(e, "release"));
            }
            Settlement::Reply(result) => {
                if let Some((to, correlation)) = &f.reply_to {
                    let mut reply = Envelope::new(self.channel.clone(), bytes::Bytes::new());
                    match result {
                        Ok(payload) => reply.payload = payload,
                        Err(error) => {
                            reply.headers.insert(header::REPLY_ERROR.to_string(), error);
                        }
                    }
                    let properties = || {
                        let properties = to_properties(&reply).with_delivery_mode(1);
                        match &correlation {
                            Some(c) => properties.with_correlation_id(c.clone()),
                            None => properties,
                        }
                    };
                    // Not mandatory: a requester that gave up is no error of the server.
                    let route = Route {
                        exchange: "",
                        routing_key: to.as_str(),
                        mandatory: false,
                    };
                    self.link
                        .publish(&route, &reply.payload, properties)
                        .await?;
                }
            }
            #[allow(unreachable_patterns)]
            _ => return Err(Error::unsupported("unknown settlement")),
        }
        f.acker
            .ack(ack)
            .await
            .map(drop)
            .map_err(|e| from_lapin(e, "ack"))
    }
}

#[async_trait]
impl Subscription for RabbitSubscription {
    async fn recv(&self, max: usize) -> Result<Vec<Delivery>> {
        if self.closed.load(Ordering::Acquire) || self.link.is_closed() {
            return Ok(Vec::new());
        }
        let mut consuming = self.consuming.lock().await;
        if consuming.is_none() {
            *consuming = Some(self.open().await?);
        }
        let current = consuming.as_mut().expect("opened above");
        let first = match current.consumer.next().await {
            Some(Ok(d)) => d,
            ended => {
                // The channel or connection went away: consume again on the next
                // call (after reconnecting); what was unacked is redelivered.
                *consuming = None;
                let error = Error::new(ErrorKind::Unreachable, "consumer stopped; reconnecting")
                    .set_retryable(true)
                    ;
                return Err(match ended {
                    Some(Err(e)) => error.with_source(e),
                    _ => error,
                });
            }
        };
        let mut out = batch_of(self.deliver(first), max);
        while out.len() < max.max(1) {
            match current.consumer.next().now_or_never() {
                Some(Some(Ok(d))) => out.push(self.deliver(d)),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn settle(&self, settlements: Vec<(DeliveryTag, Settlement)>) -> Result<()> {
        let (settled, unknown) = self.in_flight.take(settlements);
        let mut first_error = None;
        let mut others = Vec::new();
        for (f, settlement) in settled {
            if matches!(settlement, Settlement::Ack) {
                if let Err(e) = f.acker.ack(BasicAckOptions::default()).await {
                    first_error.get_or_insert(from_lapin(e, "ack"));
                }
            } else {
                others.push((f, settlement));
            }
        }
        if !others.is_empty() {
            let results = futures::future::join_all(
                others.into_iter().map(|(f, s)| self.settle_one(f, s)),
            )
            .await;
            for r in results {
                if let Err(e) = r {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        unknown.error()
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let Some(consuming) = self.consuming.lock().await.take() else {
            return Ok(());
        };
        let _ = consuming
            .amqp
            .basic_cancel(consuming.consumer.tag(), BasicCancelOptions::default())
            .await;
        // Closing the channel gives every unacked delivery (fetched or buffered) back
        // to the queue, for the group's other members.
        self.in_flight.drain();
        let _ = consuming.amqp.close(200, "closed".into()).await;
        Ok(())
    }
}

impl Drop for RabbitSubscription {
    fn drop(&mut self) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        // Not closed: close the channel in the background so the server hands its
        // unacked messages to other members now rather than when the connection ends.
        if let (Some(consuming), Ok(runtime)) = (
            self.consuming.get_mut().take(),
            tokio::runtime::Handle::try_current(),
        ) {
            runtime.spawn(async move {
                let _ = consuming.amqp.close(200, "dropped".into()).await;
            });
        }
    }
}
