//! Embedded-broker behaviour beyond the conformance suite: the backlog bound that keeps
//! a fast publisher from growing the process's memory without limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anybroker::{
    handler_fn, ErrorKind, MessageContext, MessageRouter, PublishOptions, RouterConfig,
};

mod common;
use common::{unique_channel, wait_until, Numbered};

fn config(max_backlog: usize, publish_timeout: &str) -> RouterConfig {
    RouterConfig::from_toml_str(&format!(
        "default_broker = \"memory\"\n[brokers.memory]\nkind = \"memory\"\n\
         max_backlog = {max_backlog}\npublish_timeout = \"{publish_timeout}\"\n"
    ))
    .unwrap()
}

fn with_prefetch(mut config: RouterConfig, channel: &str, prefetch: usize) -> RouterConfig {
    config
        .channels
        .entry(channel.to_string())
        .or_default()
        .prefetch = Some(prefetch);
    config
}

/// Starts a router whose embedded broker is one the test keeps, to read its backlog;
/// built from `config`'s `[brokers.memory]`.
async fn start_bounded(
    config: RouterConfig,
    ch: anybroker::Channel<Numbered>,
    handler: impl anybroker::MessageHandler<Numbered>,
) -> (MessageRouter, anybroker::MemoryBroker) {
    let anybroker_brokers::BrokerConfig::Memory(memory) = &config.brokers["memory"] else {
        panic!("the test config has a memory broker");
    };
    let broker = anybroker::MemoryBroker::new(memory);
    let router = MessageRouter::builder(config)
        .with_broker("memory", broker.clone())
        .handle(ch, handler)
        .start()
        .await
        .unwrap();
    (router, broker)
}

/// What a test sees of a handler that holds every message until the gate opens, so
/// the channel's backlog fills up behind it.
struct Held {
    /// Sequence numbers handled, in the order their handlers finished.
    seen: Arc<Mutex<Vec<u64>>>,
    /// Handlers started (held or done).
    entered: Arc<AtomicUsize>,
    /// Send `true` to let every held handler finish.
    gate: tokio::sync::watch::Sender<bool>,
}

impl Held {
    fn handler() -> (Held, impl anybroker::MessageHandler<Numbered>) {
        let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
        let entered = Arc::new(AtomicUsize::new(0));
        let (gate, gate_rx) = tokio::sync::watch::channel(false);
        let handler = {
            let (seen, entered) = (seen.clone(), entered.clone());
            handler_fn(move |m: Numbered, _cx: MessageContext| {
                let (seen, entered, mut gate) = (seen.clone(), entered.clone(), gate_rx.clone());
                async move {
                    entered.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.wait_for(|open| *open).await;
                    seen.lock().unwrap().push(m.seq);
                    Ok(())
                }
            })
        };
        (
            Held {
                seen,
                entered,
                gate,
            },
            handler,
        )
    }
}

/// At `max_backlog` untaken messages, publish waits for the consumer instead of
/// growing the channel; every message still arrives once, in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_publish_waits_at_backlog_bound_and_loses_none() {
    const N: u64 = 3_000;
    const WINDOW: usize = 4;
    let ch = unique_channel::<Numbered>("backlog");
    let (held, handler) = Held::handler();
    let (seen, entered, gate_tx) = (held.seen, held.entered, held.gate);
    let (router, broker) = start_bounded(
        with_prefetch(config(100, "30s"), ch.name(), WINDOW),
        ch,
        handler,
    )
    .await;
    let publisher = {
        let router = router.clone();
        tokio::spawn(async move {
            for seq in 0..N {
                router.publish(ch, &Numbered { seq }).await.unwrap();
            }
        })
    };
    // Once the consumer holds its whole window in the (held) handler it can take no
    // more, so the channel fills to its bound and stays there.
    wait_until(
        "the window is held and the channel at its bound",
        Duration::from_secs(10),
        || entered.load(Ordering::SeqCst) == WINDOW && broker.backlog(ch.name()) == 100,
    )
    .await;
    assert!(
        !publisher.is_finished(),
        "publish did not wait at the bound"
    );
    assert_eq!(broker.backlog(ch.name()), 100, "the bound holds");
    assert_eq!(
        entered.load(Ordering::SeqCst),
        WINDOW,
        "nothing past the window"
    );
    gate_tx.send(true).unwrap();
    publisher.await.unwrap();
    wait_until("all handled", Duration::from_secs(30), || {
        seen.lock().unwrap().len() as u64 >= N
    })
    .await;
    router.shutdown().await.unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, (0..N).collect::<Vec<_>>(), "each message once");
}

