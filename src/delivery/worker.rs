//! The dispatcher: one task that knows, for every pending event, its place in line, and a bounded
//! set of delivery tasks that each send one event and record its outcome.
//!
//! Ordering: events sharing a routing key and dedup key form one line (an "order key"); only the
//! head of a line is ever in flight, and a head waiting for its retry time holds back only its own
//! line. Change events have no dedup key and each forms a line of its own. A 429 (or v1 403)
//! pauses every line of that routing key until the retry time.
//!
//! Retry state lives in the records (`attempts`, `next_attempt_at_ms`) and the pauses in the store,
//! so a restart resumes the schedule instead of sending everything at once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::retry::{classify, retry_delay, Decision};

use crate::event::EventAction;
use crate::pagerduty::client::{Attempt, EventsClient};
use crate::queue::record::{Record, State};
use crate::queue::store::{now_ms, Outcome, PendingEntry, Store, StoreError};

/// Pending entries read from the store per scan step.
const SCAN_CHUNK: usize = 10_000;
/// Wait before trying a line again when recording its outcome failed (disk trouble).
const STORE_RETRY_MS: u64 = 1_000;

/// What the dispatcher needs besides the store.
#[derive(Clone)]
pub struct DeliverySettings {
    /// Shared HTTP client.
    pub client: EventsClient,
    /// Retry timing (reloadable).
    pub live: crate::live::LiveConfig,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// How long in-flight deliveries may run on after shutdown is asked.
    pub shutdown_timeout: Duration,
    /// Set while deliveries fail, so that the change is logged once each way, not per event.
    pub failing: Arc<std::sync::atomic::AtomicBool>,
    /// When set, the dispatcher loop turns at least this often and stamps `heartbeat_ms`, so a
    /// watchdog can tell a stuck loop from an idle one.
    pub heartbeat: Option<Duration>,
    /// Last turn of the dispatcher loop, ms since the epoch.
    pub heartbeat_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Where attempts are counted.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// One line of events that must go out in order.
struct Line {
    routing_key: Arc<str>,
    seqs: VecDeque<u64>,
    /// In `ready`, in `timers` or in flight: exactly one of those holds it while this is set.
    scheduled: bool,
}

/// What a delivery task reports back.
enum Done {
    /// Delivered or failed for good: the head leaves the line.
    Finished,
    /// Waits until this time (ms since the epoch); pause the routing key too if asked.
    RetryAt { at_ms: u64, pause_routing_key: bool },
}

struct Dispatcher {
    store: Store,
    settings: DeliverySettings,
    lines: HashMap<String, Line>,
    /// Lines whose head can be sent now, oldest first.
    ready: VecDeque<String>,
    /// Lines waiting for a time: (ms since the epoch, order key).
    timers: BinaryHeap<Reverse<(u64, String)>>,
    /// Paused routing keys and until when (ms since the epoch).
    paused: HashMap<Arc<str>, u64>,
    routing_keys: HashMap<String, Arc<str>>,
    /// Next sequence number to read from the pending index.
    next_scan: u64,
    in_flight: JoinSet<(String, Done)>,
    task_lines: HashMap<tokio::task::Id, String>,
}

/// Runs delivery until `shutdown` completes, then lets in-flight deliveries finish for up to
/// `shutdown_timeout` and returns; what did not finish stays pending in the store.
///
/// Errors: a store that cannot be read (damage); transient write errors are retried instead.
pub async fn run(
    store: Store,
    settings: DeliverySettings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StoreError> {
    let mut d = Dispatcher {
        store,
        settings,
        lines: HashMap::new(),
        ready: VecDeque::new(),
        timers: BinaryHeap::new(),
        paused: HashMap::new(),
        routing_keys: HashMap::new(),
        next_scan: 0,
        in_flight: JoinSet::new(),
        task_lines: HashMap::new(),
    };
    let now = now_ms();
    for (routing_key, until) in d.store.pauses()? {
        if until > now {
            let rk = d.intern(&routing_key);
            d.paused.insert(rk, until);
        }
    }
    d.scan()?;
    info!(pending = d.lines.values().map(|l| l.seqs.len()).sum::<usize>(), "delivery started");
    tokio::pin!(shutdown);
    let beat = d.settings.heartbeat;
    let stamp = d.settings.heartbeat_ms.clone();
    loop {
        stamp.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        if let Some(m) = &d.settings.metrics {
            m.waiting.set(d.timers.len() as i64);
        }
        d.fill()?;
        let next_timer = d.timers.peek().map(|Reverse((at, _))| *at);
        let timer = async move {
            match next_timer {
                Some(at) => tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = d.store.queued().notified() => {
                d.scan()?;
                for entry in d.store.take_requeued() {
                    d.enqueue(entry);
                }
            }
            Some(joined) = d.in_flight.join_next_with_id(), if !d.in_flight.is_empty() => d.finish(joined),
            _ = timer => d.fire_timers(),
            _ = async { match beat { Some(b) => tokio::time::sleep(b).await, None => std::future::pending().await } } => {}
        }
    }
    let in_flight = d.in_flight.len();
    if in_flight > 0 {
        info!(in_flight, timeout = ?d.settings.shutdown_timeout, "waiting for in-flight deliveries");
        let drain = async { while d.in_flight.join_next().await.is_some() {} };
        if tokio::time::timeout(d.settings.shutdown_timeout, drain).await.is_err() {
            warn!(
                left = d.in_flight.len(),
                "in-flight deliveries cut off at shutdown; they stay queued and will be sent again"
            );
            d.in_flight.abort_all();
        }
    }
    Ok(())
}

impl Dispatcher {
    fn intern(&mut self, routing_key: &str) -> Arc<str> {
        if let Some(rk) = self.routing_keys.get(routing_key) {
            return rk.clone();
        }
        let rk: Arc<str> = Arc::from(routing_key);
        self.routing_keys.insert(routing_key.to_owned(), rk.clone());
        rk
    }

    /// Reads newly pending events from the store into their lines.
    fn scan(&mut self) -> Result<(), StoreError> {
        loop {
            let chunk = self.store.pending_from(self.next_scan, SCAN_CHUNK)?;
            let Some(last) = chunk.last() else {
                return Ok(());
            };
            self.next_scan = last.seq + 1;
            for entry in chunk {
                self.enqueue(entry);
            }
        }
    }

    fn enqueue(&mut self, entry: PendingEntry) {
        let order_key = match &entry.dedup_key {
            Some(dedup) => format!("{}\0{dedup}", entry.routing_key),
            None => format!("{}\0#{}", entry.routing_key, entry.seq),
        };
        let rk = self.intern(&entry.routing_key);
        let line = self.lines.entry(order_key.clone()).or_insert_with(|| Line {
            routing_key: rk,
            seqs: VecDeque::new(),
            scheduled: false,
        });
        line.seqs.push_back(entry.seq);
        if !line.scheduled {
            line.scheduled = true;
            self.ready.push_back(order_key);
        }
    }

    /// Starts deliveries for ready lines up to the concurrency limit.
    fn fill(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        while self.in_flight.len() < self.settings.concurrency {
            let Some(order_key) = self.ready.pop_front() else {
                break;
            };
            let Some(line) = self.lines.get_mut(&order_key) else {
                continue;
            };
            let Some(&seq) = line.seqs.front() else {
                self.lines.remove(&order_key);
                continue;
            };
            if let Some(&until) = self.paused.get(&line.routing_key) {
                if until > now {
                    self.timers.push(Reverse((until, order_key)));
                    continue;
                }
            }
            let record = match self.store.get(seq) {
                Err(e @ StoreError::Corrupt(_)) => {
                    // One unreadable record must not stop delivery of the others.
                    error!(seq, error = %e, "a queued record cannot be read; skipping it (see `pdrelay queue salvage`)");
                    line.seqs.pop_front();
                    self.requeue_or_drop(order_key);
                    continue;
                }
                Err(e) => return Err(e),
                Ok(Some(r)) if r.state == State::Pending => r,
                Ok(_) => {
                    // Finished elsewhere (an operator's purge, say): drop it from the line.
                    line.seqs.pop_front();
                    self.requeue_or_drop(order_key);
                    continue;
                }
            };
            if let Some(at) = record.next_attempt_at_ms.filter(|&at| at > now) {
                self.timers.push(Reverse((at, order_key)));
                continue;
            }
            let store = self.store.clone();
            let settings = self.settings.clone();
            let key_for_task = order_key.clone();
            let handle = self.in_flight.spawn(async move {
                let done = attempt(&store, &settings, record).await;
                (key_for_task, done)
            });
            self.task_lines.insert(handle.id(), order_key);
        }
        Ok(())
    }

    fn requeue_or_drop(&mut self, order_key: String) {
        match self.lines.get_mut(&order_key) {
            Some(line) if !line.seqs.is_empty() => self.ready.push_back(order_key),
            Some(_) => {
                self.lines.remove(&order_key);
            }
            None => {}
        }
    }

    fn finish(&mut self, joined: Result<(tokio::task::Id, (String, Done)), tokio::task::JoinError>) {
        let (order_key, done) = match joined {
            Ok((id, result)) => {
                self.task_lines.remove(&id);
                result
            }
            Err(e) => {
                error!(error = %e, "delivery task ended abnormally; its event stays pending");
                let Some(order_key) = self.task_lines.remove(&e.id()) else {
                    return;
                };
                (order_key, Done::RetryAt { at_ms: now_ms() + STORE_RETRY_MS, pause_routing_key: false })
            }
        };
        match done {
            Done::Finished => {
                if let Some(line) = self.lines.get_mut(&order_key) {
                    line.seqs.pop_front();
                }
                self.requeue_or_drop(order_key);
            }
            Done::RetryAt { at_ms, pause_routing_key } => {
                if pause_routing_key {
                    if let Some(line) = self.lines.get(&order_key) {
                        let rk = line.routing_key.clone();
                        let until = self.paused.entry(rk.clone()).or_insert(0);
                        if *until < at_ms {
                            *until = at_ms;
                            warn!(routing_key = %format!("{}…", &rk[..6.min(rk.len())]), pause_s = (at_ms.saturating_sub(now_ms())) / 1000, "routing key paused by PagerDuty rate limit");
                        }
                    }
                }
                self.timers.push(Reverse((at_ms, order_key)));
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = now_ms();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, order_key)) = self.timers.pop().expect("peeked");
            self.ready.push_back(order_key);
        }
        self.paused.retain(|_, until| *until > now);
    }
}

/// Sends one event and records the outcome durably.
async fn attempt(store: &Store, settings: &DeliverySettings, record: Record) -> Done {
    let kind = record.event.kind();
    let started = std::time::Instant::now();
    let sent = settings.client.send(kind, record.event.request_body()).await;
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
            error!(id = %record.id, routing_key = %rk, %reason, errors = ?errors, "PagerDuty refused the event; it is kept as failed (see `pdrelay queue show`)");
            (Outcome::Failed { status, reason, errors }, Done::Finished)
        }
        Decision::Retry { reason, retry_after, pause_routing_key } => {
            let delay = retry_delay(&settings.live.get().retry, record.attempts + 1, retry_after);
            let at_ms = now_ms() + delay.as_millis() as u64;
            debug!(id = %record.id, routing_key = %rk, %reason, attempts = record.attempts + 1, retry_in = ?delay, "delivery will be retried");
            (
                Outcome::Retry { status, reason, next_attempt_at_ms: at_ms, pause_routing_key },
                Done::RetryAt { at_ms, pause_routing_key },
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
