//! The comparison as a table for people and as JSON for machines.

use anybroker::Capabilities;
use serde::Serialize;

use crate::workload::{Measured, Outcome};

/// One broker's row.
pub struct Row {
    /// Name under `[brokers]`.
    pub broker: String,
    /// Backend kind.
    pub kind: String,
    /// How the backend carries channels (streams, jetstream, ...).
    pub mode: String,
    /// What happened.
    pub outcome: Outcome,
}

impl Row {
    /// Measured and nothing lost where the mode promises not to lose.
    pub fn passed(&self) -> bool {
        match &self.outcome {
            Outcome::Ran {
                measured,
                capabilities,
            } => measured.publish_errors == 0 && (measured.lost == 0 || !capabilities.persistent),
            Outcome::Failed(_) => false,
        }
    }

    /// The figures, if it ran.
    pub fn measured(&self) -> Option<&Measured> {
        match &self.outcome {
            Outcome::Ran { measured, .. } => Some(measured),
            Outcome::Failed(_) => None,
        }
    }
}

/// The guarantees the table shows, in its column order.
fn guarantees(c: &Capabilities) -> [(&'static str, bool); 5] {
    [
        ("persistent", c.persistent),
        ("groups", c.groups),
        ("ordering", c.ordering_by_key),
        ("delay", c.delay),
        ("dead-letters", c.dead_letters),
    ]
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Prints the table.
pub fn print_table(rows: &[Row]) {
    println!(
        "{:<9} {:<9} {:>11} {:>11} {:>8} {:>8} {:>8} {:>9} {:>5} {:>5}  {:<4} {:<4} {:<4} {:<4} {:<4}",
        "broker", "mode", "publish/s", "e2e/s", "p50 ms", "p99 ms", "max ms", "delivered",
        "dup", "lost", "pers", "grp", "ord", "dly", "dlq"
    );
    for row in rows {
        match &row.outcome {
            Outcome::Ran {
                measured: m,
                capabilities,
            } => {
                let flags: Vec<&str> = guarantees(capabilities)
                    .iter()
                    .map(|(_, b)| yes_no(*b))
                    .collect();
                println!(
                    "{:<9} {:<9} {:>11.0} {:>11.0} {:>8.2} {:>8.2} {:>8.1} {:>9} {:>5} {:>5}  {:<4} {:<4} {:<4} {:<4} {:<4}",
                    row.broker, row.mode, m.publish_per_sec, m.end_to_end_per_sec, m.p50_ms,
                    m.p99_ms, m.max_ms, m.delivered, m.duplicated, m.lost, flags[0], flags[1],
                    flags[2], flags[3], flags[4]
                );
                if m.publish_errors > 0 || m.stale > 0 {
                    println!(
                        "{:<9} {} publishes refused, {} messages of earlier runs handled and ignored",
                        "", m.publish_errors, m.stale
                    );
                }
            }
            Outcome::Failed(error) => {
                println!("{:<9} {:<9} not run: {error}", row.broker, row.mode);
            }
        }
    }
    println!(
        "pers = persistent, grp = groups, ord = ordering by key, dly = delayed publish, dlq = dead letters"
    );
}

#[derive(Serialize)]
struct JsonRow<'a> {
    broker: &'a str,
    kind: &'a str,
    mode: &'a str,
    passed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    figures: Option<&'a Measured>,
    #[serde(skip_serializing_if = "Option::is_none")]
    guarantees: Option<std::collections::BTreeMap<&'static str, bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    messages: usize,
    window: usize,
    brokers: Vec<JsonRow<'a>>,
}

/// The same figures as JSON.
pub fn to_json(rows: &[Row], messages: usize, window: usize) -> String {
    let brokers = rows
        .iter()
        .map(|row| {
            let (figures, guarantees, error) = match &row.outcome {
                Outcome::Ran {
                    measured,
                    capabilities,
                } => (
                    Some(measured),
                    Some(capabilities.flags().into_iter().collect()),
                    None,
                ),
                Outcome::Failed(e) => (None, None, Some(e.as_str())),
            };
            JsonRow {
                broker: &row.broker,
                kind: &row.kind,
                mode: &row.mode,
                passed: row.passed(),
                figures,
                guarantees,
                error,
            }
        })
        .collect();
    serde_json::to_string_pretty(&JsonReport {
        messages,
        window,
        brokers,
    })
    .expect("report serializes")
}
