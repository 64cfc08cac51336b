//! sled behind a small interface. All writes go through one committer thread, which groups the
//! requests that arrive while it syncs into one batch, one flush and one set of fsyncs, and only
//! then answers each request: a group commit. Reads go straight to sled.
//!
//! Key layout in the one tree (prefix byte, then big-endian numbers so that order is numeric):
//!
//! | key | value |
//! | --- | --- |
//! | `e` seq(u64) | [`Record`], JSON, versioned |
//! | `i` id | seq(u64): the id index, for producer-chosen ids only (generated ids name their seq) |
//! | `k` routing key | pause-until, ms since the epoch (u64): 429 / v1 403 pauses |
//! | `a` routing key, 0, dedup key | [`AlertState`], JSON: dedup-key tracking |
//! | `m` name | last success, last error |
//! | `v` routing key, 0, dedup key | [`PagerDutyView`], JSON: PagerDuty's side (reconciliation) |

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{error, warn};

use super::record::{Record, State};
use super::view::PagerDutyView;
use crate::event::{Event, EventAction, RoutingKey};

/// sled's page cache, in bytes (8 MiB: with 1,000,000 pending, 16 MiB measured 133 MB resident
/// and 8 MiB 120 MB; reads for delivery stay well above the drain target, README "Performance").
const SLED_CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// Most requests folded into one group commit.
const MAX_GROUP: usize = 8192;
/// Requests waiting for the committer before senders wait (backpressure).
const CHANNEL_DEPTH: usize = 16_384;

/// Why the store could not do what was asked. Cloneable: one failed group commit fails every
/// request in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another process (a running daemon) holds the database lock.
    #[error("the queue at {path} is in use by another process (a running pdrelay daemon?): {detail}")]
    Locked {
        /// Database directory.
        path: PathBuf,
        /// sled's words.
        detail: String,
    },
    /// An I/O error: a full disk, a read-only file system, a failed fsync. Retryable later.
    #[error("queue I/O error: {0}")]
    Io(String),
    /// sled reports damage, or a record does not decode.
    #[error("queue is damaged: {0}")]
    Corrupt(String),
    /// The queue lost acknowledged commits (a damaged or truncated file): the daemon must not
    /// start on it, or it would forget pending events. `pdrelay queue salvage` recovers.
    #[error(
        "the queue at {path} is damaged: {detail}. Nothing was changed. Stop the daemon and run \
         `pdrelay queue salvage`: it moves the damaged queue aside and rebuilds it from what can be read"
    )]
    Damaged {
        /// Database directory.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The committer has stopped (daemon shutting down).
    #[error("queue is closed")]
    Closed,
    /// Intake refused: the queue is at its size limit or the disk is nearly full. Nothing was
    /// stored; try again once deliveries have drained some of it.
    #[error("queue is full: {0}")]
    Full(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
            sled::Error::Io(io) => StoreError::from(io),
            other => StoreError::Io(other.to_string()),
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        // sled wraps OS errors in a custom error whose text is their Debug form; name the common
        // ones plainly.
        let text = e.to_string();
        if e.kind() == std::io::ErrorKind::StorageFull || text.contains("code: 28") {
            StoreError::Io("no space left on the device holding the queue".to_owned())
        } else if e.kind() == std::io::ErrorKind::PermissionDenied || text.contains("code: 13") {
            StoreError::Io(format!("permission denied: {text}"))
        } else {
            StoreError::Io(text)
        }
    }
}

/// What `pdrelay queue salvage` did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Salvage {
    /// Where the damaged queue directory now is (kept, never deleted).
    pub moved_to: PathBuf,
    /// The last commit acknowledged to producers, from the commit mark.
    pub acknowledged_commit: Option<u64>,
    /// The last commit found in the damaged queue.
    pub recovered_commit: Option<u64>,
    /// Records recovered, by state.
    pub pending: u64,
    /// Failed records recovered.
    pub failed: u64,
    /// Delivered records recovered.
    pub delivered: u64,
    /// Dedup-key tracking entries recovered.
    pub alerts: u64,
    /// Entries that could not be read.
    pub unreadable: u64,
    /// Set when sled could not open the damaged copy at all (nothing recovered).
    pub open_error: Option<String>,
}

/// File in the queue directory holding the number of the last acknowledged group commit.
pub const MARK_FILE: &str = "pdrelay-commit-mark";

