//! Test support (feature `testing`): record what an application's handlers received,
//! what each call came to, and what was published, to assert on after driving the
//! application on an embedded broker (`RouterBuilder::on_embedded_broker`), on
//! tokio's paused clock if the test pauses it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anybroker_brokers::memory::{MemoryBroker, Settling};
use anybroker_brokers::{DeadLetterReason, Envelope, Error, ErrorKind, Result, Settlement};
use serde::de::DeserializeOwned;

use crate::channel::Channel;
use crate::consumer::ObservedCall;

/// What one handler call came to.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// Handled and acknowledged.
    Acked,
    /// Failed; delivered again after `delay`.
    Retried {
        /// The backoff (or the delay the handler asked for).
        delay: Duration,
        /// The error text.
        error: String,
    },
    /// Dead-lettered.
    DeadLettered {
        /// Why.
        reason: DeadLetterReason,
        /// The error text.
        error: String,
    },
    /// A request answered (`serve`): the reply, or the responder's error.
    Replied(Result<bytes::Bytes, String>),
}

impl Outcome {
    /// Whether the handler panicked (a panic is retried, then dead-lettered, as a
    /// retryable error whose text starts `handler panicked:`).
    pub fn panicked(&self) -> bool {
        match self {
            Outcome::Retried { error, .. } | Outcome::DeadLettered { error, .. } => {
                error.starts_with("handler panicked:")
            }
            _ => false,
        }
    }
}

/// One handler call: the message as delivered, when (on tokio's clock, since the
/// recorder was made), and what it came to.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HandlerCall {
    /// The consumer group of the handler.
    pub group: Arc<str>,
    /// The message as delivered: id, key, headers, attempt, payload.
    pub envelope: Envelope,
    /// When the handler was called, since the recorder was made.
    pub at: Duration,
    /// What the call came to.
    pub outcome: Outcome,
}

impl HandlerCall {
    /// The delivery's attempt, 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.envelope.attempt
    }
}

/// One message published through the router (by the test or by a handler).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PublishedMessage {
    /// The message as published: id, key, headers, payload.
    pub envelope: Envelope,
    /// When, since the recorder was made.
    pub at: Duration,
}

#[derive(Default)]
struct Records {
    calls: Vec<HandlerCall>,
    published: Vec<PublishedMessage>,
}

/// Records every handler call and every publish of the routers it is given
/// (`RouterBuilder::recording`); cheap to clone, all clones share the records.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// use anybroker::testing::{Outcome, Recorder};
/// use anybroker::{handler_fn, Channel, MemoryBroker, MessageContext, MessageRouter, RouterConfig};
/// const ALARMS: Channel<String> = Channel::new("alarms");
/// let config = RouterConfig::from_toml_str("default_broker = \"m\"\n[brokers.m]\nkind = \"memory\"\n").unwrap();
/// let recorder = Recorder::new();
/// let router = MessageRouter::builder(config)
///     .on_embedded_broker(&MemoryBroker::default())
///     .recording(&recorder)
///     .handle(ALARMS, handler_fn(|_: String, _cx: MessageContext| async { Ok(()) }))
///     .start()
///     .await
///     .unwrap();
/// router.publish(ALARMS, &"disk full".to_string()).await.unwrap();
/// while recorder.calls(ALARMS).is_empty() {
///     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
/// }
/// router.shutdown().await.unwrap();
/// assert_eq!(recorder.received(ALARMS), vec!["disk full".to_string()]);
/// assert_eq!(recorder.calls(ALARMS)[0].outcome, Outcome::Acked);
/// assert_eq!(recorder.published(ALARMS).len(), 1);
/// # });
/// ```
#[derive(Clone)]
pub struct Recorder {
    records: Arc<Mutex<Records>>,
    start: tokio::time::Instant,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let records = self.lock();
        f.debug_struct("Recorder")
            .field("calls", &records.calls.len())
            .field("published", &records.published.len())
            .finish()
    }
}

