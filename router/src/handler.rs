//! What applications implement to handle messages, and what a handler can return.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anybroker_brokers::{Envelope, Headers};

/// Handles the messages of one channel. Returning `Ok` acknowledges the message;
/// an error is retried after the channel's backoff unless it is
/// [permanent](HandlerError::permanent); a panic counts as a retryable error.
///
/// ```
/// use anybroker::{HandlerError, MessageContext, MessageHandler};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct AlarmToBot { message: String }
/// struct Bot;
/// impl MessageHandler<AlarmToBot> for Bot {
///     async fn handle(&self, alarm: AlarmToBot, cx: &MessageContext) -> Result<(), HandlerError> {
///         println!("{} (attempt {})", alarm.message, cx.attempt());
///         Ok(())
///     }
/// }
/// ```
///
/// Implement it with a plain `async fn`; no macro is needed and nothing is boxed per
/// message. The future must be `Send`, as handlers run on a multi-threaded runtime.
pub trait MessageHandler<M>: Send + Sync + 'static {
    /// Handles one message; `context` carries its metadata.
    fn handle(
        &self,
        message: M,
        context: &MessageContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// What the consumer calls: [`handle`](Self::handle), given the context to keep.
    /// The default lends it to `handle`; override it only for a handler that needs the
    /// context owned and would otherwise clone it ([`handler_fn`] does).
    fn handle_owned(
        &self,
        message: M,
        context: MessageContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send
    where
        M: Send,
    {
        async move { self.handle(message, &context).await }
    }
}

/// A handler made of an async closure; see [`handler_fn`].
pub struct FnHandler<F>(F);

/// Wraps `f(message, context)` as a [`MessageHandler`].
///
/// ```
/// # #[derive(serde::Serialize, serde::Deserialize)] struct AlarmToBot { message: String }
/// let handler = anybroker::handler_fn(|alarm: AlarmToBot, _cx| async move {
///     println!("{}", alarm.message);
///     Ok(())
/// });
/// ```
pub fn handler_fn<M, F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(M, MessageContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    FnHandler(f)
}

impl<M, F, Fut> MessageHandler<M> for FnHandler<F>
where
    M: Send + 'static,
    F: Fn(M, MessageContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn handle(
        &self,
        message: M,
        context: &MessageContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        (self.0)(message, context.clone())
    }

    fn handle_owned(
        &self,
        message: M,
        context: MessageContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        (self.0)(message, context)
    }
}

/// Metadata of the message being handled. It owns the envelope: a clone copies the
/// headers, and shares the rest (reference-counted).
#[derive(Clone)]
pub struct MessageContext {
    envelope: Envelope,
    broker: Arc<str>,
}

impl MessageContext {
    /// The context of `envelope` delivered by the broker named `broker`: what the
    /// router hands a handler, and what a test builds to call one directly.
    ///
    /// ```
    /// use anybroker::{handler_fn, Envelope, MessageContext, MessageHandler};
    /// # #[derive(serde::Deserialize)] struct Alarm { message: String }
    /// # tokio_test_block_on(async {
    /// let handler = handler_fn(|alarm: Alarm, cx: MessageContext| async move {
    ///     assert_eq!((alarm.message.as_str(), cx.attempt(), cx.key()), ("disk full", 3, Some("rack-7")));
    ///     Ok(())
    /// });
    /// let envelope = Envelope::new("alarm.to.log", &b"{}"[..])
    ///     .with_id("alarm-1")
    ///     .with_key("rack-7")
    ///     .with_header("tenant", "acme")
    ///     .with_attempt(3);
    /// let cx = MessageContext::new(envelope, "test");
    /// handler.handle(Alarm { message: "disk full".into() }, &cx).await.unwrap();
    /// # });
    /// # fn tokio_test_block_on(f: impl std::future::Future<Output = ()>) {
    /// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    /// # }
    /// ```
    pub fn new(envelope: Envelope, broker: impl Into<Arc<str>>) -> Self {
        MessageContext {
            envelope,
            broker: broker.into(),
        }
    }

    /// The message id, unique per publish.
    pub fn id(&self) -> &str {
        &self.envelope.id
    }
    /// The channel's wire name.
    pub fn channel(&self) -> &str {
        &self.envelope.channel
    }
    /// The name of the broker (its key under `[brokers]`) that delivered it.
    pub fn broker(&self) -> &str {
        &self.broker
    }
    /// The ordering key, if the message has one.
    pub fn key(&self) -> Option<&str> {
        self.envelope.key.as_deref()
    }
    /// Headers, the application's and anybroker's.
    pub fn headers(&self) -> &Headers {
        &self.envelope.headers
    }
    /// This delivery's attempt number, 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.envelope.attempt
    }
    /// When the message was published.
    pub fn published_at(&self) -> SystemTime {
        self.envelope.published_at
    }
    /// The whole envelope, payload included.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }
}

impl fmt::Debug for MessageContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageContext")
            .field("id", &self.id())
            .field("channel", &self.channel())
            .field("broker", &self.broker())
            .field("attempt", &self.attempt())
            .finish_non_exhaustive()
    }
}

/// Why a handler failed: retryable (the default) or permanent.
///
/// Any `std::error::Error` converts into a retryable `HandlerError`, so `?` works in
/// handlers.
pub struct HandlerError {
    permanent: bool,
    retry_after: Option<Duration>,
    message: String,
}

impl HandlerError {
    /// A failure worth retrying after the channel's backoff.
    pub fn retryable(error: impl fmt::Display) -> Self {
        HandlerError {
            permanent: false,
            retry_after: None,
            message: error.to_string(),
        }
    }

    /// A failure no retry can fix: the message goes to the dead-letter destination now.
    pub fn permanent(error: impl fmt::Display) -> Self {
        HandlerError {
            permanent: true,
            retry_after: None,
            message: error.to_string(),
        }
    }

    /// Retry after `delay` instead of the policy's backoff (attempts still count).
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// Whether this failure skips the remaining attempts.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The delay the handler asked for, if any.
    pub fn requested_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The error text.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::retryable(e)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("permanent", &self.permanent)
            .field("retry_after", &self.retry_after)
            .field("message", &self.message)
            .finish()
    }
}
