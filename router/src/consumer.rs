//! The consumer runtime: turns a subscription's deliveries into handler calls and
//! handler outcomes into settlements, with a bounded in-flight window, per-key order,
//! panic capture and a draining shutdown. Broker-independent: backends only fetch
//! and settle.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use anybroker_brokers::{
    DeadLetter, DeadLetterReason, Delivery, DeliveryTag, Envelope, RetryPolicy, Settlement,
    Subscription,
};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::channel::Message;
use crate::handled_ids::HandledIds;
use crate::handler::{HandlerError, MessageContext, MessageHandler};
use crate::health::{BrokerStatus, RunningConsumer};
use crate::message_metrics::{CallStarted, HandlingMetrics};

/// What running a handler on one envelope came to.
pub(crate) enum HandleResult {
    Handled,
    Failed(HandlerError),
    Undecodable(String),
}

/// What a finished delivery comes to: its tag, its key (to free it) and its settlement.
pub(crate) type Finished = (DeliveryTag, Option<Arc<str>>, Settlement);

/// Runs one delivery: decodes, calls, catches a panic and decides the settlement.
/// The consumer runtime is generic over it, so the per-delivery future is a concrete
/// type: no box and no virtual call per message (the type is erased once per consumer,
/// by [`SpawnConsumer`]).
pub(crate) trait DeliveryHandler: Send + Sync + 'static {
    fn run<'a>(
        &'a self,
        delivery: Delivery,
        site: &'a Site,
    ) -> impl Future<Output = Finished> + Send + 'a;
}

/// Where a consumer's deliveries come from and how they are retried: what its handling
/// spans and its retry and dead-letter events name, in OpenTelemetry's messaging terms.
pub(crate) struct Site {
    /// The broker's configured name.
    pub(crate) broker: Arc<str>,
    /// `messaging.system`: the broker's kind (`redis`, `nats`, …).
    pub(crate) system: &'static str,
    pub(crate) channel: Arc<str>,
    pub(crate) group: Arc<str>,
    pub(crate) policy: RetryPolicy,
    pub(crate) metrics: HandlingMetrics,
    /// A moving channel's window of handled ids, shared by the group's members on both
    /// brokers.
    pub(crate) handled: Option<Arc<HandledIds>>,
    /// Handler calls running on a moving channel's old broker, for the move watcher
    /// (a broker that does not count unacknowledged messages does not tell them).
    pub(crate) busy: Option<Arc<AtomicUsize>>,
}

/// Counts a handler call in `busy` while it runs.
struct Busy<'a>(Option<&'a AtomicUsize>);

