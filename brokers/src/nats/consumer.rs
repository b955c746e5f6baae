//! A member of a consumer group: a durable JetStream pull consumer on the channel's
//! stream, plus the mover of the channel's delayed messages.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use rustc_hash::FxHashMap;
use tokio::task::JoinHandle;

use super::codec::{consumer_name, delivery_numbers, from_message, DUE};
use super::error::from_nats;
use super::publisher::{NatsBroker, DELAYED, DLT};
use crate::core::{
    batch_of, header, unix_millis, Delivery, DeliveryTag, Error, Result, Settlement,
    SubscribeOptions, Subscription,
};
use crate::unix_micros;

/// How long the stream must stay quiet at close before the member stops giving back.
const CLOSE_QUIET: Duration = Duration::from_millis(100);

/// A delivery not settled yet. Its envelope is rebuilt from the message if it is
/// dead-lettered, rather than cloned for every delivery.
struct InFlight {
    message: jetstream::Message,
    stream_sequence: u64,
    attempt: u32,
}

pub(crate) struct JetStreamSubscription {
    broker: NatsBroker,
    channel: Arc<str>,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    prefetch: usize,
    messages: tokio::sync::Mutex<pull::Stream>,
    in_flight: Mutex<FxHashMap<u64, InFlight>>,
    /// First failure time and last error of messages being retried by this member:
    /// JetStream redelivers the original message, so these live here (best effort).
    failures: Mutex<FxHashMap<u64, (u64, String)>>,
    next_tag: AtomicU64,
    closed: AtomicBool,
    mover: JoinHandle<()>,
}

