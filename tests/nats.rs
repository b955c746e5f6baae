//! NATS-specific tests against real servers: a server killed and restarted under load,
//! deduplication by message id, members closing and starting under load. (Payloads
//! published around the library: the conformance case
//! `foreign_payloads_dead_lettered_among_valid_ones`.)
#![cfg(feature = "nats")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anybroker::{handler_fn, Envelope, MessageContext, MessageRouter, RouterConfig};

mod common;
use common::{
    counting_handler, unique_channel, wait_until, wait_until_async, HandledCounts, Numbered,
};

fn router_config(url: &str) -> RouterConfig {
    RouterConfig::from_toml_str(&format!(
        "default_broker = \"nats\"\n[defaults]\nretry = {{ attempts = 5, initial = \"50ms\" }}\n\
         [brokers.nats]\nkind = \"nats\"\nurl = \"{url}\"\nmax_age = \"1h\"\nack_wait = \"2s\"\n"
    ))
    .unwrap()
}

/// The server's durable consumer of `group` on `channel`'s stream, read with the plain
/// client to see what the server holds.
async fn jetstream_consumer(
    channel: &str,
    group: &str,
) -> async_nats::jetstream::consumer::PullConsumer {
    let js =
        async_nats::jetstream::new(async_nats::connect("nats://127.0.0.1:4222").await.unwrap());
    let stream = format!("ANYBROKER_{}", channel.replace('.', "_"));
    js.get_stream(&stream)
        .await
        .unwrap()
        .get_consumer(group)
        .await
        .unwrap()
}

/// Publishing the same envelope id twice within the duplicate window stores it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_same_id_twice_is_stored_once() {
    let ch = unique_channel::<Numbered>("dedupe");
    let router = MessageRouter::builder(router_config("nats://127.0.0.1:4222"))
        .start()
        .await
        .unwrap();
    let envelope = Envelope::new(ch.name(), serde_json::to_vec(&Numbered { seq: 1 }).unwrap());
    router.publish_envelope(envelope.clone()).await.unwrap();
    router.publish_envelope(envelope.clone()).await.unwrap();
    router
        .publish_envelope(Envelope::new(
            ch.name(),
            serde_json::to_vec(&Numbered { seq: 2 }).unwrap(),
        ))
        .await
        .unwrap();
    router.shutdown().await.unwrap();
    let client = async_nats::connect("nats://127.0.0.1:4222").await.unwrap();
    let js = async_nats::jetstream::new(client);
    let name = format!("ANYBROKER_{}", ch.name().replace('.', "_"));
    let mut stream = js.get_stream(&name).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, 2, "the repeated id was stored once");
}

/// With `deduplicate = false` the id travels without `Nats-Msg-Id`: the same envelope
/// published twice is stored twice, and each copy is handled with its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_without_deduplication_stores_a_repeated_id_twice() {
    let ch = unique_channel::<Numbered>("no-dedupe");
    let mut config = router_config("nats://127.0.0.1:4222");
    let anybroker::BrokerConfig::Nats(nats) = config.brokers.get_mut("nats").unwrap() else {
        panic!("a NATS broker");
    };
    nats.deduplicate = false;
    let ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = {
        let ids = ids.clone();
        handler_fn(move |_: Numbered, cx: MessageContext| {
            ids.lock().unwrap().push(cx.id().to_string());
            async { Ok(()) }
        })
    };
    let router = MessageRouter::builder(config)
        .handle(ch, handler)
        .start()
        .await
        .unwrap();
    let envelope = Envelope::new(ch.name(), serde_json::to_vec(&Numbered { seq: 1 }).unwrap());
    router.publish_envelope(envelope.clone()).await.unwrap();
    router.publish_envelope(envelope.clone()).await.unwrap();
    wait_until("both copies handled", Duration::from_secs(30), || {
        ids.lock().unwrap().len() == 2
    })
    .await;
    router.shutdown().await.unwrap();
    assert_eq!(*ids.lock().unwrap(), vec![envelope.id.to_string(); 2]);
}

