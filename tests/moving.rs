//! A channel moved from one broker to another while it runs (`moving_from`), as a
//! rolling deploy does it: a router on the old config and one on the moving config side
//! by side, both publishing and handling, the old one stopped midway with messages in
//! flight. Every message is handled once, retried ones retried, the old broker ends
//! drained, and its dead letters are listed and replay onto the new broker.

#![cfg(all(
    feature = "redis",
    feature = "nats",
    feature = "rabbitmq",
    feature = "kafka"
))]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anybroker::{
    handler_fn, HandlerError, HandlerOptions, MemoryBroker, MessageContext, MessageRouter,
    PublishOptions, RouterBuilder, RouterConfig,
};

mod common;
use common::{holds_within, unique_channel, wait_until, wait_until_async, Numbered};

const GROUP: &str = "movers";
/// Long enough for a loaded machine (Kafka on tansu is the slow one).
const LONG: Duration = Duration::from_secs(180);
/// Longer than a moving router's five drained reads, a second apart, take: how long
/// the new broker's messages are watched for not being handled.
const QUIET: Duration = Duration::from_secs(8);

/// Per message seq, each successful handling: the broker it came from, its attempt.
type HandlingsBySeq = HashMap<u64, Vec<(String, u32)>>;

/// Each successful handling, by seq and in the order they happened.
#[derive(Clone, Default)]
struct Handled(Arc<Mutex<HandlingsBySeq>>, Arc<Mutex<Vec<(u64, String)>>>);

