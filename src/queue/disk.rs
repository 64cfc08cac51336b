//! The queue directory on disk: opening sled on it, applying a batch atomically, syncing a
//! directory, the directory's and files' modes and owner, and the free space left.

use std::fs::File;
use std::path::Path;

use super::error::StoreError;

/// sled's page cache, in bytes (8 MiB: with 1,000,000 pending, 16 MiB measured 133 MB resident
/// and 8 MiB 120 MB; reads for delivery stay well above the drain target, README "Performance").
const SLED_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// Opens sled, turning a lock conflict into [`StoreError::Locked`] and a panic inside sled (it
/// has some on damaged files) into [`StoreError::Damaged`].
pub(super) fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
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

/// Applies `batch` to `tree` so that crash recovery sees all of it or none of it.
///
/// This goes through a sled transaction rather than `Tree::apply_batch`: both are atomic, but
/// in sled 0.34.7 `apply_batch` keeps superseded node versions alive far longer (measured with
/// 1,000,000 stored events: 2.4 GB resident through `apply_batch`, 80 MB through a transaction;
/// README "Performance"). The committer is the only writer, so the transaction never conflicts.
pub(super) fn apply_atomically(tree: &sled::Tree, batch: &sled::Batch) -> Result<(), StoreError> {
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

pub(super) fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// Creates the queue directory (and missing parents) and gives it mode 0700, whatever the
/// umask: it holds routing keys and summaries, for the daemon's user and root only. A
/// symbolic link at `path` is refused.
pub(super) fn make_private_dir(path: &Path) -> std::io::Result<()> {
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
pub(super) fn restrict_files(path: &Path) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests {
    use crate::queue::error::StoreError;
    use crate::queue::store::Store;

    #[test]
    fn a_second_open_reports_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(&dir.path().join("q")).unwrap();
        let err = Store::open(&dir.path().join("q")).err().expect("second open must fail");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    }
}