/// The commit mark: after each group commit is synced, its number is written here and synced too.
/// Each commit also stores its number inside sled, so on open sled must hold at least the
/// number in the mark; less means acknowledged events were lost (a damaged or truncated file,
/// which sled 0.34 may otherwise recover from silently by cutting its log short).
struct CommitMark(File);

impl CommitMark {
    fn open(dir: &Path) -> Result<CommitMark, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        Ok(CommitMark(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(dir.join(MARK_FILE))?,
        ))
    }

    /// The mark: 8 bytes big-endian, then the same bytes inverted. `None` for a new file.
    fn read(&self) -> Result<Option<u64>, StoreError> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 16];
        match self.0.read_at(&mut buf, 0) {
            Ok(0) => Ok(None),
            Ok(16) => {
                let n = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                let check = u64::from_be_bytes(buf[8..].try_into().expect("8 bytes"));
                if n == !check {
                    Ok(Some(n))
                } else {
                    Err(StoreError::Damaged {
                        path: PathBuf::from(MARK_FILE),
                        detail: "its commit mark is unreadable".into(),
                    })
                }
            }
            Ok(_) => Err(StoreError::Damaged {
                path: PathBuf::from(MARK_FILE),
                detail: "its commit mark is cut short".into(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn write(&self, commit: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&commit.to_be_bytes());
        buf[8..].copy_from_slice(&(!commit).to_be_bytes());
        self.0.write_all_at(&buf, 0)?;
        self.0.sync_data()
    }
}

/// When sled refuses a damaged queue, copies it to `scratch` without sled's snapshot files (so
/// that sled rebuilds its state by reading the log from the start, stopping at the damage), then,
/// if it still refuses, cuts the copy's `db` file shorter, 64 KiB at a time, until sled opens it.
fn open_truncated_copy(damaged: &Path, scratch: &Path) -> Result<sled::Db, StoreError> {
    const STEP: u64 = 64 * 1024;
    let len = std::fs::metadata(damaged.join("db"))?.len();
    let mut cut = len;
    while cut > 0 {
        let _ = std::fs::remove_dir_all(scratch);
        std::fs::create_dir_all(scratch)?;
        for entry in std::fs::read_dir(damaged)? {
            let entry = entry?;
            let snapshot = entry.file_name().to_string_lossy().starts_with("snap.");
            if entry.file_type()?.is_file() && !snapshot {
                std::fs::copy(entry.path(), scratch.join(entry.file_name()))?;
            }
        }
        std::fs::OpenOptions::new().write(true).open(scratch.join("db"))?.set_len(cut)?;
        if let Ok(db) = open_sled(scratch) {
            return Ok(db);
        }
        cut = (cut - 1) / STEP * STEP;
    }
    Err(StoreError::Damaged { path: damaged.to_owned(), detail: "no readable prefix".into() })
}

/// Applies `batch` to `tree` so that crash recovery sees all of it or none of it.
///
/// This goes through a sled transaction rather than `Tree::apply_batch`: both are atomic, but
/// in sled 0.34.7 `apply_batch` keeps superseded node versions alive far longer (measured with
/// 1,000,000 stored events: 2.4 GB resident through `apply_batch`, 80 MB through a transaction;
/// README "Performance"). The committer is the only writer, so the transaction never conflicts.
fn apply_atomically(tree: &sled::Tree, batch: &sled::Batch) -> Result<(), StoreError> {
    use sled::transaction::{ConflictableTransactionError, TransactionError};
    tree.transaction(|t| {
        t.apply_batch(batch)?;
        Ok::<(), ConflictableTransactionError<()>>(())
    })
    .map_err(|e| match e {
        TransactionError::Storage(e) => StoreError::from(e),
        TransactionError::Abort(()) => StoreError::Io("the queue transaction was aborted".to_owned()),
    })
}

fn read_u64(tree: &sled::Tree, k: &[u8]) -> Result<Option<u64>, StoreError> {
    Ok(tree.get(k)?.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
}

/// Opens sled, turning a lock conflict into [`StoreError::Locked`] and a panic inside sled (it
/// has some on damaged files) into [`StoreError::Damaged`].
fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
    let p = path.to_owned();
    // No background flusher: the committer flushes each group itself, and an idle daemon should
    // not wake up twice a second. A bounded page cache keeps memory small.
    let opened = std::panic::catch_unwind(move || {
        sled::Config::new().path(&p).flush_every_ms(None).cache_capacity(SLED_CACHE_BYTES).open()
    });
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Io(io)))
            if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
        {
            Err(StoreError::Locked { path: path.to_owned(), detail: io.to_string() })
        }
        Ok(Err(e @ sled::Error::Corruption { .. })) => {
            Err(StoreError::Damaged { path: path.to_owned(), detail: format!("sled reports {e}") })
        }
        Ok(Err(e)) => Err(match StoreError::from(e) {
            StoreError::Io(text) => StoreError::Io(format!("{}: {text}", path.display())),
            other => other,
        }),
        Err(_) => Err(StoreError::Damaged { path: path.to_owned(), detail: "sled could not read it".into() }),
    }
}

