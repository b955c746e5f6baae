//! The contract every backend implements: a broker opens channels; an open channel
//! publishes, subscribes and, where its mode can, delays, keeps dead letters and
//! answers requests.
//!
//! Futures are returned as `impl Future + Send`, not boxed: the registry dispatches
//! through enums, so a publish costs no allocation for its future.

use std::future::{ready, Future};
use std::sync::Arc;
use std::time::Duration;

use super::{
    Backlog, Capabilities, DeadLetterAction, DeadLetterSelector, Envelope, Error, Presence, Result,
    SubscribeOptions, Subscription,
};
pub use crate::BrokerKind;

impl std::fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a broker needs to open one channel.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChannelSpec {
    /// The channel's wire name.
    pub name: Arc<str>,
    /// The group handlers join when they name none. A broker that keeps messages only
    /// for groups that exist (a queue per group) declares this one when the channel
    /// opens, so what is published before its first member subscribes is kept.
    pub default_group: String,
}

impl ChannelSpec {
    /// The spec of `name`, whose handlers join `default_group` unless they name one.
    pub fn new(name: impl Into<Arc<str>>, default_group: impl Into<String>) -> Self {
        ChannelSpec {
            name: name.into(),
            default_group: default_group.into(),
        }
    }
}

/// One connected broker, as configured. Cloning shares the connection.
pub trait Backend: Clone + Send + Sync + 'static {
    /// Its `[brokers.<name>]` table.
    type Config;
    /// What [`open_channel`](Backend::open_channel) returns: the mode's channel type,
    /// or an enum of them when the config chooses the mode.
    type Channel: BackendChannel;

    /// Connects and checks the server answers.
    fn connect(config: &Self::Config) -> impl Future<Output = Result<Self>> + Send;

    /// Opens `spec.name` once: validates the name, declares what the channel needs on
    /// the broker (streams, exchanges, queues, topics) and works out its wire names,
    /// so nothing of that is done again per publish.
    fn open_channel(
        &self,
        spec: &ChannelSpec,
    ) -> impl Future<Output = Result<Self::Channel>> + Send;

    /// Whether [`shutdown`](Backend::shutdown) ran.
    fn is_closed(&self) -> bool;

    /// Whether the server can be reached now, answered cheaply enough for a readiness
    /// probe: the client's own connection state where it keeps one, else one round
    /// trip bounded by a short timeout. An error says what is wrong.
    fn check_connection(&self) -> impl Future<Output = Result<()>> + Send;

    /// Closes connections; the registry answers every later call with `Closed`.
    fn shutdown(&self) -> impl Future<Output = Result<()>> + Send;

    /// What the broker still holds of channel `spec.name` for `group`, found without
    /// declaring or creating anything: `None` when it has nothing of the channel. A
    /// router asks the brokers a channel is not on, to warn at start of messages left
    /// behind by a move. Default: `Unsupported` (a broker that keeps nothing for a
    /// group, or keeps it in the process).
    fn leftover(
        &self,
        spec: &ChannelSpec,
        group: &str,
    ) -> impl Future<Output = Result<Option<Backlog>>> + Send {
        let _ = (spec, group);
        ready(Err(Error::unsupported(
            "leftover: this broker cannot tell what it holds of a channel without opening it",
        )))
    }

    /// Says that this process (one router of it, `instance`) uses channel `spec.name`
    /// on this broker, until the returned [`Presence`] is withdrawn or dropped. A
    /// router announces the channels it publishes or handles on their configured
    /// broker, so that one moving a channel away can tell, with
    /// [`announced`](Backend::announced), when no instance on an older config uses it
    /// there any more. Default: `Unsupported`.
    fn announce(
        &self,
        spec: &ChannelSpec,
        instance: &str,
    ) -> impl Future<Output = Result<Presence>> + Send {
        let _ = (spec, instance);
        ready(Err(Error::unsupported(
            "announce: this broker cannot tell other routers which channels it is used for",
        )))
    }

    /// How many routers have announced channel `spec.name` on this broker and not
    /// withdrawn (those that died without withdrawing are counted until their
    /// presence expires). Default: `Unsupported`.
    fn announced(&self, spec: &ChannelSpec) -> impl Future<Output = Result<u64>> + Send {
        let _ = spec;
        ready(Err(Error::unsupported(
            "announced: this broker cannot tell which routers use a channel",
        )))
    }
}

