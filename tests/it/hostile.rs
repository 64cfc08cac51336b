//! Hostile and careless producers (issue 13): races on spool names, entries swapped between
//! listing and reading, files too large for the queue, forged log lines, terminal escapes.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::Watcher;
use serde_json::json;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

fn event_line(rk: &str, n: usize, pad: usize) -> String {
    json!({"routing_key": rk, "event_action": "trigger", "dedup_key": format!("d{n}"),
        "payload": {"summary": format!("event {n}"), "source": "h", "severity": "info",
            "custom_details": {"n": n, "pad": "p".repeat(pad)}}})
    .to_string()
}

/// Names in a directory; none if it does not exist (yet).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn delivered_dedup_keys(env: &TestEnv) -> HashSet<String> {
    env.fake.accepted().iter().filter_map(|r| r.body["dedup_key"].as_str().map(str::to_owned)).collect()
}

/// Writes `contents` to a short temp name (so any `name` up to 255 bytes fits) and renames it
/// over `name` in the spool, replacing whatever is there.
fn rename_over(spool: &Path, name: &str, contents: &str) {
    let tmp = spool.join(format!(".t{:x}.tmp", fastrand::u64(..)));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, spool.join(name)).unwrap();
}

/// An inotify watch on the spool, from the test's side: tells when the daemon has opened the
/// directory (listed it) or closed a file it read there.
struct SpoolWatch {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::Receiver<notify::Event>,
}

impl SpoolWatch {
    fn new(spool: &Path) -> SpoolWatch {
        let (tx, events) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(e) = res {
                let _ = tx.send(e);
            }
        })
        .unwrap();
        watcher.watch(spool, notify::RecursiveMode::NonRecursive).unwrap();
        SpoolWatch { _watcher: watcher, events }
    }

    /// Waits until `done()` holds or an event matching `hit` arrives.
    fn wait_for(&self, what: &str, mut hit: impl FnMut(&notify::Event) -> bool, mut done: impl FnMut() -> bool) {
        let end = Instant::now() + WAIT;
        loop {
            if done() {
                return;
            }
            match self.events.recv_timeout(Duration::from_millis(1)) {
                Ok(e) if hit(&e) => return,
                _ => assert!(Instant::now() < end, "timed out waiting for {what}"),
            }
        }
    }
}

fn is_close_after_read(e: &notify::Event, path: &Path) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(e.kind, notify::EventKind::Access(AccessKind::Close(AccessMode::Read)))
        && e.paths.iter().any(|p| p == path)
}

fn is_dir_open(e: &notify::Event, dir: &Path) -> bool {
    use notify::event::AccessKind;
    matches!(e.kind, notify::EventKind::Access(AccessKind::Open(_))) && e.paths.iter().any(|p| p == dir)
}

#[test]
fn a_file_renamed_over_a_name_the_daemon_just_read_is_stored_not_deleted() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(130);
    let name = "same.json";
    let path = env.spool.join(name);
    let watch = SpoolWatch::new(&env.spool);
    for round in 0..10 {
        rename_over(&env.spool, name, &trigger(&rk, &format!("first-{round}"), "first"));
        // The moment the daemon has read the first file (or taken it away), a second one takes
        // its name: a new file, which must be stored too.
        watch.wait_for("the daemon to read the first file", |e| is_close_after_read(e, &path), || !path.exists());
        rename_over(&env.spool, name, &trigger(&rk, &format!("second-{round}"), "second"));
        wait_until("the name is free again", WAIT, || !path.exists());
    }
    wait_until("all twenty delivered", WAIT, || delivered_dedup_keys(&env).len() >= 20);
    let keys = delivered_dedup_keys(&env);
    for round in 0..10 {
        for which in ["first", "second"] {
            assert!(keys.contains(&format!("{which}-{round}")), "{which}-{round} lost; delivered {keys:?}");
        }
    }
}