/// Bounds on intake, so that a long PagerDuty outage cannot fill the disk.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most pending events (including those waiting for a retry); past it, inserts are refused.
    pub max_pending: u64,
    /// Inserts are refused while the file system holding the queue has less free space than
    /// this, in bytes; the reserve lets deliveries keep recording their outcomes.
    pub min_free_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_pending: 1_000_000, min_free_bytes: 64 * 1024 * 1024 }
    }
}

/// Free bytes for unprivileged users on the file system holding `path` (statvfs).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// What this host last told PagerDuty about one dedup key (dedup-key tracking).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AlertState {
    /// Routing key, in full (show it redacted).
    pub routing_key: String,
    /// Dedup key.
    pub dedup_key: String,
    /// The last action delivered: trigger, acknowledge or resolve.
    pub last_action: EventAction,
    /// When it was delivered, ms since the epoch.
    pub at_ms: u64,
    /// The summary of the last event that had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Id of the last event delivered for this key.
    pub event_id: String,
}

impl AlertState {
    /// Triggered or acknowledged, not resolved.
    pub fn is_open(&self) -> bool {
        self.last_action != EventAction::Resolve
    }
}

fn alert_key(routing_key: &str, dedup_key: &str) -> Vec<u8> {
    prefixed_key(b'a', routing_key, dedup_key)
}

fn prefixed_key(prefix: u8, routing_key: &str, dedup_key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + routing_key.len() + dedup_key.len());
    k.push(prefix);
    k.extend_from_slice(routing_key.as_bytes());
    k.push(0);
    k.extend_from_slice(dedup_key.as_bytes());
    k
}

fn put_views(inner: &Inner, views: Vec<(PagerDutyView, bool)>, batch: &mut sled::Batch) -> Result<usize, StoreError> {
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

/// What to store when `new` is written over `old`: the newer read wins (two passes may overlap:
/// the daemon's and `alerts --refresh`), and an ack-back mark is never lost, so an
/// acknowledgement is passed back once.
fn merge_view(old: Option<PagerDutyView>, new: PagerDutyView) -> PagerDutyView {
    match old {
        None => new,
        Some(mut old) if old.checked_ms > new.checked_ms => {
            if new.acked_back.is_some() {
                old.acked_back = new.acked_back;
            }
            old
        }
        Some(old) => PagerDutyView { acked_back: new.acked_back.or(old.acked_back), ..new },
    }
}

/// A moment and what happened then: (ms since the epoch, text).
pub type Stamp = (u64, String);

/// An event handed to [`Store::insert`].
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// A producer-chosen id (a UUID), so that a retried hand-over stores the event once; `None`
    /// gets a fresh one.
    pub id: Option<String>,
    /// How it came in: `socket`, `spool`, `send`.
    pub intake: &'static str,
    /// The validated event.
    pub event: Event,
}

/// What [`Store::insert`] gives back for each event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Public id.
    pub id: String,
    /// Acceptance order.
    pub seq: u64,
    /// The dedup key that will be sent (`None` for change events).
    pub dedup_key: Option<String>,
}

/// The result of one delivery attempt, to record.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// PagerDuty accepted the event.
    Delivered {
        /// HTTP status.
        status: u16,
    },
    /// PagerDuty refused it for good.
    Failed {
        /// HTTP status, if any.
        status: Option<u16>,
        /// One-line reason.
        reason: String,
        /// PagerDuty's `errors[]`.
        errors: Vec<String>,
    },
    /// Try again at a time.
    Retry {
        /// HTTP status, if there was an answer.
        status: Option<u16>,
        /// One-line reason.
        reason: String,
        /// Earliest next attempt, ms since the epoch.
        next_attempt_at_ms: u64,
        /// Pause the event's whole routing key until then (429, v1 403).
        pause_routing_key: bool,
    },
    /// Not sent: made moot by a later resolve (`delivery.drop_stale_pairs`). Not an attempt.
    Superseded {
        /// Id of the resolve that supersedes it.
        by: String,
    },
}

