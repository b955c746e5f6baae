//! Metrics (feature `metrics`), through the `metrics` facade so any exporter works
//! (Prometheus, StatsD, OpenTelemetry's). Labels are bounded: `channel`, `broker` (its
//! configured name), `group`, and a dead letter's `reason`; never a message id.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `anybroker_published_total` | counter | channel, broker |
//! | `anybroker_publish_errors_total` | counter | channel, broker |
//! | `anybroker_delivered_total` | counter: handler calls, every attempt | channel, broker, group |
//! | `anybroker_handled_total` | counter: calls the handler finished | channel, broker, group |
//! | `anybroker_retried_total` | counter | channel, broker, group |
//! | `anybroker_dead_lettered_total` | counter | channel, broker, group, reason |
//! | `anybroker_handler_duration_seconds` | histogram | channel, broker, group |
//! | `anybroker_in_flight` | gauge: handler calls running | channel, broker, group |
//! | `anybroker_backlog_waiting` | gauge: messages not yet handed to a member | channel, broker, group |
//! | `anybroker_backlog_in_flight` | gauge: handed out, not settled (where told) | channel, broker, group |
//!
//! The handles are registered once per channel route and per consumer, so the
//! recorder must be installed before the router starts. Without the feature every
//! call here is nothing.

use anybroker_brokers::Settlement;

/// Metric names, as exporters show them; the table in the README says what each counts.
pub mod names {
    /// Publishes the broker accepted.
    pub const PUBLISHED: &str = "anybroker_published_total";
    /// Publishes that failed.
    pub const PUBLISH_ERRORS: &str = "anybroker_publish_errors_total";
    /// Handler calls, every attempt.
    pub const DELIVERED: &str = "anybroker_delivered_total";
    /// Handler calls that finished the message.
    pub const HANDLED: &str = "anybroker_handled_total";
    /// Handler calls whose message is retried.
    pub const RETRIED: &str = "anybroker_retried_total";
    /// Messages dead-lettered, by `reason`.
    pub const DEAD_LETTERED: &str = "anybroker_dead_lettered_total";
    /// How long handler calls took, in seconds.
    pub const HANDLER_DURATION: &str = "anybroker_handler_duration_seconds";
    /// Handler calls running now.
    pub const IN_FLIGHT: &str = "anybroker_in_flight";
    /// A group's messages not yet handed to a member (sampled every 10 s).
    pub const BACKLOG_WAITING: &str = "anybroker_backlog_waiting";
    /// A group's messages handed out and not yet settled, where the broker tells it.
    pub const BACKLOG_IN_FLIGHT: &str = "anybroker_backlog_in_flight";
}

/// How often a handler's group has its backlog read into the gauges.
#[cfg(feature = "metrics")]
pub(crate) const BACKLOG_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The backlog gauges of one group.
#[cfg(feature = "metrics")]
pub(crate) struct BacklogGauges {
    waiting: metrics::Gauge,
    in_flight: metrics::Gauge,
}

#[cfg(feature = "metrics")]
impl BacklogGauges {
    pub(crate) fn new(
        channel: &std::sync::Arc<str>,
        broker: &std::sync::Arc<str>,
        group: &std::sync::Arc<str>,
    ) -> Self {
        let labels = [
            ("channel", channel.clone()),
            ("broker", broker.clone()),
            ("group", group.clone()),
        ];
        BacklogGauges {
            waiting: metrics::gauge!(names::BACKLOG_WAITING, &labels),
            in_flight: metrics::gauge!(names::BACKLOG_IN_FLIGHT, &labels),
        }
    }

    pub(crate) fn record(&self, backlog: &anybroker_brokers::Backlog) {
        self.waiting.set(backlog.waiting as f64);
        if let Some(n) = backlog.in_flight {
            self.in_flight.set(n as f64);
        }
    }
}

/// The publish counters of one channel on one broker.
pub(crate) struct PublishMetrics {
    #[cfg(feature = "metrics")]
    published: metrics::Counter,
    #[cfg(feature = "metrics")]
    errors: metrics::Counter,
}

