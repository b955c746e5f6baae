//! `MessageRouter`: routes each channel to its configured broker, publishes, and runs
//! the registered handlers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anybroker_brokers::{
    Backlog, Broker, BrokerKind, Capabilities, ChannelSpec, DeadLetterAction, DeadLetterSelector,
    Envelope, Error, ErrorKind, Headers, OpenChannel, Result, RetryPolicy, SubscribeOptions,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, OnceCell};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::channel::{Channel, ChannelSet, Message};
use crate::config::{
    channel_pattern_prefix, check_channel_settings, normalize_channel, RouterConfig,
};
use crate::consumer::{CallObserver, ConsumerSpec, ObservedCall, SpawnConsumer, TypedHandler};
use crate::dead_letter::DeadLetterRecord;
use crate::handled_ids::HandledIds;
use crate::handler::MessageHandler;
use crate::health::{BrokerHealth, BrokerStatus, ConnectionState, Health};
use crate::leftovers::{self, Leftover};
use crate::message_metrics::PublishMetrics;
use crate::moving::MoveStatus;
use crate::presence::Presences;

/// Longest a health check waits for one broker.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Per-call publish settings: id, key, headers, delay, in any combination.
///
/// ```
/// # use std::time::Duration;
/// let options = anybroker::PublishOptions::new()
///     .id("order-1042-created")
///     .key("sensor-7")
///     .header("tenant", "acme")
///     .delay(Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PublishOptions {
    /// The message id; default: a new unique one. Backends that deduplicate by id
    /// (JetStream) store a second message with the same id once.
    pub id: Option<Arc<str>>,
    /// Ordering key: same-key messages are handled in publish order within a group.
    pub key: Option<Arc<str>>,
    /// Headers to send with the message.
    pub headers: Headers,
    /// Deliver no earlier than this from now.
    pub delay: Option<Duration>,
}

impl PublishOptions {
    /// No key, no headers, no delay.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the message id: 1 to 255 bytes, no control characters.
    pub fn id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.id = Some(id.into());
        self
    }
    /// Sets the ordering key.
    pub fn key(mut self, key: impl Into<Arc<str>>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
    /// Sets the delay.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

/// Per-registration handler settings; each one left unset comes from the channel's
/// config, and each one set is checked as config is.
///
/// ```
/// # use std::time::Duration;
/// use anybroker::{HandlerOptions, RetryPolicy};
/// let options = HandlerOptions::new()
///     .group("audit")
///     .consumers(2)
///     .prefetch(16)
///     .retry(RetryPolicy::new(5).initial(Duration::from_millis(100)));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct HandlerOptions {
    /// Consumer group; default: the channel's `group` setting.
    pub group: Option<String>,
    /// Consumers (members of the group) to run; default: the channel's setting.
    pub consumers: Option<usize>,
    /// Retry policy; default: the channel's. The members of one group share one
    /// policy: two registrations in one group with different policies fail `start`.
    pub retry: Option<RetryPolicy>,
    /// Messages each consumer has in flight (fetched, being handled or settled), and
    /// so handlers running at once per consumer; default: the channel's `prefetch`.
    pub prefetch: Option<usize>,
}

impl HandlerOptions {
    /// Defaults from config.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the consumer group.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }
    /// Sets how many consumers run this handler (at least 1).
    pub fn consumers(mut self, consumers: usize) -> Self {
        self.consumers = Some(consumers);
        self
    }
    /// Sets the retry policy. A fire-and-forget mode refuses more than one attempt at
    /// `start`, as it does in config.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }
    /// Sets the in-flight window per consumer (at least 1).
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = Some(prefetch);
        self
    }
}

struct Registration {
    channel: &'static str,
    options: HandlerOptions,
    handler: Arc<dyn SpawnConsumer>,
    /// Answers requests instead of consuming published messages.
    serves_requests: bool,
}

impl Registration {
    fn group<'a>(&'a self, config: &'a RouterConfig) -> &'a str {
        self.options
            .group
            .as_deref()
            .unwrap_or_else(|| config.group_for(self.channel))
    }
}

/// A router being set up: add handlers, then [`start`](RouterBuilder::start).
pub struct RouterBuilder {
    config: RouterConfig,
    injected: HashMap<String, Broker>,
    registrations: Vec<Registration>,
    declared: Option<&'static [&'static str]>,
    observers: Option<Observers>,
}

impl std::fmt::Debug for RouterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterBuilder")
            .field("config", &self.config)
            .field("handlers", &self.registrations.len())
            .finish_non_exhaustive()
    }
}

impl RouterBuilder {
    /// Registers `handler` for `channel` with the channel's configured group.
    pub fn handle<M: Message, H: MessageHandler<M>>(self, channel: Channel<M>, handler: H) -> Self {
        self.handle_with(channel, handler, HandlerOptions::default())
    }

    /// Registers `handler` for `channel` with explicit options (group, consumers).
    pub fn handle_with<M: Message, H: MessageHandler<M>>(
        mut self,
        channel: Channel<M>,
        handler: H,
        options: HandlerOptions,
    ) -> Self {
        self.registrations.push(Registration {
            channel: channel.name(),
            options,
            handler: Arc::new(TypedHandler {
                handler,
                _message: std::marker::PhantomData,
            }),
            serves_requests: false,
        });
        self
    }

