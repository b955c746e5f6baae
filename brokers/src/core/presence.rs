//! Presence: a router says it uses a channel on a broker (it publishes there or
//! handles from there), so a router moving the channel away from that broker can tell
//! when no instance on an older config uses it there any more.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use std::time::Duration;

/// How long a broker remembers a presence that is not renewed: a process that died
/// without withdrawing is forgotten after this.
pub const PRESENCE_TTL: Duration = Duration::from_secs(30);

/// Now, in unix milliseconds: the clock presences' expiry times are written and read
/// by, where a broker keeps them as values (each router's own clock).
#[allow(dead_code)] // the server backends' only
pub(crate) fn presence_clock() -> u64 {
    super::unix_millis(std::time::SystemTime::now())
}

/// How often a presence kept by a key with a time to live is renewed.
pub(crate) const PRESENCE_RENEW_EVERY: Duration = Duration::from_secs(10);

/// This process's use of one channel on one broker, announced with
/// [`Backend::announce`](crate::Backend::announce). [`withdraw`](Presence::withdraw)
/// ends it; dropped, it is withdrawn in the background (and if the process dies, the
/// broker forgets it after [`PRESENCE_TTL`] or when its connection closes).
pub struct Presence {
    /// Keeps it: a renewing task, a consumer.
    _held: Option<Box<dyn Send + Sync>>,
    /// A count of routers in the process (the embedded broker's), less one when dropped.
    counted: Option<Arc<dyn RouterCount>>,
    withdraw: Option<Withdraw>,
}

type Withdraw = Box<dyn FnOnce() -> BoxFuture<'static, crate::Result<()>> + Send + Sync>;

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence").finish_non_exhaustive()
    }
}

impl Presence {
    /// A presence that lasts as long as `held` does: its drop withdraws it.
    pub fn held(held: impl Send + Sync + 'static) -> Self {
        Presence {
            _held: Some(Box::new(held)),
            counted: None,
            withdraw: None,
        }
    }

    /// A presence counted in `routers`, already raised by one for it: lowered by one
    /// when the presence ends.
    pub fn counted(routers: Arc<dyn RouterCount>) -> Self {
        Presence {
            _held: None,
            counted: Some(routers),
            withdraw: None,
        }
    }

    /// A presence the broker keeps for [`PRESENCE_TTL`], renewed by `renew` every
    /// [`PRESENCE_RENEW_EVERY`] (a failed renewal is logged and tried again at the next
    /// turn) and removed by `withdraw`. The first announcement is the caller's, so its
    /// error reaches the caller.
    #[allow(dead_code)] // the server backends' only
    pub(crate) fn renewed<R, RF, W, WF>(mut renew: R, withdraw: W) -> Self
    where
        R: FnMut() -> RF + Send + 'static,
        RF: Future<Output = crate::Result<()>> + Send,
        W: FnOnce() -> WF + Send + Sync + 'static,
        WF: Future<Output = crate::Result<()>> + Send + 'static,
    {
        let renewing = tokio::spawn(async move {
            loop {
                tokio::time::sleep(PRESENCE_RENEW_EVERY).await;
                if let Err(e) = renew().await {
                    tracing::debug!(error = %e, "renewing this router's presence failed; trying again");
                }
            }
        });
        Presence {
            _held: Some(Box::new(AbortOnDrop(renewing))),
            counted: None,
            withdraw: Some(Box::new(move || Box::pin(withdraw()))),
        }
    }

    /// Ends the presence and returns once the broker was told.
    pub async fn withdraw(mut self) -> crate::Result<()> {
        match self.withdraw.take() {
            Some(withdraw) => withdraw().await,
            None => Ok(()),
        }
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        if let Some(routers) = self.counted.take() {
            routers.routers().fetch_sub(1, Ordering::SeqCst);
        }
        // Without a runtime (dropped after it ended) there is nothing to withdraw with:
        // the time to live does it.
        let (Some(withdraw), Ok(runtime)) =
            (self.withdraw.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = withdraw().await {
                tracing::debug!(error = %e, "withdrawing this router's presence failed; the broker forgets it after its time to live");
            }
        });
    }
}

/// What holds a count of the routers present, in the process.
pub trait RouterCount: Send + Sync {
    /// The count.
    fn routers(&self) -> &AtomicU64;
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
