//! A channel opened on a named broker: what the router holds per route. Every call on
//! it goes through here, so the "is the broker still open" check and the error context
//! (broker name and kind, channel, operation) are written once for every backend.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::core::{
    BackendChannel, Capabilities, ChannelSpec, Delivery, DeliveryTag, Envelope, Error, Result,
    Settlement, SubscribeOptions, Subscription,
};
use crate::{AnyChannel, Broker, BrokerKind};

/// A channel opened once on one broker: its name was validated, its topology declared
/// and its wire names worked out when it opened, so publishing looks nothing up.
pub struct OpenChannel {
    channel: AnyChannel,
    broker: Broker,
    broker_name: Arc<str>,
    name: Arc<str>,
}

impl std::fmt::Debug for OpenChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenChannel")
            .field("name", &self.name)
            .field("broker", &self.broker_name)
            .field("kind", &self.broker.kind())
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Opens `spec.name` on this broker, known as `broker_name` in errors.
    pub async fn open_channel(&self, broker_name: &str, spec: &ChannelSpec) -> Result<OpenChannel> {
        let broker_name: Arc<str> = Arc::from(broker_name);
        let context = |e: Error| {
            e.in_context(&broker_name, self.kind(), &spec.name)
                .or_operation("open_channel")
        };
        if let Some(e) = self.closed_error("open_channel") {
            return Err(context(e));
        }
        let channel = self.open_any(spec).await.map_err(context)?;
        Ok(OpenChannel {
            channel,
            broker: self.clone(),
            broker_name,
            name: spec.name.clone(),
        })
    }

    fn closed_error(&self, operation: &'static str) -> Option<Error> {
        self.is_closed()
            .then(|| Error::closed("the broker was shut down").with_operation(operation))
    }
}

impl OpenChannel {
    /// The channel's wire name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The name of the broker carrying it (its key under `[brokers]`).
    pub fn broker_name(&self) -> &Arc<str> {
        &self.broker_name
    }

    /// Which backend carries it.
    pub fn kind(&self) -> BrokerKind {
        self.broker.kind()
    }

    /// What the broker, in its configured mode, guarantees on this channel.
    pub fn capabilities(&self) -> Capabilities {
        self.channel.capabilities()
    }

    /// `Ok` while the broker is open.
    fn check_open(&self, operation: &'static str) -> Result<()> {
        match self.broker.closed_error(operation) {
            Some(e) => Err(self.context(e, operation)),
            None => Ok(()),
        }
    }

    fn context(&self, e: Error, operation: &'static str) -> Error {
        e.in_context(&self.broker_name, self.broker.kind(), &self.name)
            .or_operation(operation)
    }

    /// Publishes and returns once the broker accepted the message.
    pub async fn publish(&self, envelope: Envelope) -> Result<()> {
        self.check_open("publish")?;
        self.channel
            .publish(envelope)
            .await
            .map_err(|e| self.context(e, "publish"))
    }

    /// Publishes so the message is delivered no earlier than `delay` from now.
    pub async fn publish_delayed(&self, envelope: Envelope, delay: Duration) -> Result<()> {
        self.check_open("publish_delayed")?;
        self.channel
            .publish_delayed(envelope, delay)
            .await
            .map_err(|e| self.context(e, "publish_delayed"))
    }

    /// Starts one member of `options.group`.
    pub async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        self.check_open("subscribe")?;
        match self.channel.subscribe(options).await {
            Ok(subscription) => Ok(self.member(subscription)),
            Err(e) => Err(self.context(e, "subscribe")),
        }
    }

    /// A member whose errors name this channel and broker.
    fn member(&self, subscription: Box<dyn Subscription>) -> Box<dyn Subscription> {
        Box::new(Member {
            subscription,
            broker_name: self.broker_name.clone(),
            kind: self.kind(),
            channel: self.name.clone(),
        })
    }

    /// Reads up to `limit` dead letters, oldest first, without removing them.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.check_open("dead_letters")?;
        self.channel
            .dead_letters(limit)
            .await
            .map_err(|e| self.context(e, "dead_letters"))
    }

    /// Moves up to `limit` dead letters back onto the channel; returns how many.
    pub async fn replay_dead_letters(&self, limit: usize) -> Result<usize> {
        self.check_open("replay_dead_letters")?;
        self.channel
            .replay_dead_letters(limit)
            .await
            .map_err(|e| self.context(e, "replay_dead_letters"))
    }

    /// Sends a request and waits up to `timeout` for the reply.
    pub async fn request(&self, envelope: Envelope, timeout: Duration) -> Result<Envelope> {
        self.check_open("request")?;
        self.channel
            .request(envelope, timeout)
            .await
            .map_err(|e| self.context(e, "request"))
    }

    /// Starts answering requests as a member of `options.group`.
    pub async fn serve(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        self.check_open("serve")?;
        match self.channel.serve(options).await {
            Ok(subscription) => Ok(self.member(subscription)),
            Err(e) => Err(self.context(e, "serve")),
        }
    }
}

/// A backend's subscription, its errors given the channel's context.
struct Member {
    subscription: Box<dyn Subscription>,
    broker_name: Arc<str>,
    kind: BrokerKind,
    channel: Arc<str>,
}

impl Member {
    fn context(&self, e: Error, operation: &'static str) -> Error {
        e.in_context(&self.broker_name, self.kind, &self.channel)
            .or_operation(operation)
    }
}

#[async_trait]
impl Subscription for Member {
    async fn recv(&self, max: usize) -> Result<Vec<Delivery>> {
        self.subscription
            .recv(max)
            .await
            .map_err(|e| self.context(e, "recv"))
    }

    async fn settle(&self, settlements: Vec<(DeliveryTag, Settlement)>) -> Result<()> {
        self.subscription
            .settle(settlements)
            .await
            .map_err(|e| self.context(e, "settle"))
    }

    async fn close(&self) -> Result<()> {
        self.subscription
            .close()
            .await
            .map_err(|e| self.context(e, "close"))
    }
}
