//! Typed channels: a wire name bound to one payload type, at compile time or at run time.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A payload type that can travel on a channel: anything serde can encode and decode.
pub trait Message: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Message for T {}

/// A channel carrying messages of type `M`, known on the wire by its name.
///
/// Usually declared with [`channels!`](crate::channels), which makes each channel an
/// associated constant of the application's `BrokerChannel` type, so a payload of the
/// wrong type on a channel does not compile. This compiles:
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] pub struct AlarmToBot { pub message: String }
/// # #[derive(Serialize, Deserialize)] pub struct AlarmToLog { pub message: String, pub extra: Option<String> }
/// # anybroker::channels! { pub BrokerChannel {
/// #     AlarmToBot: AlarmToBot = "alarm.to.bot", AlarmToLog: AlarmToLog = "alarm.to.log" } }
/// async fn send(router: &anybroker::MessageRouter) -> anybroker::Result<()> {
///     let alarm = AlarmToLog { message: "disk full".into(), extra: None };
///     router.publish(BrokerChannel::AlarmToLog, &alarm).await
/// }
/// ```
///
/// and the same with an `AlarmToLog` on the `AlarmToBot` channel is a type error (E0308):
///
/// ```compile_fail,E0308
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] pub struct AlarmToBot { pub message: String }
/// # #[derive(Serialize, Deserialize)] pub struct AlarmToLog { pub message: String, pub extra: Option<String> }
/// # anybroker::channels! { pub BrokerChannel {
/// #     AlarmToBot: AlarmToBot = "alarm.to.bot", AlarmToLog: AlarmToLog = "alarm.to.log" } }
/// async fn send(router: &anybroker::MessageRouter) -> anybroker::Result<()> {
///     let alarm = AlarmToLog { message: "disk full".into(), extra: None };
///     router.publish(BrokerChannel::AlarmToBot, &alarm).await
/// }
/// ```
pub struct Channel<M> {
    name: &'static str,
    _message: PhantomData<fn() -> M>,
}

impl<M> Channel<M> {
    /// A channel named `name` (e.g. `"alarm.to.bot"`) carrying `M`.
    pub const fn new(name: &'static str) -> Self {
        Channel {
            name,
            _message: PhantomData,
        }
    }

    /// A channel whose name is decided at run time (`format!("orders.{tenant}")`),
    /// carrying `M` like any other: publish, handle, dead letters, capabilities and
    /// config lookup take it as they take a declared one.
    ///
    /// The name is interned: each distinct name is stored once for the life of the
    /// process and every `Channel` of it is a copy of one pointer, so publishing on it
    /// costs what publishing on a declared channel does. Meant for names from a bounded
    /// set (tenants, regions, test runs), not one per message. Config can give such
    /// channels settings by prefix: `[channels."orders.*"]`.
    ///
    /// ```
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Order { id: u64 }
    /// let tenant = "acme";
    /// let orders = anybroker::Channel::<Order>::named(format!("orders.{tenant}"));
    /// assert_eq!(orders.name(), "orders.acme");
    /// let again = anybroker::Channel::<Order>::named("orders.acme");
    /// assert!(std::ptr::eq(orders.name(), again.name()), "one copy of each name");
    /// ```
    pub fn named(name: impl AsRef<str>) -> Self {
        Channel::new(intern(name.as_ref()))
    }

    /// The wire name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

/// The one stored copy of `name`, made on its first use.
fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    let names = names.get_or_insert_with(HashSet::new);
    if let Some(stored) = names.get(name) {
        return stored;
    }
    let stored: &'static str = Box::leak(name.into());
    names.insert(stored);
    stored
}

impl<M> Clone for Channel<M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for Channel<M> {}

impl<M> fmt::Debug for Channel<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Channel({:?}: {})",
            self.name,
            std::any::type_name::<M>()
        )
    }
}

impl<M> fmt::Display for Channel<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// The set of channels an application declares; lets the router check at start that
/// every channel has a route and that the config names no unknown channel.
pub trait ChannelSet {
    /// Every channel's wire name.
    const NAMES: &'static [&'static str];
}

/// Declares an application's channels: one associated constant per channel, each
/// bound to its payload type, plus [`ChannelSet`] for config checks.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize)]
/// pub struct AlarmToBot { pub message: String }
/// #[derive(Serialize, Deserialize)]
/// pub struct AlarmToLog { pub message: String, pub extra: Option<String> }
///
/// anybroker::channels! {
///     /// The demo's channels.
///     pub BrokerChannel {
///         AlarmToBot: AlarmToBot = "alarm.to.bot",
///         AlarmToLog: AlarmToLog = "alarm.to.log",
///     }
/// }
/// assert_eq!(BrokerChannel::AlarmToLog.name(), "alarm.to.log");
/// ```
#[macro_export]
macro_rules! channels {
    (
        $(#[$meta:meta])*
        $vis:vis $set:ident {
            $( $(#[$cmeta:meta])* $channel:ident : $message:ty = $name:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis struct $set;

        #[allow(non_upper_case_globals)]
        impl $set {
            $(
                $(#[$cmeta])*
                #[doc = concat!("Channel `", $name, "`, carrying `", stringify!($message), "`.")]
                pub const $channel: $crate::Channel<$message> = $crate::Channel::new($name);
            )+
        }

        impl $crate::ChannelSet for $set {
            const NAMES: &'static [&'static str] = &[$($name),+];
        }
    };
}
