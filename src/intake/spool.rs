//! Spool directories: producers drop files, pdrelay stores their events and deletes them.
//!
//! A producer writes a name starting with `.` or ending in `.tmp` and renames it into place; such
//! names are never read. `*.json` holds one event, `*.ndjson` one event per line (blank lines
//! skipped). A file is all or nothing: it is deleted only after all its events are durably
//! stored, and a file that cannot be read as events is moved whole to `rejected/` beside a
//! `<name>.reason` sidecar. A `*.json` file whose stem is a UUID gives its event that id, so a
//! file read twice (a crash between storing and deleting) is stored once.
//!
//! inotify (through notify) is only a wake-up: the directory is scanned in full at start, on
//! every wake-up and every `rescan_interval`, so an overflowed or missed event never strands a
//! file.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::Watcher;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::nagios::{map, parse_pl_spool_file, Mapped, NagiosSettings};
use super::Shutdown;
use crate::event::{Event, IntakeDefaults};
use crate::queue::store::{NewEvent, Store};

/// Name of the quarantine directory inside each spool directory.
pub const REJECTED_DIR: &str = "rejected";
/// Files read per group commit.
const FILES_PER_BATCH: usize = 2_000;

/// Settings of the spool intake.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// Watched directories.
    pub dirs: Vec<PathBuf>,
    /// Full rescan period.
    pub rescan_interval: Duration,
    /// Largest file read, in bytes.
    pub max_file_bytes: u64,
    /// Defaults filled in at intake and the mapping of pagerduty_nagios.pl files (reloadable).
    pub live: crate::live::LiveConfig,
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
/// writing. Opens, reads, attribute changes and removals cannot.
pub fn is_arrival(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    use notify::EventKind;
    match kind {
        EventKind::Create(_) => true,
        EventKind::Modify(ModifyKind::Name(_)) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        // An overflowed queue or an unknown event: scan to be safe.
        EventKind::Any | EventKind::Other => true,
        _ => false,
    }
}

/// One file read from a spool directory.
struct SpoolFile {
    path: PathBuf,
    parsed: Result<Vec<NewEvent>, String>,
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
                info!(file = name, %message, "pagerduty_nagios.pl file needs nothing sent; removing it");
                Ok(Vec::new())
            }
        };
    }
    if name.ends_with(".ndjson") {
        let mut events = Vec::new();
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
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
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err("file is empty".to_owned());
        }
        let event = Event::from_json(bytes, defaults).map_err(|e| e.to_string())?;
        let stem = name.trim_end_matches(".json");
        let id = uuid::Uuid::parse_str(stem).ok().map(|u| u.hyphenated().to_string());
        Ok(vec![NewEvent { id, intake: "spool", event }])
    }
}

/// Watches and drains the spool directories until shutdown.
pub async fn run(settings: SpoolSettings, store: Store, mut shutdown: Shutdown) {
    let (wake_tx, mut wake_rx) = mpsc::channel::<()>(1);
    for dir in &settings.dirs {
        if let Err(e) = std::fs::create_dir_all(dir.join(REJECTED_DIR)) {
            error!(dir = %dir.display(), error = %e, "cannot create the spool directory; its files wait for the next rescan");
        }
    }
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Only arrivals wake a scan: our own scan opens and reads the directory, and waking on
        // those events would scan in a loop.
        if res.map(|e| is_arrival(&e.kind)).unwrap_or(true) {
            let _ = wake_tx.try_send(());
        }
    });
    let _watcher = match watcher {
        Ok(mut w) => {
            for dir in &settings.dirs {
                if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
                    warn!(dir = %dir.display(), error = %e, "cannot watch the spool directory; relying on rescans");
                }
            }
            Some(w)
        }
        Err(e) => {
            warn!(error = %e, "cannot start the file watcher; relying on rescans");
            None
        }
    };
    info!(dirs = ?settings.dirs, "spool intake started");
    let mut stuck: HashSet<PathBuf> = HashSet::new();
    let mut rescan = tokio::time::interval(settings.rescan_interval);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while !shutdown.is_set() && drain_once(&settings, &store, &mut stuck).await {}
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = wake_rx.recv() => {}
            _ = rescan.tick() => {}
        }
    }
    debug!("spool intake stopped");
}

/// Reads up to one batch of files from all directories, stores them and deletes them. Returns
/// whether a full batch was read (so more may be waiting).
async fn drain_once(settings: &SpoolSettings, store: &Store, stuck: &mut HashSet<PathBuf>) -> bool {
    let s = settings.clone();
    let skip = stuck.clone();
    let files = match tokio::task::spawn_blocking(move || read_batch(&s, &skip)).await {
        Ok(files) => files,
        Err(e) => {
            error!(error = %e, "spool reader failed");
            return false;
        }
    };
    let full = files.len() >= FILES_PER_BATCH;
    let mut events = Vec::new();
    let mut to_delete = Vec::new();
    for file in files {
        match file.parsed {
            Ok(evs) if evs.is_empty() => remove_handled(&file.path, stuck),
            Ok(mut evs) => {
                events.append(&mut evs);
                to_delete.push(file.path);
            }
            Err(reason) => {
                if !quarantine(&file.path, &reason) {
                    stuck.insert(file.path);
                }
            }
        }
    }
    if events.is_empty() {
        return full;
    }
    let count = events.len();
    match store.insert(events).await {
        Ok(_) => {
            for path in to_delete {
                remove_handled(&path, stuck);
            }
            debug!(events = count, "spool events stored");
            full
        }
        Err(e) => {
            warn!(error = %e, "cannot store spool events; the files stay and are read again");
            false
        }
    }
}

