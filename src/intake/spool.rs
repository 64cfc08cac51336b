//! Spool directories: producers drop files, pdrelay claims them, stores their events and deletes
//! them.
//!
//! A producer writes a name starting with `.` or ending in `.tmp` and renames it into place; such
//! names are never read. `*.json` holds one event, `*.ndjson` one event per line (blank lines
//! skipped), `pd_*.txt` is a pagerduty_nagios.pl file. A `*.json` file whose stem is a UUID gives
//! its event that id.
//!
//! The life of a file, each step safe against a producer that races it:
//!
//! 1. **Claim.** The entry is renamed (never replacing) into `.claim/`, a directory of the
//!    daemon's own (mode 0700) inside the spool directory, under a name that keeps the claim
//!    order and the original name. Whatever a producer renames over the old name afterwards is a
//!    new file, read in its turn.
//! 2. **Open and check.** The claimed entry is opened without following links and without
//!    blocking; the opened descriptor must be a regular file of at most `ingest.max_file_bytes`,
//!    and is read with that bound. A symbolic link, FIFO, directory or oversized file is
//!    quarantined, and a file that grows while read is too.
//! 3. **Store.** Small files are stored in group commits of up to 4 MiB. An `.ndjson` file over
//!    1 MiB is streamed: one pass checks every line, a second stores the events in commits of
//!    1,000, so memory does not grow with the file. A file with more events than
//!    `queue.max_pending` can ever hold is rejected with that reason; one that fits only later is
//!    stored as room frees, and other files go ahead of it meanwhile.
//! 4. **Delete.** Only once all its events are durably stored. Event ids come from the file's
//!    identity (original name, device, inode, size, modification time, event index), so a file
//!    read again after a crash is stored once.
//!
//! A file that cannot be read as events is moved whole to `rejected/` (the daemon's own, 0700:
//! one producer cannot read or delete another's rejected files) with a `<name>.reason` sidecar
//! written first. Never deleted, never retried forever, never fatal to the daemon.
//!
//! inotify (through notify) is only a wake-up: the directories are scanned in full at start, on
//! every wake-up and every `rescan_interval`, so an overflowed or missed event never strands a
//! file; a spool directory deleted and made again is watched again at the next scan.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use notify::Watcher;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, CWD};
use rustix::io::Errno;
use sha2::{Digest, Sha256};
use tracing::{debug, error, info, warn};

use crate::event::{Event, IntakeDefaults};
use crate::ops::shutdown::Shutdown;
use crate::producers::nagios::{map, parse_pl_spool_file, Mapped, NagiosSettings};
use crate::queue::error::StoreError;
use crate::queue::request::NewEvent;
use crate::queue::store::Store;
use crate::text::Escaped;

/// Name of the quarantine directory inside each spool directory.
pub const REJECTED_DIR: &str = "rejected";
/// Name of the claim directory inside each spool directory (a dot name: never read as a spool
/// file, and hidden from `ls`).
pub const CLAIM_DIR: &str = ".claim";
/// Entries claimed, and claimed files read, per round.
const FILES_PER_ROUND: usize = 2_000;
/// Bytes of small files stored per group commit.
const BYTES_PER_COMMIT: usize = 4 * 1024 * 1024;
/// Events of a streamed file stored per group commit.
const EVENTS_PER_COMMIT: usize = 1_000;
/// `.ndjson` files larger than this, in bytes, are streamed rather than read whole.
const STREAM_FROM_BYTES: u64 = 1024 * 1024;
/// How often a missing or unwatched spool directory is looked for.
const DIR_RETRY: Duration = Duration::from_secs(1);
/// Longest file name on Linux file systems, in bytes.
const NAME_MAX: usize = 255;

/// Settings of the spool intake.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// Watched directories.
    pub dirs: Vec<PathBuf>,
    /// Full rescan period.
    pub rescan_interval: Duration,
    /// Largest file read, in bytes.
    pub max_file_bytes: u64,
    /// Longest line of a streamed `.ndjson` file, in bytes.
    pub max_line_bytes: usize,
    /// Defaults filled in at intake and the mapping of pagerduty_nagios.pl files (reloadable).
    pub live: crate::ops::reload::ReloadableSettings,
}

/// Whether a directory entry named `name` is a spool file to read: `*.json`, `*.ndjson`, or a
/// pagerduty_nagios.pl file `pd_*.txt`; never a name starting with `.` or ending in `.tmp`.
pub fn is_spool_file(name: &str) -> bool {
    !name.starts_with('.')
        && !name.ends_with(".tmp")
        && (name.ends_with(".json") || name.ends_with(".ndjson") || is_pl_file(name))
}

/// pagerduty_nagios.pl writes `pd_*.txt` in place rather than renaming, so such a file is read
/// only once it has not changed for this long.
pub const PL_FILE_QUIET: Duration = Duration::from_secs(2);

fn is_pl_file(name: &str) -> bool {
    name.starts_with("pd_") && name.ends_with(".txt")
}

/// Whether an inotify event can mean a new file to read: created, renamed in, or closed after
/// writing. Opens, reads, attribute changes, removals and renames out (the daemon's own claims)
/// cannot.
pub fn is_arrival(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    use notify::EventKind;
    match kind {
        EventKind::Create(_) => true,
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => false,
        EventKind::Modify(ModifyKind::Name(_)) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        // An overflowed queue or an unknown event: scan to be safe.
        EventKind::Any | EventKind::Other => true,
        _ => false,
    }
}

