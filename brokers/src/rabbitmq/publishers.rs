//! Confirm-mode channels lent to one caller at a time, for publishes that can come back
//! unroutable (see `connection`).
//!
//! With several callers' publishes in flight on one channel, one caller could be told
//! that another's message came back (a false "unroutable") and the other that its
//! message was taken (a retry into an expired queue, lost). A channel lent to one
//! caller carries only that caller's publishes; a caller with several in flight at
//! once (a batch) tells their returns apart by message id once every one is confirmed.

use std::sync::Mutex;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::error::from_lapin;
use crate::core::Result;

/// How many channels a connection lends at most: as many publishes (or batches) that
/// can come back are in flight at once; more wait for a channel to come back. Far
/// below RabbitMQ's default `channel_max` (2,047), which subscriptions share.
pub(crate) const MAX_PUBLISHING_CHANNELS: usize = 64;

/// The idle publishing channels of one connection, and the right to open more.
pub(crate) struct Publishers {
    idle: Mutex<Vec<Channel>>,
    lending: Semaphore,
}

impl Default for Publishers {
    fn default() -> Publishers {
        Publishers {
            idle: Mutex::new(Vec::new()),
            lending: Semaphore::new(MAX_PUBLISHING_CHANNELS),
        }
    }
}

impl Publishers {
    /// A channel for the caller alone until it gives it back: an idle one that is
    /// still open, else a new one on `connection`.
    pub(crate) async fn lend<'a>(&'a self, connection: &Connection) -> Result<Lent<'a>> {
        let permit = self
            .lending
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let idle = loop {
            let Some(channel) = self.idle.lock().unwrap().pop() else {
                break None;
            };
            // One the server closed (a refused publish closes its channel) is dropped.
            if channel.status().connected() {
                break Some(channel);
            }
        };
        let channel = match idle {
            Some(channel) => channel,
            // Boxed: opening is seldom, and its future would make every lending's
            // (every publish's) its size.
            None => Box::pin(open_confirming(connection)).await?,
        };
        Ok(Lent {
            channel: Some(channel),
            idle: &self.idle,
            _permit: permit,
        })
    }
}

/// Opens a channel in confirm mode.
pub(crate) async fn open_confirming(connection: &Connection) -> Result<Channel> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| from_lapin(e, "open channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| from_lapin(e, "confirm select"))?;
    Ok(channel)
}

/// A publishing channel lent to one caller.
pub(crate) struct Lent<'a> {
    channel: Option<Channel>,
    idle: &'a Mutex<Vec<Channel>>,
    _permit: SemaphorePermit<'a>,
}

impl Lent<'_> {
    pub(crate) fn channel(&self) -> &Channel {
        self.channel.as_ref().expect("held until given back")
    }

    /// Gives the channel back once every publish made on it was answered.
    pub(crate) fn give_back(mut self) {
        if let Some(channel) = self.channel.take() {
            if channel.status().connected() {
                self.idle.lock().unwrap().push(channel);
            }
        }
    }
}

impl Drop for Lent<'_> {
    /// Not given back: the caller stopped waiting mid-publish. An answer still on its
    /// way must not reach the next borrower, so the channel is closed, not reused.
    fn drop(&mut self) {
        let Some(channel) = self.channel.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = channel.close(200, "abandoned".into()).await;
            });
        }
    }
}