/// An open channel of one mode. The required methods are what every mode does; the
/// others answer [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) unless the
/// mode has the capability their doc names. Broker name, channel and operation are
/// added to errors by the registry, once, as is the check that the broker is open.
pub trait BackendChannel: Send + Sync + 'static {
    /// What this mode guarantees: declared here, once per mode.
    fn capabilities(&self) -> Capabilities;

    /// Publishes and returns once the broker accepted the message.
    fn publish(&self, envelope: Envelope) -> impl Future<Output = Result<()>> + Send;

    /// Publishes `envelope` now if the broker takes it without any wait (the embedded
    /// broker, with room in its log): `None`. Otherwise gives it back, untouched, for
    /// [`publish`](Self::publish). The router tries this first, so a publish that
    /// needs no wait is not made a future of. Default: gives it back.
    fn publish_at_once(&self, envelope: Envelope) -> Option<Envelope> {
        Some(envelope)
    }

    /// Publishes `envelopes` and returns once the broker answered for each, with one
    /// result per envelope in their order. A backend whose broker takes many messages
    /// in one request does so (Redis: one pipeline). Default: every publish at once,
    /// the client pipelining them on its connection.
    fn publish_batch(
        &self,
        envelopes: Vec<Envelope>,
    ) -> impl Future<Output = Vec<Result<()>>> + Send {
        futures::future::join_all(envelopes.into_iter().map(|e| self.publish(e)))
    }

    /// Starts one member of `options.group`.
    fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> impl Future<Output = Result<Box<dyn Subscription>>> + Send;

    /// Creates what `options.group` needs to receive the channel's messages before its
    /// first member subscribes (a queue, a durable consumer, a stream group, topics and
    /// start offsets), so what is published from now on waits for it. Idempotent; an
    /// existing group keeps its position. Every mode whose
    /// [`new_group_start`](Capabilities::new_group_start) is not `Live`.
    fn provision(&self, options: &SubscribeOptions) -> impl Future<Output = Result<()>> + Send {
        let _ = options;
        ready(Err(Error::unsupported(
            "provision: this broker in its configured mode keeps nothing for a group without a listening member",
        )
        .with_operation("provision")))
    }

    /// Publishes so the message is delivered no earlier than `delay` from now.
    /// Capability `delay`.
    fn publish_delayed(
        &self,
        envelope: Envelope,
        delay: Duration,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (envelope, delay);
        ready(Err(lacks("publish_delayed", "delay")))
    }

    /// How far `group` is behind on this channel. Modes that keep messages for a group
    /// (those whose [`new_group_start`](Capabilities::new_group_start) is not `Live`).
    fn backlog(&self, group: &str) -> impl Future<Output = Result<Backlog>> + Send {
        let _ = group;
        ready(Err(Error::unsupported(
            "backlog: this broker in its configured mode keeps nothing for a group to be behind on",
        )
        .with_operation("backlog")))
    }

    /// Reads up to `limit` dead letters, oldest first, without removing them.
    /// Capability `dead_letters`.
    fn dead_letters(&self, limit: usize) -> impl Future<Output = Result<Vec<Envelope>>> + Send {
        let _ = limit;
        ready(Err(lacks("dead_letters", "dead-letters")))
    }

    /// Replays or discards up to `limit` of the dead letters `selector` picks, oldest
    /// first, among those there when it started; returns how many. A replayed dead
    /// letter is published on the channel as the same message (same id) on attempt 1,
    /// then removed: a crash in between may leave a copy, never lose one. Capability
    /// `dead_letters`.
    fn settle_dead_letters(
        &self,
        selector: &DeadLetterSelector,
        action: DeadLetterAction,
        limit: usize,
    ) -> impl Future<Output = Result<usize>> + Send {
        let _ = (selector, limit);
        ready(Err(lacks(action.operation(), "dead-letters")))
    }

    /// Sends a request and waits up to `timeout` for the reply of a handler. A reply
    /// carrying the handler's error has the header
    /// [`header::REPLY_ERROR`](crate::header::REPLY_ERROR). Capability `request_reply`.
    fn request(
        &self,
        envelope: Envelope,
        timeout: Duration,
    ) -> impl Future<Output = Result<Envelope>> + Send {
        let _ = (envelope, timeout);
        ready(Err(lacks("request", "request-reply")))
    }

    /// Starts answering requests as a member of `options.group`; deliveries are settled
    /// with [`Settlement::Reply`](crate::Settlement::Reply). Capability `request_reply`.
    fn serve(
        &self,
        options: SubscribeOptions,
    ) -> impl Future<Output = Result<Box<dyn Subscription>>> + Send {
        let _ = options;
        ready(Err(lacks("serve", "request-reply")))
    }
}

/// The `Unsupported` error of an operation whose capability a mode lacks.
fn lacks(operation: &'static str, capability: &str) -> Error {
    Error::unsupported(format!(
        "{operation} needs the capability {capability}, which this broker in its configured mode lacks"
    ))
    .with_operation(operation)
}

/// The channel type of a backend this build leaves out (its cargo feature is off): it
/// has no values, so the registry's enum keeps one variant per backend whatever the
/// build, and no channel of it can exist.
#[doc(hidden)]
#[derive(Debug)]
pub enum Unbuilt {}

impl BackendChannel for Unbuilt {
    fn capabilities(&self) -> Capabilities {
        match *self {}
    }

