//! The contract every backend implements.

mod broker_api;
mod capabilities;
mod envelope;
mod error;
mod retry;
mod shutdown;
mod subscription;

pub use broker_api::{BrokerKind, MessagePublisher};
pub use capabilities::Capabilities;
pub use envelope::{
    header, new_message_id, unix_micros, unix_millis, DeadLetter, DeadLetterReason, Envelope,
    Headers, CONTENT_TYPE_JSON,
};
pub use error::{Error, ErrorKind, Result};
pub use retry::RetryPolicy;
pub(crate) use shutdown::ShutdownFlag;
pub use subscription::{
    settle_fire_and_forget, Delivery, DeliveryTag, Settlement, SubscribeOptions, Subscription,
};
