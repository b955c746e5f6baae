//! The connection to RabbitMQ, re-established with backoff when it drops: a `Session`
//! is one live connection with its confirm-mode publishing channels; the `Link` hands
//! out the current one and replaces it when it died.
//!
//! RabbitMQ sends the `basic.return` of a mandatory publish no queue took just ahead
//! of that publish's ack, and the return names no delivery tag: lapin hands it to
//! whichever confirm it resolves next on the channel. So publishes that can come back
//! (into a queue by name, or to an exchange without an alternate exchange) each get a
//! channel of their own while they wait (`publishers`); the others (to the channels'
//! exchange, which parks what no queue takes, and replies) are all in flight together
//! on one channel.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use lapin::message::BasicReturnMessage;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::codec::{sent_id, to_properties};
use super::error::from_lapin;
use super::config::RabbitMqConfig;
use super::publishers::{open_confirming, Publishers};
use super::topology;
use crate::core::{Envelope, Error, ErrorKind, Result, ShutdownFlag};

/// The pseudo-queue of RabbitMQ's direct reply-to.
pub(crate) const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Where a message goes: exchange and routing key.
pub(crate) struct Route<'a> {
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
    /// Refuse, rather than drop, a message no queue takes.
    pub(crate) mandatory: bool,
}

impl Route<'_> {
    /// The publish's options: mandatory or not.
    pub(crate) fn options(&self) -> BasicPublishOptions {
        BasicPublishOptions {
            mandatory: self.mandatory,
            ..Default::default()
        }
    }
}

/// One live connection.
pub(crate) struct Session {
    pub(crate) connection: Connection,
    /// Confirm mode, shared by the publishes that cannot come back, which pipeline on it.
    pipelined: Channel,
    /// Whether the channels' exchange surely parks what no queue takes.
    exchange_parks: bool,
    publishers: Publishers,
    rpc: tokio::sync::OnceCell<Rpc>,
}

impl Session {
    async fn open(config: &RabbitMqConfig) -> Result<Session> {
        let mut properties = ConnectionProperties::default();
        if let Some(name) = &config.connection_name {
            properties = properties.with_connection_name(name.as_str().into());
        }
        let unreachable = |e: Option<lapin::Error>| {
            let error = Error::new(
                ErrorKind::Unreachable,
                format!("cannot connect to {}", config.url),
            )
            .set_retryable(true);
            match e {
                Some(e) => error.with_source(e),
                None => error.with_source(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", config.connect_timeout),
                )),
            }
        };
        let connection = tokio::time::timeout(
            config.connect_timeout,
            Connection::connect(config.url.expose(), properties),
        )
        .await
        .map_err(|_| unreachable(None))?
        .map_err(|e| unreachable(Some(e)))?;
        let exchange_parks =
            topology::declare_exchanges(&connection, &config.exchange, config.park_unroutable)
                .await?;
        let pipelined = open_confirming(&connection).await?;
        Ok(Session {
            publishers: Publishers::default(),
            pipelined,
            exchange_parks,
            connection,
            rpc: tokio::sync::OnceCell::new(),
        })
    }

    /// Whether a publish on `route` goes on the shared channel: it cannot come back
    /// unroutable (not mandatory, or to the channels' `exchange` while it parks what
    /// no queue takes).
    fn pipelines(&self, route: &Route<'_>, exchange: &str) -> bool {
        !route.mandatory || (self.exchange_parks && route.exchange == exchange)
    }

    fn is_alive(&self) -> bool {
        self.connection.status().connected() && self.pipelined.status().connected()
    }

    /// Publishes with a confirm: on the shared channel when the message can never come
    /// back unroutable (not mandatory, or to the channels' `exchange` while it parks
    /// what no queue takes), else on a channel lent to this publish alone.
    /// `properties` makes the message's properties once a channel is chosen, so a
    /// wait for a lent channel does not hold them.
    async fn publish(
        &self,
        route: &Route<'_>,
        exchange: &str,
        payload: &[u8],
        properties: impl FnOnce() -> BasicProperties,
    ) -> Result<()> {
        if self.pipelines(route, exchange) {
            return publish_confirmed(&self.pipelined, route, payload, properties()).await;
        }
        let lent = self.publishers.lend(&self.connection).await?;
        let published = publish_confirmed(lent.channel(), route, payload, properties()).await;
        lent.give_back();
        published
    }

    /// A fresh channel for declarations: a declaration the server refuses closes the
    /// channel it was made on, so it must not be a publishing one.
    pub(crate) async fn declaring_channel(&self) -> Result<Channel> {
        self.connection
            .create_channel()
            .await
            .map_err(|e| from_lapin(e, "open channel"))
    }

    /// Declares the delay queue `queue` (idempotent: the same arguments each time).
    async fn declare_delay_queue(
        &self,
        queue: &str,
        delay: Duration,
        exchange: &str,
        routing_key: &str,
    ) -> Result<()> {
        let ch = self.declaring_channel().await?;
        let result = topology::declare_delay_queue(&ch, queue, delay, exchange, routing_key).await;
        let _ = ch.close(200, "declared".into()).await;
        result
    }

    /// The request side of direct reply-to, set up on first use.
    async fn rpc(&self) -> Result<&Rpc> {
        self.rpc
            .get_or_try_init(|| Rpc::open(&self.connection))
            .await
    }
}