/// Messages parked behind a busy key count towards the bound: one slow key cannot
/// grow the channel without limit, and the publisher resumes as soon as the key's
/// messages are handed out, not at `publish_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_messages_parked_behind_a_key_count_towards_the_bound() {
    const N: u64 = 500;
    let ch = unique_channel::<Numbered>("backlog_keyed");
    let (held, handler) = Held::handler();
    let (seen, entered, gate_tx) = (held.seen, held.entered, held.gate);
    // A publish that found no room would fail after 30 s; the test ends long before.
    let (router, broker) = start_bounded(config(10, "30s"), ch, handler).await;
    let publisher = {
        let router = router.clone();
        tokio::spawn(async move {
            for seq in 0..N {
                router
                    .publish_with(ch, &Numbered { seq }, PublishOptions::new().key("one"))
                    .await
                    .unwrap();
            }
        })
    };
    // One message of the key is in the handler; the rest wait behind it, at most 10.
    wait_until(
        "the key is held and the channel at its bound",
        Duration::from_secs(10),
        || entered.load(Ordering::SeqCst) == 1 && broker.backlog(ch.name()) == 10,
    )
    .await;
    assert!(
        !publisher.is_finished(),
        "publish did not wait at the bound"
    );
    assert_eq!(broker.backlog(ch.name()), 10, "the bound holds");
    assert_eq!(
        entered.load(Ordering::SeqCst),
        1,
        "one message of the key at a time"
    );
    gate_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), publisher)
        .await
        .expect("the publisher resumed as the key's messages were handed out")
        .unwrap();
    wait_until("all handled", Duration::from_secs(10), || {
        seen.lock().unwrap().len() as u64 >= N
    })
    .await;
    router.shutdown().await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        (0..N).collect::<Vec<_>>(),
        "each message once, in key order"
    );
}

/// A publish that finds no room within `publish_timeout` fails with `Timeout` naming
/// the channel and the bound; it is not silently dropped or queued past the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_publish_times_out_when_nobody_takes() {
    let ch = unique_channel::<Numbered>("backlog_timeout");
    let (_gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let handler = handler_fn(move |_m: Numbered, _cx: MessageContext| {
        let mut gate = gate_rx.clone();
        async move {
            let _ = gate.wait_for(|open| *open).await;
            Ok(())
        }
    });
    let router = MessageRouter::builder(with_prefetch(config(10, "200ms"), ch.name(), 1))
        .handle(ch, handler)
        .start()
        .await
        .unwrap();
    let mut refused = None;
    for seq in 0..100 {
        if let Err(e) = router.publish(ch, &Numbered { seq }).await {
            refused = Some((seq, e));
            break;
        }
    }
    let (seq, e) = refused.expect("a publish past the bound fails");
    // One in the handler, one fetched behind it at most, ten in the channel.
    assert!((10..=12).contains(&seq), "refused at {seq}");
    assert_eq!(e.kind(), ErrorKind::Timeout);
    let text = e.to_string();
    assert!(
        text.contains(ch.name()) && text.contains("max_backlog = 10"),
        "{text}"
    );
    drop(router);
}

