//! What each request writes into the group commit's batch: new events (with the paging policy
//! applied at acceptance), delivery outcomes, operators' changes and PagerDuty's views. The
//! committer calls these in turn and commits the batch.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use tracing::warn;

use super::alerts::{repeated_trigger, AlertState};
use super::error::StoreError;
use super::keys::{alert_key, generated_id, generated_seq, id_key, key, meta_key, pause_key, prefixed_key, seq_of_id};
use super::record::{Record, State};
use super::request::{Accepted, NewEvent, Outcome, PendingEntry};
use super::shared::Inner;
use super::view::{merge_view, PagerDutyView};
use crate::clock::now_ms;
use crate::event::{Event, EventAction};

/// Puts new events in `batch`: a repeated trigger or an id already stored answers with the
/// earlier acceptance; the others get a sequence number, an id, the acceptance time and the
/// paging policy. Adds to the commit's tallies passed in.
#[allow(clippy::too_many_arguments)] // one commit's running tallies, passed by the committer
pub(super) fn prepare_insert(
    inner: &Inner,
    events: Vec<NewEvent>,
    batch: &mut sled::Batch,
    written: &mut HashMap<u64, Record>,
    new_ids: &mut HashMap<String, Accepted>,
    alerts: &HashMap<Vec<u8>, AlertState>,
    stored: &mut u64,
    not_sent: &mut (i64, i64),
    by_source: &mut HashMap<&'static str, u64>,
    key_deltas: &mut HashMap<String, i64>,
) -> Result<Vec<Accepted>, StoreError> {
    let now = now_ms();
    let window = inner.repeat_window_ms.load(Ordering::Relaxed);
    let mut accepted = Vec::with_capacity(events.len());
    let policy = inner.policy.lock().expect("policy lock").clone();
    for mut new in events {
        if window > 0 {
            if let Some(open) = repeated_trigger(&inner.tree, &new.event, now, window, alerts)? {
                accepted.push(Accepted { id: open.event_id, seq: 0, dedup_key: Some(open.dedup_key) });
                continue;
            }
        }
        if let Some(id) = &new.id {
            if let Some(earlier) = new_ids.get(id) {
                accepted.push(earlier.clone());
                continue;
            }
            if let Some(seq) = seq_of_id(&inner.tree, id)? {
                let earlier = match inner.tree.get(key(b'e', seq))? {
                    Some(bytes) => Record::decode(&bytes).ok(),
                    None => None,
                };
                if let Some(earlier) = earlier.filter(|r| same_event(&r.event, &new.event)) {
                    // The same event handed over again (a file read twice): stored once.
                    accepted.push(Accepted {
                        id: id.clone(),
                        seq,
                        dedup_key: earlier.event.dedup_key().map(str::to_owned),
                    });
                    continue;
                }
                // A different event reusing an id: never drop it; store it under a new id.
                warn!(id = %id, "an event reused an id already stored for a different event; stored under a new id");
                new.id = None;
            }
        }
        let seq = inner.next_seq.fetch_add(1, Ordering::SeqCst);
        let chosen = new.id.is_some();
        let id = new.id.unwrap_or_else(|| generated_id(seq, now));
        let mut event = new.event;
        stamp_trigger(&mut event, now);
        let mut record = Record::pending(id.clone(), seq, now, new.intake, event);
        // `not_sent`: (earlier pending records made superseded, records made superseded).
        let pd_open = |rk: &str, dedup: &str| {
            let k = alert_key(rk, dedup);
            match alerts.get(&k) {
                Some(s) => s.is_open(),
                None => inner
                    .tree
                    .get(&k)
                    .ok()
                    .flatten()
                    .and_then(|v| serde_json::from_slice::<AlertState>(&v).ok())
                    .is_some_and(|s| s.is_open()),
            }
        };
        let admitted = super::policy::admit(&inner.tree, &policy, &mut record, now, batch, written, &pd_open)?;
        if let Some(m) = inner.metrics.get() {
            count_policy(m, &record, !admitted.cancelled.is_empty());
        }
        for rk in admitted.cancelled {
            not_sent.0 += 1;
            not_sent.1 += 1;
            *key_deltas.entry(rk).or_insert(0) -= 1;
        }
        batch.insert(&key(b'e', seq), record.encode());
        if record.hold.is_some() {
            // A held resolve a trigger later in this commit may cancel: findable before the commit.
            written.insert(seq, record.clone());
        }
        if record.state == State::Pending {
            *stored += 1;
            *key_deltas.entry(record.event.routing_key().as_str().to_owned()).or_insert(0) += 1;
        } else {
            not_sent.1 += 1;
        }
        *by_source.entry(new.intake).or_insert(0) += 1;
        let a = Accepted { id, seq, dedup_key: record.event.dedup_key().map(str::to_owned) };
        if chosen {
            // Only producer-chosen ids need the index, and the in-commit check against repeats.
            batch.insert(id_key(&a.id), &seq.to_be_bytes());
            new_ids.insert(a.id.clone(), a.clone());
        }
        accepted.push(a);
    }
    Ok(accepted)
}

