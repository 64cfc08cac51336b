//! The dispatcher: one task that holds a bounded window of pending events in memory, knows each
//! one's place in line, and runs a bounded set of delivery tasks that each send one event and
//! record its outcome.
//!
//! Ordering: events sharing a routing key and dedup key form one line (an "order key"); only the
//! head of a line is ever in flight, and a head waiting for its retry time holds back only its own
//! line. Change events have no dedup key and each forms a line of its own. A 429 (or v1 403)
//! pauses every line of that routing key until the retry time.
//!
//! Retry state lives in the records (`attempts`, `next_attempt_at_ms`) and the pauses in the store,
//! so a restart resumes the schedule instead of sending everything at once.
//!
//! The parts: this file holds the scheduler's state and loop (which loaded line goes when);
//! [`window`] which pending events are loaded, [`pacing`] rate limits and outages, [`attempt`] one
//! delivery and its outcome. Each part adds methods to the one [`Dispatcher`], whose state is
//! declared here only.

mod attempt;
mod pacing;
mod window;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::clock::now_ms;
use crate::delivery::client::EventsClient;
use crate::queue::error::StoreError;
use crate::queue::record::{Record, State};
use crate::queue::store::Store;

/// Wait before trying a line again when recording its outcome failed (disk trouble).
const STORE_RETRY_MS: u64 = 1_000;
/// The rate limit's window, in ms.
const RATE_WINDOW_MS: u64 = 60_000;
/// Most later events of a line read when looking for the resolve of a stale pair.
const STALE_LOOKAHEAD: usize = 64;

/// What the dispatcher needs besides the store.
#[derive(Clone)]
pub struct DeliverySettings {
    /// Shared HTTP client.
    pub client: EventsClient,
    /// Retry timing (reloadable).
    pub reloadable: crate::ops::reload::ReloadableSettings,
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
    pub metrics: Option<Arc<crate::ops::metrics::Metrics>>,
    /// Systemic failures in a row that make an outage (`delivery.outage_after`, at least 1).
    pub outage_after: u32,
    /// Time between probes during an outage (`delivery.probe_interval`), jittered +-20%.
    pub probe_interval: Duration,
    /// Events a minute per routing key (`delivery.rate_limit`, `rate_limits`).
    pub rate_limits: crate::config::delivery::RateLimits,
    /// `delivery.drop_stale_pairs`.
    pub drop_stale_pairs: bool,
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
    /// Delivered or failed for good (PagerDuty answered): the head leaves the line.
    Finished,
    /// Waits until this time (ms since the epoch); pause the routing key too if asked.
    /// `systemic`: the failure was no answer, 408 or 5xx (see `retry::systemic`).
    RetryAt { at_ms: u64, pause_routing_key: bool, systemic: bool },
    /// Recorded as superseded without sending (a stale pair): these leave the line.
    Superseded(Vec<u64>),
    /// Not attempted (its task failed, say): try again at this time.
    Later { at_ms: u64 },
}

/// Sends started per routing key, for the rate limit.
#[derive(Default)]
struct KeyRate {
    /// End times (ms since the epoch) of the attempts of the last minute, oldest first.
    ends: VecDeque<u64>,
    /// Attempts in flight.
    in_flight: usize,
    /// Lines held back for lack of room, in the order they came.
    waiting: VecDeque<LineKey>,
    /// Logged as held to its limit (once per spell).
    held: bool,
}

impl KeyRate {
    /// When a send may start for a key limited to `limit` a minute: `Some(now)` if there is room,
    /// a later time when a sliding-window slot frees, `None` when only an in-flight attempt's
    /// end can make room.
    fn room_at(&mut self, now: u64, limit: usize) -> Option<u64> {
        while self.ends.front().is_some_and(|&end| end + RATE_WINDOW_MS <= now) {
            self.ends.pop_front();
        }
        let used = self.ends.len() + self.in_flight;
        if used < limit {
            return Some(now);
        }
        // Room once `used - limit + 1` of the recorded ends have left the window.
        self.ends.get(used - limit).map(|&end| end + RATE_WINDOW_MS)
    }
}

