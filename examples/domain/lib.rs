//! The demo domain: the alarm pair, as an application would declare it. Shared by the
//! examples, the conformance suite and the benchmarks; the library itself knows
//! nothing of it.

use serde::{Deserialize, Serialize};

/// An alarm for the chat bot.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AlarmToBot {
    /// What to say.
    pub message: String,
}

/// An alarm for the log.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AlarmToLog {
    /// What happened.
    pub message: String,
    /// Optional detail.
    pub extra: Option<String>,
}

anybroker::channels! {
    /// The demo's channels.
    pub BrokerChannel {
        AlarmToBot: AlarmToBot = "alarm.to.bot",
        AlarmToLog: AlarmToLog = "alarm.to.log",
    }
}

/// The AlarmToLog payload used by benchmarks and load tests.
pub fn sample_alarm_to_log(i: usize) -> AlarmToLog {
    AlarmToLog {
        message: format!("disk usage above 90% on node-{}", i % 64),
        extra: Some(format!("seq={i}")),
    }
}