impl Handled {
    fn in_order(&self) -> Vec<(u64, String)> {
        self.1.lock().unwrap().clone()
    }
    fn distinct(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn all(&self) -> HandlingsBySeq {
        self.0.lock().unwrap().clone()
    }
    /// Records a successful handling of message `seq`.
    fn record(&self, seq: u64, cx: &MessageContext) {
        let broker = cx.broker().to_string();
        let mut by_seq = self.0.lock().unwrap();
        by_seq
            .entry(seq)
            .or_default()
            .push((broker.clone(), cx.attempt()));
        self.1.lock().unwrap().push((seq, broker));
    }
}

/// Fails the first attempt of every 50th message (retryable); records the others.
fn handler(handled: &Handled) -> impl anybroker::MessageHandler<Numbered> {
    let handled = handled.clone();
    handler_fn(move |m: Numbered, cx: MessageContext| {
        let handled = handled.clone();
        async move {
            if m.seq.is_multiple_of(50) && cx.attempt() == 1 {
                return Err(HandlerError::retryable("not yet"));
            }
            handled.record(m.seq, &cx);
            Ok(())
        }
    })
}

/// The two configs of a rolling deploy: the channel on `old`, then on `new` moving from
/// `old`. Both brokers are configured in both.
fn configs(channel: &str, old_table: &str, new_table: &str) -> (RouterConfig, RouterConfig) {
    configs_with(channel, old_table, new_table, "")
}

/// `configs`, with `moving` added to the moving config's channel table.
fn configs_with(
    channel: &str,
    old_table: &str,
    new_table: &str,
    moving: &str,
) -> (RouterConfig, RouterConfig) {
    let brokers = format!("[brokers.old]\n{old_table}\n[brokers.new]\n{new_table}\n");
    let retry = "retry = { attempts = 3, initial = \"100ms\" }";
    let old = format!("{brokers}[channels.\"{channel}\"]\nbroker = \"old\"\n{retry}\n");
    let moving = format!(
        "{brokers}[channels.\"{channel}\"]\nbroker = \"new\"\nmoving_from = \"old\"\n{retry}\n{moving}"
    );
    (
        RouterConfig::from_toml_str(&old).unwrap(),
        RouterConfig::from_toml_str(&moving).unwrap(),
    )
}

/// The same embedded broker for both routers, where a side is the embedded broker.
fn sharing(builder: RouterBuilder, memory: &Option<MemoryBroker>, name: &str) -> RouterBuilder {
    match memory {
        Some(m) => builder.with_broker(name, m.clone()),
        None => builder,
    }
}

/// 10,000 messages with 20 keys, published by both routers; the old-config router
/// stops (draining) once half are published.
async fn rolling_move(old_table: &str, new_table: &str, memory: Option<(&str, MemoryBroker)>) {
    rolling_move_with(old_table, new_table, memory, false).await
}

/// Keys the rolling moves publish with.
const KEYS: u64 = 20;

/// Asserts that for every key, each handling of a message from the old broker came
/// before any of a message from the new broker.
fn assert_old_before_new(order: &[(u64, String)]) {
    for key in 0..KEYS {
        let of_key: Vec<&(u64, String)> =
            order.iter().filter(|(seq, _)| seq % KEYS == key).collect();
        let last_old = of_key.iter().rposition(|(_, b)| b == "old");
        let first_new = of_key.iter().position(|(_, b)| b == "new");
        if let (Some(last_old), Some(first_new)) = (last_old, first_new) {
            assert!(
                last_old < first_new,
                "key k{key}: a message on the new broker handled before one on the old: {:?}",
                &of_key[first_new..=last_old]
            );
        }
    }
}

/// `rolling_move`, with `moving_keeps_order` when `keeps_order`: then every key's
/// messages on the old broker are all handled before any of its messages on the new,
/// though the old-config router publishes on the old broker until it stops.
async fn rolling_move_with(
    old_table: &str,
    new_table: &str,
    memory: Option<(&str, MemoryBroker)>,
    keeps_order: bool,
) {
    const N: u64 = 10_000;
    let ch = unique_channel::<Numbered>("move");
    let moving = if keeps_order {
        "moving_keeps_order = true\n"
    } else {
        ""
    };
    let (old_config, moving_config) = configs_with(ch.name(), old_table, new_table, moving);
    let (memory_side, memory) = match memory {
        Some((side, broker)) => (side, Some(broker)),
        None => ("", None),
    };
    let handled = Handled::default();
    let options = || HandlerOptions::new().group(GROUP);
    let old_router = sharing(MessageRouter::builder(old_config), &memory, memory_side)
        .handle_with(ch, handler(&handled), options())
        .start()
        .await
        .unwrap();
    let moving_router = sharing(MessageRouter::builder(moving_config), &memory, memory_side)
        .handle_with(ch, handler(&handled), options())
        .start()
        .await
        .unwrap();
    let keyed = |seq: u64| PublishOptions::new().key(format!("k{}", seq % KEYS));
    // Both publish, alternating, until half are out; then the old router stops.
    for seq in 0..N / 2 {
        let router = if seq % 2 == 0 {
            &old_router
        } else {
            &moving_router
        };
        router
            .publish_with(ch, &Numbered { seq }, keyed(seq))
            .await
            .unwrap();
    }
    old_router.shutdown().await.unwrap();
    for seq in N / 2..N {
        moving_router
            .publish_with(ch, &Numbered { seq }, keyed(seq))
            .await
            .unwrap();
    }
    wait_until("every message handled", LONG, || {
        handled.distinct() as u64 == N
    })
    .await;
    wait_until_async("the old broker drained", LONG, || {
        let router = moving_router.clone();
        async move { router.move_status(ch, GROUP).await.unwrap().drained }
    })
    .await;
    let all = handled.all();
    let twice: Vec<_> = all.iter().filter(|(_, h)| h.len() > 1).take(5).collect();
    assert!(twice.is_empty(), "handled twice: {twice:?}");
    for seq in (0..N).step_by(50) {
        assert_eq!(all[&seq][0].1, 2, "message {seq} was retried once");
    }
    let from_old = all.values().filter(|h| h[0].0 == "old").count();
    assert!(from_old > 0, "the old broker's messages were handled");
    if keeps_order {
        assert_old_before_new(&handled.in_order());
    }
    let status = moving_router.move_status(ch, GROUP).await.unwrap();
    assert_eq!((status.from.as_str(), status.to.as_str()), ("old", "new"));
    moving_router.shutdown().await.unwrap();
}

/// A dead letter left on the old broker is listed by the moving router and replays
/// onto the new broker, where it is handled.
async fn dead_letter_replays_onto_the_new_broker(old_table: &str, new_table: &str) {
    let ch = unique_channel::<Numbered>("move-dlt");
    let (old_config, moving_config) = configs(ch.name(), old_table, new_table);
    let old_router = MessageRouter::builder(old_config)
        .handle(
            ch,
            handler_fn(|_: Numbered, _: MessageContext| async {
                Err(HandlerError::permanent("broken before the move"))
            }),
        )
        .start()
        .await
        .unwrap();
    old_router.publish(ch, &Numbered { seq: 7 }).await.unwrap();
    wait_until_async("dead-lettered on the old broker", LONG, || {
        let router = old_router.clone();
        async move { router.dead_letters(ch, 10).await.unwrap().len() == 1 }
    })
    .await;
    old_router.shutdown().await.unwrap();

    let handled = Handled::default();
    let moving_router = MessageRouter::builder(moving_config)
        .handle(ch, handler(&handled))
        .start()
        .await
        .unwrap();
    let listed = moving_router.dead_letters(ch, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].message().unwrap().seq, 7);
    assert_eq!(moving_router.replay_dead_letters(ch, 10).await.unwrap(), 1);
    wait_until("the replayed message handled", LONG, || {
        handled.distinct() == 1
    })
    .await;
    assert_eq!(handled.all()[&7], vec![("new".to_string(), 1)]);
    assert!(moving_router.dead_letters(ch, 10).await.unwrap().is_empty());
    moving_router.shutdown().await.unwrap();
}

