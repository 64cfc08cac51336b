//! The store handle the other stages use: opening the queue (with the commit-mark check and the
//! counts by state), handing writes to the committer thread, and reading straight from sled.
//! The committer is in [`committer`](super::committer), what each write stores in
//! [`prepare`](super::prepare), the key layout in [`keys`](super::keys).

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tracing::error;

use super::alerts::AlertState;
use super::committer::{committer, release_free_memory, TRIM_AFTER_EVENTS};
use super::disk::{apply_atomically, make_private_dir, open_sled, restrict_files, sync_dir};
use super::error::StoreError;
use super::keys::{alert_key, key, meta_key, read_u64, seq_of, seq_of_id, silence_key};
use super::mark::{rebuild, CommitMark, Salvage};
use super::record::{Record, State};
use super::request::{Accepted, InsertTicket, NewEvent, Op, Outcome, PendingEntry, Reply, Request};
use super::shared::{Inner, Limits, LowWater};
use super::view::PagerDutyView;
use crate::clock::now_ms;

/// Requests waiting for the committer before senders wait (backpressure).
const CHANNEL_DEPTH: usize = 16_384;

/// A moment and what happened then: (ms since the epoch, text).
pub type Stamp = (u64, String);

/// The durable queue. Cheap to clone; all clones share one database and one committer.
#[derive(Clone)]
pub struct Store {
    pub(super) inner: Arc<Inner>,
}