/// How the error of a publish the broker could not route begins.
const UNROUTABLE: &str = "unroutable";

/// Whether `e` says the broker could not route a publish (no queue for its key).
fn is_unroutable(e: &Error) -> bool {
    e.kind() == ErrorKind::Broker && e.message().starts_with(UNROUTABLE)
}

/// Publishes on `channel` and waits for the broker's answer, whatever it is. The
/// message is sent at the first poll, so several polled in turn are in flight together.
/// Not an `async fn`: the properties go into lapin's publish future as it is made, and
/// that future is boxed there (~1.5 KB), so the future returned, and every one that
/// awaits it, holds a pointer rather than the publish.
fn publish_and_confirm<'a>(
    channel: &'a Channel,
    route: &Route<'_>,
    payload: &'a [u8],
    properties: BasicProperties,
) -> impl Future<Output = Result<Confirmation>> + Send + 'a {
    let publishing = Box::pin(channel.basic_publish(
        route.exchange.into(),
        route.routing_key.into(),
        route.options(),
        payload,
        properties,
    ));
    async move {
        publishing
            .await
            .map_err(|e| from_lapin(e, "publish"))?
            .await
            .map_err(|e| from_lapin(e, "publish"))
    }
}

/// Publishes on `channel` and waits for the broker's confirm. A message that came back
/// unroutable is taken for this one: `channel` is lent to this publish alone, or
/// carries only publishes that cannot come back. Not an `async fn`, for the reason
/// [`publish_and_confirm`] gives.
pub(crate) fn publish_confirmed<'a>(
    channel: &'a Channel,
    route: &'a Route<'a>,
    payload: &'a [u8],
    properties: BasicProperties,
) -> impl Future<Output = Result<()>> + Send + 'a {
    let confirming = publish_and_confirm(channel, route, payload, properties);
    async move { answer(route, confirming.await?) }
}

/// Waits for the confirm of a publish lapin sent (`sent`), and says what it means as
/// [`answer`] does: for [`Link::publish`], which holds lapin's publish future in its
/// own rather than in a box of its own.
async fn confirmed(
    route: &Route<'_>,
    sent: std::result::Result<lapin::PublisherConfirm, lapin::Error>,
) -> Result<()> {
    let confirmation = sent
        .map_err(|e| from_lapin(e, "publish"))?
        .await
        .map_err(|e| from_lapin(e, "publish"))?;
    answer(route, confirmation)
}

/// What the broker's answer to a publish on `channel` means for it, the channel being
/// lent to it or carrying only publishes that cannot come back.
fn answer(route: &Route<'_>, confirmation: Confirmation) -> Result<()> {
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(unroutable(route, &returned.reply_text)),
        Confirmation::Nack(_) => Err(refused()),
    }
}