/// Parses a spool file's bytes into events; the error is the one-line reason for `rejected/`.
/// An empty list means the file needs nothing sent (an ignored Nagios notification type).
pub fn parse_spool_file(
    name: &str,
    bytes: &[u8],
    defaults: &IntakeDefaults,
    nagios: &NagiosSettings,
) -> Result<Vec<NewEvent>, String> {
    if is_pl_file(name) {
        let notification = parse_pl_spool_file(bytes)?;
        return match map(&notification, nagios, defaults).map_err(|e| e.to_string())? {
            Mapped::Event(event) => Ok(vec![NewEvent { id: None, intake: "spool", event }]),
            Mapped::Ignored(message) => {
                info!(file = %Escaped(name), %message, "pagerduty_nagios.pl file needs nothing sent; removing it");
                Ok(Vec::new())
            }
        };
    }
    if name.ends_with(".ndjson") {
        let mut events = Vec::new();
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if is_blank(line) {
                continue;
            }
            let event = Event::from_json(line, defaults).map_err(|e| format!("line {}: {e}", i + 1))?;
            events.push(NewEvent { id: None, intake: "spool", event });
        }
        if events.is_empty() {
            return Err("file has no events (empty)".to_owned());
        }
        Ok(events)
    } else {
        if is_blank(bytes) {
            return Err("file is empty".to_owned());
        }
        let event = Event::from_json(bytes, defaults).map_err(|e| e.to_string())?;
        let stem = name.trim_end_matches(".json");
        let id = uuid::Uuid::parse_str(stem).ok().map(|u| u.hyphenated().to_string());
        Ok(vec![NewEvent { id, intake: "spool", event }])
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Files waiting in a spool directory, counting at most 100,000 entries of each place: entries
/// with a spool file's name, plus files claimed but not yet stored (in `.claim/`, which the
/// daemon's user and root can read). For `queue status` with the daemon stopped. `None` when
/// the directory cannot be read by the caller.
pub fn waiting_files(dir: &std::path::Path) -> Option<usize> {
    let count = |d: &std::path::Path, claimed: bool| match std::fs::read_dir(d) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(0),
        Err(_) => None,
        Ok(entries) => Some(
            entries
                .take(100_000)
                .filter_map(Result::ok)
                .filter(|e| claimed || e.file_name().to_str().is_some_and(is_spool_file))
                .count(),
        ),
    };
    let waiting = count(dir, false)?;
    Some(waiting + count(&dir.join(CLAIM_DIR), true).unwrap_or(0))
}

/// Watches and drains the spool directories until shutdown. The work runs on one blocking
/// thread (file I/O), which waits for each group commit before deleting what it stored.
pub async fn run(settings: SpoolSettings, store: Store, mut shutdown: Shutdown) {
    // A capacity of one: a wake-up that finds one waiting is not needed.
    let (wake_tx, wake_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let for_watcher = wake_tx.clone();
    // The directories as inotify names them: notify makes a relative path absolute (against the
    // working directory), so each is matched in its configured, absolute and canonical forms.
    let cwd = std::env::current_dir().unwrap_or_default();
    let dirs: Vec<PathBuf> = settings
        .dirs
        .iter()
        .flat_map(|d| [d.clone(), cwd.join(d), std::fs::canonicalize(d).unwrap_or_else(|_| d.clone())])
        .collect();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Only arrivals in a spool directory wake a scan: our own scan opens and reads the
        // directory, and waking on those events would scan in a loop. The directories' parents
        // are watched too, so that a spool directory removed or made again wakes one (and the
        // next round watches it again).
        let wake = match res {
            Ok(e) => {
                let inside = e.paths.is_empty()
                    || e.paths.iter().any(|p| p.parent().is_some_and(|d| dirs.iter().any(|s| s == d)));
                (is_arrival(&e.kind) && inside) || e.paths.iter().any(|p| dirs.contains(p))
            }
            Err(_) => true,
        };
        if wake {
            let _ = for_watcher.try_send(());
        }
    });
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, "cannot start the file watcher; relying on rescans");
            None
        }
    };
    info!(dirs = ?settings.dirs, "spool intake started");
    let handle = tokio::runtime::Handle::current();
    let stop = shutdown.clone();
    let mut worker = tokio::task::spawn_blocking(move || {
        let mut intake = SpoolIntake::new(settings, store, handle, stop, watcher);
        intake.run(&wake_rx);
    });
    tokio::select! {
        _ = shutdown.wait() => {
            let _ = wake_tx.try_send(());
            let _ = worker.await;
        }
        result = &mut worker => {
            if let Err(e) = result {
                error!(error = %e, "spool intake stopped unexpectedly; files wait in the spool until restart");
            }
        }
    }
    debug!("spool intake stopped");
}

/// The open descriptors of one spool directory.
struct DirHandles {
    /// The spool directory itself.
    spool: OwnedFd,
    /// `.claim/`: the daemon's own (0700).
    claim: OwnedFd,
    /// `rejected/`: the daemon's own (0700).
    rejected: OwnedFd,
    /// Device and inode of the spool directory, to notice it was deleted and made again.
    ident: (u64, u64),
}

/// One watched directory and what the intake knows of it.
struct SpoolDir {
    path: PathBuf,
    handles: Option<DirHandles>,
    /// Whether the path is watched by inotify for the current `handles`.
    watched: bool,
    /// Whether the last failure to open it was logged (one line until it works again).
    warned: bool,
    /// Entries that could not be claimed (name, inode): skipped until restart, one log line.
    unclaimable: HashSet<(Vec<u8>, u64)>,
    /// Claimed names that could be neither deleted nor quarantined: skipped until restart.
    stuck: HashSet<String>,
    /// Streamed files partly stored: claim name -> events stored.
    progress: HashMap<String, usize>,
}

/// What a file's name says it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    Ndjson,
    PlFile,
    /// A name that is not valid UTF-8: quarantined.
    BadName,
}