/// Counts what routes, silences and flap damping did to a newly accepted record.
fn count_policy(m: &crate::ops::metrics::Metrics, record: &Record, cancelled: bool) {
    let kind = |text: &str| {
        if text.starts_with("silence") {
            "silence"
        } else if text.starts_with("maintenance") {
            "maintenance"
        } else {
            "flap_damping"
        }
    };
    if let Some(route) = &record.route {
        let dropped =
            record.state == State::Superseded && record.last_error.as_deref().is_some_and(|e| e.starts_with("dropped"));
        m.policy(if dropped { "dropped" } else { "routed" }, route);
    }
    if let Some(hold) = &record.hold {
        m.policy("held", kind(hold));
    }
    if cancelled {
        let why = record.last_error.as_deref().unwrap_or_default();
        m.policy("cancelled", if why.contains("flap damping") { "flap_damping" } else { "silence" });
    }
}

/// Gives a v2 trigger without `payload.timestamp` the acceptance time `now_ms` (RFC 3339, UTC,
/// milliseconds), so that an alert delivered late still shows when it happened. Other events
/// are left as they are.
fn stamp_trigger(event: &mut Event, now_ms: u64) {
    if let Event::Alert(alert) = event {
        if alert.event_action == EventAction::Trigger {
            if let Some(payload) = alert.payload.as_mut().filter(|p| p.timestamp.is_none()) {
                payload.timestamp = Some(crate::clock::rfc3339(now_ms));
            }
        }
    }
}

/// Whether a stored event is the one handed over again: equal, or equal once the new one gets
/// the timestamp that acceptance gave the stored one.
fn same_event(stored: &Event, new: &Event) -> bool {
    if stored == new {
        return true;
    }
    match (stored, new) {
        (Event::Alert(s), Event::Alert(n)) => {
            let (Some(sp), Some(np)) = (&s.payload, &n.payload) else { return false };
            if np.timestamp.is_some() || sp.timestamp.is_none() {
                return false;
            }
            let mut filled = n.clone();
            if let Some(p) = filled.payload.as_mut() {
                p.timestamp = sp.timestamp.clone();
            }
            *s == filled
        }
        _ => false,
    }
}

/// Records the outcome of an attempt on record `seq` in `batch` (and, for a delivered event with a
/// dedup key, its alert state). `Ok(false)` when the record had left pending in the meantime.
pub(super) fn prepare_outcome(
    inner: &Inner,
    seq: u64,
    outcome: Outcome,
    batch: &mut sled::Batch,
    written: &mut HashMap<u64, Record>,
    alerts: &mut HashMap<Vec<u8>, AlertState>,
) -> Result<bool, StoreError> {
    let mut record = match written.remove(&seq) {
        Some(r) => r,
        None => match inner.tree.get(key(b'e', seq))? {
            Some(bytes) => Record::decode(&bytes).map_err(|e| StoreError::Corrupt(format!("record {seq}: {e}")))?,
            None => return Err(StoreError::Corrupt(format!("record {seq} is missing"))),
        },
    };
    let now = now_ms();
    if record.state != State::Pending {
        // Expired or purged while in flight: keep what the operator decided.
        written.insert(seq, record);
        return Ok(false);
    }
    if let Outcome::Superseded { by } = &outcome {
        record.state = State::Superseded;
        record.next_attempt_at_ms = None;
        record.last_error = Some(format!("superseded by the later resolve {by}; not sent"));
        // Its finish time, for retention.
        record.last_attempt_at_ms = Some(now);
        batch.insert(&key(b'e', seq), record.encode());
        written.insert(seq, record);
        return Ok(true);
    }
    record.attempts += 1;
    record.hold = None;
    record.last_attempt_at_ms = Some(now);
    let meta = |name: &[u8], text: String| (meta_key(name), serde_json::to_vec(&(now, text)).expect("meta encodes"));
    match &outcome {
        Outcome::Delivered { .. } => {
            let (k, v) = meta(b"last_success", record.id.clone());
            batch.insert(k, v);
            if let (Some(action), Some(dedup)) = (record.event.action(), record.event.dedup_key()) {
                let k = alert_key(record.event.routing_key().as_str(), dedup);
                let earlier = match alerts.get(&k) {
                    Some(s) => Some(s.clone()),
                    None => inner.tree.get(&k)?.and_then(|v| serde_json::from_slice::<AlertState>(&v).ok()),
                };
                let state = AlertState {
                    routing_key: record.event.routing_key().as_str().to_owned(),
                    dedup_key: dedup.to_owned(),
                    last_action: action,
                    at_ms: now,
                    summary: record.event.summary().map(str::to_owned).or(earlier.and_then(|e| e.summary)),
                    event_id: record.id.clone(),
                };
                batch.insert(k.clone(), serde_json::to_vec(&state).expect("alert states encode"));
                alerts.insert(k, state);
            }
        }
        Outcome::Failed { reason, .. } | Outcome::Retry { reason, .. } => {
            let (k, v) = meta(b"last_error", format!("{}: {reason}", record.id));
            batch.insert(k, v);
        }
        Outcome::Superseded { .. } => {}
    }
    match outcome {
        Outcome::Delivered { status } => {
            record.state = State::Delivered;
            record.last_status = Some(status);
            record.next_attempt_at_ms = None;
            record.last_error = None;
        }
        Outcome::Failed { status, reason, errors } => {
            record.state = State::Failed;
            record.last_status = status;
            record.next_attempt_at_ms = None;
            record.last_error = Some(reason);
            record.errors = errors;
        }
        Outcome::Retry { status, reason, next_attempt_at_ms, pause_routing_key } => {
            record.last_status = status;
            record.last_error = Some(reason);
            record.next_attempt_at_ms = Some(next_attempt_at_ms);
            if pause_routing_key {
                batch.insert(pause_key(record.event.routing_key().as_str()), &next_attempt_at_ms.to_be_bytes());
            }
        }
        Outcome::Superseded { .. } => unreachable!("handled above"),
    }
    batch.insert(&key(b'e', seq), record.encode());
    written.insert(seq, record);
    Ok(true)
}

