//! A NATS channel: a JetStream stream (and the enum of both modes). The stream is
//! found or created once, when the channel opens.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::codec::{from_message, same_id_headers, Origin, DUE};
use super::connection::{Connection, DELAYED, DELAY_MOVER, DLT};
use super::core_mode::{CoreChannel, CoreSubscription};
use super::error::from_nats;
use super::subscription::JetStreamSubscription;
use crate::core::{
    Backlog, DeadLetterAction, DeadLetterSelector,
    unix_micros, BackendChannel, Capabilities, NewGroupStart, Envelope, Result, SubscribeOptions, Subscription,
};

crate::channel_enum! {
    /// A NATS channel in the configured mode.
    pub enum NatsChannel {
        /// `mode = "jetstream"`.
        JetStream(JetStreamChannel),
        /// `mode = "core"`.
        Core(CoreChannel),
    }
    future NatsChannelFuture;
}

/// What JetStream guarantees.
const CAPABILITIES: Capabilities = Capabilities {
    persistent: true,
    survives_broker_restart: true,
    groups: true,
    ordering_by_key: true,
    ordering_across_members: false,
    retry: true,
    dead_letters: true,
    delay: true,
    native_redelivery_count: true,
    request_reply: true,
    presence: true,
    new_group_start: NewGroupStart::Retained,
};

/// A channel in JetStream mode.
pub struct JetStreamChannel {
    connection: Arc<Connection>,
    name: Arc<str>,
    subject: async_nats::Subject,
    dead_letter_subject: String,
    delayed_subject: String,
    /// The delayed stream, created by the first delayed publish.
    delayed_ready: tokio::sync::OnceCell<()>,
}

impl JetStreamChannel {
    /// Opens the channel: its stream exists once this returns.
    pub(crate) async fn open(connection: Arc<Connection>, name: &Arc<str>) -> Result<Self> {
        connection.ensure_stream(name, "", name).await?;
        Ok(JetStreamChannel {
            subject: async_nats::Subject::from(&**name),
            dead_letter_subject: format!("{name}.dlt"),
            delayed_subject: format!("{name}.delayed"),
            delayed_ready: tokio::sync::OnceCell::new(),
            name: name.clone(),
            connection,
        })
    }

    /// The dead-letter stream.
    async fn dead_letter_stream(&self) -> Result<async_nats::jetstream::stream::Stream> {
        self.connection
            .ensure_stream(&self.name, DLT, &self.dead_letter_subject)
            .await
    }

    /// Up to `limit` dead letters `selector` picks, with their stream sequences, oldest
    /// first, up to the last one there when the scan began (read one by one by
    /// sequence; deleted ones are skipped).
    async fn scan_dead_letters(
        &self,
        stream: &mut async_nats::jetstream::stream::Stream,
        selector: &DeadLetterSelector,
        limit: usize,
    ) -> Result<Vec<(u64, Envelope)>> {
        let info = stream
            .info()
            .await
            .map_err(|e| from_nats(e, "dead_letters"))?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let stream_name = info.config.name.clone();
        let mut out = Vec::new();
        let mut seq = first.max(1);
        while seq <= last && out.len() < limit {
            if let Ok(m) = stream.get_raw_message(seq).await {
                let time = m.time.unix_timestamp_nanos();
                let envelope = from_message(&self.name, Some(&m.headers), m.payload, || {
                    Origin::stored(&stream_name, seq, u128::try_from(time).ok())
                });
                if selector.matches(&envelope) {
                    out.push((seq, envelope));
                }
            }
            seq += 1;
        }
        Ok(out)
    }
}

impl BackendChannel for JetStreamChannel {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn publish(&self, envelope: Envelope) -> impl Future<Output = Result<()>> + Send {
        self.connection
            .js_publish(self.subject.clone(), envelope, &[])
    }

    async fn provision(&self, options: &SubscribeOptions) -> Result<()> {
        super::subscription::create_consumer(&self.connection, &self.name, options, "provision")
            .await
            .map(drop)
    }