impl Kind {
    fn of(name: &str, utf8: bool) -> Kind {
        if !utf8 {
            Kind::BadName
        } else if is_pl_file(name) {
            Kind::PlFile
        } else if name.ends_with(".ndjson") {
            Kind::Ndjson
        } else {
            Kind::Json
        }
    }

    fn tag(self) -> char {
        match self {
            Kind::Json => 'j',
            Kind::Ndjson => 'n',
            Kind::PlFile => 'p',
            Kind::BadName => 'x',
        }
    }

    fn from_tag(tag: char) -> Option<Kind> {
        Some(match tag {
            'j' => Kind::Json,
            'n' => Kind::Ndjson,
            'p' => Kind::PlFile,
            'x' => Kind::BadName,
            _ => return None,
        })
    }
}

/// A claimed file's name in `.claim/`: `<claim stamp, 16 hex digits>.<kind tag>.<original
/// name>`, the original cut to fit the 255-byte name limit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClaimName {
    full: String,
    kind: Kind,
    /// The original name (cut if it was too long).
    original: String,
}

impl ClaimName {
    fn new(stamp: u64, kind: Kind, original: &str) -> ClaimName {
        let original = fit_name(original, NAME_MAX - 19);
        ClaimName { full: format!("{stamp:016x}.{}.{original}", kind.tag()), kind, original }
    }

    fn parse(full: &str) -> Option<ClaimName> {
        let (stamp, rest) = full.split_at_checked(16)?;
        u64::from_str_radix(stamp, 16).ok()?;
        let mut chars = rest.chars();
        let (Some('.'), Some(tag), Some('.')) = (chars.next(), chars.next(), chars.next()) else {
            return None;
        };
        let kind = Kind::from_tag(tag)?;
        Some(ClaimName { full: full.to_owned(), kind, original: chars.as_str().to_owned() })
    }
}

/// Cuts `name` to at most `max` bytes on a character boundary, keeping its end (the suffix that
/// says what it holds) and marking the cut with `~` and a hash of the whole name.
fn fit_name(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let hash = Sha256::digest(name.as_bytes());
    let mark = format!("~{:02x}{:02x}{:02x}{:02x}~", hash[0], hash[1], hash[2], hash[3]);
    let keep_tail = 24.min(max / 4);
    let mut tail_start = name.len() - keep_tail;
    while !name.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    let mut head_end = max.saturating_sub(mark.len() + (name.len() - tail_start));
    while !name.is_char_boundary(head_end) {
        head_end -= 1;
    }
    format!("{}{mark}{}", &name[..head_end], &name[tail_start..])
}

/// Claim stamps: unique within the process, and increasing across restarts (seeded with the
/// time in ns), so that `.claim/` sorted by name is in claim order.
fn next_claim_stamp() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let _ = NEXT.fetch_max(now, Ordering::SeqCst);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// What opening a claimed file found.
enum Opened {
    /// Gone, or a pagerduty_nagios.pl file still being written: look again later.
    NotYet,
    /// Not a file pdrelay reads: quarantine with this reason.
    Refused(String),
    /// A transient error: leave it and try again later.
    Failed(std::io::Error),
    /// A regular file of at most `max_file_bytes`.
    File(std::fs::File, rustix::fs::Stat),
}

/// The spool intake's state, owned by its blocking thread.
struct SpoolIntake {
    settings: SpoolSettings,
    store: Store,
    runtime: tokio::runtime::Handle,
    shutdown: Shutdown,
    watcher: Option<notify::RecommendedWatcher>,
    dirs: Vec<SpoolDir>,
    /// Whether the last store attempt found the queue full (one log line per change).
    full: bool,
    /// Claimed files finished (deleted or quarantined) since start: a round that finished none
    /// is not repeated at once, or a full queue with many waiting files would spin.
    handled: u64,
}

/// A group of small files' events on their way to one commit.
#[derive(Default)]
struct Batch {
    events: Vec<NewEvent>,
    files: Vec<(usize, String)>,
    bytes: usize,
}

impl SpoolIntake {
    fn new(
        settings: SpoolSettings,
        store: Store,
        runtime: tokio::runtime::Handle,
        shutdown: Shutdown,
        watcher: Option<notify::RecommendedWatcher>,
    ) -> SpoolIntake {
        let dirs = settings
            .dirs
            .iter()
            .map(|path| SpoolDir {
                path: path.clone(),
                handles: None,
                watched: false,
                warned: false,
                unclaimable: HashSet::new(),
                stuck: HashSet::new(),
                progress: HashMap::new(),
            })
            .collect();
        SpoolIntake { settings, store, runtime, shutdown, watcher, dirs, full: false, handled: 0 }
    }

