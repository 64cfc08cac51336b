//! What the daemon tells systemd (`Type=notify` in the unit, sd_notify(3)): READY=1 once the
//! store is open and the socket listens, WATCHDOG=1 while its loops make progress, STOPPING=1 on
//! the way out. Outside systemd (no `NOTIFY_SOCKET`) each call does nothing.

use std::time::Duration;

/// Tells systemd the daemon is ready.
pub fn ready() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}

/// Tells systemd the daemon is alive (one watchdog keep-alive).
pub fn alive() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

/// The watchdog interval systemd asks for (`WatchdogSec` in the unit), `None` without one.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
}
