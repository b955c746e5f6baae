//! Redis pub/sub mode: fire-and-forget; every subscriber connected at publish time gets
//! the message, nothing is kept, acknowledged, retried or dead-lettered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::codec::{from_fields, unframe};
use super::error::from_redis;
use super::connection::Connection;
use crate::core::{
    BackendChannel, Capabilities, Delivery, DeliveryTag, Envelope, Result, Settlement,
    SubscribeOptions, Subscription,
};

/// One subscriber connection receives a channel's messages in publish order, so the
/// consumer keeps same-key order; nothing else is guaranteed.
const CAPABILITIES: Capabilities = Capabilities {
    ordering_by_key: true,
    ..Capabilities::NONE
};

/// A channel in pub/sub mode: fire-and-forget, same-key order within a subscriber.
pub struct PubSubChannel {
    connection: Arc<Connection>,
    name: Arc<str>,
}

impl PubSubChannel {
    pub(crate) fn new(connection: Arc<Connection>, name: &Arc<str>) -> Self {
        PubSubChannel {
            connection,
            name: name.clone(),
        }
    }
}

impl BackendChannel for PubSubChannel {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn publish(&self, envelope: Envelope) -> impl Future<Output = Result<()>> + Send {
        let mut command = redis::cmd("PUBLISH");
        command
            .arg(&*self.name)
            .arg(super::codec::frame(&super::codec::to_fields(&envelope)));
        self.connection.send(command, "publish")
    }

    /// Every subscriber gets every message: pub/sub has no groups.
    async fn subscribe(&self, _: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        Ok(Box::new(
            PubSubSubscription::start(self.connection.clone(), self.name.clone()).await?,
        ))
    }
}

pub(crate) struct PubSubSubscription {
    rx: Mutex<tokio::sync::mpsc::UnboundedReceiver<Envelope>>,
    reader: JoinHandle<()>,
    next_tag: AtomicU64,
}

impl PubSubSubscription {
    pub(crate) async fn start(
        broker: Arc<Connection>,
        channel: Arc<str>,
    ) -> Result<Self> {
        let pubsub = subscribe(&broker, &channel).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(read(broker, channel.clone(), pubsub, tx));
        Ok(PubSubSubscription {
            rx: Mutex::new(rx),
            reader,
            next_tag: AtomicU64::new(1),
        })
    }
}

/// Passes the channel's messages on until the subscription closes. A lost connection
/// is opened again and the channel subscribed again (what was published meanwhile is
/// not received: nothing keeps it).
async fn read(
    broker: Arc<Connection>,
    channel: Arc<str>,
    mut pubsub: redis::aio::PubSub,
    tx: tokio::sync::mpsc::UnboundedSender<Envelope>,
) {
    loop {
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            let fields = unframe(msg.get_payload_bytes());
            if tx.send(from_fields(&channel, "", fields)).is_err() {
                return;
            }
        }
        drop(messages);
        tracing::warn!(channel = %channel, "Redis pub/sub connection lost; subscribing again (messages published meanwhile are not received)");
        let mut backoff = RESUBSCRIBE_FIRST_BACKOFF;
        pubsub = loop {
            if tx.is_closed() {
                return;
            }
            match subscribe(&broker, &channel).await {
                Ok(pubsub) => break pubsub,
                Err(e) => {
                    tracing::debug!(channel = %channel, error = %e, "subscribing again failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RESUBSCRIBE_MOST_BACKOFF);
                }
            }
        };
        tracing::info!(channel = %channel, "Redis pub/sub subscribed again");
    }
}

/// A pub/sub connection subscribed to `channel`.
async fn subscribe(broker: &Connection, channel: &str) -> Result<redis::aio::PubSub> {
    let mut pubsub = broker
        .client
        .get_async_pubsub()
        .await
        .map_err(|e| from_redis(e, "subscribe"))?;
    pubsub
        .subscribe(channel)
        .await
        .map_err(|e| from_redis(e, "subscribe"))?;
    Ok(pubsub)
}

/// Waits between tries at subscribing again after a lost connection.
const RESUBSCRIBE_FIRST_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);
const RESUBSCRIBE_MOST_BACKOFF: std::time::Duration = std::time::Duration::from_secs(2);

#[async_trait]
impl Subscription for PubSubSubscription {
    async fn recv(&self, max: usize) -> Result<Vec<Delivery>> {
        let mut rx = self.rx.lock().await;
        let Some(first) = rx.recv().await else {
            return Ok(Vec::new());
        };
        let mut out = vec![first];
        while out.len() < max.max(1) {
            match rx.try_recv() {
                Ok(e) => out.push(e),
                Err(_) => break,
            }
        }
        Ok(out
            .into_iter()
            .map(|e| {
                Delivery::new(
                    e,
                    DeliveryTag(self.next_tag.fetch_add(1, Ordering::Relaxed), 0),
                )
            })
            .collect())
    }

    async fn settle(&self, settlements: Vec<(DeliveryTag, Settlement)>) -> Result<()> {
        crate::core::settle_fire_and_forget(&settlements, "Redis pub/sub")
    }

    async fn close(&self) -> Result<()> {
        self.reader.abort();
        self.rx.lock().await.close();
        Ok(())
    }
}

impl Drop for PubSubSubscription {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