/// With `url = "tls://…"` and `tls_ca` naming a private CA, messages travel over TLS to a
/// server that requires it; without the CA the server is not trusted and start fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_over_tls_with_private_ca() {
    const N: u64 = 100;
    let certs =
        std::env::temp_dir().join(format!("anybroker-tls-{}", uuid::Uuid::new_v4().simple()));
    let (ca, cert, key) = common::make_tls_certs(&certs);
    let server = common::own_nats_with(vec![
        "--tls".into(),
        "--tlscert".into(),
        cert.display().to_string(),
        "--tlskey".into(),
        key.display().to_string(),
    ]);
    let config = |with_ca: bool| {
        let ca_line = if with_ca {
            format!("tls_ca = \"{}\"\n", ca.display())
        } else {
            String::new()
        };
        RouterConfig::from_toml_str(&format!(
            "default_broker = \"nats\"\n[brokers.nats]\nkind = \"nats\"\nurl = \"tls://127.0.0.1:{}\"\n{ca_line}",
            server.port
        ))
        .unwrap()
    };
    let err = MessageRouter::builder(config(false))
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), anybroker::ErrorKind::Unreachable, "{err}");

    let ch = unique_channel::<Numbered>("tls");
    let seen: HandledCounts = Arc::default();
    let handler = counting_handler(&seen, Duration::ZERO);
    let router = MessageRouter::builder(config(true))
        .handle(ch, handler)
        .start()
        .await
        .unwrap();
    for seq in 0..N {
        router.publish(ch, &Numbered { seq }).await.unwrap();
    }
    wait_until("all delivered over TLS", Duration::from_secs(30), || {
        seen.lock().unwrap().len() as u64 == N
    })
    .await;
    router.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&certs);
}

/// A channel's stream follows the config: created with its limits, and updated when
/// the limits change (here the retention, from 1 h to 2 h).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stream_limits_follow_config() {
    let ch = unique_channel::<Numbered>("limits");
    let config = |max_age: &str| {
        RouterConfig::from_toml_str(&format!(
            "default_broker = \"nats\"\n[brokers.nats]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nmax_age = \"{max_age}\"\nmax_bytes = 10000000\n"
        ))
        .unwrap()
    };
    let js =
        async_nats::jetstream::new(async_nats::connect("nats://127.0.0.1:4222").await.unwrap());
    let name = format!("ANYBROKER_{}", ch.name().replace('.', "_"));
    for (max_age, seconds) in [("1h", 3600), ("2h", 7200)] {
        let router = MessageRouter::builder(config(max_age))
            .start()
            .await
            .unwrap();
        router.publish(ch, &Numbered { seq: 1 }).await.unwrap();
        router.shutdown().await.unwrap();
        let mut stream = js.get_stream(&name).await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(info.config.max_age, Duration::from_secs(seconds));
        assert_eq!(info.config.max_bytes, 10_000_000);
        assert_eq!(
            info.config.storage,
            async_nats::jetstream::stream::StorageType::File
        );
    }
    js.delete_stream(&name).await.unwrap();
}

/// A NATS backend of its own connection (as a separate process would have) to the
/// server on `port`, in `mode`.
async fn nats_broker(mode: anybroker_brokers::nats::NatsMode, port: u16) -> anybroker::Broker {
    use anybroker_brokers::nats::{NatsBroker, NatsConfig};
    use anybroker_brokers::Backend;
    let url = format!("nats://127.0.0.1:{port}");
    let mut config = NatsConfig::new(anybroker_brokers::SecretUrl::parse(&url).unwrap());
    config.mode = mode;
    NatsBroker::connect(&config).await.unwrap().into()
}

/// `channel` opened on `broker` with the group `default`.
async fn open(
    broker: &anybroker::Broker,
    channel: &str,
) -> anybroker::Result<anybroker::OpenChannel> {
    let spec = anybroker_brokers::ChannelSpec::new(channel, "default");
    broker.open_channel("nats", &spec).await
}

