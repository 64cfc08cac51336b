//! Prometheus metrics: the counters and gauges (prometheus-client) the stages count into, and
//! their text exposition format. Below the queue: the store counts into them and never the other
//! way round; `ops::exposition` reads the queue's gauges and serves or writes the text.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `pdrelay_intake_events_total` | counter | `source`: socket, spool, send, http, ... |
//! | `pdrelay_deliveries_total` | counter | `outcome`: delivered, failed, retry; `status`: HTTP code or `none` |
//! | `pdrelay_delivery_duration_seconds` | histogram | time of one attempt, from sending to the whole answer |
//! | `pdrelay_queue_pending_events` | gauge | pending events (including those waiting for a retry) |
//! | `pdrelay_queue_events` | gauge | `state`: pending (sendable now), waiting (a line held by a retry time or a pause), failed, delivered (kept), superseded (kept) |
//! | `pdrelay_paused_routing_keys` | gauge | routing keys paused by 429 / v1 403 |
//! | `pdrelay_oldest_pending_age_seconds` | gauge | age of the oldest pending event |
//! | `pdrelay_delivery_outage` | gauge | 1 while PagerDuty is held for unreachable (probing), else 0 |
//! | `pdrelay_throttled_routing_keys` | gauge | routing keys whose backlog is over a minute at their rate limit |
//! | `pdrelay_throttled_backlog_seconds` | gauge | `routing_key` (first 6 characters): time to drain a throttled key's backlog at its limit |

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of `pdrelay_deliveries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// delivered, failed or retry.
    pub outcome: String,
    /// HTTP status, or `none` when there was no answer.
    pub status: String,
}

/// Labels of `pdrelay_queue_events`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// pending, waiting, failed, delivered.
    pub state: String,
}

/// Labels of `pdrelay_throttled_backlog_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    /// The routing key, redacted (first 6 characters).
    pub routing_key: String,
}

/// Labels of `pdrelay_intake_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntakeLabels {
    /// Where the events came in.
    pub source: String,
}

/// Labels of `pdrelay_policy_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// routed, dropped, held, cancelled.
    pub action: String,
    /// The route's name, or what held or cancelled it: silence, maintenance, flap_damping.
    pub name: String,
}

/// Labels of `pdrelay_heartbeat_pings_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// ok, error, skipped (delivery did not work).
    pub outcome: String,
}

/// The daemon's metrics. Shared (`Arc`) by the committer, the delivery tasks and the exporter.
pub struct Metrics {
    registry: Registry,
    /// Events durably accepted, by intake.
    pub intake: Family<IntakeLabels, Counter>,
    /// Delivery attempts, by outcome and status.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Duration of each attempt, in seconds.
    pub duration: Histogram,
    pending: Gauge,
    by_state: Family<StateLabels, Gauge>,
    /// Lines whose head waits for a retry time or a pause (set by the dispatcher).
    pub waiting: Gauge,
    paused: Gauge,
    oldest_age: Gauge,
    outage: Gauge,
    throttled: Gauge,
    backlog: Family<KeyLabels, Gauge>,
    /// Events routes, silences and flap damping acted on.
    pub policy: Family<PolicyLabels, Counter>,
    heartbeats: Family<OutcomeLabels, Counter>,
    silent_senders: Gauge,
}

