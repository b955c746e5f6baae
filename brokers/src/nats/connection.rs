//! What the broker's channels and subscriptions share: the client and JetStream
//! context, the config, whether the broker was shut down, and the stream and publish
//! helpers every mode uses.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::ErrorCode;

use super::codec::{from_message, one_line, stream_name, to_headers, IdHeaders, Origin};
use super::error::from_nats;
use super::config::NatsConfig;
use crate::core::{Envelope, Error, ErrorKind, Result, ShutdownFlag};

/// Requests travel on core NATS, on `<channel>.rpc`: outside the channel's stream, so
/// JetStream neither stores them nor answers them with a PubAck.
pub(crate) fn rpc_subject(channel: &str) -> String {
    format!("{channel}.rpc")
}

/// Stream suffixes of a channel's dead letters and delayed messages.
pub(crate) const DLT: &str = "_DLT";
pub(crate) const DELAYED: &str = "_DELAYED";
/// The durable consumer that moves a channel's delayed messages to it when due.
pub(crate) const DELAY_MOVER: &str = "anybroker-mover";

/// Longest wait for the server to confirm a new subscription.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(10);

/// Tries at creating a stream that other members create at the same moment.
const STREAM_CREATE_TRIES: u32 = 5;

pub(crate) struct Connection {
    pub(crate) config: NatsConfig,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) closed: ShutdownFlag,
}

impl Connection {
    /// Connects; the client reconnects by itself after later failures.
    pub(crate) async fn open(config: &NatsConfig) -> Result<Self> {
        let mut options =
            async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2));
        if let Some(token) = &config.token {
            options = options.token(token.expose().to_string());
        }
        if config.url.scheme() == "tls" {
            options = options.require_tls(true);
        }
        if let Some(ca) = &config.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&config.tls_client_cert, &config.tls_client_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let client = options.connect(config.url.expose()).await.map_err(|e| {
            Error::new(ErrorKind::Unreachable, format!("cannot connect to {}", config.url))
                .set_retryable(true)
                .with_source(e)
        })?;
        let js = jetstream::new(client.clone());
        Ok(Connection {
            config: config.clone(),
            client,
            js,
            closed: ShutdownFlag::default(),
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_closed()
    }

    /// Returns once the server has processed everything this connection sent before
    /// the call (a subscription included). `flush` only empties the client's socket
    /// buffer; the server handles a connection's messages in order, so a message
    /// published to a fresh inbox and received back proves the ones before it arrived.
    pub(crate) async fn server_round_trip(&self, operation: &'static str) -> Result<()> {
        let client = &self.client;
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
                ErrorKind::Timeout,
                format!("the server did not confirm within {ROUND_TRIP_TIMEOUT:?}"),
            )
            .set_retryable(true)
            .with_operation(operation)),
        }
    }

    /// Whether the stream `<prefix>_<channel><suffix>` exists (nothing is created).
    pub(crate) async fn stream_exists(&self, channel: &str, suffix: &str) -> Result<bool> {
        let name = stream_name(&self.config.stream_prefix, channel, suffix);
        match self.js.get_stream(&name).await {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
            {
                Ok(false)
            }
            Err(e) => Err(from_nats(e, "look up stream")),
        }
    }

    /// Creates the stream `<prefix>_<channel><suffix>` on `subject` unless known.
    pub(crate) async fn ensure_stream(
        &self,
        channel: &str,
        suffix: &str,
        subject: &str,
    ) -> Result<jetstream::stream::Stream> {
        let c = &self.config;
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
            self
                .js
                .update_stream(&updated)
                .await
                .map_err(|e| from_nats(e, "update stream"))?;
            stream = self
                .js
                .get_stream(&name)
                .await
                .map_err(|e| from_nats(e, "update stream"))?;
        }
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
            match self.js.get_or_create_stream(config.clone()).await {
                Ok(stream) => return Ok(stream),
                Err(e) if tries < STREAM_CREATE_TRIES && is_creation_race(&e) => {
                    tracing::debug!(channel, error = %e, "stream created meanwhile; asking again");
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(tries))).await;
                }
                Err(e) => return Err(from_nats(e, "create stream")),
            }
        }
    }

    /// Publishes `envelope` on `subject` and waits for the stream's acknowledgement.
    /// Headers and payload are taken from the envelope before the future is made, so
    /// the future does not hold the envelope too.
    pub(crate) fn js_publish(
        &self,
        subject: impl async_nats::subject::ToSubject + Send + 'static,
        envelope: Envelope,
        extra: &[(&'static str, String)],
    ) -> impl Future<Output = Result<()>> + Send + '_ {
        let ids = if self.config.deduplicate {
            IdHeaders::JetStream
        } else {
            IdHeaders::Core
        };
        let headers = to_headers(&envelope, ids, self.config.content_type_header).map(|mut headers| {
            for (name, value) in extra {
                headers.insert(*name, &*one_line(value));
            }
            headers
        });
        // The payload is moved, not cloned: cloning a `Bytes` made from a `Vec`
        // allocates its shared form, one more allocation per publish.
        let Envelope { payload, .. } = envelope;
        async move {
            let headers = headers?;
            // The client's send future (832 bytes) boxed on its own: inline, it made
            // every JetStream publish future 1,640 bytes, past malloc's fast path
            // (~1 KB); two small boxes cost less than one large.
            let ack = Box::pin(
                self.js.send_publish(
                    subject,
                    jetstream::message::PublishMessage::build()
                        .payload(payload)
                        .headers(headers),
                ),
            )
            .await
            .map_err(|e| from_nats(e, "publish"))?;
            ack.await.map_err(|e| from_nats(e, "publish"))?;
            Ok(())
        }
    }

    /// Checks `channel` is a usable NATS subject.
    pub(crate) fn validate_subject(channel: &str) -> Result<()> {
        if channel.is_empty()
            || channel.contains([' ', '\t', '*', '>'])
            || channel.starts_with('.')
            || channel.ends_with('.')
            || channel.contains("..")
        {
            return Err(Error::config(format!(
                "channel {channel:?} is not a valid NATS subject (no spaces, '*', '>' or empty tokens)"
            )));
        }
        Ok(())
    }

    /// Sends a request on the channel's request subject and waits up to `timeout`.
    pub(crate) async fn request(&self, envelope: Envelope, timeout: Duration) -> Result<Envelope> {
        let channel = envelope.channel.clone();
        let request = async_nats::Request::new()
            .payload(envelope.payload.clone())
            .headers(to_headers(&envelope, IdHeaders::Core, self.config.content_type_header)?)
            .timeout(Some(timeout));
        let reply = self
            .client
            .send_request(rpc_subject(&channel), request)
            .await
            .map_err(|e| {
                use async_nats::RequestErrorKind;
                let (kind, text) = match e.kind() {
                    RequestErrorKind::TimedOut => {
                        (ErrorKind::Timeout, format!("no reply within {timeout:?}"))
                    }
                    RequestErrorKind::NoResponders => (
                        ErrorKind::NoResponder,
                        "nobody serves this channel".to_string(),
                    ),
                    _ => (ErrorKind::Broker, "request failed".to_string()),
                };
                Error::new(kind, text).with_source(e)
            })?;
        Ok(from_message(
            &channel,
            reply.headers.as_ref(),
            reply.payload,
            Origin::unstored,
        ))
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