/// Before any group consumes a channel, messages are kept without bound: a publisher
/// that runs before its consumers is never blocked by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backlog_is_unbounded_before_a_consumer_exists() {
    const N: u64 = 500;
    let ch = unique_channel::<Numbered>("backlog_no_group");
    let mut bounded = anybroker_brokers::memory::MemoryConfig::default();
    bounded.max_backlog = 10;
    let shared = anybroker::MemoryBroker::new(&bounded);
    let publisher = MessageRouter::builder(config(10, "200ms"))
        .with_broker("memory", shared.clone())
        .start()
        .await
        .unwrap();
    for seq in 0..N {
        publisher.publish(ch, &Numbered { seq }).await.unwrap();
    }
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let consumer = {
        let seen = seen.clone();
        MessageRouter::builder(config(10, "200ms"))
            .with_broker("memory", shared)
            .handle(
                ch,
                handler_fn(move |m: Numbered, _cx: MessageContext| {
                    seen.lock().unwrap().push(m.seq);
                    async { Ok(()) }
                }),
            )
            .start()
            .await
            .unwrap()
    };
    wait_until("all handled", Duration::from_secs(30), || {
        seen.lock().unwrap().len() as u64 >= N
    })
    .await;
    consumer.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
    assert_eq!(*seen.lock().unwrap(), (0..N).collect::<Vec<_>>());
}

/// A fresh channel opened straight on `broker`, below the router.
async fn opened_below_the_router(
    broker: &anybroker::Broker,
    prefix: &str,
) -> anybroker_brokers::OpenChannel {
    let ch = unique_channel::<Numbered>(prefix);
    broker
        .open_channel(
            "memory",
            &anybroker_brokers::ChannelSpec::new(ch.name(), "default"),
        )
        .await
        .unwrap()
}

/// A member of `group` on `channel`.
async fn member(
    channel: &anybroker_brokers::OpenChannel,
    group: &str,
) -> Box<dyn anybroker_brokers::Subscription> {
    channel
        .subscribe(anybroker_brokers::SubscribeOptions::new(group))
        .await
        .unwrap()
}

/// `Numbered { seq }` in an envelope on `channel`.
fn numbered(channel: &anybroker_brokers::OpenChannel, seq: u64) -> anybroker::Envelope {
    let payload = serde_json::to_vec(&Numbered { seq }).unwrap();
    anybroker::Envelope::new(channel.name().clone(), payload)
}

/// A member settling a delivery another member of its group holds is refused, as on
/// every other backend, and the holder still settles it: the embedded broker keeps a
/// group's deliveries in one table, so it checks whose each one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_settling_another_members_delivery_is_refused() {
    use anybroker_brokers::Settlement;
    let broker = anybroker::Broker::from(anybroker::MemoryBroker::default());
    let channel = opened_below_the_router(&broker, "foreign-settle").await;
    let holder = member(&channel, "default").await;
    let other = member(&channel, "default").await;
    channel.publish(numbered(&channel, 1)).await.unwrap();
    let held = holder.recv(1).await.unwrap();
    assert_eq!(held.len(), 1);
    let tag = held[0].tag;

    let refused = other.settle(vec![(tag, Settlement::Ack)]).await;
    let error = refused.expect_err("another member's delivery was settled");
    assert!(
        error.to_string().contains("not from this subscription"),
        "{error}"
    );
    holder.settle(vec![(tag, Settlement::Ack)]).await.unwrap();
    // Settled once: a second settle is refused too.
    assert!(holder.settle(vec![(tag, Settlement::Ack)]).await.is_err());
}