/// A pending event as the dispatcher needs it: no body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    /// Acceptance order.
    pub seq: u64,
    /// Routing key.
    pub routing_key: String,
    /// Dedup key; `None` for change events, which need no order among themselves.
    pub dedup_key: Option<String>,
}

enum Op {
    Insert(Vec<NewEvent>),
    Outcome {
        seq: u64,
        outcome: Outcome,
    },
    /// Failed events back to pending.
    Retry(Vec<u64>),
    /// Waiting events (pending with a retry time ahead) made sendable now, and their routing
    /// keys' pauses lifted.
    SendNow(Vec<u64>),
    /// Pending events that reached the maximum age: to failed, reason "expired".
    Expire(Vec<u64>),
    /// Delivered or failed records removed for good (pending ones are never removed).
    Remove(Vec<u64>),
    /// Dedup-key tracking of resolved alerts older than this (ms since the epoch) removed.
    ForgetResolved(u64),
    /// PagerDuty's views of dedup keys written (`Some`) or removed (`None`).
    PutViews(Vec<(PagerDutyView, bool)>),
    /// Nothing: answers once the committer gets to it (a liveness probe for the watchdog).
    Ping,
    /// Keys set (`Some`) or removed (`None`) as they are: stored silences.
    Put(Vec<(Vec<u8>, Option<Vec<u8>>)>),
}

/// A submitted insert; [`InsertTicket::wait`] completes once it is durable (or failed).
pub struct InsertTicket(oneshot::Receiver<Result<Reply, StoreError>>);

impl InsertTicket {
    /// Waits for the group commit holding these events.
    pub async fn wait(self) -> Result<Vec<Accepted>, StoreError> {
        match self.0.await.map_err(|_| StoreError::Closed)?? {
            Reply::Inserted(accepted) => Ok(accepted),
            _ => Err(StoreError::Corrupt("insert answered as an outcome".into())),
        }
    }
}

/// What the committer answers.
pub enum Reply {
    /// Insert: what was accepted.
    Inserted(Vec<Accepted>),
    /// Outcome recorded.
    Done,
    /// Retry, expire, remove: how many records changed.
    Changed(usize),
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

/// The durable queue. Cheap to clone; all clones share one database and one committer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    tree: sled::Tree,
    db: sled::Db,
    path: PathBuf,
    /// Senders to the committer thread (inserts, or `None` to wake it); taken (and so closed)
    /// by [`Store::close`].
    tx: Mutex<Option<mpsc::Sender<Option<Request>>>>,
    /// Requests that go ahead of queued inserts.
    priority: Mutex<Vec<Request>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Woken after each group commit that stored new events, for the dispatcher.
    queued: Notify,
    /// Completed fsync rounds; read by tests to check syncs precede acknowledgements.
    syncs: AtomicU64,
    /// Events put back to pending by `queue retry`, for the dispatcher (their sequence numbers
    /// are behind its scan position).
    requeued: Mutex<Vec<PendingEntry>>,
    /// `mapping.drop_repeated_triggers` in ms; 0 = off.
    repeat_window_ms: AtomicU64,
    /// Pending events now (kept by the committer; read anywhere).
    pending: AtomicU64,
    /// Failed and delivered records kept now.
    failed: AtomicU64,
    delivered: AtomicU64,
    /// Intake bounds.
    limits: Mutex<Limits>,
    /// Next sequence number to give out (owned by the committer).
    next_seq: AtomicU64,
    /// No pending event has a lower sequence number than this (see [`LowWater`]).
    low_water: Mutex<LowWater>,
    /// Records read by [`Store::pending_from`] since freed memory was last handed back.
    scanned: AtomicU64,
    /// Where to count stored events, once the daemon sets it.
    metrics: std::sync::OnceLock<Arc<crate::ops::metrics::Metrics>>,
    /// Superseded records kept now.
    superseded: AtomicU64,
    /// Pending events per routing key (full key), kept by the committer.
    pending_by_key: Mutex<HashMap<String, u64>>,
    /// Set by a send-now request until the dispatcher takes it.
    send_now: std::sync::atomic::AtomicBool,
    /// The proactive rate limits, for status and metrics (set by the daemon).
    rate_limits: Mutex<crate::config::delivery::RateLimits>,
    /// Since when (ms since the epoch) the dispatcher holds PagerDuty for unreachable; 0: not.
    outage_since: AtomicU64,
    /// Routes and flap damping, applied at acceptance (set by the daemon).
    policy: Mutex<Arc<super::policy::Policy>>,
}