    fn run(&mut self, wake: &std::sync::mpsc::Receiver<()>) {
        loop {
            while !self.shutdown.is_set() && self.round() {}
            if self.shutdown.is_set() {
                return;
            }
            // A directory that is missing or not watched is looked at every second until it is
            // back, so that files dropped into a re-made directory do not wait for a rescan.
            let impaired = self.dirs.iter().any(|d| d.handles.is_none() || (self.watcher.is_some() && !d.watched));
            let wait =
                if impaired { self.settings.rescan_interval.min(DIR_RETRY) } else { self.settings.rescan_interval };
            match wake.recv_timeout(wait) {
                Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if self.shutdown.is_set() {
                return;
            }
        }
    }

    /// One round over every directory: claim what arrived, store what is claimed. Returns
    /// whether more work is waiting now.
    fn round(&mut self) -> bool {
        let mut more = false;
        for i in 0..self.dirs.len() {
            if self.shutdown.is_set() {
                return false;
            }
            if !self.open_dir(i) {
                continue;
            }
            let claimed = self.claim_arrivals(i);
            more |= claimed >= FILES_PER_ROUND;
            more |= self.store_claimed(i);
        }
        more
    }

    /// Opens (or re-opens, if it was made again) directory `i` and its private directories,
    /// and makes sure inotify watches it. Returns whether it is usable.
    fn open_dir(&mut self, i: usize) -> bool {
        let dir = &mut self.dirs[i];
        let current = rustix::fs::stat(&dir.path).ok().map(|st| (st.st_dev, st.st_ino));
        let stale = match (&dir.handles, current) {
            (Some(h), Some(now)) => h.ident != now,
            (Some(_), None) => true,
            (None, _) => true,
        };
        if stale {
            if dir.handles.take().is_some() {
                info!(dir = %dir.path.display(), "spool directory was replaced; opening it again");
            }
            if dir.watched {
                if let Some(w) = self.watcher.as_mut() {
                    let _ = w.unwatch(&dir.path);
                }
                dir.watched = false;
            }
            match open_handles(&dir.path) {
                Ok(handles) => {
                    dir.handles = Some(handles);
                    dir.warned = false;
                    dir.stuck.clear();
                    dir.progress.clear();
                }
                Err(e) => {
                    if !dir.warned {
                        error!(dir = %dir.path.display(), error = %e, "cannot open the spool directory; its files wait for the next rescan");
                        dir.warned = true;
                    }
                    return false;
                }
            }
        }
        if !dir.watched {
            if let Some(w) = self.watcher.as_mut() {
                if let Some(parent) = dir.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    // Best effort: without it, a re-made directory is found by the next rescan.
                    let _ = w.watch(parent, notify::RecursiveMode::NonRecursive);
                }
                match w.watch(&dir.path, notify::RecursiveMode::NonRecursive) {
                    Ok(()) => dir.watched = true,
                    Err(e) => {
                        warn!(dir = %dir.path.display(), error = %e, "cannot watch the spool directory; relying on rescans")
                    }
                }
            }
        }
        true
    }

    /// Renames new spool entries of directory `i` into `.claim/`. Returns how many.
    fn claim_arrivals(&mut self, i: usize) -> usize {
        let dir = &mut self.dirs[i];
        let Some(handles) = dir.handles.as_ref() else { return 0 };
        let entries = match read_names(&handles.spool) {
            Ok(entries) => entries,
            Err(e) => {
                warn!(dir = %dir.path.display(), error = %e, "cannot read the spool directory");
                return 0;
            }
        };
        let mut names: Vec<(Vec<u8>, u64)> = entries
            .into_iter()
            .filter(|(raw, ino)| {
                let name = String::from_utf8_lossy(raw);
                is_spool_file(&name) && !dir.unclaimable.contains(&(raw.clone(), *ino))
            })
            .collect();
        names.sort();
        let mut claimed = 0;
        for (raw, ino) in names.into_iter().take(FILES_PER_ROUND) {
            let (name, utf8) = match std::str::from_utf8(&raw) {
                Ok(name) => (name.to_owned(), true),
                Err(_) => (String::from_utf8_lossy(&raw).into_owned(), false),
            };
            let kind = Kind::of(&name, utf8);
            if kind == Kind::PlFile && !pl_file_is_quiet(&handles.spool, &raw) {
                continue;
            }
            let mut result = Err(Errno::EXIST);
            for _ in 0..3 {
                let target = ClaimName::new(next_claim_stamp(), kind, &name);
                result = rustix::fs::renameat_with(
                    &handles.spool,
                    raw.as_slice(),
                    &handles.claim,
                    target.full.as_str(),
                    RenameFlags::NOREPLACE,
                );
                if result != Err(Errno::EXIST) {
                    break;
                }
            }
            match result {
                Ok(()) => claimed += 1,
                Err(Errno::NOENT) => {}
                Err(e) => {
                    error!(file = %Escaped(&name), dir = %dir.path.display(), error = %e,
                        "cannot claim a spool file (pdrelay needs to own the spool directory, or it to be sticky and writable); skipping it until restart");
                    dir.unclaimable.insert((raw, ino));
                }
            }
        }
        claimed
    }

    /// Stores the files claimed in directory `i`. Returns whether more are waiting now.
    fn store_claimed(&mut self, i: usize) -> bool {
        let names = {
            let dir = &self.dirs[i];
            let Some(handles) = dir.handles.as_ref() else { return false };
            match read_names(&handles.claim) {
                Ok(entries) => {
                    let mut names: Vec<String> = entries
                        .into_iter()
                        .filter_map(|(raw, _)| String::from_utf8(raw).ok())
                        .filter(|n| !dir.stuck.contains(n))
                        .collect();
                    names.sort();
                    names
                }
                Err(e) => {
                    warn!(dir = %dir.path.display(), error = %e, "cannot read the spool's claim directory");
                    return false;
                }
            }
        };
        let handled_before = self.handled;
        let waiting = names.len() > FILES_PER_ROUND;
        let max_pending = self.store.limits().max_pending;
        let mut batch = Batch::default();
        for full in names.into_iter().take(FILES_PER_ROUND) {
            if self.shutdown.is_set() {
                break;
            }
            let Some(claim) = ClaimName::parse(&full) else {
                // Not a name pdrelay gives: something put it there; quarantine it.
                let claim = ClaimName { full: full.clone(), kind: Kind::BadName, original: full };
                self.quarantine(i, &claim, "not a file pdrelay claimed");
                continue;
            };
            if claim.kind == Kind::BadName {
                self.quarantine(i, &claim, "file name is not valid UTF-8");
                continue;
            }
            let (file, stat) = match self.open_claimed(i, &claim) {
                Opened::NotYet => continue,
                Opened::Refused(reason) => {
                    self.quarantine(i, &claim, &reason);
                    continue;
                }
                Opened::Failed(e) => {
                    warn!(file = %Escaped(&claim.original), error = %e, "cannot read a spool file; trying again later");
                    continue;
                }
                Opened::File(file, stat) => (file, stat),
            };
            if claim.kind == Kind::Ndjson && stat.st_size as u64 > STREAM_FROM_BYTES {
                self.commit(&mut batch);
                self.stream_ndjson(i, &claim, file, &stat);
                continue;
            }
            let parsed = self.read_small(&claim, file, &stat);
            match parsed {
                Err(reason) => self.quarantine(i, &claim, &reason),
                Ok(events) if events.is_empty() => self.remove_claimed(i, &claim.full),
                Ok(events) if events.len() as u64 > max_pending => {
                    let reason = too_many(events.len(), max_pending);
                    self.quarantine(i, &claim, &reason);
                }
                Ok(events) => {
                    let room = self.room().saturating_sub(batch.events.len() as u64);
                    if events.len() as u64 > room {
                        // Stays claimed until there is room; smaller files may go ahead.
                        self.set_full(true, "queue.max_pending reached");
                        continue;
                    }
                    batch.bytes += stat.st_size as usize;
                    batch.events.extend(events);
                    batch.files.push((i, full));
                    if batch.bytes >= BYTES_PER_COMMIT || batch.events.len() >= FILES_PER_ROUND {
                        self.commit(&mut batch);
                    }
                }
            }
        }
        self.commit(&mut batch);
        waiting && self.handled > handled_before
    }

