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
//!
//! Outage: after `outage_after` failures in a row that are not about one event (no answer, 408,
//! 5xx; see [`super::retry::systemic`]) with no answer from PagerDuty between them, the
//! dispatcher holds PagerDuty for unreachable: it starts no deliveries but one probe, the oldest
//! loaded head that may go (its own retry time ignored), every `probe_interval` with jitter. The
//! first answer (any answer that is not itself systemic) ends the outage and releases every line
//! whose head waits because of a systemic failure made before then: they go at once, in
//! sequence order, within the concurrency and the rate limits. A head waiting for its own reason
//! (a 429's pause) keeps waiting.
//!
//! Rate limit: at most `rate_limits.of(key)` events a minute are started per routing key, counted
//! over a sliding minute from each attempt's end (so the server, which sees a request before its
//! answer ends, never counts more). A line whose key has no room waits in that key's queue (in
//! order) and is released as room opens. So that a storm on one key cannot fill the window, a
//! rate-limited key holds at most two minutes' worth of loaded events (see [`Dispatcher::cap`]);
//! more of its events are left on disk like an evicted key's and read again as it drains.
//!
//! Stale pairs (`drop_stale_pairs`): a head that is a trigger, followed in its line by a resolve,
//! is not sent: the events from the head up to the resolve are recorded as superseded, and the
//! resolve too unless PagerDuty has an open alert for the key (an earlier delivered trigger).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::retry::{classify, probe_delay, retry_delay, systemic, Decision};

use crate::clock::now_ms;
use crate::delivery::client::{Attempt, EventsClient};
use crate::event::{redact_routing_key, EventAction};
use crate::queue::error::StoreError;
use crate::queue::record::{Record, State};
use crate::queue::request::{Outcome, PendingEntry};
use crate::queue::store::Store;

