//! The contract every backend implements.

// The server backends' codecs are what the property tests feed.
#[cfg(all(
    test,
    any(
        feature = "redis",
        feature = "nats",
        feature = "rabbitmq",
        feature = "kafka"
    )
))]
pub(crate) mod arbitrary;
mod backend;
mod backlog;
mod capabilities;
mod dead_letters;
mod envelope;
mod error;
mod foreign;
// Used by the server backends only: a build with none of their features has no user.
#[allow(dead_code)]
mod in_flight;
mod message_id;
mod presence;
mod retry;
mod shutdown;
mod subscription;

pub use backend::{Backend, BackendChannel, BrokerKind, ChannelSpec, Unbuilt};
pub use backlog::Backlog;
pub use capabilities::{Capabilities, NewGroupStart};
pub use dead_letters::{DeadLetterAction, DeadLetterSelector};
pub use envelope::{
    header, unix_micros, unix_millis, DeadLetter, DeadLetterReason, Envelope, Headers,
    CONTENT_TYPE_JSON,
};
pub use error::{Error, ErrorKind, Result};
#[allow(unused_imports)] // the server backends' only
pub(crate) use foreign::publisher_id;
pub use foreign::{is_content_type_header, is_json};
#[allow(unused_imports)]
pub(crate) use in_flight::InFlightTable;
pub use message_id::{
    message_id_at, message_id_carries, message_id_carries_micros, message_id_time, new_message_id,
    MessageId, MESSAGE_ID_LEN,
};
#[allow(unused_imports)]
pub(crate) use presence::presence_clock;
pub use presence::{Presence, RouterCount, PRESENCE_TTL};
pub use retry::{Jitter, RetryPolicy};
pub(crate) use shutdown::ShutdownFlag;
#[allow(unused_imports)]
pub(crate) use subscription::batch_of;
pub use subscription::{
    settle_fire_and_forget, Delivery, DeliveryTag, Settlement, SubscribeOptions, Subscription,
};
