//! Pacing: when a routing key, or PagerDuty as a whole, may be sent to again. Per-key rate
//! limits (the sliding minute of [`KeyRate`](super::KeyRate)) and outages (the probe, and what
//! its answer releases), and the pauses PagerDuty asks for (a 429, or a v1 403: [`Dispatcher::pause`]).
//!
//! Outage: after `outage_after` failures in a row that are not about one event (no answer, 408,
//! 5xx; see [`crate::delivery::retry::systemic`]) with no answer from PagerDuty between them, the
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

use std::cmp::Reverse;
use std::collections::HashSet;
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::{Dispatcher, LineKey, Outage};
use crate::clock::now_ms;
use crate::delivery::retry::{probe_delay, systemic};
use crate::event::redact_routing_key;
use crate::queue::error::StoreError;
use crate::queue::record::Record;

impl Dispatcher {
    /// Whether `rk` is paused (by a 429 or v1 403) at `now`, ms since the epoch.
    pub(super) fn is_paused(&self, rk: &Arc<str>, now: u64) -> bool {
        self.paused.get(rk).is_some_and(|&until| until > now)
    }

    /// PagerDuty asked the routing key of line `key` to wait until `at_ms`: no event of that key
    /// starts before then, and its loaded events leave the window for other keys' (this line's
    /// included: it is no longer in flight).
    pub(super) fn pause(&mut self, key: LineKey, at_ms: u64) {
        let Some(line) = self.lines.get(&key) else { return };
        let rk = line.routing_key.clone();
        let until = self.paused.entry(rk.clone()).or_insert(0);
        if *until < at_ms {
            *until = at_ms;
            warn!(routing_key = %redact_routing_key(&rk), pause_s = (at_ms.saturating_sub(now_ms())) / 1000, "routing key paused by PagerDuty rate limit");
        }
        self.evict(&rk);
    }

    /// Earliest time some rate-limited key with waiting lines gets room.
    pub(super) fn next_rate_room(&mut self) -> Option<u64> {
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
    pub(super) fn release_rate_waiting(&mut self) {
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
    pub(super) fn rate_held(&mut self, rk: &Arc<str>, key: LineKey, now: u64) -> bool {
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

    /// During an outage: starts the probe when it is due, with the oldest loaded head that may
    /// go (not in flight, its key neither paused nor at its rate limit), whatever its own retry
    /// time.
    pub(super) fn probe(&mut self) -> Result<(), StoreError> {
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

    /// Whether a waiting head may go now because the outage that delayed it has ended: its last
    /// attempt failed systemically no later than the end of the last outage.
    pub(super) fn released(&self, record: &Record) -> bool {
        self.released_at_ms > 0
            && systemic(record.last_status)
            && record.last_attempt_at_ms.is_some_and(|at| at <= self.released_at_ms)
    }

    /// No answer, 408 or 5xx: counts towards an outage; during one, a failed probe schedules
    /// the next.
    pub(super) fn failed_systemically(&mut self, was_probe: bool) {
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
    pub(super) fn answered(&mut self) {
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
}