/// The embedded broker hands out what is ready without a wait, into the caller's
/// vector, and settles at once: acked messages are gone, a retry comes back with its
/// next attempt, released ones come back first and in order, and a tag that is not the
/// member's is refused. Closed, it hands out nothing.
#[tokio::test]
async fn memory_hands_out_ready_deliveries_and_settles_at_once() {
    use anybroker_brokers::Settlement;
    let broker = anybroker::Broker::from(anybroker::MemoryBroker::default());
    let channel = opened_below_the_router(&broker, "ready").await;
    let holder = member(&channel, "default").await;
    let other = member(&channel, "default").await;
    for seq in 1..=5 {
        channel.publish(numbered(&channel, seq)).await.unwrap();
    }
    let seqs = |deliveries: &[anybroker_brokers::Delivery]| -> Vec<(u64, u32)> {
        deliveries
            .iter()
            .map(|d| {
                let n: Numbered = serde_json::from_slice(&d.envelope.payload).unwrap();
                (n.seq, d.envelope.attempt)
            })
            .collect()
    };

    let mut ready = Vec::new();
    assert_eq!(holder.recv_ready(3, &mut ready).unwrap(), 3);
    assert_eq!(
        holder.recv_ready(10, &mut ready).unwrap(),
        2,
        "appended to the first three"
    );
    assert_eq!(seqs(&ready), [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]);
    assert_eq!(
        holder.recv_ready(10, &mut ready).unwrap(),
        0,
        "nothing is left"
    );
    assert_eq!(ready.len(), 5);

    let foreign = vec![(ready[0].tag, Settlement::Ack)];
    let refused = other
        .settle_at_once(&mut foreign.clone())
        .expect("settled at once");
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("not from this subscription"),
        "another member's delivery was settled"
    );

    let mut settlements: Vec<_> = ready.iter().map(|d| (d.tag, Settlement::Release)).collect();
    settlements[0].1 = Settlement::Ack;
    settlements[1].1 = Settlement::Retry {
        delay: Duration::ZERO,
        error: "failed once".into(),
    };
    let room = settlements.capacity();
    holder
        .settle_at_once(&mut settlements)
        .expect("settled at once")
        .unwrap();
    assert!(settlements.is_empty(), "the settlements were taken out");
    assert_eq!(settlements.capacity(), room, "and their room kept");

    let mut again = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while again.len() < 4 && tokio::time::Instant::now() < deadline {
        let got = tokio::time::timeout(Duration::from_secs(1), holder.recv(10)).await;
        if let Ok(got) = got {
            again.extend(got.unwrap());
        }
    }
    assert_eq!(seqs(&again), [(3, 1), (4, 1), (5, 1), (2, 2)]);

    holder.close().await.unwrap();
    channel.publish(numbered(&channel, 6)).await.unwrap();
    let mut after_close = Vec::new();
    assert_eq!(holder.recv_ready(10, &mut after_close).unwrap(), 0);
    assert!(after_close.is_empty());
}

/// The embedded broker takes a publish at once, with no future made, while its log has
/// room; once the broker is shut down it takes none at once, and `publish` says why.
#[tokio::test]
async fn memory_publishes_at_once_until_shut_down() {
    use anybroker_brokers::ErrorKind;
    let memory = anybroker::MemoryBroker::default();
    let broker = anybroker::Broker::from(memory.clone());
    let channel = opened_below_the_router(&broker, "at-once").await;
    channel
        .provision(&anybroker_brokers::SubscribeOptions::new("default"))
        .await
        .unwrap();
    assert!(channel.publish_at_once(numbered(&channel, 1)).is_none());
    assert_eq!(memory.backlog(channel.name()), 1);

    broker.shutdown().await.unwrap();
    let back = channel
        .publish_at_once(numbered(&channel, 2))
        .expect("a shut-down broker took a publish");
    assert_eq!(&back.payload[..], br#"{"seq":2}"#);
    let error = channel.publish(back).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Closed, "{error}");
    assert_eq!(memory.backlog(channel.name()), 1);
}

/// A publish wakes receives only when some wait: every waiting one (here one in each
/// of two groups) gets the message, and receives given up before (timed out) leave
/// nothing behind that would keep a later one from waking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_publish_wakes_every_waiting_receive() {
    let broker = anybroker::Broker::from(anybroker::MemoryBroker::default());
    let channel = opened_below_the_router(&broker, "wakes").await;
    let first = member(&channel, "first").await;
    let second = member(&channel, "second").await;
    for _ in 0..10 {
        let given_up = tokio::time::timeout(Duration::from_millis(1), first.recv(1)).await;
        assert!(
            given_up.is_err(),
            "a receive found a message before any publish"
        );
    }
    let receive = |member: Box<dyn anybroker_brokers::Subscription>| {
        tokio::spawn(async move {
            let got = member.recv(1).await.unwrap();
            (member, got)
        })
    };
    let (first, second) = (receive(first), receive(second));
    channel.publish(numbered(&channel, 7)).await.unwrap();
    for task in [first, second] {
        let (_member, got) = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("a waiting receive was not woken")
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].envelope.payload[..], br#"{"seq":7}"#);
    }
}

