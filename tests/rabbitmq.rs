//! RabbitMQ-specific tests against real servers: a node of the test's own shut down
//! and started again under load. (Connections closed by the server under load: the
//! conformance case `outage_under_load_loses_none`; messages other clients send: the
//! interop tests.)
#![cfg(feature = "rabbitmq")]

use anybroker::RouterConfig;

mod common;
use common::{restart_under_load, OwnRabbitMq};

/// The RabbitMQ the machine runs (the restart test starts a node of its own).
const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// 10,000 messages published while consumed; the RabbitMQ node is shut down and
/// started again twice mid-stream (its durable queues and persistent messages kept on
/// its disk): every message is handled, the duplicates counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_broker_restarted_under_load_loses_none() {
    let node = std::sync::Arc::new(std::sync::Mutex::new(OwnRabbitMq::start()));
    let url = node.lock().unwrap().url();
    let config = RouterConfig::from_toml_str(&format!(
        "default_broker = \"rabbitmq\"\n[brokers.rabbitmq]\nkind = \"rabbitmq\"\nurl = \"{url}\"\n\
         reconnect_timeout = \"60s\"\n"
    ))
    .unwrap();
    restart_under_load("rabbitmq", config, async || {
        let node = node.clone();
        tokio::task::spawn_blocking(move || {
            let mut node = node.lock().unwrap();
            node.stop();
            node.up();
        })
        .await
        .unwrap();
    })
    .await;
}

/// A retry queue the server removed (idle past its `x-expires`, here deleted to stand
/// for that) is declared again by the next retry that needs it, on the same
/// connection: the message is retried, not refused as unroutable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_its_retry_queue_expired_is_retried() {
    use std::sync::{Arc, Mutex};
    let ch = common::unique_channel::<common::Numbered>("rabbit-expired");
    let config = RouterConfig::from_toml_str(&format!(
        "default_broker = \"rabbitmq\"\n[brokers.rabbitmq]\nkind = \"rabbitmq\"\nurl = \"{URL}\"\n\
         [channels.\"{}\"]\nretry = {{ attempts = 3, initial = \"300ms\", multiplier = 1.0 }}\n",
        ch.name()
    ))
    .unwrap();
    let handled: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
    let handler = {
        let handled = handled.clone();
        anybroker::handler_fn(move |m: common::Numbered, cx: anybroker::MessageContext| {
            let handled = handled.clone();
            async move {
                if cx.attempt() == 1 {
                    return Err(anybroker::HandlerError::retryable("first attempt"));
                }
                handled.lock().unwrap().push((m.seq, cx.attempt()));
                Ok(())
            }
        })
    };
    let router = anybroker::MessageRouter::builder(config)
        .handle_with(ch, handler, anybroker::HandlerOptions::new().group("g"))
        .start()
        .await
        .unwrap();
    let long = std::time::Duration::from_secs(30);
    router
        .publish(ch, &common::Numbered { seq: 1 })
        .await
        .unwrap();
    common::wait_until("the first message retried", long, || {
        handled.lock().unwrap().contains(&(1, 2))
    })
    .await;
    let raw = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let raw_channel = raw.create_channel().await.unwrap();
    let retry_queue = format!("{}:g:retry:300", ch.name());
    raw_channel
        .queue_delete(retry_queue.as_str().into(), Default::default())
        .await
        .unwrap();
    router
        .publish(ch, &common::Numbered { seq: 2 })
        .await
        .unwrap();
    common::wait_until("the second message retried", long, || {
        handled.lock().unwrap().contains(&(2, 2))
    })
    .await;
    router.shutdown().await.unwrap();
    let _ = raw.close(200, "done".into()).await;
}

