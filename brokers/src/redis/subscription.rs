//! A member of a consumer group reading a channel's Redis stream (and its group's
//! retry stream).

use std::collections::VecDeque;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::Value;

use super::codec::{
    from_fields, parse_autoclaim, parse_entries, parse_read, text, write_fields, Entry,
};
use super::error::from_redis;
use super::connection::Connection;
use super::names::Keys;
use crate::core::{
    new_message_id, unix_millis, Delivery, DeliveryTag, Envelope, Error, InFlightTable, Result,
    Settlement, SubscribeOptions, Subscription,
};

/// Moves due entries of two schedules (sorted set + one hash per message) to their
/// streams; returns the earliest remaining due time in ms, or -1.
const PROMOTE: &str = r#"
local next_due = -1
for pair = 0, 1 do
  local schedule, stream = KEYS[1 + pair * 2], KEYS[2 + pair * 2]
  local prefix = ARGV[3 + pair]
  local ids = redis.call('ZRANGEBYSCORE', schedule, '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
  for _, id in ipairs(ids) do
    local fields = redis.call('HGETALL', prefix .. id)
    if #fields > 0 then
      redis.call('XADD', stream, 'MAXLEN', '~', ARGV[5], '*', unpack(fields))
    end
    redis.call('DEL', prefix .. id)
    redis.call('ZREM', schedule, id)
  end
  local head = redis.call('ZRANGE', schedule, 0, 0, 'WITHSCORES')
  if #head > 0 then
    local due = tonumber(head[2])
    if next_due < 0 or due < next_due then next_due = due end
  end
end
return next_due
"#;

/// Dead letters record the stream entry they came from.
pub(crate) const ORIGINAL_ENTRY_ID: &str = "x-anybroker-redis-entry-id";

/// How often timed messages are looked for at most, when none is known to be due.
const PROMOTE_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Source {
    Main = 0,
    Retry = 1,
}

struct InFlight {
    source: Source,
    id: String,
    envelope: Envelope,
}

struct Timers {
    last_promote: Option<Instant>,
    next_due_ms: Option<u64>,
    last_claim: Option<Instant>,
}

pub(crate) struct StreamSubscription {
    connection: Arc<Connection>,
    channel: Arc<str>,
    group: String,
    consumer: String,
    retry_stream: String,
    blocking: tokio::sync::Mutex<Option<(MultiplexedConnection, i64)>>,
    in_flight: InFlightTable<InFlight>,
    overflow: Mutex<VecDeque<(Source, Entry)>>,
    timers: Mutex<Timers>,
    closed: AtomicBool,
    /// Set when the blocking connection was lost: a read may have taken entries whose
    /// reply never came. They are pending to this member, which reads them first once
    /// connected again (otherwise they would wait for `claim_idle`).
    reread_own_pending: AtomicBool,
    promote: redis::Script,
}

/// Creates `group` on the channel and on its retry stream, from the start of each (so
/// it reads every entry the stream holds); an existing group is kept as it is.
pub(crate) async fn create_group(
    connection: &Connection,
    channel: &str,
    group: &str,
    operation: &'static str,
) -> Result<()> {
    let mut conn = connection.conn();
    for stream in [channel, &Keys::retry_stream(channel, group)] {
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match r {
            Ok(()) => {}
            Err(e) if is_busy_group(&e) => {}
            Err(e) => return Err(from_redis(e, operation)),
        }
    }
    Ok(())
}

fn is_busy_group(e: &redis::RedisError) -> bool {
    e.code() == Some("BUSYGROUP")
}

fn is_no_group(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

impl StreamSubscription {
    pub(crate) async fn start(
        connection: Arc<Connection>,
        channel: Arc<str>,
        options: SubscribeOptions,
    ) -> Result<Self> {
        let sub = StreamSubscription {
            retry_stream: Keys::retry_stream(&channel, &options.group),
            consumer: format!("anybroker-{}", new_message_id()),
            group: options.group,
            channel,
            connection,
            blocking: tokio::sync::Mutex::new(None),
            in_flight: InFlightTable::default(),
            overflow: Mutex::new(VecDeque::new()),
            timers: Mutex::new(Timers {
                last_promote: None,
                next_due_ms: None,
                last_claim: None,
            }),
            closed: AtomicBool::new(false),
            reread_own_pending: AtomicBool::new(false),
            promote: redis::Script::new(PROMOTE),
        };
        sub.create_groups().await?;
        sub.blocking_conn().await?;
        Ok(sub)
    }

    fn err(&self, e: redis::RedisError, operation: &'static str) -> Error {
        from_redis(e, operation)
    }

    fn stream(&self, source: Source) -> &str {
        match source {
            Source::Main => &self.channel,
            Source::Retry => &self.retry_stream,
        }
    }

    async fn create_groups(&self) -> Result<()> {
        create_group(&self.connection, &self.channel, &self.group, "subscribe").await
    }

    /// The connection for blocking reads (one per member, so a blocked read never
    /// delays other commands), opened again after a failure.
    async fn blocking_conn(&self) -> Result<(MultiplexedConnection, i64)> {
        let mut slot = self.blocking.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = &self.connection.config;
        let conn_config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(config.block + config.response_timeout));
        let mut conn = self
            .connection
            .client
            .get_multiplexed_async_connection_with_config(&conn_config)
            .await
            .map_err(|e| self.err(e, "connect"))?;
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e, "connect"))?;
        *slot = Some((conn.clone(), id));
        Ok((conn, id))
    }

    async fn drop_blocking_conn(&self) {
        *self.blocking.lock().await = None;
        self.reread_own_pending.store(true, Ordering::Release);
    }

    /// The entries pending to this member that it is not handling or holding: taken
    /// by a read whose reply was lost with its connection.
    async fn own_pending(&self) -> Result<Vec<(Source, Entry)>> {
        let mut out = Vec::new();
        for source in [Source::Retry, Source::Main] {
            let mut after = "0-0".to_string();
            loop {
                // An ID other than `>` reads this consumer's own pending entries.
                let reply: redis::RedisResult<Value> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg("COUNT")
                    .arg(500)
                    .arg("STREAMS")
                    .arg(self.stream(source))
                    .arg(&after)
                    .query_async(&mut self.connection.conn())
                    .await;
                let reply = match reply {
                    Ok(r) => r,
                    // Gone with the stream (a server restarted without persistence).
                    Err(e) if is_no_group(&e) => break,
                    Err(e) => return Err(self.err(e, "read own pending")),
                };
                let entries: Vec<Entry> = parse_read(reply)?
                    .into_iter()
                    .flat_map(|(_, entries)| entries)
                    .collect();
                let Some(last) = entries.last() else {
                    break;
                };
                after = last.0.clone();
                let overflow = self.overflow.lock().unwrap();
                for entry in entries {
                    let held = self
                        .in_flight
                        .any(|f| f.source == source && f.id == entry.0)
                        || overflow.iter().any(|(s, e)| *s == source && e.0 == entry.0);
                    if !held {
                        out.push((source, entry));
                    }
                }
            }
        }
        if !out.is_empty() {
            tracing::info!(channel = %self.channel, group = %self.group, count = out.len(), "read again entries whose delivery was lost with the connection");
        }
        Ok(out)
    }

    /// Runs the promotion script when something may be due; returns how long a read
    /// may block before the next known due time.
    async fn promote_due(&self) -> Result<Duration> {
        let now_ms = unix_millis(SystemTime::now());
        let block = self.connection.config.block;
        {
            let t = self.timers.lock().unwrap();
            let recently = t
                .last_promote
                .is_some_and(|l| l.elapsed() < PROMOTE_INTERVAL);
            let known_due = t.next_due_ms.is_some_and(|d| d <= now_ms);
            if recently && !known_due {
                let until_due = t
                    .next_due_ms
                    .map(|d| Duration::from_millis(d - now_ms))
                    .unwrap_or(block);
                return Ok(until_due.min(block).min(PROMOTE_INTERVAL));
            }
        }
        let config = &self.connection.config;
        let next: i64 = self
            .promote
            .key(Keys::delayed(&self.channel))
            .key(&*self.channel)
            .key(Keys::retry_schedule(&self.channel, &self.group))
            .key(&self.retry_stream)
            .arg(now_ms)
            .arg(1000)
            .arg(Keys::delayed_message(&self.channel, ""))
            .arg(Keys::retry_message(&self.channel, &self.group, ""))
            .arg(config.max_len)
            .invoke_async(&mut self.connection.conn())
            .await
            .map_err(|e| self.err(e, "promote"))?;
        let mut t = self.timers.lock().unwrap();
        t.last_promote = Some(Instant::now());
        t.next_due_ms = (next >= 0).then_some(next as u64);
        let until_due = t
            .next_due_ms
            .map(|d| Duration::from_millis(d.saturating_sub(now_ms)))
            .unwrap_or(block);
        Ok(until_due.clamp(Duration::from_millis(1), block))
    }

    /// Takes over entries a vanished member left pending for longer than `claim_idle`.
    async fn reclaim(&self, max: usize) -> Result<Vec<(Source, Entry)>> {
        let claim_idle = self.connection.config.claim_idle;
        {
            let mut t = self.timers.lock().unwrap();
            if t.last_claim.is_some_and(|l| l.elapsed() < claim_idle / 2) {
                return Ok(Vec::new());
            }
            t.last_claim = Some(Instant::now());
        }
        let mut out = Vec::new();
        for source in [Source::Retry, Source::Main] {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(self.stream(source))
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(claim_idle.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(max)
                .query_async(&mut self.connection.conn())
                .await
                .map_err(|e| self.err(e, "reclaim"))?;
            let (_, entries) = parse_autoclaim(reply)?;
            for entry in entries {
                // Our own slow handler's entry is not a vanished member's.
                if !self
                    .in_flight
                    .any(|f| f.source == source && f.id == entry.0)
                {
                    out.push((source, entry));
                }
            }
        }
        if !out.is_empty() {
            tracing::info!(channel = %self.channel, group = %self.group, count = out.len(), "reclaimed pending entries of a vanished consumer");
        }
        Ok(out)
    }

    async fn read(&self, max: usize, block: Duration) -> Result<Vec<(Source, Entry)>> {
        let (mut conn, _) = self.blocking_conn().await?;
        let reply: redis::RedisResult<Value> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&self.retry_stream)
            .arg(&*self.channel)
            .arg(">")
            .arg(">")
            .query_async(&mut conn)
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) if is_no_group(&e) => {
                // The streams or groups vanished (e.g. a server restarted without
                // persistence): create them again.
                self.create_groups().await?;
                return Ok(Vec::new());
            }
            Err(e) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.drop_blocking_conn().await;
                }
                return Err(self.err(e, "read"));
            }
        };
        let mut out = Vec::new();
        for (key, entries) in parse_read(reply)? {
            let source = if key == self.retry_stream {
                Source::Retry
            } else {
                Source::Main
            };
            out.extend(entries.into_iter().map(|e| (source, e)));
        }
        Ok(out)
    }

    fn deliver(&self, entries: Vec<(Source, Entry)>, max: usize) -> Vec<Delivery> {
        let mut overflow = self.overflow.lock().unwrap();
        overflow.extend(entries);
        let n = overflow.len().min(max);
        let mut in_flight = self.in_flight.batch();
        let mut out = Vec::with_capacity(n);
        for (source, (id, fields)) in overflow.drain(..n) {
            let envelope = from_fields(&self.channel, &id, fields);
            let tag = in_flight.insert(InFlight {
                source,
                id,
                envelope: envelope.clone(),
            });
            out.push(Delivery::new(envelope, tag));
        }
        out
    }

    /// Acks `id` on its stream (and deletes it from the group's own retry stream).
    fn ack(&self, pipe: &mut redis::Pipeline, source: Source, ids: &[&str]) {
        if ids.is_empty() {
            return;
        }
        pipe.cmd("XACK")
            .arg(self.stream(source))
            .arg(&self.group)
            .arg(ids)
            .ignore();
        if source == Source::Retry {
            pipe.cmd("XDEL").arg(&self.retry_stream).arg(ids).ignore();
        }
    }

    /// Hands entries pending to this member back to the group (same attempt).
    async fn release_pending(&self) -> Result<usize> {
        let mut released = 0;
        for source in [Source::Retry, Source::Main] {
            loop {
                let pending: Value = redis::cmd("XPENDING")
                    .arg(self.stream(source))
                    .arg(&self.group)
                    .arg("-")
                    .arg("+")
                    .arg(500)
                    .arg(&self.consumer)
                    .query_async(&mut self.connection.conn())
                    .await
                    .map_err(|e| self.err(e, "close"))?;
                let ids: Vec<String> = match &pending {
                    Value::Array(rows) => rows
                        .iter()
                        .filter_map(|r| match r {
                            Value::Array(cols) => cols.first().and_then(text),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                if ids.is_empty() {
                    break;
                }
                // Claiming to ourselves returns the entries' contents.
                let claimed: Value = redis::cmd("XCLAIM")
                    .arg(self.stream(source))
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg(0)
                    .arg(&ids)
                    .query_async(&mut self.connection.conn())
                    .await
                    .map_err(|e| self.err(e, "close"))?;
                let mut pipe = redis::pipe();
                pipe.atomic();
                for (id, fields) in parse_entries(claimed)? {
                    let envelope = from_fields(&self.channel, &id, fields);
                    pipe.add_command(self.connection.xadd(&self.retry_stream, &envelope))
                        .ignore();
                }
                let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                self.ack(&mut pipe, source, &refs);
                pipe.query_async::<()>(&mut self.connection.conn())
                    .await
                    .map_err(|e| self.err(e, "close"))?;
                released += ids.len();
            }
        }
        Ok(released)
    }
}

#[async_trait]
impl Subscription for StreamSubscription {
    async fn recv(&self, max: usize) -> Result<Vec<Delivery>> {
        let max = max.max(1);
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Ok(Vec::new());
            }
            if !self.overflow.lock().unwrap().is_empty() {
                return Ok(self.deliver(Vec::new(), max));
            }
            if self.reread_own_pending.swap(false, Ordering::AcqRel) {
                let lost = match self.own_pending().await {
                    Ok(lost) => lost,
                    Err(e) => {
                        self.reread_own_pending.store(true, Ordering::Release);
                        return Err(e);
                    }
                };
                if !lost.is_empty() {
                    return Ok(self.deliver(lost, max));
                }
            }
            let block = self.promote_due().await?;
            let claimed = self.reclaim(max).await?;
            if !claimed.is_empty() {
                return Ok(self.deliver(claimed, max));
            }
            let entries = self.read(max, block).await?;
            if !entries.is_empty() {
                return Ok(self.deliver(entries, max));
            }
        }
    }

    async fn settle(&self, settlements: Vec<(DeliveryTag, Settlement)>) -> Result<()> {
        let mut pipe = redis::pipe();
        let mut only_acks = true;
        // Entry ids to ack, per source: [main stream, retry stream].
        let mut acks: [Vec<String>; 2] = Default::default();
        let mut unsupported = None;
        let unknown = self.in_flight.take_each(settlements, |f, settlement| {
            let mut envelope = f.envelope;
            only_acks &= matches!(settlement, Settlement::Ack);
            match settlement {
                Settlement::Ack => {}
                Settlement::Retry { delay, error } => {
                    envelope.record_failure(&error);
                    let member = new_message_id();
                    let mut hset = redis::cmd("HSET");
                    hset.arg(Keys::retry_message(&self.channel, &self.group, &member));
                    write_fields(&mut hset, &envelope);
                    pipe.add_command(hset).ignore();
                    let due = unix_millis(SystemTime::now() + delay);
                    pipe.cmd("ZADD")
                        .arg(Keys::retry_schedule(&self.channel, &self.group))
                        .arg(due)
                        .arg(&*member)
                        .ignore();
                    let mut t = self.timers.lock().unwrap();
                    t.next_due_ms = Some(t.next_due_ms.map_or(due, |d| d.min(due)));
                }
                Settlement::DeadLetter(dead) => {
                    let mut dead = envelope.into_dead_letter(&dead);
                    dead.headers
                        .insert(ORIGINAL_ENTRY_ID.to_string(), f.id.clone());
                    pipe.add_command(self.connection.xadd(&Keys::dead_letters(&self.channel), &dead))
                        .ignore();
                }
                Settlement::Release => {
                    pipe.add_command(self.connection.xadd(&self.retry_stream, &envelope))
                        .ignore();
                }
                #[allow(unreachable_patterns)]
                _ => {
                    unsupported.get_or_insert(
                        Error::unsupported("unknown settlement"),
                    );
                    return;
                }
            }
            acks[f.source as usize].push(f.id);
        });
        if let Some(e) = unsupported {
            return Err(e);
        }
        for (source, ids) in [Source::Main, Source::Retry].into_iter().zip(&acks) {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            self.ack(&mut pipe, source, &refs);
        }
        if acks.iter().any(|ids| !ids.is_empty()) {
            // Everything of the batch in one MULTI: no dead letter or retry without the
            // ack of its original, and no ack without them. Plain acks need no MULTI.
            if !only_acks {
                pipe.atomic();
            }
            pipe.query_async::<()>(&mut self.connection.conn())
                .await
                .map_err(|e| self.err(e, "settle"))?;
        }
        unknown.error()
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // A read cancelled by the runtime may still be blocked on the server; end it,
        // and wait for it on its connection, so nothing it takes stays pending to us.
        if let Some((mut conn, id)) = self.blocking.lock().await.take() {
            let _: redis::RedisResult<Value> = redis::cmd("CLIENT")
                .arg("UNBLOCK")
                .arg(id)
                .query_async(&mut self.connection.conn())
                .await;
            let _: redis::RedisResult<Value> = redis::cmd("PING").query_async(&mut conn).await;
        }
        self.overflow.lock().unwrap().clear();
        self.in_flight.drain();
        let released = self.release_pending().await?;
        if released > 0 {
            tracing::debug!(channel = %self.channel, released, "released unhandled entries at close");
        }
        Ok(())
    }
}
