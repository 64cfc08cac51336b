//! Prometheus metrics, in the text exposition format (prometheus-client), served on an opt-in
//! listener (`[metrics] listen`, loopback by default when set) or written to a file for
//! node_exporter's textfile collector (`[metrics] textfile`).
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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing::warn;

use crate::intake::Shutdown;
use crate::queue::clock::now_ms;
use crate::queue::store::Store;

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

    /// The exposition text, with the queue gauges read from `store` now.
    pub fn render(&self, store: &Store) -> String {
        let now = now_ms();
        let pending = store.pending_count() as i64;
        self.pending.set(pending);
        let waiting = self.waiting.get().min(pending);
        let (failed, delivered) = store.finished_counts();
        for (state, n) in [
            ("pending", pending - waiting),
            ("waiting", waiting),
            ("failed", failed as i64),
            ("delivered", delivered as i64),
            ("superseded", store.superseded_count() as i64),
        ] {
            self.by_state.get_or_create(&StateLabels { state: state.to_owned() }).set(n);
        }
        if let Ok(pauses) = store.pauses() {
            self.paused.set(pauses.iter().filter(|(_, until)| *until > now).count() as i64);
        }
        let oldest = store
            .pending_from(0, 1)
            .ok()
            .and_then(|p| p.first().map(|e| e.seq))
            .and_then(|seq| store.get(seq).ok().flatten())
            .map(|r| now.saturating_sub(r.accepted_at_ms) / 1000);
        self.oldest_age.set(oldest.unwrap_or(0) as i64);
        self.outage.set(i64::from(store.outage_since().is_some()));
        let limits = store.rate_limits();
        self.backlog.clear();
        let mut throttled = 0;
        for (rk, n) in store.pending_by_key() {
            let limit = limits.of(&rk);
            if limit > 0 && n > u64::from(limit) {
                throttled += 1;
                let labels = KeyLabels { routing_key: crate::event::redact_routing_key(&rk) };
                self.backlog.get_or_create(&labels).set(crate::admin::drain_seconds(n, limit) as i64);
            }
        }
        self.throttled.set(throttled);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Serves `GET /metrics` on `listener` until shutdown (one small HTTP/1.1 answer per request).
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, store: Store, mut shutdown: Shutdown) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut stream, _) = tokio::select! {
            _ = shutdown.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        };
        let (metrics, store) = (metrics.clone(), store.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await else { return };
            let request = String::from_utf8_lossy(&buf[..n]);
            let (status, body, kind) = if request.starts_with("GET /metrics ") || request.starts_with("GET / ") {
                ("200 OK", metrics.render(&store), "text/plain; version=0.0.4; charset=utf-8")
            } else {
                ("404 Not Found", "GET /metrics\n".to_owned(), "text/plain")
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}

/// Writes the metrics to `path` every `interval` (temp file, then rename: node_exporter never
/// reads half a file) until shutdown.
pub async fn write_textfile(
    path: PathBuf,
    interval: Duration,
    metrics: Arc<Metrics>,
    store: Store,
    mut shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = write_atomically(&path, metrics.render(&store).as_bytes()) {
            warn!(file = %path.display(), error = %e, "cannot write the metrics file");
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, IntakeDefaults};
    use crate::queue::request::NewEvent;

    #[tokio::test]
    async fn throttled_keys_and_their_backlog_time_are_exported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q")).unwrap();
        let events = (0..250)
            .map(|n| {
                let rk = if n < 240 { "A".repeat(32) } else { "B".repeat(32) };
                let text = format!(
                    r#"{{"routing_key":"{rk}","event_action":"trigger","dedup_key":"d{n}","payload":{{"summary":"s","source":"h","severity":"info"}}}}"#
                );
                NewEvent { id: None, intake: "socket", event: Event::from_json(text.as_bytes(), &IntakeDefaults::default()).unwrap() }
            })
            .collect();
        store.insert(events).await.unwrap();
        store.set_outage(Some(now_ms()));
        let text = Metrics::new().render(&store);
        assert!(text.contains("pdrelay_throttled_routing_keys 1\n"), "{text}");
        assert!(text.contains("pdrelay_throttled_backlog_seconds{routing_key=\"AAAAAA…\"} 120\n"), "{text}");
        assert!(!text.contains("BBBBBB"), "a key under its limit is not listed: {text}");
        assert!(text.contains("pdrelay_delivery_outage 1\n"), "{text}");
        store.set_outage(None);
        assert!(Metrics::new().render(&store).contains("pdrelay_delivery_outage 0\n"));
        store.close();
    }
}
