//! A member's pull requests and the inbox they are answered on. Owned here rather than
//! by the client's pull stream so that a closing member can stop pulling and keep what
//! the server had already sent: the inbox is unsubscribed (the server then drops this
//! member's pull requests) and every message the client received before that is
//! returned to be given back. The client stops listening once its unsubscribe is
//! written, so a message the server sent just before reading it is lost on the wire
//! and sent again after `ack_wait`; the server's delivery count then reads one high,
//! which is why attempts are counted apart from it (`attempts.rs`).

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use async_nats::{StatusCode, Subscriber};
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

use super::codec::delivery_numbers;
use super::error::from_nats;
use crate::core::{Error, ErrorKind, Result};

/// A pull request the server keeps this long, then answers with 408 and forgets.
const EXPIRES: Duration = Duration::from_secs(10);
/// The server says a pull request is alive this often while it has nothing to send.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Longest a closing member waits for the server to confirm it stopped sending.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

pub(crate) struct Puller {
    consumer: jetstream::consumer::Consumer<pull::Config>,
    context: jetstream::Context,
    inbox: async_nats::Subject,
    subscriber: Subscriber,
    batch: usize,
    /// Messages asked for and neither received nor expired.
    pending: usize,
    /// Received and not yet handed out: kept here while a delivery is being made of
    /// them, so a receive cancelled meanwhile loses none.
    pub(crate) held: std::collections::VecDeque<Held>,
}

/// A message received and not handed out yet.
pub(crate) struct Held {
    pub(crate) message: jetstream::Message,
    /// The server's delivery count and the message's stream sequence, read once from
    /// its reply subject.
    pub(crate) delivered: u64,
    pub(crate) sequence: u64,
    /// The attempt already counted for this delivery, if it was (a redelivery's
    /// count is written before it is handed out): a receive cancelled after that
    /// must not count it again.
    pub(crate) counted: Option<u32>,
}

impl From<jetstream::Message> for Held {
    fn from(message: jetstream::Message) -> Self {
        let (delivered, sequence) = message
            .reply
            .as_deref()
            .and_then(delivery_numbers)
            .map(|(delivered, sequence)| (delivered.max(1), sequence))
            .unwrap_or((1, 0));
        Held {
            message,
            delivered,
            sequence,
            counted: None,
        }
    }
}

impl Puller {
    pub(crate) async fn open(
        client: &async_nats::Client,
        context: &jetstream::Context,
        consumer: &jetstream::consumer::Consumer<pull::Config>,
        batch: usize,
    ) -> Result<Self> {
        let inbox = async_nats::Subject::from(client.new_inbox());
        let subscriber = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| from_nats(e, "subscribe"))?;
        Ok(Puller {
            consumer: consumer.clone(),
            context: context.clone(),
            inbox,
            subscriber,
            batch: batch.max(1),
            pending: 0,
            held: Default::default(),
        })
    }

    /// Asks for the rest of the batch once half of what was asked for has come.
    pub(crate) async fn ask(&mut self) -> Result<()> {
        if self.pending > self.batch / 2 {
            return Ok(());
        }
        let more = self.batch - self.pending;
        let request = pull::BatchConfig {
            batch: more,
            expires: Some(EXPIRES),
            idle_heartbeat: HEARTBEAT,
            ..Default::default()
        };
        self.consumer
            .request_batch(request, self.inbox.clone())
            .await
            .map_err(|e| from_nats(e, "fetch"))?;
        self.pending += more;
        Ok(())
    }

    /// The next message, asking for more as needed.
    pub(crate) async fn next(&mut self) -> Result<jetstream::Message> {
        loop {
            self.ask().await?;
            // Silence past a heartbeat means the requests are gone (the server
            // restarted, or the connection was replaced): ask again.
            match tokio::time::timeout(2 * HEARTBEAT, self.subscriber.next()).await {
                Err(_) => self.pending = 0,
                Ok(None) => {
                    return Err(Error::new(ErrorKind::Closed, "pull inbox closed")
                        
                        .with_operation("fetch"))
                }
                Ok(Some(m)) => {
                    if let Some(m) = self.read(m)? {
                        return Ok(m);
                    }
                }
            }
        }
    }

    /// A message that has already arrived, if any; asks for nothing.
    pub(crate) fn try_next(&mut self) -> Option<jetstream::Message> {
        while let Some(Some(m)) = self.subscriber.next().now_or_never() {
            if let Ok(Some(m)) = self.read(m) {
                return Some(m);
            }
        }
        None
    }

    /// A stream message, or `None` for the server's word about the pull requests.
    fn read(&mut self, m: async_nats::Message) -> Result<Option<jetstream::Message>> {
        match m.status {
            None | Some(StatusCode::OK) => {
                self.pending = self.pending.saturating_sub(1);
                Ok(Some(jetstream::Message {
                    message: m,
                    context: self.context.clone(),
                }))
            }
            Some(StatusCode::IDLE_HEARTBEAT) => Ok(None),
            // A request expired or ended (408, 409): what it had left will not come.
            Some(StatusCode::TIMEOUT) | Some(StatusCode::REQUEST_TERMINATED) => {
                let left = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Pending-Messages"))
                    .and_then(|v| v.as_str().parse().ok())
                    .unwrap_or(self.pending);
                self.pending = self.pending.saturating_sub(left);
                Ok(None)
            }
            Some(StatusCode::NOT_FOUND) => {
                self.pending = 0;
                Ok(None)
            }
            Some(status) => Err(Error::new(
                ErrorKind::Broker,
                format!(
                    "pull request answered {status}: {}",
                    m.description.as_deref().unwrap_or("")
                ),
            )
            .set_retryable(true)
            
            .with_operation("fetch")),
        }
    }

    /// Stops pulling: unsubscribes the inbox (the server then drops this member's pull
    /// requests, nobody listening) and returns what it received before that and had not
    /// handed out, to be given back. What arrives after the unsubscribe is not
    /// returned: the server may already have taken such a delivery back and sent the
    /// message elsewhere (seen on nats-server 2.9: the message sent again with its
    /// delivery count unchanged), and a give-back of a delivery the server replaced
    /// makes it send the message once more while the other copy is in flight. Left
    /// alone, it comes back after `ack_wait` if the server did not take it back.
    pub(crate) async fn stop(mut self) -> Vec<Held> {
        let mut before: Vec<Held> = self.held.drain(..).collect();
        while let Some(m) = self.try_next() {
            before.push(m.into());
        }
        if self.subscriber.drain().await.is_err() {
            return before;
        }
        let deadline = Instant::now() + DRAIN_LIMIT;
        let mut after = 0;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.subscriber.next()).await {
            if let Ok(Some(_)) = self.read(m) {
                after += 1;
            }
        }
        if after > 0 {
            tracing::debug!(after, "messages that arrived as the member stopped pulling are left to the server");
        }
        before
    }
}