    /// Events the queue can take now.
    fn room(&self) -> u64 {
        self.store.limits().max_pending.saturating_sub(self.store.pending_count() as u64)
    }

    fn set_full(&mut self, full: bool, detail: &str) {
        if full && !self.full {
            warn!(%detail, "queue is full; spool files wait in the spool's claim directory until deliveries make room");
        } else if !full && self.full {
            info!("queue has room again; storing waiting spool files");
        }
        self.full = full;
    }

    /// Stores a batch of small files' events in one commit and deletes the files.
    fn commit(&mut self, batch: &mut Batch) {
        let batch = std::mem::take(batch);
        if batch.events.is_empty() {
            return;
        }
        let count = batch.events.len();
        match self.insert(batch.events) {
            Ok(()) => {
                for (i, name) in &batch.files {
                    self.remove_claimed(*i, name);
                }
                debug!(events = count, files = batch.files.len(), "spool events stored");
            }
            Err(StoreError::Full(detail)) => self.set_full(true, &detail),
            Err(e) => warn!(error = %e, "cannot store spool events; the files stay claimed and are read again"),
        }
    }

    fn insert(&mut self, events: Vec<NewEvent>) -> Result<(), StoreError> {
        let result = self.runtime.block_on(self.store.insert(events)).map(|_| ());
        if result.is_ok() {
            self.set_full(false, "");
        }
        result
    }

