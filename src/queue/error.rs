//! The one error type of the queue: why the store could not do what was asked, with sled's and
//! the OS's errors turned into it.

use std::path::PathBuf;

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
