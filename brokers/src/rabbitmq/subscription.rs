//! A member of a consumer group (or of a channel's request servers): a consumer with
//! manual acks on the group's queue, on an AMQP channel of its own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// The AMQP channel it came on (which of the subscription's channels) and its
    /// delivery tag there: what an ack of many covers.
    on: AmqpTag,
    envelope: Envelope,
    /// Requests only: where and under which id the reply goes.
    reply_to: Option<(ShortString, Option<ShortString>)>,
}

/// A delivery's AMQP channel (counted from 1 per subscription) and delivery tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AmqpTag {
    channel: u64,
    tag: u64,
}

/// The AMQP channel and consumer currently delivering; replaced after a reconnect.
struct Consuming {
    amqp: lapin::Channel,
    consumer: lapin::Consumer,
    /// Which of the subscription's channels it is.
    channel: u64,
}

pub(crate) struct RabbitSubscription {
    link: Arc<Link>,
    channel: Arc<str>,
    group: String,
    role: QueueRole,
    prefetch: u16,
    consuming: tokio::sync::Mutex<Option<Consuming>>,
    /// How many AMQP channels it has consumed on.
    channels: AtomicU64,
    /// Deliveries whose settlement failed and which the broker still holds unacked
    /// (until their channel closes and gives them back).
    held: std::sync::Mutex<Vec<AmqpTag>>,
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
            channels: AtomicU64::new(0),
            held: std::sync::Mutex::new(Vec::new()),
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
        let channel = self.channels.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Consuming {
            amqp,
            consumer,
            channel,
        })
    }

    fn deliver(&self, delivery: lapin::message::Delivery, channel: u64) -> Delivery {
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
            on: AmqpTag {
                channel,
                tag: delivery.delivery_tag,
            },
            envelope: envelope.clone(),
            reply_to,
        });
        Delivery::new(envelope, tag)
    }

    /// Keeps `on` from being covered by an ack of many; forgets those of earlier
    /// channels, which closed and gave theirs back.
    fn hold(&self, on: AmqpTag) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|h| h.channel >= on.channel);
        held.push(on);
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

/// The acks of a batch that one ack of many (`multiple`) settles: those of one AMQP
/// channel (the latest the batch acks on) below every delivery of that channel the
/// broker must not take as acked yet, which are the deliveries still unsettled
/// (`least_unsettled`: the lowest tag of a channel the table still holds) and the
/// batch's other settlements (a retry or a dead letter is published before its ack; a
/// release is a requeue). Deliveries come in tag order, so no tag below the highest
/// handed out is still on its way. `None`: every ack goes alone.
fn acks_covered(
    batch: &[(AmqpTag, bool)],
    least_unsettled: impl FnOnce(u64) -> Option<u64>,
) -> Option<CoveredAcks> {
    let channel = batch
        .iter()
        .filter(|(_, ack)| *ack)
        .map(|(on, _)| on.channel)
        .max()?;
    let not_acked = batch
        .iter()
        .filter(|(on, ack)| !ack && on.channel == channel)
        .map(|(on, _)| on.tag)
        .min();
    let below = [least_unsettled(channel), not_acked]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(u64::MAX);
    // The acks below it, counted, and the highest of them.
    let (count, top) = batch
        .iter()
        .filter(|(on, ack)| *ack && on.channel == channel && on.tag < below)
        .fold((0, None::<AmqpTag>), |(count, top), (on, _)| {
            (count + 1, Some(top.filter(|t| t.tag > on.tag).unwrap_or(*on)))
        });
    // One ack alone is sent as it is.
    if count < 2 {
        return None;
    }
    let top = top?;
    Some(CoveredAcks { top, below })
}

/// What [`acks_covered`] found: the ack sent as `multiple` and the tag below which
/// the acks of its channel are covered by it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CoveredAcks {
    top: AmqpTag,
    below: u64,
}