/// Publishes `messages` on `channel` (lent to the caller), all in flight at once, and
/// waits for every confirm: one result per message, in their order. A message that
/// came back may ride on any confirm of the batch, so returns are matched to messages
/// by id once all are in.
async fn publish_all_confirmed(
    channel: &Channel,
    route: &Route<'_>,
    messages: &[&Envelope],
) -> Vec<Result<()>> {
    // Polled in order at first, so they are sent in order; none waits for the one
    // before it to be written.
    let answers = futures::future::join_all(messages.iter().map(|envelope| {
        publish_and_confirm(channel, route, &envelope.payload, to_properties(envelope))
    }))
    .await;
    let mut came_back: Vec<(Option<String>, ShortString)> = answers
        .iter()
        .filter_map(|answer| match answer {
            Ok(Confirmation::Ack(Some(r)) | Confirmation::Nack(Some(r))) => Some(returned_id(r)),
            _ => None,
        })
        .collect();
    let results = answers
        .into_iter()
        .zip(messages)
        .map(|(answer, envelope)| match answer? {
            Confirmation::Nack(_) => Err(refused()),
            Confirmation::Ack(_) | Confirmation::NotRequested if came_back.is_empty() => Ok(()),
            Confirmation::Ack(_) | Confirmation::NotRequested => {
                // The id it was sent with: `to_properties` puts the envelope's there.
                let id = Some(&*envelope.id);
                match came_back.iter().position(|(returned, _)| returned.as_deref() == id) {
                    Some(i) => Err(unroutable(route, &came_back.swap_remove(i).1)),
                    None => Ok(()),
                }
            }
        })
        .collect();
    for (id, _) in came_back {
        tracing::warn!(broker = "rabbitmq", id = ?id, "a message of no publish in the batch came back");
    }
    results
}

/// The id a returned message was sent with, and why it came back.
fn returned_id(returned: &BasicReturnMessage) -> (Option<String>, ShortString) {
    (sent_id(&returned.properties), returned.reply_text.clone())
}

fn unroutable(route: &Route<'_>, reply_text: &ShortString) -> Error {
    Error::new(
        ErrorKind::Broker,
        format!(
            "{UNROUTABLE}: no queue is bound to routing key {:?} on exchange {:?} ({reply_text}); \
             a channel has queues once a group has subscribed to it",
            route.routing_key, route.exchange
        ),
    )
    .with_operation("publish")
}

fn refused() -> Error {
    Error::new(
        ErrorKind::Broker,
        "the broker refused the message (negative publisher confirm)",
    )
    .set_retryable(true)
    .with_operation("publish")
}

/// Hands out the live session, reconnecting when the last one died. What the
/// broker's channels and subscriptions share.
pub(crate) struct Link {
    config: RabbitMqConfig,
    current: RwLock<Arc<Session>>,
    reconnecting: tokio::sync::Mutex<()>,
    closed: ShutdownFlag,
    /// The delay and retry queues this process declared, across reconnects: publishes
    /// into them declare none again, and (AMQP cannot list queues) a backlog counts what
    /// waits in these.
    delay_queues: Mutex<HashSet<String>>,
}

impl Link {
    /// Connects once; an unreachable broker fails here, at start.
    pub(crate) async fn connect(config: &RabbitMqConfig) -> Result<Link> {
        let session = Session::open(config).await?;
        Ok(Link {
            config: config.clone(),
            current: RwLock::new(Arc::new(session)),
            reconnecting: tokio::sync::Mutex::new(()),
            closed: ShutdownFlag::default(),
            delay_queues: Mutex::new(HashSet::new()),
        })
    }

    /// Publishes `envelope` into the delay queue `queue` (whence it leaves after `delay`
    /// for `exchange` with `routing_key`), declared first unless this process did.
    /// Queues outlive connections, so a reconnect declares none again; a queue the
    /// server removed since (idle past its `x-expires`) makes the publish unroutable,
    /// and is declared again and the publish made again.
    pub(crate) async fn publish_to_delay_queue(
        &self,
        queue: &str,
        delay: Duration,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
    ) -> Result<()> {
        let known = self.delay_queues.lock().unwrap().contains(queue);
        if !known {
            let session = self.session().await?;
            session
                .declare_delay_queue(queue, delay, exchange, routing_key)
                .await?;
            self.delay_queues.lock().unwrap().insert(queue.to_string());
        }
        match self.publish_to_queue(queue, envelope).await {
            Err(e) if is_unroutable(&e) => {
                let session = self.session().await?;
                session
                    .declare_delay_queue(queue, delay, exchange, routing_key)
                    .await?;
                self.publish_to_queue(queue, envelope).await
            }
            published => published,
        }
    }