impl Metrics {
    /// A fresh set, registered.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("pdrelay");
        let intake = Family::<IntakeLabels, Counter>::default();
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let (pending, paused, oldest_age) = (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register("intake_events", "Events durably accepted, by intake", intake.clone());
        registry.register("deliveries", "Delivery attempts, by outcome and HTTP status", deliveries.clone());
        registry.register("delivery_duration_seconds", "Duration of one delivery attempt", duration.clone());
        registry.register(
            "queue_pending_events",
            "Pending events, including those waiting for a retry",
            pending.clone(),
        );
        let by_state = Family::<StateLabels, Gauge>::default();
        let waiting = Gauge::default();
        registry.register("queue_events", "Queued events by state", by_state.clone());
        registry.register("paused_routing_keys", "Routing keys paused by a 429 (or v1 403)", paused.clone());
        registry.register("oldest_pending_age_seconds", "Age of the oldest pending event", oldest_age.clone());
        let (outage, throttled) = (Gauge::default(), Gauge::default());
        let backlog = Family::<KeyLabels, Gauge>::default();
        registry.register("delivery_outage", "1 while PagerDuty is held for unreachable and probed", outage.clone());
        registry.register(
            "throttled_routing_keys",
            "Routing keys whose pending backlog is over a minute at their rate limit",
            throttled.clone(),
        );
        registry.register(
            "throttled_backlog_seconds",
            "Time to drain a throttled routing key's backlog at its rate limit",
            backlog.clone(),
        );
        let policy = Family::<PolicyLabels, Counter>::default();
        let heartbeats = Family::<OutcomeLabels, Counter>::default();
        let silent_senders = Gauge::default();
        registry.register(
            "policy_events",
            "Events a route, a silence or flap damping acted on, by action and name",
            policy.clone(),
        );
        registry.register(
            "heartbeat_pings",
            "Heartbeat pings, by outcome (skipped: delivery did not work)",
            heartbeats.clone(),
        );
        registry.register(
            "expected_senders_silent",
            "Expected senders not heard from within their interval",
            silent_senders.clone(),
        );
        Arc::new(Metrics {
            policy,
            heartbeats,
            silent_senders,
            registry,
            intake,
            deliveries,
            duration,
            pending,
            by_state,
            waiting,
            paused,
            oldest_age,
            outage,
            throttled,
            backlog,
        })
    }

    /// Counts one heartbeat: ok, error or skipped.
    pub fn heartbeat(&self, outcome: &str) {
        self.heartbeats.get_or_create(&OutcomeLabels { outcome: outcome.to_owned() }).inc();
    }

    /// Sets how many expected senders are silent now.
    pub fn silent_senders(&self, n: usize) {
        self.silent_senders.set(n as i64);
    }

    /// Counts one event a policy acted on.
    pub fn policy(&self, action: &str, name: &str) {
        self.policy.get_or_create(&PolicyLabels { action: action.to_owned(), name: name.to_owned() }).inc();
    }

    /// Counts one attempt.
    pub fn delivery(&self, outcome: &str, status: Option<u16>, took: Duration) {
        let status = status.map_or_else(|| "none".to_owned(), |s| s.to_string());
        self.deliveries.get_or_create(&DeliveryLabels { outcome: outcome.to_owned(), status }).inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// The exposition text, with the queue's gauges set from `gauges` first.
    pub fn encode(&self, gauges: &QueueGauges) -> String {
        self.pending.set(gauges.pending as i64);
        let waiting = self.waiting.get().min(gauges.pending as i64);
        for (state, n) in [
            ("pending", gauges.pending as i64 - waiting),
            ("waiting", waiting),
            ("failed", gauges.failed as i64),
            ("delivered", gauges.delivered as i64),
            ("superseded", gauges.superseded as i64),
        ] {
            self.by_state.get_or_create(&StateLabels { state: state.to_owned() }).set(n);
        }
        if let Some(paused) = gauges.paused {
            self.paused.set(paused as i64);
        }
        self.oldest_age.set(gauges.oldest_age_seconds as i64);
        self.outage.set(i64::from(gauges.outage));
        self.backlog.clear();
        for (routing_key, seconds) in &gauges.throttled {
            let labels = KeyLabels { routing_key: crate::event::redact_routing_key(routing_key) };
            self.backlog.get_or_create(&labels).set(*seconds as i64);
        }
        self.throttled.set(gauges.throttled.len() as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// The queue's state at one moment, as the gauges show it (read by `ops::exposition` from the
/// store, so that the counters here sit below the store and the store can count into them).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct QueueGauges {
    /// Pending events, those waiting for a retry included.
    pub pending: u64,
    /// Failed events kept.
    pub failed: u64,
    /// Delivered events kept.
    pub delivered: u64,
    /// Superseded events kept.
    pub superseded: u64,
    /// Routing keys paused now (429 / v1 403); `None` when the pauses could not be read (the
    /// gauge keeps its last value).
    pub paused: Option<u64>,
    /// Age of the oldest pending event, in seconds (0 with none).
    pub oldest_age_seconds: u64,
    /// Whether delivery holds PagerDuty for unreachable.
    pub outage: bool,
    /// Routing keys whose backlog is over a minute at their rate limit, with the seconds to
    /// drain it (full routing keys: [`Metrics::encode`] redacts them).
    pub throttled: Vec<(String, u64)>,
}
