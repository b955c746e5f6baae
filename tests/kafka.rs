//! Kafka-specific tests: against the Kafka-protocol broker on 127.0.0.1:9092 (tansu in
//! CI), a consumer that vanishes before committing, members sharing with the default
//! partitions, a policy of many attempts; on librdkafka's mock cluster, its brokers
//! taken down under load and during shutdown. (Records produced around the library:
//! the conformance case `foreign_payloads_dead_lettered_among_valid_ones`.)
#![cfg(feature = "kafka")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anybroker::{handler_fn, HandlerOptions, MessageContext, MessageRouter, RouterConfig};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::mocking::MockCluster;

mod common;
use common::{
    counting_handler, kafka_mock_table, unique_channel, wait_until, HandledCounts, Numbered,
    KAFKA_TANSU_DEFAULT_PARTITIONS_TABLE, KAFKA_TANSU_TABLE,
};

/// tansu with the settings it needs (see `KAFKA_TANSU_TABLE`), 3 attempts per message.
fn router_config() -> RouterConfig {
    RouterConfig::from_toml_str(&format!(
        "default_broker = \"kafka\"\n[defaults]\nretry = {{ attempts = 3, initial = \"50ms\" }}\n\
         [brokers.kafka]\n{KAFKA_TANSU_TABLE}"
    ))
    .unwrap()
}

/// A member dropped without shutdown, holding handled-but-uncommitted and unhandled
/// messages: a new member of the group gets every message the first did not finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_crash_before_commit_loses_none() {
    const N: u64 = 600;
    let ch = unique_channel::<Numbered>("crash");
    let seen: HandledCounts = Arc::default();
    let first = MessageRouter::builder(router_config())
        .handle(ch, counting_handler(&seen, Duration::from_millis(5)))
        .start()
        .await
        .unwrap();
    for seq in 0..N {
        first.publish(ch, &Numbered { seq }).await.unwrap();
    }
    wait_until("some handled", Duration::from_secs(60), || {
        seen.lock().unwrap().len() >= 50
    })
    .await;
    // Gone without shutdown: nothing more is committed.
    drop(first);
    let by_first = seen.lock().unwrap().len();
    let second = MessageRouter::builder(router_config())
        .handle(ch, counting_handler(&seen, Duration::ZERO))
        .start()
        .await
        .unwrap();
    wait_until("every message handled", Duration::from_secs(120), || {
        seen.lock().unwrap().len() as u64 == N
    })
    .await;
    second.shutdown().await.unwrap();
    let seen = seen.lock().unwrap();
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    println!("kafka crash: first handled {by_first}, {duplicates} handled again by the new member");
    assert!((0..N).all(|s| seen.contains_key(&s)), "a message was lost");
}

/// Two members of a group on a channel whose topics the backend created with its
/// default `partitions`: both handle part of the channel's messages (with one
/// partition, the second member got none and the first handled all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_group_members_share_with_default_partitions() {
    const N: u64 = 400;
    let ch = unique_channel::<Numbered>("share");
    let config = RouterConfig::from_toml_str(&format!(
        "default_broker = \"kafka\"\n[brokers.kafka]\n{KAFKA_TANSU_DEFAULT_PARTITIONS_TABLE}"
    ))
    .unwrap();
    let by_first: HandledCounts = Arc::default();
    let by_second: HandledCounts = Arc::default();
    let first = MessageRouter::builder(config.clone())
        .handle(ch, counting_handler(&by_first, Duration::ZERO))
        .start()
        .await
        .unwrap();
    let second = MessageRouter::builder(config)
        .handle(ch, counting_handler(&by_second, Duration::ZERO))
        .start()
        .await
        .unwrap();
    for seq in 0..N {
        first.publish(ch, &Numbered { seq }).await.unwrap();
    }
    let handled = || {
        let a = by_first.lock().unwrap();
        let b = by_second.lock().unwrap();
        (0..N)
            .filter(|s| a.contains_key(s) || b.contains_key(s))
            .count() as u64
    };
    wait_until("every message handled", Duration::from_secs(60), || {
        handled() == N
    })
    .await;
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    let (a, b) = (
        by_first.lock().unwrap().len(),
        by_second.lock().unwrap().len(),
    );
    println!("kafka default partitions: first member handled {a}, second {b} of {N}");
    assert!(
        a > 0 && b > 0,
        "both members handle messages: first {a}, second {b}"
    );
}