    /// Answers requests on `channel` (see [`MessageRouter::request`]) with what
    /// `responder` returns; an error is sent back to the requester as the reply.
    /// Backends without request/reply fail `start` with `Unsupported`.
    ///
    /// ```no_run
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Hello { name: String }
    /// # fn f(builder: anybroker::RouterBuilder) -> anybroker::RouterBuilder {
    /// const HELLO: anybroker::Channel<Hello> = anybroker::Channel::new("hello");
    /// builder.serve(HELLO, |hello: Hello, _cx| async move {
    ///     Ok::<_, anybroker::HandlerError>(format!("hello, {}", hello.name))
    /// })
    /// # }
    /// ```
    pub fn serve<M, R, F, Fut>(mut self, channel: Channel<M>, responder: F) -> Self
    where
        M: Message,
        R: Serialize + Send + 'static,
        F: Fn(M, crate::MessageContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<R, crate::HandlerError>>
            + Send
            + 'static,
    {
        self.registrations.push(Registration {
            channel: channel.name(),
            options: HandlerOptions::default(),
            handler: Arc::new(crate::consumer::Responder {
                respond: responder,
                _types: std::marker::PhantomData,
            }),
            serves_requests: true,
        });
        self
    }

    /// Declares the application's channels, so `start` checks that each has a route
    /// and that the config names no channel the application does not have.
    pub fn channels<S: ChannelSet>(mut self) -> Self {
        self.declared = Some(S::NAMES);
        self
    }

    /// Uses an existing broker instance for the broker named `name` instead of
    /// connecting a new one (e.g. one embedded broker shared by several routers).
    /// The router does not shut an injected broker down.
    pub fn with_broker(mut self, name: impl Into<String>, broker: impl Into<Broker>) -> Self {
        self.injected.insert(name.into(), broker.into());
        self
    }

    /// Carries every configured broker's channels on `broker`, an embedded broker,
    /// whatever the config says: the application's own wiring (channels, handlers,
    /// retry policies, groups) runs in the test's process with the real retry, delay
    /// and dead-letter semantics, on tokio's paused clock if the test pauses it.
    /// Routers given the same `broker` share it (a publishing and a consuming
    /// service). The embedded broker keeps every promise, so a fire-and-forget mode's
    /// limits are not reproduced. (The config loads as in production: a build with the
    /// features of the backends it routes to.)
    ///
    /// ```no_run
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// use anybroker::{MemoryBroker, MessageRouter, RouterConfig};
    /// let production = RouterConfig::from_toml_str(
    ///     "default_broker = \"kafka\"\n[brokers.kafka]\nkind = \"kafka\"\nbootstrap_servers = \"kafka-1:9092\"\n",
    /// ).unwrap();
    /// let broker = MemoryBroker::default();
    /// let router = MessageRouter::builder(production)
    ///     .on_embedded_broker(&broker)
    ///     .start()
    ///     .await
    ///     .unwrap();
    /// # router.shutdown().await.unwrap();
    /// # });
    /// ```
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn on_embedded_broker(mut self, broker: &anybroker_brokers::memory::MemoryBroker) -> Self {
        for (name, config) in self.config.brokers.iter_mut() {
            *config = anybroker_brokers::BrokerConfig::Memory(Default::default());
            self.injected.insert(name.clone(), broker.clone().into());
        }
        self
    }

    /// Records every handler call of this router (message, attempt, virtual time,
    /// outcome) and every message published through it, in `recorder`.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn recording(mut self, recorder: &crate::testing::Recorder) -> Self {
        let (calls, publishes) = (recorder.clone(), recorder.clone());
        self.observers = Some(Observers {
            calls: Arc::new(move |call| calls.record_call(call)),
            publishes: Arc::new(move |envelope| publishes.record_publish(envelope)),
        });
        self
    }

    /// Checks routes, connects the brokers the routes use and starts every handler.
    pub async fn start(self) -> Result<MessageRouter> {
        let config = self.config;
        // A loaded config was checked; one built in code is checked here.
        config.validate()?;
        if let Some(names) = self.declared {
            for name in names {
                config.broker_for(name)?;
            }
            // A pattern gives settings to channels named at run time, which no
            // declared set lists.
            let own_keys = config
                .channels
                .keys()
                .filter(|k| channel_pattern_prefix(k).is_none());
            for key in own_keys {
                let k = normalize_channel(key);
                if !names.iter().any(|n| normalize_channel(n) == k) {
                    return Err(Error::config(format!(
                        "channels.{key:?}: not a channel of this application; expected one of: {}",
                        names.join(", ")
                    )));
                }
            }
        }
        let mut group_policies: HashMap<(String, String), RetryPolicy> = HashMap::new();
        for r in &self.registrations {
            config.broker_for(r.channel)?;
            let key = format!("handler options of {:?}", r.channel);
            check_channel_settings(
                &key,
                r.options.retry.as_ref(),
                r.options.prefetch,
                r.options.consumers,
            )?;
            if r.serves_requests {
                continue;
            }
            let group = r.group(&config).to_string();
            let policy = r
                .options
                .retry
                .unwrap_or_else(|| config.retry_for(r.channel));
            let channel = normalize_channel(r.channel);
            if let Some(other) = group_policies.insert((channel, group.clone()), policy) {
                if other != policy {
                    return Err(Error::config(format!(
                        "{key}: group {group:?} already has a handler with another retry policy ({other:?}, this one {policy:?}); the members of a group share one policy: give this handler its own group or the same policy"
                    ))
                    .with_channel(r.channel));
                }
            }
        }

        let mut slots = HashMap::new();
        for name in config.brokers.keys() {
            let slot = BrokerSlot {
                cell: OnceCell::new(),
                owned: !self.injected.contains_key(name),
                status: Arc::default(),
            };
            if let Some(b) = self.injected.get(name) {
                let _ = slot.cell.set(b.clone());
            }
            slots.insert(name.clone(), slot);
        }
        for (name, _) in self.injected.iter() {
            if !slots.contains_key(name) {
                return Err(Error::config(format!(
                    "with_broker({name:?}): no broker of that name under [brokers]"
                )));
            }
        }
        let mut consumed: Vec<(String, String)> = self
            .registrations
            .iter()
            .filter(|r| !r.serves_requests)
            .map(|r| (r.channel.to_string(), r.group(&config).to_string()))
            .collect();
        consumed.sort();
        consumed.dedup();
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(RouterInner {
            consumed,
            config,
            slots,
            routes: RwLock::new(Default::default()),
            routes_via: RwLock::new(Default::default()),
            consumers: Mutex::new(Vec::new()),
            observers: self.observers,
            stop,
            presences: Presences::default(),
        });
        let router = MessageRouter { inner };

        // Connect every routed broker now, so an unreachable one fails start.
        let mut routed: Vec<String> = router.inner.config.default_broker.iter().cloned().collect();
        routed.extend(
            router
                .inner
                .config
                .channels
                .values()
                .filter_map(|c| c.broker.clone()),
        );
        routed.sort();
        routed.dedup();
        for name in &routed {
            router.inner.broker(name).await?;
        }
        // Channels whose own table lists groups to provision are opened now, which
        // provisions them; one a pattern matches is provisioned when first used. A
        // key written another way (`alarm_to_log`) opens the channel's own name when
        // the application declared or handles it.
        let known: Vec<&str> = self
            .declared
            .unwrap_or_default()
            .iter()
            .copied()
            .chain(self.registrations.iter().map(|r| r.channel))
            .collect();
        let to_provision: Vec<&str> = router
            .inner
            .config
            .channels
            .iter()
            .filter(|(key, c)| {
                channel_pattern_prefix(key).is_none() && !c.provision_groups.is_empty()
            })
            .map(|(key, _)| {
                let k = normalize_channel(key);
                known
                    .iter()
                    .copied()
                    .find(|n| normalize_channel(n) == k)
                    .unwrap_or(key)
            })
            .collect();
        for channel in to_provision {
            router.inner.route(channel).await?;
        }

        for r in self.registrations {
            router.start_consumers(r).await?;
        }
        // Messages of a handled channel left on a broker it is no longer consumed from
        // are a warning, looked for beside the running router.
        if !router.inner.consumed.is_empty() {
            let look =
                warn_of_leftovers(Arc::downgrade(&router.inner), router.inner.stop.subscribe());
            router.inner.keep(tokio::spawn(look));
        }
        Ok(router)
    }
}

