//! The committer thread: the only writer. It groups the requests that arrive while it syncs into
//! one batch, applies it in one sled transaction, flushes, fsyncs the files, writes the commit
//! mark, and only then answers each request: a group commit. What each request writes into the
//! batch is in `prepare`; why this makes an acknowledged event durable is in the `queue` module
//! docs.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use super::alerts::{forget_resolved, AlertState};
use super::disk::{apply_atomically, free_bytes, sync_dir};
use super::error::StoreError;
use super::keys::{meta_key, pause_key};
use super::mark::CommitMark;
use super::prepare::{prepare_admin, prepare_insert, prepare_outcome, put_views, AdminChange};
use super::record::{Record, State};
use super::request::{Accepted, Op, Outcome, PendingEntry, Reply, Request};
use super::shared::{Inner, Limits};

/// Most requests folded into one group commit.
const MAX_GROUP: usize = 8192;

/// Events stored in a burst after which, once the burst ends, freed heap memory is handed back.
pub(super) const TRIM_AFTER_EVENTS: u64 = 10_000;

/// Hands freed heap memory back to the system. An intake burst allocates on the runtime's
/// threads and frees on the committer's, which leaves glibc's per-thread arenas holding freed
/// pages: measured with 200,000 pending (bench/run.sh), 130 MB resident before, see README
/// "Performance" after. `malloc_trim(3)` walks every arena; it takes milliseconds, and runs
/// only when a burst has ended (the committer has nothing waiting).
pub(super) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The committer thread: group, write, flush, fsync, answer.
pub(super) fn committer(
    inner: &Inner,
    db_file: File,
    mark: CommitMark,
    mut commit: u64,
    mut rx: mpsc::Receiver<Option<Request>>,
) {
    let mut synced_blobs: HashSet<OsString> = HashSet::new();
    let take_priority = || std::mem::take(&mut *inner.priority.lock().expect("priority lock"));
    let mut stored_since_trim = 0u64;
    loop {
        let mut group = take_priority();
        if group.is_empty() {
            if rx.is_empty() && stored_since_trim >= TRIM_AFTER_EVENTS {
                release_free_memory();
                stored_since_trim = 0;
            }
            match rx.blocking_recv() {
                Some(Some(first)) => group.push(first),
                Some(None) => {}
                None => {
                    // Closed: a last round for anything that slipped in, then stop.
                    group = take_priority();
                    if group.is_empty() {
                        break;
                    }
                }
            }
            group.append(&mut take_priority());
        }
        let mut inserts = 0;
        while inserts < MAX_GROUP {
            match rx.try_recv() {
                Ok(Some(req)) => {
                    group.push(req);
                    inserts += 1;
                }
                Ok(None) => group.append(&mut take_priority()),
                Err(_) => break,
            }
        }
        if group.is_empty() {
            continue;
        }
        let mut batch = sled::Batch::default();
        let mut written: HashMap<u64, Record> = HashMap::new();
        let mut new_ids: HashMap<String, Accepted> = HashMap::new();
        let mut inserted_any = false;
        let mut requeued: Vec<PendingEntry> = Vec::new();
        let mut alerts: HashMap<Vec<u8>, AlertState> = HashMap::new();
        let mut replies = Vec::with_capacity(group.len());
        let only_probes = group.iter().all(|r| matches!(r.op, Op::Ping));
        let mut by_source: HashMap<&'static str, u64> = HashMap::new();
        let limits = *inner.limits.lock().expect("limits lock");
        let mut room: Option<Result<u64, StoreError>> = None;
        let mut pending_delta: i64 = 0;
        let (mut failed_delta, mut delivered_delta, mut superseded_delta): (i64, i64, i64) = (0, 0, 0);
        let mut key_deltas: HashMap<String, i64> = HashMap::new();
        let mut send_now = false;
        for req in group {
            let result = match req.op {
                Op::Insert(events) => {
                    // Checked once per group: the queue's size limit and the disk's reserve.
                    let left = room.get_or_insert_with(|| intake_room(inner, &limits));
                    match left {
                        Ok(n) if *n >= events.len() as u64 => {
                            inserted_any = true;
                            let mut stored = 0u64;
                            let mut not_sent = (0i64, 0i64);
                            let result = prepare_insert(
                                inner,
                                events,
                                &mut batch,
                                &mut written,
                                &mut new_ids,
                                &alerts,
                                &mut stored,
                                &mut not_sent,
                                &mut by_source,
                                &mut key_deltas,
                            );
                            *n = n.saturating_sub(stored);
                            pending_delta += stored as i64 - not_sent.0;
                            superseded_delta += not_sent.1;
                            stored_since_trim += stored;
                            result.map(Reply::Inserted)
                        }
                        Ok(_) => Err(StoreError::Full(format!(
                            "{} events pending, the limit is {} (queue.max_pending)",
                            inner.pending.load(Ordering::SeqCst),
                            limits.max_pending
                        ))),
                        Err(e) => Err(e.clone()),
                    }
                }
                Op::Outcome { seq, outcome } => {
                    let finishes = !matches!(outcome, Outcome::Retry { .. });
                    let delivered = matches!(outcome, Outcome::Delivered { .. });
                    let superseded = matches!(outcome, Outcome::Superseded { .. });
                    let result = prepare_outcome(inner, seq, outcome, &mut batch, &mut written, &mut alerts);
                    if finishes {
                        if let Ok(true) = result {
                            pending_delta -= 1;
                            if delivered {
                                delivered_delta += 1;
                            } else if superseded {
                                superseded_delta += 1;
                            } else {
                                failed_delta += 1;
                            }
                            if let Some(r) = written.get(&seq) {
                                *key_deltas.entry(r.event.routing_key().as_str().to_owned()).or_insert(0) -= 1;
                            }
                        }
                    }
                    result.map(|_| Reply::Done)
                }
                Op::Retry(seqs) => {
                    let changed = prepare_admin(inner, &seqs, AdminChange::Retry, &mut batch, &mut written);
                    if let Ok(entries) = &changed {
                        requeued.extend(entries.iter().cloned());
                        pending_delta += entries.len() as i64;
                        failed_delta -= entries.len() as i64;
                        for e in entries {
                            *key_deltas.entry(e.routing_key.clone()).or_insert(0) += 1;
                        }
                    }
                    changed.map(|e| Reply::Changed(e.len()))
                }
                Op::SendNow(seqs) => {
                    let changed = prepare_admin(inner, &seqs, AdminChange::SendNow, &mut batch, &mut written);
                    if let Ok(entries) = &changed {
                        let keys: HashSet<&str> = entries.iter().map(|e| e.routing_key.as_str()).collect();
                        for rk in keys {
                            batch.remove(pause_key(rk));
                        }
                        send_now |= !entries.is_empty();
                    }
                    changed.map(|e| Reply::Changed(e.len()))
                }
                Op::Expire(seqs) => {
                    let changed = prepare_admin(inner, &seqs, AdminChange::Expire, &mut batch, &mut written);
                    if let Ok(entries) = &changed {
                        pending_delta -= entries.len() as i64;
                        failed_delta += entries.len() as i64;
                        for e in entries {
                            *key_deltas.entry(e.routing_key.clone()).or_insert(0) -= 1;
                        }
                    }
                    changed.map(|e| Reply::Changed(e.len()))
                }
                Op::Remove(seqs) => {
                    let changed = prepare_admin(inner, &seqs, AdminChange::Remove, &mut batch, &mut written);
                    if let Ok(entries) = &changed {
                        // For removals, each entry's routing_key field names the state removed.
                        for e in entries {
                            if e.routing_key == State::Delivered.as_str() {
                                delivered_delta -= 1;
                            } else if e.routing_key == State::Superseded.as_str() {
                                superseded_delta -= 1;
                            } else {
                                failed_delta -= 1;
                            }
                        }
                    }
                    changed.map(|e| Reply::Changed(e.len()))
                }
                Op::ForgetResolved(before_ms) => {
                    forget_resolved(&inner.tree, before_ms, &mut batch).map(Reply::Changed)
                }
                Op::PutViews(views) => put_views(inner, views, &mut batch).map(Reply::Changed),
                Op::Ping => Ok(Reply::Done),
                Op::Put(writes) => {
                    for (k, v) in writes {
                        match v {
                            Some(v) => batch.insert(k, v),
                            None => batch.remove(k),
                        }
                    }
                    Ok(Reply::Done)
                }
            };
            replies.push((req.reply, result));
        }
        if only_probes {
            // Only liveness probes: no commit, no sync.
            for (reply, result) in replies {
                let _ = reply.send(result);
            }
            continue;
        }
        commit += 1;
        batch.insert(meta_key(b"commit"), &commit.to_be_bytes());
        batch.insert(meta_key(b"next_seq"), &inner.next_seq.load(Ordering::SeqCst).to_be_bytes());
        let committed = apply_atomically(&inner.tree, &batch)
            .and_then(|_| inner.db.flush().map_err(StoreError::from))
            .and_then(|_| sync_files(&db_file, &inner.path, &mut synced_blobs).map_err(StoreError::from))
            .and_then(|_| mark.write(commit).map_err(StoreError::from));
        if committed.is_ok() {
            inner.syncs.fetch_add(1, Ordering::SeqCst);
            if let Some(metrics) = inner.metrics.get() {
                for (source, n) in &by_source {
                    metrics
                        .intake
                        .get_or_create(&crate::ops::metrics::IntakeLabels { source: (*source).to_owned() })
                        .inc_by(*n);
                }
            }
            add(&inner.pending, pending_delta);
            add(&inner.failed, failed_delta);
            add(&inner.delivered, delivered_delta);
            add(&inner.superseded, superseded_delta);
            if !key_deltas.is_empty() {
                let mut by_key = inner.pending_by_key.lock().expect("pending by key lock");
                for (rk, delta) in key_deltas {
                    let n = by_key.entry(rk).or_insert(0);
                    *n = n.saturating_add_signed(delta);
                }
                // Keys whose count reached zero are removed: the map holds keys with work.
                by_key.retain(|_, n| *n > 0);
            }
            if send_now {
                inner.send_now.store(true, Ordering::SeqCst);
            }
        }
        for (reply, result) in replies {
            let result = match &committed {
                Ok(()) => result,
                Err(e) => Err(e.clone()),
            };
            let _ = reply.send(result);
        }
        if committed.is_ok() && !requeued.is_empty() {
            inner.requeued.lock().expect("requeued lock").append(&mut requeued);
        }
        if (inserted_any || send_now || !requeued.is_empty() || inner.has_requeued()) && committed.is_ok() {
            inner.queued.notify_one();
        }
    }
}