/// An operator's change to records (`pdrelay queue retry`, `retry --waiting`, expiry, purge).
#[derive(Clone, Copy)]
pub(super) enum AdminChange {
    Retry,
    SendNow,
    Expire,
    Remove,
}

/// Applies an operator's change to each record it fits; returns the pending entries it made.
pub(super) fn prepare_admin(
    inner: &Inner,
    seqs: &[u64],
    change: AdminChange,
    batch: &mut sled::Batch,
    written: &mut HashMap<u64, Record>,
) -> Result<Vec<PendingEntry>, StoreError> {
    let mut changed = Vec::new();
    for &seq in seqs {
        let record = match written.remove(&seq) {
            Some(r) => Some(r),
            None => match inner.tree.get(key(b'e', seq))? {
                Some(bytes) => {
                    Some(Record::decode(&bytes).map_err(|e| StoreError::Corrupt(format!("record {seq}: {e}")))?)
                }
                None => None,
            },
        };
        let Some(mut record) = record else { continue };
        match (change, record.state) {
            (AdminChange::Retry, State::Failed) => {
                record.state = State::Pending;
                record.next_attempt_at_ms = None;
                changed.push(PendingEntry::of(seq, &record.event));
                let mut w = inner.low_water.lock().expect("low water lock");
                w.seq = w.seq.min(seq);
                w.lowered += 1;
            }
            (AdminChange::SendNow, State::Pending) if record.next_attempt_at_ms.is_some() => {
                record.next_attempt_at_ms = None;
                changed.push(PendingEntry::of(seq, &record.event));
            }
            (AdminChange::Expire, State::Pending) => {
                record.state = State::Failed;
                record.next_attempt_at_ms = None;
                record.last_error = Some("expired".to_owned());
                changed.push(PendingEntry::of(seq, &record.event));
            }
            (AdminChange::Remove, State::Delivered | State::Failed | State::Superseded) => {
                batch.remove(&key(b'e', seq));
                if generated_seq(&record.id) != Some(seq) {
                    batch.remove(id_key(&record.id));
                }
                changed.push(PendingEntry { seq, routing_key: record.state.as_str().to_owned(), dedup_key: None });
                continue;
            }
            _ => {
                written.insert(seq, record);
                continue;
            }
        }
        batch.insert(&key(b'e', seq), record.encode());
        written.insert(seq, record);
    }
    Ok(changed)
}

