//! Routers' presence on a channel (JetStream mode): one small stream per stream prefix
//! keeps the last message of each subject `<base>.<channel>.<instance>` for
//! `PRESENCE_TTL`; a router renews its subject before that, and purges it to withdraw.

use std::sync::Arc;

use async_nats::jetstream;
use futures::TryStreamExt;

use super::connection::Connection;
use super::error::from_nats;
use crate::core::{Presence, Result, PRESENCE_TTL};

/// The presence stream's subjects: `<base>.>`, apart from every channel's.
fn base(connection: &Connection) -> String {
    format!("_anybroker.presence.{}", connection.config.stream_prefix)
}

fn stream_name(connection: &Connection) -> String {
    // `~` is never in a channel's stream name, so this cannot be one.
    format!("{}~PRESENCE", connection.config.stream_prefix)
}

async fn stream(connection: &Connection) -> Result<jetstream::stream::Stream> {
    let config = jetstream::stream::Config {
        name: stream_name(connection),
        subjects: vec![format!("{}.>", base(connection))],
        max_messages_per_subject: 1,
        max_age: PRESENCE_TTL,
        storage: jetstream::stream::StorageType::Memory,
        ..Default::default()
    };
    connection.get_or_create_stream(&config, "presence").await
}

/// Publishes `instance`'s presence on `channel`, renewed until withdrawn.
pub(crate) async fn announce(
    connection: &Arc<Connection>,
    channel: &str,
    instance: &str,
) -> Result<Presence> {
    let stream = stream(connection).await?;
    let subject = format!("{}.{channel}.{instance}", base(connection));
    let renew = {
        let (connection, subject) = (connection.clone(), subject.clone());
        move || {
            let (connection, subject) = (connection.clone(), subject.clone());
            async move {
                let ack = connection
                    .js
                    .publish(subject, bytes::Bytes::new())
                    .await
                    .map_err(|e| from_nats(e, "announce"))?;
                ack.await.map_err(|e| from_nats(e, "announce"))?;
                Ok(())
            }
        }
    };
    renew().await?;
    Ok(Presence::renewed(renew, move || async move {
        stream
            .purge()
            .filter(subject)
            .await
            .map(|_| ())
            .map_err(|e| from_nats(e, "withdraw presence"))
    }))
}

/// The routers whose presence on `channel` has not expired.
pub(crate) async fn announced(connection: &Connection, channel: &str) -> Result<u64> {
    let stream = stream(connection).await?;
    let filter = format!("{}.{channel}.*", base(connection));
    let subjects = stream
        .info_with_subjects(filter)
        .await
        .map_err(|e| from_nats(e, "announced"))?;
    let count = subjects
        .try_fold(0u64, |n, _| async move { Ok(n + 1) })
        .await
        .map_err(|e| from_nats(e, "announced"))?;
    Ok(count)
}
