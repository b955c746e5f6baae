//! A Redis channel: the stream of Streams mode (and the enum of both modes). Its key
//! names are worked out once, when it opens.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::codec::{from_fields, parse_entries, write_fields};
use super::connection::Connection;
use super::error::from_redis;
use super::pubsub::PubSubChannel;
use super::subscription::StreamSubscription;
use super::names::Keys;
use crate::core::{
    Backlog, DeadLetterAction, DeadLetterSelector,
    unix_millis, BackendChannel, Capabilities, NewGroupStart, Envelope, Error, ErrorKind, Result, SubscribeOptions, Subscription,
};

crate::channel_enum! {
    /// A Redis channel in the configured mode.
    pub enum RedisChannel {
        /// `mode = "streams"`.
        Streams(StreamChannel),
        /// `mode = "pubsub"`.
        PubSub(PubSubChannel),
    }
    future RedisChannelFuture;
}

/// What Redis Streams guarantee.
const CAPABILITIES: Capabilities = Capabilities {
    persistent: true,
    survives_broker_restart: true,
    groups: true,
    ordering_by_key: true,
    ordering_across_members: false,
    retry: true,
    dead_letters: true,
    delay: true,
    native_redelivery_count: false,
    request_reply: false,
    presence: true,
    new_group_start: NewGroupStart::Retained,
};

/// A channel in Streams mode.
pub struct StreamChannel {
    connection: Arc<Connection>,
    name: Arc<str>,
    dead_letters: String,
    delayed: String,
}

impl StreamChannel {
    pub(crate) fn new(connection: Arc<Connection>, name: &Arc<str>) -> Self {
        StreamChannel {
            connection,
            dead_letters: Keys::dead_letters(name),
            delayed: Keys::delayed(name),
            name: name.clone(),
        }
    }

    /// Up to `limit` dead letters `selector` picks, oldest first, with their entry ids:
    /// read a page at a time, up to the last entry there when the scan began.
    async fn select_dead_letters(
        &self,
        selector: &DeadLetterSelector,
        limit: usize,
        operation: &'static str,
    ) -> Result<Vec<(String, Envelope)>> {
        const PAGE: usize = 512;
        let mut conn = self.connection.conn();
        let newest: redis::Value = redis::cmd("XREVRANGE")
            .arg(&self.dead_letters)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(|e| from_redis(e, operation))?;
        let Some((last, _)) = parse_entries(newest)?.into_iter().next() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut from = "-".to_string();
        while out.len() < limit {
            let page: redis::Value = redis::cmd("XRANGE")
                .arg(&self.dead_letters)
                .arg(&from)
                .arg(&last)
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut conn)
                .await
                .map_err(|e| from_redis(e, operation))?;
            let entries = parse_entries(page)?;
            let full_page = entries.len() == PAGE;
            for (id, fields) in entries {
                from = format!("({id}");
                let envelope = from_fields(&self.name, &id, fields);
                if selector.matches(&envelope) && out.len() < limit {
                    out.push((id, envelope));
                }
            }
            if !full_page {
                break;
            }
        }
        Ok(out)
    }
}

impl BackendChannel for StreamChannel {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn publish(&self, envelope: Envelope) -> impl Future<Output = Result<()>> + Send {
        self.connection
            .send(self.connection.xadd(&self.name, &envelope), "publish")
    }

    async fn publish_batch(&self, envelopes: Vec<Envelope>) -> Vec<Result<()>> {
        // One pipeline of XADDs: one write, one round trip, an answer per entry.
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for envelope in &envelopes {
            pipe.add_command(self.connection.xadd(&self.name, envelope));
        }
        let answered: redis::RedisResult<Vec<redis::RedisResult<redis::Value>>> =
            pipe.query_async(&mut self.connection.conn()).await;
        match answered {
            Ok(answers) => answers
                .into_iter()
                .map(|a| a.map(drop).map_err(|e| from_redis(e, "publish_batch")))
                .collect(),
            // The connection failed: none is known written (some may be; publishing
            // them again keeps at-least-once).
            Err(e) => {
                let error = from_redis(e, "publish_batch");
                envelopes
                    .iter()
                    .map(|_| Err(error.repeated()))
                    .collect()
            }
        }
    }

    async fn provision(&self, options: &SubscribeOptions) -> Result<()> {
        super::subscription::create_group(&self.connection, &self.name, &options.group, "provision")
            .await
    }