/// A group whose policy allows 10,000 attempts with a constant 20 ms backoff starts
/// promptly and retries through one retry topic (before, it created and subscribed
/// one topic per attempt: 10,002 topics); messages failing five times are handled on
/// their sixth attempt, every call seeing the attempt number one above the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_many_attempts_take_one_retry_topic() {
    const N: u64 = 20;
    const FAILURES: u32 = 5;
    let ch = unique_channel::<Numbered>("many-attempts");
    let config = RouterConfig::from_toml_str(&format!(
        "default_broker = \"kafka\"\n[defaults]\n\
         retry = {{ attempts = 10000, initial = \"20ms\", max = \"20ms\" }}\n\
         [brokers.kafka]\n{KAFKA_TANSU_TABLE}"
    ))
    .unwrap();
    let calls: Arc<Mutex<HashMap<u64, Vec<u32>>>> = Arc::default();
    let handler = {
        let calls = calls.clone();
        handler_fn(move |m: Numbered, cx: MessageContext| {
            let calls = calls.clone();
            async move {
                calls
                    .lock()
                    .unwrap()
                    .entry(m.seq)
                    .or_default()
                    .push(cx.attempt());
                if cx.attempt() <= FAILURES {
                    return Err(anybroker::HandlerError::retryable("not yet"));
                }
                Ok(())
            }
        })
    };
    let router = tokio::time::timeout(
        Duration::from_secs(30),
        MessageRouter::builder(config).handle(ch, handler).start(),
    )
    .await
    .expect("a member with a 10,000-attempt policy starts within 30 s")
    .unwrap();
    for seq in 0..N {
        router.publish(ch, &Numbered { seq }).await.unwrap();
    }
    wait_until("every message handled", Duration::from_secs(60), || {
        let calls = calls.lock().unwrap();
        calls.len() as u64 == N && calls.values().all(|c| c.len() > FAILURES as usize)
    })
    .await;
    router.shutdown().await.unwrap();
    let expected: Vec<u32> = (1..=FAILURES + 1).collect();
    let calls = calls.lock().unwrap();
    assert!(
        calls.values().all(|c| *c == expected),
        "calls per message saw attempts other than {expected:?}: {:?}",
        calls.values().find(|c| **c != expected)
    );
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let mut topics: Vec<&str> = metadata
        .topics()
        .iter()
        .map(|t| t.name())
        .filter(|t| t.starts_with(ch.name()))
        .collect();
    topics.sort();
    let c = ch.name();
    assert_eq!(
        topics,
        vec![
            c.to_string(),
            format!("{c}-delay"),
            format!("{c}-dlt"),
            format!("{c}-presence"),
            format!("{c}-retry-0")
        ]
    );
}