impl Recorder {
    /// A recorder whose times count from now (tokio's clock).
    pub fn new() -> Self {
        Recorder {
            records: Arc::default(),
            start: tokio::time::Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handler calls on `channel`, in the order they were settled.
    pub fn calls<M>(&self, channel: Channel<M>) -> Vec<HandlerCall> {
        self.lock()
            .calls
            .iter()
            .filter(|c| &*c.envelope.channel == channel.name())
            .cloned()
            .collect()
    }

    /// The messages handlers of `channel` were called with, decoded, in call order
    /// (a payload that does not decode is left out: see [`calls`](Self::calls)).
    pub fn received<M: DeserializeOwned>(&self, channel: Channel<M>) -> Vec<M> {
        let mut calls = self.calls(channel);
        calls.sort_by_key(|c| c.at);
        calls
            .iter()
            .filter_map(|c| crate::codec::decode(&c.envelope).ok())
            .collect()
    }

    /// What was published on `channel` through the recorded routers, in order.
    pub fn published<M>(&self, channel: Channel<M>) -> Vec<PublishedMessage> {
        self.lock()
            .published
            .iter()
            .filter(|p| &*p.envelope.channel == channel.name())
            .cloned()
            .collect()
    }

    /// The messages published on `channel`, decoded, in order.
    pub fn published_messages<M: DeserializeOwned>(&self, channel: Channel<M>) -> Vec<M> {
        self.published(channel)
            .iter()
            .filter_map(|p| crate::codec::decode(&p.envelope).ok())
            .collect()
    }

    pub(crate) fn record_call(&self, call: ObservedCall) {
        let outcome = match call.settlement {
            Settlement::Ack => Outcome::Acked,
            Settlement::Retry { delay, error } => Outcome::Retried { delay, error },
            Settlement::DeadLetter(dead) => Outcome::DeadLettered {
                reason: dead.reason,
                error: dead.error,
            },
            Settlement::Reply(reply) => Outcome::Replied(reply),
            // A delivery given back is not a call; nothing else reaches here.
            _ => return,
        };
        let at = call.called_at.saturating_duration_since(self.start);
        self.lock().calls.push(HandlerCall {
            group: call.group,
            envelope: call.envelope,
            at,
            outcome,
        });
    }

    pub(crate) fn record_publish(&self, envelope: &Envelope) {
        let at = tokio::time::Instant::now().saturating_duration_since(self.start);
        self.lock().published.push(PublishedMessage {
            envelope: envelope.clone(),
            at,
        });
    }
}

/// Drives `broker` to rest: lets every message being handled finish and settle, and
/// fires each retry and delayed message falling due within `horizon` from now, on
/// tokio's clock (on a paused runtime, virtual time: it jumps to each due time).
/// Returns the time that took; fails with `Timeout`, naming a channel still busy, if
/// the broker is not at rest when the horizon passes (e.g. a group with no member
/// holds messages, or a handler never returns).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// use anybroker::testing::run_until_settled;
/// use anybroker::{handler_fn, Channel, HandlerError, MemoryBroker, MessageContext, MessageRouter, RouterConfig};
/// use std::time::Duration;
/// const JOBS: Channel<u32> = Channel::new("jobs");
/// let config = RouterConfig::from_toml_str(
///     "default_broker = \"m\"\n[brokers.m]\nkind = \"memory\"\n\
///      [channels.jobs]\nretry = { attempts = 3, initial = \"1m\", max = \"5m\" }\n",
/// ).unwrap();
/// let broker = MemoryBroker::default();
/// let failing = handler_fn(|_: u32, _cx: MessageContext| async { Err::<(), _>(HandlerError::retryable("down")) });
/// let router = MessageRouter::builder(config).on_embedded_broker(&broker).handle(JOBS, failing).start().await.unwrap();
/// router.publish(JOBS, &7).await.unwrap();
/// let took = run_until_settled(&broker, Duration::from_secs(3600)).await.unwrap();
/// assert_eq!(took.as_secs(), 180, "retried after 1 and 2 minutes, then dead-lettered");
/// assert_eq!(router.dead_letters(JOBS, 10).await.unwrap().len(), 1);
/// # router.shutdown().await.unwrap();
/// # });
/// ```
pub async fn run_until_settled(broker: &MemoryBroker, horizon: Duration) -> Result<Duration> {
    let start = tokio::time::Instant::now();
    let deadline = start + horizon;
    loop {
        let now = tokio::time::Instant::now();
        match broker.settling(deadline) {
            Settling::AtRest => return Ok(now - start),
            Settling::Busy { channel } if now >= deadline => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the embedded broker is not at rest {horizon:?} on: channel {channel:?} still has a message being handled or waiting for a member of a group"
                    ),
                )
                .with_channel(channel))
            }
            Settling::Due { at, .. } => tokio::time::sleep_until(at).await,
            // Busy: handlers and consumers run meanwhile; on a paused clock a short
            // sleep lets every task that can run, run, before time moves.
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}
