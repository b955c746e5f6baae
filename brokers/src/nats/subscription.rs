//! A member of a consumer group: a durable JetStream pull consumer on the channel's
//! stream, plus the mover of the channel's delayed messages.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_trait::async_trait;
use futures::StreamExt;
use rustc_hash::FxHashMap;
use tokio::task::JoinHandle;

use super::attempts::AttemptCounts;
use super::codec::{consumer_name, from_message, same_id_headers, Origin, DUE};
use super::error::from_nats;
use super::connection::{Connection, DELAYED, DELAY_MOVER, DLT};
use super::puller::Puller;
use crate::core::{
    header, unix_millis, Delivery, DeliveryTag, Error, InFlightTable, Result, Settlement,
    SubscribeOptions, Subscription,
};
use crate::unix_micros;

/// A delivery not settled yet. Its envelope is rebuilt from the message if it is
/// dead-lettered, rather than cloned for every delivery.
struct InFlight {
    message: jetstream::Message,
    stream_sequence: u64,
    attempt: u32,
    /// Whether `attempt` is written in the attempt counts (false for an unfailed first
    /// attempt, which is not written).
    counted: bool,
}

pub(crate) struct JetStreamSubscription {
    connection: Arc<Connection>,
    channel: Arc<str>,
    /// `None` once closed: the member pulls no more.
    puller: tokio::sync::Mutex<Option<Puller>>,
    attempts: AttemptCounts,
    in_flight: InFlightTable<InFlight>,
    /// First failure time and last error of messages being retried by this member:
    /// JetStream redelivers the original message, so these live here (best effort).
    failures: Mutex<FxHashMap<u64, (u64, String)>>,
    closed: AtomicBool,
    mover: JoinHandle<()>,
    /// The group's durable consumer: part of a dead letter's deduplication key, so two
    /// groups dead-lettering one message store two dead letters.
    consumer: String,
}

