//! A member of a consumer group: the channel's topic, its delay topic and the retry
//! topics, read with commits that never pass an unfinished message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use rustc_hash::FxHashMap;
use tokio::time::Instant;

use super::codec::{from_record, DUE, GROUP, ORIGINAL_OFFSET, ORIGINAL_PARTITION, ORIGINAL_TOPIC};
use super::error::from_kafka;
use super::offsets::{OffsetTracker, Partition};
use super::connection::{client_config, Client, Connection};
use super::retry_topics::RetryTopics;
use super::names::Topics;
use crate::core::{
    batch_of, Delivery, DeliveryTag, Envelope, Error, ErrorKind, InFlightTable, Result, Settlement,
    SubscribeOptions, Subscription,
};
use crate::unix_micros;

/// What the consumer task and the rebalance callback share.
#[derive(Default)]
struct State {
    offsets: OffsetTracker,
    /// Paused partitions: when their first held record is due, and the records
    /// fetched from them meanwhile, in order (handed out when due, never re-read).
    paused: FxHashMap<Partition, (Instant, std::collections::VecDeque<OwnedMessage>)>,
    /// Partitions the group has assigned to this member.
    assigned: usize,
    /// Per owned partition, the highest offset taken from the stream. librdkafka
    /// restarts a resumed partition where it was when paused, so records taken (and
    /// held) after the pause arrive again; those are dropped, not delivered twice.
    taken: FxHashMap<Partition, i64>,
}

/// Commits the finished prefix of partitions being revoked and forgets them, so the
/// in-flight messages of those partitions are left to their next owner.
struct Rebalancing {
    state: Arc<Mutex<State>>,
}

impl ClientContext for Rebalancing {}

impl ConsumerContext for Rebalancing {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(added) = rebalance {
            self.state.lock().unwrap().assigned += added.count();
            // librdkafka keeps a partition this member paused (for a record not yet
            // due) paused when the group takes it away and gives it back, and nothing
            // held here resumes it any more (revoking forgot the held records): fetch
            // it again, from the committed offset, where the held record is read again.
            if let Err(e) = consumer.resume(added) {
                tracing::warn!(broker = "kafka", error = %e, "cannot resume the partitions assigned");
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let revoked: Vec<Partition> = revoked
            .elements()
            .iter()
            .map(|e| (Arc::from(e.topic()), e.partition()))
            .collect();
        let commits = {
            let mut state = self.state.lock().unwrap();
            for p in &revoked {
                state.paused.remove(p);
                state.taken.remove(p);
            }
            state.assigned = state.assigned.saturating_sub(revoked.len());
            state.offsets.revoke(&revoked)
        };
        if let Some(tpl) = to_list(&commits) {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                tracing::warn!(broker = "kafka", error = %e, "commit of revoked partitions failed; their messages may be handled again");
            }
        }
    }
}

