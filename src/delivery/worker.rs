//! The dispatcher: one task that holds a bounded window of pending events in memory, knows each
//! one's place in line, and runs a bounded set of delivery tasks that each send one event and
//! record its outcome.
//!
//! Ordering: events sharing a routing key and dedup key form one line (an "order key"); only the
//! head of a line is ever in flight, and a head waiting for its retry time holds back only its own
//! line. Change events have no dedup key and each forms a line of its own. A 429 (or v1 403)
//! pauses every line of that routing key until the retry time.
//!
//! Window: at most `DeliverySettings::window` events (`queue.dispatch_window`) are loaded at once;
//! the rest stay on disk and are read from the store's pending records in sequence order as loaded
//! ones finish. Because loading follows sequence order, each line's loaded events are the oldest
//! of its pending events, so a line never sends an event while an older one of it is unloaded.
//!
//! Eviction: when a routing key is paused, its loaded events that are not in flight leave memory
//! (they stay pending on disk) and the key is marked evicted, with the lowest sequence number of
//! its events that is not loaded. While evicted, the main scan skips the key's events, so a paused
//! key cannot fill the window and starve the others. When the pause ends, a side scan reads the
//! pending records again from that marker and loads the key's events in order (ahead of the main
//! scan, still within the window); once it has caught up with the main scan the key is ordinary
//! again. Invariant: every pending event below `next_scan` is loaded, or belongs to an evicted key
//! at or above that key's marker (unreadable records skipped for this run aside).
//!
//! Retry state lives in the records (`attempts`, `next_attempt_at_ms`) and the pauses in the store,
//! so a restart resumes the schedule instead of sending everything at once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::retry::{classify, retry_delay, Decision};

use crate::event::{redact_routing_key, EventAction};
use crate::pagerduty::client::{Attempt, EventsClient};
use crate::queue::record::{Record, State};
use crate::queue::store::{now_ms, Outcome, PendingEntry, Store, StoreError};

/// Most pending entries read from the store per scan step.
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
    /// Most pending events held in memory at once (`queue.dispatch_window`, at least 1; 0 is
    /// taken as 1). More stay on disk and are read in sequence order as loaded ones finish.
    pub window: usize,
    /// How long in-flight deliveries may run on after shutdown is asked.
    pub shutdown_timeout: Duration,
    /// Set while deliveries fail, so that the change is logged once each way, not per event.
    pub failing: Arc<std::sync::atomic::AtomicBool>,
    /// Notified by a watchdog: the dispatcher loop turns once and stamps `heartbeat_ms`, so the
    /// watchdog can tell a stuck loop from an idle one without a timer waking an idle daemon.
    pub heartbeat_probe: Arc<tokio::sync::Notify>,
    /// Last turn of the dispatcher loop, ms since the epoch.
    pub heartbeat_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Where attempts are counted.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// A line's key: a hash of (routing key, dedup key), or of (routing key, sequence number) for a
/// change event. See [`line_key`].
type LineKey = u64;

/// One line of events that must go out in order.
struct Line {
    routing_key: Arc<str>,
    /// Loaded sequence numbers, oldest first; the head may be in flight.
    seqs: VecDeque<u64>,
    /// In `ready`, in `timers` or in flight: exactly one of those holds it while this is set.
    scheduled: bool,
    /// Holds events of another routing key too (a hash collision of two line keys): such a line
    /// is never evicted, since the markers are per routing key.
    mixed: bool,
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
    lines: HashMap<LineKey, Line>,
    /// Lines whose head can be sent now, oldest first.
    ready: VecDeque<LineKey>,
    /// Lines waiting for a time: (ms since the epoch, line key).
    timers: BinaryHeap<Reverse<(u64, LineKey)>>,
    /// Paused routing keys and until when (ms since the epoch).
    paused: HashMap<Arc<str>, u64>,
    /// Every routing key seen, interned.
    routing_keys: HashSet<Arc<str>>,
    /// Sequence numbers of the loaded events (in some line), in flight or not; its size is what
    /// the window bounds.
    loaded: HashSet<u64>,
    /// Routing keys whose events are (partly) left on disk, each with the lowest sequence number
    /// of its pending events that is not loaded (a lower bound: scans skip what is loaded).
    evicted: HashMap<Arc<str>, u64>,
    /// Records found unreadable and skipped for the rest of this run (normally empty).
    unreadable: HashSet<u64>,
    /// Next sequence number the main scan reads from the store (`Store::pending_from`).
    next_scan: u64,
    /// The main scan may find more: it last stopped on a full window, or events were queued
    /// since. Keeps the loop from re-reading the index when nothing can have changed.
    scan_more: bool,
    in_flight: JoinSet<(LineKey, Done)>,
    task_lines: HashMap<tokio::task::Id, LineKey>,
}

