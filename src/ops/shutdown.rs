//! The daemon's one shutdown signal, which every task (intake channels, delivery, the admin
//! socket, metrics, retention) waits on.

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