    async fn backlog(&self, group: &str) -> Result<Backlog> {
        // The group's durable consumer: messages not yet delivered, and delivered ones
        // not yet acknowledged (a retry waiting is a nak'ed one: not acknowledged).
        let mut stream = self.connection.ensure_stream(&self.name, "", &self.name).await?;
        let mut backlog = consumer_backlog(&mut stream, &super::codec::consumer_name(group)).await?;
        // Delayed messages not yet due wait in the channel's delayed stream, for every
        // group; it exists once something was published with a delay.
        if self.connection.stream_exists(&self.name, DELAYED).await? {
            let mut stream = self
                .connection
                .ensure_stream(&self.name, DELAYED, &self.delayed_subject)
                .await?;
            let waiting = consumer_backlog(&mut stream, DELAY_MOVER).await?;
            backlog.waiting += waiting.total();
        }
        Ok(backlog)
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        Ok(Box::new(
            JetStreamSubscription::start(self.connection.clone(), self.name.clone(), options).await?,
        ))
    }

    async fn publish_delayed(&self, envelope: Envelope, delay: Duration) -> Result<()> {
        self.delayed_ready
            .get_or_try_init(|| async {
                // Boxed: creating a stream is a large future, run once per channel.
                Box::pin(self.connection.ensure_stream(
                    &self.name,
                    DELAYED,
                    &self.delayed_subject,
                ))
                .await
                .map(|_| ())
            })
            .await?;
        let due = unix_micros(SystemTime::now() + delay).to_string();
        self.connection
            .js_publish(self.delayed_subject.clone(), envelope, &[(DUE, due)])
            .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<Envelope>> {
        let mut stream = self.dead_letter_stream().await?;
        Ok(self
            .scan_dead_letters(&mut stream, &DeadLetterSelector::All, limit)
            .await?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    async fn settle_dead_letters(
        &self,
        selector: &DeadLetterSelector,
        action: DeadLetterAction,
        limit: usize,
    ) -> Result<usize> {
        let mut stream = self.dead_letter_stream().await?;
        let dead = self.scan_dead_letters(&mut stream, selector, limit).await?;
        let mut settled = 0;
        for (seq, envelope) in dead {
            if action == DeadLetterAction::Replay {
                // Published first, deleted after: a crash in between duplicates, never
                // loses. Dead letters are published under keys of their own (see the
                // subscription).
                let ids = same_id_headers(&envelope.id, format!("{}.replay.{seq}", envelope.id));
                self.connection
                    .js_publish(self.subject.clone(), envelope.into_replayed(), &ids)
                    .await?;
            }
            stream
                .delete_message(seq)
                .await
                .map_err(|e| from_nats(e, action.operation()))?;
            settled += 1;
        }
        Ok(settled)
    }

    async fn request(&self, envelope: Envelope, timeout: Duration) -> Result<Envelope> {
        self.connection.request(envelope, timeout).await
    }

    async fn serve(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        Ok(Box::new(
            CoreSubscription::serve(self.connection.clone(), self.name.clone(), options).await?,
        ))
    }
}

/// What `consumer` of `stream` has not finished: messages not yet delivered, and
/// delivered ones not yet acknowledged; all of the stream's while it does not exist.
async fn consumer_backlog(stream: &mut async_nats::jetstream::stream::Stream, consumer: &str) -> Result<Backlog> {
    match stream.consumer_info(consumer).await {
        Ok(info) => Ok(Backlog::new(info.num_pending, Some(info.num_ack_pending as u64))),
        // Not created yet: it starts at the stream's first message.
        Err(e)
            if e.kind() == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound
                || e.to_string().contains("consumer not found") =>
        {
            let info = stream.info().await.map_err(|e| from_nats(e, "backlog"))?;
            Ok(Backlog::new(info.state.messages, Some(0)))
        }
        Err(e) => Err(from_nats(e, "backlog")),
    }
}