/// A group provisioned with no member holds the channel's messages up to
/// `max_backlog`: publishers then wait up to `publish_timeout` and fail with `Timeout`,
/// never forever; once a member of the group runs, it gets every message that was
/// accepted and publishing goes on.
#[tokio::test]
async fn provisioned_group_without_members_bounds_publishers() {
    let ch = unique_channel::<Numbered>("provisioned_backlog");
    let config = config(4, "100ms");
    // One broker with that config, for the publishing and the consuming router.
    let broker = anybroker::Broker::connect("memory", &config.brokers["memory"])
        .await
        .unwrap();
    let builder = || MessageRouter::builder(config.clone()).with_broker("memory", broker.clone());
    let publisher = builder().start().await.unwrap();
    publisher.provision(ch, &["audit"]).await.unwrap();
    for seq in 0..4 {
        publisher.publish(ch, &Numbered { seq }).await.unwrap();
    }
    let err = publisher
        .publish(ch, &Numbered { seq: 4 })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains("max_backlog = 4"), "{err}");

    let seen = common::HandledCounts::default();
    let consumer = builder()
        .handle_with(
            ch,
            common::counting_handler(&seen, Duration::ZERO),
            anybroker::HandlerOptions::new().group("audit"),
        )
        .start()
        .await
        .unwrap();
    publisher.publish(ch, &Numbered { seq: 5 }).await.unwrap();
    wait_until(
        "the group has every accepted message",
        Duration::from_secs(10),
        || seen.lock().unwrap().len() == 5,
    )
    .await;
    consumer.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
    let mut handled: Vec<u64> = seen.lock().unwrap().keys().copied().collect();
    handled.sort();
    assert_eq!(
        handled,
        vec![0, 1, 2, 3, 5],
        "the refused message 4 was never taken"
    );
}

/// Groups listed in a channel's `provision_groups` exist from `start`: what is
/// published before their first member runs waits for them.
#[tokio::test]
async fn provision_groups_from_config_exist_from_start() {
    let ch = unique_channel::<Numbered>("provision_config");
    let broker = anybroker::MemoryBroker::default();
    let mut config = config(0, "1s");
    config
        .channels
        .entry(ch.name().to_string())
        .or_default()
        .provision_groups = vec!["audit".into(), "billing".into()];
    let builder = || MessageRouter::builder(config.clone()).with_broker("memory", broker.clone());
    let publisher = builder().start().await.unwrap();
    for seq in 0..3 {
        publisher.publish(ch, &Numbered { seq }).await.unwrap();
    }
    // The audit group takes everything first; billing still gets all three.
    let audit = common::HandledCounts::default();
    let billing = common::HandledCounts::default();
    let group = |name: &str| anybroker::HandlerOptions::new().group(name);
    let first = builder()
        .handle_with(
            ch,
            common::counting_handler(&audit, Duration::ZERO),
            group("audit"),
        )
        .start()
        .await
        .unwrap();
    wait_until("audit has all", Duration::from_secs(10), || {
        audit.lock().unwrap().len() == 3
    })
    .await;
    let second = builder()
        .handle_with(
            ch,
            common::counting_handler(&billing, Duration::ZERO),
            group("billing"),
        )
        .start()
        .await
        .unwrap();
    wait_until("billing has all", Duration::from_secs(10), || {
        billing.lock().unwrap().len() == 3
    })
    .await;
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
}

