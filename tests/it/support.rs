//! TestEnv: a temp directory with state, spool and socket, a config pointing at a fake Events API,
//! and the real `pdrelay` binary started and stopped as a process.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fake_api::FakeApi;

/// A valid routing key, distinct per `n`.
pub fn routing_key(n: u32) -> String {
    format!("R{n:031}")
}

pub const BIN: &str = env!("CARGO_BIN_EXE_pdrelay");

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub fake: FakeApi,
    pub config: PathBuf,
    pub spool: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    /// Declared last, so released after the rest of the environment is gone.
    _turn: Turn,
}

/// Who holds the machine: any number of tests share it, or one test has it alone. A test whose
/// assertion bounds a delay by PagerDuty's schedule (a probe interval) takes it alone, so that
/// the CPU another test's daemon and clients use cannot stretch that delay on a 2-core machine.
/// A test may hold several shared turns (two environments); a test waiting to be alone lets no
/// new test start, but lets a running one open its second environment.
struct Turns {
    shared: usize,
    alone: bool,
    alone_waiting: usize,
}

static TURNS: std::sync::Mutex<Turns> = std::sync::Mutex::new(Turns { shared: 0, alone: false, alone_waiting: 0 });
static TURN_CHANGED: std::sync::Condvar = std::sync::Condvar::new();

thread_local! {
    /// Shared turns this test thread holds.
    static HELD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

enum Turn {
    Shared,
    Alone,
}

/// Longest wait for a turn: longer than any one test runs.
const TURN_WAIT: Duration = Duration::from_secs(600);

/// Waits for the turns to change, and fails the test past `deadline` (a test waiting on itself,
/// or one that never ends).
fn wait_turn(t: std::sync::MutexGuard<'static, Turns>, deadline: Instant) -> std::sync::MutexGuard<'static, Turns> {
    let left = deadline.saturating_duration_since(Instant::now());
    assert!(!left.is_zero(), "no turn on the machine within {TURN_WAIT:?}");
    TURN_CHANGED.wait_timeout(t, left).unwrap_or_else(|poisoned| poisoned.into_inner()).0
}

fn turns() -> std::sync::MutexGuard<'static, Turns> {
    TURNS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Turn {
    fn shared() -> Turn {
        let held = HELD.with(|h| h.get());
        let mut t = turns();
        let deadline = Instant::now() + TURN_WAIT;
        while t.alone || (t.alone_waiting > 0 && held == 0) {
            t = wait_turn(t, deadline);
        }
        t.shared += 1;
        HELD.with(|h| h.set(held + 1));
        Turn::Shared
    }

    fn alone() -> Turn {
        let mut t = turns();
        t.alone_waiting += 1;
        let deadline = Instant::now() + TURN_WAIT;
        while t.alone || t.shared > 0 {
            t = wait_turn(t, deadline);
        }
        t.alone_waiting -= 1;
        t.alone = true;
        Turn::Alone
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut t = turns();
        match self {
            Turn::Shared => {
                t.shared = t.shared.saturating_sub(1);
                HELD.with(|h| h.set(h.get().saturating_sub(1)));
            }
            Turn::Alone => t.alone = false,
        }
        TURN_CHANGED.notify_all();
    }
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        TestEnv::with_config("")
    }

    /// `extra` is appended inside the top level; use full section headers in it.
    pub fn with_config(extra: &str) -> TestEnv {
        TestEnv::build(extra, Turn::shared())
    }

    /// [`TestEnv::with_config`] for a test that must have the machine to itself: it waits until
    /// no other test holds an environment, and none starts until it is dropped.
    pub fn alone_with_config(extra: &str) -> TestEnv {
        TestEnv::build(extra, Turn::alone())
    }

    fn build(extra: &str, turn: Turn) -> TestEnv {
        let fake = FakeApi::start();
        let dir = tempfile::Builder::new().prefix("pdrelay-it").tempdir_in("/tmp").unwrap();
        let spool = dir.path().join("spool");
        let socket = dir.path().join("run/pdrelay.sock");
        let state = dir.path().join("state");
        let config = dir.path().join("config.toml");
        let text = format!(
            r#"state_dir = "{state}"
log_level = "pdrelay=debug,info"
shutdown_timeout = "3s"
[ingest]
socket = "{socket}"
admin_socket = "{admin}"
spool_dirs = ["{spool}"]
rescan_interval = "1s"
[pagerduty]
events_url = "{url}"
connect_timeout = "1s"
request_timeout = "2s"
[retry]
initial_interval = "50ms"
max_interval = "400ms"
max_retry_after = "2s"
[delivery]
rate_limit = 0
probe_interval = "200ms"
"#,
            state = state.display(),
            socket = socket.display(),
            admin = dir.path().join("run/admin.sock").display(),
            spool = spool.display(),
            url = fake.url(),
        );
        std::fs::write(&config, merge_sections(&text, extra)).unwrap();
        std::fs::create_dir_all(&spool).unwrap();
        TestEnv { dir, fake, config, spool, socket, state, _turn: turn }
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("PDRELAY_CONFIG", &self.config).env_remove("RUST_LOG");
        c
    }

    pub fn start(&self) -> Daemon {
        let log = self.dir.path().join(format!("daemon-{}.log", uuid_like()));
        let file = std::fs::File::create(&log).unwrap();
        let child = self.command().arg("daemon").stdout(Stdio::null()).stderr(file).spawn().unwrap();
        let d = Daemon { child, log };
        let end = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&self.socket).is_err() {
            assert!(Instant::now() < end, "daemon did not listen:\n{}", d.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }

    pub fn send(&self, args: &[&str]) -> Output {
        self.command().arg("send").args(args).output().unwrap()
    }

    /// Writes a spool file the way a producer should: dotfile, then rename.
    pub fn drop_file(&self, name: &str, contents: &str) {
        let tmp = self.spool.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, self.spool.join(name)).unwrap();
    }

    pub fn spool_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.spool)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    /// Opens a connection to the daemon's socket.
    pub fn connect(&self) -> SocketClient {
        let s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        SocketClient { reader: BufReader::new(s.try_clone().unwrap()), writer: s }
    }
}

