//! Choosing dead letters to replay or discard.

use super::{header, DeadLetterReason, Envelope, MessageId};

/// Which of a channel's dead letters an operation takes, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub enum DeadLetterSelector {
    /// Every dead letter.
    #[default]
    All,
    /// The dead letters of these message ids.
    Ids(Vec<MessageId>),
    /// The dead letters of this reason.
    Reason(DeadLetterReason),
}

impl DeadLetterSelector {
    /// The dead letters of these message ids.
    pub fn ids<I, S>(ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<MessageId>,
    {
        DeadLetterSelector::Ids(ids.into_iter().map(Into::into).collect())
    }

    /// Whether the dead letter `envelope` is one of those selected.
    pub fn matches(&self, envelope: &Envelope) -> bool {
        match self {
            DeadLetterSelector::All => true,
            DeadLetterSelector::Ids(ids) => ids.contains(&envelope.id),
            DeadLetterSelector::Reason(reason) => {
                envelope
                    .headers
                    .get(header::DEAD_LETTER_REASON)
                    .and_then(|r| DeadLetterReason::parse(r))
                    == Some(*reason)
            }
        }
    }
}

/// What happens to the selected dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetterAction {
    /// Published on the channel again, as the same messages (same id) on attempt 1,
    /// then removed from the dead letters.
    Replay,
    /// Removed from the dead letters.
    Discard,
}

impl DeadLetterAction {
    /// The operation's name, for errors.
    pub fn operation(self) -> &'static str {
        match self {
            DeadLetterAction::Replay => "replay_dead_letters",
            DeadLetterAction::Discard => "discard_dead_letters",
        }
    }
}