/// On tokio's paused clock the embedded broker's backoff runs on virtual time (the
/// runtime jumps to the next timer when every task waits): a 5-attempt policy starting
/// at 30 s has its attempts 30 s, 60 s, 120 s and then `max` (200 s) apart.
#[tokio::test(start_paused = true)]
async fn retries_run_on_virtual_time() {
    let ch = unique_channel::<Numbered>("virtual_time");
    let mut config = config(0, "1s");
    config
        .channels
        .entry(ch.name().to_string())
        .or_default()
        .retry = Some(
        anybroker::RetryPolicy::new(5)
            .initial(Duration::from_secs(30))
            .multiplier(2.0)
            .max(Duration::from_secs(200)),
    );
    let attempts: Arc<Mutex<Vec<(u32, tokio::time::Instant)>>> = Arc::default();
    let handler = {
        let attempts = attempts.clone();
        handler_fn(move |_m: Numbered, cx: MessageContext| {
            attempts
                .lock()
                .unwrap()
                .push((cx.attempt(), tokio::time::Instant::now()));
            async { Err::<(), _>(anybroker::HandlerError::retryable("down")) }
        })
    };
    let router = MessageRouter::builder(config)
        .handle(ch, handler)
        .start()
        .await
        .unwrap();
    router.publish(ch, &Numbered { seq: 1 }).await.unwrap();
    wait_until("dead-lettered", Duration::from_secs(3600), || {
        attempts.lock().unwrap().len() == 5
    })
    .await;
    common::wait_until_async("the dead letter", Duration::from_secs(3600), || {
        let router = router.clone();
        async move { !router.dead_letters(ch, 10).await.unwrap().is_empty() }
    })
    .await;
    let dead = router.dead_letters(ch, 10).await.unwrap();
    router.shutdown().await.unwrap();
    assert_eq!(dead[0].attempts, 5);
    let attempts = attempts.lock().unwrap().clone();
    let numbers: Vec<u32> = attempts.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, vec![1, 2, 3, 4, 5]);
    let gaps: Vec<u64> = attempts
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).as_secs())
        .collect();
    assert_eq!(
        gaps,
        vec![30, 60, 120, 200],
        "virtual seconds between attempts"
    );
}

/// An application's production wiring (channels routed to Redis and Kafka, their retry
/// policies) runs on one embedded broker in a test: nothing connects to the configured
/// servers, the channel's own retry policy applies, two routers given the same broker
/// share it. (A config routing to a backend loads only in a build with its feature.)
#[cfg(all(feature = "kafka", feature = "redis"))]
#[tokio::test(start_paused = true)]
async fn production_wiring_runs_on_an_embedded_broker() {
    let ch = unique_channel::<Numbered>("embedded_wiring");
    let production = RouterConfig::from_toml_str(&format!(
        "default_broker = \"kafka\"\n\
         [brokers.kafka]\nkind = \"kafka\"\nbootstrap_servers = \"127.0.0.1:1\"\n\
         [brokers.redis]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\n\
         [channels.\"{}\"]\nbroker = \"redis\"\nretry = {{ attempts = 2, initial = \"1m\", max = \"1m\" }}\n",
        ch.name()
    ))
    .unwrap();
    let broker = anybroker::MemoryBroker::default();
    let attempts: Arc<Mutex<Vec<u32>>> = Arc::default();
    let handler = {
        let attempts = attempts.clone();
        handler_fn(move |_m: Numbered, cx: MessageContext| {
            attempts.lock().unwrap().push(cx.attempt());
            async { Err::<(), _>(anybroker::HandlerError::retryable("down")) }
        })
    };
    let consumer = MessageRouter::builder(production.clone())
        .on_embedded_broker(&broker)
        .handle(ch, handler)
        .start()
        .await
        .unwrap();
    let publisher = MessageRouter::builder(production)
        .on_embedded_broker(&broker)
        .start()
        .await
        .unwrap();
    assert_eq!(publisher.broker_of(ch).await.unwrap().0, "redis");
    publisher.publish(ch, &Numbered { seq: 1 }).await.unwrap();
    common::wait_until_async("the dead letter", Duration::from_secs(3600), || {
        let publisher = publisher.clone();
        async move { !publisher.dead_letters(ch, 10).await.unwrap().is_empty() }
    })
    .await;
    consumer.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
    assert_eq!(
        *attempts.lock().unwrap(),
        vec![1, 2],
        "the channel's 2 attempts"
    );
}