/// PagerDuty held for unreachable.
struct Outage {
    /// Since when, ms since the epoch.
    since_ms: u64,
    /// When the next probe may start.
    next_probe_ms: u64,
    /// The line whose head is being sent as the probe.
    probing: Option<LineKey>,
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
    /// Sequence numbers of the loaded events (in some line), in flight or not, with their
    /// routing keys; its size is what the window bounds.
    loaded: HashMap<u64, Arc<str>>,
    /// Loaded events per routing key.
    key_loaded: HashMap<Arc<str>, usize>,
    /// Rate-limit state per routing key (only keys with a limit).
    rates: HashMap<Arc<str>, KeyRate>,
    /// Systemic failures since PagerDuty last answered.
    systemic_in_row: u32,
    /// Set while PagerDuty is held for unreachable.
    outage: Option<Outage>,
    /// End of the last outage (ms since the epoch): heads whose last attempt failed
    /// systemically at or before it go without waiting for their retry time.
    released_at_ms: u64,
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
    task_lines: HashMap<tokio::task::Id, (LineKey, Arc<str>)>,
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
        loaded: HashMap::new(),
        key_loaded: HashMap::new(),
        rates: HashMap::new(),
        systemic_in_row: 0,
        outage: None,
        released_at_ms: 0,
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
    // Deliveries were failing when the daemon stopped: events may wait on long backoffs. Probe
    // at once, as after an outage; the first answer releases them (none: the outage goes on).
    if let (last_success, Some((error_at, _))) = d.store.last_events()? {
        if last_success.is_none_or(|(at, _)| at < error_at) && d.store.pending_count() > 0 {
            info!("deliveries were failing when pdrelay stopped; one event probes PagerDuty before the others go");
            d.outage = Some(Outage { since_ms: now, next_probe_ms: now, probing: None });
            d.store.set_outage(Some(now));
        }
    }
    tokio::pin!(shutdown);
    let probe = d.settings.heartbeat_probe.clone();
    let stamp = d.settings.heartbeat_ms.clone();
    loop {
        stamp.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        if let Some(m) = &d.settings.metrics {
            m.waiting.set(d.timers.len() as i64);
        }
        d.refill()?;
        d.release_rate_waiting();
        d.fill()?;
        // Wake for the next line timer, for the end of a pause (a paused key may have no
        // loaded line, hence no timer, yet its evicted events must be read again then), for the
        // next probe, and for room under a key's rate limit.
        let next_timer = d.timers.peek().map(|Reverse((at, _))| *at);
        let next_probe = d.outage.as_ref().filter(|o| o.probing.is_none()).map(|o| o.next_probe_ms);
        let next_wake =
            [next_timer, d.paused.values().min().copied(), next_probe, d.next_rate_room()].into_iter().flatten().min();
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
                if d.store.take_send_now() {
                    d.send_now()?;
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

    /// `queue retry --waiting`: read the pauses again (lifted ones end now), try every line
    /// waiting for a time, and probe at once during an outage.
    fn send_now(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        let stored: HashMap<String, u64> = self.store.pauses()?.into_iter().collect();
        let lifted: Vec<Arc<str>> =
            self.paused.keys().filter(|rk| !stored.contains_key(rk.as_ref())).cloned().collect();
        for rk in lifted {
            self.paused.remove(&rk);
        }
        while let Some(Reverse((_, key))) = self.timers.pop() {
            self.ready.push_back(key);
        }
        if let Some(outage) = self.outage.as_mut() {
            outage.next_probe_ms = now;
        }
        info!("waiting events are sent now (queue retry --waiting)");
        Ok(())
    }

    /// Starts deliveries for ready lines up to the concurrency limit; during an outage, only
    /// the probe.
    fn fill(&mut self) -> Result<(), StoreError> {
        if self.outage.is_some() {
            return self.probe();
        }
        let now = now_ms();
        while self.in_flight.len() < self.settings.concurrency {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let Some(line) = self.lines.get(&key) else {
                continue;
            };
            let Some(&seq) = line.seqs.front() else {
                self.lines.remove(&key);
                continue;
            };
            let rk = line.routing_key.clone();
            if let Some(&until) = self.paused.get(&rk) {
                if until > now {
                    self.timers.push(Reverse((until, key)));
                    continue;
                }
            }
            if self.rate_held(&rk, key, now) {
                continue;
            }
            let Some(record) = self.head_record(key, seq)? else {
                continue;
            };
            if let Some(at) = record.next_attempt_at_ms.filter(|&at| at > now) {
                if !self.released(&record) {
                    self.timers.push(Reverse((at, key)));
                    continue;
                }
            }
            self.start(key, rk, record);
        }
        Ok(())
    }

    /// The pending record at the head of line `key`, or `None` when it is unreadable or no
    /// longer pending (then it leaves the line, which is scheduled again if it has more).
    fn head_record(&mut self, key: LineKey, seq: u64) -> Result<Option<Record>, StoreError> {
        match self.store.get(seq) {
            Err(e @ StoreError::Corrupt(_)) => {
                // One unreadable record must not stop delivery of the others.
                error!(seq, error = %e, "a queued record cannot be read; skipping it (see `pdrelay queue salvage`)");
                self.pop_head(key);
                self.unreadable.insert(seq);
                self.requeue_or_drop(key);
                Ok(None)
            }
            Err(e) => Err(e),
            Ok(Some(r)) if r.state == State::Pending => Ok(Some(r)),
            Ok(_) => {
                // Finished elsewhere (an operator's purge, say): drop it from the line.
                self.pop_head(key);
                self.requeue_or_drop(key);
                Ok(None)
            }
        }
    }

    fn pop_head(&mut self, key: LineKey) {
        if let Some(seq) = self.lines.get_mut(&key).and_then(|line| line.seqs.pop_front()) {
            self.unload(seq);
        }
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
        let (key, rk, done) = match joined {
            Ok((id, (key, done))) => match self.task_lines.remove(&id) {
                Some((_, rk)) => (key, Some(rk), done),
                None => (key, None, done),
            },
            Err(e) => {
                error!(error = %e, "delivery task ended abnormally; its event stays pending");
                let Some((key, rk)) = self.task_lines.remove(&e.id()) else {
                    return;
                };
                (key, Some(rk), Done::Later { at_ms: now_ms() + STORE_RETRY_MS })
            }
        };
        let now = now_ms();
        if let Some(rate) = rk.as_ref().and_then(|rk| self.rates.get_mut(rk)) {
            rate.in_flight = rate.in_flight.saturating_sub(1);
            if matches!(done, Done::Finished | Done::RetryAt { .. }) {
                rate.ends.push_back(now);
            }
        }
        let was_probe = self.outage.as_ref().is_some_and(|o| o.probing == Some(key));
        if was_probe {
            if let Some(o) = self.outage.as_mut() {
                o.probing = None;
            }
        }
        match done {
            Done::Finished => {
                self.answered();
                self.pop_head(key);
                self.requeue_or_drop(key);
            }
            Done::Superseded(seqs) => {
                let gone: HashSet<u64> = seqs.into_iter().collect();
                while let Some(&seq) = self.lines.get(&key).and_then(|line| line.seqs.front()) {
                    if !gone.contains(&seq) {
                        break;
                    }
                    self.pop_head(key);
                }
                self.requeue_or_drop(key);
            }
            Done::Later { at_ms } => self.timers.push(Reverse((at_ms, key))),
            Done::RetryAt { at_ms, pause_routing_key, systemic } => {
                if systemic {
                    self.failed_systemically(was_probe);
                } else {
                    self.answered();
                }
                self.timers.push(Reverse((at_ms, key)));
                if pause_routing_key {
                    self.pause(key, at_ms);
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