/// Shutdown while no broker of the cluster answers: the members can neither commit nor
/// leave their group, yet shutdown returns within a bound (librdkafka alone waits for
/// the coordinator without limit: before the bound, this test hung until killed), and
/// a router started once the brokers answer again handles every message the first did
/// not finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_mock_shutdown_during_outage_returns_and_loses_none() {
    const BROKERS: i32 = 3;
    const N: u64 = 400;
    let cluster = MockCluster::new(BROKERS).unwrap();
    let ch = unique_channel::<Numbered>("outage-shutdown");
    // A small window, so most messages are still unread when the outage begins.
    let config = || {
        RouterConfig::from_toml_str(&format!(
            "default_broker = \"kafka\"\n[brokers.kafka]\n{}[channels.\"{}\"]\nprefetch = 4\n",
            kafka_mock_table(&cluster.bootstrap_servers()),
            ch.name()
        ))
        .unwrap()
    };
    let seen: HandledCounts = Arc::default();
    // Slow enough that the outage comes with messages unhandled.
    let pause = Duration::from_millis(100);
    let first = MessageRouter::builder(config())
        .handle_with(
            ch,
            counting_handler(&seen, pause),
            HandlerOptions::new().consumers(2),
        )
        .start()
        .await
        .unwrap();
    for seq in 0..N {
        first.publish(ch, &Numbered { seq }).await.unwrap();
    }
    wait_until("some handled", Duration::from_secs(60), || {
        seen.lock().unwrap().len() >= 100
    })
    .await;
    // Every reply held back for 5 minutes: a coordinator that answers nothing.
    for id in 1..=BROKERS {
        cluster
            .broker_round_trip_time(id, Duration::from_secs(300))
            .unwrap();
    }
    // The bound: the Kafka close wait (15 s) plus the producer's flush wait.
    let began = std::time::Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(60), first.shutdown()).await;
    assert!(
        stopped.is_ok(),
        "shutdown did not return while the brokers did not answer"
    );
    let shutdown_took = began.elapsed();
    for id in 1..=BROKERS {
        cluster.broker_round_trip_time(id, Duration::ZERO).unwrap();
        // Replies already held back stay held: a restart drops those connections.
        cluster.broker_down(id).unwrap();
        cluster.broker_up(id).unwrap();
    }
    let by_first = seen.lock().unwrap().len();
    let second = MessageRouter::builder(config())
        .handle(ch, counting_handler(&seen, pause))
        .start()
        .await
        .unwrap();
    wait_until("every message handled", Duration::from_secs(120), || {
        seen.lock().unwrap().len() as u64 == N
    })
    .await;
    second.shutdown().await.unwrap();
    let seen = seen.lock().unwrap();
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    println!(
        "kafka outage shutdown: took {shutdown_took:?}; first handled {by_first}, {duplicates} handled again"
    );
}

/// With `auto_offset_reset = "latest"` a group starts where the partitions end when it
/// first joins: provisioning commits that start ahead of time, so a provisioned group
/// gets what was published before its first member, and one that was not does not
/// (`new_group_start = Provisioned`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_latest_provisioned_group_starts_at_provisioning() {
    let ch = unique_channel::<Numbered>("latest");
    let config = RouterConfig::from_toml_str(&format!(
        "default_broker = \"kafka\"\n[brokers.kafka]\n{KAFKA_TANSU_TABLE}auto_offset_reset = \"latest\"\n"
    ))
    .unwrap();
    let publisher = MessageRouter::builder(config.clone())
        .start()
        .await
        .unwrap();
    assert_eq!(
        publisher.capabilities(ch).await.unwrap().new_group_start,
        anybroker::NewGroupStart::Provisioned
    );
    publisher.provision(ch, &["provisioned"]).await.unwrap();
    let keyed = || anybroker::PublishOptions::new().key("k");
    publisher
        .publish_with(ch, &Numbered { seq: 1 }, keyed())
        .await
        .unwrap();
    let (provisioned, other): (HandledCounts, HandledCounts) = Default::default();
    let consumer = MessageRouter::builder(config)
        .handle_with(
            ch,
            counting_handler(&provisioned, Duration::ZERO),
            HandlerOptions::new().group("provisioned"),
        )
        .handle_with(
            ch,
            counting_handler(&other, Duration::ZERO),
            HandlerOptions::new().group("other"),
        )
        .start()
        .await
        .unwrap();
    // The other group's start is the end of the partitions when its member first
    // fetches, which may come after a publish made right after `start`: publish until
    // it has one.
    let has = |counts: &HandledCounts, seq| counts.lock().unwrap().contains_key(&seq);
    let mut seq = 2;
    while other.lock().unwrap().is_empty() {
        assert!(seq < 40, "the other group received nothing in 20 s");
        publisher
            .publish_with(ch, &Numbered { seq }, keyed())
            .await
            .unwrap();
        seq += 1;
        common::holds_within(Duration::from_millis(500), || {
            !other.lock().unwrap().is_empty()
        })
        .await;
    }
    wait_until(
        "the provisioned group has every message",
        Duration::from_secs(60),
        || (1..seq).all(|n| has(&provisioned, n)),
    )
    .await;
    consumer.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
    assert!(has(&provisioned, 1), "the provisioned group got the first");
    assert!(!has(&other, 1), "the other group started after the first");
}

