//! The spool directories' own places, kept safe from producers that race or attack them: the claim
//! directory `.claim/` and the quarantine `rejected/` (the daemon's own, mode 0700, made or moved
//! aside by [`private_dir`]), claim names that keep the claim order and the original name, opening
//! a claimed entry without following links or blocking, and event ids from a file's identity.
//!
//! Runs no loop and stores nothing: the intake loop (`intake::spool`) decides when each step runs.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, CWD};
use rustix::io::Errno;
use sha2::{Digest, Sha256};
use tracing::warn;

use super::spool_file::{is_pl_file, is_spool_file, PL_FILE_QUIET};

/// Name of the quarantine directory inside each spool directory.
pub const REJECTED_DIR: &str = "rejected";
/// Name of the claim directory inside each spool directory (a dot name: never read as a spool
/// file, and hidden from `ls`).
pub const CLAIM_DIR: &str = ".claim";
/// Longest file name on Linux file systems, in bytes.
const NAME_MAX: usize = 255;

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

/// The open descriptors of one spool directory.
pub(super) struct DirHandles {
    /// The spool directory itself.
    pub(super) spool: OwnedFd,
    /// `.claim/`: the daemon's own (0700).
    pub(super) claim: OwnedFd,
    /// `rejected/`: the daemon's own (0700).
    pub(super) rejected: OwnedFd,
    /// Device and inode of the spool directory, to notice it was deleted and made again.
    pub(super) ident: (u64, u64),
}

/// One watched directory and what the intake knows of it.
pub(super) struct SpoolDir {
    pub(super) path: PathBuf,
    pub(super) handles: Option<DirHandles>,
    /// Whether the path is watched by inotify for the current `handles`.
    pub(super) watched: bool,
    /// Whether the last failure to open it was logged (one line until it works again).
    pub(super) warned: bool,
    /// Entries that could not be claimed (name, inode): skipped until restart, one log line.
    pub(super) unclaimable: HashSet<(Vec<u8>, u64)>,
    /// Claimed names that could be neither deleted nor quarantined: skipped until restart.
    pub(super) stuck: HashSet<String>,
    /// Streamed files partly stored: claim name -> events stored.
    pub(super) progress: HashMap<String, usize>,
}

/// What a file's name says it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Json,
    Ndjson,
    PlFile,
    /// A name that is not valid UTF-8: quarantined.
    BadName,
}

impl Kind {
    pub(super) fn of(name: &str, utf8: bool) -> Kind {
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
pub(super) struct ClaimName {
    pub(super) full: String,
    pub(super) kind: Kind,
    /// The original name (cut if it was too long).
    pub(super) original: String,
}

impl ClaimName {
    pub(super) fn new(stamp: u64, kind: Kind, original: &str) -> ClaimName {
        let original = fit_name(original, NAME_MAX - 19);
        ClaimName { full: format!("{stamp:016x}.{}.{original}", kind.tag()), kind, original }
    }

    pub(super) fn parse(full: &str) -> Option<ClaimName> {
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
pub(super) fn next_claim_stamp() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let _ = NEXT.fetch_max(now, Ordering::SeqCst);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// What opening a claimed file found.
pub(super) enum Opened {
    /// Gone, or a pagerduty_nagios.pl file still being written: look again later.
    NotYet,
    /// Not a file pdrelay reads: quarantine with this reason.
    Refused(String),
    /// A transient error: leave it and try again later.
    Failed(std::io::Error),
    /// A regular file of at most `max_file_bytes`.
    File(std::fs::File, rustix::fs::Stat),
}

/// Opens a claimed file without following links or blocking, and checks what it opened: a
/// regular file of at most `max_file_bytes`.
pub(super) fn open_claimed(handles: &DirHandles, claim: &ClaimName, max_file_bytes: u64) -> Opened {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match rustix::fs::openat(&handles.claim, claim.full.as_str(), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::LOOP) => return Opened::Refused("is a symbolic link; spool files must be regular files".to_owned()),
        Err(Errno::NOENT) => return Opened::NotYet,
        Err(e @ (Errno::ACCESS | Errno::PERM)) => {
            return Opened::Refused(format!("file is not readable by pdrelay: {e}"))
        }
        // A Unix socket (ENXIO) or a device without a driver (ENODEV) cannot be opened at all:
        // refused like a FIFO, not retried every round.
        Err(Errno::NXIO | Errno::NODEV) => {
            return Opened::Refused("is not a regular file (a FIFO, socket or device)".to_owned())
        }
        Err(e) => return Opened::Failed(e.into()),
    };
    let stat = match rustix::fs::fstat(&fd) {
        Ok(stat) => stat,
        Err(e) => return Opened::Failed(e.into()),
    };
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => {}
        FileType::Directory => return Opened::Refused("is a directory; spool files must be regular files".to_owned()),
        _ => return Opened::Refused("is not a regular file (a FIFO, socket or device)".to_owned()),
    }
    if stat.st_size as u64 > max_file_bytes {
        return Opened::Refused(format!(
            "file is {} bytes, more than ingest.max_file_bytes ({})",
            stat.st_size, max_file_bytes
        ));
    }
    if claim.kind == Kind::PlFile && modified_within(&stat, PL_FILE_QUIET) {
        return Opened::NotYet;
    }
    Opened::File(std::fs::File::from(fd), stat)
}

/// Whether a file was modified less than `quiet` ago.
fn modified_within(stat: &rustix::fs::Stat, quiet: Duration) -> bool {
    let mtime = std::time::UNIX_EPOCH
        + Duration::from_secs(stat.st_mtime.max(0) as u64)
        + Duration::from_nanos(stat.st_mtime_nsec);
    mtime.elapsed().map_or(true, |age| age < quiet)
}

pub(super) fn pl_file_is_quiet(dir: &OwnedFd, name: &[u8]) -> bool {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => !modified_within(&stat, PL_FILE_QUIET),
        Err(_) => true,
    }
}

/// Names and inodes in a directory (without `.` and `..`), read from its descriptor.
pub(super) fn read_names(dir: &OwnedFd) -> std::io::Result<Vec<(Vec<u8>, u64)>> {
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
pub(super) fn open_handles(path: &std::path::Path) -> std::io::Result<DirHandles> {
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
pub(super) fn move_to_rejected(handles: &DirHandles, claim: &ClaimName, reason: &str) -> std::io::Result<String> {
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
pub(super) fn file_event_id(original: &str, stat: &rustix::fs::Stat, index: usize) -> String {
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
}