/// A sequence number below which no record is pending, so that scans for pending events skip
/// the delivered and failed ones before it. Found at open; raised by scans that found nothing
/// pending below a point; lowered when `queue retry` makes old records pending again.
#[derive(Debug, Default)]
struct LowWater {
    seq: u64,
    /// Counts lowerings, so that a scan that began before one does not raise past it.
    lowered: u64,
}

impl Inner {
    fn has_requeued(&self) -> bool {
        !self.requeued.lock().expect("requeued lock").is_empty()
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn key(prefix: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Bits 48..60 of a generated id (after its 48-bit millisecond timestamp and the version nibble):
/// marks ids this store made from a sequence number.
const GENERATED_ID_TAG: u16 = 0xd1a;

/// A fresh public id for event `seq`, accepted at `now_ms`: a UUID version 8 (RFC 9562 section
/// 5.8) whose first 48 bits are the acceptance time in ms (so ids sort by time, as version 7
/// ones do), then [`GENERATED_ID_TAG`], then the sequence number (62 bits; the variant takes 2).
/// Because the id names its record, generated ids need no id-index entry: one sled insert fewer
/// per event. Producer-chosen ids still go through the index.
fn generated_id(seq: u64, now_ms: u64) -> String {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
    bytes[6..8].copy_from_slice(&GENERATED_ID_TAG.to_be_bytes());
    bytes[8..].copy_from_slice(&seq.to_be_bytes());
    uuid::Uuid::new_v8(bytes).hyphenated().to_string()
}

/// The sequence number a [`generated_id`] names, if `id` has that shape. The caller must check
/// the record's id: a producer may choose an id of the same shape.
fn generated_seq(id: &str) -> Option<u64> {
    let uuid = uuid::Uuid::try_parse(id).ok()?;
    let bytes = uuid.as_bytes();
    if uuid.get_version_num() != 8 || u16::from_be_bytes([bytes[6], bytes[7]]) & 0x0fff != GENERATED_ID_TAG {
        return None;
    }
    Some(u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes")) & (u64::MAX >> 2))
}

/// The sequence number of the record with public id `id`: from the id index (producer-chosen
/// ids), else from the id itself (generated ids), checked against the record.
fn seq_of_id(tree: &sled::Tree, id: &str) -> Result<Option<u64>, StoreError> {
    if let Some(seq) = tree.get(id_key(id))? {
        let seq: [u8; 8] =
            seq.as_ref().try_into().map_err(|_| StoreError::Corrupt(format!("id index entry for {id}")))?;
        return Ok(Some(u64::from_be_bytes(seq)));
    }
    let Some(seq) = generated_seq(id) else { return Ok(None) };
    match tree.get(key(b'e', seq))? {
        Some(bytes) if Record::decode(&bytes).is_ok_and(|r| r.id == id) => Ok(Some(seq)),
        _ => Ok(None),
    }
}

fn id_key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(b'i');
    k.extend_from_slice(id.as_bytes());
    k
}

fn pause_key(routing_key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + routing_key.len());
    k.push(b'k');
    k.extend_from_slice(routing_key.as_bytes());
    k
}

fn silence_key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(b's');
    k.extend_from_slice(id.as_bytes());
    k
}

fn meta_key(name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(b'm');
    k.extend_from_slice(name);
    k
}

fn seq_of(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[1..9].try_into().expect("sequence keys are 9 bytes"))
}