/// The recorder of the `testing` feature, on paused time: per call the attempt, the
/// virtual time and the outcome (acked, retried with its delay, dead-lettered with its
/// reason, a panic, an undecodable payload), and what a handler published downstream.
#[tokio::test(start_paused = true)]
async fn recorder_sees_every_outcome_on_virtual_time() {
    use anybroker::testing::{Outcome, Recorder};
    use anybroker::{DeadLetterReason, Envelope, HandlerError};
    let orders = unique_channel::<Numbered>("recorded_orders");
    let audit = unique_channel::<Numbered>("recorded_audit");
    let mut config = config(0, "1s");
    config
        .channels
        .entry(orders.name().to_string())
        .or_default()
        .retry = Some(
        anybroker::RetryPolicy::new(3)
            .initial(Duration::from_secs(10))
            .max(Duration::from_secs(60)),
    );
    let downstream: Arc<std::sync::OnceLock<MessageRouter>> = Arc::default();
    let handler = {
        let downstream = downstream.clone();
        handler_fn(move |m: Numbered, cx: MessageContext| {
            let downstream = downstream.clone();
            async move {
                match m.seq {
                    // Fails twice, then succeeds and publishes downstream.
                    1 if cx.attempt() < 3 => Err(HandlerError::retryable("busy")),
                    1 => {
                        let router = downstream.get().expect("router set");
                        router.publish(audit, &Numbered { seq: 100 }).await?;
                        Ok(())
                    }
                    2 => Err(HandlerError::permanent("rejected")),
                    3 => panic!("bug on {}", m.seq),
                    _ => Ok(()),
                }
            }
        })
    };
    let recorder = Recorder::new();
    let router = MessageRouter::builder(config)
        .on_embedded_broker(&anybroker::MemoryBroker::default())
        .recording(&recorder)
        .handle(orders, handler)
        .start()
        .await
        .unwrap();
    downstream.set(router.clone()).ok().unwrap();
    for seq in 1..=3 {
        router.publish(orders, &Numbered { seq }).await.unwrap();
    }
    router
        .publish_envelope(Envelope::new(orders.name(), &b"not json"[..]).with_id("raw-1"))
        .await
        .unwrap();
    // 1: three calls; 2: one; 3: three (a panic is retried); raw: one.
    wait_until("every call", Duration::from_secs(3600), || {
        recorder.calls(orders).len() == 8
    })
    .await;
    router.shutdown().await.unwrap();

    let calls_of = |seq: u64| -> Vec<(u32, Duration, Outcome)> {
        recorder
            .calls(orders)
            .into_iter()
            .filter(|c| {
                serde_json::from_slice::<Numbered>(&c.envelope.payload)
                    .map(|m| m.seq)
                    .ok()
                    == Some(seq)
            })
            .map(|c| (c.attempt(), c.at, c.outcome))
            .collect()
    };
    let first = calls_of(1);
    assert_eq!(first.len(), 3);
    assert_eq!(
        (first[1].1 - first[0].1, first[2].1 - first[1].1),
        (Duration::from_secs(10), Duration::from_secs(20)),
        "virtual backoff of 10 s then 20 s"
    );
    assert_eq!(
        first[0].2,
        Outcome::Retried {
            delay: Duration::from_secs(10),
            error: "busy".into()
        }
    );
    assert_eq!(first[2].2, Outcome::Acked);
    assert!(matches!(
        &calls_of(2)[..],
        [(
            1,
            _,
            Outcome::DeadLettered {
                reason: DeadLetterReason::PermanentError,
                ..
            }
        )]
    ));
    let third = calls_of(3);
    assert_eq!(third.len(), 3);
    assert!(third.iter().all(|(_, _, o)| o.panicked()));
    assert!(matches!(
        third[2].2,
        Outcome::DeadLettered {
            reason: DeadLetterReason::AttemptsExhausted,
            ..
        }
    ));
    let raw: Vec<_> = recorder
        .calls(orders)
        .into_iter()
        .filter(|c| &*c.envelope.id == "raw-1")
        .collect();
    assert!(matches!(
        raw[0].outcome,
        Outcome::DeadLettered {
            reason: DeadLetterReason::Undecodable,
            ..
        }
    ));
    assert_eq!(
        recorder
            .published_messages(audit)
            .iter()
            .map(|m| m.seq)
            .collect::<Vec<_>>(),
        vec![100],
        "what the handler published downstream"
    );
    let received: Vec<u64> = recorder.received(orders).iter().map(|m| m.seq).collect();
    assert_eq!(
        received.len(),
        7,
        "the undecodable payload is not a received message"
    );
}