/// What waits on the old broker when the last old-config router stops, a retry not yet
/// due and a delayed message not yet due, is handled by the moving router when due,
/// and the move does not read drained before.
async fn waiting_messages_on_the_old_broker_are_handled(old_table: &str, new_table: &str) {
    const WAIT: Duration = Duration::from_secs(10);
    let ch = unique_channel::<Numbered>("move-waiting");
    let (old_config, moving_config) = configs(ch.name(), old_table, new_table);
    let handled = Handled::default();
    let failed_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler = || {
        let (handled, failed_once) = (handled.clone(), failed_once.clone());
        handler_fn(move |m: Numbered, cx: MessageContext| {
            let (handled, failed_once) = (handled.clone(), failed_once.clone());
            async move {
                if m.seq == 1 && cx.attempt() == 1 {
                    failed_once.store(true, std::sync::atomic::Ordering::SeqCst);
                    return Err(HandlerError::retryable("later").retry_after(WAIT));
                }
                handled.record(m.seq, &cx);
                Ok(())
            }
        })
    };
    let options = || HandlerOptions::new().group(GROUP);
    let old_router = MessageRouter::builder(old_config)
        .handle_with(ch, handler(), options())
        .start()
        .await
        .unwrap();
    let moving_router = MessageRouter::builder(moving_config)
        .handle_with(ch, handler(), options())
        .start()
        .await
        .unwrap();
    old_router.publish(ch, &Numbered { seq: 0 }).await.unwrap();
    old_router.publish(ch, &Numbered { seq: 1 }).await.unwrap();
    old_router
        .publish_with(ch, &Numbered { seq: 2 }, PublishOptions::new().delay(WAIT))
        .await
        .unwrap();
    wait_until("0 handled and 1 failed once", LONG, || {
        handled.distinct() == 1 && failed_once.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    old_router.shutdown().await.unwrap();
    let status = moving_router.move_status(ch, GROUP).await.unwrap();
    assert!(
        !status.drained && handled.distinct() == 1,
        "drained while a retry and a delayed message wait: {status:?}"
    );
    wait_until("the retry handled", LONG, || {
        handled.0.lock().unwrap().contains_key(&1)
    })
    .await;
    wait_until("the delayed message handled", LONG, || {
        handled.0.lock().unwrap().contains_key(&2)
    })
    .await;
    let all = handled.all();
    assert_eq!(all[&0], vec![("old".to_string(), 1)]);
    assert_eq!(all[&1].len(), 1, "{:?}", all[&1]);
    assert_eq!(all[&1][0].1, 2, "1 handled on its retry");
    assert_eq!(all[&2], vec![("old".to_string(), 1)]);
    wait_until_async("the old broker drained", LONG, || {
        let router = moving_router.clone();
        async move { router.move_status(ch, GROUP).await.unwrap().drained }
    })
    .await;
    moving_router.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_waiting_messages_are_handled_after_the_move() {
    waiting_messages_on_the_old_broker_are_handled(REDIS, NATS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_waiting_messages_are_handled_after_the_move() {
    waiting_messages_on_the_old_broker_are_handled(NATS, RABBITMQ).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_waiting_messages_are_handled_after_the_move() {
    waiting_messages_on_the_old_broker_are_handled(RABBITMQ, common::KAFKA_TANSU_TABLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_waiting_messages_are_handled_after_the_move() {
    waiting_messages_on_the_old_broker_are_handled(common::KAFKA_TANSU_TABLE, REDIS).await;
}

const REDIS: &str = "kind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nclaim_idle = \"5s\"";
const NATS: &str = "kind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nmax_age = \"1h\"";
const RABBITMQ: &str = "kind = \"rabbitmq\"\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_to_redis_rolling_move() {
    rolling_move(
        "kind = \"memory\"",
        REDIS,
        Some(("old", MemoryBroker::default())),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_to_nats_rolling_move() {
    rolling_move(REDIS, NATS, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_to_rabbitmq_rolling_move() {
    rolling_move(NATS, RABBITMQ, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_to_kafka_rolling_move() {
    rolling_move(RABBITMQ, common::KAFKA_TANSU_TABLE, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_to_redis_rolling_move() {
    rolling_move(common::KAFKA_TANSU_TABLE, REDIS, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_to_redis_rolling_move_keeping_order() {
    rolling_move_with(
        "kind = \"memory\"",
        REDIS,
        Some(("old", MemoryBroker::default())),
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_to_nats_rolling_move_keeping_order() {
    rolling_move_with(REDIS, NATS, None, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_to_rabbitmq_rolling_move_keeping_order() {
    rolling_move_with(NATS, RABBITMQ, None, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_to_redis_rolling_move_keeping_order() {
    rolling_move_with(RABBITMQ, REDIS, None, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_to_kafka_rolling_move_keeping_order() {
    rolling_move_with(RABBITMQ, common::KAFKA_TANSU_TABLE, None, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_to_redis_rolling_move_keeping_order() {
    rolling_move_with(common::KAFKA_TANSU_TABLE, REDIS, None, true).await;
}

/// With `moving_keeps_order`, an instance still on the old config that goes quiet
/// (the old broker drained, read so for longer than the router's drained reads take)
/// and then publishes again: the moving router has not started handling the new
/// broker's messages meanwhile, because the old instance still announces the channel on
/// the old broker, so each key's messages on the old broker are still handled first.
async fn move_keeps_order_across_a_quiet_old_instance(old_table: &str, new_table: &str) {
    const PER_BATCH: u64 = 100;
    let ch = unique_channel::<Numbered>("move-quiet");
    let (old_config, moving_config) = configs_with(
        ch.name(),
        old_table,
        new_table,
        "moving_keeps_order = true\n",
    );
    let handled = Handled::default();
    let options = || HandlerOptions::new().group(GROUP);
    let old_router = MessageRouter::builder(old_config)
        .handle_with(ch, handler(&handled), options())
        .start()
        .await
        .unwrap();
    let moving_router = MessageRouter::builder(moving_config)
        .handle_with(ch, handler(&handled), options())
        .start()
        .await
        .unwrap();
    let keyed = |seq: u64| PublishOptions::new().key(format!("k{}", seq % KEYS));
    let publish = |router: &MessageRouter, seqs: std::ops::Range<u64>| {
        let router = router.clone();
        async move {
            for seq in seqs {
                router
                    .publish_with(ch, &Numbered { seq }, keyed(seq))
                    .await
                    .unwrap();
            }
        }
    };
    publish(&old_router, 0..PER_BATCH).await;
    publish(&moving_router, PER_BATCH..2 * PER_BATCH).await;
    wait_until("the old broker's first batch handled", LONG, || {
        (0..PER_BATCH).all(|seq| handled.0.lock().unwrap().contains_key(&seq))
    })
    .await;
    wait_until_async(
        "the old broker read drained, the old router present",
        LONG,
        || {
            let router = moving_router.clone();
            async move {
                let status = router.move_status(ch, GROUP).await.unwrap();
                status.drained && status.old_config_routers == Some(1)
            }
        },
    )
    .await;
    // The old instance stays quiet for longer than five drained reads take: a router
    // that looked at the backlog alone would start the new broker's members now.
    let new_handled = || handled.in_order().iter().any(|(_, broker)| broker == "new");
    assert!(
        !holds_within(QUIET, new_handled).await,
        "the new broker's messages handled while the old instance runs"
    );
    publish(&old_router, 2 * PER_BATCH..3 * PER_BATCH).await;
    old_router.shutdown().await.unwrap();
    wait_until("every message handled", LONG, || {
        handled.distinct() as u64 == 3 * PER_BATCH
    })
    .await;
    assert_old_before_new(&handled.in_order());
    let status = moving_router.move_status(ch, GROUP).await.unwrap();
    assert!(status.drained, "{status:?}");
    assert_eq!(status.old_config_routers, Some(0), "{status:?}");
    moving_router.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_to_nats_move_keeps_order_across_a_quiet_old_instance() {
    move_keeps_order_across_a_quiet_old_instance(REDIS, NATS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_to_redis_move_keeps_order_across_a_quiet_old_instance() {
    move_keeps_order_across_a_quiet_old_instance(common::KAFKA_TANSU_TABLE, REDIS).await;
}

/// With `moving_keeps_order`, a message of the old broker still being handled (handed
/// out, not acknowledged: RabbitMQ's backlog does not count it) holds back the new
/// broker's messages, however long the handling takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_to_redis_move_keeps_order_behind_a_long_handling() {
    let ch = unique_channel::<Numbered>("move-long");
    let (old_config, moving_config) =
        configs_with(ch.name(), RABBITMQ, REDIS, "moving_keeps_order = true\n");
    let old_router = MessageRouter::builder(old_config).start().await.unwrap();
    old_router.publish(ch, &Numbered { seq: 0 }).await.unwrap();
    old_router.shutdown().await.unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = {
        let (release, events) = (release.clone(), events.clone());
        handler_fn(move |m: Numbered, _: MessageContext| {
            let (release, events) = (release.clone(), events.clone());
            async move {
                events.lock().unwrap().push(format!("start {}", m.seq));
                if m.seq == 0 {
                    release.notified().await;
                }
                events.lock().unwrap().push(format!("end {}", m.seq));
                Ok(())
            }
        })
    };
    // The default group: the one RabbitMQ kept the message for, before any member.
    let moving_router = MessageRouter::builder(moving_config)
        .handle(ch, handler)
        .start()
        .await
        .unwrap();
    moving_router
        .publish(ch, &Numbered { seq: 1 })
        .await
        .unwrap();
    wait_until("the old broker's message in its handler", LONG, || {
        events.lock().unwrap().first().map(String::as_str) == Some("start 0")
    })
    .await;
    // Longer than five drained reads take: the old broker's queue reads empty meanwhile.
    assert!(
        !holds_within(QUIET, || events.lock().unwrap().len() > 1).await,
        "the new broker's message handled while the old one's runs: {:?}",
        events.lock().unwrap()
    );
    release.notify_one();
    wait_until("both handled", LONG, || events.lock().unwrap().len() == 4).await;
    assert_eq!(
        *events.lock().unwrap(),
        vec!["start 0", "end 0", "start 1", "end 1"]
    );
    moving_router.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dead_letter_replays_onto_nats() {
    dead_letter_replays_onto_the_new_broker(REDIS, NATS).await;
}

/// With `moving_keeps_order`, what is published on the new broker is handled only once
/// the old one is drained: every key's messages (here every message) in publish order
/// across the move, while both brokers receive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_to_nats_move_keeps_each_keys_order() {
    const N: u64 = 1_000;
    let ch = unique_channel::<Numbered>("move-order");
    let (old_config, moving_config) =
        configs_with(ch.name(), REDIS, NATS, "moving_keeps_order = true\n");
    let keyed = |seq: u64| PublishOptions::new().key(format!("k{}", seq % 10));
    // An instance on the old config published these, then stopped.
    let old_router = MessageRouter::builder(old_config).start().await.unwrap();
    for seq in 0..N {
        old_router
            .publish_with(ch, &Numbered { seq }, keyed(seq))
            .await
            .unwrap();
    }
    old_router.shutdown().await.unwrap();
    let order: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let handler = {
        let order = order.clone();
        handler_fn(move |m: Numbered, cx: MessageContext| {
            let order = order.clone();
            async move {
                order.lock().unwrap().push((m.seq, cx.broker().to_string()));
                Ok(())
            }
        })
    };
    let moving_router = MessageRouter::builder(moving_config)
        .handle_with(ch, handler, HandlerOptions::new().group(GROUP))
        .start()
        .await
        .unwrap();
    for seq in N..2 * N {
        moving_router
            .publish_with(ch, &Numbered { seq }, keyed(seq))
            .await
            .unwrap();
    }
    wait_until("every message handled", LONG, || {
        order.lock().unwrap().len() as u64 == 2 * N
    })
    .await;
    let order = order.lock().unwrap().clone();
    let first_new = order.iter().position(|(seq, _)| *seq >= N).unwrap();
    assert!(
        order[..first_new]
            .iter()
            .all(|(seq, b)| *seq < N && b == "old"),
        "the old broker's messages come first"
    );
    assert_eq!(
        first_new as u64, N,
        "all of the old broker's before any new one"
    );
    for key in 0..10 {
        let seqs: Vec<u64> = order
            .iter()
            .map(|(seq, _)| *seq)
            .filter(|seq| seq % 10 == key)
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key k{key} out of order: {seqs:?}"
        );
    }
    assert!(moving_router.move_status(ch, GROUP).await.unwrap().drained);
    moving_router.shutdown().await.unwrap();
}

/// Copies of messages on both brokers (the same ids on the old broker and the new, as a
/// replay cut short between publishing onto the new broker and removing from the old
/// leaves them) are handled once each with the moving config's window of handled ids,
/// retried ones included; with the window off, twice.
async fn copies_on_both_brokers(window: usize) -> HandlingsBySeq {
    const N: u64 = 100;
    let ch = unique_channel::<Numbered>("move-copies");
    let (old_config, moving_config) = configs_with(
        ch.name(),
        REDIS,
        NATS,
        &format!("moving_dedup_window = {window}\n"),
    );
    let with_id = |seq: u64| PublishOptions::new().id(format!("copy-{seq}"));
    let old_router = MessageRouter::builder(old_config).start().await.unwrap();
    old_router.provision(ch, &[GROUP]).await.unwrap();
    for seq in 0..N {
        old_router
            .publish_with(ch, &Numbered { seq }, with_id(seq))
            .await
            .unwrap();
    }
    old_router.shutdown().await.unwrap();
    let handled = Handled::default();
    let moving_router = MessageRouter::builder(moving_config)
        .handle_with(ch, handler(&handled), HandlerOptions::new().group(GROUP))
        .start()
        .await
        .unwrap();
    for seq in 0..N {
        moving_router
            .publish_with(ch, &Numbered { seq }, with_id(seq))
            .await
            .unwrap();
    }
    wait_until_async("both brokers drained", LONG, || {
        let router = moving_router.clone();
        async move {
            let new = router.backlog(ch, GROUP).await.unwrap();
            let old = router.move_status(ch, GROUP).await.unwrap();
            old.drained && new.waiting == 0 && new.in_flight == Some(0)
        }
    })
    .await;
    moving_router.shutdown().await.unwrap();
    assert_eq!(handled.distinct() as u64, N, "every message handled");
    handled.all()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_to_nats_move_handles_copies_once() {
    let handled = copies_on_both_brokers(10_000).await;
    for (seq, handlings) in &handled {
        assert_eq!(handlings.len(), 1, "message {seq} handled {handlings:?}");
        if seq % 50 == 0 {
            assert_eq!(handlings[0].1, 2, "message {seq} retried");
        }
    }
    // The window is what keeps them apart: without it each copy is handled.
    let handled = copies_on_both_brokers(0).await;
    assert!(handled.values().all(|h| h.len() == 2), "{handled:?}");
}

/// What a `tracing` subscriber writes, kept to be read.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A router started after `moving_from` was dropped, while the former broker still
/// holds messages of the channel, warns naming the count, and `leftovers` lists them;
/// once a moving router drained the former broker, nothing is left.
// On the test's thread, where the subscriber that keeps the log is set.
#[tokio::test(flavor = "current_thread")]
async fn messages_left_on_the_former_broker_are_warned_at_start() {
    let ch = unique_channel::<Numbered>("move-left");
    let (old_config, moving_config) = configs(ch.name(), REDIS, NATS);
    let moved_config = RouterConfig::from_toml_str(&format!(
        "[brokers.old]\n{REDIS}\n[brokers.new]\n{NATS}\n[channels.\"{}\"]\nbroker = \"new\"\n",
        ch.name()
    ))
    .unwrap();
    let old_router = MessageRouter::builder(old_config).start().await.unwrap();
    old_router.provision(ch, &[GROUP]).await.unwrap();
    for seq in 1..=5 {
        old_router.publish(ch, &Numbered { seq }).await.unwrap();
    }
    old_router.shutdown().await.unwrap();

    let logs = Logs::default();
    let writer = logs.clone();
    let _logging = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::WARN)
            .finish(),
    );
    let handled = Handled::default();
    let start_moved = || {
        MessageRouter::builder(moved_config.clone())
            .handle_with(ch, handler(&handled), HandlerOptions::new().group(GROUP))
            .start()
    };
    let moved_router = start_moved().await.unwrap();
    let warning = format!(
        "broker \"old\" still holds 5 messages of channel \"{}\" for group \"{GROUP}\"",
        ch.name()
    );
    wait_until("the warning", LONG, || logs.text().contains(&warning)).await;
    let left = moved_router.leftovers().await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        (
            left[0].broker.as_str(),
            left[0].group.as_str(),
            left[0].count()
        ),
        ("old", GROUP, 5)
    );
    moved_router.shutdown().await.unwrap();
    assert_eq!(handled.distinct(), 0, "the former broker is not consumed");

    let moving_router = MessageRouter::builder(moving_config)
        .handle_with(ch, handler(&handled), HandlerOptions::new().group(GROUP))
        .start()
        .await
        .unwrap();
    wait_until_async("the former broker drained", LONG, || {
        let router = moving_router.clone();
        async move { router.move_status(ch, GROUP).await.unwrap().drained }
    })
    .await;
    moving_router.shutdown().await.unwrap();
    assert_eq!(handled.distinct(), 5);
    let moved_router = start_moved().await.unwrap();
    assert_eq!(moved_router.leftovers().await.unwrap(), vec![]);
    moved_router.shutdown().await.unwrap();
}
