//! Routers' presence on a channel: each router consumes from the channel's presence
//! queue (which never holds a message), and the queue's consumer count is how many
//! routers use the channel. A router whose connection closes stops counting at once.

use std::sync::{Arc, Mutex};

use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};

use super::connection::Link;
use super::error::from_lapin;
use super::names::Names;
use super::topology;
use crate::core::{Presence, Result};

/// The channel a router consumes the presence queue on, and its consumer.
type Consuming = Arc<Mutex<Option<(Channel, Consumer)>>>;

/// Consumes `channel`'s presence queue as `instance`; after a reconnect, consumes
/// again on the new connection.
pub(crate) async fn announce(link: &Arc<Link>, channel: &str, instance: &str) -> Result<Presence> {
    let consuming: Consuming = Arc::default();
    let renew = {
        let (link, channel, tag) = (link.clone(), channel.to_string(), instance.to_string());
        let consuming = consuming.clone();
        move || {
            let (link, channel, tag) = (link.clone(), channel.clone(), tag.clone());
            let consuming = consuming.clone();
            async move {
                let alive = consuming
                    .lock()
                    .unwrap()
                    .as_ref()
                    .is_some_and(|(ch, _)| ch.status().connected());
                if !alive {
                    let now = consume(&link, &channel, &tag).await?;
                    *consuming.lock().unwrap() = Some(now);
                }
                Ok(())
            }
        }
    };
    renew().await?;
    Ok(Presence::renewed(renew, move || async move {
        let taken = consuming.lock().unwrap().take();
        match taken {
            // Closing the channel cancels its consumer.
            Some((ch, _)) => ch
                .close(200, "withdrawn".into())
                .await
                .map_err(|e| from_lapin(e, "withdraw presence")),
            None => Ok(()),
        }
    }))
}

async fn consume(link: &Link, channel: &str, tag: &str) -> Result<(Channel, Consumer)> {
    let ch = link.session().await?.declaring_channel().await?;
    let queue = topology::declare_presence(&ch, channel).await?;
    let consumer = ch
        .basic_consume(
            queue.as_str().into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| from_lapin(e, "announce"))?;
    Ok((ch, consumer))
}

/// The consumers of `channel`'s presence queue: none where it does not exist.
pub(crate) async fn announced(link: &Link, channel: &str) -> Result<u64> {
    Ok(link
        .queue_counts(&Names::presence(channel))
        .await?
        .map_or(0, |q| u64::from(q.consumer_count())))
}