impl PublishMetrics {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(channel: &std::sync::Arc<str>, broker: &std::sync::Arc<str>) -> Self {
        PublishMetrics {
            #[cfg(feature = "metrics")]
            published: metrics::counter!(names::PUBLISHED,
                "channel" => channel.clone(), "broker" => broker.clone()),
            #[cfg(feature = "metrics")]
            errors: metrics::counter!(names::PUBLISH_ERRORS,
                "channel" => channel.clone(), "broker" => broker.clone()),
        }
    }

    #[inline(always)]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn record<T, E>(&self, result: &Result<T, E>) {
        #[cfg(feature = "metrics")]
        match result {
            Ok(_) => self.published.increment(1),
            Err(_) => self.errors.increment(1),
        }
    }
}

/// The handling metrics of one consumer (channel, broker, group).
pub(crate) struct HandlingMetrics {
    #[cfg(feature = "metrics")]
    labels: [(&'static str, std::sync::Arc<str>); 3],
    #[cfg(feature = "metrics")]
    delivered: metrics::Counter,
    #[cfg(feature = "metrics")]
    handled: metrics::Counter,
    #[cfg(feature = "metrics")]
    retried: metrics::Counter,
    #[cfg(feature = "metrics")]
    duration: metrics::Histogram,
    #[cfg(feature = "metrics")]
    in_flight: metrics::Gauge,
}

/// When a handler call started (nothing without the feature).
pub(crate) struct CallStarted {
    #[cfg(feature = "metrics")]
    at: std::time::Instant,
}

impl HandlingMetrics {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(
        channel: &std::sync::Arc<str>,
        broker: &std::sync::Arc<str>,
        group: &std::sync::Arc<str>,
    ) -> Self {
        #[cfg(feature = "metrics")]
        {
            let labels = || {
                [
                    ("channel", channel.clone()),
                    ("broker", broker.clone()),
                    ("group", group.clone()),
                ]
            };
            HandlingMetrics {
                delivered: metrics::counter!(names::DELIVERED, &labels()),
                handled: metrics::counter!(names::HANDLED, &labels()),
                retried: metrics::counter!(names::RETRIED, &labels()),
                duration: metrics::histogram!(names::HANDLER_DURATION, &labels()),
                in_flight: metrics::gauge!(names::IN_FLIGHT, &labels()),
                labels: labels(),
            }
        }
        #[cfg(not(feature = "metrics"))]
        HandlingMetrics {}
    }

    /// A handler call starts.
    #[inline(always)]
    pub(crate) fn started(&self) -> CallStarted {
        #[cfg(feature = "metrics")]
        {
            self.delivered.increment(1);
            self.in_flight.increment(1.0);
            CallStarted {
                at: std::time::Instant::now(),
            }
        }
        #[cfg(not(feature = "metrics"))]
        CallStarted {}
    }

    /// A handler call came to `settlement`.
    #[inline(always)]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn finished(&self, started: CallStarted, settlement: &Settlement) {
        #[cfg(feature = "metrics")]
        {
            self.duration.record(started.at.elapsed().as_secs_f64());
            self.in_flight.decrement(1.0);
            match settlement {
                Settlement::Ack | Settlement::Reply(Ok(_)) => self.handled.increment(1),
                Settlement::Retry { .. } => self.retried.increment(1),
                Settlement::DeadLetter(dead) => self.dead_lettered(dead.reason.as_str()),
                _ => {}
            }
        }
    }

    /// Dead letters are rare, and counted by reason: their counter is looked up when one
    /// happens.
    #[cfg(feature = "metrics")]
    #[cold]
    fn dead_lettered(&self, reason: &'static str) {
        let [(c, channel), (b, broker), (g, group)] = &self.labels;
        metrics::counter!(names::DEAD_LETTERED,
            *c => channel.clone(), *b => broker.clone(), *g => group.clone(), "reason" => reason)
        .increment(1);
    }
}