/// Most pending entries read from the store per scan step.
const SCAN_CHUNK: usize = 10_000;
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
    pub live: crate::ops::reload::ReloadableSettings,
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

    /// Most events of routing key `rk` held loaded at once: two minutes' worth at its rate
    /// limit (at least 16), so that a storm on one key leaves the window to the others;
    /// unbounded without a limit.
    fn cap(&self, rk: &str) -> usize {
        match self.settings.rate_limits.of(rk) {
            0 => usize::MAX,
            limit => (limit as usize).saturating_mul(2).max(16),
        }
    }

    fn loaded_of(&self, rk: &Arc<str>) -> usize {
        self.key_loaded.get(rk).copied().unwrap_or(0)
    }

    /// Forgets a loaded event (it left its line).
    fn unload(&mut self, seq: u64) {
        if let Some(rk) = self.loaded.remove(&seq) {
            if let Some(n) = self.key_loaded.get_mut(&rk) {
                *n -= 1;
                if *n == 0 {
                    self.key_loaded.remove(&rk);
                }
            }
        }
    }

    /// Earliest time some rate-limited key with waiting lines gets room.
    fn next_rate_room(&mut self) -> Option<u64> {
        let now = now_ms();
        let mut next: Option<u64> = None;
        for (rk, rate) in self.rates.iter_mut() {
            if rate.waiting.is_empty() {
                continue;
            }
            let limit = self.settings.rate_limits.of(rk) as usize;
            if let Some(at) = rate.room_at(now, limit.max(1)) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        next
    }

    /// Moves lines that waited for room under their key's rate limit to the front of `ready`,
    /// as many as there is room for, oldest first.
    fn release_rate_waiting(&mut self) {
        let now = now_ms();
        for (rk, rate) in self.rates.iter_mut() {
            if rate.waiting.is_empty() {
                continue;
            }
            let limit = (self.settings.rate_limits.of(rk) as usize).max(1);
            if rate.room_at(now, limit) != Some(now) {
                continue;
            }
            let room = limit - (rate.ends.len() + rate.in_flight);
            let n = room.min(rate.waiting.len());
            for key in rate.waiting.drain(..n).rev() {
                self.ready.push_front(key);
            }
            if rate.waiting.is_empty() && rate.held {
                rate.held = false;
                debug!(routing_key = %redact_routing_key(rk), "routing key under its rate limit again");
            }
        }
    }

    /// Whether the head of a line of `rk` must wait for room under the key's rate limit; if
    /// so, the line joins the key's waiting lines. (Lines released from there come first in
    /// `ready`, so they take the room before lines that never waited.)
    fn rate_held(&mut self, rk: &Arc<str>, key: LineKey, now: u64) -> bool {
        let limit = self.settings.rate_limits.of(rk) as usize;
        if limit == 0 {
            return false;
        }
        let rate = self.rates.entry(rk.clone()).or_default();
        if rate.room_at(now, limit) == Some(now) {
            return false;
        }
        rate.waiting.push_back(key);
        if !rate.held {
            rate.held = true;
            info!(routing_key = %redact_routing_key(rk), limit_per_min = limit, "routing key held to its rate limit; its events wait their turn (see `pdrelay queue status`)");
        }
        true
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
                if self.loaded.contains_key(&entry.seq) || self.unreadable.contains(&entry.seq) {
                    continue;
                }
                let rk = self.intern(&entry.routing_key);
                if self.evicted.contains_key(&rk) {
                    continue;
                }
                if self.is_paused(&rk, now) || self.loaded_of(&rk) >= self.cap(&rk) {
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
    ///
    /// Keys held at their cap (a rate-limited key with two minutes' worth loaded) are read
    /// again once half of that has gone; a key that fills its cap during the pass stays evicted
    /// at the first event it left.
    fn side_scan(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        let keys: HashSet<Arc<str>> = self
            .evicted
            .keys()
            .filter(|rk| !self.is_paused(rk, now) && self.loaded_of(rk) <= self.cap(rk) / 2)
            .cloned()
            .collect();
        let mut full: HashMap<Arc<str>, u64> = HashMap::new();
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
                if self.loaded.contains_key(&entry.seq) || self.unreadable.contains(&entry.seq) {
                    continue;
                }
                if let Some(rk) = keys.get(entry.routing_key.as_str()).cloned() {
                    if full.contains_key(&rk) {
                        continue;
                    }
                    if self.loaded_of(&rk) >= self.cap(&rk) {
                        full.insert(rk, entry.seq);
                        if full.len() == keys.len() {
                            break 'pass false;
                        }
                        continue;
                    }
                    self.load(entry, rk);
                }
            }
            if at_end {
                break 'pass true;
            }
            limit = (limit * 2).min(SCAN_CHUNK);
        };
        for rk in keys {
            if let Some(&first_left) = full.get(&rk) {
                self.evicted.insert(rk, first_left);
            } else if reached_end {
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
        if entry.seq >= self.next_scan || self.loaded.contains_key(&entry.seq) {
            return; // The main scan reads it, or it is there already.
        }
        let rk = self.intern(&entry.routing_key);
        if let Some(marker) = self.evicted.get_mut(&rk) {
            *marker = (*marker).min(entry.seq);
        } else if self.is_paused(&rk, now_ms()) || self.loaded_of(&rk) >= self.cap(&rk) {
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
        self.loaded.insert(entry.seq, rk.clone());
        *self.key_loaded.entry(rk.clone()).or_insert(0) += 1;
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
        let in_flight: HashSet<LineKey> = self.task_lines.values().map(|(key, _)| *key).collect();
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
                if let Some(owner) = self.loaded.remove(&seq) {
                    if let Some(n) = self.key_loaded.get_mut(&owner) {
                        *n = n.saturating_sub(1);
                    }
                }
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
            for rate in self.rates.values_mut() {
                rate.waiting.retain(|key| !gone.contains(key));
            }
        }
        self.key_loaded.retain(|_, n| *n > 0);
        let marker = self.evicted.entry(rk.clone()).or_insert(lowest);
        *marker = (*marker).min(lowest);
        if dropped > 0 {
            debug!(routing_key = %redact_routing_key(rk), dropped, "events of a paused routing key left memory; they stay queued");
        }
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

    /// During an outage: starts the probe when it is due, with the oldest loaded head that may
    /// go (not in flight, its key neither paused nor at its rate limit), whatever its own retry
    /// time.
    fn probe(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        let due = self.outage.as_ref().is_some_and(|o| o.probing.is_none() && o.next_probe_ms <= now);
        if !due || self.in_flight.len() >= self.settings.concurrency {
            return Ok(());
        }
        let busy: HashSet<LineKey> = self.task_lines.values().map(|(key, _)| *key).collect();
        let mut best: Option<(u64, LineKey)> = None;
        for (key, line) in &self.lines {
            let Some(&seq) = line.seqs.front() else { continue };
            if busy.contains(key) || best.is_some_and(|(b, _)| b <= seq) || self.is_paused(&line.routing_key, now) {
                continue;
            }
            let limit = self.settings.rate_limits.of(&line.routing_key) as usize;
            if limit > 0 {
                let rate = self.rates.entry(line.routing_key.clone()).or_default();
                if rate.room_at(now, limit) != Some(now) {
                    continue;
                }
            }
            best = Some((seq, *key));
        }
        let Some((seq, key)) = best else {
            if let Some(o) = self.outage.as_mut() {
                o.next_probe_ms = now + probe_delay(self.settings.probe_interval).as_millis() as u64;
            }
            return Ok(());
        };
        // The line leaves wherever it was scheduled: it is about to be in flight.
        self.ready.retain(|k| *k != key);
        self.timers.retain(|Reverse((_, k))| *k != key);
        for rate in self.rates.values_mut() {
            rate.waiting.retain(|k| *k != key);
        }
        let Some(record) = self.head_record(key, seq)? else {
            return Ok(());
        };
        if let Some(at) = record.next_attempt_at_ms.filter(|&at| at > now && record.hold.is_some()) {
            // Held on purpose (flap damping, a silence): never sent early, not even as a probe.
            self.timers.push(Reverse((at, key)));
            if let Some(o) = self.outage.as_mut() {
                o.next_probe_ms = now + probe_delay(self.settings.probe_interval).as_millis() as u64;
            }
            return Ok(());
        }
        let rk = self.lines.get(&key).map(|l| l.routing_key.clone()).expect("a probed line exists");
        debug!(routing_key = %redact_routing_key(&rk), seq, "probing PagerDuty with one event");
        if let Some(o) = self.outage.as_mut() {
            o.probing = Some(key);
        }
        self.start(key, rk, record);
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

    /// Whether a waiting head may go now because the outage that delayed it has ended: its last
    /// attempt failed systemically no later than the end of the last outage.
    fn released(&self, record: &Record) -> bool {
        self.released_at_ms > 0
            && systemic(record.last_status)
            && record.last_attempt_at_ms.is_some_and(|at| at <= self.released_at_ms)
    }

    /// Spawns the delivery of `record`, the head of line `key` of routing key `rk`.
    fn start(&mut self, key: LineKey, rk: Arc<str>, record: Record) {
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

    /// No answer, 408 or 5xx: counts towards an outage; during one, a failed probe schedules
    /// the next.
    fn failed_systemically(&mut self, was_probe: bool) {
        self.systemic_in_row = self.systemic_in_row.saturating_add(1);
        let now = now_ms();
        let next_probe_ms = now + probe_delay(self.settings.probe_interval).as_millis() as u64;
        match self.outage.as_mut() {
            Some(o) if was_probe => o.next_probe_ms = next_probe_ms,
            Some(_) => {}
            None if self.systemic_in_row >= self.settings.outage_after.max(1) => {
                warn!(
                    failures = self.systemic_in_row,
                    probe_interval = ?self.settings.probe_interval,
                    "PagerDuty is unreachable; sending stops and one event probes until it answers"
                );
                self.outage = Some(Outage { since_ms: now, next_probe_ms, probing: None });
                self.store.set_outage(Some(now));
            }
            None => {}
        }
    }

    /// PagerDuty answered (anything but 408 and 5xx). Ends an outage: every line waiting
    /// because of a systemic failure goes now, oldest head first.
    fn answered(&mut self) {
        self.systemic_in_row = 0;
        let Some(outage) = self.outage.take() else {
            return;
        };
        let now = now_ms();
        self.released_at_ms = now;
        self.store.set_outage(None);
        let mut lines: Vec<(u64, LineKey)> = self
            .timers
            .drain()
            .map(|Reverse((_, key))| key)
            .chain(self.ready.drain(..))
            .map(|key| (self.lines.get(&key).and_then(|l| l.seqs.front().copied()).unwrap_or(u64::MAX), key))
            .collect();
        lines.sort_unstable();
        let released = lines.len();
        self.ready.extend(lines.into_iter().map(|(_, key)| key));
        info!(
            outage_s = now.saturating_sub(outage.since_ms) / 1000,
            lines = released,
            "PagerDuty answers again; waiting events go now"
        );
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
            let delay = retry_delay(&settings.live.get().retry, record.attempts + 1, retry_after);
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