/// Publishes to a channel some queue takes and to one no queue takes
/// (`park_unroutable = false`), all in flight together, one at a time and in batches:
/// every publish hears of its own route. RabbitMQ sends a `basic.return` ahead of its publish's ack without naming the
/// publish, so on one AMQP channel a return can be read as another publish's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_each_hear_of_their_own_route() {
    use common::{counting_handler, HandledCounts, Numbered};
    use futures::StreamExt;
    const TOTAL: u64 = 6_000;
    let taken = common::unique_channel::<Numbered>("rabbit-taken");
    let untaken = common::unique_channel::<Numbered>("rabbit-untaken");
    let exchange = format!("{}.x", taken.name());
    let config = RouterConfig::from_toml_str(&format!(
        "default_broker = \"rabbitmq\"\n[brokers.rabbitmq]\nkind = \"rabbitmq\"\nurl = \"{URL}\"\n\
         exchange = \"{exchange}\"\npark_unroutable = false\n\
         [channels.\"{}\"]\ngroup = \"u\"\n",
        untaken.name()
    ))
    .unwrap();
    let seen = HandledCounts::default();
    let router = anybroker::MessageRouter::builder(config)
        .handle_with(
            taken,
            counting_handler(&seen, std::time::Duration::ZERO),
            anybroker::HandlerOptions::new().group("g"),
        )
        .start()
        .await
        .unwrap();
    // Opening `untaken` declares its group's queue; without it, no queue takes it.
    router.publish(untaken, &Numbered { seq: 0 }).await.unwrap();
    let raw = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let raw_channel = raw.create_channel().await.unwrap();
    raw_channel
        .queue_delete(
            format!("{}:u", untaken.name()).as_str().into(),
            Default::default(),
        )
        .await
        .unwrap();
    let (mut wrongly_refused, mut wrongly_taken) = (Vec::new(), Vec::new());
    // A steady stream, so the confirms of persisted messages keep arriving while the
    // unroutable ones come back.
    let results: Vec<_> = futures::stream::iter(1..=TOTAL)
        .map(|seq| {
            let (channel, routable) = if seq % 10 == 0 {
                (untaken, false)
            } else {
                (taken, true)
            };
            let router = &router;
            async move {
                (
                    seq,
                    routable,
                    router.publish(channel, &Numbered { seq }).await,
                )
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (seq, routable, result) in results {
        match (routable, result) {
            (true, Err(e)) => wrongly_refused.push(format!("{seq}: {e}")),
            (false, Ok(())) => wrongly_taken.push(seq),
            (false, Err(e)) => assert!(
                e.to_string().contains("unroutable"),
                "{seq} refused for another reason: {e}"
            ),
            (true, Ok(())) => {}
        }
    }
    assert!(
        wrongly_refused.is_empty() && wrongly_taken.is_empty(),
        "routable publishes refused: {wrongly_refused:?}; unroutable ones reported taken: {wrongly_taken:?}"
    );
    // Batches, each of one channel, in flight together: each message of a batch to
    // `untaken` comes back, none of a batch to `taken` does.
    let mut batched = 0;
    for round in 0..20u64 {
        let first = TOTAL + 1 + round * 100;
        let to_taken: Vec<_> = (first..first + 90).map(|seq| Numbered { seq }).collect();
        let to_untaken: Vec<_> = (first + 90..first + 100)
            .map(|seq| Numbered { seq })
            .collect();
        let (taken_results, untaken_results) = futures::join!(
            router.publish_batch(taken, &to_taken),
            router.publish_batch(untaken, &to_untaken)
        );
        for (m, result) in to_taken.iter().zip(taken_results.unwrap()) {
            if let Err(e) = result {
                wrongly_refused.push(format!("{}: {e}", m.seq));
            }
        }
        for (m, result) in to_untaken.iter().zip(untaken_results.unwrap()) {
            match result {
                Ok(()) => wrongly_taken.push(m.seq),
                Err(e) => assert!(e.to_string().contains("unroutable"), "{}: {e}", m.seq),
            }
        }
        batched += to_taken.len();
    }
    assert!(
        wrongly_refused.is_empty() && wrongly_taken.is_empty(),
        "batched messages refused: {wrongly_refused:?}; unroutable ones reported taken: {wrongly_taken:?}"
    );
    common::wait_until(
        "every routable message handled",
        std::time::Duration::from_secs(30),
        || seen.lock().unwrap().len() == (TOTAL - TOTAL / 10) as usize + batched,
    )
    .await;
    router.shutdown().await.unwrap();
    let _ = raw_channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
    let _ = raw.close(200, "done".into()).await;
}

/// Delayed messages whose delay queue the server removed (as when idle past its
/// `x-expires`), published while other publishes are in flight on the same
/// connection: each delayed message is delivered, and no other publish is refused
/// because of the delay queue's return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_into_a_removed_queue_among_other_publishes_is_delivered() {
    use common::{counting_handler, HandledCounts, Numbered};
    use futures::StreamExt;
    const ROUNDS: u64 = 40;
    const PER_ROUND: u64 = 200;
    let ch = common::unique_channel::<Numbered>("rabbit-delay-gone");
    let config = RouterConfig::from_toml_str(&format!(
        "default_broker = \"rabbitmq\"\n[brokers.rabbitmq]\nkind = \"rabbitmq\"\nurl = \"{URL}\"\n"
    ))
    .unwrap();
    let seen = HandledCounts::default();
    let router = anybroker::MessageRouter::builder(config)
        .handle_with(
            ch,
            counting_handler(&seen, std::time::Duration::ZERO),
            anybroker::HandlerOptions::new().group("g"),
        )
        .start()
        .await
        .unwrap();
    let raw = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let raw_channel = raw.create_channel().await.unwrap();
    let delay = std::time::Duration::from_millis(100);
    let delay_queue = format!("{}.delay.100", ch.name());
    let long = std::time::Duration::from_secs(30);
    let mut refused = Vec::new();
    let mut seq = 0;
    for round in 0..ROUNDS {
        if round > 0 {
            // Empty by now (its message was handled): removing it loses nothing.
            raw_channel
                .queue_delete(delay_queue.as_str().into(), Default::default())
                .await
                .unwrap();
        }
        // The delayed message amid a steady stream of others.
        let delayed = 1_000_000 + round;
        let router = &router;
        let results: Vec<_> = futures::stream::iter(0..PER_ROUND)
            .map(|i| {
                seq += 1;
                let seq = if i == PER_ROUND / 2 { delayed } else { seq };
                async move {
                    let message = Numbered { seq };
                    let result = if seq == delayed {
                        router.publish_delayed(ch, &message, delay).await
                    } else {
                        router.publish(ch, &message).await
                    };
                    (seq, result)
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        for (seq, result) in results {
            if let Err(e) = result {
                refused.push(format!("{seq}: {e}"));
            }
        }
        assert!(refused.is_empty(), "publishes refused: {refused:?}");
        common::wait_until(&format!("delayed message {delayed} handled"), long, || {
            seen.lock().unwrap().contains_key(&delayed)
        })
        .await;
    }
    common::wait_until("every message handled", long, || {
        seen.lock().unwrap().len() == (ROUNDS * PER_ROUND) as usize
    })
    .await;
    router.shutdown().await.unwrap();
    let _ = raw.close(200, "done".into()).await;
}

/// Requests to a channel somebody serves and to one nobody serves, in flight together
/// (they share the reply channel): each unserved one hears `NoResponder` at once, each
/// served one its reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_hear_whether_they_are_served() {
    use common::Numbered;
    use futures::StreamExt;
    const TOTAL: u64 = 2_000;
    let served = common::unique_channel::<Numbered>("rabbit-served");
    let unserved = common::unique_channel::<Numbered>("rabbit-unserved");
    let config = RouterConfig::from_toml_str(&format!(
        "default_broker = \"rabbitmq\"\n[brokers.rabbitmq]\nkind = \"rabbitmq\"\nurl = \"{URL}\"\n"
    ))
    .unwrap();
    let router = anybroker::MessageRouter::builder(config)
        .serve(served, |m: Numbered, _cx| async move {
            Ok::<_, anybroker::HandlerError>(Numbered { seq: m.seq * 2 })
        })
        .start()
        .await
        .unwrap();
    let timeout = std::time::Duration::from_secs(20);
    let answers: Vec<_> = futures::stream::iter(1..=TOTAL)
        .map(|seq| {
            let channel = if seq % 10 == 0 { unserved } else { served };
            let router = &router;
            async move {
                let answer = router
                    .request::<_, Numbered>(channel, &Numbered { seq }, timeout)
                    .await;
                (seq, answer)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut wrong = Vec::new();
    for (seq, answer) in answers {
        match (seq % 10 == 0, answer) {
            (false, Ok(reply)) if reply.seq == seq * 2 => {}
            (true, Err(e)) if e.kind() == anybroker::ErrorKind::NoResponder => {}
            (_, answer) => wrong.push(format!("{seq}: {answer:?}")),
        }
    }
    assert!(wrong.is_empty(), "wrong answers: {wrong:?}");
    router.shutdown().await.unwrap();
}

/// Acks of a batch go to the broker as one ack of many where that acks nothing else:
/// a delivery released among the acked ones and one still unsettled below acked ones
/// come back to the group when the member closes, and none of the acked ones does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_of_many_cover_no_delivery_left_unacked() {
    use anybroker_brokers::{Delivery, Settlement, SubscribeOptions};
    use common::Numbered;
    let ch = common::unique_channel::<Numbered>("rabbit-acks");
    let exchange = format!("{}.x", ch.name());
    let config = RouterConfig::from_toml_str(&format!(
        "[brokers.rabbitmq]\nkind = \"rabbitmq\"\nurl = \"{URL}\"\nexchange = \"{exchange}\"\n"
    ))
    .unwrap();
    let broker = anybroker::Broker::connect("rabbitmq", &config.brokers["rabbitmq"])
        .await
        .unwrap();
    let channel = broker
        .open_channel("rabbitmq", &anybroker::ChannelSpec::new(ch.name(), "g"))
        .await
        .unwrap();
    for seq in 1..=10 {
        let payload = serde_json::to_vec(&Numbered { seq }).unwrap();
        channel
            .publish(anybroker::Envelope::new(channel.name().clone(), payload))
            .await
            .unwrap();
    }
    let seq = |d: &Delivery| {
        serde_json::from_slice::<Numbered>(&d.envelope.payload)
            .unwrap()
            .seq
    };
    let receive_all = |member: Box<dyn anybroker_brokers::Subscription>, want: usize| async move {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while got.len() < want && tokio::time::Instant::now() < deadline {
            let wait = std::time::Duration::from_secs(1);
            if let Ok(batch) = tokio::time::timeout(wait, member.recv(16)).await {
                got.extend(batch.unwrap());
            }
        }
        (member, got)
    };
    let first = channel.subscribe(SubscribeOptions::new("g")).await.unwrap();
    let (first, got) = receive_all(first, 10).await;
    assert_eq!(
        got.iter().map(seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    let settle = |seqs: &[u64], settlement: Settlement| {
        got.iter()
            .filter(|d| seqs.contains(&seq(d)))
            .map(|d| (d.tag, settlement.clone()))
            .collect::<Vec<_>>()
    };
    // 1, 2 and 3 go as one ack; 4 is released, so 5 and 6 go alone; 7 to 10 are
    // unsettled.
    let mut batch = settle(&[1, 2, 3, 5, 6], Settlement::Ack);
    batch.extend(settle(&[4], Settlement::Release));
    first.settle(batch).await.unwrap();
    // 8, 9 and 10 go alone: 7, below them, is still unsettled.
    first
        .settle(settle(&[8, 9, 10], Settlement::Ack))
        .await
        .unwrap();
    first.close().await.unwrap();

    let second = channel.subscribe(SubscribeOptions::new("g")).await.unwrap();
    let (second, again) = receive_all(second, 2).await;
    let mut back: Vec<u64> = again.iter().map(seq).collect();
    back.sort();
    assert_eq!(back, [4, 7], "what came back to the group");
    // Closed unsettled, the two go back to the queue, and they are all it holds: the
    // acked ones stay acked.
    second.close().await.unwrap();
    let raw = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let raw_channel = raw.create_channel().await.unwrap();
    let queue = format!("{}:g", ch.name());
    let mut ready = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        ready = common::rabbitmq_queue_length(&raw_channel, &queue).await;
        if ready == 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        ready, 2,
        "messages in the group's queue once its members closed"
    );
    broker.shutdown().await.unwrap();
    let _ = raw_channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = raw_channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
    let _ = raw.close(200, "done".into()).await;
}