impl JetStreamSubscription {
    pub(crate) async fn start(broker: NatsBroker, options: SubscribeOptions) -> Result<Self> {
        let channel: Arc<str> = Arc::from(options.channel.as_str());
        let stream = broker.ensure_stream(&channel, "", &channel).await?;
        broker
            .ensure_stream(&channel, DLT, &format!("{channel}.dlt"))
            .await?;
        let name = consumer_name(&options.group);
        let config = pull::Config {
            durable_name: Some(name.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: broker.inner.config.ack_wait,
            max_ack_pending: (options.prefetch * 2) as i64,
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(&name, config)
            .await
            .map_err(|e| from_nats(e, "subscribe").with_channel(&*channel))?;
        let messages = open_messages(&consumer, options.prefetch)
            .await
            .map_err(|e| e.with_channel(&*channel))?;
        let mover = tokio::spawn(move_delayed(broker.clone(), channel.clone()));
        Ok(JetStreamSubscription {
            broker,
            channel,
            consumer,
            prefetch: options.prefetch,
            messages: tokio::sync::Mutex::new(messages),
            in_flight: Mutex::new(FxHashMap::default()),
            failures: Mutex::new(FxHashMap::default()),
            next_tag: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            mover,
        })
    }

    fn deliver(&self, message: jetstream::Message) -> Delivery {
        let (attempt, sequence) = message
            .reply
            .as_deref()
            .and_then(delivery_numbers)
            .map(|(delivered, sequence)| (delivered.max(1) as u32, sequence))
            .unwrap_or((1, 0));
        let mut envelope = self.envelope_of(&message, sequence, attempt);
        if let Some((first, error)) = self.failures.lock().unwrap().get(&sequence) {
            envelope
                .headers
                .insert(header::FIRST_FAILED_AT.to_string(), first.to_string());
            envelope
                .headers
                .insert(header::ERROR.to_string(), error.clone());
        }
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        self.in_flight.lock().unwrap().insert(
            tag,
            InFlight {
                message,
                stream_sequence: sequence,
                attempt,
            },
        );
        Delivery::new(envelope, DeliveryTag(tag, 0))
    }

    fn envelope_of(
        &self,
        message: &jetstream::Message,
        sequence: u64,
        attempt: u32,
    ) -> crate::Envelope {
        let mut envelope = from_message(
            &self.channel,
            || sequence.to_string(),
            message.headers.as_ref(),
            message.payload.clone(),
        );
        envelope.attempt = attempt;
        envelope
    }
}

#[async_trait]
impl Subscription for JetStreamSubscription {
    async fn recv(&self, max: usize) -> Result<Vec<Delivery>> {
        if self.closed.load(Ordering::Acquire) || self.broker.is_closed() {
            return Ok(Vec::new());
        }
        let mut messages = self.messages.lock().await;
        let first = match messages.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(from_nats(e, "fetch").with_channel(&*self.channel)),
            None => {
                // The pull stream ended (e.g. the server went away): open a new one.
                *messages = open_messages(&self.consumer, self.prefetch)
                    .await
                    .map_err(|e| e.with_channel(&*self.channel))?;
                return Err(Error::new(
                    crate::ErrorKind::Unreachable,
                    "message stream ended; reopened",
                )
                .set_retryable(true)
                .with_broker("nats")
                .with_channel(&*self.channel));
            }
        };
        let mut out = batch_of(self.deliver(first), max);
        while out.len() < max.max(1) {
            match messages.next().now_or_never() {
                Some(Some(Ok(m))) => out.push(self.deliver(m)),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn settle(&self, settlements: Vec<(DeliveryTag, Settlement)>) -> Result<()> {
        let mut unknown = 0;
        let mut first_error = None;
        let mut acks = Vec::with_capacity(settlements.len());
        // One lock for the batch, not one per message.
        let settled: Vec<(InFlight, Settlement)> = {
            let mut in_flight = self.in_flight.lock().unwrap();
            settlements
                .into_iter()
                .filter_map(|(tag, settlement)| match in_flight.remove(&tag.0) {
                    Some(f) => Some((f, settlement)),
                    None => {
                        unknown += 1;
                        None
                    }
                })
                .collect()
        };
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
        for (f, settlement) in settled {
            let result = match settlement {
                Settlement::Ack => {
                    acks.push(f.message);
                    continue;
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
                    f.message.ack_with(AckKind::Nak(Some(delay))).await
                }
                Settlement::DeadLetter(dead) => {
                    let mut envelope = self.envelope_of(&f.message, f.stream_sequence, f.attempt);
                    envelope.headers.remove(header::FIRST_FAILED_AT);
                    let first_failure = self.failures.lock().unwrap().remove(&f.stream_sequence);
                    if let Some((first, _)) = first_failure {
                        envelope
                            .headers
                            .insert(header::FIRST_FAILED_AT.to_string(), first.to_string());
                    }
                    let dead = envelope.into_dead_letter(&dead);
                    // Stored in the dead-letter stream before the original is terminated.
                    if let Err(e) = self
                        .broker
                        .js_publish(format!("{}.dlt", self.channel), dead, None)
                        .await
                    {
                        first_error.get_or_insert(e);
                        continue;
                    }
                    f.message.ack_with(AckKind::Term).await
                }
                Settlement::Release => f.message.ack_with(AckKind::Nak(None)).await,
                #[allow(unreachable_patterns)]
                _ => return Err(Error::unsupported("unknown settlement").with_broker("nats")),
            };
            if let Err(e) = result {
                first_error.get_or_insert(from_nats(NatsError(e.to_string()), "settle"));
            }
        }
        for m in acks {
            if let Err(e) = m.ack().await {
                first_error.get_or_insert(from_nats(NatsError(e.to_string()), "ack"));
            }
        }
        if let Some(e) = first_error {
            return Err(e.with_channel(&*self.channel));
        }
        if unknown > 0 {
            return Err(Error::new(
                crate::ErrorKind::Broker,
                format!("{unknown} deliveries settled twice or not from this subscription"),
            )
            .with_broker("nats")
            .with_operation("settle"));
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.mover.abort();
        // Acks are fire-and-forget publishes: make sure the server has them before the
        // group's next member can be handed anything.
        let _ = self.broker.inner.client.flush().await;
        // Give back what was fetched but not handled, so other members get it now
        // rather than after ack_wait.
        // Messages of a pull request still on their way arrive shortly: give those back
        // too, until the stream has been quiet for a moment.
        let mut messages = self.messages.lock().await;
        while let Ok(Some(Ok(m))) = tokio::time::timeout(CLOSE_QUIET, messages.next()).await {
            let _ = m.ack_with(AckKind::Nak(None)).await;
        }
        let in_flight: Vec<InFlight> = self
            .in_flight
            .lock()
            .unwrap()
            .drain()
            .map(|(_, f)| f)
            .collect();
        for f in in_flight {
            let _ = f.message.ack_with(AckKind::Nak(None)).await;
        }
        Ok(())
    }
}

impl Drop for JetStreamSubscription {
    fn drop(&mut self) {
        self.mover.abort();
    }
}

async fn open_messages(
    consumer: &jetstream::consumer::Consumer<pull::Config>,
    prefetch: usize,
) -> Result<pull::Stream> {
    consumer
        .stream()
        .max_messages_per_batch(prefetch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .map_err(|e| from_nats(e, "subscribe"))
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
async fn move_delayed(broker: NatsBroker, channel: Arc<str>) {
    let subject = format!("{channel}.delayed");
    loop {
        let result: Result<()> = async {
            let stream = broker.ensure_stream(&channel, DELAYED, &subject).await?;
            let consumer = stream
                .get_or_create_consumer(
                    "anybroker-mover",
                    pull::Config {
                        durable_name: Some("anybroker-mover".into()),
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
                    from_message(&channel, String::new, m.headers.as_ref(), m.payload.clone());
                broker
                    .js_publish(channel.to_string(), envelope, None)
                    .await?;
                let _ = m.ack().await;
            }
            Ok(())
        }
        .await;
        if broker.is_closed() {
            return;
        }
        if let Err(e) = result {
            tracing::warn!(channel = %channel, error = %e, "delayed-message mover failed; restarting");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