/// The group's durable consumer on the channel's stream (both streams created if
/// missing), and its name. A new one starts at the stream's oldest message; an
/// existing one keeps its position and settings.
pub(crate) async fn create_consumer(
    connection: &Connection,
    channel: &str,
    options: &SubscribeOptions,
    operation: &'static str,
) -> Result<(jetstream::consumer::Consumer<pull::Config>, String)> {
    let stream = connection.ensure_stream(channel, "", channel).await?;
    connection
        .ensure_stream(channel, DLT, &format!("{channel}.dlt"))
        .await?;
    let name = consumer_name(&options.group);
    let config = pull::Config {
        durable_name: Some(name.clone()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: connection.config.ack_wait,
        max_ack_pending: (options.prefetch * 2) as i64,
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer(&name, config)
        .await
        .map_err(|e| from_nats(e, operation))?;
    Ok((consumer, name))
}

impl JetStreamSubscription {
    pub(crate) async fn start(
        connection: Arc<Connection>,
        channel: Arc<str>,
        options: SubscribeOptions,
    ) -> Result<Self> {
        let (consumer, name) = create_consumer(&connection, &channel, &options, "subscribe").await?;
        let attempts = AttemptCounts::open(&connection, &channel, &name).await?;
        let puller = Puller::open(
            &connection.client,
            &connection.js,
            &consumer,
            options.prefetch,
        )
        .await?;
        let mover = tokio::spawn(move_delayed(connection.clone(), channel.clone()));
        Ok(JetStreamSubscription {
            connection,
            channel,
            puller: tokio::sync::Mutex::new(Some(puller)),
            attempts,
            in_flight: InFlightTable::default(),
            failures: Mutex::new(FxHashMap::default()),
            closed: AtomicBool::new(false),
            mover,
            consumer: name,
        })
    }

    /// The attempt a message the server delivered `delivered` times (more than once)
    /// is on: one more than its count, or the server's count if the count cannot be
    /// read (the attempt then reads high, never low).
    async fn attempt_of_redelivery(&self, delivered: u64, sequence: u64) -> u32 {
        let most = u32::try_from(delivered).unwrap_or(u32::MAX);
        match self.attempts.of(sequence).await {
            Some(before) => before.saturating_add(1).min(most),
            None => most,
        }
    }

    /// Writes a redelivery's attempt before it is handed out: a member that dies
    /// during the attempt has made it. Setting a count is idempotent, so a receive
    /// cancelled meanwhile writes it again.
    async fn count_attempt(&self, sequence: u64, attempt: u32) {
        if let Err(e) = self.attempts.record(sequence, attempt).await {
            tracing::warn!(channel = %self.channel, error = %e, "counting an attempt failed; the next one may read low");
        }
    }

    fn deliver(
        &self,
        message: jetstream::Message,
        sequence: u64,
        attempt: u32,
        counted: bool,
    ) -> Delivery {
        let mut envelope = self.envelope_of(&message, attempt);
        if let Some((first, error)) = self.failures.lock().unwrap().get(&sequence) {
            envelope
                .headers
                .insert(header::FIRST_FAILED_AT.to_string(), first.to_string());
            envelope
                .headers
                .insert(header::ERROR.to_string(), error.clone());
        }
        let tag = self.in_flight.insert(InFlight {
            message,
            stream_sequence: sequence,
            attempt,
            counted,
        });
        Delivery::new(envelope, tag)
    }

    /// Gives a message back to the group unhandled. An attempt counted when it was
    /// handed out is taken back first.
    async fn give_back(
        &self,
        message: &jetstream::Message,
        sequence: u64,
        counted: Option<u32>,
    ) -> Result<()> {
        if let Some(attempt) = counted {
            if let Err(e) = self.attempts.record(sequence, attempt - 1).await {
                // Given back all the same: its next attempt reads one high.
                tracing::warn!(channel = %self.channel, error = %e, "taking back an attempt failed");
            }
        }
        message
            .ack_with(AckKind::Nak(None))
            .await
            .map_err(|e| from_nats(NatsError(e.to_string()), "release"))
    }

    /// Carries out one settlement other than a plain ack.
    async fn settle_one(&self, f: InFlight, settlement: Settlement) -> Result<()> {
        let result = match settlement {
            Settlement::Ack => {
                self.attempts.forget(f.stream_sequence).await;
                f.message.ack().await
            }
            Settlement::Retry { delay, error } => {
                let now = unix_millis(SystemTime::now());
                {
                    let mut failures = self.failures.lock().unwrap();
                    let entry = failures
                        .entry(f.stream_sequence)
                        .or_insert((now, String::new()));
                    entry.1 = error;
                }
                // A first attempt is counted only now that it failed.
                if !f.counted {
                    if let Err(e) = self.attempts.record(f.stream_sequence, f.attempt).await {
                        tracing::warn!(channel = %self.channel, error = %e, "counting a failed attempt failed; the next one reads low");
                    }
                }
                f.message.ack_with(AckKind::Nak(Some(delay))).await
            }
            Settlement::DeadLetter(dead) => {
                let mut envelope = self.envelope_of(&f.message, f.attempt);
                envelope.headers.remove(header::FIRST_FAILED_AT);
                let first_failure = self.failures.lock().unwrap().remove(&f.stream_sequence);
                if let Some((first, _)) = first_failure {
                    envelope
                        .headers
                        .insert(header::FIRST_FAILED_AT.to_string(), first.to_string());
                }
                let dead = envelope.into_dead_letter(&dead);
                // Under a key of its own: a replayed message dead-lettered again keeps
                // its id, which its first dead letter was stored under; and each group
                // that gives up on a message stores its own dead letter.
                let dedup_key = format!(
                    "{}.dead.{}.{}",
                    dead.id, self.consumer, f.stream_sequence
                );
                let ids = same_id_headers(&dead.id, dedup_key);
                // Stored in the dead-letter stream before the original is terminated.
                self.connection
                    .js_publish(format!("{}.dlt", self.channel), dead, &ids)
                    .await?;
                if f.counted {
                    self.attempts.forget(f.stream_sequence).await;
                }
                f.message.ack_with(AckKind::Term).await
            }
            Settlement::Release => {
                return self
                    .give_back(&f.message, f.stream_sequence, f.counted.then_some(f.attempt))
                    .await;
            }
            #[allow(unreachable_patterns)]
            _ => return Err(Error::unsupported("unknown settlement")),
        };
        result.map_err(|e| from_nats(NatsError(e.to_string()), "settle"))
    }

    fn envelope_of(
        &self,
        message: &jetstream::Message,
        attempt: u32,
    ) -> crate::Envelope {
        let mut envelope = from_message(
            &self.channel,
            message.headers.as_ref(),
            message.payload.clone(),
            || Origin::of_reply(message.reply.as_deref()),
        );
        envelope.attempt = attempt;
        envelope
    }
}

#[async_trait]
impl Subscription for JetStreamSubscription {
    async fn recv(&self, max: usize) -> Result<Vec<Delivery>> {
        if self.closed.load(Ordering::Acquire) || self.connection.is_closed() {
            return Ok(Vec::new());
        }
        let mut guard = self.puller.lock().await;
        let Some(puller) = guard.as_mut() else {
            return Ok(Vec::new());
        };
        if puller.held.is_empty() {
            let first = puller.next().await?;
            puller.held.push_back(first.into());
            while puller.held.len() < max.max(1) {
                match puller.try_next() {
                    Some(m) => puller.held.push_back(m.into()),
                    None => break,
                }
            }
            // Asked for again now, not at the next receive: the next messages are on
            // their way while these are handled (with a window of 1, the next one
            // arrives during this one's handling rather than after its ack). A failed
            // ask is asked again, and reported, by the next receive.
            let _ = puller.ask().await;
        }
        // A message leaves `held` only once it is a delivery in flight: cancelled while
        // attempts are counted, it stays (with its attempt once decided) for the next
        // receive or the close. The batch's counts are read, then written, all at once.
        let take = puller.held.len().min(max.max(1));
        // Only a redelivery has its attempt counted: a batch of first deliveries, the
        // common case, skips all of it.
        if puller.held.iter().take(take).any(|held| held.delivered > 1) {
            let undecided: Vec<(usize, u64, u64)> = puller
                .held
                .iter()
                .take(take)
                .enumerate()
                .filter(|(_, held)| held.delivered > 1 && held.counted.is_none())
                .map(|(i, held)| (i, held.delivered, held.sequence))
                .collect();
            let decided = futures::future::join_all(
                undecided.iter().map(|&(_, delivered, sequence)| {
                    self.attempt_of_redelivery(delivered, sequence)
                }),
            )
            .await;
            // Kept before they are written: given back after a cancelled write, a
            // message's count is set back all the same.
            for (&(i, _, _), attempt) in undecided.iter().zip(decided) {
                puller.held[i].counted = Some(attempt);
            }
            let counted: Vec<(u64, u32)> = puller
                .held
                .iter()
                .take(take)
                .filter_map(|held| held.counted.map(|attempt| (held.sequence, attempt)))
                .collect();
            futures::future::join_all(
                counted
                    .iter()
                    .map(|&(sequence, attempt)| self.count_attempt(sequence, attempt)),
            )
            .await;
        }
        let mut out: Vec<Delivery> = Vec::with_capacity(take);
        for held in puller.held.drain(..take) {
            out.push(self.deliver(
                held.message,
                held.sequence,
                held.counted.unwrap_or(1),
                held.counted.is_some(),
            ));
        }
        Ok(out)
    }

    async fn settle(&self, settlements: Vec<(DeliveryTag, Settlement)>) -> Result<()> {
        let mut first_error = None;
        let mut acks = Vec::with_capacity(settlements.len());
        let (settled, unknown) = self.in_flight.take(settlements);
        {
            let mut failures = self.failures.lock().unwrap();
            if !failures.is_empty() {
                for (f, s) in &settled {
                    if matches!(s, Settlement::Ack) {
                        failures.remove(&f.stream_sequence);
                    }
                }
            }
        }
        // Plain acks are fire-and-forget publishes, sent last; everything else waits on
        // the server (counts, naks, dead letters), so those run at once, not in turn.
        let mut others = Vec::new();
        for (f, settlement) in settled {
            if matches!(settlement, Settlement::Ack) && !f.counted {
                acks.push(f.message);
            } else {
                others.push((f, settlement));
            }
        }
        let results =
            futures::future::join_all(others.into_iter().map(|(f, s)| self.settle_one(f, s)))
                .await;
        for result in results {
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        for m in acks {
            if let Err(e) = m.ack().await {
                first_error.get_or_insert(from_nats(NatsError(e.to_string()), "ack"));
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        unknown.error()
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.mover.abort();
        // Stop pulling before giving anything back: a message given back while this
        // member's pull requests are open comes straight back to them, and every such
        // bounce is one more delivery. Stopping returns what the server had already
        // sent; it is given back with the rest.
        let puller = self.puller.lock().await.take();
        let fetched = match puller {
            Some(puller) => puller.stop().await,
            None => Vec::new(),
        };
        let in_flight = self.in_flight.drain();
        // Acks are fire-and-forget publishes: make sure the server has them before the
        // group's next member can be handed anything.
        let _ = self.connection.client.flush().await;
        let gives = fetched
            .iter()
            .map(|held| (&held.message, held.sequence, held.counted))
            .chain(in_flight.iter().map(|f| {
                (
                    &f.message,
                    f.stream_sequence,
                    f.counted.then_some(f.attempt),
                )
            }))
            .map(|(message, sequence, counted)| self.give_back(message, sequence, counted));
        let failed = futures::future::join_all(gives)
            .await
            .into_iter()
            .filter(Result::is_err)
            .count();
        if failed > 0 {
            // The server delivers them again after ack_wait.
            tracing::warn!(channel = %self.channel, failed, "giving back messages at close failed");
        }
        Ok(())
    }
}

impl Drop for JetStreamSubscription {
    fn drop(&mut self) {
        self.mover.abort();
    }
}

/// A plain error carrying an async-nats error's text (its error types differ per call).
#[derive(Debug)]
struct NatsError(String);
impl std::fmt::Display for NatsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for NatsError {}

/// Moves the channel's delayed messages to the channel when due: not yet due ones are
/// nak'ed with the time left; due ones are published with their original id (so a
/// crash between publish and ack cannot duplicate them) and then acked.
async fn move_delayed(connection: Arc<Connection>, channel: Arc<str>) {
    let subject = format!("{channel}.delayed");
    loop {
        let result: Result<()> = async {
            let stream = connection.ensure_stream(&channel, DELAYED, &subject).await?;
            let consumer = stream
                .get_or_create_consumer(
                    DELAY_MOVER,
                    pull::Config {
                        durable_name: Some(DELAY_MOVER.into()),
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| from_nats(e, "delay mover"))?;
            let mut messages = consumer
                .stream()
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(10))
                .messages()
                .await
                .map_err(|e| from_nats(e, "delay mover"))?;
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| from_nats(e, "delay mover"))?;
                let due = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(DUE))
                    .and_then(|v| v.as_str().parse::<u64>().ok())
                    .unwrap_or(0);
                let now = unix_micros(SystemTime::now());
                if due > now {
                    let _ = m
                        .ack_with(AckKind::Nak(Some(Duration::from_micros(due - now))))
                        .await;
                    continue;
                }
                let envelope =
                    from_message(&channel, m.headers.as_ref(), m.payload.clone(), || {
                        Origin::of_reply(m.reply.as_deref())
                    });
                connection
                    .js_publish(channel.to_string(), envelope, &[])
                    .await?;
                let _ = m.ack().await;
            }
            Ok(())
        }
        .await;
        if connection.is_closed() {
            return;
        }
        if let Err(e) = result {
            tracing::warn!(channel = %channel, error = %e, "delayed-message mover failed; restarting");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
