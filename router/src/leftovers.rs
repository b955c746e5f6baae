//! Messages of a handled channel on a configured broker the router does not consume it
//! from: what a move leaves behind when `moving_from` is dropped before the old broker
//! is drained (or what instances still on an older config keep publishing there).

use std::time::Duration;

use anybroker_brokers::{
    Backlog, Broker, BrokerConfig, BrokerKind, ChannelSpec, ErrorKind, Result,
};

/// What a broker the channel is not consumed from holds of it for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leftover {
    /// The channel.
    pub channel: String,
    /// The broker holding its messages (a key of `[brokers]`).
    pub broker: String,
    /// The group they wait for.
    pub group: String,
    /// What waits there.
    pub held: Backlog,
}

impl Leftover {
    /// The messages it holds: waiting, plus in flight where the broker tells.
    pub fn count(&self) -> u64 {
        self.held.total()
    }
}

/// How long looking at one broker may take, connecting included.
pub(crate) const LOOK_WITHIN: Duration = Duration::from_secs(10);

/// Whether a broker of this kind is worth asking: the embedded broker lives in the
/// process, so a new process finds nothing a former one left; a kind this build leaves
/// out cannot be asked.
pub(crate) fn worth_asking(config: &BrokerConfig) -> bool {
    config.kind() != BrokerKind::Memory && config.kind().is_built()
}

/// What `broker` holds of each `(channel, group)`: those with something left.
pub(crate) async fn held_on(
    broker: &Broker,
    name: &str,
    consumed: &[(String, String)],
) -> Result<Vec<Leftover>> {
    let mut found = Vec::new();
    for (channel, group) in consumed {
        let spec = ChannelSpec::new(channel.as_str(), group.clone());
        let held = match broker.leftover(&spec, group).await {
            Ok(Some(held)) => held,
            Ok(None) => continue,
            // A mode that keeps nothing for a group, or cannot tell.
            Err(e) if e.kind() == ErrorKind::Unsupported => return Ok(found),
            Err(e) => return Err(e.with_broker(name).with_channel(channel.as_str())),
        };
        let leftover = Leftover {
            channel: channel.clone(),
            broker: name.to_string(),
            group: group.clone(),
            held,
        };
        if leftover.count() > 0 {
            found.push(leftover);
        }
    }
    Ok(found)
}

/// Logs each leftover (warn), naming the count and what to do.
pub(crate) fn warn(leftovers: &[Leftover]) {
    for l in leftovers {
        tracing::warn!(
            messaging.destination.name = l.channel.as_str(),
            messaging.consumer.group.name = l.group.as_str(),
            anybroker.broker = l.broker.as_str(),
            anybroker.left_over = l.count(),
            "broker {:?} still holds {} messages of channel {:?} for group {:?}, and this router does not consume the channel there: set moving_from = {:?} in the channel's table until it is drained",
            l.broker,
            l.count(),
            l.channel,
            l.group,
            l.broker,
        );
    }
}
