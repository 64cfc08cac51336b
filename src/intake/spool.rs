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
//!
//! This file is the intake loop. The directory layer it drives (claims, `rejected/`, opening
//! without following links) is [`super::spool_dir`]; the file formats and the bounded line
//! reader are [`super::spool_file`].

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read, Seek};
use std::path::PathBuf;
use std::time::Duration;

use notify::Watcher;
use rustix::fs::{AtFlags, RenameFlags};
use rustix::io::Errno;
use tracing::{debug, error, info, warn};

use super::spool_dir::{
    file_event_id, move_to_rejected, next_claim_stamp, open_claimed, open_handles, pl_file_is_quiet, read_names,
    ClaimName, Kind, Opened, SpoolDir,
};
use super::spool_file::{for_each_line, is_spool_file, parse_spool_file};
use crate::event::Event;
use crate::ops::shutdown::Shutdown;
use crate::queue::error::StoreError;
use crate::queue::request::NewEvent;
use crate::queue::store::Store;
use crate::text::Escaped;

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
    pub reloadable: crate::ops::reload::ReloadableSettings,
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
            let opened = match self.dirs[i].handles.as_ref() {
                Some(handles) => open_claimed(handles, &claim, self.settings.max_file_bytes),
                None => Opened::NotYet,
            };
            let (file, stat) = match opened {
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
        let current = self.settings.reloadable.get();
        let mut events = parse_spool_file(&claim.original, &bytes, &current.defaults, &current.nagios)?;
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
        let current = self.settings.reloadable.get();
        let mut file = file;
        let done = match self.dirs[i].progress.get(&claim.full) {
            Some(done) => *done,
            None => {
                let mut reader = BufReader::new((&file).take(size));
                let mut count = 0usize;
                let checked = for_each_line(&mut reader, max_line, |n, line| {
                    Event::from_json(line, &current.defaults).map_err(|e| format!("line {n}: {e}"))?;
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
            let event = Event::from_json(line, &current.defaults).map_err(|e| {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