/// Members starting at the same moment on a channel nobody used yet all start: the
/// channel's streams are created by one of them and found by the others (five rounds
/// of eight members, each on its own connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_members_starting_together_on_a_new_channel_all_start() {
    use anybroker_brokers::nats::NatsMode;
    use anybroker_brokers::SubscribeOptions;
    const MEMBERS: usize = 32;
    let mut members = Vec::new();
    for _ in 0..MEMBERS {
        members.push(nats_broker(NatsMode::Jetstream, 4222).await);
    }
    for round in 0..10 {
        let ch = unique_channel::<Numbered>("start-race");
        // Each member opens the channel (its streams found or created) and subscribes.
        let starts = members.iter().map(|m| async move {
            open(m, ch.name())
                .await?
                .subscribe(SubscribeOptions::new("default"))
                .await
        });
        let results = futures::future::join_all(starts).await;
        let failed: Vec<String> = results
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
            .collect();
        assert!(
            failed.is_empty(),
            "round {round}: {} of {MEMBERS} members failed to start: {failed:?}",
            failed.len()
        );
        let closes = results
            .into_iter()
            .flatten()
            .map(|sub| async move { sub.close().await });
        for closed in futures::future::join_all(closes).await {
            closed.unwrap();
        }
    }
}

/// On core NATS a message published by another connection right after `subscribe`
/// returned reaches the subscription: `subscribe` returns once the server has the
/// subscription, not once the client has written it. The subscriber's connection goes
/// through a proxy that holds what it sends for 50 ms (a network between client and
/// server); the publisher's is direct. 200 subscriptions, each on its own subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_subscription_gets_what_is_published_right_after_start() {
    use anybroker_brokers::nats::NatsMode;
    use anybroker_brokers::SubscribeOptions;
    const ROUNDS: usize = 200;
    let proxy = common::DelayProxy::start(4222, Duration::from_millis(50)).await;
    let subscriber = nats_broker(NatsMode::Core, proxy.port).await;
    let publisher = nats_broker(NatsMode::Core, 4222).await;
    let round = |round: usize| {
        let (subscriber, publisher) = (&subscriber, &publisher);
        async move {
            let ch = unique_channel::<Numbered>("core-start");
            let sub = open(subscriber, ch.name())
                .await
                .unwrap()
                .subscribe(SubscribeOptions::new("default"))
                .await
                .unwrap();
            let payload = serde_json::to_vec(&Numbered { seq: round as u64 }).unwrap();
            open(publisher, ch.name())
                .await
                .unwrap()
                .publish(Envelope::new(ch.name(), payload))
                .await
                .unwrap();
            let got = tokio::time::timeout(Duration::from_secs(2), sub.recv(1)).await;
            sub.close().await.unwrap();
            matches!(got, Ok(Ok(got)) if got.len() == 1)
        }
    };
    let received = futures::future::join_all((0..ROUNDS).map(round)).await;
    let lost: Vec<usize> = (0..ROUNDS).filter(|&r| !received[r]).collect();
    assert!(
        lost.is_empty(),
        "{} of {ROUNDS} subscriptions lost the message published right after subscribe: {lost:?}",
        lost.len()
    );
}

