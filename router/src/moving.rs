//! A channel moving from one broker to another (`moving_from` in its config): where
//! the old broker stands.

use anybroker_brokers::Backlog;

/// What a moving channel's old broker still holds for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MoveStatus {
    /// The broker the channel moves away from (`moving_from`).
    pub from: String,
    /// The broker it moves to (`broker`).
    pub to: String,
    /// The group asked about.
    pub group: String,
    /// What the old broker holds for the group.
    pub old: Backlog,
    /// Nothing left there for the group: once every instance runs the moving config
    /// and every group is drained, `moving_from` can be dropped.
    pub drained: bool,
    /// Routers that announced they use the channel on the old broker: instances still
    /// on the old config (publishing or handling there). `None` where the old broker
    /// cannot tell (Kafka, and modes that keep nothing).
    pub old_config_routers: Option<u64>,
}

impl MoveStatus {
    pub(crate) fn new(
        from: &str,
        to: &str,
        group: &str,
        old: Backlog,
        old_config_routers: Option<u64>,
    ) -> Self {
        MoveStatus {
            from: from.to_string(),
            to: to.to_string(),
            group: group.to_string(),
            drained: old.is_empty(),
            old,
            old_config_routers,
        }
    }
}
