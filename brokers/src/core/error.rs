//! One error type for every broker: a kind, a retryable flag, context, and the
//! client's own error only as `source()`.

use std::fmt;

/// What went wrong, independent of the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The backend or its mode does not offer the requested operation.
    Unsupported,
    /// Configuration is invalid: a key, a value or a route.
    ConfigInvalid,
    /// The broker could not be reached or the connection was lost.
    Unreachable,
    /// The broker did not answer in time.
    Timeout,
    /// A payload could not be decoded into the channel's type.
    Decode,
    /// A payload could not be encoded.
    Encode,
    /// The router, broker or subscription was already shut down.
    Closed,
    /// The broker refused or failed the operation.
    Broker,
    /// Nothing handled the request in time or at all.
    NoResponder,
}

impl ErrorKind {
    /// A short lowercase name, used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::ConfigInvalid => "invalid config",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Decode => "decode",
            ErrorKind::Encode => "encode",
            ErrorKind::Closed => "closed",
            ErrorKind::Broker => "broker",
            ErrorKind::NoResponder => "no responder",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error of every anybroker operation. Prints on one line with its context:
/// `unsupported: request/reply (broker memory, channel "alarm.to.bot")`.
pub struct Error {
    kind: ErrorKind,
    retryable: bool,
    message: String,
    broker: Option<String>,
    broker_kind: Option<crate::BrokerKind>,
    operation: Option<&'static str>,
    channel: Option<String>,
    source: Option<Source>,
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error; retryable by default only for kinds that are usually temporary
    /// (`Unreachable`, `Timeout`).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            retryable: matches!(kind, ErrorKind::Unreachable | ErrorKind::Timeout),
            message: message.into(),
            broker: None,
            broker_kind: None,
            operation: None,
            channel: None,
            source: None,
        }
    }

    /// An `Unsupported` error for an operation the backend or mode lacks.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unsupported, message)
    }

    /// A `ConfigInvalid` error naming the key and what was expected.
    pub fn config(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::ConfigInvalid, message)
    }

    /// A `Closed` error.
    pub fn closed(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Closed, message)
    }

    /// The same error again, for each of several operations one failure ended (the
    /// messages of a batch): kind, retryability, message and context; the source's text
    /// is added to the message, as a source is not copied.
    pub fn repeated(&self) -> Error {
        let message = match &self.source {
            Some(source) => format!("{}: {source}", self.message),
            None => self.message.clone(),
        };
        Error {
            kind: self.kind,
            retryable: self.retryable,
            message,
            broker: self.broker.clone(),
            broker_kind: self.broker_kind,
            operation: self.operation,
            channel: self.channel.clone(),
            source: None,
        }
    }

    /// Marks whether retrying the same operation may succeed.
    pub fn set_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Replaces the message, keeping kind, retryability, context and source (e.g. to
    /// say what was being done when a client error was converted).
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// Adds the broker name as context.
    pub fn with_broker(mut self, broker: impl Into<String>) -> Self {
        self.broker = Some(broker.into());
        self
    }

    /// Adds which backend the broker is as context.
    pub fn with_broker_kind(mut self, kind: crate::BrokerKind) -> Self {
        self.broker_kind = Some(kind);
        self
    }

    /// Adds broker, kind and channel where the error does not name them yet: the one
    /// place every channel operation gets its context.
    pub(crate) fn in_context(
        mut self,
        broker: &str,
        kind: crate::BrokerKind,
        channel: &str,
    ) -> Self {
        if self.broker.is_none() {
            self.broker = Some(broker.to_string());
        }
        self.broker_kind.get_or_insert(kind);
        if self.channel.is_none() {
            self.channel = Some(channel.to_string());
        }
        self
    }

    /// Adds the operation unless the error names one already.
    pub(crate) fn or_operation(mut self, operation: &'static str) -> Self {
        self.operation.get_or_insert(operation);
        self
    }

    /// Adds the operation as context.
    pub fn with_operation(mut self, operation: &'static str) -> Self {
        self.operation = Some(operation);
        self
    }

    /// Adds the channel as context.
    pub fn with_channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = Some(channel.into());
        self
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying the operation may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The message without context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The broker the error happened on, if known.
    pub fn broker(&self) -> Option<&str> {
        self.broker.as_deref()
    }

    /// Which backend the broker is, if known.
    pub fn broker_kind(&self) -> Option<crate::BrokerKind> {
        self.broker_kind
    }

    /// The channel the error happened on, if known.
    pub fn channel(&self) -> Option<&str> {
        self.channel.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        let mut context = Vec::new();
        if let Some(op) = self.operation {
            context.push(format!("operation {op}"));
        }
        match (&self.broker, self.broker_kind) {
            (Some(b), Some(k)) if b.as_str() != k.as_str() => {
                context.push(format!("broker {b} ({k})"))
            }
            (Some(b), _) => context.push(format!("broker {b}")),
            (None, Some(k)) => context.push(format!("broker kind {k}")),
            (None, None) => {}
        }
        if let Some(c) = &self.channel {
            context.push(format!("channel {c:?}"));
        }
        if !context.is_empty() {
            write!(f, " ({})", context.join(", "))?;
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

/// One line, like Display plus kind and retryability, so `main` returning an error
/// prints something readable.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{self} [kind: {:?}, retryable: {}]",
            self.kind, self.retryable
        )
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_with_context() {
        let e = Error::unsupported("request/reply")
            .with_broker("memory")
            .with_channel("alarm.to.bot");
        assert_eq!(
            e.to_string(),
            "unsupported: request/reply (broker memory, channel \"alarm.to.bot\")"
        );
        assert!(!e.is_retryable());
        assert!(Error::new(ErrorKind::Unreachable, "x").is_retryable());
    }
}