    /// Opens a claimed file without following links or blocking, and checks what it opened.
    fn open_claimed(&self, i: usize, claim: &ClaimName) -> Opened {
        let Some(handles) = self.dirs[i].handles.as_ref() else { return Opened::NotYet };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
        let fd = match rustix::fs::openat(&handles.claim, claim.full.as_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => {
                return Opened::Refused("is a symbolic link; spool files must be regular files".to_owned())
            }
            Err(Errno::NOENT) => return Opened::NotYet,
            Err(e @ (Errno::ACCESS | Errno::PERM)) => {
                return Opened::Refused(format!("file is not readable by pdrelay: {e}"))
            }
            Err(e) => return Opened::Failed(e.into()),
        };
        let stat = match rustix::fs::fstat(&fd) {
            Ok(stat) => stat,
            Err(e) => return Opened::Failed(e.into()),
        };
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => {}
            FileType::Directory => {
                return Opened::Refused("is a directory; spool files must be regular files".to_owned())
            }
            _ => return Opened::Refused("is not a regular file (a FIFO, socket or device)".to_owned()),
        }
        if stat.st_size as u64 > self.settings.max_file_bytes {
            return Opened::Refused(format!(
                "file is {} bytes, more than ingest.max_file_bytes ({})",
                stat.st_size, self.settings.max_file_bytes
            ));
        }
        if claim.kind == Kind::PlFile && modified_within(&stat, PL_FILE_QUIET) {
            return Opened::NotYet;
        }
        Opened::File(std::fs::File::from(fd), stat)
    }

    /// Reads a small file whole (at most `max_file_bytes`) and parses it.
    fn read_small(
        &self,
        claim: &ClaimName,
        file: std::fs::File,
        stat: &rustix::fs::Stat,
    ) -> Result<Vec<NewEvent>, String> {
        let max = self.settings.max_file_bytes;
        let mut bytes = Vec::with_capacity((stat.st_size as u64).min(max) as usize);
        file.take(max + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot be read: {e}"))?;
        if bytes.len() as u64 > max {
            return Err(format!("file grew past ingest.max_file_bytes ({max}) while it was read"));
        }
        let live = self.settings.live.get();
        let mut events = parse_spool_file(&claim.original, &bytes, &live.defaults, &live.nagios)?;
        for (n, event) in events.iter_mut().enumerate() {
            if event.id.is_none() {
                event.id = Some(file_event_id(&claim.original, stat, n));
            }
        }
        Ok(events)
    }

    /// Streams a large `.ndjson` file: checks every line, then stores its events in commits of
    /// [`EVENTS_PER_COMMIT`] as room allows, resuming where it stopped.
    fn stream_ndjson(&mut self, i: usize, claim: &ClaimName, file: std::fs::File, stat: &rustix::fs::Stat) {
        let size = stat.st_size as u64;
        let max_pending = self.store.limits().max_pending;
        let max_line = self.settings.max_line_bytes;
        let live = self.settings.live.get();
        let mut file = file;
        let done = match self.dirs[i].progress.get(&claim.full) {
            Some(done) => *done,
            None => {
                let mut reader = BufReader::new((&file).take(size));
                let mut count = 0usize;
                let checked = for_each_line(&mut reader, max_line, |n, line| {
                    Event::from_json(line, &live.defaults).map_err(|e| format!("line {n}: {e}"))?;
                    count += 1;
                    Ok(true)
                });
                let problem = match checked {
                    Err(reason) => Some(reason),
                    Ok(()) if count == 0 => Some("file has no events (empty)".to_owned()),
                    Ok(()) if count as u64 > max_pending => Some(too_many(count, max_pending)),
                    Ok(()) => None,
                };
                if let Some(reason) = problem {
                    self.quarantine(i, claim, &reason);
                    return;
                }
                self.dirs[i].progress.insert(claim.full.clone(), 0);
                0
            }
        };
        if let Err(e) = file.rewind() {
            warn!(file = %Escaped(&claim.original), error = %e, "cannot read a spool file; trying again later");
            return;
        }
        let mut reader = BufReader::new((&file).take(size));
        let mut stored = done;
        let mut index = 0usize;
        let mut chunk: Vec<NewEvent> = Vec::new();
        let mut room = self.room();
        let mut waiting = false;
        let walked = for_each_line(&mut reader, max_line, |n, line| {
            let this = index;
            index += 1;
            if this < stored {
                return Ok(true);
            }
            let event = Event::from_json(line, &live.defaults).map_err(|e| {
                format!("line {n}: {e} (the file changed while it was read; its first {stored} events were stored)")
            })?;
            let id = Some(file_event_id(&claim.original, stat, this));
            chunk.push(NewEvent { id, intake: "spool", event });
            if chunk.len() >= EVENTS_PER_COMMIT || chunk.len() as u64 >= room {
                let n = chunk.len();
                match self.insert(std::mem::take(&mut chunk)) {
                    Ok(()) => stored += n,
                    Err(StoreError::Full(detail)) => {
                        self.set_full(true, &detail);
                        waiting = true;
                        return Ok(false);
                    }
                    Err(e) => {
                        warn!(file = %Escaped(&claim.original), error = %e, "cannot store spool events; the file stays claimed");
                        waiting = true;
                        return Ok(false);
                    }
                }
                room = self.room();
                if room == 0 {
                    self.set_full(true, "queue.max_pending reached");
                    waiting = true;
                    return Ok(false);
                }
                if self.shutdown.is_set() {
                    waiting = true;
                    return Ok(false);
                }
            }
            Ok(true)
        });
        if let Err(reason) = walked {
            self.dirs[i].progress.remove(&claim.full);
            self.quarantine(i, claim, &reason);
            return;
        }
        if !waiting && !chunk.is_empty() {
            let n = chunk.len();
            match self.insert(chunk) {
                Ok(()) => stored += n,
                Err(StoreError::Full(detail)) => {
                    self.set_full(true, &detail);
                    waiting = true;
                }
                Err(e) => {
                    warn!(file = %Escaped(&claim.original), error = %e, "cannot store spool events; the file stays claimed");
                    waiting = true;
                }
            }
        }
        if waiting {
            self.dirs[i].progress.insert(claim.full.clone(), stored);
            debug!(file = %Escaped(&claim.original), stored, "large spool file partly stored; the rest waits for room");
            return;
        }
        self.dirs[i].progress.remove(&claim.full);
        self.remove_claimed(i, &claim.full);
        debug!(file = %Escaped(&claim.original), events = stored, "large spool file stored");
    }

    /// Deletes a claimed file whose events are stored (or that needed nothing sent). If it
    /// cannot be deleted, it is skipped until restart rather than stored again at every scan.
    fn remove_claimed(&mut self, i: usize, name: &str) {
        let dir = &mut self.dirs[i];
        let Some(handles) = dir.handles.as_ref() else { return };
        match rustix::fs::unlinkat(&handles.claim, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => self.handled += 1,
            Err(e) => {
                error!(file = %Escaped(name), dir = %dir.path.display(), error = %e,
                    "stored a spool file's events but cannot delete it; skipping it until restart");
                dir.stuck.insert(name.to_owned());
            }
        }
    }

    /// Moves a claimed file whole to `rejected/` after writing its `.reason` sidecar; never
    /// deletes it. If it cannot be moved it stays claimed and is skipped until restart.
    fn quarantine(&mut self, i: usize, claim: &ClaimName, reason: &str) {
        let dir = &mut self.dirs[i];
        let Some(handles) = dir.handles.as_ref() else { return };
        let reason = crate::text::escaped(reason);
        match move_to_rejected(handles, claim, &reason) {
            Ok(target) => {
                self.handled += 1;
                warn!(file = %Escaped(&claim.original), dir = %dir.path.display(), moved_to = %Escaped(&target), %reason, "spool file rejected");
            }
            Err(e) => {
                error!(file = %Escaped(&claim.original), dir = %dir.path.display(), error = %e, %reason,
                    "spool file is invalid and cannot be moved to rejected/; it stays in .claim/ until restart");
                dir.stuck.insert(claim.full.clone());
            }
        }
    }
}

fn too_many(events: usize, max_pending: u64) -> String {
    format!("file has {events} events, more than the queue can ever hold (queue.max_pending = {max_pending})")
}

/// Whether a file was modified less than `quiet` ago.
fn modified_within(stat: &rustix::fs::Stat, quiet: Duration) -> bool {
    let mtime = std::time::UNIX_EPOCH
        + Duration::from_secs(stat.st_mtime.max(0) as u64)
        + Duration::from_nanos(stat.st_mtime_nsec);
    mtime.elapsed().map_or(true, |age| age < quiet)
}