/// Writes (`true`) or removes (`false`) PagerDuty's views in `batch`; returns how many.
pub(super) fn put_views(
    inner: &Inner,
    views: Vec<(PagerDutyView, bool)>,
    batch: &mut sled::Batch,
) -> Result<usize, StoreError> {
    let n = views.len();
    for (view, keep) in views {
        let k = prefixed_key(b'v', &view.routing_key, &view.dedup_key);
        if keep {
            let old = inner.tree.get(&k)?.and_then(|v| serde_json::from_slice(&v).ok());
            batch.insert(k, serde_json::to_vec(&merge_view(old, view)).expect("views encode"));
        } else {
            batch.remove(k);
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use crate::clock::now_ms;
    use crate::event::{Event, IntakeDefaults};
    use crate::queue::record::State;
    use crate::queue::request::{NewEvent, Outcome};
    use crate::queue::store::tests::event;
    use crate::queue::store::Store;

    #[tokio::test]
    async fn triggers_without_a_timestamp_get_the_acceptance_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q")).unwrap();
        let rk = "r".repeat(32);
        let parse = |text: String| Event::from_json(text.as_bytes(), &IntakeDefaults::default()).unwrap();
        let given = parse(format!(
            r#"{{"routing_key":"{rk}","event_action":"trigger","dedup_key":"t","payload":{{"summary":"s","source":"h","severity":"info","timestamp":"2020-01-02T03:04:05Z"}}}}"#
        ));
        let resolve = parse(format!(r#"{{"routing_key":"{rk}","event_action":"resolve","dedup_key":"a"}}"#));
        let before = now_ms();
        let a = store
            .insert(vec![
                NewEvent { id: Some("file-a".into()), intake: "spool", event: event("a") },
                NewEvent { id: None, intake: "socket", event: given.clone() },
                NewEvent { id: None, intake: "socket", event: resolve.clone() },
            ])
            .await
            .unwrap();
        let after = now_ms();
        let stamped = store.get(a[0].seq).unwrap().unwrap();
        let Event::Alert(alert) = &stamped.event else { panic!("an alert") };
        let ts = alert.payload.as_ref().unwrap().timestamp.clone().expect("a timestamp was filled in");
        let parsed = time::OffsetDateTime::parse(&ts, &time::format_description::well_known::Rfc3339).unwrap();
        let ms = (parsed.unix_timestamp_nanos() / 1_000_000) as u64;
        assert!((before..=after).contains(&ms), "{ts} not within the insert");
        assert_eq!(ms, stamped.accepted_at_ms, "the timestamp is the acceptance time");
        assert!(ts.ends_with('Z'), "{ts}");
        assert_eq!(
            crate::event::normalize_timestamp(&ts, "payload.timestamp").unwrap(),
            ts,
            "already in the normal form"
        );
        // A producer's timestamp stays; events that are not triggers are not touched.
        assert_eq!(store.get(a[1].seq).unwrap().unwrap().event, given);
        assert_eq!(store.get(a[2].seq).unwrap().unwrap().event, resolve);
        // The same file read again is still the same event, stored once.
        let again = store
            .insert(vec![NewEvent { id: Some("file-a".into()), intake: "spool", event: event("a") }])
            .await
            .unwrap();
        assert_eq!(again[0], a[0]);
        assert_eq!(store.pending_count(), 3);
        assert_eq!(store.pending_by_key().get(&rk), Some(&3));
    }

    #[tokio::test]
    async fn send_now_clears_retry_times_and_pauses_and_superseded_records_leave_pending() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q")).unwrap();
        let rk = "r".repeat(32);
        let a = store
            .insert(vec![
                NewEvent { id: None, intake: "socket", event: event("a") },
                NewEvent { id: None, intake: "socket", event: event("b") },
            ])
            .await
            .unwrap();
        let far = now_ms() + 3_600_000;
        let retry = Outcome::Retry {
            status: Some(429),
            reason: "429".into(),
            next_attempt_at_ms: far,
            pause_routing_key: true,
        };
        store.record_outcome(a[0].seq, retry).await.unwrap();
        assert!(!store.take_send_now());
        assert_eq!(store.send_now(vec![a[0].seq, a[1].seq]).await.unwrap(), 1, "only the waiting one changes");
        assert!(store.take_send_now());
        assert!(!store.take_send_now(), "taken once");
        let record = store.get(a[0].seq).unwrap().unwrap();
        assert_eq!((record.next_attempt_at_ms, record.attempts), (None, 1));
        assert!(store.pauses().unwrap().is_empty(), "the key's pause is lifted");
        store.record_outcome(a[1].seq, Outcome::Superseded { by: "r1".into() }).await.unwrap();
        let superseded = store.get(a[1].seq).unwrap().unwrap();
        assert_eq!((superseded.state, superseded.attempts), (State::Superseded, 0));
        assert!(superseded.last_error.unwrap().contains("r1"));
        assert_eq!((store.pending_count(), store.superseded_count()), (1, 1));
        assert_eq!(store.pending_by_key().get(&rk), Some(&1));
        store.close();
        drop(store);
        let reopened = Store::open_when_unlocked(&dir.path().join("q")).unwrap();
        assert_eq!((reopened.pending_count(), reopened.superseded_count()), (1, 1));
        assert_eq!(reopened.pending_by_key().get(&rk), Some(&1));
    }
}