/// Members of a group closing and starting while thousands of messages are handled:
/// no call of a handler sees an attempt number above the calls made of its message so
/// far (a member giving back what it had not started does not count an attempt, nor
/// does a message the server sent to a closing member that the client dropped on the
/// wire, which the short `ack_wait` brings back within the test), nothing is dead-lettered
/// under a 10,000-attempt policy, every close returns promptly, and the server delivers
/// each message no more often than it was handled, retried or given back (no message
/// bounces between a closing member and the server). The members reach the server
/// through a proxy that delays what they send by 10 ms, as a network does: the server
/// keeps sending to a closing member's pull requests until its unsubscribe arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_closing_members_do_not_inflate_attempts() {
    const N: u64 = 2_000;
    const PREFETCH: usize = 32;
    const CLOSES: usize = 12;
    let ch = unique_channel::<Numbered>("close-attempts");
    let proxy = common::DelayProxy::start(4222, Duration::from_millis(10)).await;
    let config_via = |port: u16| {
        RouterConfig::from_toml_str(&format!(
            "default_broker = \"nats\"\n[defaults]\nprefetch = {PREFETCH}\n\
             retry = {{ attempts = 10000, initial = \"20ms\", max = \"20ms\" }}\n\
             [brokers.nats]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:{port}\"\n\
             max_age = \"1h\"\nack_wait = \"5s\"\n"
        ))
        .unwrap()
    };
    let config = config_via(proxy.port);
    // Per message: the attempt number each call saw, in call order.
    let calls: Arc<Mutex<HashMap<u64, Vec<u32>>>> = Arc::default();
    let succeeded = Arc::new(AtomicUsize::new(0));
    let member = || {
        MessageRouter::builder(config.clone())
            .handle(ch, attempt_recording_handler(&calls, &succeeded))
            .start()
    };
    let publisher = MessageRouter::builder(config_via(4222))
        .start()
        .await
        .unwrap();
    let mut members = vec![member().await.unwrap(), member().await.unwrap()];
    for seq in 0..N {
        publisher.publish(ch, &Numbered { seq }).await.unwrap();
    }
    let mut slowest_close = Duration::ZERO;
    for round in 1..=CLOSES {
        let threshold = N as usize * round / (CLOSES + 2);
        wait_until(
            "progress before a member closes",
            Duration::from_secs(60),
            || succeeded.load(Ordering::SeqCst) >= threshold,
        )
        .await;
        let closing = members.remove(0);
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(30), closing.shutdown())
            .await
            .expect("a member closes within 30 s")
            .unwrap();
        slowest_close = slowest_close.max(started.elapsed());
        members.push(member().await.unwrap());
    }
    wait_until("every message handled", Duration::from_secs(120), || {
        calls.lock().unwrap().len() as u64 == N && succeeded.load(Ordering::SeqCst) >= N as usize
    })
    .await;
    for m in members {
        m.shutdown().await.unwrap();
    }
    let dead = publisher.dead_letters(ch, 100).await.unwrap();
    publisher.shutdown().await.unwrap();

    let calls = std::mem::take(&mut *calls.lock().unwrap());
    let total_calls: usize = calls.values().map(Vec::len).sum();
    let mut consumer = jetstream_consumer(ch.name(), "default").await;
    let deliveries = consumer.info().await.unwrap().delivered.consumer_sequence;
    println!(
        "{N} messages, {total_calls} handler calls, {deliveries} server deliveries, slowest close {slowest_close:?}"
    );
    assert!(
        dead.is_empty(),
        "dead letters under a 10,000-attempt policy: {:?}",
        dead[0]
    );
    // Inflated: a call saw an attempt above the calls made of its message so far.
    let inflated: Vec<(&u64, &Vec<u32>)> = calls
        .iter()
        .filter(|(_, seen)| seen.iter().enumerate().any(|(i, &a)| a as usize > i + 1))
        .take(5)
        .collect();
    assert!(
        inflated.is_empty(),
        "calls saw attempts above the calls made so far: {inflated:?}"
    );
    // Not exactly 1, 2, 3 then handled once: a message handled twice, which
    // at-least-once allows (its `ack_wait` overrun on a loaded machine).
    let irregular: Vec<(&u64, &Vec<u32>)> = calls
        .iter()
        .filter(|(seq, seen)| {
            let expected = if *seq % 7 == 0 { 3 } else { 1 };
            seen.len() != expected || !seen.iter().enumerate().all(|(i, &a)| a as usize == i + 1)
        })
        .collect();
    println!("messages not handled exactly as 1, 2, 3 then once: {irregular:?}");
    // What a closing member fetched and gave back is delivered again: at most the
    // server's unacknowledged limit (2 x prefetch) per close.
    let given_back_at_most = (CLOSES * 2 * PREFETCH) as u64;
    assert!(
        deliveries <= total_calls as u64 + given_back_at_most,
        "{deliveries} deliveries for {total_calls} handler calls and {CLOSES} closes"
    );
}

