//! Paging policy applied when an event is accepted, inside the committer's group commit:
//! `[[routes]]` (and acknowledge/resolve following their trigger's routing key and URL), and flap
//! damping (`[flap_damping]`: a resolve held, cancelled together with a trigger of the same key
//! that comes within the hold), silences and maintenance windows (a trigger held while one
//! matches), and the last-heard table of `[[expected_senders]]`. The rules themselves live in
//! `rules/` ([`crate::rules::routing`], [`crate::rules::silence`]); this module keeps the small
//! indexes they need in the queue's tree (their keys are listed with the others in `keys`):
//!
//! - `r` + producer's routing key + NUL + dedup key -> [`Follow`] (JSON): where the last trigger
//!   of that alert went when a route moved it (another key or URL, or dropped), so that its
//!   acknowledge and resolve go there too, whatever the rules say now (even with no routes left).
//!   Removed by the resolve, or by a later trigger sent where the producer said.
//! - `h` + sent routing key + NUL + dedup key -> sequence number (8 bytes, big-endian) of a
//!   resolve held by flap damping.
//!
//! Index writes go straight to the tree (visible to the next event of the same commit) and are
//! flushed with the commit; an entry left by a failed commit points at nothing and is ignored.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::keys::prefixed_key;
use super::record::{record_key, Record, State};
use crate::event::{EventAction, RoutingKey};
use crate::rules::routing::{set_routing_key, Router};

/// Where a trigger was sent, for its acknowledge and resolve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Follow {
    /// The routing key it was sent to, in full.
    pub routing_key: String,
    /// The events URL, when not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_url: Option<String>,
    /// The route that took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// It was dropped (its acknowledge and resolve are dropped too).
    #[serde(default)]
    pub dropped: bool,
}

/// The policy settings the daemon gives the queue.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `[[routes]]`, checked.
    pub router: Router,
    /// `flap_damping.resolve_hold` in ms; 0 = off.
    pub resolve_hold_ms: u64,
    /// Stored silences and `[[maintenance]]` windows.
    pub silences: crate::rules::silence::Silences,
    /// `[[expected_senders]]` and when each was last heard (shared with the heartbeat task).
    pub watch: std::sync::Arc<crate::rules::heartbeat::Watch>,
}

/// What the held-by-silence index (`q`) says of one held event.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Silenced {
    /// `silence ID` or `maintenance NAME`.
    by: String,
    /// Held until, ms since the epoch.
    until_ms: u64,
}

