//! The one list of backends (`backends!` in `lib.rs`). What enumerates them is made
//! from it: the backend modules, [`BrokerKind`](crate::BrokerKind), the
//! [`BrokerConfig`](crate::BrokerConfig) and [`Broker`](crate::Broker) enums, reading a
//! config by its `kind`, connecting, and opening channels. A backend is its folder, its
//! cargo feature and one line of that list; its config type implements
//! [`BackendConfig`] and its broker type [`Backend`](crate::Backend).

use serde::de::DeserializeOwned;

/// What the registry needs of a backend's config type.
pub trait BackendConfig {
    /// How the backend carries channels, in a word (`topics`, `streams`, ...).
    fn mode(&self) -> &'static str;
    /// Checks values serde cannot; the message names the key within the table.
    fn validate(&self) -> Result<(), String>;
}

/// Reads one config type from a table: the caller's deserializer, so its error
/// reporting (paths, messages) applies whatever the backend.
pub trait TableReader {
    /// The caller's error.
    type Error;
    /// Reads the table as `T`.
    fn read<T: DeserializeOwned>(self) -> Result<T, Self::Error>;
}

/// Makes everything that enumerates the backends from their list: one line per backend,
/// `Variant = "kind", cfg(<when it is built>), module::{Config, Broker, Channel};`.
macro_rules! backends {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident = $kind:literal, cfg($($built:tt)*), $module:ident::{$config:ident, $broker:ident, $channel:ident};
    )+) => {
        $(pub mod $module;)+

        /// Which broker carries a channel.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum BrokerKind {
            $(
                $(#[doc = $doc])*
                $variant,
            )+
        }

        impl BrokerKind {
            /// Every kind.
            pub const ALL: [BrokerKind; [$($kind),+].len()] = [$(BrokerKind::$variant),+];

            /// The name used in config (`kind = "..."`) and in cargo features.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(BrokerKind::$variant => $kind,)+
                }
            }

            /// Whether this build includes the backend (its cargo feature is on).
            pub fn is_built(self) -> bool {
                match self {
                    $(BrokerKind::$variant => cfg!($($built)*),)+
                }
            }
        }

        /// One `[brokers.<name>]` table; `kind` selects the backend.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(tag = "kind")]
        #[non_exhaustive]
        pub enum BrokerConfig {
            $(
                #[doc = concat!("`kind = \"", $kind, "\"`.")]
                #[serde(rename = $kind)]
                $variant($module::$config),
            )+
        }

        impl BrokerConfig {
            /// The backend this config selects.
            pub fn kind(&self) -> BrokerKind {
                match self {
                    $(BrokerConfig::$variant(_) => BrokerKind::$variant,)+
                }
            }

            /// How this backend carries channels, in a word: `embedded` (memory),
            /// `topics` (Kafka), `queues` (RabbitMQ), `streams` or `pubsub` (Redis),
            /// `jetstream` or `core` (NATS). For tables and logs; the guarantees are in
            /// [`Capabilities`](crate::Capabilities).
            pub fn mode(&self) -> &'static str {
                match self {
                    $(BrokerConfig::$variant(c) => $crate::backends::BackendConfig::mode(c),)+
                }
            }

            /// Checks values serde cannot; the message names the key within the table.
            pub fn validate(&self) -> std::result::Result<(), String> {
                match self {
                    $(BrokerConfig::$variant(c) => $crate::backends::BackendConfig::validate(c),)+
                }
            }

            /// Reads the rest of a table whose `kind` is `kind` with `reader`; `None` if
            /// no backend has that kind.
            pub fn read<R: $crate::backends::TableReader>(
                kind: &str,
                reader: R,
            ) -> Option<std::result::Result<BrokerConfig, R::Error>> {
                match kind {
                    $($kind => Some(reader.read().map(BrokerConfig::$variant)),)+
                    _ => None,
                }
            }
        }

        /// Every backend this build includes, dispatched without boxing.
        #[derive(Debug, Clone)]
        #[non_exhaustive]
        pub enum Broker {
            $(
                $(#[doc = $doc])*
                #[cfg($($built)*)]
                $variant($module::$broker),
            )+
        }

        $(
            #[cfg($($built)*)]
            impl From<$module::$broker> for Broker {
                fn from(broker: $module::$broker) -> Broker {
                    Broker::$variant(broker)
                }
            }
        )+

        /// Each backend's channel type, or [`Unbuilt`](crate::core::Unbuilt) when the
        /// build leaves the backend out.
        mod channel_types {
            $(
                #[cfg($($built)*)]
                pub(crate) use $crate::$module::$channel;
                #[cfg(not($($built)*))]
                pub(crate) type $channel = $crate::core::Unbuilt;
            )+
        }

        $crate::channel_enum! {
            /// An open channel of any backend.
            // The variant of a backend the build leaves out holds `Unbuilt`: never made.
            #[allow(dead_code)]
            pub(crate) enum AnyChannel {
                $( $variant(channel_types::$channel), )+
            }
            future AnyChannelFuture;
        }

        impl Broker {
            /// Connects the broker named `name` (the key under `[brokers]`), as
            /// configured. A kind whose cargo feature is off is a `ConfigInvalid` error
            /// naming the feature.
            pub async fn connect(name: &str, config: &BrokerConfig) -> Result<Broker> {
                let kind = config.kind();
                match config {
                    $(
                        #[cfg($($built)*)]
                        BrokerConfig::$variant(c) => <$module::$broker as $crate::Backend>::connect(c)
                            .await
                            .map(Broker::$variant)
                            .map_err(|e| e.with_broker(name).with_broker_kind(kind)),
                    )+
                    #[allow(unreachable_patterns)]
                    _ => Err(Error::config(format!(
                        "brokers.{name}: kind \"{kind}\" needs the cargo feature \"{kind}\" of anybroker, which this build does not have"
                    ))
                    .with_broker(name)),
                }
            }

            /// Which backend this is.
            pub fn kind(&self) -> BrokerKind {
                match self {
                    $( #[cfg($($built)*)] Broker::$variant(_) => BrokerKind::$variant, )+
                }
            }

            /// Whether [`shutdown`](Broker::shutdown) ran.
            pub fn is_closed(&self) -> bool {
                match self {
                    $( #[cfg($($built)*)] Broker::$variant(b) => $crate::Backend::is_closed(b), )+
                }
            }

            /// Whether the server can be reached now (see
            /// [`Backend::check_connection`](crate::Backend::check_connection)).
            pub async fn check_connection(&self) -> Result<()> {
                if self.is_closed() {
                    return Err(Error::closed("the broker was shut down"));
                }
                match self {
                    $( #[cfg($($built)*)] Broker::$variant(b) => $crate::Backend::check_connection(b).await, )+
                }
            }

            /// What the broker still holds of a channel for a group, without opening it
            /// (see [`Backend::leftover`](crate::Backend::leftover)).
            pub async fn leftover(&self, spec: &$crate::ChannelSpec, group: &str) -> Result<Option<$crate::Backlog>> {
                if self.is_closed() {
                    return Err(Error::closed("the broker was shut down"));
                }
                match self {
                    $( #[cfg($($built)*)] Broker::$variant(b) => $crate::Backend::leftover(b, spec, group).await, )+
                }
            }

            /// Says this process uses a channel here (see
            /// [`Backend::announce`](crate::Backend::announce)).
            pub async fn announce(&self, spec: &$crate::ChannelSpec, instance: &str) -> Result<$crate::Presence> {
                if self.is_closed() {
                    return Err(Error::closed("the broker was shut down"));
                }
                match self {
                    $( #[cfg($($built)*)] Broker::$variant(b) => $crate::Backend::announce(b, spec, instance).await, )+
                }
            }

            /// How many routers announced a channel here (see
            /// [`Backend::announced`](crate::Backend::announced)).
            pub async fn announced(&self, spec: &$crate::ChannelSpec) -> Result<u64> {
                if self.is_closed() {
                    return Err(Error::closed("the broker was shut down"));
                }
                match self {
                    $( #[cfg($($built)*)] Broker::$variant(b) => $crate::Backend::announced(b, spec).await, )+
                }
            }

            pub(crate) async fn open_any(&self, spec: &$crate::ChannelSpec) -> Result<AnyChannel> {
                match self {
                    $(
                        #[cfg($($built)*)]
                        Broker::$variant(b) => $crate::Backend::open_channel(b, spec).await.map(AnyChannel::$variant),
                    )+
                }
            }

            /// Closes connections; later calls on it and its channels fail with `Closed`.
            pub async fn shutdown(&self) -> Result<()> {
                match self {
                    $( #[cfg($($built)*)] Broker::$variant(b) => $crate::Backend::shutdown(b).await, )+
                }
            }
        }
    };
}