impl CoveredAcks {
    fn covers(&self, on: AmqpTag) -> bool {
        on.channel == self.top.channel && on.tag < self.below
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
        let channel = current.channel;
        let mut out = batch_of(self.deliver(first, channel), max);
        while out.len() < max.max(1) {
            match current.consumer.next().now_or_never() {
                Some(Some(Ok(d))) => out.push(self.deliver(d, channel)),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn settle(&self, settlements: Vec<(DeliveryTag, Settlement)>) -> Result<()> {
        let (settled, unknown) = self.in_flight.take(settlements);
        let batch: Vec<(AmqpTag, bool)> = settled
            .iter()
            .map(|(f, s)| (f.on, matches!(s, Settlement::Ack)))
            .collect();
        let covered = acks_covered(&batch, |channel| {
            let unsettled = self
                .in_flight
                .least(|f| (f.on.channel == channel).then_some(f.on.tag));
            let held = self
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|on| on.channel == channel)
                .map(|on| on.tag)
                .min();
            unsettled.into_iter().chain(held).min()
        });
        let mut first_error = None;
        let mut others = Vec::new();
        for (f, settlement) in settled {
            if !matches!(settlement, Settlement::Ack) {
                others.push((f, settlement));
                continue;
            }
            let acked = match covered {
                // The highest acks the rest with it; they send nothing of their own.
                Some(covered) if covered.covers(f.on) => {
                    if f.on != covered.top {
                        continue;
                    }
                    f.acker.ack(BasicAckOptions { multiple: true }).await
                }
                _ => f.acker.ack(BasicAckOptions::default()).await,
            };
            if let Err(e) = acked {
                first_error.get_or_insert(from_lapin(e, "ack"));
            }
        }
        if !others.is_empty() {
            let results = futures::future::join_all(others.into_iter().map(|(f, s)| {
                let on = f.on;
                self.settle_one(f, s).map(move |r| (on, r))
            }))
            .await;
            for (on, r) in results {
                if let Err(e) = r {
                    // Left unacked, for the broker to give back when the channel
                    // closes: no later ack of many may cover it.
                    self.hold(on);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn on(channel: u64, tag: u64) -> AmqpTag {
        AmqpTag { channel, tag }
    }

    /// Which of `batch`'s deliveries the ack of many covers, and the one it is sent as.
    fn covered(
        batch: &[(AmqpTag, bool)],
        least_unsettled: Option<u64>,
    ) -> Option<(AmqpTag, Vec<AmqpTag>)> {
        let covered = acks_covered(batch, |_| least_unsettled)?;
        let all = batch
            .iter()
            .filter(|(on, ack)| *ack && covered.covers(*on))
            .map(|(on, _)| *on)
            .collect();
        Some((covered.top, all))
    }

    #[test]
    fn acks_with_nothing_unsettled_below_them_go_as_one() {
        let batch = [(on(1, 1), true), (on(1, 3), true), (on(1, 2), true)];
        assert_eq!(
            covered(&batch, None),
            Some((on(1, 3), vec![on(1, 1), on(1, 3), on(1, 2)]))
        );
        // Deliveries still unsettled above them are not touched.
        assert_eq!(covered(&batch, Some(4)).unwrap().0, on(1, 3));
    }

    #[test]
    fn an_unsettled_delivery_stops_the_ack_of_many_below_it() {
        let batch = [(on(1, 1), true), (on(1, 2), true), (on(1, 4), true), (on(1, 5), true)];
        assert_eq!(
            covered(&batch, Some(3)),
            Some((on(1, 2), vec![on(1, 1), on(1, 2)]))
        );
        assert_eq!(covered(&batch, Some(1)), None, "nothing below the first");
        assert_eq!(covered(&batch, Some(2)), None, "one ack alone goes alone");
    }

    #[test]
    fn the_batchs_other_settlements_are_never_covered() {
        // A retry at 2 is published before its ack, a release at 5 is a requeue.
        let batch = [
            (on(1, 1), true),
            (on(1, 3), true),
            (on(1, 2), false),
            (on(1, 4), true),
        ];
        assert_eq!(covered(&batch, None), None);
        let batch = [
            (on(1, 1), true),
            (on(1, 2), true),
            (on(1, 3), true),
            (on(1, 5), false),
            (on(1, 6), true),
        ];
        assert_eq!(
            covered(&batch, None),
            Some((on(1, 3), vec![on(1, 1), on(1, 2), on(1, 3)]))
        );
    }

    #[test]
    fn only_the_latest_channels_acks_are_covered() {
        // After a reconnect tags start again: channel 1's go alone.
        let batch = [
            (on(1, 7), true),
            (on(1, 8), true),
            (on(2, 1), true),
            (on(2, 2), true),
        ];
        assert_eq!(
            covered(&batch, None),
            Some((on(2, 2), vec![on(2, 1), on(2, 2)]))
        );
        let retry_on_old = [(on(1, 1), false), (on(2, 5), true), (on(2, 6), true)];
        assert_eq!(covered(&retry_on_old, None).unwrap().0, on(2, 6));
        assert_eq!(covered(&[(on(1, 1), false)], None), None, "no ack at all");
    }
}
