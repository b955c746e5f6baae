//! A channel opened on a named broker: what the router holds per route. Every call on
//! it goes through here, so the "is the broker still open" check and the error context
//! (broker name and kind, channel, operation) are written once for every backend.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;

use crate::core::{
    BackendChannel, Capabilities, ChannelSpec, DeadLetterAction, DeadLetterSelector, Delivery,
    DeliveryTag, Envelope, Error, Result, Settlement, SubscribeOptions, Subscription,
};
use crate::{AnyChannel, Broker, BrokerKind};

/// A channel opened once on one broker: its name was validated, its topology declared
/// and its wire names worked out when it opened, so publishing looks nothing up.
pub struct OpenChannel {
    channel: AnyChannel,
    broker: Broker,
    place: Arc<Place>,
}

/// Where an operation happens: what every error of a channel, and of the subscriptions
/// it starts, is given.
#[derive(Debug)]
struct Place {
    broker_name: Arc<str>,
    kind: BrokerKind,
    channel: Arc<str>,
}

impl Place {
    fn context(&self, e: Error, operation: &'static str) -> Error {
        e.in_context(&self.broker_name, self.kind, &self.channel)
            .or_operation(operation)
    }

    /// The error of a call made after the broker was shut down.
    fn closed(&self, operation: &'static str) -> Error {
        self.context(Error::closed("the broker was shut down"), operation)
    }
}

impl std::fmt::Debug for OpenChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenChannel")
            .field("name", &self.place.channel)
            .field("broker", &self.place.broker_name)
            .field("kind", &self.place.kind)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Opens `spec.name` on this broker, known as `broker_name` in errors.
    pub async fn open_channel(&self, broker_name: &str, spec: &ChannelSpec) -> Result<OpenChannel> {
        let place = Arc::new(Place {
            broker_name: Arc::from(broker_name),
            kind: self.kind(),
            channel: spec.name.clone(),
        });
        if self.is_closed() {
            return Err(place.closed("open_channel"));
        }
        let channel = self
            .open_any(spec)
            .await
            .map_err(|e| place.context(e, "open_channel"))?;
        Ok(OpenChannel {
            channel,
            broker: self.clone(),
            place,
        })
    }
}

impl OpenChannel {
    /// The channel's wire name.
    pub fn name(&self) -> &Arc<str> {
        &self.place.channel
    }

    /// The name of the broker carrying it (its key under `[brokers]`).
    pub fn broker_name(&self) -> &Arc<str> {
        &self.place.broker_name
    }

    /// Which backend carries it.
    pub fn kind(&self) -> BrokerKind {
        self.place.kind
    }

    /// What the broker, in its configured mode, guarantees on this channel.
    pub fn capabilities(&self) -> Capabilities {
        self.channel.capabilities()
    }

    /// Runs `call`, the backend's future for `operation`, if the broker is open when
    /// the call is made, and gives its error this channel's context. Making a future
    /// runs none of it, so `call` is made by the caller and held once.
    fn call<'a, T, F: Future<Output = Result<T>>>(
        &'a self,
        operation: &'static str,
        call: F,
    ) -> InContext<'a, F> {
        InContext {
            call,
            open: !self.broker.is_closed(),
            place: &self.place,
            operation,
        }
    }

    /// Publishes and returns once the broker accepted the message.
    pub fn publish(&self, envelope: Envelope) -> impl Future<Output = Result<()>> + Send + '_ {
        self.call("publish", self.channel.publish(envelope))
    }

    /// Publishes now if the backend can without a wait (see
    /// [`BackendChannel::publish_at_once`](crate::BackendChannel::publish_at_once)):
    /// `None`. Otherwise, and when the broker was shut down, gives the envelope back
    /// for [`publish`](Self::publish), which waits or says why.
    #[inline]
    pub fn publish_at_once(&self, envelope: Envelope) -> Option<Envelope> {
        if self.broker.is_closed() {
            return Some(envelope);
        }
        self.channel.publish_at_once(envelope)
    }

    /// Publishes `envelopes`, one result per envelope in their order (see
    /// [`BackendChannel::publish_batch`](crate::BackendChannel::publish_batch)).
    pub async fn publish_batch(&self, envelopes: Vec<Envelope>) -> Vec<Result<()>> {
        if self.broker.is_closed() {
            let closed = self.place.closed("publish_batch");
            return envelopes.iter().map(|_| Err(closed.repeated())).collect();
        }
        let results = self.channel.publish_batch(envelopes).await;
        results
            .into_iter()
            .map(|r| r.map_err(|e| self.place.context(e, "publish_batch")))
            .collect()
    }

    /// Publishes so the message is delivered no earlier than `delay` from now.
    pub fn publish_delayed(
        &self,
        envelope: Envelope,
        delay: Duration,
    ) -> impl Future<Output = Result<()>> + Send + '_ {
        self.call(
            "publish_delayed",
            self.channel.publish_delayed(envelope, delay),
        )
    }

    /// Starts one member of `options.group`.
    pub async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        let subscription = self
            .call("subscribe", self.channel.subscribe(options))
            .await?;
        Ok(self.member(subscription))
    }

    /// A member whose errors name this channel and broker.
    fn member(&self, subscription: Box<dyn Subscription>) -> Box<dyn Subscription> {
        Box::new(Member {
            subscription,
            place: self.place.clone(),
        })
    }

    /// Reads up to `limit` dead letters, oldest first, without removing them.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.call("dead_letters", self.channel.dead_letters(limit))
            .await
    }

    /// How far `group` is behind on this channel.
    pub async fn backlog(&self, group: &str) -> Result<crate::Backlog> {
        self.call("backlog", self.channel.backlog(group)).await
    }

    /// Creates what `options.group` needs to receive what is published from now on,
    /// before its first member subscribes.
    pub async fn provision(&self, options: &SubscribeOptions) -> Result<()> {
        self.call("provision", self.channel.provision(options))
            .await
    }

    /// Replays or discards up to `limit` of the dead letters `selector` picks; returns
    /// how many.
    pub async fn settle_dead_letters(
        &self,
        selector: &DeadLetterSelector,
        action: DeadLetterAction,
        limit: usize,
    ) -> Result<usize> {
        self.call(
            action.operation(),
            self.channel.settle_dead_letters(selector, action, limit),
        )
        .await
    }

    /// Sends a request and waits up to `timeout` for the reply.
    pub fn request(
        &self,
        envelope: Envelope,
        timeout: Duration,
    ) -> impl Future<Output = Result<Envelope>> + Send + '_ {
        self.call("request", self.channel.request(envelope, timeout))
    }

    /// Starts answering requests as a member of `options.group`.
    pub async fn serve(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        let subscription = self.call("serve", self.channel.serve(options)).await?;
        Ok(self.member(subscription))
    }
}