impl<'a> Busy<'a> {
    fn start(busy: &'a Option<Arc<AtomicUsize>>) -> Self {
        let busy = busy.as_deref();
        if let Some(b) = busy {
            b.fetch_add(1, Ordering::SeqCst);
        }
        Busy(busy)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.0 {
            b.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Site {
    /// The span one handling runs in (the handler's own logs nest in it), a child of
    /// the publish span whose context the message carries (feature `opentelemetry`).
    /// Its fields are read only when a subscriber wants the span.
    fn handling_span(&self, envelope: &Envelope) -> tracing::Span {
        let span = tracing::info_span!(
            "process",
            otel.name = %format_args!("process {}", self.channel),
            otel.kind = "consumer",
            messaging.system = self.system,
            messaging.operation.type = "process",
            messaging.destination.name = &*self.channel,
            messaging.consumer.group.name = &*self.group,
            messaging.message.id = &*envelope.id,
            anybroker.broker = &*self.broker,
            anybroker.attempt = envelope.attempt,
            anybroker.key = envelope.key.as_deref(),
        );
        crate::trace_context::adopt_parent(&span, &envelope.headers);
        span
    }

    /// Says what a failed handling comes to: a retry (info) or a dead letter (warn),
    /// with the message's id and attempt, inside its handling span.
    fn report(&self, span: &tracing::Span, id: &str, attempt: u32, settlement: &Settlement) {
        match settlement {
            Settlement::Retry { delay, error } => tracing::info!(
                parent: span,
                messaging.destination.name = &*self.channel,
                messaging.consumer.group.name = &*self.group,
                messaging.message.id = id,
                anybroker.broker = &*self.broker,
                anybroker.attempt = attempt,
                anybroker.retry_in_ms = delay.as_millis() as u64,
                error = %error,
                "handler failed; retrying"
            ),
            Settlement::DeadLetter(dead) => tracing::warn!(
                parent: span,
                messaging.destination.name = &*self.channel,
                messaging.consumer.group.name = &*self.group,
                messaging.message.id = id,
                anybroker.broker = &*self.broker,
                anybroker.attempt = attempt,
                anybroker.dead_letter_reason = dead.reason.as_str(),
                error = %dead.error,
                "message dead-lettered"
            ),
            _ => {}
        }
    }

    /// Says that a delivery was a copy of a message this group handled already (on
    /// either broker of a move), acknowledged without calling the handler.
    fn report_copy(&self, id: &str) {
        tracing::info!(
            messaging.destination.name = &*self.channel,
            messaging.consumer.group.name = &*self.group,
            messaging.message.id = id,
            anybroker.broker = &*self.broker,
            "moving channel: a copy of a message already handled; acknowledged without calling the handler"
        );
    }
}

/// A handler with its types erased, as the router keeps it: starts a consumer task.
pub(crate) trait SpawnConsumer: Send + Sync {
    fn spawn_consumer(
        self: Arc<Self>,
        spec: ConsumerSpec,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<()>;
}

impl<H: DeliveryHandler> SpawnConsumer for H {
    fn spawn_consumer(
        self: Arc<Self>,
        spec: ConsumerSpec,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(run_consumer(spec, self, stop))
    }
}

pub(crate) struct TypedHandler<M, H> {
    pub(crate) handler: H,
    pub(crate) _message: std::marker::PhantomData<fn() -> M>,
}

/// How a delivery's handling begins, decided before its future is made.
enum Begun<F> {
    /// A copy of a message the group already handled (a moving channel): acked.
    Copy,
    /// Handling started (and counted in the metrics): the handler's future to poll,
    /// or what it came to before the handler had one (undecodable, or a panic).
    Started(CallStarted, Result<F, Result<HandleResult, String>>),
}

/// Polls the handler's future inside `span` (the handler's logs nest in it), catching a
/// panic at each poll.
fn caught<'a, F: Future<Output = Result<(), HandlerError>>>(
    mut handling: Pin<&'a mut F>,
    span: &'a tracing::Span,
) -> impl Future<Output = Result<HandleResult, String>> + 'a {
    std::future::poll_fn(move |cx| {
        let _entered = span.enter();
        match std::panic::catch_unwind(AssertUnwindSafe(|| handling.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(Ok(()))) => Poll::Ready(Ok(HandleResult::Handled)),
            Ok(Poll::Ready(Err(e))) => Poll::Ready(Ok(HandleResult::Failed(e))),
            Err(panic) => Poll::Ready(Err(panic_text(panic))),
        }
    })
}

impl<M: Message, H: MessageHandler<M>> TypedHandler<M, H> {
    /// Decodes the payload and calls the handler for its future.
    fn begin(
        &self,
        envelope: Envelope,
        broker: Arc<str>,
    ) -> Result<impl Future<Output = Result<(), HandlerError>> + Send + '_, String> {
        let message: M = crate::codec::decode(&envelope)
            .map_err(|e| format!("payload is not a valid {}: {e}", std::any::type_name::<M>()))?;
        Ok(self
            .handler
            .handle_owned(message, MessageContext::new(envelope, broker)))
    }
}

impl<M: Message, H: MessageHandler<M>> DeliveryHandler for TypedHandler<M, H> {
    // Not an `async fn`: one keeps its arguments twice in its future, and the envelope
    // is the largest thing a consumer moves per message. The synchronous part (decoding,
    // calling the handler for its future) runs here, so the future holds only the
    // handler's future and what settling needs, and is small to move into its slot.
    fn run<'a>(
        &'a self,
        delivery: Delivery,
        site: &'a Site,
    ) -> impl Future<Output = Finished> + Send + 'a {
        let busy = Busy::start(&site.busy);
        let tag = delivery.tag;
        let key = delivery.envelope.key.clone();
        let attempt = delivery.envelope.attempt;
        // For the event of a failure, after the handler took the envelope.
        let id = delivery.envelope.id.clone();
        let copy = site.handled.as_ref().is_some_and(|h| !h.claim(&id));
        let (span, begun) = if copy {
            site.report_copy(&id);
            (tracing::Span::none(), Begun::Copy)
        } else {
            let span = site.handling_span(&delivery.envelope);
            let started = site.metrics.started();
            let handling = {
                let _entered = span.enter();
                match std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.begin(delivery.envelope, site.broker.clone())
                })) {
                    Ok(Ok(handling)) => Ok(handling),
                    Ok(Err(undecodable)) => Err(Ok(HandleResult::Undecodable(undecodable))),
                    Err(panic) => Err(Err(panic_text(panic))),
                }
            };
            (span, Begun::Started(started, handling))
        };
        async move {
            let _busy = busy;
            let (started, result) = match begun {
                Begun::Copy => return (tag, key, Settlement::Ack),
                Begun::Started(started, Err(over)) => (started, over),
                Begun::Started(started, Ok(handling)) => {
                    let handling = std::pin::pin!(handling);
                    (started, caught(handling, &span).await)
                }
            };
            let settlement = settlement_for(result, attempt, &site.policy);
            site.metrics.finished(started, &settlement);
            if !matches!(settlement, Settlement::Ack) {
                site.report(&span, &id, attempt, &settlement);
                if let Some(handled) = &site.handled {
                    handled.release(&id);
                }
            }
            (tag, key, settlement)
        }
    }
}