    async fn publish(&self, _: Envelope) -> Result<()> {
        match *self {}
    }

    async fn subscribe(&self, _: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        match *self {}
    }
}

/// Makes an enum of channel types one channel type, forwarding every operation to the
/// variant: a backend whose config chooses the mode (`Streams(..)`, `PubSub(..)`), and
/// the registry's enum of every backend. `future` names the enum of the variants'
/// futures that each operation returns: dispatching allocates nothing and adds no
/// copy of the arguments, so a publish future is the size of the largest variant's.
#[macro_export]
#[doc(hidden)]
macro_rules! channel_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[doc = $doc:literal])* $variant:ident($ty:ty), )+
        }
        future $future:ident;
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[doc = $doc])* $variant($ty), )+
        }

        /// The future of one operation on one variant.
        #[doc(hidden)]
        $vis enum $future<$($variant),+> {
            $( $variant($variant), )+
        }

        impl<Output, $($variant: std::future::Future<Output = Output>),+> std::future::Future
            for $future<$($variant),+>
        {
            type Output = Output;

            fn poll(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Output> {
                // SAFETY: structural pinning. The enum is pinned as a whole, has no
                // Drop of its own and no method that moves a field out, and each arm
                // only reborrows the one field of the current variant, pinned.
                unsafe {
                    match self.get_unchecked_mut() {
                        $( $future::$variant(f) => std::pin::Pin::new_unchecked(f).poll(cx), )+
                    }
                }
            }
        }

        impl $crate::BackendChannel for $name {
            fn capabilities(&self) -> $crate::Capabilities {
                match self { $( $name::$variant(c) => c.capabilities(), )+ }
            }

            fn publish(
                &self,
                envelope: $crate::Envelope,
            ) -> impl std::future::Future<Output = $crate::Result<()>> + Send {
                match self { $( $name::$variant(c) => $future::$variant(c.publish(envelope)), )+ }
            }

            #[inline]
            fn publish_at_once(&self, envelope: $crate::Envelope) -> Option<$crate::Envelope> {
                match self { $( $name::$variant(c) => c.publish_at_once(envelope), )+ }
            }

            fn publish_batch(
                &self,
                envelopes: Vec<$crate::Envelope>,
            ) -> impl std::future::Future<Output = Vec<$crate::Result<()>>> + Send {
                match self { $( $name::$variant(c) => $future::$variant(c.publish_batch(envelopes)), )+ }
            }

            fn subscribe(
                &self,
                options: $crate::SubscribeOptions,
            ) -> impl std::future::Future<Output = $crate::Result<Box<dyn $crate::Subscription>>> + Send
            {
                match self { $( $name::$variant(c) => $future::$variant(c.subscribe(options)), )+ }
            }

            fn provision(
                &self,
                options: &$crate::SubscribeOptions,
            ) -> impl std::future::Future<Output = $crate::Result<()>> + Send {
                match self { $( $name::$variant(c) => $future::$variant(c.provision(options)), )+ }
            }

            fn publish_delayed(
                &self,
                envelope: $crate::Envelope,
                delay: std::time::Duration,
            ) -> impl std::future::Future<Output = $crate::Result<()>> + Send {
                match self {
                    $( $name::$variant(c) => $future::$variant(c.publish_delayed(envelope, delay)), )+
                }
            }

            fn backlog(
                &self,
                group: &str,
            ) -> impl std::future::Future<Output = $crate::Result<$crate::Backlog>> + Send {
                match self { $( $name::$variant(c) => $future::$variant(c.backlog(group)), )+ }
            }

            fn dead_letters(
                &self,
                limit: usize,
            ) -> impl std::future::Future<Output = $crate::Result<Vec<$crate::Envelope>>> + Send {
                match self { $( $name::$variant(c) => $future::$variant(c.dead_letters(limit)), )+ }
            }

            fn settle_dead_letters(
                &self,
                selector: &$crate::DeadLetterSelector,
                action: $crate::DeadLetterAction,
                limit: usize,
            ) -> impl std::future::Future<Output = $crate::Result<usize>> + Send {
                match self {
                    $( $name::$variant(c) => {
                        $future::$variant(c.settle_dead_letters(selector, action, limit))
                    } )+
                }
            }

            fn request(
                &self,
                envelope: $crate::Envelope,
                timeout: std::time::Duration,
            ) -> impl std::future::Future<Output = $crate::Result<$crate::Envelope>> + Send {
                match self {
                    $( $name::$variant(c) => $future::$variant(c.request(envelope, timeout)), )+
                }
            }

            fn serve(
                &self,
                options: $crate::SubscribeOptions,
            ) -> impl std::future::Future<Output = $crate::Result<Box<dyn $crate::Subscription>>> + Send
            {
                match self { $( $name::$variant(c) => $future::$variant(c.serve(options)), )+ }
            }
        }
    };
}