/// A router that announced before many others came and went is still counted: its
/// record lies further back than the first stretch read from the end of the presence
/// topic (64 records per partition), so counting has to read further back to find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_presence_counts_a_router_behind_many_records() {
    let ch = unique_channel::<Numbered>("presence-deep");
    let config = router_config();
    let broker = anybroker::Broker::connect("kafka", &config.brokers["kafka"])
        .await
        .unwrap();
    let spec = anybroker::ChannelSpec::new(ch.name(), "default");
    let kept = broker.announce(&spec, "kept").await.unwrap();
    // 2 partitions: 300 records put at least 150 after `kept`'s in its partition.
    for i in 0..150 {
        let passing = broker
            .announce(&spec, &format!("passing-{i}"))
            .await
            .unwrap();
        passing.withdraw().await.unwrap();
    }
    assert_eq!(broker.announced(&spec).await.unwrap(), 1, "only `kept`");
    let again = broker.announce(&spec, "passing-7").await.unwrap();
    assert_eq!(broker.announced(&spec).await.unwrap(), 2, "one came back");
    again.withdraw().await.unwrap();
    kept.withdraw().await.unwrap();
    assert_eq!(broker.announced(&spec).await.unwrap(), 0, "all withdrawn");
    broker.shutdown().await.unwrap();
}

/// Retries waiting in a retry topic when one of the group's two members stops are all
/// handled by the member left once due, those it had paused a partition for included
/// (librdkafka kept such a partition paused through the rebalance that gave it back, and
/// its records were never read again). Eight keys spread the retries over both
/// partitions, so each member holds some whichever stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_waiting_retries_are_handled_by_the_member_left() {
    const WAIT: Duration = Duration::from_secs(10);
    const N: u64 = 8;
    let ch = unique_channel::<Numbered>("retry-left");
    let calls: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
    let handler = || {
        let calls = calls.clone();
        handler_fn(move |m: Numbered, cx: MessageContext| {
            let calls = calls.clone();
            async move {
                calls.lock().unwrap().push((m.seq, cx.attempt()));
                if cx.attempt() == 1 {
                    return Err(anybroker::HandlerError::retryable("later").retry_after(WAIT));
                }
                Ok(())
            }
        })
    };
    let options = || HandlerOptions::new().group("g");
    let first = MessageRouter::builder(router_config())
        .handle_with(ch, handler(), options())
        .start()
        .await
        .unwrap();
    let second = MessageRouter::builder(router_config())
        .handle_with(ch, handler(), options())
        .start()
        .await
        .unwrap();
    for seq in 0..N {
        let keyed = anybroker::PublishOptions::new().key(format!("k{seq}"));
        first
            .publish_with(ch, &Numbered { seq }, keyed)
            .await
            .unwrap();
    }
    wait_until("each failed once", Duration::from_secs(60), || {
        calls.lock().unwrap().len() as u64 == N
    })
    .await;
    first.shutdown().await.unwrap();
    wait_until("each retry handled", Duration::from_secs(90), || {
        calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, a)| *a == 2)
            .count() as u64
            == N
    })
    .await;
    second.shutdown().await.unwrap();
    let mut retried: Vec<u64> = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, a)| *a == 2)
        .map(|(s, _)| *s)
        .collect();
    retried.sort();
    assert_eq!(retried, (0..N).collect::<Vec<_>>(), "each retried once");
}