/// With a window of 1, the next message is asked for as soon as one arrives, so it is
/// on its way while that one is handled rather than asked for after its ack: while the
/// handler holds the first message, the server has sent the second one too (two
/// unacknowledged). Both are then handled once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_window_of_one_has_the_next_message_on_its_way() {
    let ch = unique_channel::<Numbered>("one-ahead");
    let config = RouterConfig::from_toml_str(
        "default_broker = \"nats\"\n[defaults]\nprefetch = 1\n\
         [brokers.nats]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nmax_age = \"1h\"\n",
    )
    .unwrap();
    let handled: Arc<Mutex<Vec<u64>>> = Arc::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let router = MessageRouter::builder(config)
        .handle(ch, {
            let (handled, gate) = (handled.clone(), gate.clone());
            handler_fn(move |m: Numbered, _cx: MessageContext| {
                let (handled, gate) = (handled.clone(), gate.clone());
                async move {
                    gate.acquire().await.unwrap().forget();
                    handled.lock().unwrap().push(m.seq);
                    Ok(())
                }
            })
        })
        .start()
        .await
        .unwrap();
    for seq in 0..2 {
        router.publish(ch, &Numbered { seq }).await.unwrap();
    }
    let consumer = jetstream_consumer(ch.name(), "default").await;
    wait_until_async(
        "the second message sent while the first is handled",
        Duration::from_secs(10),
        || {
            let mut consumer = consumer.clone();
            async move {
                let info = consumer.info().await;
                info.map(|i| i.num_ack_pending == 2).unwrap_or(false)
            }
        },
    )
    .await;
    assert!(handled.lock().unwrap().is_empty(), "the handler is held");
    gate.add_permits(2);
    wait_until("both handled", Duration::from_secs(10), || {
        handled.lock().unwrap().len() == 2
    })
    .await;
    router.shutdown().await.unwrap();
    assert_eq!(*handled.lock().unwrap(), vec![0, 1], "each once, in order");
}

/// Records the attempt number each call sees per message, fails every seventh message
/// twice before it succeeds, and counts successes.
fn attempt_recording_handler(
    calls: &Arc<Mutex<HashMap<u64, Vec<u32>>>>,
    succeeded: &Arc<AtomicUsize>,
) -> impl anybroker::MessageHandler<Numbered> {
    let (calls, succeeded) = (calls.clone(), succeeded.clone());
    handler_fn(move |m: Numbered, cx: MessageContext| {
        let made = {
            let mut calls = calls.lock().unwrap();
            let seen = calls.entry(m.seq).or_default();
            seen.push(cx.attempt());
            seen.len()
        };
        let fail = m.seq.is_multiple_of(7) && made < 3;
        let succeeded = succeeded.clone();
        async move {
            // Simulated work, so members hold messages in flight when they close.
            tokio::time::sleep(Duration::from_millis(2)).await;
            if fail {
                return Err(anybroker::HandlerError::retryable("not yet"));
            }
            succeeded.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    })
}

/// Core NATS, the server killed and started again: the client connects again by
/// itself and its subscription with it, so messages published once the server is
/// back arrive (fire-and-forget: what was published while it was down may not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_messages_after_a_server_restart_arrive() {
    let mut server = common::own_nats();
    let ch = unique_channel::<Numbered>("core-restart");
    let config = RouterConfig::from_toml_str(&format!(
        "default_broker = \"nats\"\n[defaults]\nretry = {{ attempts = 1 }}\n\
         [brokers.nats]\nkind = \"nats\"\nmode = \"core\"\nurl = \"nats://127.0.0.1:{}\"\n",
        server.port
    ))
    .unwrap();
    let seen: HandledCounts = Default::default();
    let router = MessageRouter::builder(config)
        .handle(ch, counting_handler(&seen, Duration::ZERO))
        .start()
        .await
        .unwrap();
    router.publish(ch, &Numbered { seq: 0 }).await.unwrap();
    wait_until(
        "handled before the restart",
        Duration::from_secs(10),
        || seen.lock().unwrap().contains_key(&0),
    )
    .await;
    common::restart(&mut server, "KILL").await;
    // Published until one sent after the restart comes back: the client is connected
    // and subscribed again.
    let next = AtomicUsize::new(1);
    let back = common::holds_within_async(Duration::from_secs(30), || async {
        let seq = next.fetch_add(1, Ordering::SeqCst) as u64;
        let _ = router.publish(ch, &Numbered { seq }).await;
        seen.lock().unwrap().keys().any(|&s| s >= 1)
    })
    .await;
    assert!(back, "no message published after the restart arrived");
    // From then on, every message arrives.
    let first = next.load(Ordering::SeqCst) as u64;
    for s in first..first + 100 {
        router.publish(ch, &Numbered { seq: s }).await.unwrap();
    }
    wait_until(
        "every later message handled",
        Duration::from_secs(20),
        || {
            let seen = seen.lock().unwrap();
            (first..first + 100).all(|s| seen.contains_key(&s))
        },
    )
    .await;
    router.shutdown().await.unwrap();
}
