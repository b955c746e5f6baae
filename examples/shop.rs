//! A small application and its tests: the tests use the test harness (feature
//! `testing`) on its production wiring, with the real retry and dead-letter semantics
//! on virtual time.
//!
//! ```text
//! cargo run --example shop                       # runs it on the embedded broker
//! cargo test --example shop                      # its tests (scripts/test runs them too)
//! ```
//!
//! Orders arrive on `orders.placed`; the handler charges them through a payment gateway
//! and, once charged, publishes a receipt on `orders.receipts`. A gateway that is
//! down is retried with backoff; an order of nothing is refused for good.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anybroker::{
    HandlerError, MessageContext, MessageHandler, MessageRouter, RetryPolicy, RouterBuilder,
    RouterConfig,
};
use serde::{Deserialize, Serialize};

/// An order a customer placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub order: String,
    pub cents: u64,
}

/// What the shop sends once an order is charged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub order: String,
    pub cents: u64,
}

anybroker::channels! {
    /// The shop's channels.
    pub ShopChannel {
        OrderPlaced: OrderPlaced = "orders.placed",
        Receipts: Receipt = "orders.receipts",
    }
}

/// Charges a customer; an error means "try again later".
pub trait PaymentGateway: Send + Sync + 'static {
    fn charge(&self, order: &str, cents: u64) -> Result<(), String>;
}

/// Charges each order and sends its receipt.
struct ChargeOrders {
    gateway: Arc<dyn PaymentGateway>,
    /// The router to send receipts with, set once it has started.
    publisher: Arc<OnceLock<MessageRouter>>,
}

impl MessageHandler<OrderPlaced> for ChargeOrders {
    async fn handle(&self, placed: OrderPlaced, _cx: &MessageContext) -> Result<(), HandlerError> {
        if placed.cents == 0 {
            return Err(HandlerError::permanent(format!(
                "order {} is empty",
                placed.order
            )));
        }
        assert!(
            !placed.order.is_empty(),
            "an order without an id reached the shop"
        );
        self.gateway
            .charge(&placed.order, placed.cents)
            .map_err(HandlerError::retryable)?;
        let receipt = Receipt {
            order: placed.order,
            cents: placed.cents,
        };
        let publisher = self.publisher.get().expect("started");
        publisher.publish(ShopChannel::Receipts, &receipt).await?;
        Ok(())
    }
}

/// The shop's wiring, the same in production and in its tests: channels, the handler,
/// its retry policy (5 attempts from 30 s, at most 10 min apart).
pub fn wiring(
    builder: RouterBuilder,
    gateway: Arc<dyn PaymentGateway>,
    publisher: Arc<OnceLock<MessageRouter>>,
) -> RouterBuilder {
    let retry = RetryPolicy::new(5)
        .initial(Duration::from_secs(30))
        .max(Duration::from_secs(600));
    builder.channels::<ShopChannel>().handle_with(
        ShopChannel::OrderPlaced,
        ChargeOrders { gateway, publisher },
        anybroker::HandlerOptions::new()
            .group("billing")
            .retry(retry),
    )
}

struct AlwaysCharges;

impl PaymentGateway for AlwaysCharges {
    fn charge(&self, order: &str, cents: u64) -> Result<(), String> {
        println!("charged {cents} cents for {order}");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = RouterConfig::from_toml_str(
        "default_broker = \"memory\"\n[brokers.memory]\nkind = \"memory\"\n",
    )?;
    let publisher = Arc::new(OnceLock::new());
    let (receipts, mut received) = tokio::sync::mpsc::unbounded_channel();
    let print_receipt = anybroker::handler_fn(move |receipt: Receipt, _cx: MessageContext| {
        let _ = receipts.send(receipt);
        async { Ok(()) }
    });
    let router = wiring(
        MessageRouter::builder(config),
        Arc::new(AlwaysCharges),
        publisher.clone(),
    )
    .handle(ShopChannel::Receipts, print_receipt)
    .start()
    .await?;
    publisher.set(router.clone()).ok();
    let order = OrderPlaced {
        order: "o-1".into(),
        cents: 1250,
    };
    router.publish(ShopChannel::OrderPlaced, &order).await?;
    match tokio::time::timeout(Duration::from_secs(10), received.recv()).await {
        Ok(Some(receipt)) => println!("receipt: {receipt:?}"),
        _ => return Err("no receipt within 10 s".into()),
    }
    router.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anybroker::testing::{run_until_settled, Outcome, Recorder};
    use anybroker::{DeadLetterReason, Envelope, MemoryBroker};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A gateway that is down for its first `failures` charges.
    struct Flaky {
        failures: u32,
        calls: AtomicU32,
    }

    impl PaymentGateway for Flaky {
        fn charge(&self, _order: &str, _cents: u64) -> Result<(), String> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if call <= self.failures {
                return Err("gateway down".into());
            }
            Ok(())
        }
    }

