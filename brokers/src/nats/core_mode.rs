//! Core NATS mode: a queue subscription per group; fire-and-forget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use tokio::sync::Mutex;

use super::codec::from_message;
use super::error::from_nats;
use super::NatsBroker;
use crate::core::{
    batch_of, Delivery, DeliveryTag, Result, Settlement, SubscribeOptions, Subscription,
};

pub(crate) struct CoreSubscription {
    subscriber: Mutex<async_nats::Subscriber>,
    channel: Arc<str>,
    next_tag: AtomicU64,
    /// When serving requests: the client to answer with, and each delivery's inbox.
    replies: Option<(
        async_nats::Client,
        std::sync::Mutex<rustc_hash::FxHashMap<u64, async_nats::Subject>>,
    )>,
}

impl CoreSubscription {
    pub(crate) async fn start(broker: NatsBroker, options: SubscribeOptions) -> Result<Self> {
        Self::subscribe(broker, options.channel.clone(), options, false).await
    }

    /// Answers requests sent to the channel's request subject.
    pub(crate) async fn serve(broker: NatsBroker, options: SubscribeOptions) -> Result<Self> {
        Self::subscribe(
            broker,
            super::publisher::rpc_subject(&options.channel),
            options,
            true,
        )
        .await
    }

    async fn subscribe(
        broker: NatsBroker,
        subject: String,
        options: SubscribeOptions,
        serving: bool,
    ) -> Result<Self> {
        let channel: Arc<str> = Arc::from(options.channel.as_str());
        let subscriber = broker
            .inner
            .client
            .queue_subscribe(subject, options.group.clone())
            .await
            .map_err(|e| from_nats(e, "subscribe").with_channel(&*channel))?;
        // Publishes after `start` returns reach the subscription only once the server
        // has it: wait for the server to confirm, not for the socket to be written.
        broker
            .server_round_trip("subscribe")
            .await
            .map_err(|e| e.with_channel(&*channel))?;
        Ok(CoreSubscription {
            subscriber: Mutex::new(subscriber),
            channel,
            next_tag: AtomicU64::new(1),
            replies: serving.then(|| (broker.inner.client.clone(), Default::default())),
        })
    }

    fn deliver(&self, m: async_nats::Message) -> Delivery {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        if let (Some((_, inboxes)), Some(reply)) = (&self.replies, &m.reply) {
            inboxes.lock().unwrap().insert(tag, reply.clone());
        }
        let envelope = from_message(
            &self.channel,
            || tag.to_string(),
            m.headers.as_ref(),
            m.payload,
        );
        Delivery::new(envelope, DeliveryTag(tag, 0))
    }
}

#[async_trait]
impl Subscription for CoreSubscription {
    async fn recv(&self, max: usize) -> Result<Vec<Delivery>> {
        let mut sub = self.subscriber.lock().await;
        let Some(first) = sub.next().await else {
            return Ok(Vec::new());
        };
        let mut out = batch_of(self.deliver(first), max);
        while out.len() < max.max(1) {
            match sub.next().now_or_never() {
                Some(Some(m)) => out.push(self.deliver(m)),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn settle(&self, settlements: Vec<(DeliveryTag, Settlement)>) -> Result<()> {
        if let Some((client, inboxes)) = &self.replies {
            for (tag, settlement) in settlements {
                let Some(inbox) = inboxes.lock().unwrap().remove(&tag.0) else {
                    continue;
                };
                let (payload, headers) = match settlement {
                    Settlement::Reply(Ok(payload)) => (payload, async_nats::HeaderMap::new()),
                    Settlement::Reply(Err(error)) => {
                        let mut h = async_nats::HeaderMap::new();
                        h.insert(crate::header::REPLY_ERROR, error.replace(['\r', '\n'], " "));
                        (bytes::Bytes::new(), h)
                    }
                    _ => continue,
                };
                client
                    .publish_with_headers(inbox, headers, payload)
                    .await
                    .map_err(|e| from_nats(e, "reply").with_channel(&*self.channel))?;
            }
            return Ok(());
        }
        crate::core::settle_fire_and_forget(&settlements, "nats", "core NATS", &self.channel)
    }

    async fn close(&self) -> Result<()> {
        let _ = self.subscriber.lock().await.unsubscribe().await;
        Ok(())
    }
}
