//! What every conformance case uses: the backend under test, unique channels, a
//! recorder of what handlers saw, and waiting on conditions with a deadline.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anybroker::{Capabilities, Channel, MessageRouter, RouterBuilder, RouterConfig};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The payload of most cases.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TestMessage {
    pub seq: u64,
    pub text: String,
}

impl TestMessage {
    pub fn new(seq: u64) -> Self {
        TestMessage {
            seq,
            text: format!("message {seq}"),
        }
    }
}

/// Writes a payload to a channel around the library, with the broker's own client, as
/// a producer that does not use anybroker does.
pub type RawPublish = Arc<
    dyn Fn(String, Vec<u8>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// The broker taken away and given back during a case: the `[brokers.x]` body that
/// reaches it (a server of the case's own, or connections named for the case) and the
/// outage itself (a restart, or the connections cut), which owns that server.
pub struct Outage {
    pub table: String,
    pub cut: Box<dyn FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>>,
}

/// Makes a case's outage.
pub type OutageHook = Arc<dyn Fn() -> Outage + Send + Sync>;

/// The backend a case runs against: its `[brokers.<name>]` table and, for the embedded
/// broker, the one instance every router of the case shares.
pub struct Target {
    pub name: &'static str,
    broker_toml: String,
    memory: Option<anybroker::MemoryBroker>,
    /// Deliveries per message by default: 3, or 1 for modes that cannot retry.
    attempts: u32,
    raw_publish: Option<RawPublish>,
    outage: Option<OutageHook>,
    /// Routers reach the embedded broker through the test harness
    /// (`on_embedded_broker`, with a recorder attached) instead of `with_broker`.
    harness: bool,
}

impl Target {
    pub fn memory() -> Self {
        let broker = anybroker::MemoryBroker::default();
        let raw = broker.clone();
        Target {
            name: "memory",
            broker_toml: "kind = \"memory\"".into(),
            memory: Some(broker),
            attempts: 3,
            raw_publish: None,
            outage: None,
            harness: false,
        }
        .with_raw_publish(Arc::new(move |channel, payload| {
            let broker = raw.clone();
            Box::pin(async move {
                // The embedded broker has no client of its own: an envelope carrying
                // the bytes alone is the nearest thing.
                let broker = anybroker::Broker::from(broker);
                let spec = anybroker_brokers::ChannelSpec::new(channel.clone(), "default");
                broker
                    .open_channel("memory", &spec)
                    .await
                    .expect("open channel")
                    .publish(anybroker_brokers::Envelope::new(channel, payload))
                    .await
                    .expect("raw publish");
            })
        }))
    }

    /// The embedded broker as an application's tests reach it through the harness of
    /// the `testing` feature: the same promises, recorded.
    pub fn harness() -> Self {
        Target {
            name: "harness",
            harness: true,
            ..Target::memory()
        }
    }

    /// A broker reached by config alone (a server); `table` is its `[brokers.x]` body.
    #[allow(dead_code)]
    pub fn server(name: &'static str, table: &str) -> Self {
        Target {
            name,
            broker_toml: table.into(),
            memory: None,
            attempts: 3,
            raw_publish: None,
            outage: None,
            harness: false,
        }
    }

    /// Gives the target a way to write payloads around the library (`publish_raw`).
    #[allow(dead_code)]
    pub fn with_raw_publish(mut self, publish: RawPublish) -> Self {
        self.raw_publish = Some(publish);
        self
    }

    /// Gives the target a way to take its broker away mid-case (`outage`).
    #[allow(dead_code)]
    pub fn with_outage(mut self, hook: OutageHook) -> Self {
        self.outage = Some(hook);
        self
    }

    /// Whether the target can take its broker away.
    pub fn has_outage(&self) -> bool {
        self.outage.is_some()
    }

    /// A new outage for a case: its own server or connections.
    pub fn outage(&self) -> Outage {
        let hook = self
            .outage
            .as_ref()
            .unwrap_or_else(|| panic!("{}: the target has no outage hook", self.name));
        hook()
    }

    /// Writes `payload` to `channel` around the library.
    pub async fn publish_raw(&self, channel: &str, payload: &[u8]) {
        let publish = self
            .raw_publish
            .as_ref()
            .unwrap_or_else(|| panic!("{}: the target has no raw publish hook", self.name));
        publish(channel.to_string(), payload.to_vec()).await;
    }

    /// Kafka on librdkafka's mock cluster: an in-process Kafka-protocol cluster of three
    /// brokers, one per test process (nextest runs each case in its own), with the
    /// settings the mock needs (see `kafka_mock_table`).
    #[cfg(feature = "kafka")]
    pub fn kafka_mock() -> Self {
        static SERVERS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let servers = SERVERS.get_or_init(|| {
            let cluster = rdkafka::mocking::MockCluster::new(3).expect("mock cluster starts");
            let servers = cluster.bootstrap_servers();
            // Lives as long as the test process.
            std::mem::forget(cluster);
            servers
        });
        Target::server("kafka-mock", &crate::common::kafka_mock_table(servers))
            .with_raw_publish(crate::raw::kafka(servers.clone()))
    }

    /// A fire-and-forget mode: channels default to one attempt, since it cannot retry.
    #[allow(dead_code)]
    pub fn without_retry(mut self) -> Self {
        self.attempts = 1;
        self
    }

    /// What the backend declares, asked through a router.
    pub async fn capabilities(&self) -> Capabilities {
        let router = self.router("").start().await.expect("router starts");
        let caps = router
            .capabilities(Channel::<()>::new("test.capabilities"))
            .await
            .expect("capabilities");
        router.shutdown().await.expect("shutdown");
        caps
    }

    /// A router on this backend. `channels_toml` adds `[channels."..."]` tables;
    /// every channel's default retry is 3 attempts with a 50 ms backoff.
    pub fn router(&self, channels_toml: &str) -> RouterBuilder {
        let builder = MessageRouter::builder(self.config(&self.broker_toml, channels_toml));
        match &self.memory {
            Some(m) if self.harness => builder
                .on_embedded_broker(m)
                .recording(&anybroker::testing::Recorder::new()),
            Some(m) => builder.with_broker("target", m.clone()),
            None => builder,
        }
    }

    /// A connection to this target's broker, for routers to share (`with_broker`).
    pub async fn connect(&self) -> anybroker::Broker {
        match &self.memory {
            Some(m) => m.clone().into(),
            None => {
                let config = self.config(&self.broker_toml, "");
                anybroker::Broker::connect("target", &config.brokers["target"])
                    .await
                    .expect("broker connects")
            }
        }
    }

    /// A router that connects a broker of its own (for the embedded broker too, a new
    /// instance), so its shutdown closes the broker.
    pub fn own_router(&self) -> RouterBuilder {
        MessageRouter::builder(self.config(&self.broker_toml, ""))
    }

    /// The config of a router on this backend, reaching it through `broker_toml`.
    pub fn config(&self, broker_toml: &str, channels_toml: &str) -> RouterConfig {
        let text = format!(
            "default_broker = \"target\"\n\
             [defaults]\n\
             retry = {{ attempts = {}, initial = \"50ms\", multiplier = 2.0, max = \"1s\" }}\n\
             [brokers.target]\n{}\n{}",
            self.attempts, broker_toml, channels_toml
        );
        RouterConfig::from_toml_str(&text).expect("test config is valid")
    }
}

pub use crate::common::{unique_channel, wait_until, wait_until_async};

/// A `[channels."<name>"]` table with the given body.
pub fn channel_toml<M>(channel: Channel<M>, body: &str) -> String {
    format!("[channels.\"{}\"]\n{body}\n", channel.name())
}

/// One handler call as seen by the handler.
#[derive(Debug, Clone)]
pub struct Seen {
    pub seq: u64,
    pub attempt: u32,
    pub key: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub id: String,
    pub at: Instant,
    pub handler: usize,
}

/// Collects handler calls.
#[derive(Clone, Default)]
pub struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    pub fn record(&self, seen: Seen) {
        self.seen.lock().unwrap().push(seen);
    }

    pub fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Calls per seq.
    pub fn counts(&self) -> HashMap<u64, usize> {
        let mut m = HashMap::new();
        for s in self.seen.lock().unwrap().iter() {
            *m.entry(s.seq).or_insert(0) += 1;
        }
        m
    }

    /// Distinct seqs seen.
    pub fn distinct(&self) -> usize {
        self.counts().len()
    }
}

/// Waits until `channel` holds exactly `n` dead letters (`what` names them in the
/// timeout message) and returns them.
pub async fn wait_for_dead_letters<M>(
    router: &MessageRouter,
    channel: Channel<M>,
    n: u64,
    what: &str,
) -> Vec<anybroker::DeadLetterRecord<M>> {
    wait_until_async(what, LONG, || {
        let router = router.clone();
        async move { router.dead_letters(channel, 10_000).await.unwrap().len() as u64 == n }
    })
    .await;
    router.dead_letters(channel, 10_000).await.unwrap()
}

/// How long counting cases may take on a slow shared machine.
pub const LONG: Duration = Duration::from_secs(60);

/// States the capabilities a case's promise needs. A case needing one the backend
/// lacks is emitted ignored (`conformance_cases!`), so reaching this without it means
/// the module's `lacks` list is out of date.
macro_rules! require {
    ($t:expr, $($flag:ident)&&+) => {
        let caps = $t.capabilities().await;
        assert!(
            $(caps.$flag)&&+,
            "{}: declares no {}: name it in the module's `lacks` list",
            $t.name,
            stringify!($($flag)&&+)
        );
    };
}