struct BrokerSlot {
    cell: OnceCell<Broker>,
    owned: bool,
    status: Arc<BrokerStatus>,
}

/// Where one channel goes: the channel, opened on its broker, with its publish
/// counters (feature `metrics`).
struct Route {
    open: OpenChannel,
    metrics: PublishMetrics,
    /// Its broker's health record, told of failed publishes.
    status: Arc<BrokerStatus>,
}

impl Route {
    fn new(open: OpenChannel, status: Arc<BrokerStatus>) -> Self {
        let metrics = PublishMetrics::new(open.name(), open.broker_name());
        Route {
            open,
            metrics,
            status,
        }
    }

    /// Counts a publish and keeps its error, if any, for the broker's health.
    #[inline(always)]
    fn published(&self, result: &Result<()>) {
        self.metrics.record(result);
        if let Err(e) = result {
            self.status.failed(e);
        }
    }
}

impl std::ops::Deref for Route {
    type Target = OpenChannel;

    fn deref(&self) -> &OpenChannel {
        &self.open
    }
}

/// Opened channels by name.
type ChannelRoutes = rustc_hash::FxHashMap<Arc<str>, Arc<Route>>;

struct RouterInner {
    config: RouterConfig,
    /// The channels handlers consume, with their groups.
    consumed: Vec<(String, String)>,
    slots: HashMap<String, BrokerSlot>,
    /// Each channel opened on its configured broker.
    routes: RwLock<ChannelRoutes>,
    /// Channels opened on a broker chosen per call (`publish_via`), by broker, then
    /// channel: both looked up by `&str`, so a repeated call allocates nothing.
    routes_via: RwLock<rustc_hash::FxHashMap<String, ChannelRoutes>>,
    consumers: Mutex<Vec<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
    observers: Option<Observers>,
    /// Its announcements of the channels it opened on their configured broker.
    presences: Presences,
}

#[cold]
#[inline(never)]
fn observe_publish_to(observers: &Observers, envelope: &Envelope) {
    (observers.publishes)(envelope);
}

/// Who sees the router's handler calls and publishes (a test's recorder).
#[derive(Clone)]
struct Observers {
    calls: Arc<dyn Fn(ObservedCall) + Send + Sync>,
    publishes: Arc<dyn Fn(&Envelope) + Send + Sync>,
}

impl RouterInner {
    /// Keeps a task of the router's (a consumer, a sampler, a move watcher), for
    /// `shutdown` to wait for once it has asked them to stop.
    fn keep(&self, task: JoinHandle<()>) {
        self.consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }

    /// What the broker `name` holds of the handled channels it does not carry (neither
    /// `broker` nor `moving_from` of the channel), connected for the look if the router
    /// has not connected it.
    async fn leftovers_on(&self, name: &str) -> Result<Vec<Leftover>> {
        let config = &self.config;
        let consumed: Vec<(String, String)> = self
            .consumed
            .iter()
            .filter(|(channel, _)| {
                config.broker_for(channel).ok() != Some(name)
                    && config.moving_from_for(channel) != Some(name)
            })
            .cloned()
            .collect();
        if consumed.is_empty() || !leftovers::worth_asking(&config.brokers[name]) {
            return Ok(Vec::new());
        }
        let look = async {
            match self.slots[name].cell.get() {
                Some(broker) => leftovers::held_on(broker, name, &consumed).await,
                None => {
                    let broker = Broker::connect(name, &config.brokers[name]).await?;
                    let found = leftovers::held_on(&broker, name, &consumed).await;
                    let _ = broker.shutdown().await;
                    found
                }
            }
        };
        tokio::time::timeout(leftovers::LOOK_WITHIN, look)
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "looking for messages left behind took over {:?}",
                        leftovers::LOOK_WITHIN
                    ),
                )
                .with_broker(name))
            })
    }

    /// How many routers announced `channel` on the broker `name` (instances using it
    /// there); `None` where that broker cannot tell.
    async fn announced_on(&self, name: &str, channel: &str) -> Result<Option<u64>> {
        let spec = ChannelSpec::new(channel, self.config.group_for(channel));
        match self.broker(name).await?.announced(&spec).await {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == ErrorKind::Unsupported => Ok(None),
            Err(e) => Err(e.with_broker(name).with_channel(channel)),
        }
    }

    async fn broker(&self, name: &str) -> Result<&Broker> {
        let slot = self
            .slots
            .get(name)
            .ok_or_else(|| Error::config(format!("unknown broker {name:?}")).with_broker(name))?;
        let config = &self.config.brokers[name];
        slot.cell
            .get_or_try_init(|| Broker::connect(name, config))
            .await
    }

    /// The route of `channel`. The cached path stays small and synchronous; the first
    /// use of a channel (which may connect a broker) is boxed, so every publish
    /// future does not carry the size of a broker's connect future.
    async fn route(&self, channel: &str) -> Result<Arc<Route>> {
        if let Some(r) = self.cached_route(channel) {
            return Ok(r);
        }
        Box::pin(self.new_route(channel)).await
    }

    fn cached_route(&self, channel: &str) -> Option<Arc<Route>> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(channel)
            .cloned()
    }

    async fn new_route(&self, channel: &str) -> Result<Arc<Route>> {
        let name = self.config.broker_for(channel)?;
        let route = Arc::new(Route::new(
            self.open(name, channel).await?,
            self.slots[name].status.clone(),
        ));
        let known = self
            .routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(route.name().clone(), route.clone());
        // The broker is connected: the route was just opened on it.
        if let (None, Some(broker)) = (known, self.slots[name].cell.get()) {
            // In the background, unless the broker answers at once (the embedded one):
            // the first publish does not wait for a round trip.
            if let Some(announcing) = self.presences.announce_now(broker, route.name()) {
                let announcing = announcing.announce(
                    broker.clone(),
                    ChannelSpec::new(channel, self.config.group_for(channel)),
                    self.stop.subscribe(),
                );
                self.keep(tokio::spawn(announcing));
            }
        }
        Ok(route)
    }

    /// `channel` opened on the broker named `broker`, for calls that choose the broker.
    async fn route_via(&self, broker: &str, channel: &str) -> Result<Arc<Route>> {
        if let Some(r) = self
            .routes_via
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(broker)
            .and_then(|routes| routes.get(channel))
        {
            return Ok(r.clone());
        }
        let route = Arc::new(Route::new(
            Box::pin(self.open(broker, channel)).await?,
            self.slots[broker].status.clone(),
        ));
        self.routes_via
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(broker.to_string())
            .or_default()
            .insert(route.name().clone(), route.clone());
        Ok(route)
    }

    /// Opens `channel` on `broker` and provisions the groups its config lists.
    async fn open(&self, broker: &str, channel: &str) -> Result<OpenChannel> {
        let spec = ChannelSpec::new(channel, self.config.group_for(channel));
        let open = self
            .broker(broker)
            .await?
            .open_channel(broker, &spec)
            .await?;
        for group in self.config.provision_groups_for(channel) {
            open.provision(&self.group_options(channel, group)).await?;
        }
        Ok(open)
    }

    /// What a group of `channel` is subscribed or provisioned with, from config.
    fn group_options(&self, channel: &str, group: &str) -> SubscribeOptions {
        SubscribeOptions::new(group.to_string())
            .retry(self.config.retry_for(channel))
            .prefetch(self.config.prefetch_for(channel))
    }
}