/// A backend's future for one operation on a channel: fails with `Closed` if the
/// broker was shut down when it was made, and gives the backend's error the channel's
/// context. A future of its own rather than an async block (which would hold the
/// backend's future twice, as its capture and as what it awaits) or combinators (two
/// layers a publish passes through).
#[must_use = "futures do nothing unless polled"]
struct InContext<'a, F> {
    call: F,
    open: bool,
    place: &'a Place,
    operation: &'static str,
}

impl<T, F: Future<Output = Result<T>>> Future for InContext<'_, F> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        // SAFETY: structural pinning of `call` alone. `InContext` has no Drop and
        // never moves `call` out; the other fields are read through the same
        // reference and are `Unpin`.
        let this = unsafe { self.get_unchecked_mut() };
        if !this.open {
            return Poll::Ready(Err(this.place.closed(this.operation)));
        }
        let call = unsafe { Pin::new_unchecked(&mut this.call) };
        match call.poll(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(this.place.context(e, this.operation))),
            other => other,
        }
    }
}

/// A backend's subscription, its errors given the channel's context.
struct Member {
    subscription: Box<dyn Subscription>,
    place: Arc<Place>,
}

#[async_trait]
impl Subscription for Member {
    async fn recv(&self, max: usize) -> Result<Vec<Delivery>> {
        self.subscription
            .recv(max)
            .await
            .map_err(|e| self.place.context(e, "recv"))
    }

    fn recv_ready(&self, max: usize, into: &mut Vec<Delivery>) -> Result<usize> {
        self.subscription
            .recv_ready(max, into)
            .map_err(|e| self.place.context(e, "recv"))
    }

    async fn settle(&self, settlements: Vec<(DeliveryTag, Settlement)>) -> Result<()> {
        self.subscription
            .settle(settlements)
            .await
            .map_err(|e| self.place.context(e, "settle"))
    }

    fn settle_at_once(
        &self,
        settlements: &mut Vec<(DeliveryTag, Settlement)>,
    ) -> Option<Result<()>> {
        self.subscription
            .settle_at_once(settlements)
            .map(|r| r.map_err(|e| self.place.context(e, "settle")))
    }

    async fn close(&self) -> Result<()> {
        self.subscription
            .close()
            .await
            .map_err(|e| self.place.context(e, "close"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a publish function returns, without calling it.
    fn future_size<'a, C: 'a, Fut>(_: fn(&'a C, Envelope) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Every publish future sits inline in the router's, which the application's
    /// publish window allocates and moves per message, and each layer it passes moves
    /// it again: one backend with a large one makes every backend's publishes pay for
    /// it (measured: a 450-byte union cost core NATS ~1% more instructions per message
    /// than a boxed future did). A backend writes its request before making the future
    /// and boxes a large client future.
    #[test]
    fn publish_futures_stay_small() {
        const MOST: usize = 256;
        #[allow(unused_mut)] // the backends built add theirs
        let mut sizes = vec![
            (
                "memory",
                future_size(<crate::memory::MemoryChannel as BackendChannel>::publish),
            ),
            (
                "any channel",
                future_size(<AnyChannel as BackendChannel>::publish),
            ),
            ("open channel", future_size(OpenChannel::publish)),
        ];
        #[cfg(feature = "redis")]
        sizes.extend([
            (
                "redis streams",
                future_size(<crate::redis::StreamChannel as BackendChannel>::publish),
            ),
            (
                "redis pubsub",
                future_size(<crate::redis::PubSubChannel as BackendChannel>::publish),
            ),
        ]);
        #[cfg(feature = "nats")]
        sizes.extend([
            (
                "jetstream",
                future_size(<crate::nats::JetStreamChannel as BackendChannel>::publish),
            ),
            (
                "core nats",
                future_size(<crate::nats::CoreChannel as BackendChannel>::publish),
            ),
        ]);
        #[cfg(feature = "kafka")]
        sizes.push((
            "kafka",
            future_size(<crate::kafka::KafkaChannel as BackendChannel>::publish),
        ));
        #[cfg(feature = "rabbitmq")]
        sizes.push((
            "rabbitmq",
            future_size(<crate::rabbitmq::RabbitMqChannel as BackendChannel>::publish),
        ));
        let large: Vec<_> = sizes.iter().filter(|(_, size)| *size > MOST).collect();
        assert!(
            large.is_empty(),
            "publish futures over {MOST} bytes: {large:?} (all: {sizes:?})"
        );
    }
}
