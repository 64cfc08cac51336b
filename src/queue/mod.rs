//! The durable queue: every accepted event, its delivery state and retry schedule, and the paused
//! routing keys, in one sled database under `<state_dir>/queue`.
//!
//! Owns: the on-disk record format ([`record`]) and every write to the database, made by one
//! committer thread in group commits ([`committer`]), including the paging policy applied as events
//! are accepted ([`policy`]: routes, silences, flap damping). Does not own: when to send (see `delivery`).
//!
//! Files, from the handle down: [`store`] (the `Store` handle other stages use: open, submit,
//! read), [`committer`] (group commit, fsyncs), [`prepare`] (what each request writes into a
//! commit), [`mark`] (commit mark, salvage), [`alerts`] (the open-alerts ledger), [`shared`]
//! (state the handle and the committer share, intake limits), [`request`] (what is handed in and
//! answered), [`keys`] (the key layout and event ids), [`disk`] (opening sled, fsync and
//! file-mode helpers), [`error`], and [`record`], [`view`], [`policy`].
//!
//! # Why an acknowledged event survives `kill -9` and a power cut
//!
//! An event is acknowledged (spool file deleted, socket or CLI told `ok`) only after the commit
//! that holds it has returned from [`store::Store::insert`], and that returns only after:
//!
//! 1. one sled transaction has put the event (with its dedup-key tracking entry) and, for a producer-chosen
//!    id, its id-index entry in sled's page cache atomically (all or none; see [`committer`]);
//! 2. `Db::flush` has written sled's log buffers to the `db` file. sled 0.34 ends this with
//!    `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)`, which pushes the data pages but neither
//!    the file's size nor other metadata, and issues no disk cache flush: after a power cut the
//!    tail of the log may be gone. So, next:
//! 3. `fsync(2)` of the `db` file (through a descriptor the store keeps open: fsync acts on the
//!    inode, so it covers sled's writes), then `fsync(2)` of every file sled wrote in `blobs/`
//!    since the last commit (values over 128 KiB go there, written without any sync) and of the
//!    `blobs/` directory and the database directory, so that new names are durable too.
//!
//! 4. The commit's number, stored inside sled in the same batch, is written to the commit mark
//!    file (`pdrelay-commit-mark`) and that file is fsynced.
//!
//! A kill -9 needs only step 2 (the page cache outlives the process); a power cut needs step 3.
//! Step 4 guards against the other way to lose data: sled 0.34, finding a damaged or truncated
//! log, recovers silently up to the damage, which would forget acknowledged events. On open, sled
//! must hold a commit number at least the mark's; if not, [`StoreError::Damaged`] stops the
//! daemon (exit code 3) and `pdrelay queue salvage` moves the damaged queue aside and rebuilds it
//! from what is readable. The unit test in `store.rs` checks that the sync counter moves before
//! an insert is answered; `tests/it/reliability.rs` damages a queue and checks the refusal.
//!
//! Steps 1 to 4 are the committer's ([`committer`]); the mark file and salvage are in [`mark`];
//! [`store::Store::open`] compares the mark with sled's commit number and refuses a queue that
//! holds less.

pub mod alerts;
pub mod committer;
pub mod disk;
pub mod error;
pub mod keys;
pub mod mark;
pub mod policy;
pub mod prepare;
pub mod record;
pub mod request;
pub mod shared;
pub mod store;
pub mod view;

pub use error::StoreError;
pub use record::{Record, State};
pub use store::Store;