    /// The shop as production wires it, on an embedded broker, recorded.
    async fn shop(failures: u32) -> (MessageRouter, MemoryBroker, Recorder) {
        let production = RouterConfig::from_toml_str(
            "default_broker = \"kafka\"\n[brokers.kafka]\nkind = \"memory\"\n",
        )
        .unwrap();
        let (broker, recorder) = (MemoryBroker::default(), Recorder::new());
        let publisher = Arc::new(OnceLock::new());
        let gateway = Arc::new(Flaky {
            failures,
            calls: AtomicU32::new(0),
        });
        let router = wiring(
            MessageRouter::builder(production),
            gateway,
            publisher.clone(),
        )
        .on_embedded_broker(&broker)
        .recording(&recorder)
        .start()
        .await
        .unwrap();
        publisher.set(router.clone()).ok().unwrap();
        (router, broker, recorder)
    }

    async fn settle(broker: &MemoryBroker) {
        run_until_settled(broker, Duration::from_secs(24 * 3600))
            .await
            .unwrap();
    }

    fn order(cents: u64) -> OrderPlaced {
        OrderPlaced {
            order: "o-7".into(),
            cents,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_order_is_charged_and_its_receipt_sent() {
        let (router, broker, recorder) = shop(0).await;
        router
            .publish(ShopChannel::OrderPlaced, &order(1250))
            .await
            .unwrap();
        settle(&broker).await;
        let calls = recorder.calls(ShopChannel::OrderPlaced);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].outcome, Outcome::Acked);
        assert_eq!(
            recorder.published_messages(ShopChannel::Receipts),
            vec![Receipt {
                order: "o-7".into(),
                cents: 1250
            }]
        );
        router.shutdown().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_gateway_down_twice_is_retried_after_30_then_60_seconds() {
        let (router, broker, recorder) = shop(2).await;
        router
            .publish(ShopChannel::OrderPlaced, &order(1250))
            .await
            .unwrap();
        settle(&broker).await;
        let calls = recorder.calls(ShopChannel::OrderPlaced);
        let attempts: Vec<(u32, u64)> = calls
            .iter()
            .map(|c| (c.attempt(), c.at.as_secs()))
            .collect();
        assert_eq!(attempts, vec![(1, 0), (2, 30), (3, 90)]);
        assert!(
            matches!(&calls[0].outcome, Outcome::Retried { delay, .. } if delay.as_secs() == 30)
        );
        assert_eq!(calls[2].outcome, Outcome::Acked);
        assert_eq!(recorder.published_messages(ShopChannel::Receipts).len(), 1);
        router.shutdown().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_order_is_dead_lettered_at_once() {
        let (router, broker, recorder) = shop(0).await;
        router
            .publish(ShopChannel::OrderPlaced, &order(0))
            .await
            .unwrap();
        settle(&broker).await;
        let dead = router
            .dead_letters(ShopChannel::OrderPlaced, 10)
            .await
            .unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, Some(DeadLetterReason::PermanentError));
        assert_eq!(dead[0].message().unwrap(), order(0));
        assert_eq!(
            recorder.calls(ShopChannel::OrderPlaced).len(),
            1,
            "not retried"
        );
        assert!(recorder.published(ShopChannel::Receipts).is_empty());
        router.shutdown().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_handler_is_retried_then_dead_lettered() {
        let (router, broker, recorder) = shop(0).await;
        let nameless = OrderPlaced {
            order: String::new(),
            cents: 100,
        };
        router
            .publish(ShopChannel::OrderPlaced, &nameless)
            .await
            .unwrap();
        settle(&broker).await;
        let calls = recorder.calls(ShopChannel::OrderPlaced);
        assert_eq!(calls.len(), 5, "every attempt of the policy");
        assert!(calls.iter().all(|c| c.outcome.panicked()));
        let dead = router
            .dead_letters(ShopChannel::OrderPlaced, 10)
            .await
            .unwrap();
        assert_eq!(dead[0].reason, Some(DeadLetterReason::AttemptsExhausted));
        router.shutdown().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_undecodable_order_is_dead_lettered_and_the_next_one_handled() {
        let (router, broker, recorder) = shop(0).await;
        let foreign = Envelope::new(ShopChannel::OrderPlaced.name(), &b"<order/>"[..])
            .with_id("foreign-1")
            .with_header("content-type", "application/xml");
        router.publish_envelope(foreign).await.unwrap();
        router
            .publish(ShopChannel::OrderPlaced, &order(1250))
            .await
            .unwrap();
        settle(&broker).await;
        let dead = router
            .dead_letters(ShopChannel::OrderPlaced, 10)
            .await
            .unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (&*dead[0].id, dead[0].reason),
            ("foreign-1", Some(DeadLetterReason::Undecodable))
        );
        assert_eq!(dead[0].payload().as_ref(), b"<order/>");
        assert_eq!(
            recorder.received(ShopChannel::OrderPlaced),
            vec![order(1250)]
        );
        router.shutdown().await.unwrap();
    }

    /// One handler, called directly: no router, no broker.
    #[tokio::test]
    async fn the_handler_alone_refuses_an_empty_order() {
        let handler = ChargeOrders {
            gateway: Arc::new(AlwaysCharges),
            publisher: Arc::new(OnceLock::new()),
        };
        let cx = MessageContext::new(
            Envelope::new("orders.placed", &b""[..]).with_attempt(1),
            "test",
        );
        let err = handler.handle(order(0), &cx).await.unwrap_err();
        assert!(err.is_permanent());
    }
}