/// A running router. Cheap to clone; all clones share brokers and handlers. Dropping
/// the last clone stops the handlers; call [`shutdown`](MessageRouter::shutdown) to
/// drain them first.
#[derive(Clone)]
pub struct MessageRouter {
    inner: Arc<RouterInner>,
}

impl std::fmt::Debug for MessageRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageRouter")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl MessageRouter {
    /// Loads `path` plus `ANYBROKER_*` environment overrides; add handlers, then `start`.
    pub fn from_config(path: impl AsRef<Path>) -> Result<RouterBuilder> {
        Ok(Self::builder(RouterConfig::load(path)?))
    }

    /// A router set up from an already loaded config.
    pub fn builder(config: RouterConfig) -> RouterBuilder {
        RouterBuilder {
            config,
            injected: HashMap::new(),
            registrations: Vec::new(),
            declared: None,
            observers: None,
        }
    }

    /// Hands a message about to be published to the observers, if any: a test's
    /// path, kept out of line so publishing without observers stays as it was.
    #[inline(always)]
    fn observe_publish(&self, envelope: &Envelope) {
        if let Some(observers) = &self.inner.observers {
            observe_publish_to(observers, envelope);
        }
    }

    /// The config the router runs with.
    pub fn config(&self) -> &RouterConfig {
        &self.inner.config
    }

    /// Per configured broker: whether it can be reached now (its client's connection
    /// state, or one round trip within 2 s), the last error the router met on it, and
    /// the consumers running on it. Cheap enough for a readiness probe; a broker not
    /// used yet is not connected by asking.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let config = anybroker::RouterConfig::from_toml_str(
    ///     "default_broker = \"memory\"\n[brokers.memory]\nkind = \"memory\"",
    /// ).unwrap();
    /// let router = anybroker::MessageRouter::builder(config).start().await.unwrap();
    /// let health = router.health().await;
    /// assert!(health.is_ready());
    /// assert_eq!(health.brokers[0].connection, anybroker::ConnectionState::Connected);
    /// # });
    /// ```
    pub async fn health(&self) -> Health {
        let mut names: Vec<&String> = self.inner.slots.keys().collect();
        names.sort();
        let checks = names.into_iter().map(|name| async move {
            let slot = &self.inner.slots[name];
            let connection = match slot.cell.get() {
                None => ConnectionState::NotConnected,
                Some(broker) => {
                    match tokio::time::timeout(HEALTH_CHECK_TIMEOUT, broker.check_connection())
                        .await
                    {
                        Ok(Ok(())) => ConnectionState::Connected,
                        Ok(Err(e)) => ConnectionState::Unreachable(e.to_string()),
                        Err(_) => ConnectionState::Unreachable(format!(
                            "no answer within {HEALTH_CHECK_TIMEOUT:?}"
                        )),
                    }
                }
            };
            BrokerHealth {
                name: name.clone(),
                kind: self.inner.config.brokers[name].kind(),
                connection,
                last_error: slot.status.last_error(),
                consumers: slot.status.consumers(),
            }
        });
        Health {
            brokers: futures::future::join_all(checks).await,
        }
    }

    /// Publishes on the channel's configured broker; returns once the broker accepted it.
    pub async fn publish<M: Serialize>(&self, channel: Channel<M>, message: &M) -> Result<()> {
        // The hot path, kept flat: its future holds little more than the broker's own,
        // and the envelope goes straight into it (a test's observers take the same path
        // as `publish_with`, so borrowing the envelope here costs no copy).
        // So does a publish a subscriber wants a span of: the hot path stays free of
        // the span's wrapper when none does.
        if self.inner.observers.is_some() || tracing::span_enabled!(tracing::Level::INFO) {
            return Box::pin(self.publish_with(channel, message, PublishOptions::new())).await;
        }
        // The cached route looked up without a future of `route`'s made.
        let route = match self.inner.cached_route(channel.name()) {
            Some(route) => route,
            None => self.inner.route(channel.name()).await?,
        };
        let envelope = build_envelope(route.name(), message)?;
        let result = match route.publish_at_once(envelope) {
            None => Ok(()),
            Some(envelope) => route.publish(envelope).await,
        };
        route.published(&result);
        result
    }

    /// Publishes `messages` at once, and returns once the broker answered for each: one
    /// result per message, in their order. The broker takes them in as few requests as
    /// it allows (Redis: one pipeline; JetStream, RabbitMQ, Kafka: every publish in
    /// flight together on the connection), so a batch costs about one round trip where
    /// as many `publish` calls one after the other cost one each. The outer error is
    /// the channel's (it cannot be opened): then nothing was published.
    ///
    /// A message that failed can be published again; one that failed because the
    /// connection did may have been written, so publishing it again can make a copy (at
    /// least once, as a retried `publish`).
    pub async fn publish_batch<M: Serialize>(
        &self,
        channel: Channel<M>,
        messages: &[M],
    ) -> Result<Vec<Result<()>>> {
        let route = self.inner.route(channel.name()).await?;
        let mut results: Vec<Result<()>> = Vec::with_capacity(messages.len());
        let mut envelopes = Vec::with_capacity(messages.len());
        for message in messages {
            match build_envelope(route.name(), message) {
                Ok(envelope) => {
                    self.observe_publish(&envelope);
                    envelopes.push(envelope);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        let mut published = if tracing::span_enabled!(tracing::Level::INFO) {
            // A span per message, as `publish` makes.
            futures::future::join_all(envelopes.into_iter().map(|e| send(&route, e, None))).await
        } else {
            let published = route.publish_batch(envelopes).await;
            for result in &published {
                route.published(result);
            }
            published
        }
        .into_iter();
        // The encoded ones take their broker's answer, in order.
        for result in results.iter_mut().filter(|r| r.is_ok()) {
            if let Some(answer) = published.next() {
                *result = answer;
            }
        }
        Ok(results)
    }

    /// Publishes with a key, headers or a delay.
    pub async fn publish_with<M: Serialize>(
        &self,
        channel: Channel<M>,
        message: &M,
        options: PublishOptions,
    ) -> Result<()> {
        let route = self.inner.route(channel.name()).await?;
        let mut envelope = build_envelope(route.name(), message)?;
        envelope.key = options.key;
        envelope.headers = options.headers;
        if let Some(id) = options.id {
            check_message_id(&id, channel.name())?;
            envelope.id = id.into();
        }
        self.observe_publish(&envelope);
        send(&route, envelope, options.delay).await
    }

    /// Publishes so the message is delivered no earlier than `delay` from now.
    pub async fn publish_delayed<M: Serialize>(
        &self,
        channel: Channel<M>,
        message: &M,
        delay: Duration,
    ) -> Result<()> {
        self.publish_with(channel, message, PublishOptions::new().delay(delay))
            .await
    }

    /// Publishes on a broker of `kind` chosen explicitly instead of the channel's route
    /// (the channel's own broker if it has that kind, else the first of that kind).
    pub async fn publish_via<M: Serialize>(
        &self,
        kind: BrokerKind,
        channel: Channel<M>,
        message: &M,
    ) -> Result<()> {
        let name = self.inner.config.broker_of_kind(kind, channel.name())?;
        let route = self.inner.route_via(name, channel.name()).await?;
        let envelope = build_envelope(route.name(), message)?;
        self.observe_publish(&envelope);
        send(&route, envelope, None).await
    }

    /// Publishes a ready-made envelope on its channel's broker, payload untouched
    /// (bridging, replaying, tests).
    pub async fn publish_envelope(&self, envelope: Envelope) -> Result<()> {
        check_message_id(&envelope.id, &envelope.channel)?;
        let route = self.inner.route(&envelope.channel).await?;
        self.observe_publish(&envelope);
        send(&route, envelope, None).await
    }

    /// Sends a request on `channel` and decodes the reply, waiting up to `timeout`.
    /// Backends without request/reply return `Unsupported`.
    pub async fn request<M: Serialize, R: DeserializeOwned>(
        &self,
        channel: Channel<M>,
        message: &M,
        timeout: Duration,
    ) -> Result<R> {
        let route = self.inner.route(channel.name()).await?;
        let envelope = build_envelope(route.name(), message)?;
        let reply = route.request(envelope, timeout).await?;
        if let Some(error) = reply.headers.get(anybroker_brokers::header::REPLY_ERROR) {
            return Err(
                Error::new(ErrorKind::Broker, format!("the responder failed: {error}"))
                    .with_broker(&**route.broker_name())
                    .with_broker_kind(route.kind())
                    .with_channel(channel.name()),
            );
        }
        crate::codec::decode(&reply).map_err(|e| {
            Error::new(
                ErrorKind::Decode,
                format!("reply is not a valid {}", std::any::type_name::<R>()),
            )
            .with_channel(channel.name())
            .with_source(e)
        })
    }

    /// What the broker carrying `channel` guarantees.
    pub async fn capabilities<M>(&self, channel: Channel<M>) -> Result<Capabilities> {
        Ok(self.inner.route(channel.name()).await?.capabilities())
    }

    /// The name and kind of the broker carrying `channel`.
    pub async fn broker_of<M>(&self, channel: Channel<M>) -> Result<(String, BrokerKind)> {
        let route = self.inner.route(channel.name()).await?;
        Ok((route.broker_name().to_string(), route.kind()))
    }

    /// Creates what each of `groups` needs on `channel`'s broker to receive what is
    /// published from now on, before its first member subscribes: a RabbitMQ queue, a
    /// JetStream durable consumer, a Redis Streams group, Kafka topics (and, with
    /// `auto_offset_reset = "latest"`, the group's start offsets), an embedded-broker
    /// group. Idempotent: an existing group keeps its position. Fire-and-forget modes
    /// keep nothing for a group and return `Unsupported`. See
    /// [`Capabilities::new_group_start`] for what a group that was not provisioned
    /// receives.
    ///
    /// On the embedded broker a provisioned group with no member holds the channel's
    /// messages until the channel reaches `max_backlog`; publishers then wait up to
    /// `publish_timeout` for room and fail with `Timeout` if none is made.
    pub async fn provision<M>(&self, channel: Channel<M>, groups: &[&str]) -> Result<()> {
        let route = self.inner.route(channel.name()).await?;
        for group in groups {
            route
                .provision(&self.inner.group_options(channel.name(), group))
                .await?;
        }
        Ok(())
    }

    /// How far `group` is behind on `channel`: messages not yet handed to a member, and
    /// those being handled where the broker tells it. With the feature `metrics`, each
    /// handler's group is also sampled every 10 s into the `anybroker_backlog` gauges.
    /// Modes that keep nothing for a group (Redis pub/sub, core NATS) answer
    /// `Unsupported`.
    pub async fn backlog<M>(&self, channel: Channel<M>, group: &str) -> Result<Backlog> {
        self.inner.route(channel.name()).await?.backlog(group).await
    }

    /// Messages of the channels this router handles on configured brokers that do not
    /// carry them (neither the channel's `broker` nor its `moving_from`), per group:
    /// what a move leaves behind when `moving_from` is dropped before the old broker is
    /// drained. The router logs each as a warning at start. The embedded broker (in the
    /// process) and modes that keep nothing for a group are not asked; a broker the
    /// router does not use is connected for the look and disconnected after.
    pub async fn leftovers(&self) -> Result<Vec<Leftover>> {
        let mut found = Vec::new();
        for name in self.inner.config.brokers.keys() {
            found.extend(self.inner.leftovers_on(name).await?);
        }
        Ok(found)
    }

    /// Where a channel moving away from another broker (`moving_from`) stands for
    /// `group`: what the old broker still holds for it, and whether that is nothing.
    /// A channel that is not moving is a config error.
    pub async fn move_status<M>(&self, channel: Channel<M>, group: &str) -> Result<MoveStatus> {
        let config = &self.inner.config;
        let Some(old) = config.moving_from_for(channel.name()) else {
            return Err(Error::config(format!(
                "channels.{:?}: not moving (it has no moving_from)",
                channel.name()
            ))
            .with_channel(channel.name()));
        };
        let new = config.broker_for(channel.name())?;
        let backlog = self
            .inner
            .route_via(old, channel.name())
            .await?
            .backlog(group)
            .await?;
        let routers = self.inner.announced_on(old, channel.name()).await?;
        Ok(MoveStatus::new(old, new, group, backlog, routers))
    }

    /// Reads up to `limit` dead letters of `channel`, oldest first, as typed records
    /// (reason, attempts, error, times, and the message decodable as `M` or raw).
    pub async fn dead_letters<M>(
        &self,
        channel: Channel<M>,
        limit: usize,
    ) -> Result<Vec<DeadLetterRecord<M>>> {
        let route = self.inner.route(channel.name()).await?;
        // A moving channel's old broker keeps its dead letters: listed first.
        let mut dead = match self.inner.config.moving_from_for(channel.name()) {
            Some(old) => {
                let old = self.inner.route_via(old, channel.name()).await?;
                old.dead_letters(limit).await?
            }
            None => Vec::new(),
        };
        let left = limit - dead.len();
        dead.extend(route.dead_letters(left).await?);
        Ok(dead.into_iter().map(DeadLetterRecord::new).collect())
    }

    /// Moves up to `limit` dead letters of `channel` back onto it, oldest first, as the
    /// same messages (same id) on attempt 1; returns how many.
    pub async fn replay_dead_letters<M>(&self, channel: Channel<M>, limit: usize) -> Result<usize> {
        self.replay_dead_letters_matching(channel, &DeadLetterSelector::All, limit)
            .await
    }

    /// Like [`replay_dead_letters`](Self::replay_dead_letters), for the dead letters
    /// `selector` picks (by id, by reason); the others stay as they are.
    pub async fn replay_dead_letters_matching<M>(
        &self,
        channel: Channel<M>,
        selector: &DeadLetterSelector,
        limit: usize,
    ) -> Result<usize> {
        self.settle_dead_letters(channel, selector, DeadLetterAction::Replay, limit)
            .await
    }

    /// Removes up to `limit` of the dead letters of `channel` that `selector` picks,
    /// oldest first, for good; returns how many. The others stay as they are.
    pub async fn discard_dead_letters<M>(
        &self,
        channel: Channel<M>,
        selector: &DeadLetterSelector,
        limit: usize,
    ) -> Result<usize> {
        self.settle_dead_letters(channel, selector, DeadLetterAction::Discard, limit)
            .await
    }

    async fn settle_dead_letters<M>(
        &self,
        channel: Channel<M>,
        selector: &DeadLetterSelector,
        action: DeadLetterAction,
        limit: usize,
    ) -> Result<usize> {
        let route = self.inner.route(channel.name()).await?;
        let mut settled = 0;
        if let Some(old) = self.inner.config.moving_from_for(channel.name()) {
            let old = self.inner.route_via(old, channel.name()).await?;
            settled = settle_moving_dead_letters(&old, &route, selector, action, limit).await?;
        }
        Ok(settled
            + route
                .settle_dead_letters(selector, action, limit - settled)
                .await?)
    }

    /// Stops fetching, lets in-flight handlers finish and settles them, gives back
    /// what was fetched but not started, then closes the brokers this router opened.
    /// Nothing is handled twice because of shutdown alone.
    pub async fn shutdown(&self) -> Result<()> {
        let _ = self.inner.stop.send(true);
        let handles: Vec<_> = std::mem::take(
            &mut *self
                .inner
                .consumers
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for h in handles {
            if let Err(e) = h.await {
                tracing::error!(error = %e, "consumer task failed");
            }
        }
        // Once nothing is handled any more: a router moving a channel away waits for
        // this one to be gone before it handles what is published on the new broker.
        self.inner.presences.withdraw_all().await;
        for (name, slot) in &self.inner.slots {
            if let (true, Some(b)) = (slot.owned, slot.cell.get()) {
                b.shutdown().await.map_err(|e| e.with_broker(name))?;
            }
        }
        Ok(())
    }

    async fn start_consumers(&self, r: Registration) -> Result<()> {
        let config = &self.inner.config;
        let route = self.inner.route(r.channel).await?;
        let group = r.group(config).to_string();
        let consumers = r
            .options
            .consumers
            .unwrap_or_else(|| config.consumers_for(r.channel));
        let policy = r
            .options
            .retry
            .unwrap_or_else(|| config.retry_for(r.channel));
        let prefetch = r
            .options
            .prefetch
            .unwrap_or_else(|| config.prefetch_for(r.channel));
        let caps = route.capabilities();
        if !r.serves_requests && policy.attempts > 1 && !caps.retry {
            let (setting, fix) = match r.options.retry {
                Some(_) => (
                    format!("handler options of {:?}: retry", r.channel),
                    "give this handler RetryPolicy::new(1)",
                ),
                None => (
                    format!("channels.{:?}.retry", r.channel),
                    "set retry = { attempts = 1 } for this channel",
                ),
            };
            return Err(Error::unsupported(format!(
                "{setting}: broker {:?} in its configured mode cannot retry; {fix} or route it to a broker that can",
                &**route.broker_name()
            ))
            .with_broker(&**route.broker_name())
            .with_broker_kind(route.kind())
            .with_channel(r.channel));
        }
        // A channel moving away from another broker is consumed there too, until
        // drained: what the old broker holds (and what instances still on the old config
        // publish there) is handled by the same handlers.
        let members = Members {
            group,
            policy,
            prefetch,
            consumers,
            handled: None,
            busy: None,
        };
        let Some(old) = config.moving_from_for(r.channel) else {
            return self.start_members(&r, &route, &members).await;
        };
        // One window of handled ids for the group's members on both brokers: a copy of
        // a message on both is handled once.
        let window = config.moving_dedup_window_for(r.channel);
        let busy_on_old = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut members = Members {
            handled: (window > 0 && !r.serves_requests).then(|| Arc::new(HandledIds::new(window))),
            busy: Some(busy_on_old.clone()),
            ..members
        };
        let old_route = self.inner.route_via(old, r.channel).await?;
        self.start_members(&r, &old_route, &members).await?;
        members.busy = None;
        let keeps_order = config.moving_keeps_order_for(r.channel);
        if keeps_order {
            // The members on the new broker start later: what is published there
            // meanwhile must wait for their group (a broker with a queue per group
            // keeps nothing for a group that does not exist yet).
            let options = SubscribeOptions::new(members.group.clone())
                .retry(members.policy)
                .prefetch(members.prefetch);
            match route.provision(&options).await {
                Err(e) if e.kind() != ErrorKind::Unsupported => return Err(e),
                _ => {}
            }
        } else {
            self.start_members(&r, &route, &members).await?;
        }
        // Says when the old broker is drained for the group; with `moving_keeps_order`,
        // starts the members on the new broker then.
        let watch = watch_move(
            Arc::downgrade(&self.inner),
            old_route,
            busy_on_old,
            members.group.clone(),
            keeps_order.then_some((r, route, members)),
            self.inner.stop.subscribe(),
        );
        self.inner.keep(tokio::spawn(watch));
        Ok(())
    }

    /// Starts `members` on `route` running `r`'s handler (and with the feature
    /// `metrics`, the sampling of the group's backlog there).
    async fn start_members(
        &self,
        r: &Registration,
        route: &Arc<Route>,
        members: &Members,
    ) -> Result<()> {
        let Members {
            group,
            policy,
            prefetch,
            consumers,
            handled,
            busy,
        } = members;
        let (policy, prefetch) = (*policy, *prefetch);
        for _ in 0..*consumers {
            let options = SubscribeOptions::new(group.to_string())
                .retry(policy)
                .prefetch(prefetch);
            let subscription = if r.serves_requests {
                route.serve(options).await?
            } else {
                route.subscribe(options).await?
            };
            let spec = ConsumerSpec {
                subscription: Arc::from(subscription),
                status: route.status.clone(),
                _running: route.status.consumer_running(),
                broker: route.broker_name().clone(),
                system: route.kind().as_str(),
                channel: route.name().clone(),
                group: Arc::from(group.as_str()),
                policy,
                prefetch,
                observer: self.inner.observers.as_ref().map(|o| {
                    Arc::new(CallObserver::new(
                        Arc::from(group.as_str()),
                        o.calls.clone(),
                    ))
                }),
                handled: handled.clone(),
                busy: busy.clone(),
            };
            let handle = r
                .handler
                .clone()
                .spawn_consumer(spec, self.inner.stop.subscribe());
            self.inner.keep(handle);
        }
        #[cfg(feature = "metrics")]
        if !r.serves_requests
            && route.capabilities().new_group_start != anybroker_brokers::NewGroupStart::Live
        {
            let sampling = sample_backlog(
                route.clone(),
                group.to_string(),
                self.inner.stop.subscribe(),
            );
            self.inner.keep(tokio::spawn(sampling));
        }
        Ok(())
    }
}

/// `message` in a new envelope on `channel`: a fresh id, published now, no key or
/// headers. A caller with a key or headers sets them in place (a builder call would
/// move the whole envelope again).
fn build_envelope<M: Serialize>(channel: &Arc<str>, message: &M) -> Result<Envelope> {
    let payload = crate::codec::encode(message).map_err(|e| {
        Error::new(
            ErrorKind::Encode,
            format!("cannot encode {} as JSON", std::any::type_name::<M>()),
        )
        .with_channel(&**channel)
        .with_source(e)
    })?;
    Ok(Envelope::new(channel.clone(), payload))
}

/// Longest id every backend carries: an AMQP short string.
const MAX_MESSAGE_ID_BYTES: usize = 255;

/// An id a caller chose: one every backend can carry unchanged.
fn check_message_id(id: &str, channel: &str) -> Result<()> {
    let fits = !id.is_empty() && id.len() <= MAX_MESSAGE_ID_BYTES;
    if fits && !id.chars().any(char::is_control) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Encode,
        format!(
            "message id: expected 1 to {MAX_MESSAGE_ID_BYTES} bytes without control characters, got {} bytes",
            id.len()
        ),
    )
    .with_channel(channel))
}

/// How often a moving channel's old broker is asked whether it is drained.
const MOVE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Reads in a row that must find the old broker drained before the router says so
/// (and, with `moving_keeps_order`, starts the members on the new broker).
const MOVE_DRAINED_READS: u32 = 5;

/// The members a handler registration starts on one broker.
struct Members {
    group: String,
    policy: RetryPolicy,
    prefetch: usize,
    consumers: usize,
    /// A moving channel's window of handled ids, shared by its members on both brokers.
    handled: Option<Arc<HandledIds>>,
    /// Handler calls running on the old broker (members there count them).
    busy: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

/// The members a moving channel starts on its new broker once the old one is drained.
type PendingMembers = (Registration, Arc<Route>, Members);

/// Watches a moving channel's old broker until it is drained for `group`: logs it, and
/// starts `pending` members on the new broker then. Holds the router weakly, so a
/// router whose clones are all dropped still stops.
async fn watch_move(
    router: std::sync::Weak<RouterInner>,
    old: Arc<Route>,
    busy_on_old: Arc<std::sync::atomic::AtomicUsize>,
    group: String,
    pending: Option<PendingMembers>,
    mut stop: watch::Receiver<bool>,
) {
    // Drained on several reads in a row, not one: between two messages an instance
    // still publishing on the old broker can leave it empty for a moment. Where the old
    // broker keeps presence, no router may still announce the channel there either:
    // an instance on the old config can publish again after any number of empty reads.
    let mut drained_reads = 0;
    let mut waiting_for = 0;
    loop {
        let Some(inner) = router.upgrade() else {
            return;
        };
        let read = async {
            let backlog = old.backlog(&group).await?;
            let routers = inner.announced_on(old.broker_name(), old.name()).await?;
            Ok::<_, Error>((backlog, routers.unwrap_or(0)))
        };
        // This router's own calls on the old broker count too: RabbitMQ's backlog does
        // not tell the messages handed out and not yet acknowledged.
        let idle = busy_on_old.load(std::sync::atomic::Ordering::SeqCst) == 0;
        match read.await {
            Ok((b, 0)) if b.is_empty() && idle => {
                drained_reads += 1;
                if drained_reads >= MOVE_DRAINED_READS {
                    break;
                }
            }
            Ok((_, routers)) => {
                drained_reads = 0;
                if routers > 0 && routers != waiting_for {
                    tracing::info!(
                        messaging.destination.name = &**old.name(),
                        anybroker.moving_from = &**old.broker_name(),
                        routers,
                        "moving channel: routers still on the old config use the old broker"
                    );
                }
                waiting_for = routers;
            }
            Err(e) => {
                drained_reads = 0;
                old.status.failed(&e);
            }
        }
        drop(inner);
        tokio::select! {
            _ = tokio::time::sleep(MOVE_CHECK_EVERY) => {}
            _ = stop.wait_for(|stopping| *stopping) => return,
        }
    }
    tracing::info!(
        messaging.destination.name = &**old.name(),
        messaging.consumer.group.name = group.as_str(),
        anybroker.moving_from = &**old.broker_name(),
        "moving channel: the old broker is drained for this group"
    );
    let (Some((r, route, members)), Some(inner)) = (pending, router.upgrade()) else {
        return;
    };
    let router = MessageRouter { inner };
    if let Err(e) = router.start_members(&r, &route, &members).await {
        tracing::error!(channel = %route.name(), error = %e, "starting the members on the new broker failed");
    }
}

/// Looks on every configured broker for messages of the handled channels left behind,
/// and logs them (warn); a broker that cannot be looked at is logged (info; debug for
/// one no channel uses) and passed.
/// Ends at once when the router stops.
async fn warn_of_leftovers(router: std::sync::Weak<RouterInner>, mut stop: watch::Receiver<bool>) {
    let Some(names) = router
        .upgrade()
        .map(|inner| inner.config.brokers.keys().cloned().collect::<Vec<_>>())
    else {
        return;
    };
    for name in names {
        let Some(inner) = router.upgrade() else {
            return;
        };
        let looked = tokio::select! {
            looked = inner.leftovers_on(&name) => looked,
            _ = stop.wait_for(|stopping| *stopping) => return,
        };
        match looked {
            Ok(found) => leftovers::warn(&found),
            // A broker no channel uses may well be down: that is no news.
            Err(e) if inner.slots[&name].cell.get().is_none() => tracing::debug!(
                anybroker.broker = name.as_str(),
                error = %e,
                "could not look for messages left behind on this unused broker"
            ),
            Err(e) => tracing::info!(
                anybroker.broker = name.as_str(),
                error = %e,
                "could not look for messages left behind on this broker"
            ),
        }
    }
}

/// Settles up to `limit` of the dead letters `selector` picks on a moving channel's old
/// broker: a replayed one is published onto the new broker (the same message, attempt
/// 1), then removed from the old; a crash in between leaves a copy, never a loss.
async fn settle_moving_dead_letters(
    old: &Route,
    new: &Route,
    selector: &DeadLetterSelector,
    action: DeadLetterAction,
    limit: usize,
) -> Result<usize> {
    if action == DeadLetterAction::Discard {
        return old.settle_dead_letters(selector, action, limit).await;
    }
    // The oldest dead letters the old broker keeps, up to this many, are looked at.
    const SCANNED: usize = 100_000;
    let picked: Vec<Envelope> = old
        .dead_letters(SCANNED)
        .await?
        .into_iter()
        .filter(|d| selector.matches(d))
        .take(limit)
        .collect();
    // All published first, then removed from the old broker in one call (one scan of
    // its dead letters, not one per message); what was published before a failure is
    // removed too.
    let mut published = Vec::with_capacity(picked.len());
    let mut failed = None;
    for dead in picked {
        let id = dead.id.clone();
        let mut replayed = dead.into_replayed();
        replayed.channel = new.name().clone();
        match new.publish(replayed).await {
            Ok(()) => published.push(id),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let count = published.len();
    let moved = if published.is_empty() {
        0
    } else {
        old.settle_dead_letters(
            &DeadLetterSelector::Ids(published),
            DeadLetterAction::Discard,
            count,
        )
        .await?
    };
    match failed {
        Some(e) => Err(e),
        None => Ok(moved),
    }
}

/// Samples `group`'s backlog on `route` into its gauges until the router stops (or the
/// broker turns out unable to count it).
#[cfg(feature = "metrics")]
async fn sample_backlog(route: Arc<Route>, group: String, mut stop: watch::Receiver<bool>) {
    let gauges = crate::message_metrics::BacklogGauges::new(
        route.name(),
        route.broker_name(),
        &Arc::from(group.as_str()),
    );
    loop {
        match route.backlog(&group).await {
            Ok(backlog) => gauges.record(&backlog),
            Err(e) if e.kind() == ErrorKind::Unsupported => return,
            Err(e) => route.status.failed(&e),
        }
        tokio::select! {
            _ = tokio::time::sleep(crate::message_metrics::BACKLOG_SAMPLE_EVERY) => {}
            _ = stop.wait_for(|stopping| *stopping) => return,
        }
    }
}

async fn send(route: &Route, mut envelope: Envelope, delay: Option<Duration>) -> Result<()> {
    if tracing::span_enabled!(tracing::Level::INFO) {
        let span = publish_span(route, &envelope);
        crate::trace_context::inject(&span, &mut envelope.headers);
        return Box::pin(publish_or_delay(route, envelope, delay).instrument(span)).await;
    }
    publish_or_delay(route, envelope, delay).await
}

async fn publish_or_delay(
    route: &Route,
    envelope: Envelope,
    delay: Option<Duration>,
) -> Result<()> {
    let result = match delay {
        Some(d) => route.publish_delayed(envelope, d).await,
        None => match route.publish_at_once(envelope) {
            None => Ok(()),
            Some(envelope) => route.publish(envelope).await,
        },
    };
    route.published(&result);
    result
}

/// The span of one publish, in OpenTelemetry's messaging terms. Its fields are read
/// only when a subscriber wants the span.
fn publish_span(route: &Route, envelope: &Envelope) -> tracing::Span {
    tracing::info_span!(
        "publish",
        otel.name = %format_args!("publish {}", route.name()),
        otel.kind = "producer",
        messaging.system = route.kind().as_str(),
        messaging.operation.type = "send",
        messaging.destination.name = &**route.name(),
        messaging.message.id = &*envelope.id,
        anybroker.broker = &**route.broker_name(),
        anybroker.key = envelope.key.as_deref(),
    )
}