    async fn backlog(&self, group: &str) -> Result<Backlog> {
        // The group's lag (entries not yet delivered) and pending entries (delivered,
        // not acknowledged) on the channel's stream and the group's retry stream.
        let mut conn = self.connection.conn();
        let (mut waiting, mut in_flight) = (0, 0);
        for stream in [self.name.to_string(), Keys::retry_stream(&self.name, group)] {
            let groups: Vec<std::collections::HashMap<String, redis::Value>> =
                match redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&stream)
                    .query_async(&mut conn)
                    .await
                {
                    Ok(groups) => groups,
                    // Nothing published or retried yet.
                    Err(e) if e.to_string().contains("no such key") => continue,
                    Err(e) => return Err(from_redis(e, "backlog")),
                };
            let count = |g: &std::collections::HashMap<String, redis::Value>, field: &str| {
                g.get(field)
                    .and_then(|v| redis::from_redis_value::<Option<u64>>(v.clone()).ok())
                    .flatten()
            };
            let name_of = |g: &std::collections::HashMap<String, redis::Value>| {
                g.get("name")
                    .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            };
            let Some(g) = groups.iter().find(|g| name_of(g).as_deref() == Some(group)) else {
                if stream == *self.name {
                    // Not created yet: it starts at the stream's first entry.
                    let len: u64 = redis::cmd("XLEN")
                        .arg(&stream)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| from_redis(e, "backlog"))?;
                    waiting += len;
                }
                continue;
            };
            waiting += count(g, "lag").ok_or_else(|| {
                Error::new(
                    ErrorKind::Broker,
                    format!("Redis cannot count the lag of group {group:?} on {stream} (entries were deleted out of order)"),
                )
                .with_operation("backlog")
            })?;
            in_flight += count(g, "pending").unwrap_or(0);
        }
        // Retries waiting for their backoff, and delayed messages not yet due.
        let (retries, delayed): (u64, u64) = redis::pipe()
            .cmd("ZCARD")
            .arg(Keys::retry_schedule(&self.name, group))
            .cmd("ZCARD")
            .arg(Keys::delayed(&self.name))
            .query_async(&mut conn)
            .await
            .map_err(|e| from_redis(e, "backlog"))?;
        Ok(Backlog::new(waiting + retries + delayed, Some(in_flight)))
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        Ok(Box::new(
            StreamSubscription::start(self.connection.clone(), self.name.clone(), options).await?,
        ))
    }

    async fn publish_delayed(&self, envelope: Envelope, delay: Duration) -> Result<()> {
        let due = unix_millis(SystemTime::now() + delay);
        let mut hset = redis::cmd("HSET");
        hset.arg(Keys::delayed_message(&self.name, &envelope.id));
        write_fields(&mut hset, &envelope);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(hset)
            .ignore()
            .cmd("ZADD")
            .arg(&self.delayed)
            .arg(due)
            .arg(&*envelope.id)
            .ignore();
        pipe.query_async::<()>(&mut self.connection.conn())
            .await
            .map_err(|e| from_redis(e, "publish_delayed"))
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<Envelope>> {
        let entries = self
            .select_dead_letters(&DeadLetterSelector::All, limit, "dead_letters")
            .await?;
        Ok(entries.into_iter().map(|(_, envelope)| envelope).collect())
    }

    async fn settle_dead_letters(
        &self,
        selector: &DeadLetterSelector,
        action: DeadLetterAction,
        limit: usize,
    ) -> Result<usize> {
        let operation = action.operation();
        let entries = self.select_dead_letters(selector, limit, operation).await?;
        if entries.is_empty() {
            return Ok(0);
        }
        // Each entry moves in one MULTI: added to the channel, then deleted from the
        // dead letters. A concurrent replay may add one twice (a duplicate), never lose it.
        let mut pipe = redis::pipe();
        pipe.atomic();
        let settled = entries.len();
        for (id, envelope) in entries {
            if action == DeadLetterAction::Replay {
                pipe.add_command(self.connection.xadd(&self.name, &envelope.into_replayed()))
                    .ignore();
            }
            pipe.cmd("XDEL").arg(&self.dead_letters).arg(&id).ignore();
        }
        pipe.query_async::<()>(&mut self.connection.conn())
            .await
            .map_err(|e| from_redis(e, operation))?;
        Ok(settled)
    }
}