    /// The ready messages of `queue`; none for a queue that does not exist (any more).
    pub(crate) async fn ready_messages(&self, queue: &str) -> Result<Option<u64>> {
        Ok(self
            .queue_counts(queue)
            .await?
            .map(|q| u64::from(q.message_count())))
    }

    /// `queue`'s counts of ready messages and consumers, declared passively (nothing is
    /// created); none for a queue that does not exist (any more).
    pub(crate) async fn queue_counts(&self, queue: &str) -> Result<Option<lapin::Queue>> {
        let session = self.session().await?;
        let ch = session.declaring_channel().await?;
        let declared = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        // A failed passive declare closes the channel itself.
        let _ = ch.close(200, "counted".into()).await;
        match declared {
            Ok(q) => Ok(Some(q)),
            Err(e) if e.to_string().contains("NOT_FOUND") => Ok(None),
            Err(e) => Err(from_lapin(e, "count messages")),
        }
    }

    /// The ready messages of the delay and retry queues this process declared whose
    /// names start with `prefix`; the ones gone (expired when idle) are forgotten.
    pub(crate) async fn waiting_in_delay_queues(&self, prefix: &str) -> Result<u64> {
        let queues: Vec<String> = {
            let known = self.delay_queues.lock().unwrap();
            known.iter().filter(|q| q.starts_with(prefix)).cloned().collect()
        };
        let mut waiting = 0;
        for queue in queues {
            match self.ready_messages(&queue).await? {
                Some(n) => waiting += n,
                None => {
                    self.delay_queues.lock().unwrap().remove(&queue);
                }
            }
        }
        Ok(waiting)
    }

    pub(crate) fn config(&self) -> &RabbitMqConfig {
        &self.config
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_closed()
    }