/// The line an event belongs to. A 64-bit hash instead of the strings keeps a loaded event small;
/// two keys that collide only share a line, which orders their events more than needed (still
/// correct); a line shared across routing keys is marked `mixed` and never evicted.
fn line_key(routing_key: &str, dedup_key: Option<&str>, seq: u64) -> LineKey {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    routing_key.hash(&mut h);
    match dedup_key {
        Some(dedup) => {
            0u8.hash(&mut h);
            dedup.hash(&mut h);
        }
        None => {
            1u8.hash(&mut h);
            seq.hash(&mut h);
        }
    }
    h.finish()
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
        routing_keys: HashSet::new(),
        loaded: HashSet::new(),
        evicted: HashMap::new(),
        unreadable: HashSet::new(),
        next_scan: 0,
        scan_more: true,
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
    d.refill()?;
    info!(pending = d.store.pending_count(), loaded = d.loaded.len(), window = d.window(), "delivery started");
    tokio::pin!(shutdown);
    let probe = d.settings.heartbeat_probe.clone();
    let stamp = d.settings.heartbeat_ms.clone();
    loop {
        stamp.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        if let Some(m) = &d.settings.metrics {
            m.waiting.set(d.timers.len() as i64);
        }
        d.refill()?;
        d.fill()?;
        // Wake for the next line timer, and for the end of a pause (a paused key may have no
        // loaded line, hence no timer, yet its evicted events must be read again then).
        let next_timer = d.timers.peek().map(|Reverse((at, _))| *at);
        let next_wake = match (next_timer, d.paused.values().min().copied()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timer = async move {
            match next_wake {
                Some(at) => tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = d.store.queued().notified() => {
                d.scan_more = true;
                for entry in d.store.take_requeued() {
                    d.requeued(entry);
                }
            }
            Some(joined) = d.in_flight.join_next_with_id(), if !d.in_flight.is_empty() => d.finish(joined),
            _ = timer => d.fire_timers(),
            _ = probe.notified() => {}
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
        self.routing_keys.insert(rk.clone());
        rk
    }

    fn window(&self) -> usize {
        self.settings.window.max(1)
    }

    /// How many more events may be loaded.
    fn room(&self) -> usize {
        self.window().saturating_sub(self.loaded.len())
    }

    fn is_paused(&self, rk: &Arc<str>, now: u64) -> bool {
        self.paused.get(rk).is_some_and(|&until| until > now)
    }

    /// Loads what there is room for: first the evicted events of routing keys no longer paused
    /// (side scan), then new events (main scan) if the last main scan may have left some.
    fn refill(&mut self) -> Result<(), StoreError> {
        if self.room() > 0 && !self.evicted.is_empty() {
            self.side_scan()?;
        }
        if self.room() > 0 && self.scan_more {
            self.main_scan()?;
        }
        Ok(())
    }

    /// Reads pending records from `next_scan` on, loading events while there is room. Skips
    /// events already loaded and those of evicted routing keys; the first event met of a paused
    /// key that is not yet evicted (stored pauses, at start) marks the key evicted instead.
    fn main_scan(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        let mut limit = self.room().min(SCAN_CHUNK);
        while self.room() > 0 {
            let chunk = self.store.pending_from(self.next_scan, limit)?;
            let at_end = chunk.len() < limit;
            for entry in chunk {
                if self.room() == 0 {
                    return Ok(());
                }
                self.next_scan = entry.seq + 1;
                if self.loaded.contains(&entry.seq) || self.unreadable.contains(&entry.seq) {
                    continue;
                }
                let rk = self.intern(&entry.routing_key);
                if self.evicted.contains_key(&rk) {
                    continue;
                }
                if self.is_paused(&rk, now) {
                    self.evicted.insert(rk, entry.seq);
                    continue;
                }
                self.load(entry, rk);
            }
            if at_end {
                self.scan_more = false;
                return Ok(());
            }
            // Skipped entries used part of the chunk: read more at a time.
            limit = (limit * 2).min(SCAN_CHUNK);
        }
        Ok(())
    }

    /// Reloads the evicted events of every routing key whose pause has ended, in one pass over
    /// the pending records from the lowest of their markers up to `next_scan`, within the window.
    /// A pass cut short by a full window moves those keys' markers to where it stopped; a pass
    /// that reaches `next_scan` makes the keys ordinary again (the main scan takes it from there).
    fn side_scan(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        let keys: HashSet<Arc<str>> = self.evicted.keys().filter(|rk| !self.is_paused(rk, now)).cloned().collect();
        let Some(mut pos) = keys.iter().map(|rk| self.evicted[rk]).min() else {
            return Ok(());
        };
        let mut limit = self.room().min(SCAN_CHUNK);
        let reached_end = 'pass: loop {
            if pos >= self.next_scan {
                break 'pass true;
            }
            let chunk = self.store.pending_from(pos, limit)?;
            let at_end = chunk.len() < limit;
            for entry in chunk {
                if entry.seq >= self.next_scan {
                    break 'pass true;
                }
                if self.room() == 0 {
                    pos = entry.seq;
                    break 'pass false;
                }
                pos = entry.seq + 1;
                if self.loaded.contains(&entry.seq) || self.unreadable.contains(&entry.seq) {
                    continue;
                }
                if let Some(rk) = keys.get(entry.routing_key.as_str()).cloned() {
                    self.load(entry, rk);
                }
            }
            if at_end {
                break 'pass true;
            }
            limit = (limit * 2).min(SCAN_CHUNK);
        };
        for rk in keys {
            if reached_end {
                self.evicted.remove(&rk);
                debug!(routing_key = %redact_routing_key(&rk), "evicted events of a routing key are loaded again");
            } else if let Some(marker) = self.evicted.get_mut(&rk) {
                *marker = (*marker).max(pos);
            }
        }
        Ok(())
    }

    /// An event that `queue retry` made pending again (usually below `next_scan`).
    fn requeued(&mut self, entry: PendingEntry) {
        if entry.seq >= self.next_scan || self.loaded.contains(&entry.seq) {
            return; // The main scan reads it, or it is there already.
        }
        let rk = self.intern(&entry.routing_key);
        if let Some(marker) = self.evicted.get_mut(&rk) {
            *marker = (*marker).min(entry.seq);
        } else if self.is_paused(&rk, now_ms()) {
            self.evicted.insert(rk, entry.seq);
        } else if self.room() > 0 {
            self.load(entry, rk);
        } else {
            // No room: let the main scan read the index again from here (it skips what is loaded).
            self.next_scan = self.next_scan.min(entry.seq);
            self.scan_more = true;
        }
    }

    /// Puts an event at the end of its line, scheduling the line if it is new.
    fn load(&mut self, entry: PendingEntry, rk: Arc<str>) {
        let key = line_key(&entry.routing_key, entry.dedup_key.as_deref(), entry.seq);
        self.loaded.insert(entry.seq);
        let line = self.lines.entry(key).or_insert_with(|| Line {
            routing_key: rk.clone(),
            seqs: VecDeque::new(),
            scheduled: false,
            mixed: false,
        });
        if !Arc::ptr_eq(&line.routing_key, &rk) {
            line.mixed = true;
        }
        line.seqs.push_back(entry.seq);
        if !line.scheduled {
            line.scheduled = true;
            self.ready.push_back(key);
        }
    }

    /// Drops the loaded events of paused routing key `rk` that are not in flight (a line whose
    /// head is in flight keeps its head), and marks the key evicted at the lowest dropped
    /// sequence number (at most `next_scan`). The events stay pending in the store.
    fn evict(&mut self, rk: &Arc<str>) {
        let in_flight: HashSet<LineKey> = self.task_lines.values().copied().collect();
        let mut lowest = self.next_scan;
        let mut dropped = 0usize;
        let mut gone: HashSet<LineKey> = HashSet::new();
        for (key, line) in self.lines.iter_mut() {
            if line.mixed || !Arc::ptr_eq(&line.routing_key, rk) {
                continue;
            }
            let keep = usize::from(in_flight.contains(key));
            if line.seqs.len() <= keep {
                continue;
            }
            for seq in line.seqs.drain(keep..) {
                self.loaded.remove(&seq);
                lowest = lowest.min(seq);
                dropped += 1;
            }
            if keep == 0 {
                gone.insert(*key);
            }
        }
        if !gone.is_empty() {
            // Removed lines must leave `ready` and `timers` too: were one loaded again later, a
            // stale entry would schedule it twice.
            self.lines.retain(|key, _| !gone.contains(key));
            self.ready.retain(|key| !gone.contains(key));
            self.timers.retain(|Reverse((_, key))| !gone.contains(key));
        }
        let marker = self.evicted.entry(rk.clone()).or_insert(lowest);
        *marker = (*marker).min(lowest);
        if dropped > 0 {
            debug!(routing_key = %redact_routing_key(rk), dropped, "events of a paused routing key left memory; they stay queued");
        }
    }

    /// Starts deliveries for ready lines up to the concurrency limit.
    fn fill(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        while self.in_flight.len() < self.settings.concurrency {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let Some(line) = self.lines.get_mut(&key) else {
                continue;
            };
            let Some(&seq) = line.seqs.front() else {
                self.lines.remove(&key);
                continue;
            };
            if let Some(&until) = self.paused.get(&line.routing_key) {
                if until > now {
                    self.timers.push(Reverse((until, key)));
                    continue;
                }
            }
            let record = match self.store.get(seq) {
                Err(e @ StoreError::Corrupt(_)) => {
                    // One unreadable record must not stop delivery of the others.
                    error!(seq, error = %e, "a queued record cannot be read; skipping it (see `pdrelay queue salvage`)");
                    line.seqs.pop_front();
                    self.loaded.remove(&seq);
                    self.unreadable.insert(seq);
                    self.requeue_or_drop(key);
                    continue;
                }
                Err(e) => return Err(e),
                Ok(Some(r)) if r.state == State::Pending => r,
                Ok(_) => {
                    // Finished elsewhere (an operator's purge, say): drop it from the line.
                    line.seqs.pop_front();
                    self.loaded.remove(&seq);
                    self.requeue_or_drop(key);
                    continue;
                }
            };
            if let Some(at) = record.next_attempt_at_ms.filter(|&at| at > now) {
                self.timers.push(Reverse((at, key)));
                continue;
            }
            let store = self.store.clone();
            let settings = self.settings.clone();
            let handle = self.in_flight.spawn(async move {
                let done = attempt(&store, &settings, record).await;
                (key, done)
            });
            self.task_lines.insert(handle.id(), key);
        }
        Ok(())
    }

    fn requeue_or_drop(&mut self, key: LineKey) {
        match self.lines.get_mut(&key) {
            Some(line) if !line.seqs.is_empty() => self.ready.push_back(key),
            Some(_) => {
                self.lines.remove(&key);
            }
            None => {}
        }
    }

    fn finish(&mut self, joined: Result<(tokio::task::Id, (LineKey, Done)), tokio::task::JoinError>) {
        let (key, done) = match joined {
            Ok((id, result)) => {
                self.task_lines.remove(&id);
                result
            }
            Err(e) => {
                error!(error = %e, "delivery task ended abnormally; its event stays pending");
                let Some(key) = self.task_lines.remove(&e.id()) else {
                    return;
                };
                (key, Done::RetryAt { at_ms: now_ms() + STORE_RETRY_MS, pause_routing_key: false })
            }
        };
        match done {
            Done::Finished => {
                if let Some(line) = self.lines.get_mut(&key) {
                    if let Some(seq) = line.seqs.pop_front() {
                        self.loaded.remove(&seq);
                    }
                }
                self.requeue_or_drop(key);
            }
            Done::RetryAt { at_ms, pause_routing_key } => {
                self.timers.push(Reverse((at_ms, key)));
                if pause_routing_key {
                    if let Some(line) = self.lines.get(&key) {
                        let rk = line.routing_key.clone();
                        let until = self.paused.entry(rk.clone()).or_insert(0);
                        if *until < at_ms {
                            *until = at_ms;
                            warn!(routing_key = %redact_routing_key(&rk), pause_s = (at_ms.saturating_sub(now_ms())) / 1000, "routing key paused by PagerDuty rate limit");
                        }
                        // Free the window for other routing keys (this line included: it is no
                        // longer in flight).
                        self.evict(&rk);
                    }
                }
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = now_ms();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, key)) = self.timers.pop().expect("peeked");
            self.ready.push_back(key);
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
