//! Routers' presence on a channel: a sorted set per channel, each router's entry scored
//! with when it expires and renewed before that, so one that died stops counting.

use std::sync::Arc;

use super::connection::Connection;
use super::error::from_redis;
use super::names::Keys;
use crate::core::{presence_clock as now, Presence, Result, PRESENCE_TTL};

/// Adds `instance` to `channel`'s presence set, renewed until withdrawn.
pub(crate) async fn announce(
    connection: &Arc<Connection>,
    channel: &str,
    instance: &str,
) -> Result<Presence> {
    let key = Keys::presence(channel);
    let member = instance.to_string();
    let renew = {
        let (connection, key, member) = (connection.clone(), key.clone(), member.clone());
        move || {
            let (mut conn, key, member) = (connection.conn(), key.clone(), member.clone());
            async move {
                // Expired entries of routers that died go at the same time.
                redis::pipe()
                    .cmd("ZADD")
                    .arg(&key)
                    .arg(now() + PRESENCE_TTL.as_millis() as u64)
                    .arg(&member)
                    .ignore()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(&key)
                    .arg("-inf")
                    .arg(now())
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| from_redis(e, "announce"))
            }
        }
    };
    renew().await?;
    let connection = connection.clone();
    Ok(Presence::renewed(renew, move || async move {
        redis::cmd("ZREM")
            .arg(&key)
            .arg(&member)
            .query_async::<()>(&mut connection.conn())
            .await
            .map_err(|e| from_redis(e, "withdraw presence"))
    }))
}

/// The entries of `channel`'s presence set not expired.
pub(crate) async fn announced(connection: &Connection, channel: &str) -> Result<u64> {
    redis::cmd("ZCOUNT")
        .arg(Keys::presence(channel))
        .arg(format!("({}", now()))
        .arg("+inf")
        .query_async(&mut connection.conn())
        .await
        .map_err(|e| from_redis(e, "announced"))
}
