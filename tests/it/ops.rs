//! Operations: systemd readiness and watchdog notifications.

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn systemd_gets_ready_then_watchdog_pings_then_stopping() {
    let env = TestEnv::new();
    let notify_path = env.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // As systemd does: WATCHDOG_PID names the service's main process (here, after the exec).
    let child = std::process::Command::new("sh")
        .args(["-c", &format!("WATCHDOG_PID=$$ exec {BIN} daemon")])
        .env("PDRELAY_CONFIG", &env.config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut buf = [0u8; 256];
    let mut next = || {
        let n = notify.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert_eq!(first.trim(), "READY=1", "readiness first");
    assert!(std::os::unix::net::UnixStream::connect(&env.socket).is_ok(), "READY=1 only once the socket listens");
    let start = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        assert_eq!(next().trim(), "WATCHDOG=1");
        pings += 1;
    }
    eprintln!("3 watchdog pings in {:?} (period 1 s)", start.elapsed());
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    loop {
        let msg = next();
        if msg.trim() == "STOPPING=1" {
            break;
        }
        assert_eq!(msg.trim(), "WATCHDOG=1", "only pings before STOPPING=1");
    }
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
