//! Intake: where events come in. Each channel parses and validates what a producer wrote into
//! [`crate::event::Event`]s, stores them durably, and only then tells the producer (spool: deletes
//! the file; socket: replies `ok`).
//!
//! Owns: the spool directories ([`spool`], with [`spool_dir`] and [`spool_file`]), the Unix
//! socket ([`socket`]) and the opt-in local Events API endpoint ([`http`]). Does not own: what
//! producers' own formats mean (see `producers`), or storage (see `queue`).

pub mod http;
pub mod socket;
pub mod spool;
pub mod spool_dir;
pub mod spool_file;
