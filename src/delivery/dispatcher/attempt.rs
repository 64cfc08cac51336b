//! One delivery: starting it (a task per line head), the stale-pair check that may record it
//! superseded instead, and the attempt that sends it and records its outcome durably.
//!
//! Stale pairs (`drop_stale_pairs`): a head that is a trigger, followed in its line by a resolve,
//! is not sent: the events from the head up to the resolve are recorded as superseded, and the
//! resolve too unless PagerDuty has an open alert for the key (an earlier delivered trigger).

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, error, info, warn};

use super::{DeliverySettings, Dispatcher, Done, LineKey, STALE_LOOKAHEAD, STORE_RETRY_MS};
use crate::clock::now_ms;
use crate::delivery::client::Attempt;
use crate::delivery::retry::{classify, retry_delay, systemic, Decision};
use crate::event::EventAction;
use crate::queue::error::StoreError;
use crate::queue::record::{Record, State};
use crate::queue::request::Outcome;
use crate::queue::store::Store;

impl Dispatcher {
    /// Spawns the delivery of `record`, the head of line `key` of routing key `rk`.
    pub(super) fn start(&mut self, key: LineKey, rk: Arc<str>, record: Record) {
        if self.settings.rate_limits.of(&rk) > 0 {
            self.rates.entry(rk.clone()).or_default().in_flight += 1;
        }
        let later: Vec<u64> = match (self.settings.drop_stale_pairs, record.event.action()) {
            (true, Some(EventAction::Trigger)) if record.event.dedup_key().is_some() => self
                .lines
                .get(&key)
                .map(|line| line.seqs.iter().skip(1).take(STALE_LOOKAHEAD).copied().collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let store = self.store.clone();
        let settings = self.settings.clone();
        let handle = self.in_flight.spawn(async move {
            if !later.is_empty() {
                if let Some(done) = supersede(&store, &record, &later).await {
                    return (key, done);
                }
            }
            let done = attempt(&store, &settings, record).await;
            (key, done)
        });
        self.task_lines.insert(handle.id(), (key, rk));
    }
}

/// Stale pairs: when the trigger `head` is followed in its line (`later`, in order) by a resolve
/// of the same routing and dedup key, all still pending, records the head and the events up to
/// the resolve as superseded, and the resolve too unless PagerDuty has an open alert for the key
/// (then the resolve is sent next). `None`: no such pair, or the store could not be read; send
/// the head as usual.
async fn supersede(store: &Store, head: &Record, later: &[u64]) -> Option<Done> {
    let rk = head.event.routing_key().as_str();
    let dedup = head.event.dedup_key()?;
    let mut run = vec![head.seq];
    let mut resolve = None;
    for &seq in later {
        let record = store.get(seq).ok()??;
        if record.state != State::Pending
            || record.event.routing_key().as_str() != rk
            || record.event.dedup_key() != Some(dedup)
        {
            return None;
        }
        if record.event.action() == Some(EventAction::Resolve) {
            resolve = Some(record);
            break;
        }
        run.push(seq);
    }
    let resolve = resolve?;
    let open = store.alert(rk, dedup).ok()?.is_some_and(|a| a.is_open());
    if !open {
        run.push(resolve.seq);
    }
    let mut done = Vec::with_capacity(run.len());
    for seq in run {
        match store.record_outcome(seq, Outcome::Superseded { by: resolve.id.clone() }).await {
            Ok(()) => done.push(seq),
            Err(e) => {
                warn!(error = %e, "cannot record a superseded event; it is sent instead");
                break;
            }
        }
    }
    if done.is_empty() {
        return None;
    }
    info!(
        id = %head.id,
        resolve = %resolve.id,
        routing_key = %head.event.routing_key().redacted(),
        superseded = done.len(),
        resolve_sent = open,
        "a trigger resolved before it was delivered is not sent (delivery.drop_stale_pairs)"
    );
    Some(Done::Superseded(done))
}

/// Sends one event and records the outcome durably.
async fn attempt(store: &Store, settings: &DeliverySettings, record: Record) -> Done {
    let kind = record.event.kind();
    let started = std::time::Instant::now();
    let sent = settings.client.send_to(record.events_url.as_deref(), kind, record.event.request_body()).await;
    let took = started.elapsed();
    let decision = classify(kind, &sent);
    let status = match &sent {
        Attempt::Response { status, .. } => Some(*status),
        Attempt::Transport { .. } => None,
    };
    let rk = record.event.routing_key().redacted();
    if let (Some(action @ (EventAction::Acknowledge | EventAction::Resolve)), Some(dedup)) =
        (record.event.action(), record.event.dedup_key())
    {
        if matches!(store.alert(record.event.routing_key().as_str(), dedup), Ok(None)) && record.attempts == 0 {
            info!(id = %record.id, routing_key = %rk, dedup_key = dedup, %action, "no trigger known for this dedup key; sending anyway (PagerDuty may know it)");
        }
    }
    if let Some(m) = &settings.metrics {
        let outcome = match &decision {
            Decision::Delivered => "delivered",
            Decision::Failed { .. } => "failed",
            Decision::Retry { .. } => "retry",
        };
        let status = match &sent {
            Attempt::Response { status, .. } => Some(*status),
            Attempt::Transport { .. } => None,
        };
        m.delivery(outcome, status, took);
    }
    let failing = &settings.failing;
    match &decision {
        Decision::Delivered if failing.swap(false, std::sync::atomic::Ordering::Relaxed) => {
            info!("deliveries succeed again");
        }
        Decision::Retry { reason, .. } if !failing.swap(true, std::sync::atomic::Ordering::Relaxed) => {
            warn!(%reason, "deliveries are failing; events stay queued and are retried (see `pdrelay queue status`)");
        }
        _ => {}
    }
    let (outcome, done) = match decision {
        Decision::Delivered => {
            debug!(id = %record.id, seq = record.seq, routing_key = %rk, status, "delivered");
            (Outcome::Delivered { status: status.unwrap_or(0) }, Done::Finished)
        }
        Decision::Failed { reason, errors } => {
            error!(id = %record.id, routing_key = %rk, reason = %crate::text::Escaped(&reason), errors = ?errors, "PagerDuty refused the event; it is kept as failed (see `pdrelay queue show`)");
            (Outcome::Failed { status, reason, errors }, Done::Finished)
        }
        Decision::Retry { reason, retry_after, pause_routing_key } => {
            let delay = retry_delay(&settings.reloadable.get().retry, record.attempts + 1, retry_after);
            let at_ms = now_ms() + delay.as_millis() as u64;
            debug!(id = %record.id, routing_key = %rk, %reason, attempts = record.attempts + 1, retry_in = ?delay, "delivery will be retried");
            (
                Outcome::Retry { status, reason, next_attempt_at_ms: at_ms, pause_routing_key },
                Done::RetryAt { at_ms, pause_routing_key, systemic: systemic(status) },
            )
        }
    };
    // Record the outcome; if the store cannot (a full disk), keep trying rather than send the
    // event again: it may already be delivered. The line stays busy meanwhile.
    let mut warned = false;
    loop {
        match store.record_outcome(record.seq, outcome.clone()).await {
            Ok(()) => return done,
            Err(StoreError::Closed) => return done,
            Err(e) => {
                if !warned {
                    warn!(id = %record.id, error = %e, "cannot record a delivery outcome; retrying every second");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(STORE_RETRY_MS)).await;
            }
        }
    }
}