fn silenced_key(routing_key: &str, dedup_key: &str, seq: u64) -> Vec<u8> {
    let mut k = prefixed_key(b'q', routing_key, dedup_key);
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Sequence numbers of the events held by `by` (`silence ID`), for `silence expire`.
pub fn held_by(tree: &sled::Tree, by: &str) -> Result<Vec<u64>, sled::Error> {
    let mut out = Vec::new();
    for item in tree.scan_prefix([b'q']) {
        let (k, v) = item?;
        let Ok(s) = serde_json::from_slice::<Silenced>(&v) else { continue };
        if s.by == by && k.len() >= 9 {
            out.push(u64::from_be_bytes(k[k.len() - 8..].try_into().expect("8 bytes")));
        }
    }
    Ok(out)
}

/// What admitting one event changed besides the event itself.
#[derive(Debug, Default)]
pub struct Admitted {
    /// Pending records (other than this one) made superseded, by routing key.
    pub cancelled: Vec<String>,
}

/// A trigger within this much of its held resolve's release does not cancel it (the resolve may
/// be on its way), in ms.
const RELEASE_MARGIN_MS: u64 = 1000;

/// Applies routing and flap damping to a newly accepted `record` (state pending, not yet
/// written). It may leave the record superseded (dropped by a route, or cancelled with a held
/// resolve), held (`next_attempt_at_ms` and `hold` set), or re-routed; and it may make an
/// earlier held resolve superseded, writing it to `batch` and `written`.
pub fn admit(
    tree: &sled::Tree,
    policy: &Policy,
    record: &mut Record,
    now_ms: u64,
    batch: &mut sled::Batch,
    written: &mut HashMap<u64, Record>,
    pd_open: &dyn Fn(&str, &str) -> bool,
) -> Result<Admitted, sled::Error> {
    let mut admitted = Admitted::default();
    policy.watch.heard(&record.event, &record.intake, now_ms);
    let action = record.event.action();
    let dedup = record.event.dedup_key().map(str::to_owned);
    let producer_key = record.event.routing_key().as_str().to_owned();
    let follows = match (&dedup, action) {
        // Consulted whatever the rules are now: removing every route must not strand an alert.
        (Some(d), Some(EventAction::Acknowledge | EventAction::Resolve)) => {
            let k = prefixed_key(b'r', &producer_key, d);
            let found = tree.get(&k)?.and_then(|v| serde_json::from_slice::<Follow>(&v).ok());
            if found.is_some() && action == Some(EventAction::Resolve) {
                tree.remove(&k)?;
            }
            found
        }
        _ => None,
    };
    if let Some(follow) = follows {
        if follow.dropped {
            drop_record(
                record,
                now_ms,
                format!("dropped: its trigger was dropped by route {:?}; not sent", follow.route.unwrap_or_default()),
            );
            return Ok(admitted);
        }
        if let Ok(key) = RoutingKey::parse(&follow.routing_key, "routing_key") {
            set_routing_key(&mut record.event, key);
        }
        record.events_url = follow.events_url;
        record.route = follow.route.map(|r| format!("{r} (follows its trigger)"));
    } else {
        let routed = policy.router.apply(&mut record.event, &record.intake);
        if let (Some(d), Some(EventAction::Trigger)) = (&dedup, action) {
            let k = prefixed_key(b'r', &producer_key, d);
            let moved = routed.dropped
                || routed.events_url.is_some()
                || record.event.routing_key().as_str() != producer_key.as_str();
            if moved {
                let follow = Follow {
                    routing_key: record.event.routing_key().as_str().to_owned(),
                    events_url: routed.events_url.clone(),
                    route: routed.route.clone(),
                    dropped: routed.dropped,
                };
                tree.insert(k, serde_json::to_vec(&follow).expect("follows encode"))?;
            } else if tree.contains_key(&k)? {
                // Sent where the producer said: an entry from an earlier trigger no longer holds.
                tree.remove(k)?;
            }
        }
        record.route = routed.route.clone();
        record.events_url = routed.events_url;
        if routed.dropped {
            drop_record(record, now_ms, format!("dropped by route {:?}; not sent", routed.route.unwrap_or_default()));
            return Ok(admitted);
        }
    }
    if let Some(d) = &dedup {
        if silence(tree, policy, record, d, now_ms, batch, written, pd_open, &mut admitted)? {
            return Ok(admitted);
        }
    }
    let (Some(d), true) = (&dedup, policy.resolve_hold_ms > 0) else { return Ok(admitted) };
    let sent_key = record.event.routing_key().as_str().to_owned();
    let hk = prefixed_key(b'h', &sent_key, d);
    match action {
        Some(EventAction::Resolve) => {
            // One held resolve per key: a repeated resolve replaces the earlier one, so that a
            // later trigger cancels the resolve that would otherwise still go.
            if let Some(earlier) = take_held(tree, &hk, now_ms, written)? {
                let reason =
                    format!("repeated by the later resolve {} (flap damping holds the last one); not sent", record.id);
                finish_held(earlier, reason, now_ms, batch, written);
                admitted.cancelled.push(sent_key.clone());
            }
            record.next_attempt_at_ms = Some(now_ms + policy.resolve_hold_ms);
            record.hold = Some(format!(
                "flap damping: resolve held for {} ms; a trigger of the same key within it cancels both",
                policy.resolve_hold_ms
            ));
            tree.insert(hk, &record.seq.to_be_bytes())?;
        }
        Some(EventAction::Trigger) => {
            if let Some(held) = take_held(tree, &hk, now_ms, written)? {
                let reason = format!(
                    "cancelled by the trigger {} within the flap damping hold; not sent (the incident stays open)",
                    record.id
                );
                let held_id = held.id.clone();
                finish_held(held, reason, now_ms, batch, written);
                admitted.cancelled.push(sent_key);
                drop_record(
                    record,
                    now_ms,
                    format!("cancelled with the held resolve {held_id} (flap damping); not sent: the incident is still open"),
                );
            }
        }
        _ => {}
    }
    Ok(admitted)
}

/// Silences (Alertmanager's semantics): a trigger or acknowledge that a silence or maintenance
/// window matches is held until its end, then sent. A resolve of a key with held triggers
/// cancels them (superseded, never sent); the resolve itself is held to the same end and sent
/// if PagerDuty has the alert open (`pd_open`: delivered before the silence), else superseded.
/// A resolve matching a silence with nothing held is held to its end too. Returns true when the
/// record was decided here (held or superseded).
#[allow(clippy::too_many_arguments)] // the commit's state, passed through from `admit`
fn silence(
    tree: &sled::Tree,
    policy: &Policy,
    record: &mut Record,
    dedup: &str,
    now_ms: u64,
    batch: &mut sled::Batch,
    written: &mut HashMap<u64, Record>,
    pd_open: &dyn Fn(&str, &str) -> bool,
    admitted: &mut Admitted,
) -> Result<bool, sled::Error> {
    let rk = record.event.routing_key().as_str().to_owned();
    let holding = policy.silences.holding(&record.event, &record.intake, now_ms);
    match record.event.action() {
        Some(EventAction::Resolve) => {
            let mut cancelled_until = None;
            let mut cancelled_any = false;
            let mut prefix_nul = prefixed_key(b'q', &rk, dedup);
            prefix_nul.push(0);
            for item in tree.scan_prefix(&prefix_nul) {
                let (k, v) = item?;
                tree.remove(&k)?;
                let seq = u64::from_be_bytes(k[k.len() - 8..].try_into().expect("8 bytes"));
                let Ok(held_by) = serde_json::from_slice::<Silenced>(&v) else { continue };
                let held = match written.remove(&seq) {
                    Some(r) => Some(r),
                    None => tree.get(record_key(seq))?.and_then(|b| Record::decode(&b).ok()),
                };
                let Some(held) = held else { continue };
                if held.state == State::Pending
                    && held.hold.is_some()
                    && held.next_attempt_at_ms.is_some_and(|at| at > now_ms + RELEASE_MARGIN_MS)
                {
                    let reason = format!("resolved by {} during the {}; not sent", record.id, held_by.by);
                    finish_held(held, reason, now_ms, batch, written);
                    admitted.cancelled.push(rk.clone());
                    cancelled_any = true;
                    cancelled_until = cancelled_until.max(Some((held_by.until_ms, held_by.by)));
                } else {
                    written.insert(seq, held);
                }
            }
            let hold = match (cancelled_until, holding) {
                (Some(c), Some(h)) => Some(if h.1 > c.0 { h } else { (c.1, c.0) }),
                (Some((until, by)), None) => Some((by, until)),
                (None, h) => h,
            };
            let Some((by, until)) = hold else { return Ok(false) };
            if cancelled_any && !pd_open(&rk, dedup) {
                drop_record(
                    record,
                    now_ms,
                    format!(
                        "resolved during the {by} before its trigger was sent; not sent (nothing open in PagerDuty)"
                    ),
                );
            } else {
                hold_record(tree, record, dedup, &by, until)?;
            }
            Ok(true)
        }
        Some(EventAction::Trigger | EventAction::Acknowledge) => {
            let Some((by, until)) = holding else { return Ok(false) };
            hold_record(tree, record, dedup, &by, until)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Holds `record` until `until_ms` for `by`, indexed under its key for a later resolve.
fn hold_record(
    tree: &sled::Tree,
    record: &mut Record,
    dedup: &str,
    by: &str,
    until_ms: u64,
) -> Result<(), sled::Error> {
    record.next_attempt_at_ms = Some(until_ms);
    record.hold = Some(format!("{by}: held until it ends"));
    let entry = Silenced { by: by.to_owned(), until_ms };
    tree.insert(
        silenced_key(record.event.routing_key().as_str(), dedup, record.seq),
        serde_json::to_vec(&entry).expect("silenced entries encode"),
    )?;
    Ok(())
}

/// Removes the flap damping entry `hk` and returns the resolve it names if that is still held
/// (pending, and not about to go).
fn take_held(
    tree: &sled::Tree,
    hk: &[u8],
    now_ms: u64,
    written: &mut HashMap<u64, Record>,
) -> Result<Option<Record>, sled::Error> {
    let Some(seq) = tree.remove(hk)?.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)) else {
        return Ok(None);
    };
    let held = match written.remove(&seq) {
        Some(r) => Some(r),
        None => tree.get(record_key(seq))?.and_then(|b| Record::decode(&b).ok()),
    };
    let Some(held) = held else { return Ok(None) };
    let holding = held.state == State::Pending
        && held.hold.is_some()
        && held.next_attempt_at_ms.is_some_and(|at| at > now_ms + RELEASE_MARGIN_MS);
    if holding {
        Ok(Some(held))
    } else {
        written.insert(seq, held);
        Ok(None)
    }
}

/// Makes a held (pending) record superseded with `reason`, in this commit.
fn finish_held(
    mut held: Record,
    reason: String,
    now_ms: u64,
    batch: &mut sled::Batch,
    written: &mut HashMap<u64, Record>,
) {
    held.state = State::Superseded;
    held.last_error = Some(reason);
    held.next_attempt_at_ms = None;
    held.hold = None;
    held.last_attempt_at_ms = Some(now_ms);
    batch.insert(&record_key(held.seq), held.encode());
    written.insert(held.seq, held);
}

/// Marks a new record as not to be sent, with the reason.
fn drop_record(record: &mut Record, now_ms: u64, reason: String) {
    record.state = State::Superseded;
    record.last_error = Some(reason);
    record.last_attempt_at_ms = Some(now_ms);
    record.next_attempt_at_ms = None;
    record.hold = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, IntakeDefaults};
    use crate::rules::routing::RouteSection;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn record(seq: u64, action: &str) -> Record {
        let mut json = serde_json::json!({"routing_key": A, "event_action": action, "dedup_key": "d"});
        if action == "trigger" {
            json["payload"] = serde_json::json!({"summary": "s", "source": "web1", "severity": "error"});
        }
        Record::pending(
            format!("id{seq}"),
            seq,
            1,
            "socket",
            Event::from_value(json, &IntakeDefaults::default()).unwrap(),
        )
    }

    fn admit_one(tree: &sled::Tree, policy: &Policy, mut r: Record) -> Record {
        let (mut batch, mut written) = (sled::Batch::default(), HashMap::new());
        admit(tree, policy, &mut r, 1_000, &mut batch, &mut written, &|_, _| false).unwrap();
        r
    }

    #[test]
    fn a_resolve_follows_its_trigger_even_when_every_route_is_gone_and_not_after_a_plain_trigger() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let mut problems = Vec::new();
        let section = RouteSection {
            matchers: [("source".to_owned(), "web1".to_owned())].into(),
            routing_key: B.into(),
            ..Default::default()
        };
        let routed = Policy { router: Router::check(&[section], &mut problems), ..Default::default() };
        assert!(problems.is_empty());
        let none = Policy::default();
        assert_eq!(admit_one(&tree, &routed, record(1, "trigger")).event.routing_key().as_str(), B);
        assert_eq!(admit_one(&tree, &none, record(2, "acknowledge")).event.routing_key().as_str(), B);
        let resolve = admit_one(&tree, &none, record(3, "resolve"));
        assert_eq!(
            (resolve.event.routing_key().as_str(), resolve.route.as_deref()),
            (B, Some("route 1 (follows its trigger)"))
        );
        // Resolved: the next alert of that key goes by the rules of the day.
        assert_eq!(admit_one(&tree, &routed, record(4, "trigger")).event.routing_key().as_str(), B);
        assert_eq!(admit_one(&tree, &none, record(5, "trigger")).event.routing_key().as_str(), A);
        assert_eq!(admit_one(&tree, &routed, record(6, "resolve")).event.routing_key().as_str(), A);
    }
}
