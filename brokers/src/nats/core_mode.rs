//! Core NATS mode: a queue subscription per group; fire-and-forget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use tokio::sync::Mutex;

use super::codec::{from_message, to_headers, IdHeaders, Origin};
use super::connection::Connection;
use super::error::from_nats;
use crate::core::{
    batch_of, BackendChannel, Capabilities, Delivery, DeliveryTag, Envelope, Result, Settlement,
    SubscribeOptions, Subscription,
};

/// What core NATS guarantees: queue groups, and order per key within a member.
const CAPABILITIES: Capabilities = Capabilities {
    groups: true,
    ordering_by_key: true,
    request_reply: true,
    ..Capabilities::NONE
};

/// A channel on core NATS: a plain subject.
pub struct CoreChannel {
    connection: Arc<Connection>,
    name: Arc<str>,
    subject: async_nats::Subject,
}

impl CoreChannel {
    pub(crate) fn new(connection: Arc<Connection>, name: &Arc<str>) -> Self {
        CoreChannel {
            connection,
            subject: async_nats::Subject::from(&**name),
            name: name.clone(),
        }
    }
}

impl BackendChannel for CoreChannel {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn publish(&self, envelope: Envelope) -> impl Future<Output = Result<()>> + Send {
        // The client's future (~900 bytes) boxed, and made here: the publish future
        // holds only the box (every backend's publish future through the registry is
        // as large as the largest, see docs/backends.md).
        // A refused header's error is boxed too, so it does not grow the future.
        let publish = to_headers(
            &envelope,
            IdHeaders::Core,
            self.connection.config.content_type_header,
        )
            .map(|headers| {
                Box::pin(self.connection.client.publish_with_headers(
                    self.subject.clone(),
                    headers,
                    envelope.payload,
                ))
            })
            .map_err(Box::new);
        async move {
            publish
                .map_err(|e| *e)?
                .await
                .map_err(|e| from_nats(e, "publish"))
        }
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        Ok(Box::new(
            CoreSubscription::start(self.connection.clone(), self.name.clone(), options).await?,
        ))
    }

    async fn request(&self, envelope: Envelope, timeout: std::time::Duration) -> Result<Envelope> {
        self.connection.request(envelope, timeout).await
    }

    async fn serve(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        Ok(Box::new(
            CoreSubscription::serve(self.connection.clone(), self.name.clone(), options).await?,
        ))
    }
}

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
    pub(crate) async fn start(
        connection: Arc<Connection>,
        channel: Arc<str>,
        options: SubscribeOptions,
    ) -> Result<Self> {
        let subject = channel.to_string();
        Self::subscribe(connection, channel, subject, options, false).await
    }

    /// Answers requests sent to the channel's request subject.
    pub(crate) async fn serve(
        connection: Arc<Connection>,
        channel: Arc<str>,
        options: SubscribeOptions,
    ) -> Result<Self> {
        let subject = super::connection::rpc_subject(&channel);
        Self::subscribe(connection, channel, subject, options, true).await
    }

    async fn subscribe(
        connection: Arc<Connection>,
        channel: Arc<str>,
        subject: String,
        options: SubscribeOptions,
        serving: bool,
    ) -> Result<Self> {
        let subscriber = connection
            .client
            .queue_subscribe(subject, options.group.clone())
            .await
            .map_err(|e| from_nats(e, "subscribe"))?;
        // Publishes after `start` returns reach the subscription only once the server
        // has it: wait for the server to confirm, not for the socket to be written.
        connection
            .server_round_trip("subscribe")
            .await?;
        Ok(CoreSubscription {
            subscriber: Mutex::new(subscriber),
            channel,
            next_tag: AtomicU64::new(1),
            replies: serving.then(|| (connection.client.clone(), Default::default())),
        })
    }

    fn deliver(&self, m: async_nats::Message) -> Delivery {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        if let (Some((_, inboxes)), Some(reply)) = (&self.replies, &m.reply) {
            inboxes.lock().unwrap().insert(tag, reply.clone());
        }
        let envelope = from_message(&self.channel, m.headers.as_ref(), m.payload, Origin::unstored);
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
                    .map_err(|e| from_nats(e, "reply"))?;
            }
            return Ok(());
        }
        crate::core::settle_fire_and_forget(&settlements, "core NATS")
    }

    async fn close(&self) -> Result<()> {
        let _ = self.subscriber.lock().await.unsubscribe().await;
        Ok(())
    }
}