impl PendingEntry {
    fn of(seq: u64, event: &Event) -> PendingEntry {
        PendingEntry {
            seq,
            routing_key: event.routing_key().as_str().to_owned(),
            dedup_key: event.dedup_key().map(str::to_owned),
        }
    }
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
        let mark = CommitMark::open(path).ok().and_then(|m| m.read().ok().flatten());
        let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("queue");
        let aside = path.with_file_name(format!("{name}.damaged-{stamp}"));
        std::fs::rename(path, &aside)?;
        let mut report = Salvage { moved_to: aside.clone(), acknowledged_commit: mark, ..Salvage::default() };
        let mut entries = Vec::new();
        let scratch = path.with_file_name(format!("{name}.salvage-{stamp}"));
        let opened = open_sled(&aside)
            .or_else(|e| open_truncated_copy(&aside, &scratch).map_err(|_| e))
            .and_then(|db| db.open_tree("queue").map_err(StoreError::from));
        match opened {
            Ok(tree) => {
                report.recovered_commit = read_u64(&tree, &meta_key(b"commit")).ok().flatten();
                for item in tree.iter() {
                    match item {
                        Ok((k, v)) => {
                            if k.first() == Some(&b'e') && Record::decode(&v).is_err() {
                                report.unreadable += 1;
                                continue;
                            }
                            match k.first() {
                                Some(b'e') => match Record::decode(&v).map(|r| r.state) {
                                    Ok(State::Pending) => report.pending += 1,
                                    Ok(State::Failed) => report.failed += 1,
                                    Ok(State::Delivered | State::Superseded) => report.delivered += 1,
                                    Err(_) => {}
                                },
                                Some(b'a') => report.alerts += 1,
                                _ => {}
                            }
                            if k.as_ref() != meta_key(b"commit").as_slice() {
                                entries.push((k.to_vec(), v.to_vec()));
                            }
                        }
                        Err(_) => report.unreadable += 1,
                    }
                }
            }
            Err(e) => report.open_error = Some(e.to_string()),
        }
        // Keep only index entries whose record made it.
        let records: HashSet<u64> =
            entries.iter().filter(|(k, _)| k.first() == Some(&b'e') && k.len() == 9).map(|(k, _)| seq_of(k)).collect();
        entries.retain(|(k, v)| match k.first() {
            Some(b'p') => false, // a legacy pending index: the records say what is pending
            Some(b'i') => v.len() == 8 && records.contains(&u64::from_be_bytes(v[..8].try_into().expect("8 bytes"))),
            _ => true,
        });
        let _ = std::fs::remove_dir_all(&scratch);
        let fresh = open_sled(path)?;
        let tree = fresh.open_tree("queue")?;
        let mut batch = sled::Batch::default();
        for (k, v) in entries {
            batch.insert(k, v);
        }
        apply_atomically(&tree, &batch)?;
        fresh.flush()?;
        drop(tree);
        drop(fresh);
        let _ = std::fs::remove_file(path.join(MARK_FILE));
        // Opening it writes a new commit mark. sled may hold its file lock for a moment after the
        // last handle is dropped, so a lock conflict here is waited out briefly.
        let mut tries = 0;
        loop {
            match Store::open(path) {
                Ok(store) => {
                    store.close();
                    break;
                }
                Err(StoreError::Locked { .. }) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(report)
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

fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// Creates the queue directory (and missing parents) and gives it mode 0700, whatever the
/// umask: it holds routing keys and summaries, for the daemon's user and root only. A
/// symbolic link at `path` is refused.
fn make_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(std::io::Error::other("is a symbolic link; the queue directory must be a real directory"))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
        }
        Err(e) => return Err(e),
    }
    let meta = std::fs::metadata(path)?;
    if meta.permissions().mode() & 0o7777 != 0o700 && is_own(&meta) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Makes a queue command run as root act as the queue's owner, so that the files it creates
/// or rewrites (sled's, the mark, a salvaged queue) stay usable by the daemon's user. The owner
/// is that of the queue directory, or of its parent (the state directory) when there is no queue
/// yet. Drops root for good (supplementary groups, group, user), so call it before starting
/// threads. Returns the (uid, gid) now acted as; `None` when not root or the owner is root.
///
/// Errors: the owner cannot be read, or the switch fails (the caller should stop: going on
/// as root would leave root-owned files that stop the daemon).
pub fn act_as_queue_owner(queue: &Path) -> std::io::Result<Option<(u32, u32)>> {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let meta = match std::fs::metadata(queue) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match queue.parent().map(std::fs::metadata) {
            Some(Ok(meta)) => meta,
            _ => return Ok(None),
        },
        Err(e) => return Err(e),
    };
    if meta.uid() == 0 {
        return Ok(None);
    }
    let (uid, gid) = (meta.uid(), meta.gid());
    // SAFETY: plain system calls with valid arguments (an empty group list).
    let ok = unsafe { libc::setgroups(0, std::ptr::null()) == 0 && libc::setgid(gid) == 0 && libc::setuid(uid) == 0 };
    if !ok {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some((uid, gid)))
}

