//! The router's presence on the brokers it uses: each channel it opens on its
//! configured broker is announced there (see `Backend::announce`), so that a router
//! moving the channel away with `moving_keeps_order` can tell when no instance still on
//! the old config uses it.

use std::sync::{Arc, Mutex};

use anybroker_brokers::{Broker, BrokerKind, ChannelSpec, ErrorKind, Presence};
use futures::FutureExt;
use tokio::sync::watch;

/// How long one announcement may take.
const ANNOUNCE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The presences a router holds, withdrawn at its shutdown, and the router's id among
/// the instances announcing a channel on a broker (made on first use).
#[derive(Default, Clone)]
pub(crate) struct Presences(Arc<Held>);

#[derive(Default)]
pub(crate) struct Held {
    presences: Mutex<Vec<Presence>>,
    instance: std::sync::OnceLock<anybroker_brokers::MessageId>,
}

impl Presences {
    /// Announces `channel` on `broker` if the broker answers without waiting (the
    /// embedded broker); else, or if that failed, returns the presences to announce it
    /// in the background with [`announce`](Presences::announce).
    pub(crate) fn announce_now(&self, broker: &Broker, channel: &Arc<str>) -> Option<Presences> {
        if broker.kind() == BrokerKind::Memory {
            let spec = ChannelSpec::new(channel.clone(), String::new());
            // The embedded broker counts routers; it needs no id.
            let announced = broker.announce(&spec, "").now_or_never();
            if let Some(Ok(presence)) = announced {
                self.0
                    .presences
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(presence);
                return None;
            }
        }
        Some(self.clone())
    }

    /// Announces `spec.name` on `broker`; a failed announcement is tried
    /// again every `PRESENCE_TTL` / 3 until it is made or the router stops. Brokers that
    /// cannot tell presence (`Unsupported`) are left alone.
    pub(crate) async fn announce(
        self,
        broker: Broker,
        spec: ChannelSpec,
        mut stop: watch::Receiver<bool>,
    ) {
        let instance = self
            .0
            .instance
            .get_or_init(anybroker_brokers::new_message_id)
            .clone();
        loop {
            // Not cut short by the router stopping: an announcement dropped halfway
            // (a RabbitMQ channel being opened) fails the broker's close; shutdown waits
            // for it, then withdraws it.
            let announced =
                tokio::time::timeout(ANNOUNCE_WITHIN, broker.announce(&spec, &instance))
                    .await
                    .unwrap_or_else(|_| {
                        Err(anybroker_brokers::Error::new(
                            ErrorKind::Timeout,
                            format!("no answer within {ANNOUNCE_WITHIN:?}"),
                        ))
                    });
            match announced {
                Ok(presence) => {
                    self.0
                        .presences
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(presence);
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Unsupported => return,
                Err(_) if *stop.borrow() => return,
                Err(e) => {
                    tracing::debug!(channel = &*spec.name, error = %e, "announcing this router's use of the channel failed; trying again");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(anybroker_brokers::PRESENCE_TTL / 3) => {}
                _ = stop.wait_for(|stopping| *stopping) => return,
            }
        }
    }

    /// Withdraws every presence, each told to its broker before this returns.
    pub(crate) async fn withdraw_all(&self) {
        let all = std::mem::take(&mut *self.0.presences.lock().unwrap_or_else(|p| p.into_inner()));
        for presence in all {
            if let Err(e) = presence.withdraw().await {
                tracing::debug!(error = %e, "withdrawing this router's presence failed; the broker forgets it after its time to live");
            }
        }
    }
}