pub struct SocketClient {
    pub reader: BufReader<UnixStream>,
    pub writer: UnixStream,
}

impl SocketClient {
    pub fn send_line(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).unwrap();
        self.writer.write_all(b"\n").unwrap();
    }

    pub fn read_reply(&mut self) -> Value {
        let mut s = String::new();
        self.reader.read_line(&mut s).unwrap();
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("reply {s:?}: {e}"))
    }
}

impl Daemon {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits up to `bound` for the exit; returns the exit status code.
    pub fn terminate(mut self, bound: Duration) -> (Option<i32>, Duration, String) {
        let start = Instant::now();
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), start.elapsed(), self.log_text());
            }
            if start.elapsed() > bound {
                let _ = self.child.kill();
                panic!("daemon did not exit within {bound:?} of SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn uuid_like() -> String {
    format!("{:x}", fastrand::u64(..))
}

/// Polls `cond` until it holds, or panics with `what` after `deadline`.
pub fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < end, "timed out after {deadline:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A v2 trigger line.
pub fn trigger(rk: &str, dedup: &str, summary: &str) -> String {
    serde_json::json!({"routing_key": rk, "event_action": "trigger", "dedup_key": dedup,
        "payload": {"summary": summary, "source": "web1", "severity": "critical"}})
    .to_string()
}

/// Opens the stopped daemon's store directly.
pub fn open_store(state: &Path) -> pdrelay::queue::Store {
    pdrelay::queue::Store::open(&state.join("queue")).unwrap()
}

/// Appends `extra` (TOML with section headers) to `base`, moving keys of a section that `base`
/// already has under that section, so tests can override any key.
fn merge_sections(base: &str, extra: &str) -> String {
    let mut doc: toml::Table = toml::from_str(base).unwrap();
    let more: toml::Table = toml::from_str(extra).unwrap();
    for (k, v) in more {
        match (doc.get_mut(&k), v) {
            (Some(toml::Value::Table(t)), toml::Value::Table(m)) => t.extend(m),
            (_, v) => {
                doc.insert(k, v);
            }
        }
    }
    toml::to_string(&doc).unwrap()
}

impl TestEnv {
    /// Runs `pdrelay queue ARGS --json` and parses the answer.
    pub fn queue_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["queue"];
        full.extend_from_slice(args);
        self.queue_json_cmd(&full)
    }

    /// Runs `pdrelay ARGS --json` and parses the answer.
    pub fn queue_json_cmd(&self, args: &[&str]) -> Value {
        let out = self.command().args(args).arg("--json").output().unwrap();
        assert!(out.status.success(), "queue {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["result"].clone()
    }
}

/// A child process killed (and reaped) when dropped: Nagios cores, Alertmanager, daemons started
/// by hand in a test.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