/// Adds a signed change to a counter, never below zero.
fn add(counter: &AtomicU64, delta: i64) {
    let _ = counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| Some(n.saturating_add_signed(delta)));
}

/// How many more events intake may store now: the queue's size limit less what is pending, or
/// [`StoreError::Full`] when the disk is under its reserve.
fn intake_room(inner: &Inner, limits: &Limits) -> Result<u64, StoreError> {
    if limits.min_free_bytes > 0 {
        let free = free_bytes(&inner.path)?;
        if free < limits.min_free_bytes {
            return Err(StoreError::Full(format!(
                "{free} bytes free on the disk holding {}, below the {} byte reserve (queue.min_free_bytes)",
                inner.path.display(),
                limits.min_free_bytes
            )));
        }
    }
    Ok(limits.max_pending.saturating_sub(inner.pending.load(Ordering::SeqCst)))
}

/// fsync the `db` file, then any blob file not yet synced and the directories naming them.
pub(super) fn sync_files(db_file: &File, path: &Path, synced_blobs: &mut HashSet<OsString>) -> std::io::Result<()> {
    db_file.sync_data()?;
    let blobs = path.join("blobs");
    let entries = match std::fs::read_dir(&blobs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut present = HashSet::new();
    let mut new_names = false;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if !synced_blobs.contains(&name) {
            match File::open(entry.path()) {
                Ok(f) => f.sync_all()?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            new_names = true;
        }
        present.insert(name);
    }
    *synced_blobs = present;
    if new_names {
        sync_dir(&blobs)?;
        sync_dir(path)?;
    }
    Ok(())
}