fn to_list(commits: &[(Partition, i64)]) -> Option<TopicPartitionList> {
    if commits.is_empty() {
        return None;
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in commits {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .ok()?;
    }
    Some(tpl)
}

/// Longest wait at subscribe for the group to assign partitions.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

struct InFlight {
    partition: Partition,
    offset: i64,
    envelope: Envelope,
}

pub(crate) struct KafkaSubscription {
    connection: Arc<Connection>,
    channel: Arc<str>,
    group: String,
    /// The retry topics of this group's policy: `C-retry-0 .. C-retry-<n-1>`.
    retry_topics: RetryTopics,
    /// The group member; `close` takes it out and ends it off the runtime
    /// (`leave_group`). `None` once closed.
    consumer: Mutex<Option<Arc<StreamConsumer<Rebalancing>>>>,
    state: Arc<Mutex<State>>,
    in_flight: InFlightTable<InFlight>,
    /// One `recv` at a time reads the stream.
    receiving: tokio::sync::Mutex<()>,
    /// Records read while waiting for the first assignment, handed out first.
    early: Mutex<std::collections::VecDeque<OwnedMessage>>,
    /// Deliveries ready beyond what the last `recv` could take (its `max`).
    ready: Mutex<std::collections::VecDeque<Delivery>>,
    closed: AtomicBool,
}

/// The topics a member of `options.group` reads (the channel, its delay topic, the
/// retry topics of the group's policy and any an earlier policy left, so what is in
/// them is not stranded), created with the dead-letter topic if missing.
pub(crate) async fn group_topics(
    connection: &Connection,
    channel: &str,
    options: &SubscribeOptions,
) -> Result<(Vec<String>, RetryTopics)> {
    let retry_topics = RetryTopics::for_policy(&options.retry)
        .map_err(|e| Error::new(ErrorKind::ConfigInvalid, e))?;
    let mut topics = vec![channel.to_string(), Topics::delay(channel)];
    topics.extend((0..retry_topics.count()).map(|n| Topics::retry(channel, n)));
    let mut all = topics.clone();
    all.push(Topics::dead_letters(channel));
    connection.ensure_topics(&all).await?;
    for earlier in connection.retry_topics_of(channel).await? {
        if !topics.contains(&earlier) {
            topics.push(earlier);
        }
    }
    Ok((topics, retry_topics))
}

impl KafkaSubscription {
    /// The group member, while the subscription is open.
    fn consumer(&self) -> Option<Arc<StreamConsumer<Rebalancing>>> {
        self.consumer.lock().unwrap().clone()
    }

    pub(crate) async fn start(
        connection: Arc<Connection>,
        channel: Arc<str>,
        options: SubscribeOptions,
    ) -> Result<Self> {
        let (topics, retry_topics) = group_topics(&connection, &channel, &options).await?;
        let state: Arc<Mutex<State>> = Arc::default();
        let reset = connection.config().auto_offset_reset.clone();
        let consumer: StreamConsumer<Rebalancing> = client_config(
            connection.config(),
            Client::Consumer,
            &[
                ("group.id", &Topics::group_id(&options.group, &channel)),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", &reset),
                // Eager assignment (librdkafka's default, range then roundrobin): one
                // rebalance hands every member its partitions together, and range
                // splits each topic over the members. cooperative-sticky balances the
                // partition count over all the topics, so a member may get only retry
                // topics (seen on the mock cluster). Set `partition.assignment.strategy`
                // in `consumer_properties` to choose another.
                ("partition.assignment.strategy", "range,roundrobin"),
                (
                    "allow.auto.create.topics",
                    if connection.config().create_topics {
                        "false"
                    } else {
                        "true"
                    },
                ),
            ],
        )
        .create_with_context(Rebalancing {
            state: state.clone(),
        })
        .map_err(|e| from_kafka(e, "subscribe"))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| from_kafka(e, "subscribe"))?;
        let subscription = KafkaSubscription {
            connection,
            channel,
            group: options.group,
            retry_topics,
            consumer: Mutex::new(Some(Arc::new(consumer))),
            state,
            in_flight: InFlightTable::default(),
            receiving: tokio::sync::Mutex::new(()),
            early: Mutex::default(),
            ready: Mutex::default(),
            closed: AtomicBool::new(false),
        };
        subscription.wait_for_assignment().await;
        Ok(subscription)
    }

    /// Joining a group takes a rebalance (or two, with cooperative assignment); until
    /// the member has partitions it reads nothing. Waiting here (reading meanwhile)
    /// makes a started router a consuming one. A member that gets no partition (more
    /// members than partitions) goes on after `JOIN_TIMEOUT`, idle until a rebalance.
    async fn wait_for_assignment(&self) {
        let Some(consumer) = self.consumer() else {
            return;
        };
        let deadline = Instant::now() + JOIN_TIMEOUT;
        while self.state.lock().unwrap().assigned == 0 {
            if Instant::now() >= deadline {
                tracing::warn!(broker = "kafka", channel = %self.channel, group = %self.group, "no partition assigned within {JOIN_TIMEOUT:?}: the group may have more members than the channel's topic has partitions (`partitions` in the broker's config, for topics the backend creates); this member stays idle until a rebalance gives it one");
                return;
            }
            if let Ok(Ok(m)) =
                tokio::time::timeout(Duration::from_millis(50), consumer.recv()).await
            {
                self.early.lock().unwrap().push_back(m.detach());
            }
        }
    }

    fn partition_of(&self, m: &OwnedMessage) -> Partition {
        let topic = if m.topic() == &*self.channel {
            self.channel.clone()
        } else {
            Arc::from(m.topic())
        };
        (topic, m.partition())
    }

    /// Turns a record into a delivery, or handles it here: a record of a paused
    /// partition is held behind it, in order; another group's retry is skipped; a record not yet due pauses its partition at it.
    /// `from_stream`: read from the consumer now, so dropped if this member took it
    /// already (librdkafka re-reads a resumed partition from where it was paused);
    /// false for held records handed out again.
    fn accept(&self, m: OwnedMessage, from_stream: bool) -> Option<Delivery> {
        let partition = self.partition_of(&m);
        let offset = m.offset();
        let mut state = self.state.lock().unwrap();
        if from_stream {
            let taken = state.taken.entry(partition.clone()).or_insert(-1);
            if offset <= *taken {
                return None;
            }
            *taken = offset;
        }
        if let Some((_, held)) = state.paused.get_mut(&partition) {
            held.push_back(m);
            return None;
        }
        let (envelope, routing) = from_record(&self.channel, &m);
        if routing.group.as_deref().is_some_and(|g| g != self.group) {
            state.offsets.delivered(&partition, offset);
            state.offsets.finished(&partition, offset);
            return None;
        }
        if let Some(due) = routing.due {
            let now = unix_micros(SystemTime::now());
            if due > now {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&partition.0, partition.1);
                // Stop fetching the partition; what was fetched waits here, in order.
                if let Some(Err(e)) = self.consumer().map(|c| c.pause(&tpl)) {
                    tracing::warn!(broker = "kafka", error = %e, "cannot pause a partition for a delayed record");
                }
                let at = Instant::now() + Duration::from_micros(due - now);
                state
                    .paused
                    .insert(partition, (at, std::collections::VecDeque::from([m])));
                return None;
            }
        }
        state.offsets.delivered(&partition, offset);
        drop(state);
        let tag = self.in_flight.insert(InFlight {
            partition,
            offset,
            envelope: envelope.clone(),
        });
        Some(Delivery::new(envelope, tag))
    }

    /// Hands out the held records of partitions whose first record is due (a later
    /// one not yet due holds the partition again) and resumes fetching those that are
    /// clear; returns the deliveries and when the next held record is due.
    fn release_due(&self) -> (Vec<Delivery>, Option<Instant>) {
        let now = Instant::now();
        let due: Vec<(Partition, std::collections::VecDeque<OwnedMessage>)> = {
            let mut state = self.state.lock().unwrap();
            let keys: Vec<Partition> = state
                .paused
                .iter()
                .filter(|(_, (at, _))| *at <= now)
                .map(|(p, _)| p.clone())
                .collect();
            keys.into_iter()
                .filter_map(|p| state.paused.remove(&p).map(|(_, held)| (p, held)))
                .collect()
        };
        let mut out = Vec::new();
        for (partition, held) in due {
            for m in held {
                out.extend(self.accept(m, false));
            }
            if !self.state.lock().unwrap().paused.contains_key(&partition) {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&partition.0, partition.1);
                if let Some(Err(e)) = self.consumer().map(|c| c.resume(&tpl)) {
                    tracing::warn!(broker = "kafka", error = %e, "cannot resume a partition");
                }
            }
        }
        let next = self
            .state
            .lock()
            .unwrap()
            .paused
            .values()
            .map(|(at, _)| *at)
            .min();
        (out, next)
    }

    /// Commits, without waiting, what finished since the last commit.
    fn commit_finished(&self, mode: CommitMode) -> Result<()> {
        let commits = self.state.lock().unwrap().offsets.take_commits();
        if let Some(tpl) = to_list(&commits) {
            let Some(consumer) = self.consumer() else {
                return Err(
                    Error::closed("the subscription was closed before its commit")
                        .with_operation("commit")
                        ,
                );
            };
            consumer
                .commit(&tpl, mode)
                .map_err(|e| from_kafka(e, "commit"))?;
        }
        Ok(())
    }

    async fn settle_one(&self, f: &InFlight, settlement: Settlement) -> Result<()> {
        match settlement {
            Settlement::Retry { delay, error } => {
                let mut envelope = f.envelope.clone();
                envelope.record_failure(&error);
                let topic = Topics::retry(&self.channel, self.retry_topics.index_for(delay));
                self.connection
                    .ensure_topics(std::slice::from_ref(&topic))
                    .await?;
                let due = unix_micros(SystemTime::now() + delay).to_string();
                self.connection
                    .produce(&topic, &envelope, &[(DUE, &due), (GROUP, &self.group)])
                    .await
            }
            Settlement::DeadLetter(dead) => {
                // Where it was read from, written only on the dead letter.
                let (topic, partition) = &f.partition;
                let envelope = f
                    .envelope
                    .clone()
                    .with_header(ORIGINAL_TOPIC, &**topic)
                    .with_header(ORIGINAL_PARTITION, partition.to_string())
                    .with_header(ORIGINAL_OFFSET, f.offset.to_string())
                    .into_dead_letter(&dead);
                self.connection
                    .produce(&Topics::dead_letters(&self.channel), &envelope, &[])
                    .await
            }
            #[allow(unreachable_patterns)]
            other => Err(Error::unsupported(format!(
                "settlement {other:?} is not offered by the Kafka backend"
            ))),
        }
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn recv(&self, max: usize) -> Result<Vec<Delivery>> {
        if self.closed.load(Ordering::Acquire) || self.connection.is_closed() {
            return Ok(Vec::new());
        }
        let _one = self.receiving.lock().await;
        let Some(consumer) = self.consumer() else {
            return Ok(Vec::new());
        };
        let max = max.max(1);
        let early: Vec<OwnedMessage> = self.early.lock().unwrap().drain(..).collect();
        for m in early {
            if let Some(d) = self.accept(m, true) {
                self.ready.lock().unwrap().push_back(d);
            }
        }
        let first = loop {
            let (released, next_resume) = self.release_due();
            {
                // Never more than `max` at once: the caller's window counts on it.
                let mut ready = self.ready.lock().unwrap();
                ready.extend(released);
                if !ready.is_empty() {
                    let n = ready.len().min(max);
                    return Ok(ready.drain(..n).collect());
                }
            }
            let wake = next_resume.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let message = tokio::select! {
                m = consumer.recv() => m,
                _ = tokio::time::sleep_until(wake) => continue,
            };
            match message {
                Ok(m) => {
                    if let Some(d) = self.accept(m.detach(), true) {
                        break d;
                    }
                }
                Err(e) => return Err(from_kafka(e, "fetch")),
            }
        };
        let mut out = batch_of(first, max);
        while out.len() < max {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => {
                    if let Some(d) = self.accept(m.detach(), true) {
                        out.push(d);
                    }
                }
                _ => break,
            }
        }
        Ok(out)
    }

    async fn settle(&self, settlements: Vec<(DeliveryTag, Settlement)>) -> Result<()> {
        let mut finished = Vec::with_capacity(settlements.len());
        let mut others = Vec::new();
        let unknown = self
            .in_flight
            .take_each(settlements, |f, settlement| match settlement {
                Settlement::Ack => finished.push(f),
                // Stays unfinished, so its offset is not committed: the group's next
                // owner of the partition reads it again.
                Settlement::Release => {}
                other => others.push((f, other)),
            });
        let mut first_error = None;
        if !others.is_empty() {
            let results = futures::future::join_all(
                others.iter().map(|(f, s)| self.settle_one(f, s.clone())),
            )
            .await;
            for ((f, _), result) in others.into_iter().zip(results) {
                match result {
                    // Produced elsewhere: the original is done.
                    Ok(()) => finished.push(f),
                    // Left unfinished: not committed, so it is read again after a restart.
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        {
            let mut state = self.state.lock().unwrap();
            for f in &finished {
                state.offsets.finished(&f.partition, f.offset);
            }
        }
        self.commit_finished(CommitMode::Async)?;
        if let Some(e) = first_error {
            return Err(e);
        }
        unknown.error()
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let _one = self.receiving.lock().await;
        self.in_flight.drain();
        let Some(consumer) = self.consumer.lock().unwrap().take() else {
            return Ok(());
        };
        let commits = self.state.lock().unwrap().offsets.take_commits();
        let left = leave_group(consumer, to_list(&commits));
        let fail = |kind, message: String| {
            Error::new(kind, message)
                .with_operation("close")
                
        };
        match tokio::time::timeout(CLOSE_TIMEOUT, left).await {
            Ok(Ok(committed)) => {
                committed.map_err(|e| from_kafka(e, "commit"))
            }
            Ok(Err(_)) => Err(fail(
                ErrorKind::Broker,
                "the thread closing the consumer ended without a result".into(),
            )),
            Err(_) => Err(fail(
                ErrorKind::Timeout,
                format!(
                    "the consumer did not leave its group within {CLOSE_TIMEOUT:?}; it goes on \
                     closing in the background, and what it had not committed is handled again"
                ),
            )),
        }
    }
}

impl Drop for KafkaSubscription {
    /// A subscription dropped without `close` still leaves its group off the runtime.
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.get_mut().unwrap().take() {
            drop(leave_group(consumer, None));
        }
    }
}

/// Longest wait in `close` for the consumer to commit and leave its group.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

/// Commits `last_commits`, then drops the consumer, on a thread of its own; the
/// receiver gets the commit's result once the consumer is gone. librdkafka blocks in
/// both: a sync commit until the coordinator answers, the drop until the group has
/// revoked the member's partitions, with no time limit (a coordinator that never
/// answers holds it for good; seen with librdkafka's mock cluster). On a runtime
/// thread that would stall every task scheduled there, and `close` could never return.
fn leave_group(
    consumer: Arc<StreamConsumer<Rebalancing>>,
    last_commits: Option<TopicPartitionList>,
) -> tokio::sync::oneshot::Receiver<rdkafka::error::KafkaResult<()>> {
    let (done, left) = tokio::sync::oneshot::channel();
    let closing = move || {
        let committed = match &last_commits {
            Some(tpl) => consumer.commit(tpl, CommitMode::Sync),
            None => Ok(()),
        };
        drop(consumer);
        let _ = done.send(committed);
    };
    if let Err(e) = std::thread::Builder::new()
        .name("anybroker-kafka-close".into())
        .spawn(closing)
    {
        tracing::warn!(broker = "kafka", error = %e, "cannot start a thread to close a consumer; closing it here");
    }
    left
}
