//! The state every `Store` handle and the committer thread share, and the intake limits it holds.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};

use super::request::{PendingEntry, Request};

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
        use crate::config::sections::{DEFAULT_MAX_PENDING, DEFAULT_MIN_FREE_BYTES};
        Limits { max_pending: DEFAULT_MAX_PENDING, min_free_bytes: DEFAULT_MIN_FREE_BYTES }
    }
}

/// What every `Store` clone and the committer thread share: the database, the channel to the
/// committer, and the counts and settings kept in memory.
pub(super) struct Inner {
    pub(super) tree: sled::Tree,
    pub(super) db: sled::Db,
    pub(super) path: PathBuf,
    /// Senders to the committer thread (inserts, or `None` to wake it); taken (and so closed)
    /// by [`Store::close`].
    pub(super) tx: Mutex<Option<mpsc::Sender<Option<Request>>>>,
    /// Requests that go ahead of queued inserts.
    pub(super) priority: Mutex<Vec<Request>>,
    pub(super) committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Woken after each group commit that stored new events, for the dispatcher.
    pub(super) queued: Notify,
    /// Completed fsync rounds; read by tests to check syncs precede acknowledgements.
    pub(super) syncs: AtomicU64,
    /// Events put back to pending by `queue retry`, for the dispatcher (their sequence numbers
    /// are behind its scan position).
    pub(super) requeued: Mutex<Vec<PendingEntry>>,
    /// `mapping.drop_repeated_triggers` in ms; 0 = off.
    pub(super) repeat_window_ms: AtomicU64,
    /// Pending events now (kept by the committer; read anywhere).
    pub(super) pending: AtomicU64,
    /// Failed and delivered records kept now.
    pub(super) failed: AtomicU64,
    pub(super) delivered: AtomicU64,
    /// Intake bounds.
    pub(super) limits: Mutex<Limits>,
    /// Next sequence number to give out (owned by the committer).
    pub(super) next_seq: AtomicU64,
    /// No pending event has a lower sequence number than this (see [`LowWater`]).
    pub(super) low_water: Mutex<LowWater>,
    /// Records read by [`Store::pending_from`] since freed memory was last handed back.
    pub(super) scanned: AtomicU64,
    /// Where to count stored events, once the daemon sets it.
    pub(super) metrics: std::sync::OnceLock<Arc<crate::ops::metrics::Metrics>>,
    /// Superseded records kept now.
    pub(super) superseded: AtomicU64,
    /// Pending events per routing key (full key), kept by the committer.
    pub(super) pending_by_key: Mutex<HashMap<String, u64>>,
    /// Set by a send-now request until the dispatcher takes it.
    pub(super) send_now: std::sync::atomic::AtomicBool,
    /// The proactive rate limits, for status and metrics (set by the daemon).
    pub(super) rate_limits: Mutex<crate::config::delivery::RateLimits>,
    /// Since when (ms since the epoch) the dispatcher holds PagerDuty for unreachable; 0: not.
    pub(super) outage_since: AtomicU64,
    /// Routes and flap damping, applied at acceptance (set by the daemon).
    pub(super) policy: Mutex<Arc<super::policy::Policy>>,
}

/// A sequence number below which no record is pending, so that scans for pending events skip
/// the delivered and failed ones before it. Found at open; raised by scans that found nothing
/// pending below a point; lowered when `queue retry` makes old records pending again.
#[derive(Debug, Default)]
pub(super) struct LowWater {
    pub(super) seq: u64,
    /// Counts lowerings, so that a scan that began before one does not raise past it.
    pub(super) lowered: u64,
}

impl Inner {
    pub(super) fn has_requeued(&self) -> bool {
        !self.requeued.lock().expect("requeued lock").is_empty()
    }
}