/// The harness end to end: the production wiring on an embedded broker, recorded, run
/// to rest on paused time. A 5-attempt policy from 30 s, capped at 200 s, gives attempts
/// 30, 60, 120 and 200 virtual seconds apart, read from the records; a group with no
/// member keeps the broker from resting, and the error names its channel.
#[tokio::test(start_paused = true)]
async fn run_until_settled_drives_retries_on_virtual_time() {
    use anybroker::testing::{run_until_settled, Outcome, Recorder};
    let ch = unique_channel::<Numbered>("settled");
    let mut config = config(0, "1s");
    config
        .channels
        .entry(ch.name().to_string())
        .or_default()
        .retry = Some(
        anybroker::RetryPolicy::new(5)
            .initial(Duration::from_secs(30))
            .max(Duration::from_secs(200)),
    );
    let broker = anybroker::MemoryBroker::default();
    let recorder = Recorder::new();
    let failing = handler_fn(|_m: Numbered, _cx: MessageContext| async {
        Err::<(), _>(anybroker::HandlerError::retryable("down"))
    });
    let router = MessageRouter::builder(config)
        .on_embedded_broker(&broker)
        .recording(&recorder)
        .handle(ch, failing)
        .start()
        .await
        .unwrap();
    router.publish(ch, &Numbered { seq: 1 }).await.unwrap();
    let took = run_until_settled(&broker, Duration::from_secs(3600))
        .await
        .unwrap();
    let calls = recorder.calls(ch);
    let attempts: Vec<u32> = calls.iter().map(|c| c.attempt()).collect();
    assert_eq!(attempts, vec![1, 2, 3, 4, 5]);
    let gaps: Vec<u64> = calls
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_secs())
        .collect();
    assert_eq!(gaps, vec![30, 60, 120, 200]);
    assert!(matches!(calls[4].outcome, Outcome::DeadLettered { .. }));
    assert_eq!(took.as_secs(), 410);

    // A provisioned group without a member holds what is published: never at rest.
    router.provision(ch, &["nobody"]).await.unwrap();
    router.publish(ch, &Numbered { seq: 2 }).await.unwrap();
    let err = run_until_settled(&broker, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), anybroker::ErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains(ch.name()), "{err}");
    router.shutdown().await.unwrap();
}

/// A handler that panics before it returns its future (in the closure's own body) is
/// caught as one that panics while running is: the message is retried, and the retry
/// carries the panic as its error.
#[tokio::test]
async fn handler_panicking_before_its_future_is_retried() {
    const N: u64 = 3;
    let ch = unique_channel::<Numbered>("sync-panic");
    let config = RouterConfig::from_toml_str(
        "default_broker = \"memory\"\n[defaults]\n\
         retry = { attempts = 2, initial = \"10ms\", max = \"10ms\" }\n\
         [brokers.memory]\nkind = \"memory\"\n",
    )
    .unwrap();
    // Each call's sequence number, attempt and error header.
    type Call = (u64, u32, Option<String>);
    let seen: Arc<Mutex<Vec<Call>>> = Arc::default();
    let handler = {
        let seen = seen.clone();
        handler_fn(move |m: Numbered, cx: MessageContext| {
            if cx.attempt() == 1 {
                panic!("bug before the future on {}", m.seq);
            }
            let error = cx.headers().get(anybroker::header::ERROR).cloned();
            seen.lock().unwrap().push((m.seq, cx.attempt(), error));
            async { Ok(()) }
        })
    };
    let router = MessageRouter::builder(config)
        .handle(ch, handler)
        .start()
        .await
        .unwrap();
    for seq in 0..N {
        router.publish(ch, &Numbered { seq }).await.unwrap();
    }
    wait_until(
        "every message handled on its retry",
        Duration::from_secs(10),
        || seen.lock().unwrap().len() as u64 == N,
    )
    .await;
    router.shutdown().await.unwrap();
    let mut seen = std::mem::take(&mut *seen.lock().unwrap());
    seen.sort();
    for (i, (seq, attempt, error)) in seen.into_iter().enumerate() {
        assert_eq!(
            (seq, attempt),
            (i as u64, 2),
            "each message once, on attempt 2"
        );
        let error = error.expect("the retry carries its error");
        assert_eq!(
            error,
            format!("handler panicked: bug before the future on {seq}")
        );
    }
}