/// Legacy pending-index keys (prefix `p`), written by versions before the index was dropped.
fn remove_legacy_pending_index(tree: &sled::Tree) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    let mut any = false;
    for item in tree.scan_prefix([b'p']) {
        batch.remove(item?.0);
        any = true;
    }
    if any {
        apply_atomically(tree, &batch)?;
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the database directory `path` and starts the committer thread.
    ///
    /// Errors: [`StoreError::Locked`] when a running daemon holds it; [`StoreError::Corrupt`]
    /// when sled finds damage; [`StoreError::Io`] otherwise.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        make_private_dir(path).map_err(|e| StoreError::Io(format!("cannot create {}: {e}", path.display())))?;
        let db = open_sled(path)?;
        let tree = db.open_tree("queue")?;
        let db_file = File::open(path.join("db"))?;
        let mark = CommitMark::open(path)?;
        // Every name in the directory (sled's files, the mark) and sled's `conf` are durable
        // before anything is acknowledged: a power cut in the queue's first lifetime must not
        // remove the mark, or the damage check would be skipped.
        File::open(path.join("conf"))?.sync_all()?;
        restrict_files(path)?;
        sync_dir(path)?;
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        // The commit mark: sled must hold at least every commit that was acknowledged.
        let stored_commit = read_u64(&tree, &meta_key(b"commit"))?.unwrap_or(0);
        if let Some(acknowledged) = mark.read()? {
            if stored_commit < acknowledged {
                return Err(StoreError::Damaged {
                    path: path.to_owned(),
                    detail: format!(
                        "it holds commits up to #{stored_commit} but commits up to #{acknowledged} were acknowledged; \
                         acknowledged events are missing"
                    ),
                });
            }
        }
        let last_seq = match tree.range(key(b'e', 0)..=key(b'e', u64::MAX)).next_back() {
            Some(item) => seq_of(&item?.0),
            None => 0,
        };
        let next_seq = last_seq.max(read_u64(&tree, &meta_key(b"next_seq"))?.unwrap_or(0)) + 1;
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let inner = Arc::new(Inner {
            tree,
            db,
            path: path.to_owned(),
            tx: Mutex::new(Some(tx)),
            priority: Mutex::new(Vec::new()),
            committer: Mutex::new(None),
            queued: Notify::new(),
            syncs: AtomicU64::new(0),
            requeued: Mutex::new(Vec::new()),
            repeat_window_ms: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            limits: Mutex::new(Limits::default()),
            next_seq: AtomicU64::new(next_seq),
            low_water: Mutex::new(LowWater::default()),
            scanned: AtomicU64::new(0),
            metrics: std::sync::OnceLock::new(),
            superseded: AtomicU64::new(0),
            pending_by_key: Mutex::new(HashMap::new()),
            send_now: std::sync::atomic::AtomicBool::new(false),
            outage_since: AtomicU64::new(0),
            policy: Mutex::new(Arc::default()),
            rate_limits: Mutex::new(crate::config::delivery::RateLimits {
                default_per_min: crate::config::delivery::DEFAULT_RATE_LIMIT,
                ..Default::default()
            }),
        });
        remove_legacy_pending_index(&inner.tree)?;
        let (mut pending, mut failed, mut delivered, mut superseded) = (0, 0, 0, 0);
        let mut lowest_pending = None;
        let mut by_key: HashMap<String, u64> = HashMap::new();
        for item in inner.tree.scan_prefix([b'e']) {
            #[derive(serde::Deserialize)]
            struct StateOnly {
                state: State,
                event: EventKeys,
            }
            #[derive(serde::Deserialize)]
            struct EventKeys {
                body: BodyKeys,
            }
            #[derive(serde::Deserialize)]
            struct BodyKeys {
                #[serde(default)]
                routing_key: Option<String>,
                #[serde(default)]
                service_key: Option<String>,
            }
            let (k, v) = item?;
            match serde_json::from_slice::<StateOnly>(&v) {
                Ok(StateOnly { state: State::Pending, event }) => {
                    pending += 1;
                    lowest_pending.get_or_insert(seq_of(&k));
                    let rk = event.body.routing_key.or(event.body.service_key).unwrap_or_default();
                    *by_key.entry(rk).or_insert(0) += 1;
                }
                Ok(StateOnly { state: State::Failed, .. }) => failed += 1,
                Ok(StateOnly { state: State::Delivered, .. }) => delivered += 1,
                Ok(StateOnly { state: State::Superseded, .. }) => superseded += 1,
                Err(_) => {}
            }
        }
        *inner.pending_by_key.lock().expect("pending by key lock") = by_key;
        inner.superseded.store(superseded, Ordering::SeqCst);
        inner.low_water.lock().expect("low water lock").seq = lowest_pending.unwrap_or(next_seq);
        inner.pending.store(pending, Ordering::SeqCst);
        inner.failed.store(failed, Ordering::SeqCst);
        inner.delivered.store(delivered, Ordering::SeqCst);
        mark.write(stored_commit)?;
        let for_thread = inner.clone();
        let handle = std::thread::Builder::new()
            .name("pdrelay-commit".into())
            .spawn(move || committer(&for_thread, db_file, mark, stored_commit, rx))
            .map_err(StoreError::from)?;
        *inner.committer.lock().expect("committer handle lock") = Some(handle);
        Ok(Store { inner })
    }

    /// Moves a damaged queue directory aside and builds a new one at `path` from every record
    /// that can still be read. Needs the daemon stopped. See [`Salvage`].
    pub fn salvage(path: &Path) -> Result<Salvage, StoreError> {
        let report = rebuild(path)?;
        // Opening it writes a new commit mark. The rebuilt records were only flushed (sled's
        // sync_file_range): fsync them, their blobs and the names, before salvage reports.
        Store::open_when_unlocked(path)?.close();
        let db = std::fs::File::open(path.join("db"))?;
        super::committer::sync_files(&db, path, &mut Default::default())?;
        super::disk::sync_dir(path)?;
        Ok(report)
    }

    /// [`Store::open`], but a lock conflict is waited out for up to 5 seconds: sled may hold its
    /// file lock for a moment after the last handle of the same process is dropped (its own
    /// threads let go of the database a little later). For reopening in the same process only.
    pub(crate) fn open_when_unlocked(path: &Path) -> Result<Store, StoreError> {
        let mut tries = 0;
        loop {
            match Store::open(path) {
                Err(StoreError::Locked { .. }) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                result => return result,
            }
        }
    }

    /// Directory of the database.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Hands a request to the committer; waits only for room in its channel.
    /// Inserts queue in order behind other inserts (and wait for room: backpressure); every
    /// other request (delivery outcomes, operators' changes) goes ahead of them, so that a flood
    /// of intake never stalls delivery.
    async fn submit(&self, op: Op) -> Result<oneshot::Receiver<Result<Reply, StoreError>>, StoreError> {
        let tx = self.inner.tx.lock().expect("sender lock").clone().ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        let request = Request { op, reply };
        if matches!(request.op, Op::Insert(_)) {
            tx.send(Some(request)).await.map_err(|_| StoreError::Closed)?;
        } else {
            self.inner.priority.lock().expect("priority lock").push(request);
            // A wake-up; if the channel is full the committer is busy and looks here next.
            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(None) {
                return Err(StoreError::Closed);
            }
        }
        Ok(rx)
    }

    async fn request(&self, op: Op) -> Result<Reply, StoreError> {
        self.submit(op).await?.await.map_err(|_| StoreError::Closed)?
    }

    /// Stores events durably (see the module docs of `queue` for what "durably" means here) and
    /// returns their ids, sequence numbers and dedup keys, in order. An event whose `id` is
    /// already stored is not stored again; its first acceptance is returned.
    pub async fn insert(&self, events: Vec<NewEvent>) -> Result<Vec<Accepted>, StoreError> {
        self.submit_insert(events).await?.wait().await
    }

    /// The first half of [`Store::insert`]: queues the events for the committer, in the order of
    /// calls, and returns a ticket to wait on. A producer that must keep its order (one socket
    /// connection) submits in order and waits later, so that it can pipeline.
    pub async fn submit_insert(&self, events: Vec<NewEvent>) -> Result<InsertTicket, StoreError> {
        self.submit(Op::Insert(events)).await.map(InsertTicket)
    }

    /// Records the outcome of an attempt on event `seq` durably. A delivered or failed event
    /// leaves the pending set in the same commit.
    pub async fn record_outcome(&self, seq: u64, outcome: Outcome) -> Result<(), StoreError> {
        self.request(Op::Outcome { seq, outcome }).await.map(|_| ())
    }

    /// Failed events back to pending (`queue retry`), at the end of their lines. Returns how many
    /// changed (events not in the failed state are left alone).
    pub async fn retry_failed(&self, seqs: Vec<u64>) -> Result<usize, StoreError> {
        self.changed(Op::Retry(seqs)).await
    }

    /// Pending events to failed with the reason "expired". Returns how many changed.
    pub async fn expire(&self, seqs: Vec<u64>) -> Result<usize, StoreError> {
        self.changed(Op::Expire(seqs)).await
    }

    /// Removes delivered and failed records for good; pending ones are never removed. Returns
    /// how many were removed.
    pub async fn remove_finished(&self, seqs: Vec<u64>) -> Result<usize, StoreError> {
        self.changed(Op::Remove(seqs)).await
    }

    async fn changed(&self, op: Op) -> Result<usize, StoreError> {
        match self.request(op).await? {
            Reply::Changed(n) => Ok(n),
            _ => Err(StoreError::Corrupt("unexpected reply from the committer".into())),
        }
    }

    /// Drops a trigger, at insert, that repeats an open alert (same routing key, dedup key and
    /// summary) last delivered less than `window` ago; the producer gets that alert's event id.
    /// Zero turns it off (the default).
    pub fn set_repeat_trigger_window(&self, window: Duration) {
        self.inner.repeat_window_ms.store(window.as_millis() as u64, Ordering::Relaxed);
    }

    /// Dedup-key tracking of one key.
    pub fn alert(&self, routing_key: &str, dedup_key: &str) -> Result<Option<AlertState>, StoreError> {
        Ok(self.inner.tree.get(alert_key(routing_key, dedup_key))?.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Every tracked dedup key (open and resolved), in key order.
    pub fn alerts(&self) -> Result<Vec<AlertState>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.tree.scan_prefix([b'a']) {
            let (_, v) = item?;
            if let Ok(state) = serde_json::from_slice(&v) {
                out.push(state);
            }
        }
        Ok(out)
    }

    /// PagerDuty's views of tracked dedup keys (reconciliation), in key order.
    pub fn pagerduty_views(&self) -> Result<Vec<PagerDutyView>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.tree.scan_prefix([b'v']) {
            let (_, v) = item?;
            if let Ok(view) = serde_json::from_slice(&v) {
                out.push(view);
            }
        }
        Ok(out)
    }

    /// Writes PagerDuty's views (`true`) or removes them (`false`), in one commit. Returns how
    /// many were written or removed.
    pub async fn put_pagerduty_views(&self, views: Vec<(PagerDutyView, bool)>) -> Result<usize, StoreError> {
        self.changed(Op::PutViews(views)).await
    }

    /// Forgets resolved alerts whose resolve was delivered before `before_ms`.
    pub async fn forget_resolved(&self, before_ms: u64) -> Result<usize, StoreError> {
        self.changed(Op::ForgetResolved(before_ms)).await
    }

    /// Waiting events (pending, retry time ahead) made sendable now and their routing keys'
    /// pauses lifted (`queue retry --waiting`). Returns how many changed.
    pub async fn send_now(&self, seqs: Vec<u64>) -> Result<usize, StoreError> {
        self.changed(Op::SendNow(seqs)).await
    }

    /// Whether a send-now was recorded since the last call (for the dispatcher: it then reads
    /// the pauses again and tries its waiting lines).
    pub fn take_send_now(&self) -> bool {
        self.inner.send_now.swap(false, Ordering::SeqCst)
    }

    /// Pending events per routing key (full keys; never log them whole).
    pub fn pending_by_key(&self) -> HashMap<String, u64> {
        self.inner.pending_by_key.lock().expect("pending by key lock").clone()
    }

    /// Superseded records kept now.
    pub fn superseded_count(&self) -> u64 {
        self.inner.superseded.load(Ordering::SeqCst)
    }

    /// Sets the routes, flap damping and maintenance windows that acceptance applies from now
    /// on, with the silences stored in the database.
    pub fn set_policy(&self, mut policy: super::policy::Policy) -> Result<(), StoreError> {
        policy.silences.set_stored(self.silences()?, now_ms());
        *self.inner.policy.lock().expect("policy lock") = Arc::new(policy);
        Ok(())
    }

    fn refresh_silences(&self) -> Result<(), StoreError> {
        let stored = self.silences()?;
        let mut guard = self.inner.policy.lock().expect("policy lock");
        let mut policy = (**guard).clone();
        policy.silences.set_stored(stored, now_ms());
        *guard = Arc::new(policy);
        Ok(())
    }

    /// Every stored silence, expired ones included, in id order.
    pub fn silences(&self) -> Result<Vec<crate::rules::silence::Silence>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.tree.scan_prefix([b's']) {
            let (_, v) = item?;
            if let Ok(s) = serde_json::from_slice(&v) {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Stores a silence durably (answers once it is on disk); acceptance applies it from then.
    pub async fn save_silence(&self, silence: &crate::rules::silence::Silence) -> Result<(), StoreError> {
        let value = serde_json::to_vec(silence).expect("silences encode");
        self.request(Op::Put(vec![(silence_key(&silence.id), Some(value))])).await?;
        self.refresh_silences()
    }

    /// Ends the silence `id` now and sends the events it held (as `queue retry --waiting` does);
    /// `None` when there is no such silence. Returns it and how many events it released.
    pub async fn expire_silence(
        &self,
        id: &str,
    ) -> Result<Option<(crate::rules::silence::Silence, usize)>, StoreError> {
        let Some(mut silence) = self
            .inner
            .tree
            .get(silence_key(id))?
            .and_then(|v| serde_json::from_slice::<crate::rules::silence::Silence>(&v).ok())
        else {
            return Ok(None);
        };
        let now = now_ms();
        if silence.ends_at_ms > now {
            silence.ends_at_ms = now;
            silence.starts_at_ms = silence.starts_at_ms.min(now);
            self.save_silence(&silence).await?;
        }
        let held = super::policy::held_by(&self.inner.tree, &format!("silence {id}"))?;
        let released = if held.is_empty() { 0 } else { self.send_now(held).await? };
        Ok(Some((silence, released)))
    }

    /// Sets the proactive rate limits that status and metrics report against.
    pub fn set_rate_limits(&self, limits: crate::config::delivery::RateLimits) {
        *self.inner.rate_limits.lock().expect("rate limits lock") = limits;
    }

    /// Records (for status and metrics) that PagerDuty is held for unreachable since `since_ms`
    /// (ms since the epoch), or no longer (`None`). Not stored on disk.
    pub fn set_outage(&self, since_ms: Option<u64>) {
        self.inner.outage_since.store(since_ms.unwrap_or(0), Ordering::SeqCst);
    }

    /// See [`Store::set_outage`].
    pub fn outage_since(&self) -> Option<u64> {
        Some(self.inner.outage_since.load(Ordering::SeqCst)).filter(|&ms| ms > 0)
    }

    /// The proactive rate limits (PagerDuty's default until set).
    pub fn rate_limits(&self) -> crate::config::delivery::RateLimits {
        self.inner.rate_limits.lock().expect("rate limits lock").clone()
    }

    /// Takes the events `queue retry` put back to pending since the last call.
    pub fn take_requeued(&self) -> Vec<PendingEntry> {
        std::mem::take(&mut *self.inner.requeued.lock().expect("requeued lock"))
    }

    /// When the last delivery succeeded, and the last error: `(ms since the epoch, text)`.
    pub fn last_events(&self) -> Result<(Option<Stamp>, Option<Stamp>), StoreError> {
        let read = |name: &[u8]| -> Result<Option<Stamp>, StoreError> {
            Ok(self.inner.tree.get(meta_key(name))?.and_then(|v| serde_json::from_slice(&v).ok()))
        };
        Ok((read(b"last_success")?, read(b"last_error")?))
    }

    /// Counts durably stored events in `metrics` (by intake) from now on.
    pub fn set_metrics(&self, metrics: Arc<crate::ops::metrics::Metrics>) {
        let _ = self.inner.metrics.set(metrics);
    }

    /// Answers once the committer thread has served it: proof that commits are not stuck.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.request(Op::Ping).await.map(|_| ())
    }

    /// Woken after each commit that stored new events.
    pub fn queued(&self) -> &Notify {
        &self.inner.queued
    }

    /// Completed fsync rounds since open.
    pub fn sync_count(&self) -> u64 {
        self.inner.syncs.load(Ordering::SeqCst)
    }

    /// The record with sequence number `seq`.
    pub fn get(&self, seq: u64) -> Result<Option<Record>, StoreError> {
        match self.inner.tree.get(key(b'e', seq))? {
            Some(bytes) => {
                Record::decode(&bytes).map(Some).map_err(|e| StoreError::Corrupt(format!("record {seq}: {e}")))
            }
            None => Ok(None),
        }
    }

    /// The record with public id `id`.
    pub fn get_by_id(&self, id: &str) -> Result<Option<Record>, StoreError> {
        match seq_of_id(&self.inner.tree, id)? {
            Some(seq) => self.get(seq),
            None => Ok(None),
        }
    }

    /// Pending events with a sequence number of at least `from`, in order, at most `limit`.
    /// Reads the records themselves (there is no separate pending index: one sled write fewer
    /// per event), starting at the low-water mark when `from` is below it. A record that does not
    /// decode is logged and skipped, so that it cannot stop delivery of the others.
    pub fn pending_from(&self, from: u64, limit: usize) -> Result<Vec<PendingEntry>, StoreError> {
        let (low, lowered) = {
            let w = self.inner.low_water.lock().expect("low water lock");
            (w.seq, w.lowered)
        };
        let start = from.max(low);
        let mut out = Vec::new();
        let mut last_seen = None;
        for item in self.inner.tree.range(key(b'e', start)..=key(b'e', u64::MAX)) {
            let (k, v) = item?;
            let seq = seq_of(&k);
            last_seen = Some(seq);
            match Record::decode(&v) {
                Ok(record) if record.state == State::Pending => {
                    out.push(PendingEntry::of(seq, &record.event));
                    if out.len() >= limit {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    error!(seq, error = %e, "a queued record cannot be read; skipping it (see `pdrelay queue salvage`)")
                }
            }
        }
        // Scans past a paused routing key's events decode many records: hand the freed memory
        // back now and then, as the committer does after a burst.
        let read = last_seen.map_or(0, |l| l + 1 - start);
        if self.inner.scanned.fetch_add(read, Ordering::Relaxed) + read >= TRIM_AFTER_EVENTS * 5 {
            self.inner.scanned.store(0, Ordering::Relaxed);
            release_free_memory();
        }
        if from <= low {
            // Nothing pending between `low` and the first pending found (or the last record seen).
            if let Some(found) = out.first().map(|e| e.seq).or(last_seen.map(|s| s + 1)) {
                let mut w = self.inner.low_water.lock().expect("low water lock");
                if w.lowered == lowered && w.seq < found {
                    w.seq = found;
                }
            }
        }
        Ok(out)
    }

    /// Number of pending events (including those waiting for a retry).
    pub fn pending_count(&self) -> usize {
        self.inner.pending.load(Ordering::SeqCst) as usize
    }

    /// Failed and delivered records kept now: `(failed, delivered)`.
    pub fn finished_counts(&self) -> (u64, u64) {
        (self.inner.failed.load(Ordering::SeqCst), self.inner.delivered.load(Ordering::SeqCst))
    }

    /// Sets the intake bounds (see [`Limits`]).
    pub fn set_limits(&self, limits: Limits) {
        *self.inner.limits.lock().expect("limits lock") = limits;
    }

    /// The intake bounds in force.
    pub fn limits(&self) -> Limits {
        *self.inner.limits.lock().expect("limits lock")
    }

    /// Routing keys paused by a 429 (or v1 403), with pause-until in ms since the epoch.
    pub fn pauses(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.tree.scan_prefix([b'k']) {
            let (k, v) = item?;
            let until =
                u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt("pause entry".into()))?);
            out.push((String::from_utf8_lossy(&k[1..]).into_owned(), until));
        }
        Ok(out)
    }

    /// All records in acceptance order (for listings and tests).
    pub fn records(&self) -> impl Iterator<Item = Result<Record, StoreError>> + '_ {
        self.inner.tree.scan_prefix([b'e']).map(|item| {
            let (_, v) = item?;
            Record::decode(&v).map_err(|e| StoreError::Corrupt(e.to_string()))
        })
    }

    /// Stops the committer after it has written what it was given, and flushes. Later writes
    /// answer [`StoreError::Closed`].
    pub fn close(&self) {
        self.inner.tx.lock().expect("sender lock").take();
        if let Some(handle) = self.inner.committer.lock().expect("committer handle lock").take() {
            let _ = handle.join();
        }
        let _ = self.inner.db.flush();
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::event::{Event, IntakeDefaults};

    /// A v2 trigger on routing key `r` x 32 with dedup key `dedup`.
    pub(crate) fn event(dedup: &str) -> Event {
        Event::from_json(
            format!(r#"{{"routing_key":"{}","event_action":"trigger","dedup_key":"{dedup}","payload":{{"summary":"s","source":"h","severity":"info"}}}}"#, "r".repeat(32)).as_bytes(),
            &IntakeDefaults::default(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn insert_is_ordered_idempotent_by_id_and_outcomes_leave_pending() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q")).unwrap();
        let syncs = store.sync_count();
        let a = store
            .insert(vec![
                NewEvent { id: Some("fixed".into()), intake: "spool", event: event("a") },
                NewEvent { id: None, intake: "socket", event: event("b") },
            ])
            .await
            .unwrap();
        assert!(store.sync_count() > syncs, "acknowledged before a sync");
        // The commit mark names the commit that holds them, before the answer came back.
        let mark = CommitMark::open(&dir.path().join("q")).unwrap().read().unwrap().unwrap();
        assert_eq!(Some(mark), read_u64(&store.inner.tree, &meta_key(b"commit")).unwrap());
        assert!(a[0].seq < a[1].seq);
        let again = store
            .insert(vec![NewEvent { id: Some("fixed".into()), intake: "spool", event: event("a") }])
            .await
            .unwrap();
        assert_eq!(again[0], a[0]);
        assert_eq!(store.pending_count(), 2);
        let pending = store.pending_from(0, 10).unwrap();
        assert_eq!(pending[0].dedup_key.as_deref(), Some("a"));
        store.record_outcome(a[0].seq, Outcome::Delivered { status: 202 }).await.unwrap();
        store
            .record_outcome(
                a[1].seq,
                Outcome::Retry {
                    status: Some(429),
                    reason: "429".into(),
                    next_attempt_at_ms: 99,
                    pause_routing_key: true,
                },
            )
            .await
            .unwrap();
        assert_eq!(store.pending_count(), 1);
        assert_eq!(store.get(a[0].seq).unwrap().unwrap().state, State::Delivered);
        let waiting = store.get_by_id(&a[1].id).unwrap().unwrap();
        assert_eq!((waiting.attempts, waiting.next_attempt_at_ms), (1, Some(99)));
        assert_eq!(store.pauses().unwrap(), vec![("r".repeat(32), 99)]);
        store.close();
        assert!(matches!(store.insert(vec![]).await, Err(StoreError::Closed)));
        drop(store);
        let reopened = Store::open_when_unlocked(&dir.path().join("q")).unwrap();
        assert_eq!(reopened.pending_count(), 1);
        assert_eq!(reopened.finished_counts(), (0, 1), "counts by state survive a restart");
        reopened
            .record_outcome(a[1].seq, Outcome::Failed { status: Some(400), reason: "x".into(), errors: vec![] })
            .await
            .unwrap();
        assert_eq!((reopened.pending_count(), reopened.finished_counts()), (0, (1, 1)));
        assert_eq!(reopened.retry_failed(vec![a[1].seq]).await.unwrap(), 1);
        assert_eq!((reopened.pending_count(), reopened.finished_counts()), (1, (0, 1)));
        assert_eq!(reopened.remove_finished(vec![a[0].seq]).await.unwrap(), 1);
        assert_eq!(reopened.finished_counts(), (0, 0));
    }

    #[tokio::test]
    async fn pending_scans_skip_finished_records_and_see_retried_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q")).unwrap();
        let all = store
            .insert((0..6).map(|i| NewEvent { id: None, intake: "socket", event: event(&format!("d{i}")) }).collect())
            .await
            .unwrap();
        let failed = Outcome::Failed { status: Some(400), reason: "x".into(), errors: vec![] };
        store.record_outcome(all[0].seq, failed).await.unwrap();
        for a in &all[1..4] {
            store.record_outcome(a.seq, Outcome::Delivered { status: 202 }).await.unwrap();
        }
        let seqs = |v: Vec<PendingEntry>| v.into_iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(store.pending_from(0, 10).unwrap()), vec![all[4].seq, all[5].seq]);
        assert_eq!(store.inner.low_water.lock().unwrap().seq, all[4].seq, "the scan raised the low-water mark");
        assert_eq!(seqs(store.pending_from(0, 1).unwrap()), vec![all[4].seq]);
        // `queue retry` makes a record below the mark pending again: scans must see it.
        store.retry_failed(vec![all[0].seq]).await.unwrap();
        assert_eq!(seqs(store.pending_from(0, 10).unwrap()), vec![all[0].seq, all[4].seq, all[5].seq]);
        store.close();
        drop(store);
        let reopened = Store::open_when_unlocked(&dir.path().join("q")).unwrap();
        assert_eq!(reopened.pending_count(), 3);
        assert_eq!(seqs(reopened.pending_from(all[1].seq, 10).unwrap()), vec![all[4].seq, all[5].seq]);
    }

    #[tokio::test]
    async fn a_legacy_pending_index_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let store = Store::open(&path).unwrap();
        let a = store.insert(vec![NewEvent { id: None, intake: "socket", event: event("a") }]).await.unwrap();
        store.inner.tree.insert(key(b'p', a[0].seq), b"legacy".to_vec()).unwrap();
        store.inner.tree.insert(key(b'p', 999), b"legacy".to_vec()).unwrap();
        store.inner.db.flush().unwrap();
        store.close();
        drop(store);
        let reopened = Store::open_when_unlocked(&path).unwrap();
        assert_eq!(reopened.inner.tree.scan_prefix([b'p']).count(), 0);
        assert_eq!(reopened.pending_count(), 1);
        assert_eq!(reopened.pending_from(0, 10).unwrap().len(), 1);
    }
}