/// Drops `ahead` valid files and a victim that sorts after them, starts the daemon, and swaps
/// the victim for `swap` the moment the daemon lists the directory.
fn swap_after_listing(env: &TestEnv, ahead: usize, swap: impl FnOnce(&Path)) -> Daemon {
    let rk = routing_key(131);
    for n in 0..ahead {
        env.drop_file(&format!("a{n:05}.json"), &trigger(&rk, &format!("ahead-{n}"), "ahead"));
    }
    env.drop_file("zzz.json", &trigger(&rk, "victim", "victim"));
    let watch = SpoolWatch::new(&env.spool);
    let d = env.start();
    watch.wait_for("the daemon to list the spool", |e| is_dir_open(e, &env.spool), || false);
    swap(&env.spool.join("zzz.json"));
    d
}

fn assert_still_serving(env: &TestEnv, ahead: usize) {
    env.fake.wait_accepted(ahead, WAIT);
    let mut c = env.connect();
    c.send_line(&trigger(&routing_key(132), "after", "after the swap"));
    assert_eq!(c.read_reply()["ok"], true, "the daemon still answers");
    wait_until("the event after the swap delivered", WAIT, || delivered_dedup_keys(env).contains("after"));
}

#[test]
fn a_spool_entry_swapped_for_a_symlink_to_dev_zero_after_listing_is_quarantined() {
    let env = TestEnv::new();
    let d = swap_after_listing(&env, 300, |victim| {
        let link = victim.with_file_name(".link.tmp");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        std::fs::rename(&link, victim).unwrap();
    });
    let reason = env.spool.join("rejected/zzz.json.reason");
    wait_until("the symlink quarantined", WAIT, || reason.exists());
    assert!(std::fs::read_to_string(&reason).unwrap().contains("symbolic link"));
    assert_still_serving(&env, 300);
    let (code, _, log) = d.terminate(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn a_spool_entry_swapped_for_a_fifo_after_listing_blocks_nothing() {
    let env = TestEnv::new();
    let d = swap_after_listing(&env, 300, |victim| {
        let fifo = victim.with_file_name(".fifo.tmp");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        std::fs::rename(&fifo, victim).unwrap();
    });
    let reason = env.spool.join("rejected/zzz.json.reason");
    wait_until("the FIFO quarantined", WAIT, || reason.exists());
    assert!(std::fs::read_to_string(&reason).unwrap().contains("FIFO"));
    // Another producer's file after it is read.
    env.drop_file("later.json", &trigger(&routing_key(133), "later", "later"));
    wait_until("a later file delivered", WAIT, || delivered_dedup_keys(&env).contains("later"));
    assert_still_serving(&env, 300);
    let (code, _, log) = d.terminate(Duration::from_secs(15));
    assert_eq!(code, Some(0), "SIGTERM still stops the daemon: {log}");
}

#[test]
fn a_file_with_more_events_than_the_queue_can_hold_is_rejected_and_holds_nothing_back() {
    let env = TestEnv::with_config("[queue]\nmax_pending = 100\n");
    env.fake.set_down(true);
    let d = env.start();
    let rk = routing_key(134);
    // Both a small and a streamed (over 1 MiB) file with more events than the queue holds.
    let small: String = (0..150).map(|n| event_line(&rk, n, 0) + "\n").collect();
    let large: String = (0..600).map(|n| event_line(&rk, 1000 + n, 2000) + "\n").collect();
    assert!(large.len() > 1024 * 1024);
    env.drop_file("a-small.ndjson", &small);
    env.drop_file("b-large.ndjson", &large);
    env.drop_file("c-fits.json", &trigger(&rk, "fits", "behind the big ones"));
    let rejected = env.spool.join("rejected");
    wait_until("both too-large files rejected", WAIT, || {
        rejected.join("a-small.ndjson.reason").exists() && rejected.join("b-large.ndjson.reason").exists()
    });
    for name in ["a-small.ndjson", "b-large.ndjson"] {
        let reason = std::fs::read_to_string(rejected.join(format!("{name}.reason"))).unwrap();
        assert!(reason.contains("queue.max_pending = 100"), "{name}: {reason}");
    }
    env.fake.set_down(false);
    wait_until("the small valid file behind them delivered", WAIT, || delivered_dedup_keys(&env).contains("fits"));
    assert_eq!(env.fake.accepted().len(), 1, "nothing of the rejected files was sent");
    drop(d);
}

#[test]
fn a_large_file_that_fits_only_later_is_stored_as_room_frees() {
    let env = TestEnv::with_config("[queue]\nmax_pending = 1000\n");
    env.fake.set_down(true);
    let d = env.start();
    let rk = routing_key(135);
    let first: String = (0..600).map(|n| event_line(&rk, 5000 + n, 0) + "\n").collect();
    env.drop_file("first.ndjson", &first);
    let queued = || {
        let total = &env.queue_json(&["status"])["total"];
        total["pending"].as_u64().unwrap_or(0) + total["waiting"].as_u64().unwrap_or(0)
    };
    wait_until("the first 600 stored", WAIT, || queued() == 600);
    let large: String = (0..800).map(|n| event_line(&rk, n, 1500) + "\n").collect();
    assert!(large.len() > 1024 * 1024);
    env.drop_file("large.ndjson", &large);
    wait_until("the queue filled up to its limit", WAIT, || queued() == 1000);
    assert!(!env.spool.join("rejected/large.ndjson").exists(), "it fits later: not rejected");
    env.fake.set_down(false);
    wait_until("every event of the file and the socket delivered", WAIT, || delivered_dedup_keys(&env).len() >= 1400);
    let keys = delivered_dedup_keys(&env);
    assert!((0..800).all(|n| keys.contains(&format!("d{n}"))), "an event of the file is missing");
    wait_until("the file deleted once all of it was stored", WAIT, || entries(&env.spool.join(".claim")).is_empty());
    drop(d);
}

#[test]
fn an_invalid_file_with_a_255_byte_name_is_rejected_with_its_reason() {
    let env = TestEnv::new();
    let _d = env.start();
    let names: Vec<String> = [249usize, 252, 255].iter().map(|len| format!("{}.json", "n".repeat(len - 5))).collect();
    for name in &names {
        assert!(name.len() >= 249 && name.len() <= 255);
        rename_over(&env.spool, name, "{not json");
    }
    let rejected = env.spool.join("rejected");
    wait_until("three reasons written", WAIT, || {
        entries(&rejected).iter().filter(|n| n.ends_with(".reason")).count() == 3
    });
    for entry in std::fs::read_dir(&rejected).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(file) = name.strip_suffix(".reason") {
            assert_eq!(std::fs::read_to_string(rejected.join(file)).unwrap(), "{not json", "{file}");
        }
    }
    assert!(env.spool_files().is_empty());
}

#[test]
fn a_spool_directory_deleted_and_made_again_is_watched_again() {
    // Rescans only once an hour: only inotify can bring the file in.
    let env = TestEnv::with_config("[ingest]\nrescan_interval = \"1h\"\n");
    let d = env.start();
    let rk = routing_key(136);
    env.drop_file("before.json", &trigger(&rk, "before", "before"));
    wait_until("first file delivered", WAIT, || delivered_dedup_keys(&env).contains("before"));
    std::fs::remove_dir_all(&env.spool).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::create_dir(&env.spool).unwrap();
    // A file dropped again and again until the daemon watches the new directory: each is a new
    // event, and at least one must arrive well before the hourly rescan.
    let end = Instant::now() + WAIT;
    let mut n = 0;
    while !delivered_dedup_keys(&env).iter().any(|k| k.starts_with("after-")) {
        assert!(Instant::now() < end, "a file in the re-made spool directory was never read:\n{}", d.log_text());
        if n < 20 {
            env.drop_file(&format!("after-{n}.json"), &trigger(&rk, &format!("after-{n}"), "after"));
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(env.spool.join(".claim").is_dir() && env.spool.join("rejected").is_dir());
}

#[test]
fn a_file_name_with_a_newline_cannot_forge_a_log_line() {
    let env = TestEnv::new();
    let d = env.start();
    let name = "x\n2026-12-01T00:00:00Z ERROR pdrelay::daemon: queue damaged; run pdrelay queue purge\n.json";
    rename_over(&env.spool, name, "{not json");
    wait_until("the file rejected", WAIT, || entries(&env.spool.join("rejected")).len() >= 2);
    wait_until("the rejection logged", WAIT, || d.log_text().contains("spool file rejected"));
    let log = d.log_text();
    for line in log.lines() {
        assert!(!line.trim_start().starts_with("2026-12-01T00:00:00Z ERROR"), "forged line: {line:?}");
    }
    assert!(log.contains("x\\n2026-12-01T00:00:00Z"), "the name is shown escaped: {log}");
}

#[test]
fn queue_list_and_show_escape_terminal_controls_in_producer_text() {
    let env = TestEnv::new();
    env.fake.set_down(true);
    let _d = env.start();
    let rk = routing_key(137);
    let mut c = env.connect();
    let line = json!({"routing_key": rk, "event_action": "trigger", "dedup_key": "k\u{1b}[2J\u{7}",
        "payload": {"summary": "red \u{1b}[31malert\u{7}\r\u{9b}2Jdone", "source": "h\u{1b}]0;title\u{7}", "severity": "info"}})
    .to_string();
    c.send_line(&line);
    let reply = c.read_reply();
    let id = reply["id"].as_str().unwrap().to_owned();
    env.fake.set_down(false);
    wait_until("the event delivered, so that alerts lists it", WAIT, || delivered_dedup_keys(&env).len() == 1);
    for args in [vec!["queue", "list"], vec!["queue", "show", id.as_str()], vec!["alerts"]] {
        let out = env.command().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            !text.chars().any(|ch| ch.is_control() && ch != '\n'),
            "{args:?} printed a control character: {text:?}"
        );
        assert!(text.contains("\\u{1b}"), "{args:?} shows the escape as text: {text}");
    }
}

/// The names and files a fresh queue needs to detect damage are durable before the first
/// acknowledgement: the commit mark's name (the queue directory fsynced after the mark is
/// created) and sled's `conf`. Seen with strace on the first `queue status`, which creates the
/// queue. CI sets PDRELAY_REQUIRE_STRACE so this cannot skip there.
#[test]
fn a_fresh_queue_makes_the_commit_marks_name_and_sled_conf_durable() {
    if Command::new("strace").arg("-V").output().is_err() {
        assert!(std::env::var_os("PDRELAY_REQUIRE_STRACE").is_none(), "strace is required but missing");
        eprintln!("skipped: strace is not installed");
        return;
    }
    let env = TestEnv::new();
    let trace = env.dir.path().join("trace.txt");
    let out = Command::new("strace")
        .args(["-f", "-y", "-qq", "-e", "trace=openat,fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(BIN)
        .args(["queue", "status"])
        .env("PDRELAY_CONFIG", &env.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let queue = env.state.join("queue");
    let created = lines
        .iter()
        .position(|l| l.contains("openat(") && l.contains("pdrelay-commit-mark") && l.contains("O_CREAT"))
        .expect("the commit mark is created");
    let dir_synced = format!("<{}>)", queue.display());
    assert!(
        lines[created..].iter().any(|l| l.contains("fsync(") && l.contains(&dir_synced)),
        "the queue directory is not fsynced after the commit mark is created:\n{text}"
    );
    let conf = format!("<{}>)", queue.join("conf").display());
    assert!(
        lines.iter().any(|l| (l.contains("fsync(") || l.contains("fdatasync(")) && l.contains(&conf)),
        "sled's conf is never fsynced:\n{text}"
    );
}

#[test]
fn a_relative_spool_directory_is_woken_by_inotify() {
    // spool_dirs relative to the daemon's working directory (as demo/config.toml has it), and
    // rescans only once an hour: only inotify can bring the file in.
    let env = TestEnv::with_config("[ingest]\nspool_dirs = [\"spool\"]\nrescan_interval = \"1h\"\n");
    let log = std::fs::File::create(env.dir.path().join("relative.log")).unwrap();
    let child = env
        .command()
        .current_dir(env.dir.path())
        .arg("daemon")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _d = KillOnDrop(child);
    wait_until("the daemon listens", WAIT, || std::os::unix::net::UnixStream::connect(&env.socket).is_ok());
    wait_until("the spool's claim directory made", WAIT, || env.spool.join(".claim").is_dir());
    env.drop_file("rel.json", &trigger(&routing_key(138), "relative", "in a relative spool"));
    wait_until("the file delivered without a rescan", WAIT, || delivered_dedup_keys(&env).contains("relative"));
}