    /// Whether the current connection and its publishing channel are open (a lost one
    /// is replaced at its next use).
    pub(crate) fn check_connection(&self) -> Result<()> {
        if self.current.read().unwrap().is_alive() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Unreachable,
            "the connection to the server is lost; the next operation reconnects",
        )
        .set_retryable(true))
    }

    /// Publishes `envelope` to the default exchange, straight into `queue`.
    pub(crate) async fn publish_to_queue(&self, queue: &str, envelope: &Envelope) -> Result<()> {
        let route = Route {
            exchange: "",
            routing_key: queue,
            mandatory: true,
        };
        self.publish(&route, &envelope.payload, || to_properties(envelope))
            .await
    }

    /// The live session; when the connection dropped, reconnects with backoff for up
    /// to `reconnect_timeout` (one caller reconnects, the others wait for it).
    pub(crate) async fn session(&self) -> Result<Arc<Session>> {
        {
            let current = self.current.read().unwrap();
            if current.is_alive() {
                return Ok(current.clone());
            }
        }
        // Boxed: reconnecting is seldom, and its future (a connection's opening) would
        // make every operation's future its size.
        Box::pin(self.reconnect()).await
    }

    /// Opens a new session in place of the dead one, as [`session`](Self::session) says.
    async fn reconnect(&self) -> Result<Arc<Session>> {
        let _one_at_a_time = self.reconnecting.lock().await;
        let dead = {
            let current = self.current.read().unwrap();
            if current.is_alive() {
                return Ok(current.clone());
            }
            current.clone()
        };
        // Close what is left of the old connection so its channels stop. At most for
        // `connect_timeout`: a close sent while lapin is ending the connection itself
        // (the server going down) may never be answered, and waiting for it here would
        // hold up every reconnect, a consumer's too, for good.
        let closing = dead.connection.close(200, "reconnecting".into());
        let _ = tokio::time::timeout(self.config.connect_timeout, closing).await;
        let deadline = Instant::now() + self.config.reconnect_timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            match Session::open(&self.config).await {
                Ok(session) => {
                    let session = Arc::new(session);
                    *self.current.write().unwrap() = session.clone();
                    tracing::info!(broker = "rabbitmq", url = %self.config.url, "reconnected");
                    return Ok(session);
                }
                Err(e) if Instant::now() + backoff >= deadline => {
                    return Err(Error::new(
                        ErrorKind::Unreachable,
                        format!(
                            "connection lost and not re-established within {:?}",
                            self.config.reconnect_timeout
                        ),
                    )
                    .set_retryable(true)
                    .with_source(e));
                }
                Err(e) => {
                    tracing::warn!(broker = "rabbitmq", error = %e, "reconnecting failed; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// The current session if its shared channel takes a publish on `route`: a
    /// publish that needs no wait for a channel. Whether the session is alive is not
    /// asked (two locks in lapin): on a dead one the publish fails `Unreachable`, and
    /// [`publish`](Self::publish) reconnects and sends it again.
    fn pipelined_now(&self, route: &Route<'_>) -> Option<Arc<Session>> {
        let current = self.current.read().unwrap();
        current.pipelines(route, &self.config.exchange).then(|| current.clone())
    }

    /// Publishes with a confirm. A publish the connection dropped under is sent again
    /// on the next connection (at least once, never vanished), until `reconnect_timeout`.
    /// `properties` makes the message's properties for each send: made again for a
    /// send again rather than copied ahead for one that is seldom needed.
    ///
    /// The usual publish, on a live session's shared channel, awaits lapin's publish
    /// future in place: a caller that boxes this future (a channel's `publish`) makes
    /// one allocation a publish, not two. Its future is ~2 KB.
    pub(crate) async fn publish(
        &self,
        route: &Route<'_>,
        payload: &[u8],
        properties: impl Fn() -> BasicProperties,
    ) -> Result<()> {
        if let Some(session) = self.pipelined_now(route) {
            let sent = session
                .pipelined
                .basic_publish(
                    route.exchange.into(),
                    route.routing_key.into(),
                    route.options(),
                    payload,
                    properties(),
                )
                .await;
            match confirmed(route, sent).await {
                Err(e) if e.kind() == ErrorKind::Unreachable => {
                    tracing::debug!(broker = "rabbitmq", error = %e, "publish interrupted; sending again after reconnect");
                }
                other => return other,
            }
        }
        let deadline = Instant::now() + self.config.reconnect_timeout;
        loop {
            let session = self.session().await?;
            let published = session
                .publish(route, &self.config.exchange, payload, &properties)
                .await;
            match published {
                Err(e) if e.kind() == ErrorKind::Unreachable && Instant::now() < deadline => {
                    tracing::debug!(broker = "rabbitmq", error = %e, "publish interrupted; sending again after reconnect");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// Publishes `messages` all in flight at once on one channel, with a confirm each:
    /// one result per message, in their order. Those the connection dropped under are
    /// sent again on the next connection, as [`publish`](Self::publish) does (their
    /// properties made again for it).
    pub(crate) async fn publish_batch(
        &self,
        route: &Route<'_>,
        messages: &[&Envelope],
    ) -> Vec<Result<()>> {
        let deadline = Instant::now() + self.config.reconnect_timeout;
        let mut results: Vec<Result<()>> = messages.iter().map(|_| Ok(())).collect();
        let mut unsent: Vec<usize> = (0..messages.len()).collect();
        while !unsent.is_empty() {
            let session = match self.session().await {
                Ok(session) => session,
                Err(e) => {
                    for i in unsent {
                        results[i] = Err(e.repeated());
                    }
                    break;
                }
            };
            let published = match session.publishers.lend(&session.connection).await {
                Ok(lent) => {
                    let these: Vec<_> = unsent.iter().map(|&i| messages[i]).collect();
                    let published = publish_all_confirmed(lent.channel(), route, &these).await;
                    lent.give_back();
                    published
                }
                Err(e) => unsent.iter().map(|_| Err(e.repeated())).collect(),
            };
            let mut again = Vec::new();
            for (i, result) in unsent.into_iter().zip(published) {
                match result {
                    Err(e) if e.kind() == ErrorKind::Unreachable && Instant::now() < deadline => {
                        again.push(i)
                    }
                    result => results[i] = result,
                }
            }
            if !again.is_empty() {
                tracing::debug!(broker = "rabbitmq", messages = again.len(), "batch interrupted; sending the rest again after reconnect");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            unsent = again;
        }
        results
    }

    /// Sends a request to `route` and waits up to `timeout` for its reply.
    pub(crate) async fn request(
        &self,
        route: &Route<'_>,
        payload: &[u8],
        properties: BasicProperties,
        timeout: Duration,
    ) -> Result<(BasicProperties, Vec<u8>)> {
        let session = self.session().await?;
        let rpc = session.rpc().await?;
        let correlation = crate::new_message_id();
        let (tx, rx) = oneshot::channel();
        rpc.pending
            .lock()
            .unwrap()
            .insert(correlation.to_string(), tx);
        let properties = properties
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id(ShortString::from(&*correlation))
            .with_expiration(timeout.as_millis().max(1).to_string().into());
        let forget = || rpc.pending.lock().unwrap().remove(&*correlation);
        let confirmation = match publish_and_confirm(&rpc.channel, route, payload, properties).await {
            Ok(confirmation) => confirmation,
            Err(e) => {
                forget();
                return Err(e.with_operation("request"));
            }
        };
        // Requests are in flight together on the reply channel, so a request that came
        // back may ride on another's confirm: the one whose correlation id it carries
        // is told, whichever that is.
        let (refused_here, returned) = match confirmation {
            Confirmation::Ack(returned) => (false, returned),
            Confirmation::Nack(returned) => (true, returned),
            Confirmation::NotRequested => (false, None),
        };
        if let Some(returned) = returned {
            if let Some(theirs) = returned.properties.correlation_id() {
                if let Some(tx) = rpc.pending.lock().unwrap().remove(theirs.as_str()) {
                    let _ = tx.send(None);
                }
            }
        }
        if refused_here {
            forget();
            return Err(refused().with_operation("request"));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Some(reply))) => Ok(reply),
            Ok(Ok(None)) => Err(
                Error::new(ErrorKind::NoResponder, "nobody serves this channel")
                    .with_operation("request"),
            ),
            Ok(Err(_)) => Err(Error::new(
                ErrorKind::Unreachable,
                "connection lost while waiting for the reply",
            )
            .set_retryable(true)
            .with_operation("request")),
            Err(_) => {
                forget();
                Err(
                    Error::new(ErrorKind::Timeout, format!("no reply within {timeout:?}"))
                        .with_operation("request"),
                )
            }
        }
    }

    /// Marks the broker closed and closes the connection.
    pub(crate) async fn close(&self) -> Result<()> {
        self.closed.close();
        let session = self.current.read().unwrap().clone();
        if session.is_alive() {
            session
                .connection
                .close(200, "shutdown".into())
                .await
                .map_err(|e| from_lapin(e, "shutdown"))?;
        }
        Ok(())
    }
}

/// A request's answer: the reply, or `None` when the request came back unroutable
/// (nobody serves the channel).
type Answer = Option<(BasicProperties, Vec<u8>)>;

type Pending = Arc<Mutex<FxHashMap<String, oneshot::Sender<Answer>>>>;

/// A channel consuming direct reply-to (it must also be the one requests are published
/// on), and the requests waiting for their replies by correlation id.
struct Rpc {
    channel: Channel,
    pending: Pending,
}

impl Rpc {
    async fn open(connection: &Connection) -> Result<Rpc> {
        let channel = open_confirming(connection).await?;
        let mut replies = channel
            .basic_consume(
                REPLY_TO.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| from_lapin(e, "consume replies"))?;
        let pending: Pending = Arc::default();
        let waiting = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(reply)) = replies.next().await {
                let Some(id) = reply.properties.correlation_id().as_ref() else {
                    continue;
                };
                if let Some(tx) = waiting.lock().unwrap().remove(id.as_str()) {
                    let _ = tx.send(Some((reply.properties, reply.data)));
                }
            }
            // The connection is gone: wake every waiter with an error.
            waiting.lock().unwrap().clear();
        });
        Ok(Rpc { channel, pending })
    }
}
