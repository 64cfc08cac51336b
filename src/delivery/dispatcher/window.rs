//! Which pending events the dispatcher holds in memory: the window, the scans that fill it,
//! and the eviction of a paused or rate-limited routing key's events.
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

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tracing::debug;

use super::{line_key, Dispatcher, Line, LineKey};
use crate::clock::now_ms;
use crate::event::redact_routing_key;
use crate::queue::error::StoreError;
use crate::queue::request::PendingEntry;

/// Most pending entries read from the store per scan step.
const SCAN_CHUNK: usize = 10_000;

impl Dispatcher {
    pub(super) fn window(&self) -> usize {
        self.settings.window.max(1)
    }

    /// How many more events may be loaded.
    pub(super) fn room(&self) -> usize {
        self.window().saturating_sub(self.loaded.len())
    }

    /// Most events of routing key `rk` held loaded at once: two minutes' worth at its rate
    /// limit (at least 16), so that a storm on one key leaves the window to the others;
    /// unbounded without a limit.
    pub(super) fn cap(&self, rk: &str) -> usize {
        match self.settings.rate_limits.of(rk) {
            0 => usize::MAX,
            limit => (limit as usize).saturating_mul(2).max(16),
        }
    }

    pub(super) fn loaded_of(&self, rk: &Arc<str>) -> usize {
        self.key_loaded.get(rk).copied().unwrap_or(0)
    }

    /// Forgets a loaded event (it left its line).
    pub(super) fn unload(&mut self, seq: u64) {
        if let Some(rk) = self.loaded.remove(&seq) {
            if let Some(n) = self.key_loaded.get_mut(&rk) {
                *n -= 1;
                if *n == 0 {
                    self.key_loaded.remove(&rk);
                }
            }
        }
    }

    /// Loads what there is room for: first the evicted events of routing keys no longer paused
    /// (side scan), then new events (main scan) if the last main scan may have left some.
    pub(super) fn refill(&mut self) -> Result<(), StoreError> {
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
    pub(super) fn main_scan(&mut self) -> Result<(), StoreError> {
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
    pub(super) fn side_scan(&mut self) -> Result<(), StoreError> {
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
    pub(super) fn requeued(&mut self, entry: PendingEntry) {
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
    pub(super) fn load(&mut self, entry: PendingEntry, rk: Arc<str>) {
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
    pub(super) fn evict(&mut self, rk: &Arc<str>) {
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
}