/// Whether the calling process's effective user owns the file.
fn is_own(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.uid() == rustix::process::geteuid().as_raw()
}

/// Gives the queue's files mode 0600 and its directories 0700 (sled creates them with the
/// umask's modes).
fn restrict_files(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        let want = if meta.is_dir() {
            0o700
        } else if meta.is_file() {
            0o600
        } else {
            continue;
        };
        if meta.permissions().mode() & 0o7777 != want && is_own(&meta) {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(want))?;
        }
        if meta.is_dir() {
            restrict_files(&entry.path())?;
        }
    }
    Ok(())
}

/// Events stored in a burst after which, once the burst ends, freed heap memory is handed back.
const TRIM_AFTER_EVENTS: u64 = 10_000;

/// Hands freed heap memory back to the system. An intake burst allocates on the runtime's
/// threads and frees on the committer's, which leaves glibc's per-thread arenas holding freed
/// pages: measured with 200,000 pending (bench/run.sh), 130 MB resident before, see README
/// "Performance" after. `malloc_trim(3)` walks every arena; it takes milliseconds, and runs
/// only when a burst has ended (the committer has nothing waiting).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The committer thread: group, write, flush, fsync, answer.
fn committer(inner: &Inner, db_file: File, mark: CommitMark, mut commit: u64, mut rx: mpsc::Receiver<Option<Request>>) {
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
                Op::ForgetResolved(before_ms) => forget_resolved(inner, before_ms, &mut batch).map(Reply::Changed),
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
                    if *n == 0 {
                        // Dropped below: removing the zero entry keeps the map to keys with work.
                    }
                }
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

#[allow(clippy::too_many_arguments)] // one commit's running tallies, passed by the committer
fn prepare_insert(
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
            if let Some(open) = repeated_trigger(inner, &new.event, now, window, alerts)? {
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
                payload.timestamp = Some(rfc3339_ms(now_ms));
            }
        }
    }
}

/// RFC 3339 in UTC, to the millisecond (trailing zeros of the fraction dropped), e.g.
/// `2026-12-01T23:04:05.123Z`.
fn rfc3339_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
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

/// The open alert a trigger repeats (same routing key, dedup key and summary, last delivered
/// within `window_ms`), if any.
fn repeated_trigger(
    inner: &Inner,
    event: &Event,
    now: u64,
    window_ms: u64,
    alerts: &HashMap<Vec<u8>, AlertState>,
) -> Result<Option<AlertState>, StoreError> {
    let (Some(EventAction::Trigger), Some(dedup)) = (event.action(), event.dedup_key()) else { return Ok(None) };
    let k = alert_key(event.routing_key().as_str(), dedup);
    let state = match alerts.get(&k) {
        Some(s) => Some(s.clone()),
        None => inner.tree.get(&k)?.and_then(|v| serde_json::from_slice::<AlertState>(&v).ok()),
    };
    Ok(state
        .filter(|s| s.is_open() && now.saturating_sub(s.at_ms) < window_ms && s.summary.as_deref() == event.summary()))
}

fn forget_resolved(inner: &Inner, before_ms: u64, batch: &mut sled::Batch) -> Result<usize, StoreError> {
    let mut n = 0;
    for item in inner.tree.scan_prefix([b'a']) {
        let (k, v) = item?;
        if let Ok(state) = serde_json::from_slice::<AlertState>(&v) {
            if !state.is_open() && state.at_ms < before_ms {
                batch.remove(k);
                n += 1;
            }
        }
    }
    Ok(n)
}

