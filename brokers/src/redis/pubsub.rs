//! Redis pub/sub mode: fire-and-forget; every subscriber connected at publish time gets
//! the message, nothing is kept, acknowledged, retried or dead-lettered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::codec::{from_fields, unframe};
use super::error::from_redis;
use super::RedisBroker;
use crate::core::{
    Delivery, DeliveryTag, Envelope, Result, Settlement, SubscribeOptions, Subscription,
};

pub(crate) struct PubSubSubscription {
    rx: Mutex<tokio::sync::mpsc::UnboundedReceiver<Envelope>>,
    reader: JoinHandle<()>,
    channel: Arc<str>,
    next_tag: AtomicU64,
}

impl PubSubSubscription {
    pub(crate) async fn start(broker: RedisBroker, options: SubscribeOptions) -> Result<Self> {
        let channel: Arc<str> = Arc::from(options.channel.as_str());
        let mut pubsub = broker
            .inner
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| from_redis(e, "subscribe").with_channel(&*channel))?;
        pubsub
            .subscribe(&*channel)
            .await
            .map_err(|e| from_redis(e, "subscribe").with_channel(&*channel))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let ch = channel.clone();
        let reader = tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                let fields = unframe(msg.get_payload_bytes());
                if tx.send(from_fields(&ch, "", fields)).is_err() {
                    return;
                }
            }
            tracing::warn!(channel = %ch, "Redis pub/sub connection ended; messages published meanwhile are not received");
        });
        Ok(PubSubSubscription {
            rx: Mutex::new(rx),
            reader,
            channel,
            next_tag: AtomicU64::new(1),
        })
    }
}

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
        crate::core::settle_fire_and_forget(&settlements, "redis", "Redis pub/sub", &self.channel)
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