fn pl_file_is_quiet(dir: &OwnedFd, name: &[u8]) -> bool {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => !modified_within(&stat, PL_FILE_QUIET),
        Err(_) => true,
    }
}

/// Calls `each(line number, line)` for every non-blank line of `reader`, lines bounded by
/// `max_line` bytes. `each` returns whether to go on. Errors name the line.
fn for_each_line(
    reader: &mut impl BufRead,
    max_line: usize,
    mut each: impl FnMut(usize, &[u8]) -> Result<bool, String>,
) -> Result<(), String> {
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        number += 1;
        let mut too_long = false;
        loop {
            let buf = reader.fill_buf().map_err(|e| format!("cannot be read: {e}"))?;
            if buf.is_empty() {
                break;
            }
            let (part, end) = match buf.iter().position(|b| *b == b'\n') {
                Some(at) => (&buf[..at], Some(at + 1)),
                None => (buf, None),
            };
            if line.len() + part.len() > max_line {
                too_long = true;
            } else {
                line.extend_from_slice(part);
            }
            let used = end.unwrap_or(buf.len());
            reader.consume(used);
            if end.is_some() {
                break;
            }
            if too_long {
                continue;
            }
        }
        if too_long {
            return Err(format!("line {number}: longer than ingest.max_line_bytes ({max_line} bytes)"));
        }
        let at_end = line.is_empty() && reader.fill_buf().map(|b| b.is_empty()).unwrap_or(true);
        if !is_blank(&line) && !each(number, &line)? {
            return Ok(());
        }
        if at_end {
            return Ok(());
        }
    }
}

/// Names and inodes in a directory (without `.` and `..`), read from its descriptor.
fn read_names(dir: &OwnedFd) -> std::io::Result<Vec<(Vec<u8>, u64)>> {
    let mut out = Vec::new();
    let mut entries = rustix::fs::Dir::read_from(dir)?;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push((name.to_vec(), entry.ino()));
    }
    Ok(out)
}