/// A request responder: decodes the request, calls, and settles with the reply (the
/// encoded result, or the error text), panics included.
pub(crate) struct Responder<M, R, F> {
    pub(crate) respond: F,
    pub(crate) _types: std::marker::PhantomData<fn(M) -> R>,
}

impl<M, R, F, Fut> DeliveryHandler for Responder<M, R, F>
where
    M: Message,
    R: serde::Serialize + Send + 'static,
    F: Fn(M, MessageContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
{
    async fn run(&self, delivery: Delivery, site: &Site) -> Finished {
        let tag = delivery.tag;
        let key = delivery.envelope.key.clone();
        let span = site.handling_span(&delivery.envelope);
        let broker = site.broker.clone();
        let started = site.metrics.started();
        let answer = AssertUnwindSafe(async {
            let request: M = crate::codec::decode(&delivery.envelope).map_err(|e| {
                format!("request is not a valid {}: {e}", std::any::type_name::<M>())
            })?;
            let context = MessageContext::new(delivery.envelope, broker);
            let reply = (self.respond)(request, context)
                .await
                .map_err(|e| e.to_string())?;
            crate::codec::encode(&reply).map_err(|e| format!("reply cannot be encoded: {e}"))
        })
        .catch_unwind()
        .instrument(span)
        .await
        .unwrap_or_else(|panic| Err(format!("responder panicked: {}", panic_text(panic))));
        let settlement = Settlement::Reply(answer);
        site.metrics.finished(started, &settlement);
        (tag, key, settlement)
    }
}

/// Maps a handler's result to what the broker should do with the message.
pub(crate) fn settlement_for(
    result: Result<HandleResult, String>,
    attempt: u32,
    policy: &RetryPolicy,
) -> Settlement {
    let retryable = |error: String, delay: Option<std::time::Duration>| {
        if policy.allows_retry_after(attempt) {
            Settlement::Retry {
                delay: delay.unwrap_or_else(|| policy.delay(attempt)),
                error,
            }
        } else {
            Settlement::DeadLetter(DeadLetter::new(DeadLetterReason::AttemptsExhausted, error))
        }
    };
    match result {
        Ok(HandleResult::Handled) => Settlement::Ack,
        Ok(HandleResult::Undecodable(e)) => {
            Settlement::DeadLetter(DeadLetter::new(DeadLetterReason::Undecodable, e))
        }
        Ok(HandleResult::Failed(e)) if e.is_permanent() => Settlement::DeadLetter(DeadLetter::new(
            DeadLetterReason::PermanentError,
            e.message(),
        )),
        Ok(HandleResult::Failed(e)) => retryable(e.message().to_string(), e.requested_delay()),
        Err(panic) => retryable(format!("handler panicked: {panic}"), None),
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Everything one consumer needs besides its handler.
pub(crate) struct ConsumerSpec {
    pub(crate) subscription: Arc<dyn Subscription>,
    /// Its broker's health record, which keeps its errors.
    pub(crate) status: Arc<BrokerStatus>,
    /// Counts it on its broker from its start until it ends (this spec drops).
    pub(crate) _running: RunningConsumer,
    pub(crate) broker: Arc<str>,
    /// The broker's kind, as `messaging.system` names it.
    pub(crate) system: &'static str,
    pub(crate) channel: Arc<str>,
    pub(crate) group: Arc<str>,
    pub(crate) policy: RetryPolicy,
    pub(crate) prefetch: usize,
    /// Sees every handler call and its outcome (a test's recorder), if any.
    pub(crate) observer: Option<Arc<CallObserver>>,
    /// A moving channel's window of handled ids for the group, if it is moving.
    pub(crate) handled: Option<Arc<HandledIds>>,
    /// Counts the calls running, on a moving channel's old broker.
    pub(crate) busy: Option<Arc<AtomicUsize>>,
}

/// One handler call as a test's recorder sees it: the message as delivered, when the
/// handler was called (tokio's clock, virtual on a paused runtime), and what the call
/// came to.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub(crate) struct ObservedCall {
    pub(crate) envelope: Envelope,
    pub(crate) group: Arc<str>,
    pub(crate) called_at: tokio::time::Instant,
    pub(crate) settlement: Settlement,
}

/// Keeps each observed delivery from its call to its settlement, then hands both to
/// the sink.
pub(crate) struct CallObserver {
    group: Arc<str>,
    sink: Arc<dyn Fn(ObservedCall) + Send + Sync>,
    started: std::sync::Mutex<HashMap<DeliveryTag, (Envelope, tokio::time::Instant)>>,
}

impl CallObserver {
    pub(crate) fn new(group: Arc<str>, sink: Arc<dyn Fn(ObservedCall) + Send + Sync>) -> Self {
        CallObserver {
            group,
            sink,
            started: Default::default(),
        }
    }

    #[cold]
    #[inline(never)]
    fn called(&self, delivery: &Delivery) {
        let now = tokio::time::Instant::now();
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(delivery.tag, (delivery.envelope.clone(), now));
    }

    #[cold]
    #[inline(never)]
    fn settled(&self, tag: DeliveryTag, settlement: &Settlement) {
        let started = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&tag);
        // A delivery given back at shutdown was never handled: not a call.
        if let (Some((envelope, called_at)), false) =
            (started, matches!(settlement, Settlement::Release))
        {
            (self.sink)(ObservedCall {
                envelope,
                group: self.group.clone(),
                called_at,
                settlement: settlement.clone(),
            });
        }
    }
}

/// The handlers being run. Each is polled once when started: one that finishes
/// without waiting (most do) never costs a `FuturesUnordered` task, and leaves its
/// allocation for the next one. One that waits is moved into `waiting` and polled again
/// there with a real waker, so the no-op waker of the first poll is never the one it
/// relies on.
struct Running<F> {
    waiting: FuturesUnordered<Pin<Box<F>>>,
    spare: Option<Pin<Box<F>>>,
}

impl<F: Future<Output = Finished>> Running<F> {
    fn new() -> Self {
        Running {
            waiting: FuturesUnordered::new(),
            spare: None,
        }
    }

    fn start(&mut self, handling: F) -> Option<Finished> {
        let mut slot = match self.spare.take() {
            Some(mut slot) => {
                slot.set(handling);
                slot
            }
            None => Box::pin(handling),
        };
        match slot.as_mut().now_or_never() {
            Some(done) => {
                self.spare = Some(slot);
                Some(done)
            }
            None => {
                self.waiting.push(slot);
                None
            }
        }
    }
}

/// Runs until `stop` turns true, then drains: in-flight handlers finish and are settled,
/// deliveries not yet started are released to the group.
pub(crate) async fn run_consumer<H: DeliveryHandler>(
    spec: ConsumerSpec,
    handler: Arc<H>,
    mut stop: watch::Receiver<bool>,
) {
    let window = Arc::new(Semaphore::new(spec.prefetch));
    // Unbounded on purpose: the window's permits bound what is in it, and the fetcher
    // must never block on it while the runtime drains at shutdown.
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Delivery>>();
    let spares = Arc::new(SpareBatches::default());
    let fetcher = tokio::spawn(
        Fetcher {
            subscription: spec.subscription.clone(),
            window: window.clone(),
            spares: spares.clone(),
            channel: spec.channel.clone(),
            prefetch: spec.prefetch,
            status: spec.status.clone(),
        }
        .run(tx, stop.clone()),
    );

    let settler = Settler {
        subscription: spec.subscription.clone(),
        window: window.clone(),
        channel: spec.channel.clone(),
        broker: spec.broker.clone(),
        observer: spec.observer.clone(),
        status: spec.status.clone(),
    };
    let mut settling = Settling::new(&settler);

    let site = Site {
        broker: spec.broker.clone(),
        system: spec.system,
        channel: spec.channel.clone(),
        group: spec.group.clone(),
        policy: spec.policy,
        metrics: HandlingMetrics::new(&spec.channel, &spec.broker, &spec.group),
        handled: spec.handled.clone(),
        busy: spec.busy.clone(),
    };
    let observer = spec.observer.clone();
    let handle = |delivery: Delivery| {
        if let Some(observer) = &observer {
            observer.called(&delivery);
        }
        handler.run(delivery, &site)
    };
    let mut running = Running::new();
    // Keys with a message being handled, and the messages of that key waiting behind it.
    let mut busy_keys: HashMap<Arc<str>, VecDeque<Delivery>> = HashMap::new();
    let mut finished: Vec<(DeliveryTag, Settlement)> = Vec::new();

    let mut stopping = false;
    while !stopping {
        tokio::select! {
            () = settling.next_settled(), if settling.is_busy() => {}
            Some(done) = running.waiting.next(), if !running.waiting.is_empty() => {
                let mut next = Some(done);
                while let Some(done) = next.take() {
                    finish(done, &mut busy_keys, &mut running, &mut finished, &handle);
                    next = running.waiting.next().now_or_never().flatten();
                }
                settling.add(&mut finished);
            }
            batch = rx.recv() => match batch {
                Some(mut batch) => {
                    // Sized once: grown push by push, it would copy its settlements
                    // over several times per batch.
                    finished.reserve(batch.len());
                    take_each(&mut batch, |delivery| {
                        let done = match &delivery.envelope.key {
                            Some(key) => match busy_keys.get_mut(key) {
                                Some(queue) => {
                                    queue.push_back(delivery);
                                    None
                                }
                                None => {
                                    busy_keys.insert(key.clone(), VecDeque::new());
                                    running.start(handle(delivery))
                                }
                            },
                            None => running.start(handle(delivery)),
                        };
                        if let Some(done) = done {
                            finish(done, &mut busy_keys, &mut running, &mut finished, &handle);
                        }
                    });
                    spares.give(batch);
                    if !finished.is_empty() {
                        settling.add(&mut finished);
                    }
                }
                None => stopping = true,
            },
            _ = stop_requested(&mut stop) => stopping = true,
        }
    }

    // Drain: stop fetching, give back what was not started, finish what was.
    let _ = fetcher.await;
    let mut release: Vec<(DeliveryTag, Settlement)> = Vec::new();
    while let Ok(batch) = rx.try_recv() {
        release.extend(batch.into_iter().map(|d| (d.tag, Settlement::Release)));
    }
    for (_, queue) in busy_keys.drain() {
        release.extend(queue.into_iter().map(|d| (d.tag, Settlement::Release)));
    }
    if !release.is_empty() {
        settling.add(&mut release);
    }
    // Settling the released goes on while the handlers in flight finish.
    loop {
        tokio::select! {
            () = settling.next_settled(), if settling.is_busy() => {}
            done = running.waiting.next(), if !running.waiting.is_empty() => {
                if let Some((tag, _, settlement)) = done {
                    settling.add(&mut vec![(tag, settlement)]);
                }
            }
            else => break,
        }
    }
    if let Err(e) = spec.subscription.close().await {
        tracing::warn!(channel = %spec.channel, broker = %spec.broker, error = %e, "closing subscription failed");
    }
}

/// Moves each item out of `items` into `each`, in order, and leaves `items` empty
/// with its room kept: what `drain(..)` does, without the copy of every item its
/// iterator makes on the way (a delivery is 168 bytes; some 40 instructions a message).
#[inline(always)]
fn take_each<T>(items: &mut Vec<T>, mut each: impl FnMut(T)) {
    let count = items.len();
    let first = items.as_ptr();
    // SAFETY: the length is 0 before any item is read, so the vector drops none of
    // them again, and each of the `count` initialized items is read once, in order,
    // below: moved, not copied. If `each` unwinds, the items not yet read are leaked,
    // never dropped twice.
    unsafe { items.set_len(0) };
    for i in 0..count {
        // SAFETY: `i < count`, within the items the vector held.
        each(unsafe { std::ptr::read(first.add(i)) });
    }
}

/// Records a finished delivery's settlement and passes its key to the next message of
/// that key, which may itself finish at once (a loop, not recursion: a long queue of
/// one key must not grow the stack).
fn finish<F: Future<Output = Finished>>(
    done: Finished,
    busy_keys: &mut HashMap<Arc<str>, VecDeque<Delivery>>,
    running: &mut Running<F>,
    finished: &mut Vec<(DeliveryTag, Settlement)>,
    handle: &impl Fn(Delivery) -> F,
) {
    let mut next = Some(done);
    while let Some((tag, key, settlement)) = next.take() {
        finished.push((tag, settlement));
        let Some(key) = key else { continue };
        let Some(queue) = busy_keys.get_mut(&key) else {
            continue;
        };
        match queue.pop_front() {
            Some(delivery) => next = running.start(handle(delivery)),
            None => {
                busy_keys.remove(&key);
            }
        }
    }
}

/// What settling needs: the subscription, the window its permits go back to, and
/// where a failure is told.
struct Settler {
    subscription: Arc<dyn Subscription>,
    window: Arc<Semaphore>,
    channel: Arc<str>,
    broker: Arc<str>,
    observer: Option<Arc<CallObserver>>,
    status: Arc<BrokerStatus>,
}

/// One call settling deliveries at the broker.
type SettleCall<'a> = Pin<Box<dyn Future<Output = anybroker_brokers::Result<()>> + Send + 'a>>;

/// Settling on the consumer's own task, beside handling: one call to the broker at a
/// time, and what finishes while it is in flight goes with the next one. A task of its
/// own would add a hand-over (a wake-up) to every delivery's way.
struct Settling<'a> {
    settler: &'a Settler,
    /// The call in flight, and how many deliveries it settles.
    in_flight: Option<(usize, SettleCall<'a>)>,
    waiting: Vec<(DeliveryTag, Settlement)>,
}

impl<'a> Settling<'a> {
    fn new(settler: &'a Settler) -> Self {
        Settling {
            settler,
            in_flight: None,
            waiting: Vec::new(),
        }
    }

    fn is_busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Settles what `settlements` holds now, or with the next call if one is in
    /// flight, and leaves it empty. Its room is kept for the next ones: the vectors
    /// change places rather than one being dropped and the other made anew.
    fn add(&mut self, settlements: &mut Vec<(DeliveryTag, Settlement)>) {
        if self.waiting.is_empty() {
            std::mem::swap(&mut self.waiting, settlements);
        } else {
            self.waiting.append(settlements);
        }
        self.start();
    }

    fn start(&mut self) {
        if self.in_flight.is_some() || self.waiting.is_empty() {
            return;
        }
        if let Some(observer) = &self.settler.observer {
            for (tag, s) in &self.waiting {
                observer.settled(*tag, s);
            }
        }
        let n = self.waiting.len();
        // A backend that settles without waiting does so here, with no future and the
        // vector kept for the next settlements.
        if let Some(result) = self.settler.subscription.settle_at_once(&mut self.waiting) {
            debug_assert!(self.waiting.is_empty(), "settle_at_once takes them all");
            self.settled(n, result);
            return;
        }
        let settlements = std::mem::take(&mut self.waiting);
        let mut call = self.settler.subscription.settle(settlements);
        // Polled at once: the broker gets the settlements now, and a call that needs
        // no wait is done here.
        match call.as_mut().now_or_never() {
            Some(result) => self.settled(n, result),
            None => self.in_flight = Some((n, call)),
        }
    }

    /// Waits for the call in flight (cancel-safe: it stays in flight), then as
    /// [`settled`](Self::settled).
    async fn next_settled(&mut self) {
        let Some((n, call)) = self.in_flight.as_mut() else {
            return;
        };
        let result = call.as_mut().await;
        let n = *n;
        self.in_flight = None;
        self.settled(n, result);
    }

    /// Gives the window's permits back once the broker has the settlements, and
    /// starts the next call.
    fn settled(&mut self, n: usize, result: anybroker_brokers::Result<()>) {
        if let Err(e) = result {
            // The broker redelivers what it did not record as settled: at-least-once holds.
            let Settler {
                channel, broker, ..
            } = self.settler;
            tracing::error!(%channel, %broker, error = %e, "settling deliveries failed");
            self.settler.status.failed(&e);
        }
        self.settler.window.add_permits(n);
        self.start();
    }
}

/// Batch vectors the consumer has emptied, for the fetcher to fill again, so that a
/// batch costs no allocation of its own.
#[derive(Default)]
struct SpareBatches(std::sync::Mutex<Vec<Vec<Delivery>>>);

impl SpareBatches {
    /// As many as can be in flight besides the one the fetcher fills (a batch is at
    /// most half the window): the room kept is then at most what the window's
    /// deliveries take anyway, some 1.5 × prefetch × 168 bytes.
    const MOST: usize = 2;

    fn take(&self) -> Vec<Delivery> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give(&self, mut batch: Vec<Delivery>) {
        batch.clear();
        let mut spares = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if spares.len() < Self::MOST {
            spares.push(batch);
        }
    }
}

/// What fetching needs: the subscription, the window its deliveries take permits
/// from, and where it reports a failure.
struct Fetcher {
    subscription: Arc<dyn Subscription>,
    window: Arc<Semaphore>,
    spares: Arc<SpareBatches>,
    channel: Arc<str>,
    prefetch: usize,
    status: Arc<BrokerStatus>,
}

impl Fetcher {
    /// Fetches as many deliveries as the window allows and hands them to the runtime.
    async fn run(self, tx: mpsc::UnboundedSender<Vec<Delivery>>, mut stop: watch::Receiver<bool>) {
        let Fetcher {
            subscription,
            window,
            spares,
            channel,
            prefetch,
            status,
        } = self;
        let mut backoff = std::time::Duration::from_millis(50);
        // Fetch once a quarter of the window is free, not at every freed slot, so a busy
        // consumer reads in batches; and at most half the window at once, so the next
        // batch is on its way while the previous one is handled and acknowledged.
        let min_batch = (prefetch / 4).max(1) as u32;
        let max_batch = (prefetch / 2).max(1);
        let mut spare = spares.take();
        loop {
            let permit = tokio::select! {
                biased;
                _ = stop_requested(&mut stop) => return,
                p = window.acquire_many(min_batch) => match p { Ok(p) => p, Err(_) => return },
            };
            permit.forget();
            let extra = window
                .available_permits()
                .min(max_batch.saturating_sub(min_batch as usize));
            let extra = match window.try_acquire_many(extra as u32) {
                Ok(p) => {
                    p.forget();
                    extra
                }
                Err(_) => 0,
            };
            let want = min_batch as usize + extra;
            // What is ready now comes without a future, into a vector the consumer gave
            // back; recv waits for the rest.
            let result = match subscription.recv_ready(want, &mut spare) {
                Ok(0) => {
                    // recv is cancel-safe (a backend contract), so stopping mid-wait
                    // loses nothing.
                    tokio::select! {
                        r = subscription.recv(want) => r,
                        _ = stop_requested(&mut stop) => { window.add_permits(want); return; }
                    }
                }
                Ok(_) => Ok(std::mem::replace(&mut spare, spares.take())),
                Err(e) => Err(e),
            };
            match result {
                Ok(batch) if batch.is_empty() => {
                    window.add_permits(want);
                    return;
                }
                Ok(batch) => {
                    backoff = std::time::Duration::from_millis(50);
                    window.add_permits(want - batch.len());
                    if tx.send(batch).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    window.add_permits(want);
                    tracing::warn!(channel = %channel, error = %e, "fetching failed; trying again");
                    status.failed(&e);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop_requested(&mut stop) => return,
                    }
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }
}

/// Resolves once stopping was asked for, or the router that could ask is gone.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its drops, so a test sees each item dropped exactly once.
    struct Counted(u32, Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn take_each_moves_every_item_once_in_order_and_keeps_the_room() {
        let drops = Arc::new(AtomicUsize::new(0));
        let mut items: Vec<Counted> = (0..5).map(|i| Counted(i, drops.clone())).collect();
        let room = items.capacity();
        let mut seen = Vec::new();
        take_each(&mut items, |item| seen.push(item.0));
        assert_eq!(seen, [0, 1, 2, 3, 4]);
        assert_eq!(drops.load(Ordering::SeqCst), 5);
        assert!(items.is_empty());
        assert_eq!(items.capacity(), room);
        drop(items);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            5,
            "none dropped again with the vector"
        );
    }

    #[test]
    fn take_each_that_unwinds_drops_no_item_twice() {
        let drops = Arc::new(AtomicUsize::new(0));
        let mut items: Vec<Counted> = (0..5).map(|i| Counted(i, drops.clone())).collect();
        let unwound = std::panic::catch_unwind(AssertUnwindSafe(|| {
            take_each(&mut items, |item| {
                if item.0 == 2 {
                    panic!("the third item");
                }
            })
        }));
        assert!(unwound.is_err());
        assert!(items.is_empty());
        drop(items);
        // The three read were dropped once each; the two after the panic are leaked.
        assert_eq!(drops.load(Ordering::SeqCst), 3);
    }
}