fn prepare_outcome(
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

#[derive(Clone, Copy)]
enum AdminChange {
    Retry,
    SendNow,
    Expire,
    Remove,
}

/// Applies an operator's change to each record it fits; returns the pending entries it made.
fn prepare_admin(
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

/// fsync the `db` file, then any blob file not yet synced and the directories naming them.
fn sync_files(db_file: &File, path: &Path, synced_blobs: &mut HashSet<OsString>) -> std::io::Result<()> {
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

/// Routing key of a pending entry, parsed.
impl PendingEntry {
    /// The routing key as a typed value.
    pub fn routing_key(&self) -> Option<RoutingKey> {
        RoutingKey::parse(&self.routing_key, "routing_key").ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::IntakeDefaults;

    fn event(dedup: &str) -> Event {
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
        let reopened = Store::open(&dir.path().join("q")).unwrap();
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
    async fn generated_ids_name_their_record_without_an_index_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q")).unwrap();
        let a = store.insert(vec![NewEvent { id: None, intake: "socket", event: event("a") }]).await.unwrap();
        let b = store.insert(vec![NewEvent { id: None, intake: "socket", event: event("b") }]).await.unwrap();
        assert_eq!(generated_seq(&a[0].id), Some(a[0].seq));
        assert!(store.inner.tree.get(id_key(&a[0].id)).unwrap().is_none(), "a generated id wrote an index entry");
        assert_eq!(store.get_by_id(&b[0].id).unwrap().unwrap().event.dedup_key(), Some("b"));
        // An id of the generated shape that names no record of that id is unknown...
        let forged = generated_id(a[0].seq, 1);
        assert!(store.get_by_id(&forged).unwrap().is_none());
        // ...and a producer may choose it: it is indexed, and both lookups stay right.
        let c =
            store.insert(vec![NewEvent { id: Some(forged.clone()), intake: "send", event: event("c") }]).await.unwrap();
        assert_eq!(store.get_by_id(&forged).unwrap().unwrap().seq, c[0].seq);
        assert_eq!(store.get_by_id(&a[0].id).unwrap().unwrap().seq, a[0].seq);
        // A producer handing back a generated id with the same event stores it once.
        let again = store
            .insert(vec![NewEvent { id: Some(a[0].id.clone()), intake: "send", event: event("a") }])
            .await
            .unwrap();
        assert_eq!(again[0].seq, a[0].seq);
        assert_eq!(store.pending_count(), 3);
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
        let reopened = Store::open(&dir.path().join("q")).unwrap();
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
        let reopened = Store::open(&path).unwrap();
        assert_eq!(reopened.inner.tree.scan_prefix([b'p']).count(), 0);
        assert_eq!(reopened.pending_count(), 1);
        assert_eq!(reopened.pending_from(0, 10).unwrap().len(), 1);
    }

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
        let reopened = Store::open(&dir.path().join("q")).unwrap();
        assert_eq!((reopened.pending_count(), reopened.superseded_count()), (1, 1));
        assert_eq!(reopened.pending_by_key().get(&rk), Some(&1));
    }

    #[test]
    fn a_second_open_reports_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(&dir.path().join("q")).unwrap();
        let err = Store::open(&dir.path().join("q")).err().expect("second open must fail");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    }

    #[tokio::test]
    async fn pagerduty_views_survive_a_reopen_newer_reads_win_and_marks_stay() {
        let dir = tempfile::tempdir().unwrap();
        let view = |status: &str, checked_ms: u64, mark: Option<&str>| PagerDutyView {
            routing_key: "R".into(),
            dedup_key: "k".into(),
            status: status.into(),
            incident_id: Some("P1".into()),
            html_url: None,
            by: None,
            changed_at: None,
            checked_ms,
            acked_back: mark.map(str::to_owned),
        };
        let store = Store::open(&dir.path().join("q")).unwrap();
        store.put_pagerduty_views(vec![(view("acknowledged", 20, Some("P1@t")), true)]).await.unwrap();
        // An older read (a pass that began earlier) does not replace it, and a newer read without
        // the mark keeps the mark.
        store.put_pagerduty_views(vec![(view("triggered", 10, None), true)]).await.unwrap();
        assert_eq!(store.pagerduty_views().unwrap(), vec![view("acknowledged", 20, Some("P1@t"))]);
        store.put_pagerduty_views(vec![(view("resolved", 30, None), true)]).await.unwrap();
        store.close();
        drop(store);
        let store = Store::open(&dir.path().join("q")).unwrap();
        assert_eq!(store.pagerduty_views().unwrap(), vec![view("resolved", 30, Some("P1@t"))]);
        store.put_pagerduty_views(vec![(view("resolved", 30, None), false)]).await.unwrap();
        assert!(store.pagerduty_views().unwrap().is_empty());
        store.close();
    }
}
