//! Intake: where events come in. Each channel parses and validates what a producer wrote into
//! [`crate::event::Event`]s, stores them durably, and only then tells the producer (spool: deletes
//! the file; socket: replies `ok`).
//!
//! Owns: the spool directories ([`spool`], with [`spool_dir`] and [`spool_file`]) and the Unix
//! socket ([`socket`]).

pub mod nagios;
pub mod pdagent;
pub mod sensu;
pub mod socket;
pub mod spool;
pub mod spool_dir;
pub mod spool_file;
pub mod zabbix;

use tokio::sync::watch;

/// A shutdown signal any task can wait on; cheap to clone.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A trigger and the first receiver.
    pub fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }

    /// Completes once shutdown has been asked (at once if it already was).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether shutdown has been asked.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }
}
