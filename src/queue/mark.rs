//! The commit mark, and salvage: how the store notices that sled lost acknowledged commits (a
//! damaged or truncated log, which sled 0.34 may recover from silently), and how
//! `pdrelay queue salvage` rebuilds a queue from what can still be read.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::disk::{apply_atomically, open_sled};
use super::error::StoreError;
use super::keys::{meta_key, read_u64, seq_of};
use super::record::{Record, State};

/// File in the queue directory holding the number of the last acknowledged group commit.
pub const MARK_FILE: &str = "pdrelay-commit-mark";

/// The commit mark: after each group commit is synced, its number is written here and synced too.
/// Each commit also stores its number inside sled, so on open sled must hold at least the
/// number in the mark; less means acknowledged events were lost (a damaged or truncated file,
/// which sled 0.34 may otherwise recover from silently by cutting its log short).
pub(super) struct CommitMark(File);

impl CommitMark {
    pub(super) fn open(dir: &Path) -> Result<CommitMark, StoreError> {
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
    pub(super) fn read(&self) -> Result<Option<u64>, StoreError> {
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

    pub(super) fn write(&self, commit: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&commit.to_be_bytes());
        buf[8..].copy_from_slice(&(!commit).to_be_bytes());
        self.0.write_all_at(&buf, 0)?;
        self.0.sync_data()
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

/// Moves the damaged queue directory `path` aside and builds a new sled database at `path` from
/// every record that can still be read, without a commit mark (the next open writes one). See
/// [`Salvage`].
pub(super) fn rebuild(path: &Path) -> Result<Salvage, StoreError> {
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
    Ok(report)
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
