//! The NATS broker handle: connection, streams, publishing, dead letters.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use async_trait::async_trait;
use futures::future::BoxFuture;

use super::codec::{from_message, same_id_headers, stream_name, to_headers, IdHeaders, DUE};
use super::consumer::JetStreamSubscription;
use super::core_mode::CoreSubscription;
use super::error::from_nats;
use super::{NatsConfig, NatsMode};
use crate::core::{
    BrokerKind, Capabilities, Envelope, Error, MessagePublisher, Result, SubscribeOptions,
    Subscription,
};
use crate::unix_micros;

/// Requests travel on core NATS, on `<channel>.rpc`: outside the channel's stream, so
/// JetStream neither stores them nor answers them with a PubAck.
pub(crate) fn rpc_subject(channel: &str) -> String {
    format!("{channel}.rpc")
}

/// Stream suffixes of a channel's dead letters and delayed messages.
pub(crate) const DLT: &str = "_DLT";
pub(crate) const DELAYED: &str = "_DELAYED";

/// Longest wait for the server to confirm a new subscription.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(10);

/// Tries at creating a stream that other members create at the same moment.
const STREAM_CREATE_TRIES: u32 = 5;

/// A connection to a NATS server, in the configured mode. Cloning shares it.
#[derive(Clone)]
pub struct NatsBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: NatsConfig,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    /// Streams known to exist, so publish checks them once.
    ensured: Mutex<HashSet<String>>,
    /// Channels whose main stream is known to exist: the publish fast path.
    ensured_channels: RwLock<rustc_hash::FxHashMap<Arc<str>, async_nats::Subject>>,
    closed: crate::core::ShutdownFlag,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl NatsBroker {
    /// Connects; the client reconnects by itself after later failures.
    pub async fn connect(config: &NatsConfig) -> Result<Self> {
        let mut options =
            async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2));
        if let Some(token) = &config.token {
            options = options.token(token.expose().to_string());
        }
        if config.url.url().scheme() == "tls" {
            options = options.require_tls(true);
        }
        if let Some(ca) = &config.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&config.tls_client_cert, &config.tls_client_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let client = options.connect(config.url.expose()).await.map_err(|e| {
            Error::new(
                crate::ErrorKind::Unreachable,
                format!("cannot connect to {}", config.url),
            )
            .set_retryable(true)
            .with_broker("nats")
            .with_source(e)
        })?;
        let js = jetstream::new(client.clone());
        Ok(NatsBroker {
            inner: Arc::new(Inner {
                config: config.clone(),
                client,
                js,
                ensured: Mutex::new(HashSet::new()),
                ensured_channels: RwLock::new(Default::default()),
                closed: crate::core::ShutdownFlag::new("nats"),
            }),
        })
    }

    fn check_open(&self, operation: &'static str) -> Result<()> {
        self.inner.closed.check(operation)
    }

    fn jetstream_only(&self, operation: &'static str) -> Result<()> {
        if self.inner.config.mode == NatsMode::Core {
            return Err(Error::unsupported(format!(
                "{operation} needs mode = \"jetstream\"; core NATS keeps nothing"
            ))
            .with_broker("nats")
            .with_operation(operation));
        }
        Ok(())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.closed.is_closed()
    }

    /// Returns once the server has processed everything this connection sent before
    /// the call (a subscription included). `flush` only empties the client's socket
    /// buffer; the server handles a connection's messages in order, so a message
    /// published to a fresh inbox and received back proves the ones before it arrived.
    pub(crate) async fn server_round_trip(&self, operation: &'static str) -> Result<()> {
        let client = &self.inner.client;
        let inbox = client.new_inbox();
        let mut echo = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| from_nats(e, operation))?;
        client
            .publish(inbox, bytes::Bytes::new())
            .await
            .map_err(|e| from_nats(e, operation))?;
        let answered =
            tokio::time::timeout(ROUND_TRIP_TIMEOUT, futures::StreamExt::next(&mut echo)).await;
        let _ = echo.unsubscribe().await;
        match answered {
            Ok(Some(_)) => Ok(()),
            _ => Err(Error::new(
                crate::ErrorKind::Timeout,
                format!("the server did not confirm within {ROUND_TRIP_TIMEOUT:?}"),
            )
            .set_retryable(true)
            .with_broker("nats")
            .with_operation(operation)),
        }
    }

    /// Creates the stream `<prefix>_<channel><suffix>` on `subject` unless known.
    pub(crate) async fn ensure_stream(
        &self,
        channel: &str,
        suffix: &str,
        subject: &str,
    ) -> Result<jetstream::stream::Stream> {
        let c = &self.inner.config;
        let name = stream_name(&c.stream_prefix, channel, suffix);
        let config = jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![subject.to_string()],
            max_age: c.max_age,
            max_bytes: c.max_bytes,
            duplicate_window: c.duplicate_window,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let mut stream = self.get_or_create_stream(&config, channel).await?;
        // An existing stream follows the config's limits: update it where they differ
        // (storage cannot change in place; the server refuses that with a clear error).
        let current = &stream.cached_info().config;
        if current.max_age != config.max_age
            || current.max_bytes != config.max_bytes
            || current.duplicate_window != config.duplicate_window
        {
            let mut updated = current.clone();
            updated.max_age = config.max_age;
            updated.max_bytes = config.max_bytes;
            updated.duplicate_window = config.duplicate_window;
            self.inner
                .js
                .update_stream(&updated)
                .await
                .map_err(|e| from_nats(e, "update stream").with_channel(channel))?;
            stream = self
                .inner
                .js
                .get_stream(&name)
                .await
                .map_err(|e| from_nats(e, "update stream").with_channel(channel))?;
        }
        self.inner.ensured.lock().unwrap().insert(name);
        Ok(stream)
    }

    /// `get_or_create_stream` asks, then creates: members starting together on a new
    /// channel race, and the losers' create fails ("subjects overlap with an existing
    /// stream", 10065, or "stream name already in use"). Asking again finds the
    /// winner's stream.
    pub(crate) async fn get_or_create_stream(
        &self,
        config: &jetstream::stream::Config,
        channel: &str,
    ) -> Result<jetstream::stream::Stream> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.inner.js.get_or_create_stream(config.clone()).await {
                Ok(stream) => return Ok(stream),
                Err(e) if tries < STREAM_CREATE_TRIES && is_creation_race(&e) => {
                    tracing::debug!(channel, error = %e, "stream created meanwhile; asking again");
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(tries))).await;
                }
                Err(e) => return Err(from_nats(e, "create stream").with_channel(channel)),
            }
        }
    }

    async fn ensure_known(&self, channel: &str, suffix: &str, subject: &str) -> Result<()> {
        if suffix.is_empty()
            && self
                .inner
                .ensured_channels
                .read()
                .unwrap()
                .contains_key(channel)
        {
            return Ok(());
        }
        let name = stream_name(&self.inner.config.stream_prefix, channel, suffix);
        if self.inner.ensured.lock().unwrap().contains(&name) {
            return Ok(());
        }
        // Boxed: creating a stream is a 6 KB future, and inline it would make every
        // publish's future that size (memcpy'd into its box on each call), though it
        // runs once per channel.
        Box::pin(self.ensure_stream(channel, suffix, subject)).await?;
        if suffix.is_empty() {
            self.remember_subject(channel);
        }
        Ok(())
    }

    fn remember_subject(&self, channel: &str) -> async_nats::Subject {
        let subject = async_nats::Subject::from(channel);
        self.inner
            .ensured_channels
            .write()
            .unwrap()
            .insert(Arc::from(channel), subject.clone());
        subject
    }

    /// The channel's subject, cached; checked once, when first seen.
    fn subject(&self, channel: &str) -> Result<async_nats::Subject> {
        if let Some(s) = self.inner.ensured_channels.read().unwrap().get(channel) {
            return Ok(s.clone());
        }
        Self::validate_subject(channel)?;
        Ok(self.remember_subject(channel))
    }

    async fn publish_jetstream(&self, envelope: Envelope) -> Result<()> {
        self.check_open("publish")?;
        self.ensure_known(&envelope.channel, "", &envelope.channel)
            .await?;
        let subject = self.subject(&envelope.channel)?;
        self.js_publish(subject, envelope, &[]).await
    }

    async fn publish_core(&self, envelope: Envelope) -> Result<()> {
        self.check_open("publish")?;
        let subject = self.subject(&envelope.channel)?;
        let headers = to_headers(&envelope, IdHeaders::Core);
        let Envelope {
            channel, payload, ..
        } = envelope;
        self.inner
            .client
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| from_nats(e, "publish").with_channel(&*channel))
    }

    /// Publishes `envelope` on `subject` and waits for the stream's acknowledgement.
    pub(crate) async fn js_publish(
        &self,
        subject: impl async_nats::subject::ToSubject,
        envelope: Envelope,
        extra: &[(&'static str, String)],
    ) -> Result<()> {
        let mut headers = to_headers(&envelope, IdHeaders::JetStream);
        for (name, value) in extra {
            headers.insert(*name, value.as_str());
        }
        // The payload is moved, not cloned: cloning a `Bytes` made from a `Vec`
        // allocates its shared form, one more allocation per publish.
        let Envelope {
            channel, payload, ..
        } = envelope;
        // The client's send future (832 bytes) boxed on its own: inline, it made every
        // JetStream publish future 1,640 bytes, past malloc's fast path (~1 KB); two
        // small boxes cost less than one large.
        let ack = Box::pin(
            self.inner.js.send_publish(
                subject,
                jetstream::message::PublishMessage::build()
                    .payload(payload)
                    .headers(headers),
            ),
        )
        .await
        .map_err(|e| from_nats(e, "publish").with_channel(&*channel))?;
        ack.await
            .map_err(|e| from_nats(e, "publish").with_channel(&*channel))?;
        Ok(())
    }

    fn validate_subject(channel: &str) -> Result<()> {
        if channel.is_empty()
            || channel.contains([' ', '\t', '*', '>'])
            || channel.starts_with('.')
            || channel.ends_with('.')
            || channel.contains("..")
        {
            return Err(Error::config(format!(
                "channel {channel:?} is not a valid NATS subject (no spaces, '*', '>' or empty tokens)"
            ))
            .with_broker("nats"));
        }
        Ok(())
    }

    /// Up to `limit` dead letters of `channel` with their stream sequences, oldest first
    /// (read one by one by sequence; deleted ones are skipped).
    async fn scan_dead_letters(&self, channel: &str, limit: usize) -> Result<Vec<(u64, Envelope)>> {
        let subject = format!("{channel}.dlt");
        let mut stream = self.ensure_stream(channel, DLT, &subject).await?;
        let info = stream
            .info()
            .await
            .map_err(|e| from_nats(e, "dead_letters").with_channel(channel))?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let channel_arc: Arc<str> = Arc::from(channel);
        let mut out = Vec::new();
        let mut seq = first.max(1);
        while seq <= last && out.len() < limit {
            if let Ok(m) = stream.get_raw_message(seq).await {
                let envelope = from_message(
                    &channel_arc,
                    || seq.to_string(),
                    Some(&m.headers),
                    m.payload,
                );
                out.push((seq, envelope));
            }
            seq += 1;
        }
        Ok(out)
    }
}

#[async_trait]
impl MessagePublisher for NatsBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Nats
    }

    fn capabilities(&self) -> Capabilities {
        match self.inner.config.mode {
            NatsMode::Jetstream => Capabilities {
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
            },
            NatsMode::Core => Capabilities {
                groups: true,
                ordering_by_key: true,
                request_reply: true,
                ..Capabilities::NONE
            },
        }
    }

    // Written out rather than `async fn`: one boxed future per mode, each its own
    // size. As one future it would be sized for JetStream's (1.3 KB), past the
    // allocator's fast path, for core mode's publishes too.
    fn publish<'a, 'f>(&'a self, envelope: Envelope) -> BoxFuture<'f, Result<()>>
    where
        'a: 'f,
        Self: 'f,
    {
        match self.inner.config.mode {
            NatsMode::Jetstream => Box::pin(self.publish_jetstream(envelope)),
            NatsMode::Core => Box::pin(self.publish_core(envelope)),
        }
    }

    async fn publish_delayed(&self, envelope: Envelope, delay: Duration) -> Result<()> {
        self.check_open("publish_delayed")?;
        self.jetstream_only("publish_delayed")?;
        let subject = format!("{}.delayed", envelope.channel);
        self.ensure_known(&envelope.channel, DELAYED, &subject)
            .await?;
        let due = unix_micros(SystemTime::now() + delay).to_string();
        self.js_publish(subject, envelope, &[(DUE, due)]).await
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        self.check_open("subscribe")?;
        Self::validate_subject(&options.channel)?;
        match self.inner.config.mode {
            NatsMode::Jetstream => Ok(Box::new(
                JetStreamSubscription::start(self.clone(), options).await?,
            )),
            NatsMode::Core => Ok(Box::new(
                CoreSubscription::start(self.clone(), options).await?,
            )),
        }
    }

    async fn dead_letters(&self, channel: &str, limit: usize) -> Result<Vec<Envelope>> {
        self.check_open("dead_letters")?;
        self.jetstream_only("dead_letters")?;
        Ok(self
            .scan_dead_letters(channel, limit)
            .await?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    async fn replay_dead_letters(&self, channel: &str, limit: usize) -> Result<usize> {
        self.check_open("replay_dead_letters")?;
        self.jetstream_only("replay_dead_letters")?;
        let dead = self.scan_dead_letters(channel, limit).await?;
        let stream = self
            .ensure_stream(channel, DLT, &format!("{channel}.dlt"))
            .await?;
        self.ensure_known(channel, "", channel).await?;
        let mut moved = 0;
        for (seq, envelope) in dead {
            // Published first, deleted after: a crash in between duplicates, never loses.
            // Dead letters are published under keys of their own (see the consumer).
            let ids = same_id_headers(&envelope.id, format!("{}.replay.{seq}", envelope.id));
            self.js_publish(channel.to_string(), envelope.into_replayed(), &ids)
                .await?;
            stream
                .delete_message(seq)
                .await
                .map_err(|e| from_nats(e, "replay_dead_letters").with_channel(channel))?;
            moved += 1;
        }
        Ok(moved)
    }

    async fn request(&self, envelope: Envelope, timeout: Duration) -> Result<Envelope> {
        self.check_open("request")?;
        Self::validate_subject(&envelope.channel)?;
        let channel = envelope.channel.clone();
        let request = async_nats::Request::new()
            .payload(envelope.payload.clone())
            .headers(to_headers(&envelope, IdHeaders::Core))
            .timeout(Some(timeout));
        let reply = self
            .inner
            .client
            .send_request(rpc_subject(&channel), request)
            .await
            .map_err(|e| {
                use async_nats::RequestErrorKind;
                let (kind, text) = match e.kind() {
                    RequestErrorKind::TimedOut => (
                        crate::ErrorKind::Timeout,
                        format!("no reply within {timeout:?}"),
                    ),
                    RequestErrorKind::NoResponders => (
                        crate::ErrorKind::NoResponder,
                        "nobody serves this channel".to_string(),
                    ),
                    _ => (crate::ErrorKind::Broker, "request failed".to_string()),
                };
                Error::new(kind, text)
                    .with_broker("nats")
                    .with_operation("request")
                    .with_channel(&*channel)
                    .with_source(e)
            })?;
        Ok(from_message(
            &channel,
            String::new,
            reply.headers.as_ref(),
            reply.payload,
        ))
    }

    async fn serve(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        self.check_open("serve")?;
        Self::validate_subject(&options.channel)?;
        Ok(Box::new(
            CoreSubscription::serve(self.clone(), options).await?,
        ))
    }

    async fn shutdown(&self) -> Result<()> {
        self.inner.closed.close();
        self.inner
            .client
            .flush()
            .await
            .map_err(|e| from_nats(e, "shutdown"))
    }
}

/// Whether a stream creation failed because another client created it meanwhile.
fn is_creation_race(error: &jetstream::context::CreateStreamError) -> bool {
    use jetstream::context::CreateStreamErrorKind;
    use jetstream::ErrorCode;
    matches!(
        error.kind(),
        CreateStreamErrorKind::JetStream(e)
            if e.error_code() == ErrorCode::STREAM_SUBJECT_OVERLAP
                || e.error_code() == ErrorCode::STREAM_NAME_EXIST
    )
}