/// Deletes a file whose events are stored (or that needed nothing sent). If it cannot be
/// deleted, it is skipped until restart rather than stored again at every scan.
fn remove_handled(path: &Path, stuck: &mut HashSet<PathBuf>) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            error!(file = %path.display(), error = %e, "handled a spool file but cannot delete it; skipping it until restart");
            stuck.insert(path.to_owned());
        }
    }
}

fn read_batch(settings: &SpoolSettings, skip: &HashSet<PathBuf>) -> Vec<SpoolFile> {
    let mut out = Vec::new();
    for dir in &settings.dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "cannot read the spool directory");
                continue;
            }
        };
        let mut names: Vec<(String, PathBuf, Option<String>)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let (name, utf8) = match e.file_name().into_string() {
                    Ok(name) => (name, true),
                    Err(raw) => (raw.to_string_lossy().into_owned(), false),
                };
                if !is_spool_file(&name) || skip.contains(&e.path()) {
                    return None;
                }
                // Anything with a spool file's name that cannot be read as one is quarantined
                // with its reason, rather than left alone without a word.
                let problem = match e.file_type() {
                    _ if !utf8 => Some("file name is not valid UTF-8".to_owned()),
                    Ok(t) if t.is_file() => None,
                    Ok(t) if t.is_symlink() => Some("is a symbolic link; spool files must be regular files".to_owned()),
                    Ok(t) if t.is_dir() => Some("is a directory; spool files must be regular files".to_owned()),
                    Ok(_) => Some("is not a regular file (a FIFO, socket or device)".to_owned()),
                    Err(_) => return None,
                };
                Some((name, e.path(), problem))
            })
            .collect();
        names.sort();
        for (name, path, problem) in names {
            if out.len() >= FILES_PER_BATCH {
                return out;
            }
            if let Some(reason) = problem {
                out.push(SpoolFile { path, parsed: Err(reason) });
                continue;
            }
            let parsed = read_file(&path, &name, settings);
            match parsed {
                Ok(Some(parsed)) => out.push(SpoolFile { path, parsed }),
                Ok(None) => {}
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot read a spool file; trying again later")
                }
            }
        }
    }
    out
}

/// Reads one file. `Ok(None)`: it vanished, or is not ready yet. `Err`: a transient I/O error (left in place).
fn read_file(
    path: &Path,
    name: &str,
    settings: &SpoolSettings,
) -> std::io::Result<Option<Result<Vec<NewEvent>, String>>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if is_pl_file(name) && meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age < PL_FILE_QUIET) {
        return Ok(None);
    }
    if meta.len() > settings.max_file_bytes {
        return Ok(Some(Err(format!(
            "file is {} bytes, more than ingest.max_file_bytes ({})",
            meta.len(),
            settings.max_file_bytes
        ))));
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Ok(Some(Err(format!("file is not readable by pdrelay: {e}"))))
        }
        Err(e) => return Err(e),
    };
    let live = settings.live.get();
    let mut parsed = parse_spool_file(name, &bytes, &live.defaults, &live.nagios);
    if let Ok(events) = &mut parsed {
        // Ids from the file's identity, so that a file read again after a crash between storing
        // and deleting it is stored once (the store skips ids it holds with the same event).
        for (line, event) in events.iter_mut().enumerate() {
            if event.id.is_none() {
                event.id = Some(file_event_id(path, &meta, line));
            }
        }
    }
    Ok(Some(parsed))
}

/// An event id derived from the file's identity (path, device, inode, size, modification time
/// in ns) and the line: a UUID (version 8) that is the same each time the same file is read.
fn file_event_id(path: &Path, meta: &std::fs::Metadata, line: usize) -> String {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    h.update(path.as_os_str().as_bytes());
    for n in [meta.dev(), meta.ino(), meta.size(), meta.mtime() as u64, meta.mtime_nsec() as u64, line as u64] {
        h.update(n.to_be_bytes());
    }
    let digest = h.finalize();
    let bytes: [u8; 16] = digest[..16].try_into().expect("16 bytes");
    uuid::Uuid::new_v8(bytes).hyphenated().to_string()
}

/// Moves a file whole to `rejected/` with a `.reason` sidecar; never deletes it. Returns whether
/// it was moved (if not, it stays in place and the caller skips it until restart).
fn quarantine(path: &Path, reason: &str) -> bool {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return false };
    let rejected = dir.join(REJECTED_DIR);
    let result = (|| -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&rejected)?;
        let mut target = rejected.join(name);
        if target.symlink_metadata().is_ok() {
            let mut unique = name.to_owned();
            unique.push(format!(".{}", uuid::Uuid::new_v4().simple()));
            target = rejected.join(unique);
        }
        std::fs::rename(path, &target)?;
        let mut sidecar_name = target.file_name().expect("a file name").to_owned();
        sidecar_name.push(".reason");
        let mut sidecar = tempfile::NamedTempFile::new_in(&rejected)?;
        writeln!(sidecar, "{reason}")?;
        sidecar.as_file().sync_all()?;
        sidecar.persist(rejected.join(sidecar_name)).map_err(|e| e.error)?;
        std::fs::File::open(&rejected)?.sync_all()?;
        Ok(target)
    })();
    match result {
        Ok(target) => {
            warn!(file = %path.display(), moved_to = %target.display(), %reason, "spool file rejected");
            true
        }
        Err(e) => {
            error!(file = %path.display(), error = %e, %reason, "spool file is invalid and cannot be moved to rejected/; it stays in place until restart");
            false
        }
    }
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
}