/// Opens a spool directory and its two private directories.
fn open_handles(path: &std::path::Path) -> std::io::Result<DirHandles> {
    let spool = rustix::fs::openat(CWD, path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let st = rustix::fs::fstat(&spool)?;
    let claim = private_dir(&spool, CLAIM_DIR, path)?;
    let rejected = private_dir(&spool, REJECTED_DIR, path)?;
    Ok(DirHandles { spool, claim, rejected, ident: (st.st_dev, st.st_ino) })
}

/// Opens (making it if needed) the daemon's own directory `name` inside `parent`: a real
/// directory (not a link), owned by the daemon's user, mode exactly 0700 whatever the umask.
/// Anything else found at that name (a link, a file, another user's directory) is renamed
/// aside to `.<name>.moved-aside.<ns>` with a warning, never followed or used.
fn private_dir(parent: &OwnedFd, name: &str, parent_path: &std::path::Path) -> std::io::Result<OwnedFd> {
    let me = rustix::process::geteuid().as_raw();
    for _ in 0..3 {
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory && st.st_uid == me => {
                let fd = rustix::fs::openat(
                    parent,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let opened = rustix::fs::fstat(&fd)?;
                if opened.st_uid != me || (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) {
                    continue;
                }
                if opened.st_mode & 0o7777 != 0o700 {
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
                }
                return Ok(fd);
            }
            Ok(st) => {
                let aside = format!(".{name}.moved-aside.{}", next_claim_stamp());
                rustix::fs::renameat_with(parent, name, parent, aside.as_str(), RenameFlags::NOREPLACE)?;
                warn!(dir = %parent_path.display(), entry = name, owner_uid = st.st_uid, moved_to = %aside,
                    "the spool's private entry was not a directory of pdrelay's own; moved it aside");
            }
            Err(Errno::NOENT) => match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {
                    rustix::fs::fsync(parent)?;
                }
                Err(e) => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        }
    }
    Err(std::io::Error::other(format!("{name} keeps being replaced; refusing to use it")))
}

/// Moves a claimed file to `rejected/` (writing its `.reason` sidecar first, both fsynced).
/// Returns the name it got there.
fn move_to_rejected(handles: &DirHandles, claim: &ClaimName, reason: &str) -> std::io::Result<String> {
    // Room for ".reason" and a uniquifier within the 255-byte name limit.
    let base = fit_name(&claim.original, NAME_MAX - 7 - 34);
    let mut target = base.clone();
    if rustix::fs::statat(&handles.rejected, target.as_str(), AtFlags::SYMLINK_NOFOLLOW).is_ok() {
        target = format!("{base}.{}", uuid::Uuid::new_v4().simple());
    }
    let sidecar = format!("{target}.reason");
    let tmp = format!(".{}.tmp", uuid::Uuid::new_v4().simple());
    let fd = rustix::fs::openat(
        &handles.rejected,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let mut file = std::fs::File::from(fd);
    writeln!(file, "{reason}")?;
    file.sync_all()?;
    drop(file);
    rustix::fs::renameat(&handles.rejected, tmp.as_str(), &handles.rejected, sidecar.as_str())?;
    rustix::fs::renameat_with(
        &handles.claim,
        claim.full.as_str(),
        &handles.rejected,
        target.as_str(),
        RenameFlags::NOREPLACE,
    )?;
    rustix::fs::fsync(&handles.rejected)?;
    rustix::fs::fsync(&handles.claim)?;
    Ok(target)
}

/// An event id derived from the file's identity (original name, device, inode, size,
/// modification time in ns) and the event's index: a UUID (version 8) that is the same each
/// time the same file is read, wherever it was claimed to.
fn file_event_id(original: &str, stat: &rustix::fs::Stat, index: usize) -> String {
    let mut h = Sha256::new();
    h.update(original.as_bytes());
    for n in [stat.st_dev, stat.st_ino, stat.st_size as u64, stat.st_mtime as u64, stat.st_mtime_nsec, index as u64] {
        h.update(n.to_be_bytes());
    }
    let digest = h.finalize();
    let bytes: [u8; 16] = digest[..16].try_into().expect("16 bytes");
    uuid::Uuid::new_v8(bytes).hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_read() {
        for (name, read) in [
            ("a.json", true),
            ("b.ndjson", true),
            (".a.json", false),
            ("a.json.tmp", false),
            ("a.tmp", false),
            ("notes.txt", false),
            ("a.json.reason", false),
            ("pd_1234_567.txt", true),
            ("pd_1234.txt.tmp", false),
            ("other.txt", false),
        ] {
            assert_eq!(is_spool_file(name), read, "{name}");
        }
    }

    #[test]
    fn only_arrivals_wake_a_scan() {
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode};
        use notify::EventKind;
        for (kind, wakes) in [
            (EventKind::Create(CreateKind::File), true),
            (EventKind::Modify(ModifyKind::Name(RenameMode::To)), true),
            (EventKind::Modify(ModifyKind::Name(RenameMode::Both)), true),
            (EventKind::Modify(ModifyKind::Name(RenameMode::From)), false),
            (EventKind::Access(AccessKind::Close(AccessMode::Write)), true),
            (EventKind::Access(AccessKind::Open(AccessMode::Any)), false),
            (EventKind::Access(AccessKind::Close(AccessMode::Read)), false),
            (EventKind::Access(AccessKind::Read), false),
            (EventKind::Remove(RemoveKind::File), false),
            (EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)), false),
            (EventKind::Other, true),
        ] {
            assert_eq!(is_arrival(&kind), wakes, "{kind:?}");
        }
    }

    #[test]
    fn files_are_all_or_nothing() {
        let d = IntakeDefaults::default();
        let n = NagiosSettings::default();
        let key = "r".repeat(32);
        let good = format!(r#"{{"routing_key":"{key}","event_action":"trigger","payload":{{"summary":"s"}}}}"#);
        let two = format!("{good}\n\n{good}\n");
        assert_eq!(parse_spool_file("x.ndjson", two.as_bytes(), &d, &n).unwrap().len(), 2);
        let bad = format!("{good}\n{{\"event_action\":1}}\n");
        assert!(parse_spool_file("x.ndjson", bad.as_bytes(), &d, &n).unwrap_err().starts_with("line 2: "));
        assert_eq!(parse_spool_file("x.json", b"", &d, &n).unwrap_err(), "file is empty");
        assert!(parse_spool_file("x.ndjson", b"\n\n", &d, &n).is_err());
        assert!(parse_spool_file("x.json", &[0xff, 0xfe], &d, &n).is_err());
        let id = "0191e7a2-7c5e-7a41-9a0e-5f2d2b0c1d2e";
        let evs = parse_spool_file(&format!("{id}.json"), good.as_bytes(), &d, &n).unwrap();
        assert_eq!(evs[0].id.as_deref(), Some(id));
        assert_eq!(parse_spool_file("alert.json", good.as_bytes(), &d, &n).unwrap()[0].id, None);
    }

    #[test]
    fn claim_names_keep_the_order_kind_and_original_name() {
        let a = ClaimName::new(5, Kind::Ndjson, "alerts.ndjson");
        assert_eq!(a.full, "0000000000000005.n.alerts.ndjson");
        assert_eq!(ClaimName::parse(&a.full), Some(a.clone()));
        let b = ClaimName::new(16, Kind::Json, "a.json");
        assert!(a.full < b.full, "claim order is name order");
        let long = format!("{}.json", "é".repeat(200));
        let c = ClaimName::new(1, Kind::Json, &long);
        assert!(c.full.len() <= NAME_MAX, "{}", c.full.len());
        assert!(c.original.ends_with(".json"));
        assert_eq!(ClaimName::parse(&c.full).unwrap().original, c.original);
        for junk in ["", "short", "000000000000000g.j.a.json", "0000000000000001.q.a.json", "0000000000000001-j-a.json"]
        {
            assert_eq!(ClaimName::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn fitted_names_are_short_enough_distinct_and_keep_their_suffix() {
        let a = fit_name(&format!("{}a.ndjson", "x".repeat(300)), 200);
        let b = fit_name(&format!("{}b.ndjson", "x".repeat(300)), 200);
        assert!(a.len() <= 200 && b.len() <= 200);
        assert_ne!(a, b);
        assert!(a.ends_with("a.ndjson"));
        assert_eq!(fit_name("short.json", 200), "short.json");
    }

    #[test]
    fn lines_are_bounded_and_numbered() {
        let text = b"one\n\n  \nthree\nfour";
        let mut seen = Vec::new();
        for_each_line(&mut &text[..], 10, |n, line| {
            seen.push((n, String::from_utf8(line.to_vec()).unwrap()));
            Ok(true)
        })
        .unwrap();
        assert_eq!(seen, vec![(1, "one".into()), (4, "three".into()), (5, "four".into())]);
        let long = format!("ok\n{}\n", "y".repeat(50));
        let err = for_each_line(&mut long.as_bytes(), 10, |_, _| Ok(true)).unwrap_err();
        assert_eq!(err, "line 2: longer than ingest.max_line_bytes (10 bytes)");
        let mut calls = 0;
        for_each_line(&mut &b"a\nb\nc\n"[..], 10, |_, _| {
            calls += 1;
            Ok(calls < 2)
        })
        .unwrap();
        assert_eq!(calls, 2, "stops when asked");
    }
}
